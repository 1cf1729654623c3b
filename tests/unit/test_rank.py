"""The serving feature matrix equals the training one: ``model_matrix`` (fast path) == ``model_input(feature_frame)``
(the frame laid out like Feast's training join), including missing values, categoricals and on-demand features."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd

from serving.stages.rank import RankContext, feature_frame, model_input, model_matrix
from serving.stages.retrieve import CANDIDATE_FEATURES, CandidateSet


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
        "context_features__hour_sin",
        "context_features__is_weekend",
        "context_features__ctx_device",
        "user_item_features__category_affinity",
        "user_item_features__category_match_rank",
        "user_item_features__seconds_since_last_event",
        *CANDIDATE_FEATURES,
    ]
    categorical = ["item_features__domain", "context_features__ctx_device"]
    ctx = RankContext(when=datetime(2026, 5, 2, 21, 30, tzinfo=UTC), device="tv")
    expected = model_input(feature_frame(user, items, candidates, ctx), features, categorical)
    fast = model_matrix(user, items, candidates, ctx, features, categorical)
    pd.testing.assert_frame_equal(expected, fast, check_dtype=False)
    assert fast["user_item_features__category_affinity"].tolist() == [0.7, 0.3, 0.0, 0.0, 0.7, 0.0]
    assert fast["item_features__domain"].tolist()[1] == "missing"
