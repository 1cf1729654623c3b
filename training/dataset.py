"""Ranker data: per-user history at a cutoff, graded labels in the window after it, candidates as serving makes them.

Protocol (time-based, nothing after the cutoff feeds a query):
  * history = events before the cutoff: the user's recent items (newest first, distinct, no dislikes/skips) build
    the query vectors; every item the user touched is excluded from candidates (already seen);
  * labels = the best grade of the user's events on a candidate in [cutoff, cutoff + window):
    purchase/like/high rating 3 > click 2 > view 1 > none 0 > dislike/skip/low rating -1 (stored shifted by +1);
  * features = Feast's ranking_v1 joined point-in-time at the user's first event in the window (its context time),
    plus the retrieval scores of recstack/stages/retrieve.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import sparse

from recstack.stages.item_item import ItemItem
from recstack.stages.rank import in_list_columns
from recstack.stages.retrieve import (
    CANDIDATE_FEATURES,
    RetrievalParams,
    candidates_offline,
    content_query,
    place_cold,
    query_vector,
)
from training.batch import map_chunks, ray_is_up
from training.interactions import Catalog, Interactions

if TYPE_CHECKING:
    from feast import FeatureStore

    from recstack.features.online import OnlineLookup

NEGATIVE_TYPES = ("dislike", "skip")


@dataclass
class History:
    """What each user did before a cutoff (dense indices)."""

    recent: list[np.ndarray]  # per user: recent item indices, newest first (distinct, non-negative events)
    seen_ptr: np.ndarray  # CSR over users of every item touched
    seen_items: np.ndarray

    def seen(self, user: int) -> np.ndarray:
        return self.seen_items[self.seen_ptr[user] : self.seen_ptr[user + 1]]


def history(events: Interactions, n_users: int, recent: int = 20) -> History:
    """Recent-items lists and seen sets from time-sorted events."""
    order = np.lexsort((-events.ts, events.user))  # by user, newest first
    users, items = events.user[order], events.item[order]
    negative = np.isin(events.event_type[order], NEGATIVE_TYPES)
    bounds = np.searchsorted(users, np.arange(n_users + 1))
    recent_lists: list[np.ndarray] = []
    seen_parts: list[np.ndarray] = []
    for u in range(n_users):
        lo, hi = bounds[u], bounds[u + 1]
        user_items = items[lo:hi]
        positive = user_items[~negative[lo:hi]]
        _, first = np.unique(positive, return_index=True)
        recent_lists.append(positive[np.sort(first)][:recent])
        seen_parts.append(np.unique(user_items))
    seen_ptr = np.zeros(n_users + 1, np.int64)
    seen_ptr[1:] = np.cumsum([len(p) for p in seen_parts])
    seen_items = np.concatenate(seen_parts) if seen_parts else np.empty(0, np.int32)
    return History(recent_lists, seen_ptr, seen_items.astype(np.int64))


def with_seen(hist: History, events: Interactions) -> History:
    """``hist``'s queries with the seen sets of ``events`` (the history and more: all left out of candidates)."""
    seen = history(events, len(hist.seen_ptr) - 1)
    return replace(hist, seen_ptr=seen.seen_ptr, seen_items=seen.seen_items)


def window_labels(events: Interactions) -> pd.DataFrame:
    """Best grade per (user, item) in a window; negatives win only when nothing positive happened."""
    frame = pd.DataFrame({"user": events.user, "item": events.item, "grade": events.grades(), "ts": events.ts})
    best = frame.groupby(["user", "item"], sort=False).agg(grade=("grade", "max"), neg=("grade", "min")).reset_index()
    best["grade"] = np.where((best["grade"] <= 0) & (best["neg"] < 0), -1, best["grade"])
    return best[["user", "item", "grade"]]


def first_requests(events: Interactions) -> pd.DataFrame:
    """The request each user's candidate list stands for: the user's first event in a window, its time (``ts``, unix
    seconds: features are joined point-in-time there) and its request context (``device``, ``locale``: what serving
    logged for the request the event answered; "unknown" for an event that came without one). One row per user,
    indexed by dense user index.

    One context per list, as one request has one: per-row contexts would give the acted-on candidates a device and
    the unlabelled ones none, and the ranker would learn that a known device means "acted on"."""
    frame = pd.DataFrame({"user": events.user, "ts": events.ts})
    first = frame.groupby("user", sort=True)["ts"].idxmin().to_numpy()  # ties: the earlier row (time-sorted)
    device, locale = events.context_of(first)
    index = pd.Index(events.user[first].astype(np.int64), name="user")
    return pd.DataFrame({"ts": events.ts[first].astype(np.int64), "device": device, "locale": locale}, index=index)


@dataclass
class Retrieval:
    """What candidate generation needs: vectors, popularity and item-item weights in the catalog's dense order."""

    user_cf: np.ndarray
    item_cf: np.ndarray  # zeros for items without a collaborative vector
    item_content: np.ndarray
    log_popularity: np.ndarray
    has_user_vector: np.ndarray  # bool per user
    item_item: ItemItem | None = None
    history_x: sparse.csr_matrix | None = None  # users x items history weights the item-item source scores

    def item_item_scores(self, user: int) -> np.ndarray | None:
        if self.item_item is None or self.history_x is None:
            return None
        row = self.history_x[user]
        if not row.nnz:
            return None
        return self.item_item.scores(row.indices, row.data)


def user_queries(user: int, hist: History, r: Retrieval) -> tuple[np.ndarray | None, np.ndarray | None]:
    """As serving builds them: recent items without a vector are left out (not averaged in as zeros)."""
    recent = hist.recent[user]
    user_vec = r.user_cf[user] if r.has_user_vector[user] else None
    cf, content = r.item_cf[recent], r.item_content[recent]
    return query_vector(user_vec, cf[np.abs(cf).sum(1) > 0]), content_query(content[np.abs(content).sum(1) > 0])


def candidate_frame(
    users: np.ndarray, hist: History, r: Retrieval, params: RetrievalParams, n_items: int
) -> pd.DataFrame:
    """One row per (user, candidate item) with the retrieval features, users in the given order."""
    parts = []
    for user in users:
        exclude = np.zeros(n_items, bool)
        exclude[hist.seen(int(user))] = True
        query, content_q = user_queries(int(user), hist, r)
        recent_cf = r.item_cf[hist.recent[int(user)][: params.recent]]
        recent_cf = recent_cf[np.abs(recent_cf).sum(1) > 0]  # serving leaves out recent items without a vector
        items, features = candidates_offline(
            query,
            content_q,
            r.item_cf,
            r.item_content,
            r.log_popularity,
            exclude,
            params,
            user_vector=r.user_cf[user] if r.has_user_vector[user] else None,
            recent_cf=recent_cf,
            ii_scores=r.item_item_scores(int(user)),
        )
        part = pd.DataFrame(features, columns=CANDIDATE_FEATURES)
        for name, column in in_list_columns(features).items():  # over the whole list, before any sampling
            part[name] = column
        part.insert(0, "item", items.astype(np.int64))
        part.insert(0, "user", int(user))
        parts.append(part)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["user", "item", *CANDIDATE_FEATURES])


def attach_labels(candidates: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """Graded label per candidate row, shifted to be >= 0 for CatBoost (dislike 0, none 1, view 2, ...)."""
    merged = candidates.merge(labels, on=["user", "item"], how="left")
    merged["label"] = merged["grade"].fillna(0).astype(np.int64) + 1
    return merged.drop(columns=["grade"])


JOIN_CHUNK_ROWS = 10_000  # Feast's Postgres point-in-time join grows faster than linearly beyond ~10k entity rows


def request_rows(frame: pd.DataFrame, catalog: Catalog, requests: pd.DataFrame) -> pd.DataFrame:
    """Feast's entity rows for (user, item) rows: external ids, the user's request time and request context
    (``first_requests``), which the context view turns into the features serving computes from a request."""
    users = frame["user"]
    return pd.DataFrame(
        {
            "user_id": catalog.user_external[frame["user"].to_numpy()],
            "item_id": catalog.item_external[frame["item"].to_numpy()],
            "event_timestamp": pd.to_datetime(users.map(requests["ts"]).to_numpy(), unit="s", utc=True),
            "device": users.map(requests["device"]).to_numpy(object),
            "locale": users.map(requests["locale"]).to_numpy(object),
        }
    )


def join_features(
    store: FeatureStore,
    frame: pd.DataFrame,
    catalog: Catalog,
    requests: pd.DataFrame,
    service: str = "ranking_v1",
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Feast point-in-time features for each (user, item) row at the user's request (``first_requests``: its time
    and context), in chunks."""
    from recstack.features.training_frames import ranker_frame

    labels = request_rows(frame, catalog, requests)
    chunks = [(labels.iloc[s : s + JOIN_CHUNK_ROWS], service) for s in range(0, len(labels), JOIN_CHUNK_ROWS)]
    if len(chunks) > 1 and ray_is_up():  # Ray tasks, each opening its own store: scales out on a cluster
        rows = lambda done, total: progress(min(done * JOIN_CHUNK_ROWS, len(labels)), len(labels)) if progress else None  # noqa: E731
        joined = pd.concat(map_chunks(_join_chunk, chunks, rows), ignore_index=True)
    else:
        parts = []
        for n, (chunk, _) in enumerate(chunks):
            parts.append(ranker_frame(store, chunk, service=service))
            if progress:
                progress(min((n + 1) * JOIN_CHUNK_ROWS, len(labels)), len(labels))
        joined = pd.concat(parts, ignore_index=True) if parts else ranker_frame(store, labels, service=service)
    feature_columns = [c for c in joined.columns if "__" in c]
    out = frame.reset_index(drop=True).copy()
    for column in feature_columns:
        out[column] = joined[column].to_numpy()
    return out


def _join_chunk(args: tuple[pd.DataFrame, str]) -> pd.DataFrame:
    import os

    for name in ("PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR"):  # a worker may outlive Feast's temp dir
        if name in os.environ and not os.path.isdir(os.environ[name]):
            os.environ.pop(name)

    from recstack.features.store import open_store
    from recstack.features.training_frames import ranker_frame
    from recstack.settings import get_settings

    labels, service = args
    return ranker_frame(open_store(get_settings()), labels, service=service)


def as_served(frame: pd.DataFrame, scores: np.ndarray) -> np.ndarray:
    """Scores for many users' candidate rows as serving orders each list: new items placed per list by
    ``place_cold`` (its best and lowest scores are the list's own, not the whole frame's)."""
    features = frame[CANDIDATE_FEATURES].to_numpy(np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    out = np.empty(len(frame), dtype=np.float64)
    for rows in frame.groupby("user", sort=False).indices.values():
        out[rows] = place_cold(scores[rows], features[rows])
    return out


def subsample_unlabelled(frame: pd.DataFrame, per_user: int, seed: int) -> pd.DataFrame:
    """Keep every labelled row and a uniform sample of at most ``per_user`` unlabelled ("none", label 1) rows per user.

    Nearly all candidates are unlabelled (a user acts on a handful of the ~300); pairwise and listwise losses learn
    from (labelled, unlabelled) pairs, so a sample of the unlabelled rows keeps the signal at a fraction of the
    feature-join cost. Uniform, not the hardest: on ml-latest-small a sample half made of the best item-item-scored
    candidates taught the ranker to push those down, and it ordered whole candidate lists worse than item-item alone
    (NDCG@10 0.15 vs 0.19); a uniform sample of the same size ordered them better (0.21), as well as the full lists.
    """
    rng = np.random.default_rng(seed)
    unlabelled = frame["label"].to_numpy() == 1
    random_rank = pd.Series(rng.random(len(frame))).groupby(frame["user"].to_numpy()).rank(method="first").to_numpy()
    return frame[~unlabelled | (random_rank <= per_user)].reset_index(drop=True)


def served_features(
    lookup: OnlineLookup,
    frame: pd.DataFrame,
    catalog: Catalog,
    features: list[str],
    categorical: list[str],
    when: datetime,
    requests: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The model's input for each (user, candidate) row as serving builds it at ``when``: the online store's latest
    values (recstack.features.online) through the rank stage's columns (recstack.stages.rank.model_columns), with
    the device and locale of the user's request (``first_requests``; none given: "unknown")."""
    from recstack.stages.rank import RankContext, model_columns
    from recstack.stages.retrieve import CandidateSet

    parts = []
    for user, rows in frame.groupby("user", sort=False):
        ctx = RankContext(when=when)
        if requests is not None and user in requests.index:
            ctx = RankContext(when, str(requests.at[user, "device"]), str(requests.at[user, "locale"]))
        ids = [str(i) for i in catalog.item_external[rows["item"].to_numpy()]]
        found = lookup.lookup(str(catalog.user_external[int(user)]), ids)
        n = len(ids)
        blank = [""] * n
        candidates = CandidateSet(
            ids, blank, blank, blank, [[]] * n, np.zeros((n, 0), np.float32), rows[CANDIDATE_FEATURES].to_numpy()
        )
        columns = model_columns(found.user, found.items, candidates, ctx, features, categorical)
        parts.append(pd.DataFrame(columns, index=rows.index))
    if not parts:
        return pd.DataFrame(columns=features)
    return pd.concat(parts).loc[frame.index, features].reset_index(drop=True)
