"""The item-item source's ridge penalty is chosen per dataset on held-out positives (training.item_item.select_l2):
the search rule, and that what is returned is the chosen penalty's fit."""

from __future__ import annotations

import numpy as np
import pytest

from training.interactions import Interactions
from training.item_item import L2, MIN_GAIN, fit_ease, history_matrix, select_l2, walk


def peaked_at(peak: float):  # type: ignore[no-untyped-def]
    calls: list[float] = []

    def judge(l2: float) -> float:
        calls.append(l2)
        return 1.0 / (1.0 + abs(np.log2(l2 / peak)))

    judge.calls = calls  # type: ignore[attr-defined]
    return judge


@pytest.mark.parametrize("peak", [25.0, 50.0, 100.0, 400.0, 1600.0])
def test_the_search_stops_at_the_peak_from_either_side(peak: float) -> None:
    assert walk(peaked_at(peak), 100.0) == peak


def test_the_search_stops_at_its_last_step_past_the_range() -> None:
    assert walk(peaked_at(1e6), 100.0, steps=4) == 1600.0
    assert walk(peaked_at(1e-3), 100.0, steps=4) == 6.25


def test_a_gain_within_noise_does_not_move_the_penalty() -> None:
    flat = lambda l2: 0.30 * (1 + MIN_GAIN / 2) ** np.log2(100.0 / l2)  # noqa: E731  each halving +0.5%
    assert walk(flat, 100.0) == 100.0


def _taste_groups(n_users: int, seed: int) -> tuple[Interactions, Interactions]:
    """Users like the items of one of five groups of 12; one liked item per user is held out."""
    rng = np.random.default_rng(seed)
    users, items, held_users, held_items = [], [], [], []
    for u in range(n_users):
        picks = rng.choice(12, 7, replace=False) + 12 * (u % 5)
        noise = rng.choice(60, 2, replace=False)
        users += [u] * 8
        items += [*picks[:6].tolist(), *noise.tolist()]
        held_users.append(u)
        held_items.append(int(picks[6]))

    def events(us: list[int], its: list[int]) -> Interactions:
        n = len(us)
        kind = np.full(n, "rating", object)
        return Interactions(
            np.array(us, np.int32), np.array(its, np.int32), kind, np.full(n, 5.0, np.float32), np.arange(n)
        )

    return events(users, items), events(held_users, held_items)


def test_the_chosen_penalty_scores_best_and_its_fit_is_what_serves() -> None:
    history, held_out = _taste_groups(400, seed=1)
    selected = select_l2(history, held_out, history, 400, 60)
    assert len(selected.ndcg) >= 3  # the start and both neighbours at least
    assert selected.ndcg[selected.l2] >= selected.ndcg[L2]
    assert selected.ndcg[selected.l2] > 0.3  # the groups are found: a held-out item ranks high
    expected = fit_ease(history_matrix(history, 400, 60), l2=selected.l2).weights.toarray()
    assert np.allclose(selected.model.weights.toarray(), expected, atol=1e-5)
