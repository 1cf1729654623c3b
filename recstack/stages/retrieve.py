"""Retrieval stage: query vectors from the user's recent items and user vector; candidates from three sources.

Sources, as in serving and in offline training/evaluation alike:
  * item-item: top-I by the EASE neighbour scores of the user's whole history (recstack.stages.item_item), the
    strongest single source on real data (ml-latest-small: EASE alone beats the embeddings by far),
  * collaborative: top-N by inner product with the query vector (pgvector HNSW ``<#>``; numpy offline),
  * content: top-M by cosine with the mean content vector of the recent items (reaches items nobody touched yet),
  * popular: top-P by popularity in the model's window (cold users get only these).
Every candidate carries the same scores whichever source found it (CANDIDATE_FEATURES), so the ranker sees the
same inputs offline and online.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
from psycopg import sql
from psycopg.abc import Buffer
from psycopg.adapt import Loader
from psycopg.pq import Format

from recstack.stages.item_item import ItemItem, UserHistory, query_weights

if TYPE_CHECKING:
    from recstack.stages.item_table import ItemTable

# The vector sizes, the one home of them (the columns are vector(64) and vector(384) in migration 0005): training
# writes vectors of these sizes and serving reads them.
CF_DIM = 64  # collaborative (training/embeddings.py)
CONTENT_DIM = 384  # content (training/vectors.py)
SOURCE_FEATURES = ["cf_score", "content_score", "log_popularity", "from_cf", "from_content", "from_popular"]
ITEM_ITEM_FEATURES = ["ii_score", "from_ii"]
# How the candidate relates to the user's long-term vector and to each recent item separately: a user with several
# interests has a recent item close to the candidate even when the blended query vector is not.
SIMILARITY_FEATURES = ["user_score", "recent_mean_score", "recent_max_score", "recent_count"]
CANDIDATE_FEATURES = [*SOURCE_FEATURES, *ITEM_ITEM_FEATURES, *SIMILARITY_FEATURES]


NEAR_DUPLICATE = 0.9  # content similarity above which a new item counts as a copy of what the user engaged with
ALONE_CONTENT = 10  # content candidates when the item-item source alone orders the slate (``retrieve``)


def source_order(features: np.ndarray, source: str) -> np.ndarray:
    """Scores when a model serves one source's order (its ranker did not beat that source): the source's score,
    with new items placed by ``place_cold``. ``features`` are CANDIDATE_FEATURES columns."""
    return place_cold(features[:, CANDIDATE_FEATURES.index(source)].astype(np.float64), features)


def best_by_source(c: CandidateSet, source: str, n: int) -> CandidateSet:
    """The ``n`` candidates ``source_order`` ranks first, in their original order: what reaches the rerank pool (its
    best ``n``) when a model serves that order. ``source_order`` gives them the same scores within this subset: the
    best scored candidate stays in it, and a new item that is not a near-duplicate ranks below every scored candidate,
    so it is in the subset only when all the scored candidates are."""
    if len(c) <= n:
        return c
    return c.take(np.sort(np.argsort(-source_order(c.features, source), kind="stable")[:n]))


def place_cold(scores: np.ndarray, features: np.ndarray) -> np.ndarray:
    """One list's scores (a source's or the ranker's) with the items neither collaborative source can score placed
    by their content: new items (no vector, no neighbours) have no other evidence, and no ranker has seen one
    labelled. A near-duplicate of the history (content similarity >= NEAR_DUPLICATE) gets that similarity times the
    best score among the scored candidates, so it comes right after the best item; any other new item
    goes below every scored candidate, in content order. Ranking new items by content alone above scored ones floods
    slates with never-rated catalog entries that happen to share genres (on ml-latest-small the item-item order lost
    20% NDCG@10 through /recommend that way). ``features`` are the list's CANDIDATE_FEATURES columns."""
    column = {name: features[:, n].astype(np.float64) for n, name in enumerate(CANDIDATE_FEATURES)}
    scores = np.asarray(scores, dtype=np.float64).copy()
    cold = (column["ii_score"] == 0) & (column["cf_score"] == 0)
    if not cold.any():
        return scores
    content = np.clip(column["content_score"], 0, 1)
    warm = scores[~cold]
    top = float(warm.max()) if len(warm) else 1.0
    floor = float(warm.min()) if len(warm) else 0.0
    duplicate = cold & (content >= NEAR_DUPLICATE)
    scores[duplicate] = top - (1.0 - content[duplicate]) * abs(top)  # content x top for a positive top
    rest = cold & ~duplicate
    scores[rest] = floor - 1.0 + content[rest]
    return scores


RECENCY_DECAY = 0.85  # weight of the i-th most recent item: decay ** i
USER_VECTOR_WEIGHT = 0.5  # blend of the long-term user vector and the recent-items vector


@dataclass(frozen=True)
class RetrievalParams:
    item_item: int = 200
    cf: int = 200
    content: int = 50
    popular: int = 50
    recent: int = 20


@dataclass
class Filters:
    """Whitelisted filters (values always passed as parameters)."""

    domain: str | None = None
    categories: list[str] = field(default_factory=list)
    providers: list[str] = field(default_factory=list)


def recent_weights(n: int) -> np.ndarray:
    return RECENCY_DECAY ** np.arange(n, dtype=np.float32)


def query_vector(user_vector: np.ndarray | None, recent_vectors: np.ndarray) -> np.ndarray | None:
    """Recency-weighted mean of the recent items' vectors (newest first), blended with the user vector."""
    recent = None
    if len(recent_vectors):
        weights = recent_weights(len(recent_vectors))
        recent = (weights[:, None] * recent_vectors).sum(0) / weights.sum()
    if user_vector is None:
        return recent
    if recent is None:
        return user_vector
    return USER_VECTOR_WEIGHT * user_vector + (1 - USER_VECTOR_WEIGHT) * recent


def content_query(recent_content: np.ndarray) -> np.ndarray | None:
    """Normalized recency-weighted mean of the recent items' content vectors."""
    if not len(recent_content):
        return None
    weights = recent_weights(len(recent_content))
    mean = (weights[:, None] * recent_content).sum(0)
    norm = float(np.linalg.norm(mean))
    return mean / norm if norm > 0 else None


def similarity_features(item_vectors: np.ndarray, user_vector: np.ndarray | None, recent_cf: np.ndarray) -> np.ndarray:
    """[n, len(SIMILARITY_FEATURES)] for candidates' collaborative vectors (zeros for items without one)."""
    n = len(item_vectors)
    out = np.zeros((n, len(SIMILARITY_FEATURES)), np.float32)
    if user_vector is not None:
        out[:, 0] = item_vectors @ user_vector
    if len(recent_cf):
        sims = item_vectors @ recent_cf.T
        out[:, 1] = sims.mean(1)
        out[:, 2] = sims.max(1)
    out[:, 3] = len(recent_cf)
    return out


# -- offline: exact search over in-memory matrices (training set and evaluation) -----------------------------------
def candidates_offline(
    query: np.ndarray | None,
    content_q: np.ndarray | None,
    item_cf: np.ndarray,
    item_content: np.ndarray,
    log_popularity: np.ndarray,
    exclude: np.ndarray,
    params: RetrievalParams,
    user_vector: np.ndarray | None = None,
    recent_cf: np.ndarray | None = None,
    ii_scores: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(item indices, feature matrix [n, len(CANDIDATE_FEATURES)]) for one user; ``exclude`` is a bool mask;
    ``ii_scores`` the item-item score of every item (None: no history, the source is off)."""
    n_items = len(item_cf)
    allowed = ~exclude
    cf_scores = item_cf @ query if query is not None else np.zeros(n_items, np.float32)
    ct_scores = item_content @ content_q if content_q is not None else np.zeros(n_items, np.float32)

    def top(scores: np.ndarray, k: int, also: np.ndarray | None = None) -> np.ndarray:
        ok = allowed if also is None else allowed & also
        masked = np.where(ok, scores, -np.inf)
        k = min(k, int(ok.sum()))
        if k <= 0:
            return np.empty(0, np.int64)
        part = np.argpartition(-masked, k - 1)[:k]
        return part[np.argsort(-masked[part], kind="stable")]

    from_cf = top(cf_scores, params.cf) if query is not None else np.empty(0, np.int64)
    from_ct = top(ct_scores, params.content) if content_q is not None else np.empty(0, np.int64)
    from_pop = top(log_popularity, params.popular)
    from_ii = top(ii_scores, params.item_item, ii_scores != 0) if ii_scores is not None else np.empty(0, np.int64)
    items = np.unique(np.concatenate([from_ii, from_cf, from_ct, from_pop]))
    features = np.column_stack(
        [
            cf_scores[items],
            ct_scores[items],
            log_popularity[items],
            np.isin(items, from_cf),
            np.isin(items, from_ct),
            np.isin(items, from_pop),
        ]
    ).astype(np.float32)
    ii = item_item_features(items, ii_scores, from_ii)
    recent = recent_cf if recent_cf is not None else np.empty((0, item_cf.shape[1]), np.float32)
    return items, np.hstack([features, ii, similarity_features(item_cf[items], user_vector, recent)])


def item_item_features(items: np.ndarray, ii_scores: np.ndarray | None, from_ii: np.ndarray) -> np.ndarray:
    """[n, len(ITEM_ITEM_FEATURES)] for candidates given as dense indices."""
    out = np.zeros((len(items), len(ITEM_ITEM_FEATURES)), np.float32)
    if ii_scores is not None:
        out[:, 0] = ii_scores[items]
        out[:, 1] = np.isin(items, from_ii)
    return out


# -- online: one SQL statement against pgvector -----------------------------------------------------------------
def _filter_sql(
    filters: Filters, exclude: list[str], exclude_items: np.ndarray | None = None
) -> tuple[sql.Composable, dict[str, object]]:
    clauses: list[sql.Composable] = [
        sql.SQL("NOT (v.external_id = ANY(%(exclude)s))"),
        sql.SQL("NOT (v.item_id = ANY(%(exclude_items)s::bigint[]))"),
    ]
    params: dict[str, object] = {
        "exclude": exclude,
        "exclude_items": [int(i) for i in exclude_items] if exclude_items is not None else [],
    }
    if filters.domain:
        clauses.append(sql.SQL("v.domain = %(domain)s"))
        params["domain"] = filters.domain
    if filters.categories:
        clauses.append(sql.SQL("v.categories && %(categories)s"))
        params["categories"] = filters.categories
    if filters.providers:
        clauses.append(sql.SQL("v.provider_id = ANY(%(providers)s)"))
        params["providers"] = filters.providers
    return sql.SQL(" AND ").join(clauses), params


def candidates_sql(
    query: np.ndarray | None,
    content_q: np.ndarray | None,
    filters: Filters,
    exclude: list[str],
    p: RetrievalParams,
    item_item_ids: np.ndarray | None = None,
    exclude_items: np.ndarray | None = None,
    content_cold_only: bool = False,
) -> tuple[sql.Composable, dict[str, object]]:
    """One statement: the four sources (the item-item one ranked in the replica and passed in as ids, best first;
    HNSW for the two vector ones) and every candidate's scores. ``content_cold_only``: the content source looks only
    at items without a collaborative vector (the planner scans them through ``item_vectors_cold_idx`` when they are
    few, the content HNSW index otherwise).

    Run on a connection set up by ``configure_connection`` (``hnsw.iterative_scan = relaxed_order``, so filtered
    HNSW scans keep going until they fill their LIMIT, pgvector 0.8). Titles come from a correlated subquery (an
    index lookup per candidate): joining ``items`` made the planner hash-join a sequential scan of the catalog.
    """
    where, params = _filter_sql(filters, exclude, exclude_items)
    zero_cf = f"array_fill(0, ARRAY[{CF_DIM}])::vector"
    zero_ct = f"array_fill(0, ARRAY[{CONTENT_DIM}])::vector"
    params.update(
        {
            # as arrays: pgvector's binary dumper (configure_connection) sends the floats as they are, without
            # formatting 448 of them as text here and parsing them there on every request
            "q": np.asarray(query, np.float32) if query is not None else None,
            "c": np.asarray(content_q, np.float32) if content_q is not None else None,
            "n_cf": p.cf if query is not None else 0,
            "n_ct": p.content if content_q is not None else 0,
            "n_pop": p.popular,
            "ii": [int(i) for i in item_item_ids] if item_item_ids is not None else [],
            "n_ii": p.item_item,
        }
    )
    statement = sql.SQL(
        """
        WITH ii AS (
            SELECT v.item_id FROM unnest(%(ii)s::bigint[]) WITH ORDINALITY AS r(item_id, pos)
            JOIN item_vectors v ON v.item_id = r.item_id WHERE {where} ORDER BY r.pos LIMIT %(n_ii)s
        ), cf AS (
            SELECT v.item_id FROM item_vectors v
            WHERE v.cf IS NOT NULL AND {where}
            ORDER BY v.cf <#> coalesce(%(q)s::vector, {zero_cf}) LIMIT %(n_cf)s
        ), ct AS (
            SELECT v.item_id FROM item_vectors v
            WHERE v.content IS NOT NULL AND {cold} {where}
            ORDER BY v.content <=> coalesce(%(c)s::vector, {zero_ct}) LIMIT %(n_ct)s
        ), pop AS (
            SELECT v.item_id FROM item_vectors v WHERE {where} ORDER BY v.popularity DESC, v.item_id LIMIT %(n_pop)s
        ), found AS (
            SELECT item_id, bool_or(src = 'cf') AS from_cf, bool_or(src = 'ct') AS from_ct,
                   bool_or(src = 'pop') AS from_pop, bool_or(src = 'ii') AS from_ii
            FROM (SELECT item_id, 'cf' AS src FROM cf UNION ALL SELECT item_id, 'ct' FROM ct
                  UNION ALL SELECT item_id, 'pop' FROM pop UNION ALL SELECT item_id, 'ii' FROM ii) s
            GROUP BY item_id
        )
        SELECT v.external_id, (SELECT i.title FROM items i WHERE i.item_id = f.item_id), v.domain, v.provider_id,
               v.categories, v.cf,
               coalesce(-(v.cf <#> %(q)s::vector), 0) AS cf_score,
               coalesce(1 - (v.content <=> %(c)s::vector), 0) AS content_score,
               ln(1 + v.popularity) AS log_popularity,
               f.from_cf, f.from_ct, f.from_pop, f.from_ii, v.item_id
        FROM found f JOIN item_vectors v ON v.item_id = f.item_id
        """
    ).format(
        where=where,
        cold=sql.SQL("v.cf IS NULL AND" if content_cold_only else ""),
        zero_cf=sql.SQL(zero_cf),
        zero_ct=sql.SQL(zero_ct),
    )
    return statement, params


HNSW_SETTINGS = {"hnsw.iterative_scan": "relaxed_order", "hnsw.ef_search": "200"}


def configure_connection(conn) -> None:  # type: ignore[no-untyped-def]
    """Per-connection setup the retrieval statements rely on: pgvector types, and HNSW scans that keep going until
    a filtered query fills its LIMIT (set once per session, not per query: two round trips fewer per request)."""
    from pgvector.psycopg import register_vector

    register_vector(conn)
    # binary vector columns arrive as their raw bytes, decoded a whole column at a time (``vector_matrix``): one
    # pgvector ``Vector`` object a candidate was ~12% of the retrieve stage's time on ml-latest-small
    conn.adapters.register_loader(conn.adapters.types["vector"].oid, RawVectorLoader)
    for name, value in HNSW_SETTINGS.items():
        conn.execute("SELECT set_config(%s, %s, false)", (name, value))
    if not conn.autocommit:
        conn.commit()


# -- online: the user's state, then the candidate statement --------------------------------------------------------
@dataclass
class UserState:
    user_vector: np.ndarray | None
    recent_cf: np.ndarray  # [n, 64] newest first (items without a cf vector left out)
    recent_content: np.ndarray  # [m, 384]
    history: UserHistory = field(default_factory=UserHistory.empty)  # its items are the seen set


@dataclass
class ItemItemIndex:
    """The item-item source as a serving replica holds it: neighbour weights over ``item_ids`` (sorted internal
    ids), loaded from the item_neighbours table."""

    item_ids: np.ndarray
    model: ItemItem
    version: str | None = None

    def scores(self, history: UserHistory) -> np.ndarray | None:
        """Every item's score for the user's history (None without history), in ``item_ids`` order."""
        if not len(history) or not len(self.item_ids):
            return None
        position, found = self.positions(history.items)
        items, best = query_weights(position, history.weight[found], history.ts[found])
        if not len(items):
            return None
        return self.model.scores(items, best)

    def positions(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions in ``item_ids`` of the ``ids`` that are there, mask over ``ids`` of those found)."""
        ids = np.asarray(ids, np.int64)
        position = np.minimum(np.searchsorted(self.item_ids, ids), max(len(self.item_ids) - 1, 0))
        found = (self.item_ids[position] == ids) if len(self.item_ids) else np.zeros(len(ids), bool)
        return position[found], found

    def top(self, scores: np.ndarray, exclude_ids: np.ndarray, n: int) -> np.ndarray:
        """Internal ids of the ``n`` best-scored items (score != 0), ``exclude_ids`` left out."""
        masked = np.where(scores != 0, scores, -np.inf)
        masked[self.positions(exclude_ids)[0]] = -np.inf
        k = min(n, int(np.isfinite(masked).sum()))
        if k <= 0:
            return np.empty(0, np.int64)
        part = np.argpartition(-masked, k - 1)[:k]
        return self.item_ids[part[np.argsort(-masked[part], kind="stable")]]


@dataclass
class CandidateSet:
    item_ids: list[str]
    titles: list[str]
    domains: list[str]
    providers: list[str]
    categories: list[list[str]]
    vectors: np.ndarray  # [n, 64] unit cf vectors (zeros where none)
    features: np.ndarray  # [n, len(CANDIDATE_FEATURES)]
    long_tail: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # below the catalog's head floor

    def __len__(self) -> int:
        return len(self.item_ids)

    def take(self, keep: list[int] | np.ndarray) -> CandidateSet:
        """The candidates at positions ``keep``, in that order."""
        keep = [int(i) for i in keep]
        return CandidateSet(
            [self.item_ids[i] for i in keep],
            [self.titles[i] for i in keep],
            [self.domains[i] for i in keep],
            [self.providers[i] for i in keep],
            [self.categories[i] for i in keep],
            self.vectors[keep],
            self.features[keep],
            self.long_tail[keep] if len(self.long_tail) == len(self) else np.zeros(len(keep), bool),
        )


USER_VECTORS_SQL = """
SELECT 0::bigint AS pos, (SELECT cf FROM user_vectors WHERE external_id = %(user)s) AS cf, NULL AS content
UNION ALL
SELECT r.pos, v.cf, v.content FROM unnest(%(recent)s::text[]) WITH ORDINALITY AS r(external_id, pos)
JOIN item_vectors v ON v.external_id = r.external_id
ORDER BY pos
"""


class RawVectorLoader(Loader):
    """pgvector's binary form (uint16 dimensions, uint16 unused, big-endian float32s) left as bytes."""

    format = Format.BINARY

    def load(self, data: Buffer) -> bytes:
        return bytes(data)


def vector_matrix(values: Sequence[object], dim: int) -> np.ndarray:
    """[len(values), dim] float32 of pgvector values (raw binary from ``RawVectorLoader``, ``Vector`` or text);
    zeros where a value is None."""
    out = np.zeros((len(values), dim), np.float32)
    present = [n for n, value in enumerate(values) if value is not None]
    if not present:
        return out
    if all(isinstance(values[n], bytes) for n in present):
        raw = b"".join(values[n] for n in present)  # type: ignore[misc]
        if len(raw) != len(present) * 4 * (dim + 1):
            raise ValueError(f"expected vectors of {dim} dimensions")
        out[present] = np.frombuffer(raw, ">f4").reshape(len(present), dim + 1)[:, 1:]  # the header is one slot
        return out
    for n in present:
        out[n] = _array(values[n])
    return out


def _array(value: object) -> np.ndarray:
    """A pgvector value (``Vector`` with register_vector, else its text form) as float32."""
    if isinstance(value, bytes):
        return vector_matrix([value], (len(value) - 4) // 4)[0]
    if hasattr(value, "to_numpy"):
        return np.asarray(value.to_numpy(), np.float32)
    if isinstance(value, str):
        return np.asarray(value.strip("[]").split(","), np.float32)
    return np.asarray(value, np.float32)


USER_VECTOR_SQL = "SELECT cf FROM user_vectors WHERE external_id = %(user)s"


def user_state(  # type: ignore[no-untyped-def]
    conn, user_id: str, recent: list[str], history: UserHistory, table: ItemTable | None = None
) -> UserState:
    """User vector and the recent items' vectors (order kept) in one statement, with the user's stored history;
    with ``table`` (the catalog in memory) the recent items' vectors come from it and only the user vector is read."""
    if table is not None:
        row = conn.execute(USER_VECTOR_SQL, {"user": user_id}, binary=True).fetchone()
        recent_cf, recent_content = table.recent_vectors(recent)
        return UserState(_array(row[0]) if row else None, recent_cf, recent_content, history)
    # binary: vectors arrive as raw float32 (as text, parsing 20 recent 384-d content vectors took ~3 ms a request)
    rows = conn.execute(USER_VECTORS_SQL, {"user": user_id, "recent": recent}, binary=True).fetchall()
    user_vector = rows[0][1] if rows else None
    return UserState(
        user_vector=_array(user_vector) if user_vector is not None else None,
        recent_cf=vector_matrix([r[1] for r in rows[1:] if r[1] is not None], CF_DIM),
        recent_content=vector_matrix([r[2] for r in rows[1:] if r[2] is not None], CONTENT_DIM),
        history=history,
    )


def has_cold_items(conn) -> bool:  # type: ignore[no-untyped-def]
    """Whether any item has a content vector but no collaborative one (new since the model was trained, or never
    interacted with): an index probe (migration 0014)."""
    row = conn.execute("SELECT EXISTS (SELECT 1 FROM item_vectors WHERE cf IS NULL AND content IS NOT NULL)").fetchone()
    return bool(row and row[0])


def retrieve(
    conn,  # type: ignore[no-untyped-def]
    user_id: str,
    recent: list[str],
    filters: Filters,
    exclude: list[str],
    params: RetrievalParams,
    exclude_seen: bool = True,
    item_item: ItemItemIndex | None = None,
    head_floor: float = 0.0,
    history: UserHistory | None = None,
    item_item_alone_from: int | None = None,
    cold_items: bool = True,
    table: ItemTable | None = None,
) -> CandidateSet:
    """Serving's candidate generation for one user (the online twin of ``candidates_offline``); ``conn`` is set up
    by ``configure_connection``. ``head_floor``: the catalog's long-tail popularity floor (rerank.head_floor).
    ``history``: the user's (recstack.tables.history; None: none, as for the popular fallback).

    ``item_item_alone_from``: when the slate is ordered by the item-item score alone (the model's ``order_by``), the
    number of item-item candidates from which the collaborative vector source is skipped and the content one cut to
    ``ALONE_CONTENT`` items without a collaborative vector. Every candidate gets its item-item score whichever source
    found it, so a scored candidate outside the item-item top ranks below all of it; only a new item (no neighbours,
    no vector) can still rank high, as a near-duplicate of the history (``place_cold``), so the content scan looks
    only among those (on ml-latest-small, 1,186 of 9,125 items: 0.9 ms against 1.9-2.3 ms for the whole catalog's
    HNSW scan, whose nearest ten were mostly items the item-item order ranks anyway). Skipping the scan left new
    items out of every slate (tests/integration/test_serving.py
    test_a_new_item_without_interactions_is_reachable_by_content). Unfiltered requests only (a filter may drop
    item-item candidates). ``cold_items``: whether the catalog has any item without a collaborative vector
    (``has_cold_items``); without any, the content scan is skipped too (at 1M users / 100k items its HNSW scan alone
    took 100 rps past two cores). ``table``: the catalog held in memory (recstack.stages.item_table); when given,
    that order's candidates and the recent items' vectors come from it instead of the statements (only the user
    vector is read)."""
    history = history if history is not None else UserHistory.empty()
    ii_scores = item_item.scores(history) if item_item is not None and params.item_item > 0 else None
    ii_top = None
    alone = False
    filtered = bool(filters.domain or filters.categories or filters.providers)
    if ii_scores is not None and item_item is not None:
        ii_top = item_item.top(ii_scores, history.items, params.item_item * (4 if filtered else 1))
        alone_from = item_item_alone_from
        alone = alone_from is not None and not filtered and len(ii_top) - len(exclude) >= alone_from
        if alone:
            params = replace(params, cf=0, content=min(params.content, ALONE_CONTENT if cold_items else 0))
    memory = table if alone else None  # the catalog in memory serves this order's candidates
    state = user_state(conn, user_id, recent, history, memory)
    query = query_vector(state.user_vector, state.recent_cf)
    content_q = content_query(state.recent_content)
    seen = history.items if exclude_seen else None
    if memory is not None and ii_top is not None:
        at, found = memory.candidates(query, content_q, list(exclude), params, ii_top, seen)
        return _candidate_set(
            memory.external_ids[at].tolist(),
            memory.titles[at].tolist(),
            memory.domains[at].tolist(),
            memory.providers[at].tolist(),
            [list(c) for c in memory.categories[at]],
            memory.cf[at],
            found[:, : len(SOURCE_FEATURES)],
            found[:, len(SOURCE_FEATURES)],
            memory.item_ids[at],
            ii_scores,
            item_item,
            state,
            head_floor,
        )
    statement, args = candidates_sql(query, content_q, filters, list(exclude), params, ii_top, seen, alone)
    rows = conn.execute(statement, args, binary=True).fetchall()  # binary: vectors arrive as raw float32
    return _candidate_set(
        [r[0] for r in rows],
        [r[1] or "" for r in rows],
        [r[2] for r in rows],
        [r[3] or "" for r in rows],
        [list(r[4] or []) for r in rows],
        vector_matrix([r[5] for r in rows], CF_DIM),
        np.array([r[6:12] for r in rows], dtype=np.float32).reshape(len(rows), len(SOURCE_FEATURES)),
        np.array([bool(r[12]) for r in rows], np.float32),
        np.array([r[13] for r in rows], np.int64),
        ii_scores,
        item_item,
        state,
        head_floor,
    )


def _candidate_set(
    item_ids: list[str],
    titles: list[str],
    domains: list[str],
    providers: list[str],
    categories: list[list[str]],
    vectors: np.ndarray,
    source: np.ndarray,
    from_ii: np.ndarray,
    internal_ids: np.ndarray,
    ii_scores: np.ndarray | None,
    item_item: ItemItemIndex | None,
    state: UserState,
    head_floor: float,
) -> CandidateSet:
    """The candidates with every feature: ``source`` (SOURCE_FEATURES columns) as retrieved, the item-item score
    of each candidate whichever source found it, the similarity features."""
    ii = np.zeros((len(item_ids), len(ITEM_ITEM_FEATURES)), np.float32)
    if ii_scores is not None and item_item is not None and len(item_ids):
        position, found = item_item.positions(internal_ids)
        ii[found, 0] = ii_scores[position]
        ii[:, 1] = from_ii
    popularity = np.expm1(source[:, SOURCE_FEATURES.index("log_popularity")].astype(np.float64))
    return CandidateSet(
        item_ids=item_ids,
        titles=titles,
        domains=domains,
        providers=providers,
        categories=categories,
        vectors=vectors,
        features=np.hstack([source, ii, similarity_features(vectors, state.user_vector, state.recent_cf)]),
        long_tail=popularity < head_floor * (1 - 1e-6),  # float32 log popularity round trip
    )
