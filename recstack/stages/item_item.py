"""Item-item scoring shared by training and serving: a user's history weights times sparse neighbour weights.

History weight of a (user, item): 0.5 for having touched it at all (any rating, view, click, purchase, like) plus
0.5 when it was a positive (rating >= POSITIVE_RATING on the 1..5 scale, like, purchase, click); dislikes and skips
count 0, and a pair keeps its strongest event. Measured on ml-latest-small (protocol random, seed 2020, 623 test
users, NDCG@10 of EASE l2=100): 0.291 on this matrix, 0.281 on binary positives (ratings >= 3), 0.263 on
ratings >= 3.5 only: what a user chose to watch says as much as what they liked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

POSITIVE_RATING = 3.5  # on the stored 1..5 scale (MovieLens half stars: 3.5 and up)
_TOUCH_TYPES = ("rating", "view", "click", "purchase", "like")
_POSITIVE_TYPES = ("click", "purchase", "like")


def history_weights(event_type: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Per event: 0 (negative), 0.5 (touched) or 1.0 (touched and positive)."""
    event_type = np.asarray(event_type, dtype=object)
    value = np.asarray(value, dtype=np.float64)
    touched = np.isin(event_type, _TOUCH_TYPES)
    positive = np.isin(event_type, _POSITIVE_TYPES) | (
        (event_type == "rating") & (np.nan_to_num(value) >= POSITIVE_RATING)
    )
    return (0.5 * touched + 0.5 * positive).astype(np.float32)


def strongest_per_item(items: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct items with weight > 0, the strongest weight of each)."""
    keep = weights > 0
    unique, inverse = np.unique(items[keep], return_inverse=True)
    best = np.zeros(len(unique), np.float32)
    np.maximum.at(best, inverse, weights[keep])
    return unique, best


@dataclass
class ItemItem:
    """Sparse neighbour weights: rows = history item, columns = candidate item (dense catalog indices)."""

    weights: sparse.csr_matrix

    @property
    def n_items(self) -> int:
        return int(self.weights.shape[1])

    def scores(self, history_items: np.ndarray, history_weight: np.ndarray) -> np.ndarray:
        """Score of every item for one user's history (dense indices and weights): sum_h x_h * B[h, :]."""
        if not len(history_items):
            return np.zeros(self.n_items, np.float32)
        rows = self.weights[history_items]
        return np.asarray(rows.T @ history_weight.astype(np.float32)).ravel()

    @classmethod
    def empty(cls, n_items: int) -> ItemItem:
        return cls(sparse.csr_matrix((n_items, n_items), dtype=np.float32))
