"""What the ranker learns from and is judged on: the unlabelled sample, its columns, and the views serving reads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pytest

from recstack.features.online import OnlineLookup
from recstack.stages.rank import RANKER_CANDIDATE_FEATURES, in_list
from training.dataset import subsample_unlabelled
from training.pipeline import ranker_columns


def candidates(users: int = 4, per_user: int = 1000, labelled: int = 5) -> pd.DataFrame:
    rows = []
    for user in range(users):
        for rank in range(per_user):  # item-item score falls with rank; the first `labelled` rows were acted on
            rows.append(
                {
                    "user": user,
                    "item": rank,
                    "ii_score": 1.0 - rank / per_user,
                    "cf_score": 0.0,
                    "label": 4 if rank < labelled else 1,
                }
            )
    return pd.DataFrame(rows)


def test_the_unlabelled_sample_keeps_every_label_and_is_uniform_over_scores() -> None:
    frame = candidates()
    sample = subsample_unlabelled(frame, 60, seed=7)
    assert (sample["label"] > 1).sum() == (frame["label"] > 1).sum()
    unlabelled = sample[sample["label"] == 1]
    assert unlabelled.groupby("user").size().tolist() == [60] * 4
    # Uniform: the kept "none" rows sit around the middle of the item-item order, not at its top (a sample of the
    # hardest rows taught the ranker to push the best item-item candidates down).
    assert 0.35 < unlabelled["ii_score"].mean() < 0.65


def test_the_sample_is_reproducible_and_small_users_keep_everything() -> None:
    frame = candidates(users=2, per_user=30)
    pd.testing.assert_frame_equal(subsample_unlabelled(frame, 60, 1), frame)
    big = candidates(users=2)
    pd.testing.assert_frame_equal(subsample_unlabelled(big, 60, 3), subsample_unlabelled(big, 60, 3))


def test_ranker_columns_leave_out_instants_lists_and_the_realtime_view() -> None:
    n = 3
    frame = pd.DataFrame(
        {
            "user": [0] * n,
            "item": range(n),
            "user_features__views_7d": [1.0, 2.0, 3.0],
            "user_features__last_event_at": pd.to_datetime([1_600_000_000] * n, unit="s", utc=True),
            "user_features__affinity_categories": [["a"], ["b"], ["a"]],
            "user_realtime__recent_item_ids": [["x"]] * n,
            "item_features__domain": ["movie"] * n,
        }
    )
    for column in RANKER_CANDIDATE_FEATURES:
        frame[column] = 0.0
    features, categorical = ranker_columns(frame)
    assert features[:2] == ["item_features__domain", "user_features__views_7d"]
    assert features[2:] == RANKER_CANDIDATE_FEATURES
    assert categorical == ["item_features__domain"]


@dataclass
class _Field:
    name: str


@dataclass
class _View:
    name: str
    key: str
    names: tuple[str, ...]

    @property
    def entity_columns(self) -> list[_Field]:
        return [_Field(self.key)]

    @property
    def features(self) -> list[_Field]:
        return [_Field(n) for n in self.names]


class _Store:
    """Feast's registry as OnlineLookup.for_service reads it (Redis is never touched by the constructor)."""

    def __init__(self, views: list[_View], on_demand: list[str], service: list[str]) -> None:
        self.views = {v.name: v for v in views}
        self.on_demand = on_demand
        self.service = service
        self.config = type("Config", (), {"project": "recstack"})()

    def get_feature_view(self, name: str) -> _View:
        return self.views[name]

    def list_on_demand_feature_views(self) -> list[_Field]:
        return [_Field(n) for n in self.on_demand]

    def get_feature_service(self, name: str) -> Any:
        return type("Service", (), {"feature_view_projections": [_Field(n) for n in self.service]})()


def test_serving_reads_every_view_of_the_feature_service_including_a_new_one() -> None:
    views = [
        _View("user_features", "user_id", ("views_7d",)),
        _View("item_features", "item_id", ("domain", "age_days")),
        _View("user_taste", "user_id", ("sci_fi_share",)),  # registered after the first release
    ]
    store = _Store(views, ["context_features"], ["user_features", "item_features", "context_features", "user_taste"])
    lookup = OnlineLookup.for_service(store, client=None, service="ranking_v1")  # type: ignore[arg-type]
    assert [v.view for v in lookup.user_views] == ["user_features", "user_taste"]
    assert [(v.view, v.features) for v in lookup.item_views] == [("item_features", ("domain", "age_days"))]
    assert "user_taste__sci_fi_share" in lookup._user_names


def test_a_view_keyed_by_neither_user_nor_item_is_refused() -> None:
    views = [_View("user_features", "user_id", ("views_7d",)), _View("sessions", "session_id", ("length",))]
    store = _Store(views, [], ["user_features", "sessions"])
    with pytest.raises(ValueError, match="sessions is keyed by 'session_id'"):
        OnlineLookup.for_service(store, client=None, service="ranking_v1")  # type: ignore[arg-type]


def test_uniform_sample_ignores_scores_entirely() -> None:
    frame = candidates(users=1)
    shuffled = frame.assign(ii_score=np.random.default_rng(0).permutation(frame["ii_score"].to_numpy()))
    kept = subsample_unlabelled(frame, 60, 5)["item"].tolist()
    assert kept == subsample_unlabelled(shuffled, 60, 5)["item"].tolist()


def test_list_places_do_not_change_when_a_refit_model_scores_on_another_scale() -> None:
    scores = np.array([0.02, 0.5, 0.5, -0.1, 0.3])
    places = in_list(scores)
    assert places.tolist() == [0.25, 0.875, 0.875, 0.0, 0.5]
    np.testing.assert_allclose(in_list(scores * 3.0 + 1.0), places)  # what trees split on stays put
    assert in_list(np.array([7.0])).tolist() == [1.0]


def test_held_out_test_items_are_left_out_of_the_ranker_candidates() -> None:
    from training.dataset import history, with_seen
    from training.interactions import Interactions

    def events(users: list[int], items: list[int]) -> Interactions:
        n = len(users)
        return Interactions(
            np.array(users), np.array(items), np.array(["like"] * n, dtype=object), np.ones(n), np.arange(n)
        )

    hist = history(events([0, 0, 1], [1, 2, 3]), n_users=2)
    merged = with_seen(hist, events([0, 0, 1, 0, 1, 1], [1, 2, 3, 5, 3, 4]))  # the history plus the test part
    assert merged.seen(0).tolist() == [1, 2, 5] and merged.seen(1).tolist() == [3, 4]
    assert [r.tolist() for r in merged.recent] == [r.tolist() for r in hist.recent]  # queries stay the history's


def test_the_guard_scores_each_user_with_a_ranker_that_never_saw_them(monkeypatch: pytest.MonkeyPatch) -> None:
    from training import pipeline

    rng = np.random.default_rng(3)
    rows = []
    for user in range(40):
        for item in range(30):
            signal = rng.random()
            rows.append({"user": user, "item": item, "signal": signal, "label": 4 if signal > 0.9 else 1})
    frame = pd.DataFrame(rows)
    seen_by_fit: list[set[int]] = []
    real_fit = pipeline.fit_config

    def recording_fit(data: Any, valid: Any, config: Any, **kwargs: Any) -> Any:
        seen_by_fit.append(set(data.group.tolist()))
        return real_fit(data, valid, config, **kwargs)

    monkeypatch.setattr(pipeline, "fit_config", recording_fit)
    config = {"loss": "YetiRank", "depth": 3, "learning_rate": 0.1, "l2_leaf_reg": 3.0}
    guard = frame[frame["user"] < 20].reset_index(drop=True)
    scores = pipeline.cross_fitted_scores(
        frame, guard, guard[["signal"]], ["signal"], [], config, 40, seed=1, progress=lambda *a: None
    )
    assert len(seen_by_fit) == pipeline.GUARD_FOLDS
    # Every guard user was left out of exactly one fit; users outside the guard trained every fit.
    assert all(sum(u not in fit for fit in seen_by_fit) == 1 for u in range(20))
    assert all(all(u in fit for fit in seen_by_fit) for u in range(20, 40))
    guard["score"] = scores
    by_score, by_item = pipeline.per_user_ndcg(guard, "score"), pipeline.per_user_ndcg(guard, "item")
    assert len(by_score) == len(by_item) == guard.loc[guard["label"] > 1, "user"].nunique()
    assert by_score.mean() > 0.9 > by_item.mean()  # the planted signal learned, scored out of fold
