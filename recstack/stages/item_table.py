"""The catalog as a serving replica holds it: the rows of ``item_vectors`` (with the titles of ``items``) as arrays,
so the item-item order's candidates are gathered in memory instead of by a statement per request.

When a model orders slates by the item-item score alone (recstack.stages.retrieve ``item_item_alone_from``), the
candidate statement only joined rows the replica already knew by id (the item-item top), took the most popular
items and, for new items, scanned the few without a collaborative vector. At 1M users / 100k items that statement
was about 3.5 ms of Postgres CPU a request, more than half of a request's CPU in process. ``candidates`` gives the
same candidates with the same features (tests/integration/test_serving_catalog.py compares it with the statement); the
replica re-reads the table when ``catalog_epoch`` moves (migration 0015: any write to ``item_vectors`` or ``items``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from recstack.stages.retrieve import CF_DIM, CONTENT_DIM, RetrievalParams, vector_matrix

LOAD_BATCH = 5000  # rows a fetch while loading (a 100k-item catalog's content vectors are ~150 MB)


@dataclass(frozen=True)
class ItemTable:
    item_ids: np.ndarray  # int64, ascending
    external_ids: np.ndarray  # object (str)
    titles: np.ndarray  # object (str, "" without one)
    domains: np.ndarray  # object (str)
    providers: np.ndarray  # object (str)
    categories: np.ndarray  # object (list[str])
    popularity: np.ndarray  # float32, as stored (real)
    cf: np.ndarray  # [n, CF_DIM] float32, zeros where none
    has_cf: np.ndarray  # bool
    content: np.ndarray  # [n, CONTENT_DIM] float32, zeros where none
    has_content: np.ndarray  # bool
    content_norm: np.ndarray  # float32 norms of ``content``
    epoch: int
    by_popularity: np.ndarray  # positions by popularity descending, then item id (the popular source's order)
    position_of: dict[str, int]  # external id -> position

    def __len__(self) -> int:
        return len(self.item_ids)

    @classmethod
    def build(
        cls,
        item_ids: np.ndarray,
        external_ids: list[str],
        titles: list[str | None],
        domains: list[str],
        providers: list[str | None],
        categories: list[list[str] | None],
        popularity: np.ndarray,
        cf: np.ndarray,
        has_cf: np.ndarray,
        content: np.ndarray,
        has_content: np.ndarray,
        epoch: int,
    ) -> ItemTable:
        """From columns in any row order (``cf`` and ``content`` as float32 matrices, zeros where ``has_*`` is
        False)."""
        ids = np.asarray(item_ids, np.int64)
        in_order = not (np.diff(ids) <= 0).any()  # load sorts them: no copy of the vectors then
        order = np.arange(len(ids)) if in_order else np.argsort(ids, kind="stable")

        def rows(values: np.ndarray, dtype: type) -> np.ndarray:
            values = np.asarray(values, dtype)
            return values if in_order else values[order]

        intern: dict[Any, Any] = {}  # domains, providers and category names repeat: one string object each

        def column(values: list[Any], empty: object = None, shared: bool = False) -> np.ndarray:
            out = np.empty(len(order), object)  # filled one by one: lists of equal length must stay lists
            for n, at in enumerate(order):
                value = values[at] if values[at] is not None else empty
                out[n] = intern.setdefault(value, value) if shared else value
            return out

        ids, pop, content = ids[order], rows(popularity, np.float32), rows(content, np.float32)
        external = column(external_ids)
        return cls(
            item_ids=ids,
            external_ids=external,
            titles=column(titles, ""),
            domains=column(domains, shared=True),
            providers=column(providers, "", shared=True),
            categories=column([[intern.setdefault(c, c) for c in names or []] for names in categories]),
            popularity=pop,
            cf=rows(cf, np.float32),
            has_cf=rows(has_cf, bool),
            content=content,
            content_norm=np.linalg.norm(content, axis=1).astype(np.float32),
            has_content=rows(has_content, bool),
            epoch=epoch,
            by_popularity=np.lexsort((ids, -pop.astype(np.float64))),
            position_of={str(e): n for n, e in enumerate(external)},
        )

    def has_cold_items(self) -> bool:
        """Whether any item has a content vector but no collaborative one (retrieve.has_cold_items, from memory)."""
        return bool((self.has_content & ~self.has_cf).any())

    def recent_vectors(self, recent: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """The collaborative and the content vectors of the ``recent`` items (external ids, order kept), each
        leaving out the items without one: ``retrieve.user_state``'s statement, from memory."""
        at = np.array([self.position_of[e] for e in recent if e in self.position_of], np.int64)
        return self.cf[at[self.has_cf[at]]], self.content[at[self.has_content[at]]]

    def positions(self, item_ids: np.ndarray) -> np.ndarray:
        """Positions of the internal ids that are in the table, in the order given."""
        ids = np.asarray(item_ids, np.int64)
        if not len(ids) or not len(self.item_ids):
            return np.empty(0, np.int64)
        at = np.minimum(np.searchsorted(self.item_ids, ids), len(self.item_ids) - 1)
        return at[self.item_ids[at] == ids]

    def candidates(
        self,
        query: np.ndarray | None,
        content_q: np.ndarray | None,
        exclude: list[str],
        p: RetrievalParams,
        item_item_ids: np.ndarray,
        exclude_items: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(positions ascending, features [n, len(SOURCE_FEATURES) + 1], the last column from_ii) of what
        ``retrieve.candidates_sql`` returns for an unfiltered request ordered by the item-item score alone
        (``content_cold_only``, no collaborative scan): the item-item ids in their order (``p.item_item`` at most),
        the ``p.content`` items without a collaborative vector nearest ``content_q`` by cosine (exact, where the
        statement may use the HNSW index), the ``p.popular`` most popular; ``exclude`` (external ids) and
        ``exclude_items`` (internal ids) left out of each source."""
        if p.cf and query is not None:
            raise ValueError("the in-memory candidates serve the item-item order alone (no collaborative scan)")
        allowed = np.ones(len(self), bool)
        allowed[[self.position_of[e] for e in exclude if e in self.position_of]] = False
        if exclude_items is not None and len(exclude_items):
            allowed[self.positions(exclude_items)] = False
        ii = self.positions(item_item_ids)
        from_ii = ii[allowed[ii]][: p.item_item]
        head = self.by_popularity[: p.popular + int((~allowed).sum())]  # holds p.popular allowed ones
        from_pop = head[allowed[head]][: p.popular]
        from_ct = np.empty(0, np.int64)
        if content_q is not None and p.content:
            cold = np.flatnonzero(allowed & self.has_content & ~self.has_cf)
            best = np.argsort(-self.cosine(cold, content_q), kind="stable")[: p.content]
            from_ct = cold[best]
        items = np.unique(np.concatenate([from_ii, from_pop, from_ct]))
        cf_score = np.zeros(len(items), np.float32)
        if query is not None:
            cf_score = np.where(self.has_cf[items], self.cf[items] @ np.asarray(query, np.float32), 0)
        content_score = np.zeros(len(items), np.float32)
        if content_q is not None:
            content_score = np.where(self.has_content[items], self.cosine(items, content_q), 0)
        features = np.column_stack(
            [
                cf_score,
                content_score,
                np.log1p(self.popularity[items].astype(np.float64)),
                np.zeros(len(items)),  # from_cf: no collaborative scan on this path
                np.isin(items, from_ct),
                np.isin(items, from_pop),
                np.isin(items, from_ii),
            ]
        ).astype(np.float32)
        return items, features

    def cosine(self, rows: np.ndarray, query: np.ndarray) -> np.ndarray:
        """Cosine similarity of the content vectors at ``rows`` with ``query`` (0 where either is zero), as
        pgvector's ``1 - (a <=> b)``."""
        dots = self.content[rows] @ np.asarray(query, np.float32)
        norms = self.content_norm[rows] * np.float32(np.linalg.norm(query))
        return np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)


def epoch(conn) -> int:  # type: ignore[no-untyped-def]
    """The catalog's change counter (migration 0015)."""
    row = conn.execute("SELECT epoch FROM catalog_epoch").fetchone()
    return int(row[0]) if row else 0


def load(conn) -> ItemTable:  # type: ignore[no-untyped-def]
    """Read the table (on a connection set up by retrieve.configure_connection: vectors arrive as raw bytes),
    ``LOAD_BATCH`` rows at a time through a server-side cursor, each batch's vectors decoded before the next is
    fetched. The epoch is read first: a write after it moves the counter again, so the next check reads again."""
    at = epoch(conn)
    columns: list[list[object]] = [[] for _ in range(7)]
    vectors: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    with conn.transaction(), conn.cursor("item_table", binary=True) as cur:
        cur.itersize = LOAD_BATCH
        cur.execute(
            "SELECT v.item_id, v.external_id, i.title, v.domain, v.provider_id, v.categories, v.popularity, v.cf, "
            "v.content FROM item_vectors v LEFT JOIN items i ON i.item_id = v.item_id ORDER BY v.item_id"
        )
        while rows := cur.fetchmany(LOAD_BATCH):
            for column, values in zip(columns, zip(*(r[:7] for r in rows), strict=True), strict=True):
                column.extend(values)
            cf, content = [r[7] for r in rows], [r[8] for r in rows]
            vectors.append(
                (
                    vector_matrix(cf, CF_DIM),
                    np.array([v is not None for v in cf], bool),
                    vector_matrix(content, CONTENT_DIM),
                    np.array([v is not None for v in content], bool),
                )
            )
    ids, external, titles, domains, providers, categories, popularity = columns

    def stacked(n: int, empty: np.ndarray) -> np.ndarray:
        return np.concatenate([v[n] for v in vectors]) if vectors else empty

    cf_all, has_cf = stacked(0, np.zeros((0, CF_DIM), np.float32)), stacked(1, np.zeros(0, bool))
    content_all, has_content = stacked(2, np.zeros((0, CONTENT_DIM), np.float32)), stacked(3, np.zeros(0, bool))
    vectors.clear()  # one copy of the vectors from here on
    return ItemTable.build(
        np.asarray(ids, np.int64),
        external,  # type: ignore[arg-type]
        titles,  # type: ignore[arg-type]
        domains,  # type: ignore[arg-type]
        providers,  # type: ignore[arg-type]
        categories,  # type: ignore[arg-type]
        np.asarray(popularity, np.float32),
        cf_all,
        has_cf,
        content_all,
        has_content,
        at,
    )
