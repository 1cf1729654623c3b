"""Retrieval stage: query vectors from the user's recent items and user vector; candidates from three sources.

Sources, as in serving and in offline training/evaluation alike:
  * collaborative: top-N by inner product with the query vector (pgvector HNSW ``<#>``; numpy offline),
  * content: top-M by cosine with the mean content vector of the recent items (reaches items nobody touched yet),
  * popular: top-P by popularity in the model's window (cold users get only these).
Every candidate carries the same scores whichever source found it (CANDIDATE_FEATURES), so the ranker sees the
same inputs offline and online.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from psycopg import sql

CANDIDATE_FEATURES = ["cf_score", "content_score", "log_popularity", "from_cf", "from_content", "from_popular"]
RECENCY_DECAY = 0.85  # weight of the i-th most recent item: decay ** i
USER_VECTOR_WEIGHT = 0.5  # blend of the long-term user vector and the recent-items vector


@dataclass(frozen=True)
class RetrievalParams:
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


# -- offline: exact search over in-memory matrices (training set and evaluation) -----------------------------------
def candidates_offline(
    query: np.ndarray | None,
    content_q: np.ndarray | None,
    item_cf: np.ndarray,
    item_content: np.ndarray,
    log_popularity: np.ndarray,
    exclude: np.ndarray,
    params: RetrievalParams,
) -> tuple[np.ndarray, np.ndarray]:
    """(item indices, feature matrix [n, len(CANDIDATE_FEATURES)]) for one user; ``exclude`` is a bool mask."""
    n_items = len(item_cf)
    allowed = ~exclude
    cf_scores = item_cf @ query if query is not None else np.zeros(n_items, np.float32)
    ct_scores = item_content @ content_q if content_q is not None else np.zeros(n_items, np.float32)

    def top(scores: np.ndarray, k: int) -> np.ndarray:
        masked = np.where(allowed, scores, -np.inf)
        k = min(k, int(allowed.sum()))
        if k <= 0:
            return np.empty(0, np.int64)
        part = np.argpartition(-masked, k - 1)[:k]
        return part[np.argsort(-masked[part], kind="stable")]

    from_cf = top(cf_scores, params.cf) if query is not None else np.empty(0, np.int64)
    from_ct = top(ct_scores, params.content) if content_q is not None else np.empty(0, np.int64)
    from_pop = top(log_popularity, params.popular)
    items = np.unique(np.concatenate([from_cf, from_ct, from_pop]))
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
    return items, features


# -- online: one SQL statement against pgvector -----------------------------------------------------------------
def _filter_sql(filters: Filters, exclude: list[str]) -> tuple[sql.Composable, dict[str, object]]:
    clauses: list[sql.Composable] = [sql.SQL("NOT (v.external_id = ANY(%(exclude)s))")]
    params: dict[str, object] = {"exclude": exclude}
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
    query: np.ndarray | None, content_q: np.ndarray | None, filters: Filters, exclude: list[str], p: RetrievalParams
) -> tuple[sql.Composable, dict[str, object]]:
    """One statement: the three sources (HNSW for the two vector ones) and every candidate's scores.

    Run inside a transaction with ``SET LOCAL hnsw.iterative_scan = relaxed_order`` so filtered HNSW scans keep
    going until they fill their LIMIT (pgvector 0.8).
    """
    where, params = _filter_sql(filters, exclude)
    zero_cf = "array_fill(0, ARRAY[64])::vector"
    zero_ct = "array_fill(0, ARRAY[384])::vector"
    params.update(
        {
            "q": "[" + ",".join(f"{x:.6g}" for x in query) + "]" if query is not None else None,
            "c": "[" + ",".join(f"{x:.6g}" for x in content_q) + "]" if content_q is not None else None,
            "n_cf": p.cf if query is not None else 0,
            "n_ct": p.content if content_q is not None else 0,
            "n_pop": p.popular,
        }
    )
    statement = sql.SQL(
        """
        WITH cf AS (
            SELECT v.item_id FROM item_vectors v
            WHERE v.cf IS NOT NULL AND {where}
            ORDER BY v.cf <#> coalesce(%(q)s::vector, {zero_cf}) LIMIT %(n_cf)s
        ), ct AS (
            SELECT v.item_id FROM item_vectors v
            WHERE v.content IS NOT NULL AND {where}
            ORDER BY v.content <=> coalesce(%(c)s::vector, {zero_ct}) LIMIT %(n_ct)s
        ), pop AS (
            SELECT v.item_id FROM item_vectors v WHERE {where} ORDER BY v.popularity DESC, v.item_id LIMIT %(n_pop)s
        ), found AS (
            SELECT item_id, bool_or(src = 'cf') AS from_cf, bool_or(src = 'ct') AS from_ct,
                   bool_or(src = 'pop') AS from_pop
            FROM (SELECT item_id, 'cf' AS src FROM cf UNION ALL SELECT item_id, 'ct' FROM ct
                  UNION ALL SELECT item_id, 'pop' FROM pop) s
            GROUP BY item_id
        )
        SELECT v.external_id, v.domain, v.provider_id, v.categories,
               coalesce(-(v.cf <#> %(q)s::vector), 0) AS cf_score,
               coalesce(1 - (v.content <=> %(c)s::vector), 0) AS content_score,
               ln(1 + v.popularity) AS log_popularity,
               f.from_cf, f.from_ct, f.from_pop
        FROM found f JOIN item_vectors v ON v.item_id = f.item_id
        """
    ).format(where=where, zero_cf=sql.SQL(zero_cf), zero_ct=sql.SQL(zero_ct))
    return statement, params
