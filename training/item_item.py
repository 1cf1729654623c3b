"""Fitting the item-item candidate source: EASE^R (Steck 2019, "Embarrassingly Shallow Autoencoders") over the
watched/liked history matrix (recstack.stages.item_item), kept as each item's top-N neighbours.

EASE needs an items x items inverse, so it is fit on the ``max_items`` most touched items (the head), and its rows
are kept whole: the same matrix scores offline and online. Measured on ml-latest-small (protocol random, seed 2020,
NDCG@10 of the item-item source scored by these functions, which reproduce /recommend's relevance-only figure):
head 8000 cut to the top 200 weights per row 0.250; top 1000 0.254; top 200 by |weight| 0.262 (the negative
weights carry signal); whole rows on a head of 1000 0.285, 2500 0.286, 4000 0.287. A head of 2500 keeps the
inverse, the table (6.25M weights, 25 MB) and a replica's copy small; the tail beyond it comes from the other
sources.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import sparse

from recstack.stages.item_item import ItemItem, history_weights, recency_factor
from training.baselines import ease_weights
from training.interactions import Interactions

MAX_ITEMS = 2500
L2 = 100.0


def history_matrix(events: Interactions, n_users: int, n_items: int) -> sparse.csr_matrix:
    """users x items, the strongest history weight of each pair."""
    weight = history_weights(events.event_type, events.value)
    keep = weight > 0
    key = events.user[keep].astype(np.int64) * n_items + events.item[keep]
    unique, inverse = np.unique(key, return_inverse=True)
    best = np.zeros(len(unique), np.float32)
    np.maximum.at(best, inverse, weight[keep])
    return sparse.csr_matrix((best, (unique // n_items, unique % n_items)), shape=(n_users, n_items))


def query_matrix(events: Interactions, n_users: int, n_items: int) -> sparse.csr_matrix:
    """users x items, what each user's item-item query holds: the strongest weight x the recency factor of the
    pair's latest event (recstack.stages.item_item.query_weights, row by row)."""
    weight = history_weights(events.event_type, events.value)
    keep = weight > 0
    frame = pd.DataFrame(
        {"user": events.user[keep], "item": events.item[keep], "w": weight[keep], "ts": events.ts[keep]}
    )
    pairs = frame.groupby(["user", "item"], sort=False).agg(w=("w", "max"), ts=("ts", "max")).reset_index()
    rank = pairs.groupby("user")["ts"].rank(ascending=False, method="first").to_numpy() - 1
    values = pairs["w"].to_numpy(np.float32) * recency_factor(rank)
    return sparse.csr_matrix((values, (pairs["user"], pairs["item"])), shape=(n_users, n_items))


def fit_ease(
    x: sparse.csr_matrix, l2: float = L2, max_items: int = MAX_ITEMS, neighbours: int | None = None
) -> ItemItem:
    """B = I - P / diag(P), P = (X'X + l2 I)^-1 on the head items; rows whole, or cut to their top ``neighbours``."""
    n_items = x.shape[1]
    touched = np.asarray((x > 0).sum(0)).ravel()
    head = np.sort(np.argsort(-touched, kind="stable")[: min(max_items, int((touched > 0).sum()))])
    if len(head) < 2:
        return ItemItem.empty(n_items)
    b = ease_weights(x[:, head], l2)
    keep = len(head) if neighbours is None else min(neighbours, len(head) - 1)
    # Cut by magnitude: EASE's negative weights carry as much as its positive ones (on ml-latest-small, rows cut to
    # their 200 largest weights lost 11% NDCG@10, to their 200 largest magnitudes nothing).
    top = (
        np.argpartition(-np.abs(b), keep - 1, axis=1)[:, :keep]
        if keep < len(head)
        else np.tile(np.arange(keep), (keep, 1))
    )
    values = np.take_along_axis(b, top, axis=1).astype(np.float32)
    rows = np.repeat(head, keep)
    matrix = sparse.csr_matrix((values.ravel(), (rows, head[top].ravel())), shape=(n_items, n_items))
    return ItemItem(matrix.astype(np.float32))
