"""The torch retrieval model: it can fit one small batch perfectly, is deterministic per seed, and treats
dislikes as negatives."""

from __future__ import annotations

import numpy as np
import pytest

from training.embeddings import train_embeddings
from training.interactions import Interactions


def _events(user: list[int], item: list[int], kinds: list[str]) -> Interactions:
    n = len(user)
    return Interactions(
        user=np.array(user, np.int32),
        item=np.array(item, np.int32),
        event_type=np.array(kinds, dtype=object),
        value=np.full(n, np.nan, np.float32),
        ts=np.arange(n, dtype=np.int64),
    )


def _one_batch() -> tuple[Interactions, dict[int, set[int]]]:
    rng = np.random.default_rng(0)
    liked = {u: set(rng.choice(40, 3, replace=False).tolist()) for u in range(16)}
    users = [u for u, items in liked.items() for _ in items]
    items = [i for u in liked for i in sorted(liked[u])]
    return _events(users, items, ["like"] * len(users)), liked


def test_overfits_one_batch() -> None:
    events, liked = _one_batch()
    model = train_embeddings(events, 16, 40, epochs=300, batch_size=1024, negatives=39, lr=0.05, seed=1)
    assert model.losses[-1] < 0.25 * model.losses[0]
    for user, items in liked.items():
        top = set(np.argsort(-(model.item @ model.user[user]))[:3].tolist())
        assert top == items, (user, top, items)


def test_same_seed_same_vectors_and_unit_norm() -> None:
    events, _ = _one_batch()
    a = train_embeddings(events, 16, 40, epochs=3, seed=7)
    b = train_embeddings(events, 16, 40, epochs=3, seed=7)
    np.testing.assert_array_equal(a.item, b.item)
    np.testing.assert_allclose(np.linalg.norm(a.user, axis=1), 1.0, rtol=1e-5)


def test_disliked_item_scores_below_liked_ones() -> None:
    """Users 12..23 like items 0..6; users 0..11 like 0..5 and dislike 6. Co-occurrence alone would put 6 next to
    0..5 for everybody; the explicit negatives must push it down for the users who disliked it."""
    users, items, kinds = [], [], []
    for user in range(24):
        for item in range(7):
            disliked = user < 12 and item == 6
            users.append(user)
            items.append(item)
            kinds.append("dislike" if disliked else "like")
    model = train_embeddings(_events(users, items, kinds), 24, 20, epochs=150, negatives=19, lr=0.05, seed=2)
    for user in range(12):
        scores = model.item @ model.user[user]
        assert scores[6] < scores[:6].min(), user
    liker = model.item @ model.user[20]
    assert liker[6] > np.median(liker[7:])  # for the others, 6 stays among the liked


def test_a_history_of_one_category_retrieves_mostly_that_category() -> None:
    from recstack.stages.retrieve import query_vector

    rng = np.random.default_rng(4)
    n_categories, per_category, n_users = 6, 40, 600
    category = np.repeat(np.arange(n_categories), per_category)  # item -> category
    users, items = [], []
    for user in range(n_users):  # each user likes 20 items, 85% of them from one favourite category
        favourite = user % n_categories
        own = rng.choice(np.flatnonzero(category == favourite), 17, replace=False)
        other = rng.choice(np.flatnonzero(category != favourite), 3, replace=False)
        for item in [*own, *other]:
            users.append(user)
            items.append(int(item))
    model = train_embeddings(
        _events(users, items, ["like"] * len(users)), n_users, len(category), epochs=15, negatives=64, seed=2
    )
    for wanted in range(n_categories):
        history = rng.choice(np.flatnonzero(category == wanted), 8, replace=False)
        # A newcomer (no user vector) who liked 8 items of one category, queried the way serving queries.
        query = query_vector(None, model.item[history])
        scores = model.item @ query
        scores[history] = -np.inf  # seen items are excluded
        top = np.argsort(-scores)[:10]
        assert (category[top] == wanted).sum() >= 8, (wanted, category[top])


@pytest.mark.parametrize("sparse", [True, False])
def test_sparse_and_dense_updates_are_deterministic_and_learn(sparse: bool) -> None:
    events, liked = _one_batch()
    a = train_embeddings(events, 16, 40, epochs=60, negatives=39, lr=0.05, seed=7, sparse=sparse)
    b = train_embeddings(events, 16, 40, epochs=60, negatives=39, lr=0.05, seed=7, sparse=sparse)
    np.testing.assert_array_equal(a.item, b.item)
    assert a.losses[-1] < 0.5 * a.losses[0]
    hits = sum(len(set(np.argsort(-(a.item @ a.user[u]))[:3].tolist()) & items) for u, items in liked.items())
    assert hits >= 0.8 * 3 * len(liked)
