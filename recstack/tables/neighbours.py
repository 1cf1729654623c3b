"""The ``item_neighbours`` table: the item-item source's sparse weights, written by training, read by serving and
evaluation. Ids are the catalog's internal item ids; readers map them onto their own dense order."""

from __future__ import annotations

import numpy as np
import psycopg
from scipy import sparse

from recstack.stages.item_item import ItemItem


def write(conn: psycopg.Connection, item_ids: np.ndarray, model: ItemItem, version: str) -> None:
    """Replace the stored neighbours (one transaction: readers see the old set or the new one)."""
    weights = model.weights.tocsr()
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
                        int(item_ids[row]),
                        [int(i) for i in item_ids[weights.indices[lo:hi]]],
                        [float(w) for w in weights.data[lo:hi]],
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
    with conn.cursor() as cur:
        cur.execute("SELECT item_id, neighbour_ids, weights FROM item_neighbours")
        for item_id, neighbour_ids, weights in cur:
            rows.append(np.full(len(neighbour_ids), item_id, np.int64))
            cols.append(np.asarray(neighbour_ids, np.int64))
            vals.append(np.asarray(weights, np.float32))
    if not rows:
        return ItemItem.empty(n)
    r, c, v = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    ri, ci = np.searchsorted(item_ids, r), np.searchsorted(item_ids, c)
    ok = (ri < n) & (ci < n)
    ok[ok] &= (item_ids[ri[ok]] == r[ok]) & (item_ids[ci[ok]] == c[ok])
    return ItemItem(sparse.csr_matrix((v[ok], (ri[ok], ci[ok])), shape=(n, n), dtype=np.float32))
