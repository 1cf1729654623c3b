"""Rank stage: the promoted CatBoost ranker over the candidates, with the same feature frame as training.

Training joins Feast's ``ranking_v1`` point-in-time (full names ``view__feature``) plus the retrieval scores; here the
same columns come from the online lookup, and the two on-demand views are computed with the same functions Feast
calls (recstack.features.transforms), so a feature means the same thing offline and online.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from recstack.features import transforms
from recstack.stages.retrieve import CANDIDATE_FEATURES, CandidateSet

# Retrieval scores whose scale belongs to the model that produced them: the ranker learns from candidates scored by
# item-item weights and embeddings fit on the train part, and serves candidates scored by ones refit on every event,
# whose scores sit elsewhere (trees split on absolute values). It sees where each candidate stands in its own list.
LIST_RELATIVE = (
    "cf_score",
    "content_score",
    "log_popularity",
    "ii_score",
    "user_score",
    "recent_mean_score",
    "recent_max_score",
)
IN_LIST = "_in_list"
RANKER_CANDIDATE_FEATURES = [f + IN_LIST if f in LIST_RELATIVE else f for f in CANDIDATE_FEATURES]


def in_list(values: np.ndarray) -> np.ndarray:
    """Each value's place among one list's values in [0, 1] (1 = the highest; ties share their mean place)."""
    from scipy.stats import rankdata

    n = len(values)
    if n < 2:
        return np.ones(n, dtype=np.float64)
    return (rankdata(values, method="average") - 1.0) / (n - 1.0)


def in_list_columns(features: np.ndarray) -> dict[str, np.ndarray]:
    """The list-relative columns of one list's CANDIDATE_FEATURES matrix (a request's, or a user's in training)."""
    return {f + IN_LIST: in_list(features[:, CANDIDATE_FEATURES.index(f)].astype(np.float64)) for f in LIST_RELATIVE}


@dataclass
class RankContext:
    when: datetime
    device: str | None = None
    locale: str | None = None


def model_input(frame: pd.DataFrame, features: list[str], categorical: list[str]) -> pd.DataFrame:
    """The model's columns in its order: categorical as strings ("missing" for nulls), the rest as float."""
    out = {}
    for column in features:
        values = frame[column] if column in frame else pd.Series([None] * len(frame))
        if column in categorical:
            out[column] = values.fillna("missing").astype(str).to_numpy()
        else:
            out[column] = pd.to_numeric(values, errors="coerce").astype("float64").to_numpy()
    return pd.DataFrame(out)


def _numeric(column: np.ndarray) -> np.ndarray:
    if column.dtype != object:
        return column.astype(np.float64)
    return pd.to_numeric(pd.Series(column), errors="coerce").to_numpy(np.float64)


def _as_category(value: Any) -> str:
    if type(value) is str:
        return value
    if isinstance(value, (list, tuple, np.ndarray)):
        try:
            return _array_category(tuple(value))
        except TypeError:  # unhashable elements
            return str(np.asarray(value))
    return "missing" if value is None or value != value else str(value)


@functools.lru_cache(maxsize=65536)
def _array_category(value: tuple[Any, ...]) -> str:
    """What pandas' astype(str) made of Feast's array values in training frames (numpy's array printing, ~20 us a
    call: memoised, as a catalog has few distinct category lists)."""
    return str(np.asarray(value))


def _categorical(column: np.ndarray) -> np.ndarray:
    return np.array([_as_category(v) for v in column], dtype=object)


def model_columns(
    user: dict[str, Any],
    items: dict[str, np.ndarray],
    candidates: CandidateSet,
    ctx: RankContext,
    features: list[str],
    categorical: list[str],
) -> dict[str, np.ndarray]:
    """The ranker's input for one request, column by column in the model's order, equal to ``model_input`` of the
    training layout (Feast's full-name frame; tests/unit/test_rank.py builds that frame and checks the equality):
    request-level values are computed once and broadcast, item columns are used as they are."""
    n = len(candidates)
    context = _context(ctx.when.hour, ctx.when.weekday(), ctx.device or "unknown", ctx.locale or "unknown")
    crosses = None
    if any(f.startswith("user_item_features__") for f in features):
        crosses = transforms.user_item_crosses_for_user(
            user.get("user_features__affinity_categories"),
            user.get("user_features__affinity_shares"),
            user.get("user_features__last_event_at"),
            list(items.get("item_features__categories", [None] * n)),
            int(ctx.when.timestamp()),
        )
    position = {name: i for i, name in enumerate(CANDIDATE_FEATURES)}
    out: dict[str, np.ndarray] = {}
    for name in features:
        if name in position:
            column = candidates.features[:, position[name]]
        elif name.endswith(IN_LIST) and name.removesuffix(IN_LIST) in position:
            column = in_list(candidates.features[:, position[name.removesuffix(IN_LIST)]].astype(np.float64))
        elif name.startswith("context_features__"):
            out[name] = _broadcast(context[name.removeprefix("context_features__")], n, name in categorical)
            continue
        elif name.startswith("user_item_features__") and crosses is not None:
            column = crosses[name.removeprefix("user_item_features__")]
        elif name in items:
            column = items[name]
        else:
            out[name] = _broadcast(user.get(name), n, name in categorical)
            continue
        out[name] = _categorical(column) if name in categorical else _numeric(column)
    return out


@functools.lru_cache(maxsize=4096)
def _context(hour: int, weekday: int, device: str, locale: str) -> dict[str, Any]:
    """The context view's values for one request (Feast's on-demand function on a one-row frame), memoised: a
    request's context takes few distinct values."""
    request = pd.DataFrame({"hour_of_day": [hour], "day_of_week": [weekday], "device": [device], "locale": [locale]})
    return transforms.context_features(request).iloc[0].to_dict()


def _broadcast(value: Any, n: int, categorical: bool) -> np.ndarray:
    """A request-level value as a column of ``n``, converted once the way a column of it would be."""
    if not categorical and (value is None or type(value) in (int, float, bool)):  # the common case, without pandas
        return np.full(n, np.nan if value is None else float(value), dtype=np.float64)
    one = np.empty(1, dtype=object)
    one[0] = value  # a list stays one element
    converted = _categorical(one) if categorical else _numeric(one)
    return np.full(n, converted[0], dtype=converted.dtype)


def score(model: Any, columns: dict[str, np.ndarray], categorical: list[str]) -> np.ndarray:
    """The model's scores for ``model_columns``. Passed as CatBoost's FeaturesData (one float32 block, one block of
    category strings) rather than a DataFrame: CatBoost fills the model's numeric and categorical slots in its own
    feature order from the two blocks, and skipping pandas halves the CPU of a prediction (bench/bench_rank_input.py).
    One thread per call: requests already run concurrently, and CatBoost's default (all cores) oversubscribes."""
    from catboost import FeaturesData

    if not columns or not len(next(iter(columns.values()))):
        return np.empty(0, dtype=np.float64)
    categorical_set = set(categorical)
    cats = [name for name in columns if name in categorical_set]
    nums = [name for name in columns if name not in categorical_set]
    data = FeaturesData(
        num_feature_data=np.column_stack([columns[c] for c in nums]).astype(np.float32) if nums else None,
        cat_feature_data=np.column_stack([columns[c] for c in cats]).astype(object) if cats else None,
        num_feature_names=nums or None,
        cat_feature_names=cats or None,
    )
    return np.asarray(model.predict(data, thread_count=1), dtype=np.float64)


def contributions(
    model: Any,
    columns: dict[str, np.ndarray],
    features: list[str],
    categorical: list[str],
    rows: list[int],
    top: int = 3,
) -> list[list[str]]:
    """Top feature contributions (SHAP values) for the given rows, as 'feature +0.12' strings."""
    from catboost import Pool

    slate = pd.DataFrame({name: column[rows] for name, column in columns.items()})
    shap = model.get_feature_importance(Pool(slate, cat_features=categorical), type="ShapValues")
    out = []
    for row in shap:
        order = np.argsort(-np.abs(row[:-1]))[:top]
        out.append([f"{features[i]} {row[i]:+.3f}" for i in order])
    return out
