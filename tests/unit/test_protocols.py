"""Evaluation protocols: what is held out per user, and that nothing held out stays in the history."""

from __future__ import annotations

import numpy as np
import pytest

from training.protocols import ProtocolConfig, k_core, split


def _events(n_users: int = 40, per_user: int = 30, n_items: int = 60, seed: int = 0):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    user = np.repeat(np.arange(n_users), per_user)
    item = np.concatenate([rng.choice(n_items, per_user, replace=False) for _ in range(n_users)])
    rating = rng.choice([1.0, 2.0, 3.0, 4.0, 5.0], len(user))
    ts = np.arange(len(user), dtype=np.int64) * 60 + 1_600_000_000
    return user, item, np.full(len(user), "rating", object), rating, ts


def test_random_holds_out_a_tenth_of_each_users_positives_and_never_a_low_rating() -> None:
    user, item, kind, rating, ts = _events()
    h = split(user, item, kind, rating, ts, ProtocolConfig(name="random", core=2, seed=2020))
    assert not (h.test & h.valid).any()
    assert (rating[h.test] >= 3.5).all() and (rating[h.valid] >= 3.5).all()
    for u in range(40):
        positives = int((h.positive & (user == u)).sum())
        assert int((h.test & (user == u)).sum()) == int(np.floor(positives * 0.1 + 0.5))
    again = split(user, item, kind, rating, ts, ProtocolConfig(name="random", core=2, seed=2020))
    assert (again.test == h.test).all()  # the seed fixes the split
    other = split(user, item, kind, rating, ts, ProtocolConfig(name="random", core=2, seed=1))
    assert (other.test != h.test).any()


def test_temporal_holds_out_each_users_latest_positives() -> None:
    user, item, kind, rating, ts = _events()
    h = split(user, item, kind, rating, ts, ProtocolConfig(name="temporal", core=2))
    for u in range(40):
        mine = (user == u) & h.positive
        if (h.test & mine).any():
            assert ts[h.test & mine].min() > ts[mine & ~h.test & ~h.valid].max()
            assert ts[h.test & mine].min() > ts[h.valid & mine].max()


def test_every_event_on_a_held_out_pair_leaves_the_history() -> None:
    user, item, kind, rating, ts = _events()
    user, item = np.r_[user, user[:50]], np.r_[item, item[:50]]  # a view on the same items too
    kind = np.r_[kind, np.full(50, "view", object)]
    rating, ts = np.r_[rating, np.full(50, np.nan)], np.r_[ts, ts[:50] + 1]
    h = split(user, item, kind, rating, ts, ProtocolConfig(name="random", core=2))
    held = set(zip(user[h.test], item[h.test], strict=True))
    kept = set(zip(user[h.train], item[h.train], strict=True))
    assert held and not held & kept


def test_k_core_drops_users_and_items_below_the_core() -> None:
    user = np.array([0, 0, 0, 1, 1, 1, 2])
    item = np.array([0, 1, 2, 0, 1, 2, 3])
    kept = k_core(user, item, np.ones(7, bool), 2)
    assert kept.tolist() == [True] * 6 + [False]


def test_an_unknown_protocol_is_refused() -> None:
    with pytest.raises(ValueError, match="protocol must be one of"):
        ProtocolConfig(name="leave-one-out")
