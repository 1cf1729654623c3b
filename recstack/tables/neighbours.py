"""The ``item_neighbours`` table: the item-item source's weights, written by training, read by serving. Ids are the
catalog's internal item ids; readers map them onto their own dense order. Each row packs its neighbour ids (int64)
and weights (float32) little-endian, so a 2500 x 2500 head moves as a few bytea values, not millions of array
elements."""

from __future__ import annotations

import numpy as np
import psycopg
from scipy import sparse

from recstack.stages.item_item import ItemItem

_IDS = np.dtype("<i8")
_WEIGHTS = np.dtype("<f4")


def write(conn: psycopg.Connection, item_ids: np.ndarray, model: ItemItem, version: str) -> None:
    """Replace the stored neighbours (one transaction: readers see the old set or the new one)."""
    weights = model.weights.tocsr()
    ids = np.asarray(item_ids, _IDS)
    with conn.transaction():
        conn.execute("DELETE FROM item_neighbours")
        with (
            conn.cursor() as cur,
            cur.copy("COPY item_neighbours (item_id, neighbour_ids, weights, model_version) FROM STDIN") as copy,
        ):
            for row in np.flatnonzero(np.diff(weights.indptr)):
                lo, hi = weights.indptr[row], weights.indptr[row + 1]
                copy.write_row(
                    (
                        int(ids[row]),
                        ids[weights.indices[lo:hi]].tobytes(),
                        weights.data[lo:hi].astype(_WEIGHTS).tobytes(),
                        version,
                    )
                )


def version(conn: psycopg.Connection) -> str | None:
    row = conn.execute("SELECT model_version FROM item_neighbours LIMIT 1").fetchone()
    return str(row[0]) if row else None


def load(conn: psycopg.Connection, item_ids: np.ndarray) -> ItemItem:
    """The stored neighbours in the dense order of ``item_ids`` (sorted ascending); unknown ids are dropped."""
    n = len(item_ids)
    rows, cols, vals = [], [], []
    with conn.cursor(binary=True) as cur:
        cur.execute("SELECT item_id, neighbour_ids, weights FROM item_neighbours")
        for item_id, neighbour_ids, weights in cur:
            neighbour = np.frombuffer(neighbour_ids, _IDS)
            rows.append(np.full(len(neighbour), item_id, np.int64))
            cols.append(neighbour.astype(np.int64))
            vals.append(np.frombuffer(weights, _WEIGHTS).astype(np.float32))
    if not rows:
        return ItemItem.empty(n)
    r, c, v = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    ri, ci = np.searchsorted(item_ids, r), np.searchsorted(item_ids, c)
    ok = (ri < n) & (ci < n)
    ok[ok] &= (item_ids[ri[ok]] == r[ok]) & (item_ids[ci[ok]] == c[ok])
    return ItemItem(sparse.csr_matrix((v[ok], (ri[ok], ci[ok])), shape=(n, n), dtype=np.float32))
