"""Who judges the ranker against its sources: the ranker set's own users, as many as GUARD_USERS allows, whatever
the share of all users the set holds (at 1M users the guard had kept 7-45 users and chose the served order on them)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from training.pipeline import GUARD_USERS, guard_users, sample_users


def ranker_set(users: np.ndarray, rows_per_user: int = 3) -> pd.DataFrame:
    return pd.DataFrame({"user": np.repeat(users, rows_per_user), "item": np.arange(len(users) * rows_per_user)})


def test_a_small_share_of_a_large_population_still_gives_a_full_guard() -> None:
    population = np.arange(600_000)
    in_set = sample_users(population, 5000, seed=0)  # the ranker set's users, as build_ranker_set draws them
    judged = guard_users(ranker_set(in_set), seed=1)
    assert len(judged) == GUARD_USERS
    assert np.isin(judged, in_set).all()  # cross-fitting leaves each of them out of the fit that scores them
    assert len(np.unique(judged)) == len(judged)


def test_a_small_ranker_set_is_judged_whole_and_the_draw_is_seeded() -> None:
    in_set = np.array([3, 8, 11, 40])
    assert guard_users(ranker_set(in_set), seed=1).tolist() == [3, 8, 11, 40]
    frame = ranker_set(np.arange(10_000))
    assert guard_users(frame, seed=7).tolist() == guard_users(frame, seed=7).tolist()
    assert guard_users(frame, seed=7).tolist() != guard_users(frame, seed=8).tolist()
