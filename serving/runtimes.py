"""The stage runtimes: one class per stage (one per Ray Serve deployment in graph mode), holding the stage's clients
and calling the pure stage functions in recstack/stages.

``Retriever`` (pgvector, Redis history), ``FeatureLookup`` (Feast's Redis layout), ``Ranker`` (the promoted CatBoost
model) and ``Reranker`` (MMR, provider cap, long-tail floor). What crosses from one stage to the next is typed:
``CandidateSet`` and ``Filters`` (recstack.stages.retrieve), ``Features``, ``Scores``, slate positions. The same
classes run in a plain process (tests, benchmarks, a fused replica) and as graph deployments (serving/app.py).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from recstack import heap, stack
from recstack.reload import BackgroundReload
from recstack.settings import Settings
from recstack.stages import item_table
from recstack.stages.item_item import UserHistory
from recstack.stages.item_table import ItemTable
from recstack.stages.rank import RankContext, contributions, model_columns, score
from recstack.stages.rerank import Candidates, RerankParams, head_floor, rerank
from recstack.stages.retrieve import (
    CandidateSet,
    Filters,
    ItemItemIndex,
    RetrievalParams,
    best_by_source,
    configure_connection,
    has_cold_items,
    place_cold,
    retrieve,
    source_order,
)
from recstack.tables import history, registry
from serving import metrics

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

log = logging.getLogger("recstack.serving")
RERANK_POOL = 100  # the ranker's top-N handed to the rerank stage
# How often a replica re-reads the promoted model version and the trained item-item set (seconds).
MODEL_CHECK_S = 5


@dataclass
class Features:
    """One request's features from the online store: the user's values by feature name ("view__feature"), the
    candidates' values as column arrays aligned with the candidate set."""

    user: dict[str, Any]
    items: dict[str, np.ndarray]


@dataclass
class Scores:
    """The ranker's score per candidate (aligned with the candidate set) and the model version that gave them."""

    scores: np.ndarray
    model_version: str


@dataclass
class LoadedModel:
    """A verified model from the registry with what its record says about its input and its order."""

    version: str
    model: Any
    features: list[str]
    categorical: list[str]
    order_by: str | None  # a single source's score orders instead (the ranker did not beat it on held-out groups)


def postgres_pool(settings: Settings, size: int = 4, options: str = "") -> ConnectionPool:
    """A small pool of autocommit connections with connect and statement timeouts (RECSTACK_CONNECT_TIMEOUT_S)."""
    from psycopg_pool import ConnectionPool

    timeout = settings.connect_timeout_s
    return ConnectionPool(
        stack.postgres_dsn(settings),
        min_size=1,
        max_size=size,
        timeout=timeout,
        kwargs={
            "autocommit": True,
            "connect_timeout": max(1, int(timeout)),
            "options": f"-c statement_timeout={int(timeout * 1000)} {options}".strip(),
        },
        configure=configure_connection,
        open=True,
    )


def _online_lookup(settings: Settings, users: dict[str, Any], items: dict[str, Any]):  # type: ignore[no-untyped-def]
    from recstack.features.online import OnlineLookup
    from recstack.features.store import open_store

    client = stack.redis_client(settings)
    return OnlineLookup.from_store(open_store(settings), client, users, items)


def _order_by(conn: Any, version: str) -> str | None:
    """The single source whose score orders model ``version``'s slates (None: its ranker, or no such record)."""
    from recstack.tables import registry

    try:
        return registry.get(conn, version).params.get("order_by")
    except registry.RegistryError:
        return None


class Retriever:
    """Recent items (Redis, else the durable Postgres copy) -> user state -> one pgvector statement."""

    def __init__(self, settings: Settings, params: RetrievalParams | None = None) -> None:
        self.settings = settings
        self.params = params or RetrievalParams()
        self.pool = postgres_pool(settings)
        self.realtime = _online_lookup(settings, {"user_realtime": ["recent_item_ids"]}, {})
        self.redis = stack.redis_client(settings)
        self._item_item: ItemItemIndex | None = None
        self._item_item_checked = 0.0
        self._item_item_lock = threading.Lock()
        self._item_item_reload = BackgroundReload("item-item-reload")  # a new set, read off the request path
        self._head_floor = 0.0  # the catalog's long-tail floor, read with each new trained set
        self._order_by: str | None = None  # the live set's model's single-source order, read with it
        self._cold_items = True  # any item without a collaborative vector (re-read with each check)
        # the catalog in memory while the live model orders by the item-item score (recstack.stages.item_table)
        self._table: ItemTable | None = None
        self._table_reload = BackgroundReload("item-table-reload")
        try:
            self.refresh()
        except Exception as err:
            log.warning("item-item neighbours not loaded yet (%s)", err)

    def refresh(self) -> ItemItemIndex | None:
        """The live item-item set, after this replica's checks every MODEL_CHECK_S: a new trained set (read with its
        long-tail floor, rerank.head_floor over the trained popularity, and its model's order), whether the catalog
        has items only the content source finds (from the catalog in memory when it is current, else an index probe:
        ``has_cold_items``), and the catalog's epoch (the table is re-read when it moved). A new set or table is read
        on a thread of its own while requests keep what they have (at 1M users / 100k items reading the set takes
        ~1 s, which every retrieval of the replica waited out behind this lock, past its deadline); only the first
        set, with none to serve meanwhile, is read here."""
        if time.monotonic() - self._item_item_checked < MODEL_CHECK_S:
            return self._item_item
        with self._item_item_lock:
            if time.monotonic() - self._item_item_checked < MODEL_CHECK_S:
                return self._item_item
            from recstack.tables import neighbours

            table = self._table
            with self.pool.connection() as conn:
                stored = neighbours.version(conn)
                catalog = item_table.epoch(conn)
                current = table is not None and table.epoch == catalog
                self._cold_items = table.has_cold_items() if table is not None and current else has_cold_items(conn)
            if stored is None:
                self._item_item = None
            elif self._item_item is None:
                self._load_item_item(stored)
            elif self._item_item.version != stored:
                self._item_item_reload.start(lambda: self._load_item_item(stored))
            if self._order_by != "ii_score":
                self._table = None  # other orders scan the vector indexes: the statement serves them
            elif not current:
                self._table_reload.start(self._load_table)  # the statement serves until it is read
            self._item_item_checked = time.monotonic()
        return self._item_item

    def _load_table(self) -> None:
        try:
            with self.pool.connection() as conn:
                loaded = item_table.load(conn)
            self._table = loaded
            heap.settle()
        except Exception as err:
            log.warning("catalog not read into memory (%s); retried at the next check", err)

    def _load_item_item(self, version: str) -> None:
        """Read set ``version`` with its long-tail floor and its model's order, then serve them (one assignment)."""
        from recstack.tables import neighbours

        try:
            with self.pool.connection() as conn:
                rows = conn.execute("SELECT item_id, popularity FROM item_vectors ORDER BY item_id").fetchall()
                ids = np.array([r[0] for r in rows], np.int64)
                loaded = ItemItemIndex(ids, neighbours.load(conn, ids), version)
                floor = head_floor(np.array([r[1] or 0.0 for r in rows], np.float64))
                order_by = _order_by(conn, version)
            self._item_item, self._head_floor, self._order_by = loaded, floor, order_by
            heap.settle()
        except Exception as err:
            if self._item_item is None:  # the first set: the caller degrades this request
                raise
            log.warning("item-item set %s not loaded (%s); retried at the next check", version, err)

    def recent_items(self, user_id: str) -> list[str]:
        try:
            found = self.realtime.lookup(user_id, []).user.get("user_realtime__recent_item_ids")
            return list(found or [])
        except Exception:  # Redis down or slow: the same list from Postgres
            metrics.FALLBACKS.labels("recent_items_from_postgres").inc()
            with self.pool.connection() as conn:
                row = conn.execute(
                    "SELECT recent_item_ids FROM user_realtime WHERE user_id = %s", (user_id,)
                ).fetchone()
            return list(row[0] or []) if row else []

    def retrieve(
        self, user_id: str, filters: Filters, exclude: list[str], model_version: str | None = None
    ) -> CandidateSet:
        """Candidates for a request ranked by ``model_version`` (None: the promoted model). When that model is the
        live set's and orders by the item-item score alone, the collaborative source is skipped and the content one cut
        (skipped when every item has a collaborative vector) once the item-item source fills the rerank pool
        (recstack.stages.retrieve.retrieve). When it orders by one source's score, only the RERANK_POOL candidates
        that order ranks first are returned (recstack.stages.retrieve.best_by_source)."""
        recent = self.recent_items(user_id)[: self.params.recent]
        try:
            item_item = self.refresh()
        except Exception as err:  # Postgres unreachable: retrieval below fails and degrades the same way
            log.warning("item-item neighbours not checked (%s)", err)
            item_item = self._item_item
        floor = self._head_floor
        live = item_item is not None and model_version in (None, item_item.version)
        alone_from = RERANK_POOL if live and self._order_by == "ii_score" else None
        stored = self.stored_history(user_id)
        with self.pool.connection() as conn:
            found = stored if stored is not None else history.from_postgres(conn, user_id)
            out = retrieve(
                conn,
                user_id,
                recent,
                filters,
                exclude,
                self.params,
                True,
                item_item,
                floor,
                found,
                alone_from,
                self._cold_items,
                self._table,
            )
        if stored is None:
            try:  # the next request reads it from Redis
                history.fill(self.redis, user_id, found)
            except Exception as err:
                log.debug("history of %s not cached (%s)", user_id, err)
        if live and self._order_by is not None:
            # Only the order's best RERANK_POOL can reach a slate; the rest need not cross the graph's hop (on
            # ml-latest-small 227 candidates, 84 KB pickled, became 100).
            out = best_by_source(out, self._order_by, RERANK_POOL)
        return out

    def stored_history(self, user_id: str) -> UserHistory | None:
        """The user's history from Redis (None: not there or Redis unreachable; Postgres aggregates it then)."""
        try:
            found = history.read(self.redis, user_id)
        except Exception:
            metrics.FALLBACKS.labels("history_from_postgres").inc()
            return None
        if found is None:
            metrics.FALLBACKS.labels("history_not_stored").inc()
        return found

    def ready(self) -> bool:
        with self.pool.connection() as conn:
            return conn.execute("SELECT EXISTS (SELECT 1 FROM item_vectors)").fetchone() == (True,)

    def popular(self, filters: Filters, exclude: list[str], n: int = 500) -> CandidateSet:
        """Popular items only (the retrieval fallback); same statement with the vector sources switched off."""
        params = RetrievalParams(item_item=0, cf=0, content=0, popular=n, recent=0)
        with self.pool.connection() as conn:
            return retrieve(conn, "", [], filters, exclude, params, False, None, self._head_floor)

    def similar(self, item_id: str, k: int) -> list[dict[str, Any]] | None:
        """Items nearest to ``item_id`` by collaborative vector and by content vector (HNSW), merged."""
        with self.pool.connection() as conn:
            row = conn.execute("SELECT cf, content FROM item_vectors WHERE external_id = %s", (item_id,)).fetchone()
            if row is None:
                return None
            out: dict[str, dict[str, Any]] = {}
            for kind, vector, op in (("collaborative", row[0], "<#>"), ("content", row[1], "<=>")):
                if vector is None:
                    continue
                column = "cf" if kind == "collaborative" else "content"
                sim = f"-(v.{column} {op} %(q)s)" if op == "<#>" else f"1 - (v.{column} {op} %(q)s)"
                rows = conn.execute(
                    f"SELECT v.external_id, i.title, v.domain, {sim} FROM item_vectors v "  # noqa: S608
                    f"JOIN items i ON i.item_id = v.item_id WHERE v.{column} IS NOT NULL "
                    f"AND v.external_id <> %(id)s ORDER BY v.{column} {op} %(q)s LIMIT %(k)s",
                    {"q": vector, "id": item_id, "k": k},
                ).fetchall()
                for ext, title, domain, similarity in rows:
                    entry = out.setdefault(ext, {"item_id": ext, "title": title, "domain": domain, "score": 0.0})
                    entry["score"] = max(entry["score"], float(similarity))
                    entry.setdefault("reasons", []).append(f"{kind} similarity {float(similarity):.3f}")
        return sorted(out.values(), key=lambda e: -e["score"])[:k]


class FeatureLookup:
    """The fast online lookup (Feast's Redis hashes; item columns cached per materialization version)."""

    def __init__(self, settings: Settings) -> None:
        from recstack.features.online import OnlineLookup
        from recstack.features.store import open_store
        from recstack.features.training_frames import FEATURE_SERVICE

        self.lookup_ = OnlineLookup.for_service(open_store(settings), stack.redis_client(settings), FEATURE_SERVICE)
        try:  # warm the item cache with the whole catalog so the first requests pay nothing
            with postgres_pool(settings, size=1) as pool, pool.connection() as conn:
                ids = [r[0] for r in conn.execute("SELECT external_id FROM items ORDER BY item_id")]
            self.lookup_.load_items(ids)
        except Exception as err:
            log.warning("item feature cache not warmed (%s); it fills on demand", err)

    def ready(self) -> bool:
        return True

    def lookup(self, user_id: str, item_ids: list[str]) -> Features:
        found = self.lookup_.lookup(user_id, item_ids)
        return Features(found.user, found.items)


class Ranker:
    """The promoted CatBoost model (checksum verified); a promote or rollback is picked up within seconds."""

    def __init__(self, settings: Settings) -> None:
        self.pool = postgres_pool(settings, size=2)
        self._models: dict[str, LoadedModel] = {}
        self._promoted: str | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        try:
            self.model(None)  # load (and verify) the promoted model before the first request
        except Exception as err:
            log.warning("no model loaded yet (%s)", err)

    def promoted(self) -> str | None:
        """The promoted model version, re-read from the registry every MODEL_CHECK_S."""
        if time.monotonic() - self._checked > MODEL_CHECK_S:
            with self.pool.connection() as conn:
                promoted = registry.promoted_version(conn)
            if promoted is not None and promoted != self._promoted:
                metrics.MODEL_INFO.info({"version": promoted})  # a rollback to a cached model shows too
            self._promoted = promoted
            self._checked = time.monotonic()
        return self._promoted

    def order(self, version: str | None = None) -> tuple[str, str] | None:
        """(source, model version) when model ``version`` (None: the promoted one) orders slates by that single
        source's score rather than by its ranker (``rank`` below); None when its ranker scores, or no model."""
        found = self.model(version)
        return (found.order_by, found.version) if found is not None and found.order_by is not None else None

    def model(self, version: str | None) -> LoadedModel | None:
        """Model ``version`` (None: the promoted one), loaded and verified once per replica; None if none promoted."""
        version = version or self.promoted()
        if version is None:
            return None
        with self._lock:
            if version not in self._models:
                with self.pool.connection() as conn:
                    record = registry.get(conn, version)
                    loaded = registry.load_verified(conn, record)
                self._models[version] = LoadedModel(
                    version,
                    loaded,
                    record.features,
                    record.params.get("categorical", []),
                    record.params.get("order_by"),
                )
        return self._models[version]

    def _columns(
        self, features: Features, candidates: CandidateSet, ctx: RankContext, version: str | None
    ) -> tuple[LoadedModel, dict[str, np.ndarray]]:
        found = self.model(version)
        if found is None:
            raise RuntimeError("no promoted model")
        columns = model_columns(features.user, features.items, candidates, ctx, found.features, found.categorical)
        return found, columns

    def rank(
        self, features: Features, candidates: CandidateSet, ctx: RankContext, version: str | None = None
    ) -> Scores:
        """The score of each candidate and the model version. A model whose ranker did not beat its best single
        source on the held-out groups (``order_by`` in its record) orders by that source's score instead."""
        found = self.model(version)
        if found is not None and found.order_by is not None:
            return Scores(source_order(candidates.features, found.order_by), found.version)
        found, columns = self._columns(features, candidates, ctx, version)
        return Scores(place_cold(score(found.model, columns, found.categorical), candidates.features), found.version)

    def explain(
        self, features: Features, candidates: CandidateSet, ctx: RankContext, version: str, rows: list[int]
    ) -> list[list[str]]:
        """Top feature contributions (SHAP) of the model for the given candidate rows (the slate)."""
        found, columns = self._columns(features, candidates, ctx, version)
        return contributions(found.model, columns, found.features, found.categorical, rows)

    def ready(self) -> bool:
        return self.model(None) is not None


class Reranker:
    def rerank(self, candidates: CandidateSet, scores: np.ndarray, k: int, params: RerankParams) -> list[int]:
        """Slate positions (indices into ``candidates``) after MMR, provider cap and long-tail floor, over the
        ``RERANK_POOL`` best-scored candidates."""
        top = np.argsort(-scores, kind="stable")[:RERANK_POOL]
        # Long tail as retrieval marked it (rerank.head_floor); none when a caller built candidates without it.
        tail = candidates.long_tail if len(candidates.long_tail) == len(candidates) else np.zeros(len(candidates), bool)
        chosen = rerank(
            Candidates(
                item_ids=[candidates.item_ids[i] for i in top],
                scores=scores[top],
                providers=[candidates.providers[i] for i in top],
                long_tail=tail[top],
                vectors=candidates.vectors[top],
                categories=[candidates.categories[i] for i in top],
            ),
            k,
            params,
        )
        return [int(top[i]) for i in chosen]


def limit_math_threads() -> None:
    """One BLAS/OpenMP thread in this process. Requests already run concurrently, and OpenBLAS's worker threads spin
    while idle: with its default thread pool one /recommend cost 23 ms of CPU for 14 ms of wall time, with one
    thread 11 ms (FastAPI app in one process, 280 requests, 100k/20k stack): CPU other requests and replicas need."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
