"""Collaborative embeddings: matrix factorization trained with a weighted BPR loss (Rendle et al. 2009) in torch.

Positives are (user, item) pairs whose summed event weight is > 0; stronger events (purchase, like, high rating)
weigh more. Each positive is contrasted with a sampled item (BPR) and, when the user has explicit negatives
(dislike, skip, low rating), also pushed above one of those. Scores are plain dot products, so pgvector's inner
product HNSW index serves the same ranking. Deterministic per seed on CPU; uses every core torch is given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from training.interactions import Interactions

DIM = 64  # must match vector(64) in migration 0005


@dataclass
class EmbeddingModel:
    user: np.ndarray  # float32 [n_users, DIM]
    item: np.ndarray  # float32 [n_items, DIM]
    item_popularity: np.ndarray  # float32 [n_items], positive weight in the training window
    trained_items: np.ndarray  # bool [n_items]: the item had interactions (its vector was learned)
    losses: list[float]


@dataclass
class PairData:
    pos_user: np.ndarray
    pos_item: np.ndarray
    pos_weight: np.ndarray
    neg_user: np.ndarray
    neg_item: np.ndarray


def pairs(events: Interactions, n_users: int, n_items: int) -> PairData:
    """Sum the signed weights per (user, item): > 0 is a positive with that weight, < 0 an explicit negative."""
    key = events.user.astype(np.int64) * n_items + events.item.astype(np.int64)
    unique, inverse = np.unique(key, return_inverse=True)
    total = np.bincount(inverse, weights=events.weights().astype(np.float64)).astype(np.float32)
    user, item = (unique // n_items).astype(np.int64), (unique % n_items).astype(np.int64)
    pos, neg = total > 0, total < 0
    return PairData(user[pos], item[pos], np.log1p(total[pos]), user[neg], item[neg])


class _MF(torch.nn.Module):
    def __init__(self, n_users: int, n_items: int, dim: int) -> None:
        super().__init__()
        self.user = torch.nn.Embedding(n_users, dim)
        self.item = torch.nn.Embedding(n_items, dim)
        torch.nn.init.normal_(self.user.weight, std=0.05)
        torch.nn.init.normal_(self.item.weight, std=0.05)


def train_embeddings(
    events: Interactions,
    n_users: int,
    n_items: int,
    epochs: int = 20,
    dim: int = DIM,
    batch_size: int = 8192,
    lr: float = 0.02,
    l2: float = 1e-5,
    seed: int = 42,
    threads: int | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> EmbeddingModel:
    """Fit user and item vectors; ``progress(epoch, mean_loss)`` after each epoch."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    if threads:
        torch.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    data = pairs(events, n_users, n_items)
    popularity = np.bincount(data.pos_item, weights=data.pos_weight, minlength=n_items).astype(np.float32)
    model = _MF(n_users, n_items, dim)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    # Explicit negatives per user, as a CSR-like index for sampling one per positive.
    neg_order = np.argsort(data.neg_user, kind="stable")
    neg_items = data.neg_item[neg_order]
    neg_start = np.searchsorted(data.neg_user[neg_order], np.arange(n_users + 1))
    neg_count = np.diff(neg_start)
    # Negative sampling proportional to popularity^0.5 (harder than uniform, not dominated by the head).
    sampling = np.sqrt(popularity + 1.0)
    sampling /= sampling.sum()

    losses: list[float] = []
    n = len(data.pos_user)
    for epoch in range(epochs):
        order = rng.permutation(n)
        total, batches = 0.0, 0
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            users = data.pos_user[idx]
            sampled = rng.choice(n_items, size=len(idx), p=sampling)
            has_neg = neg_count[users] > 0
            pick = neg_start[users] + (rng.random(len(idx)) * np.maximum(neg_count[users], 1)).astype(np.int64)
            explicit = np.where(has_neg, neg_items[np.minimum(pick, len(neg_items) - 1)] if len(neg_items) else 0, 0)

            u = torch.from_numpy(users)
            pu = model.user(u)
            pos = (pu * model.item(torch.from_numpy(data.pos_item[idx]))).sum(1)
            neg = (pu * model.item(torch.from_numpy(sampled))).sum(1)
            weight = torch.from_numpy(data.pos_weight[idx])
            loss = -(weight * torch.nn.functional.logsigmoid(pos - neg)).mean()
            if has_neg.any():
                mask = torch.from_numpy(has_neg)
                hard = (pu[mask] * model.item(torch.from_numpy(explicit[has_neg]))).sum(1)
                loss = loss - torch.nn.functional.logsigmoid(pos[mask] - hard).mean()
            loss = loss + l2 * (pu.pow(2).sum(1).mean())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            batches += 1
        losses.append(total / max(batches, 1))
        if progress:
            progress(epoch + 1, losses[-1])
    with torch.no_grad():
        user = model.user.weight.detach().numpy().astype(np.float32).copy()
        item = model.item.weight.detach().numpy().astype(np.float32).copy()
    trained = popularity > 0
    return EmbeddingModel(user=user, item=item, item_popularity=popularity, trained_items=trained, losses=losses)
