"""Baselines the learned models are compared with: popularity, item-kNN (cosine) and EASE (Steck 2019).

Item-kNN and EASE need an items x items matrix; they run on the ``max_items`` most popular items (the head of the
catalog), with items outside it scored lowest. Both are fit on the positive interactions before the cutoff.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.linalg import lapack
from threadpoolctl import threadpool_limits

from training.embeddings import pairs
from training.interactions import Interactions


def user_item_matrix(events: Interactions, n_users: int, n_items: int) -> sparse.csr_matrix:
    """Binary positives (summed event weight > 0)."""
    data = pairs(events, n_users, n_items)
    ones = np.ones(len(data.pos_user), np.float32)
    return sparse.csr_matrix((ones, (data.pos_user, data.pos_item)), shape=(n_users, n_items))


class ItemScorer:
    """Scores every item for a user from the user's positive row: ``scores(row) -> [n_items]``."""

    def __init__(self, x: sparse.csr_matrix, head: np.ndarray, weights: np.ndarray) -> None:
        self.x, self.head, self.weights = x, head, weights

    def scores(self, user: int) -> np.ndarray:
        out = np.full(self.x.shape[1], -1e9, np.float32)
        row = self.x[user][:, self.head].toarray().ravel()
        out[self.head] = row @ self.weights
        return out


def _head(x: sparse.csr_matrix, max_items: int) -> np.ndarray:
    popularity = np.asarray(x.sum(0)).ravel()
    return np.sort(np.argsort(-popularity, kind="stable")[:max_items])


def item_knn(x: sparse.csr_matrix, neighbours: int = 100, max_items: int = 8000) -> ItemScorer:
    """Cosine item-item similarity, each item keeping its ``neighbours`` most similar."""
    head = _head(x, max_items)
    xh = x[:, head].astype(np.float32)
    co = (xh.T @ xh).toarray()
    norms = np.sqrt(np.diag(co)) + 1e-9
    sim = co / norms[:, None] / norms[None, :]
    np.fill_diagonal(sim, 0)
    if neighbours < sim.shape[1]:
        cut = np.partition(sim, -neighbours, axis=0)[-neighbours]
        sim[sim < cut[None, :]] = 0
    return ItemScorer(x, head, sim.astype(np.float32))


def ease(x: sparse.csr_matrix, l2: float = 200.0, max_items: int = 8000) -> ItemScorer:
    """EASE^R: B = I - P / diag(P), P = (X'X + l2 I)^-1 (Steck 2019, "Embarrassingly Shallow Autoencoders")."""
    head = _head(x, max_items)
    return ItemScorer(x, head, ease_weights(x[:, head], l2).astype(np.float32))


def ease_weights(x: sparse.csr_matrix, l2: float) -> np.ndarray:
    """The dense EASE^R weights of the columns of ``x``: B = I - P / diag(P), P = (X'X + l2 I)^-1, diag(B) = 0."""
    return ease_from_gram(gram_matrix(x), l2)


def gram_matrix(x: sparse.csr_matrix, block: int = 2048) -> np.ndarray:
    """X'X, dense, in float64, a block of columns at a time: a head of 16,000 items makes a nearly dense Gram matrix,
    which as one sparse product would hold its 256M entries with their indices beside the dense copy."""
    xh = x.astype(np.float64)
    rows, columns = xh.T.tocsr(), xh.tocsc()
    n = x.shape[1]
    gram = np.empty((n, n), np.float64)
    for start in range(0, n, block):
        gram[:, start : start + block] = (rows @ columns[:, start : start + block]).toarray()
    return gram


def ease_from_gram(gram: np.ndarray, l2: float) -> np.ndarray:
    """``ease_weights`` from X'X (one Gram matrix serves every penalty tried), in one matrix beside ``gram``."""
    b = gram.copy()
    b[np.diag_indices_from(b)] += l2
    b = spd_inverse(b)
    b /= -np.diag(b).copy()[None, :]
    np.fill_diagonal(b, 0)
    return b


def spd_inverse(a: np.ndarray, block: int = 2048) -> np.ndarray:
    """The inverse of the symmetric positive definite ``a`` (float64, C order), in ``a``'s memory: Cholesky (LAPACK
    potrf / potri) and no second matrix (2 GB each at 16,000 items). On one BLAS thread: OpenBLAS's threaded potrf
    (its threaded syrk) crashes the process on two threads at large orders (16,000 here, scipy's OpenBLAS 0.3.30;
    OpenMathLib/OpenBLAS#2562, #2821), on one it does not. 16,000 takes 79 s so (``np.linalg.inv``, LU on two
    threads, took 7.3 s at 6,000: ~140 s at 16,000 if it grows as n^3)."""
    with threadpool_limits(1, user_api="blas"):
        factor, info = lapack.dpotrf(a.T, lower=0, overwrite_a=1, clean=0)  # a.T: the same matrix in Fortran order
        if info == 0:
            factor, info = lapack.dpotri(factor, lower=0, overwrite_c=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"not positive definite (LAPACK info {info})")
    out: np.ndarray = factor.T  # its lower triangle holds the inverse; mirror it into the upper one, block by block
    for start in range(0, len(out), block):
        end = min(start + block, len(out))
        out[start:end, end:] = out[end:, start:end].T
        square = out[start:end, start:end]
        upper = np.triu_indices(end - start, 1)
        square[upper] = square.T[upper]
    return out
