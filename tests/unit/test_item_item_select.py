"""The item-item source is fit as chosen per dataset on held-out positives (training.item_item.select): the ridge
penalty's search rule, the sequence model (kept where the order of a user's events tells more than the history), and
that what is returned is the chosen fit."""

from __future__ import annotations

import numpy as np
import pytest

from training.interactions import Interactions
from training.item_item import L2, MIN_GAIN, Choice, fit, head_items, history_matrix, select, sequence_gram, walk


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


def test_the_chosen_fit_scores_best_and_is_what_serves() -> None:
    history, held_out = _taste_groups(400, seed=1)
    selected = select(history, held_out, history, 400, 60)
    assert len(selected.ndcg) >= 3 + 9  # the start and both neighbours at least, every sequence model
    best = max(selected.ndcg.values())
    assert selected.ndcg[selected.choice.label()] >= best / (1 + MIN_GAIN)
    assert selected.ndcg[selected.choice.label()] >= selected.ndcg[Choice(L2).label()]
    assert selected.ndcg[selected.choice.label()] > 0.3  # the groups are found: a held-out item ranks high
    expected = fit(history, 400, 60, selected.choice).weights.toarray()
    assert np.allclose(selected.model.weights.toarray(), expected, atol=1e-5)


def _events(users: list[int], items: list[int], ts: list[int], values: list[float] | None = None) -> Interactions:
    n = len(users)
    return Interactions(
        np.array(users, np.int32),
        np.array(items, np.int32),
        np.full(n, "rating", object),
        np.array(values if values is not None else [5.0] * n, np.float32),
        np.array(ts, np.int64),
    )


def test_the_sequence_gram_weighs_each_pair_by_the_windows_it_shares() -> None:
    rng = np.random.default_rng(3)
    n = 60
    users, items = rng.integers(0, 4, n).tolist(), rng.integers(0, 12, n).tolist()
    ts, values = rng.permutation(n).tolist(), rng.choice([3.0, 4.0, 5.0], n).tolist()
    events = _events(users, items, ts, values)
    head = np.array([0, 2, 3, 5, 7, 8, 11])
    k = 2
    weight = history_matrix(events, 4, 12)  # the weights the history model sees, one event per pair here or less
    from recstack.stages.item_item import history_weights

    w = history_weights(events.event_type, events.value)
    expected = np.zeros((12, 12))
    for u in range(4):
        mine = [e for e in np.argsort(ts) if users[e] == u and w[e] > 0]
        for p, a in enumerate(mine):
            for q, b in enumerate(mine):
                if abs(p - q) <= 2 * k:
                    expected[items[a], items[b]] += (2 * k + 1 - abs(p - q)) * w[a] * w[b]
    assert weight.shape == (4, 12)
    assert np.allclose(sequence_gram(events, head, k), expected[np.ix_(head, head)])


def _successors(n_users: int, seed: int) -> tuple[Interactions, Interactions]:
    """Each user meets a random 60 of 200 items (so who met what says nothing), in runs of consecutive ids (each run
    in order, the runs shuffled): what comes next says which item follows which. One item whose predecessor the user
    also met is held out."""
    rng = np.random.default_rng(seed)
    users, items, ts, held_users, held_items = [], [], [], [], []
    for u in range(n_users):
        met = np.sort(rng.choice(200, 60, replace=False))
        runs = np.split(met, np.flatnonzero(np.diff(met) != 1) + 1)
        sequence = np.concatenate([runs[r] for r in rng.permutation(len(runs))]).tolist()
        held = int(rng.choice([i for i in sequence if i - 1 in sequence]))
        held_users.append(u)
        held_items.append(held)
        mine = [i for i in sequence if i != held]
        users += [u] * len(mine)
        items += mine
        ts += list(range(len(mine)))
    return _events(users, items, ts), _events(held_users, held_items, [0] * n_users)


def test_the_sequence_model_is_kept_where_order_tells_more_than_the_history() -> None:
    history, held_out = _successors(600, seed=2)
    selected = select(history, held_out, history, 600, 200)
    assert selected.choice.sequence_weight > 0
    alone = selected.ndcg[Choice(selected.choice.l2).label()]
    assert selected.ndcg[selected.choice.label()] > 1.5 * alone
    assert len(head_items(history_matrix(history, 600, 200))) == 200
