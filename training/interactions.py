"""Events and catalog as dense arrays: the one loader every training stage uses.

Users and items get dense indices (0..n-1) in a fixed order (internal id ascending), so matrices, embeddings and
evaluation agree. Event strength and graded relevance are defined here once.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd
import psycopg
from psycopg import sql

# Graded relevance of one interaction (ranker labels, evaluation): purchase / like / high rating > click > view > none;
# dislike, skip and low ratings fall below none.
GRADE_STRONG, GRADE_CLICK, GRADE_VIEW, GRADE_NONE, GRADE_NEGATIVE = 3, 2, 1, 0, -1
_BASE_GRADE = {"purchase": 3, "like": 3, "click": 2, "view": 1, "skip": -1, "dislike": -1}

# Training weight of an event for implicit-feedback models: stronger events count more; negatives are < 0.
_WEIGHT = {"purchase": 3.0, "like": 2.5, "click": 1.0, "view": 0.4, "skip": -0.5, "dislike": -2.0}


@dataclass
class Catalog:
    """Every user and item, including those without events (cold start), in dense-index order."""

    user_ids: np.ndarray  # internal user_id, index = dense user index
    user_external: np.ndarray  # object array of external ids
    item_ids: np.ndarray
    item_external: np.ndarray
    item_domain: np.ndarray
    item_provider: np.ndarray
    item_categories: list[list[str]]
    item_created_at: np.ndarray  # datetime64[s]

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)


@dataclass
class Interactions:
    """Events as parallel arrays with dense user/item indices, sorted by time."""

    user: np.ndarray  # int32 dense user index
    item: np.ndarray  # int32 dense item index
    event_type: np.ndarray  # object array of type names
    value: np.ndarray  # float32, NaN when absent
    ts: np.ndarray  # int64 unix seconds

    def __len__(self) -> int:
        return len(self.user)

    def take(self, mask: np.ndarray) -> Interactions:
        return Interactions(self.user[mask], self.item[mask], self.event_type[mask], self.value[mask], self.ts[mask])

    def grades(self) -> np.ndarray:
        """Graded relevance per event (see GRADE_*); ratings: >= 4 strong, 3 view-like, <= 2 negative."""
        grade = pd.Series(self.event_type).map(_BASE_GRADE).to_numpy(dtype=np.float64, na_value=0)
        is_rating = self.event_type == "rating"
        rating_grade = np.where(self.value >= 4, GRADE_STRONG, np.where(self.value >= 3, GRADE_VIEW, GRADE_NEGATIVE))
        return np.where(is_rating, rating_grade, grade).astype(np.int8)

    def weights(self) -> np.ndarray:
        """Signed training weight per event (see _WEIGHT); ratings map (value - 3) to [-2, +2.5]."""
        weight = pd.Series(self.event_type).map(_WEIGHT).to_numpy(dtype=np.float64, na_value=0)
        rating_weight = np.clip(np.nan_to_num(self.value - 3.0) * 1.25, -2.0, 2.5)
        return np.where(self.event_type == "rating", rating_weight, weight).astype(np.float32)


def _copy_frame(conn: psycopg.Connection, query: str | sql.Composable) -> pd.DataFrame:
    """COPY a query's result out as CSV and parse it with pandas: ~10x faster than fetching rows for millions."""
    buf = io.BytesIO()
    statement = sql.SQL("COPY ({}) TO STDOUT WITH (FORMAT csv, HEADER true)").format(
        sql.SQL(query) if isinstance(query, str) else query  # type: ignore[arg-type]
    )
    with conn.cursor() as cur, cur.copy(statement) as copy:
        for chunk in copy:
            buf.write(chunk)
    buf.seek(0)
    return pd.read_csv(buf, keep_default_na=True)


def load_catalog(conn: psycopg.Connection) -> Catalog:
    users = _copy_frame(conn, "SELECT user_id, external_id FROM users ORDER BY user_id")
    items = _copy_frame(
        conn,
        "SELECT item_id, external_id, domain, provider_id, array_to_json(categories)::text AS categories, "
        "extract(epoch FROM created_at)::bigint AS created FROM items ORDER BY item_id",
    )
    return Catalog(
        user_ids=users["user_id"].to_numpy(np.int64),
        user_external=users["external_id"].astype(str).to_numpy(object),
        item_ids=items["item_id"].to_numpy(np.int64),
        item_external=items["external_id"].astype(str).to_numpy(object),
        item_domain=items["domain"].astype(str).to_numpy(object),
        item_provider=items["provider_id"].astype(str).to_numpy(object),
        item_categories=[json.loads(c) for c in items["categories"]],
        item_created_at=items["created"].to_numpy(np.int64).astype("datetime64[s]"),
    )


def load_interactions(
    conn: psycopg.Connection, catalog: Catalog, since: datetime | None = None, until: datetime | None = None
) -> Interactions:
    """Events in [since, until), mapped to the catalog's dense indices, sorted by time."""
    where: list[sql.Composable] = []
    if since is not None:
        where.append(sql.SQL("occurred_at >= {}").format(sql.Literal(since)))
    if until is not None:
        where.append(sql.SQL("occurred_at < {}").format(sql.Literal(until)))
    clause = sql.SQL("WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL("")
    query = sql.SQL(
        "SELECT user_id, item_id, event_type, value, extract(epoch FROM occurred_at)::bigint AS ts "
        "FROM events {} ORDER BY occurred_at, event_pk"
    ).format(clause)
    frame = _copy_frame(conn, query)
    user = np.searchsorted(catalog.user_ids, frame["user_id"].to_numpy(np.int64)).astype(np.int32)
    item = np.searchsorted(catalog.item_ids, frame["item_id"].to_numpy(np.int64)).astype(np.int32)
    return Interactions(
        user=user,
        item=item,
        event_type=frame["event_type"].astype(str).to_numpy(object),
        value=frame["value"].to_numpy(np.float32),
        ts=frame["ts"].to_numpy(np.int64),
    )
