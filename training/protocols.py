"""Evaluation protocols users can compare with published tables: how positives are held out per user.

  * ``random``   (RecBole's benchmark protocol): each user's positives shuffled with the seed, split 80/10/10 into
    train / valid / test;
  * ``temporal`` (leave-latest-out): each user's positives in time order, the latest 10% test, the 10% before them
    valid;
  * ``window``   (the stream view): every event in the last ``test_days`` is test, the ``valid_days`` before are valid.

Positives are ratings >= ``min_rating`` on the source's own scale (MovieLens half stars: 3.5) and every positive
implicit event (purchase, like, click, view); a ``core``-core filter (iterative: users and items with at least
``core`` positives) is applied to the positives before splitting, as RecBole's tables do. Every event that is not a
held-out positive stays as history: low ratings, dislikes and events outside the core are still what a user did.

A split is a boolean mask over the events (``Holdout``), so the same function cuts an events table in the database
(``recstack evaluate``) and a ratings file on disk (bench/bench_quality.py writes the non-test part to ingest).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PROTOCOLS = ("random", "temporal", "window")


@dataclass(frozen=True)
class ProtocolConfig:
    name: str = "random"
    min_rating: float = 3.5  # on the source's scale; ratings below it are history, never held out
    core: int = 10
    valid_share: float = 0.1
    test_share: float = 0.1
    valid_days: float = 7  # window protocol only
    test_days: float = 7
    seed: int = 2020

    def __post_init__(self) -> None:
        if self.name not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {self.name!r}")
        if not 0 < self.valid_share + self.test_share < 1:
            raise ValueError("valid_share + test_share must be between 0 and 1")


@dataclass
class Holdout:
    """Which events are held out: ``valid`` and ``test`` masks over the events; the rest is training history."""

    valid: np.ndarray  # bool per event
    test: np.ndarray  # bool per event
    positive: np.ndarray  # bool per event: a positive inside the core (what can be held out)

    @property
    def train(self) -> np.ndarray:
        return ~(self.valid | self.test)


def positives(event_type: np.ndarray, rating: np.ndarray, min_rating: float) -> np.ndarray:
    """Ratings >= min_rating and positive implicit events."""
    is_rating = event_type == "rating"
    implicit = np.isin(event_type, ("purchase", "like", "click", "view"))
    return np.where(is_rating, np.nan_to_num(rating, nan=-np.inf) >= min_rating, implicit)


def k_core(user: np.ndarray, item: np.ndarray, mask: np.ndarray, core: int) -> np.ndarray:
    """The subset of ``mask`` whose users and items each keep >= ``core`` distinct items / users (iterated)."""
    keep = mask.copy()
    while core > 1:
        pairs = np.unique(np.stack([user[keep], item[keep]], 1), axis=0) if keep.any() else np.empty((0, 2), int)
        user_count = np.bincount(pairs[:, 0], minlength=int(user.max(initial=0)) + 1)
        item_count = np.bincount(pairs[:, 1], minlength=int(item.max(initial=0)) + 1)
        ok = keep & (user_count[user] >= core) & (item_count[item] >= core)
        if ok.sum() == keep.sum():
            break
        keep = ok
    return keep


def split(
    user: np.ndarray,
    item: np.ndarray,
    event_type: np.ndarray,
    rating: np.ndarray,
    ts: np.ndarray,
    cfg: ProtocolConfig,
) -> Holdout:
    """Hold out positives per ``cfg`` (see the module docstring). Arrays are parallel, one entry per event."""
    n = len(user)
    if cfg.name == "window":
        end = int(ts.max()) + 1 if n else 0
        test_start = end - int(cfg.test_days * 86400)
        valid_start = test_start - int(cfg.valid_days * 86400)
        return Holdout(valid=(ts >= valid_start) & (ts < test_start), test=ts >= test_start, positive=np.ones(n, bool))
    positive = k_core(user, item, positives(event_type, rating, cfg.min_rating), cfg.core)
    # One held-out unit per (user, item): the user's first positive event on it (repeat events go with it).
    index = np.flatnonzero(positive)
    key = user[index].astype(np.int64) * (int(item.max(initial=0)) + 1) + item[index]
    _, first = np.unique(key, return_index=True)
    units = index[first]
    rng = np.random.default_rng(cfg.seed)
    if cfg.name == "random":
        order_key = rng.random(len(units))
    else:
        order_key = ts[units].astype(np.float64) + rng.random(len(units)) * 1e-3  # ties broken by the seed
    by_user = np.lexsort((order_key, user[units]))
    units = units[by_user]
    unit_user = user[units]
    starts = np.flatnonzero(np.r_[True, unit_user[1:] != unit_user[:-1]])
    counts = np.diff(np.r_[starts, len(units)])
    rank = np.arange(len(units)) - np.repeat(starts, counts)
    size = np.repeat(counts, counts)
    n_test = np.floor(size * cfg.test_share + 0.5).astype(np.int64)
    n_valid = np.floor(size * cfg.valid_share + 0.5).astype(np.int64)
    # RecBole orders train | valid | test inside each user (by time for temporal, by the shuffle for random).
    unit_test = rank >= size - n_test
    unit_valid = ~unit_test & (rank >= size - n_test - n_valid)
    pair_key = user.astype(np.int64) * (int(item.max(initial=0)) + 1) + item
    test_keys = pair_key[units[unit_test]]
    valid_keys = pair_key[units[unit_valid]]
    # Every event on a held-out (user, item) pair goes with it: a held-out item is not in the user's seen set.
    test = np.isin(pair_key, test_keys)
    valid = np.isin(pair_key, valid_keys)
    return Holdout(valid=valid, test=test, positive=positive)
