"""The item-item source: EASE neighbours learn co-occurrence, and serving's sparse scores equal the fit's."""

from __future__ import annotations

import numpy as np
import pytest

from recstack.stages.item_item import RECENCY_FLOOR, UserHistory, history_weights, query_weights
from recstack.stages.retrieve import ItemItemIndex, UserState
from training.interactions import Interactions
from training.item_item import fit_ease, history_matrix, query_matrix


def _two_taste_groups(n_users: int = 200, seed: int = 0) -> Interactions:
    """Users like items 0-9 or items 10-19 (never both); every user also watched item 20 and rated it low."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(n_users):
        group = u % 2
        picks = rng.choice(10, 6, replace=False) + 10 * group
        users += [u] * 7
        items += [*picks.tolist(), 20]
    n = len(users)
    kind = np.full(n, "rating", object)
    value = np.where(np.array(items) == 20, 1.0, 5.0).astype(np.float32)
    return Interactions(np.array(users, np.int32), np.array(items, np.int32), kind, value, np.arange(n, dtype=np.int64))


def test_the_query_weighs_recent_items_more() -> None:
    items, weights = query_weights(np.array([5, 6, 7, 5]), np.ones(4, np.float32), np.array([10, 30, 20, 40]))
    assert items.tolist() == [5, 6, 7]
    assert weights[0] > weights[1] > weights[2] >= RECENCY_FLOOR  # 5 newest (its latest event), then 6, then 7


def test_history_weights_grade_ratings_touched_half_positive_full_negative_zero() -> None:
    kind = np.array(["rating", "rating", "rating", "rating", "view", "like", "dislike", "skip"], object)
    value = np.array([5.0, 3.0, 1.0, np.nan, np.nan, np.nan, np.nan, np.nan])
    weights = history_weights(kind, value).tolist()
    assert weights == pytest.approx([1.0, 0.5, 0.05, 0.5, 0.5, 1.0, 0.0, 0.0])


def test_ease_neighbours_recommend_the_users_own_taste_group() -> None:
    events = _two_taste_groups()
    ii = fit_ease(history_matrix(events, 200, 21), l2=10.0, neighbours=10)
    scores = ii.scores(np.array([0, 1, 2]), np.ones(3, np.float32))  # a user who liked 0, 1, 2
    assert scores[3:10].min() > scores[10:20].max()  # the user's taste group above the other group


def test_ease_keeps_whole_rows_over_the_head_by_default() -> None:
    events = _two_taste_groups()
    x = history_matrix(events, 200, 21)
    whole = fit_ease(x, l2=10.0).weights.toarray()
    head = fit_ease(x, l2=10.0, max_items=8).weights
    assert np.count_nonzero(whole) > 21 * 10  # negative weights kept: no per-row cut
    assert len(np.unique(head.nonzero()[0])) == 8 and len(np.unique(head.nonzero()[1])) <= 8  # head items only


def test_the_head_is_the_frequent_items_and_rows_are_cut_past_the_weight_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from training import item_item

    touched = np.array([50] * 2200 + [3] * 7000)  # ml-latest-small's shape: ~2.2k items with 10+ ratings
    assert item_item.head_size(touched) == 2200
    assert item_item.head_size(np.array([4] * 300)) == 300  # tiny data: every touched item, up to MIN_HEAD
    assert item_item.head_size(np.array([200] * 100_000)) == item_item.MAX_ITEMS  # 1M users / 100k items
    events = _two_taste_groups()
    x = history_matrix(events, 200, 21)
    monkeypatch.setattr(item_item, "MAX_WEIGHTS", 21 * 5)  # the 21-item head's whole rows no longer fit
    cut = fit_ease(x, l2=10.0).weights.tocsr()
    assert np.diff(cut.indptr).max() == 5  # each row keeps its 5 largest magnitudes


def test_serving_scores_equal_the_offline_scores() -> None:
    events = _two_taste_groups()
    ii = fit_ease(history_matrix(events, 200, 21), l2=10.0, neighbours=10)
    item_ids = np.arange(21, dtype=np.int64) * 7 + 100  # internal ids in Postgres, sorted
    index = ItemItemIndex(item_ids, ii)
    mine = events.user == 3
    state = UserState(
        user_vector=None,
        recent_cf=np.empty((0, 64), np.float32),
        recent_content=np.empty((0, 384), np.float32),
        history=UserHistory.of_events(
            item_ids[events.item[mine]], events.event_type[mine], events.value[mine].astype(np.float64), events.ts[mine]
        ),
    )
    row = query_matrix(events, 200, 21)[3]
    online = index.scores(state.history)
    assert online is not None
    np.testing.assert_allclose(online, ii.scores(row.indices, row.data), rtol=1e-6)
    top = index.top(online, state.history.items, 5)
    assert not set(top.tolist()) & set(state.history.items.tolist())  # seen items never come back


def test_a_history_built_event_by_event_is_the_history_of_all_events() -> None:
    """Feedback merges one event at a time into the stored history; the item-item query and the seen set must be
    what the whole event list gives (Postgres's aggregation, the fallback)."""
    rng = np.random.default_rng(5)
    n = 400
    items, ts = rng.integers(0, 60, n), rng.integers(0, 10**6, n)
    types = rng.choice(np.array(["rating", "view", "dislike", "like", "skip"], object), n)
    values = np.where(types == "rating", rng.uniform(0.5, 5, n), np.nan)
    whole = UserHistory.of_events(items, types, values, ts)
    stepwise = UserHistory.empty()
    for i in range(n):
        one = UserHistory.of_events(items[i : i + 1], types[i : i + 1], values[i : i + 1], ts[i : i + 1])
        stepwise = UserHistory.unpack(stepwise.merged(one).pack())  # through the stored bytes each time
    assert set(whole.items.tolist()) == set(np.unique(items).tolist())  # dislikes and skips are seen too
    expected = query_weights(items, history_weights(types, values), ts)
    for a, b in zip(expected, query_weights(*_arrays(stepwise)), strict=True):
        np.testing.assert_allclose(a, b)
    np.testing.assert_array_equal(whole.items, stepwise.items)
    latest = whole.latest(10)
    assert len(latest) == 10 and latest.ts.min() >= np.sort(whole.ts)[-10]


def _arrays(h: UserHistory) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return h.items, h.weight, h.ts


def test_a_served_source_order_places_new_items_by_content() -> None:
    from recstack.stages.retrieve import CANDIDATE_FEATURES, source_order

    features = np.zeros((3, len(CANDIDATE_FEATURES)), np.float32)
    col = {name: n for n, name in enumerate(CANDIDATE_FEATURES)}
    features[:, col["ii_score"]] = [0.8, 0.2, 0.0]  # the third item is new: no neighbours, no vector
    features[:, col["cf_score"]] = [0.5, 0.4, 0.0]
    features[:, col["content_score"]] = [0.1, 0.2, 0.95]
    scores = source_order(features, "ii_score")
    assert scores[0] > scores[2] > scores[1]  # a near-duplicate of the history comes right after the best item


def test_a_new_item_that_only_shares_genres_stays_below_every_scored_candidate() -> None:
    from recstack.stages.retrieve import CANDIDATE_FEATURES, source_order

    features = np.zeros((4, len(CANDIDATE_FEATURES)), np.float32)
    col = {name: n for n, name in enumerate(CANDIDATE_FEATURES)}
    features[:, col["ii_score"]] = [0.8, 0.01, 0.0, 0.0]  # two new items: no neighbours, no vector
    features[:, col["cf_score"]] = [0.5, 0.1, 0.0, 0.0]
    features[:, col["content_score"]] = [0.1, 0.2, 0.7, 0.5]  # same genres, not a copy
    scores = source_order(features, "ii_score")
    assert list(np.argsort(-scores)) == [0, 1, 2, 3]  # scored items first, then new ones by content


def test_the_rankers_order_places_new_items_the_same_way_per_list() -> None:
    """The ranker never saw an item without interactions labelled: its scores get the same new-item rule, with each
    list's own best score (a frame of many users is placed user by user, as serving places each request)."""
    import pandas as pd

    from recstack.stages.retrieve import CANDIDATE_FEATURES, place_cold
    from training.dataset import as_served

    features = np.zeros((3, len(CANDIDATE_FEATURES)), np.float32)
    col = {name: n for n, name in enumerate(CANDIDATE_FEATURES)}
    features[:, col["ii_score"]] = [0.8, 0.2, 0.0]  # the third item is new: no neighbours, no vector
    features[:, col["cf_score"]] = [0.5, 0.4, 0.0]
    features[:, col["content_score"]] = [0.1, 0.2, 0.95]
    for ranker in ([2.0, 1.0, 9.0], [-0.5, -3.0, 9.0]):  # the ranker put the copy first; scores of either sign
        scores = place_cold(np.array(ranker), features)
        assert list(np.argsort(-scores)) == [0, 2, 1]
    frame = pd.DataFrame(np.vstack([features, features]), columns=CANDIDATE_FEATURES)
    frame["user"] = [1, 1, 1, 2, 2, 2]
    both = as_served(frame, np.array([2.0, 1.0, 9.0, 200.0, 100.0, 900.0]))
    assert list(np.argsort(-both[:3])) == [0, 2, 1] and list(np.argsort(-both[3:])) == [0, 2, 1]


def test_ease_weights_equal_the_textbook_inverse() -> None:
    """The in-place Cholesky inverse and the blocked Gram matrix give B = I - P / diag(P), P = (X'X + l2 I)^-1."""
    from scipy import sparse

    from training import baselines

    x = sparse.random(400, 150, density=0.1, random_state=3, format="csr", dtype=np.float32)
    dense = x.toarray().astype(np.float64)
    p = np.linalg.inv(dense.T @ dense + 7.0 * np.eye(150))
    expected = -p / np.diag(p)[None, :]
    np.fill_diagonal(expected, 0)
    got = baselines.ease_from_gram(baselines.gram_matrix(x, block=64), 7.0)  # several column and row blocks
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(
        baselines.spd_inverse(dense.T @ dense + np.eye(150), block=64),
        np.linalg.inv(dense.T @ dense + np.eye(150)),
        rtol=1e-9,
        atol=1e-12,
    )


def test_row_blocks_and_blends_give_the_same_neighbours() -> None:
    from training import item_item

    rng = np.random.default_rng(5)
    b, extra = rng.standard_normal((30, 30)), rng.standard_normal((30, 30))
    head = np.arange(30) * 2 + 1
    whole = item_item.as_item_item(b + 0.5 * extra, head, 70, neighbours=7).weights.toarray()
    choice = item_item.Choice(sequence_weight=0.5)
    blocked = item_item.as_item_item(item_item.blend(b, choice, extra), head, 70, neighbours=7, block=4)
    np.testing.assert_array_equal(blocked.weights.toarray(), whole)
    assert (np.count_nonzero(whole, axis=1)[head] == 7).all()
