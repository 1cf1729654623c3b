"""The live ``item_neighbours`` table: the item-item source's weights serving reads. Training stores each model's
weights as a versioned set (recstack.tables.vector_sets, which owns the packing) and promotion copies that set
here. Ids are the catalog's internal item ids; readers map them onto their own dense order."""

from __future__ import annotations

import numpy as np
import psycopg
from scipy import sparse

from recstack.stages.item_item import ItemItem
from recstack.tables.vector_sets import PACKED_IDS, PACKED_WEIGHTS


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
            neighbour = np.frombuffer(neighbour_ids, PACKED_IDS)
            rows.append(np.full(len(neighbour), item_id, np.int64))
            cols.append(neighbour.astype(np.int64))
            vals.append(np.frombuffer(weights, PACKED_WEIGHTS).astype(np.float32))
    if not rows:
        return ItemItem.empty(n)
    r, c, v = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    ri, ci = np.searchsorted(item_ids, r), np.searchsorted(item_ids, c)
    ok = (ri < n) & (ci < n)
    ok[ok] &= (item_ids[ri[ok]] == r[ok]) & (item_ids[ci[ok]] == c[ok])
    return ItemItem(sparse.csr_matrix((v[ok], (ri[ok], ci[ok])), shape=(n, n), dtype=np.float32))
