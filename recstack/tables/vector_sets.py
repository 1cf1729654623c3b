"""Vector sets: the collaborative item and user vectors and the item-item neighbours one ``recstack train`` fitted,
kept under its model version (``*_sets`` tables). Serving reads the live tables (``item_vectors``, ``user_vectors``,
``item_neighbours``); :func:`activate` copies one version's set into them in the caller's transaction, so promoting
a model and switching to its vectors is one atomic step, and a rollback restores both. Sets are pruned to the
versions that can still be promoted back (:func:`prune`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
import psycopg

if TYPE_CHECKING:  # scipy loads in ~0.2 s: `recstack --help` reaches this module through the registry
    from recstack.stages.item_item import ItemItem

PACKED_IDS = np.dtype("<i8")  # item_neighbours packing (recstack.tables.neighbours reads it)
PACKED_WEIGHTS = np.dtype("<f4")
KEEP_VERSIONS = 3  # sets of the newest models and of the latest promotions kept (a rollback goes one step back)


def _copy(conn: psycopg.Connection, table: str, columns: str, rows: Iterable[tuple[object, ...]]) -> None:
    with conn.cursor() as cur, cur.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def write_vectors(
    conn: psycopg.Connection,
    version: str,
    items: Iterable[tuple[int, float, str | None]],
    users: Iterable[tuple[int, str, str]],
) -> None:
    """Store ``version``'s collaborative vectors: items as (item_id, popularity, cf as pgvector text or None),
    users as (user_id, external_id, cf). Replaces a set stored under the same version; the live tables are not
    touched until the version is activated."""
    with conn.transaction():
        conn.execute("DELETE FROM item_vector_sets WHERE model_version = %s", (version,))
        conn.execute("DELETE FROM user_vector_sets WHERE model_version = %s", (version,))
        _copy(conn, "item_vector_sets", "model_version, item_id, popularity, cf", ((version, *r) for r in items))
        _copy(conn, "user_vector_sets", "model_version, user_id, external_id, cf", ((version, *r) for r in users))


def write_neighbours(conn: psycopg.Connection, version: str, item_ids: np.ndarray, model: ItemItem) -> None:
    """Store ``version``'s item-item weights, each row packing its neighbour ids (int64) and weights (float32)
    little-endian, so a 2500 x 2500 head moves as a few bytea values, not millions of array elements."""
    weights = model.weights.tocsr()
    ids = np.asarray(item_ids, PACKED_IDS)
    rows = (
        (
            version,
            int(ids[row]),
            ids[weights.indices[weights.indptr[row] : weights.indptr[row + 1]]].tobytes(),
            weights.data[weights.indptr[row] : weights.indptr[row + 1]].astype(PACKED_WEIGHTS).tobytes(),
        )
        for row in np.flatnonzero(np.diff(weights.indptr))
    )
    with conn.transaction():
        conn.execute("DELETE FROM item_neighbour_sets WHERE model_version = %s", (version,))
        _copy(conn, "item_neighbour_sets", "model_version, item_id, neighbour_ids, weights", rows)


def exists(conn: psycopg.Connection, version: str) -> bool:
    """Whether ``version`` has a stored set (models trained before vectors were versioned have none)."""
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM item_neighbour_sets WHERE model_version = %(v)s) "
        "OR EXISTS (SELECT 1 FROM user_vector_sets WHERE model_version = %(v)s)",
        {"v": version},
    ).fetchone()
    return bool(row and row[0])


def live_version(conn: psycopg.Connection) -> str | None:
    """The version whose set the live tables hold (None before any training)."""
    row = conn.execute(
        "SELECT coalesce((SELECT model_version FROM item_neighbours LIMIT 1), "
        "(SELECT model_version FROM user_vectors LIMIT 1))"
    ).fetchone()
    return str(row[0]) if row and row[0] is not None else None


def activate(conn: psycopg.Connection, version: str) -> bool:
    """Make the live tables hold ``version``'s set; False (and nothing changed) when it has none.

    Items added to the catalog after that model was trained get no collaborative vector (cold start: content and
    popularity serve them), exactly as when the model was new."""
    if not exists(conn, version):
        return False
    if live_version(conn) == version:
        return True
    params = {"v": version}
    with conn.transaction():
        conn.execute(
            "UPDATE item_vectors v SET cf = s.cf, popularity = s.popularity, model_version = s.model_version "
            "FROM item_vector_sets s WHERE s.model_version = %(v)s AND s.item_id = v.item_id",
            params,
        )
        conn.execute(
            "UPDATE item_vectors v SET cf = NULL, popularity = 0, model_version = %(v)s WHERE NOT EXISTS "
            "(SELECT 1 FROM item_vector_sets s WHERE s.model_version = %(v)s AND s.item_id = v.item_id)",
            params,
        )
        conn.execute("DELETE FROM user_vectors")
        conn.execute(
            "INSERT INTO user_vectors (user_id, external_id, cf, model_version) "
            "SELECT user_id, external_id, cf, model_version FROM user_vector_sets WHERE model_version = %(v)s",
            params,
        )
        conn.execute("DELETE FROM item_neighbours")
        conn.execute(
            "INSERT INTO item_neighbours (item_id, neighbour_ids, weights, model_version) "
            "SELECT item_id, neighbour_ids, weights, model_version FROM item_neighbour_sets "
            "WHERE model_version = %(v)s",
            params,
        )
    return True


def prune(conn: psycopg.Connection, keep: int = KEEP_VERSIONS) -> list[str]:
    """Drop the sets of versions that are neither among the ``keep`` newest models, nor among the ``keep`` latest
    distinct promotions, nor live; returns the versions dropped."""
    keep_versions = {
        str(r[0])
        for r in conn.execute(
            "(SELECT version FROM models ORDER BY created_at DESC, version DESC LIMIT %(k)s) UNION "
            "(SELECT version FROM (SELECT version, max(id) AS last FROM model_promotions GROUP BY version) p "
            "ORDER BY last DESC LIMIT %(k)s)",
            {"k": keep},
        ).fetchall()
    }
    live = live_version(conn)
    if live is not None:
        keep_versions.add(live)
    stored = {
        str(r[0])
        for r in conn.execute(
            "SELECT DISTINCT model_version FROM item_vector_sets UNION SELECT DISTINCT model_version FROM "
            "user_vector_sets UNION SELECT DISTINCT model_version FROM item_neighbour_sets"
        ).fetchall()
    }
    dropped = sorted(stored - keep_versions)
    if dropped:
        with conn.transaction():
            for table in ("item_vector_sets", "user_vector_sets", "item_neighbour_sets"):
                conn.execute(f"DELETE FROM {table} WHERE model_version = ANY(%s)", (dropped,))  # noqa: S608
    return dropped
