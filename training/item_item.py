"""Fitting the item-item candidate source: EASE^R (Steck 2019, "Embarrassingly Shallow Autoencoders") over the
watched/liked history matrix (recstack.stages.item_item), kept as each item's top-N neighbours.

EASE needs an items x items inverse, so it is fit on a head of the catalog: the most touched items with at least
``MIN_TOUCHES`` touches, at most ``MAX_ITEMS`` (the EASE baseline's head), and never fewer than ``MIN_HEAD`` when the
data has them. Rows are kept whole while the head's weights fit ``MAX_WEIGHTS``; past it each row keeps its largest
magnitudes, ``MAX_WEIGHTS / head`` of them. Measured (NDCG@10 of the item-item source, random protocol, scored as
/recommend orders it; bench/probe_item_item.py on ml-latest-small, the 1M figures with the same functions on the
1M stack's events, issue 14's note):
  * ml-latest-small (9k items, 2.2k with 10+ ratings): whole rows on a head of 1000 0.285, 2500 0.286, 8000 0.285;
    a head of 8000 cut to 800 / 2000 / 4000 neighbours 0.274 / 0.281 / 0.285: the rare items add nothing and cutting
    the rows of the popular ones costs, so the head is the items with 10+ touches, rows whole;
  * 1M users / 100k items (20M events): whole rows on a head of 2500 0.0687 (0.89x the EASE baseline), 5000 0.0760,
    8000 0.0789 (1.025x); a head of 8000 cut to 500 / 1000 / 2000 neighbours 0.0784 / 0.0786 / 0.0787: the head is
    what matters there, the cut hardly (8M weights where whole rows would be 64M).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import sparse

from recstack.stages.item_item import ItemItem, history_weights, recency_factor
from training.baselines import ease_weights
from training.interactions import Interactions

MAX_ITEMS = 8000
MIN_TOUCHES = 10
MIN_HEAD = 1000
MAX_WEIGHTS = 8_000_000
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


def head_size(touched: np.ndarray, max_items: int = MAX_ITEMS, min_touches: int = MIN_TOUCHES) -> int:
    """How many of the most touched items EASE is fit on (module docstring)."""
    available = int((touched > 0).sum())
    frequent = int((touched >= min_touches).sum())
    return min(max_items, max(frequent, min(MIN_HEAD, available)))


def fit_ease(
    x: sparse.csr_matrix,
    l2: float = L2,
    max_items: int = MAX_ITEMS,
    neighbours: int | None = None,
    min_touches: int = MIN_TOUCHES,
) -> ItemItem:
    """B = I - P / diag(P), P = (X'X + l2 I)^-1 on the head items; rows whole while they fit ``MAX_WEIGHTS``, else
    (or with ``neighbours``) cut to their largest magnitudes."""
    n_items = x.shape[1]
    touched = np.asarray((x > 0).sum(0)).ravel()
    head = np.sort(np.argsort(-touched, kind="stable")[: head_size(touched, max_items, min_touches)])
    if len(head) < 2:
        return ItemItem.empty(n_items)
    b = ease_weights(x[:, head], l2)
    if neighbours is None and len(head) ** 2 > MAX_WEIGHTS:
        neighbours = MAX_WEIGHTS // len(head)
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
