"""The serving feature matrix equals the training one: ``model_columns`` (fast path) == ``model_input(training_layout)``
(the frame laid out like Feast's training join), including missing values, categoricals and on-demand features."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from recstack.features import transforms
from recstack.stages.rank import (
    IN_LIST,
    RANKER_CANDIDATE_FEATURES,
    RankContext,
    in_list_columns,
    model_columns,
    model_input,
)
from recstack.stages.retrieve import CANDIDATE_FEATURES, CandidateSet


def training_layout(
    user: dict[str, Any], items: dict[str, np.ndarray], candidates: CandidateSet, ctx: RankContext
) -> pd.DataFrame:
    """The frame as training sees it (Feast's full-name columns, on-demand views computed row-wise), built naively.
    Array values are numpy arrays there (Feast's historical retrieval goes through pyarrow's to_pandas)."""
    n = len(candidates)

    def as_arrow_would(value: Any) -> Any:
        return np.asarray(value) if isinstance(value, list) else value

    frame = pd.DataFrame({name: [as_arrow_would(v) for v in column] for name, column in items.items()})
    frame = frame.reindex(range(n))
    for name, value in user.items():
        frame[name] = [as_arrow_would(value)] * n if isinstance(value, list) else value
    request = pd.DataFrame(
        {
            "hour_of_day": np.full(n, ctx.when.hour),
            "day_of_week": np.full(n, ctx.when.weekday()),
            "device": [ctx.device or "unknown"] * n,
            "locale": [ctx.locale or "unknown"] * n,
        }
    )
    for name, column in transforms.context_features(request).items():
        frame[f"context_features__{name}"] = column.to_numpy()
    crosses_in = pd.DataFrame(
        {
            "affinity_categories": [user.get("user_features__affinity_categories")] * n,
            "affinity_shares": [user.get("user_features__affinity_shares")] * n,
            "last_event_at": [user.get("user_features__last_event_at")] * n,
            "categories": list(items.get("item_features__categories", np.full(n, None, dtype=object))),
            "request_ts": np.full(n, int(ctx.when.timestamp())),
        }
    )
    for name, column in transforms.user_item_crosses(crosses_in).items():
        frame[f"user_item_features__{name}"] = column.to_numpy()
    for position, name in enumerate(CANDIDATE_FEATURES):
        frame[name] = candidates.features[:, position]
    for name, column in in_list_columns(candidates.features).items():  # as training's candidate frames carry them
        frame[name] = column
    return frame


def test_fast_matrix_equals_the_training_layout() -> None:
    n = 6
    rng = np.random.default_rng(0)
    candidates = CandidateSet(
        item_ids=[f"i{k}" for k in range(n)],
        titles=[""] * n,
        domains=["movies"] * n,
        providers=["p1"] * n,
        categories=[["drama"]] * n,
        vectors=np.zeros((n, 64), np.float32),
        features=rng.random((n, len(CANDIDATE_FEATURES))).astype(np.float32),
    )
    user = {
        "user_features__views_7d": 3,
        "user_features__like_ratio_30d": None,
        "user_features__affinity_categories": ["drama", "comedy"],
        "user_features__affinity_shares": [0.7, 0.3],
        "user_features__last_event_at": datetime(2026, 5, 1, tzinfo=UTC),
    }
    items = {
        "item_features__popularity_7d": np.array([1, None, 3, 4, None, 6], dtype=object),
        "item_features__domain": np.array(["movies", None, "music", "movies", "books", None], dtype=object),
        "item_features__categories": np.array([["drama"], ["comedy"], None, ["x"], ["drama", "x"], []], dtype=object),
    }
    features = [
        "user_features__views_7d",
        "user_features__like_ratio_30d",
        "item_features__popularity_7d",
        "item_features__domain",
        "item_features__categories",
        "user_features__affinity_categories",
        "context_features__hour_sin",
        "context_features__is_weekend",
        "context_features__ctx_device",
        "user_item_features__category_affinity",
        "user_item_features__category_match_rank",
        "user_item_features__seconds_since_last_event",
        *CANDIDATE_FEATURES,
        *(f for f in RANKER_CANDIDATE_FEATURES if f.endswith(IN_LIST)),
    ]
    categorical = [
        "item_features__domain",
        "item_features__categories",  # array values: categorical as numpy prints them, as pandas' astype(str) did
        "user_features__affinity_categories",
        "context_features__ctx_device",
    ]
    ctx = RankContext(when=datetime(2026, 5, 2, 21, 30, tzinfo=UTC), device="tv")
    expected = model_input(training_layout(user, items, candidates, ctx), features, categorical)
    fast = pd.DataFrame(model_columns(user, items, candidates, ctx, features, categorical))
    pd.testing.assert_frame_equal(expected, fast, check_dtype=False)
    assert fast["user_item_features__category_affinity"].tolist() == [0.7, 0.3, 0.0, 0.0, 0.7, 0.0]
    assert fast["item_features__domain"].tolist()[1] == "missing"
    assert fast["item_features__categories"].tolist()[4] == "['drama' 'x']"


def test_one_user_crosses_equal_the_frame_version_feast_runs() -> None:
    from recstack.features import transforms

    rng = np.random.default_rng(0)
    pool = ["a", "b", "c", "d", "e"]
    items = [None, [], *[list(rng.choice(pool, rng.integers(1, 4), replace=False)) for _ in range(30)]]
    users = [
        (["c", "a", "e"], [0.5, 0.3, 0.2], datetime(2026, 5, 1, 12, tzinfo=UTC)),
        (["b"], [1.0], "2026-05-01T00:00:00"),  # naive: read as UTC, as the frame version does
        (["a", "b"], [0.9], None),  # shares shorter than categories: the extra category is ignored
        (None, None, None),  # a newcomer: nothing in the batch features yet
    ]
    request_ts = 1_780_000_000
    for categories, shares, last in users:
        n = len(items)
        frame = pd.DataFrame(
            {
                "affinity_categories": [categories] * n,
                "affinity_shares": [shares] * n,
                "last_event_at": [last] * n,
                "categories": items,
                "request_ts": np.full(n, request_ts),
            }
        )
        expected = transforms.user_item_crosses(frame)
        fast = transforms.user_item_crosses_for_user(categories, shares, last, items, request_ts)
        for name in transforms.CROSS_OUTPUTS:
            np.testing.assert_array_equal(fast[name], expected[name].to_numpy(), err_msg=f"{name} for {categories}")


def test_scores_from_features_data_equal_scores_from_the_training_frame() -> None:
    """``score`` hands CatBoost two blocks (numbers, categories) instead of a frame: with categorical columns between
    numeric ones in the model's order, every score must equal predicting from the frame the model was trained on."""
    from catboost import CatBoostRanker, Pool

    from recstack.stages.rank import score

    rng = np.random.default_rng(1)
    n = 600
    frame = pd.DataFrame(
        {
            "a": rng.normal(size=n),
            "domain": rng.choice(["movie", "music", "missing"], n),
            "b": rng.normal(size=n),
            "device": rng.choice(["tv", "phone"], n),
            "c": np.where(rng.random(n) < 0.2, np.nan, rng.normal(size=n)),
        }
    )
    label = (frame["a"] + (frame["domain"] == "music") + 2 * (frame["device"] == "tv") > 1).astype(int)
    categorical = ["domain", "device"]
    model = CatBoostRanker(iterations=30, depth=4, verbose=False, thread_count=1, random_seed=0)
    model.fit(Pool(frame, label, group_id=np.repeat(np.arange(n // 20), 20), cat_features=categorical))
    columns = {name: frame[name].to_numpy() for name in frame}
    expected = model.predict(frame, thread_count=1)
    np.testing.assert_allclose(score(model, columns, categorical), expected, rtol=0, atol=1e-12)
    assert np.unique(expected).size > 5  # the categorical columns matter to the model: a swap would show
    swapped = {**columns, "domain": columns["device"], "device": columns["domain"]}
    assert not np.allclose(score(model, swapped, categorical), expected)
    assert score(model, {name: col[:0] for name, col in columns.items()}, categorical).shape == (0,)
