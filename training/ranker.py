"""CatBoost learning-to-rank on grouped candidate lists (one group = one user's request)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from catboost import CatBoostRanker, Pool

# Losses the tuner searches: YetiRank (Gulin et al. 2011, CatBoost's pairwise listwise hybrid), PairLogit
# (pairwise logistic), QueryRMSE (pointwise regression within groups).
LOSSES = ("YetiRank", "PairLogit", "QueryRMSE")


@dataclass
class RankerData:
    """Rows sorted by group (CatBoost requires each group's rows to be contiguous)."""

    features: pd.DataFrame
    label: np.ndarray
    group: np.ndarray  # int64 group id per row
    cat_features: list[str]

    def pool(self) -> Pool:
        return Pool(self.features, label=self.label, group_id=self.group, cat_features=self.cat_features)


def sort_by_group(frame: pd.DataFrame, group_col: str) -> pd.DataFrame:
    """Stable sort so each group's rows are contiguous, keeping candidate order inside a group."""
    return frame.sort_values(group_col, kind="stable").reset_index(drop=True)


def train_ranker(
    train: RankerData,
    valid: RankerData | None,
    loss: str = "YetiRank",
    depth: int = 6,
    learning_rate: float = 0.1,
    l2_leaf_reg: float = 3.0,
    iterations: int = 300,
    seed: int = 42,
    threads: int = 1,
) -> tuple[CatBoostRanker, dict[str, float]]:
    """Fit a ranker with early stopping on the validation groups; returns the model and validation NDCG@10 (without
    validation groups: ``iterations`` rounds, NaN)."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    model = CatBoostRanker(
        loss_function=loss,
        eval_metric="NDCG:top=10",
        depth=depth,
        learning_rate=learning_rate,
        l2_leaf_reg=l2_leaf_reg,
        iterations=iterations,
        random_seed=seed,
        thread_count=threads,
        early_stopping_rounds=50 if valid is not None else None,
        verbose=False,
        allow_writing_files=False,
    )
    eval_set = valid.pool() if valid is not None else None
    model.fit(train.pool(), eval_set=eval_set, use_best_model=valid is not None)
    # get_best_score() comes back empty for rankers in CatBoost 1.2.10; the eval history has the values.
    history = model.get_evals_result().get("validation", {}).get("NDCG:top=10;type=Base", [])
    best_iteration = model.get_best_iteration()
    if best_iteration is None or best_iteration >= len(history):
        best_iteration = len(history) - 1
    ndcg = float(history[best_iteration]) if history else float("nan")
    return model, {"valid_ndcg@10": ndcg, "best_iteration": float(best_iteration)}


def fit_config(
    train: RankerData,
    valid: RankerData | None,
    config: dict[str, Any],
    seed: int,
    threads: int,
    iterations: int | None = None,
) -> tuple[CatBoostRanker, dict[str, float]]:
    """``train_ranker`` with a Tune configuration (loss, depth, learning_rate, l2_leaf_reg, iterations); ``iterations``
    overrides the configuration's rounds."""
    return train_ranker(
        train,
        valid,
        loss=config["loss"],
        depth=int(config["depth"]),
        learning_rate=config["learning_rate"],
        l2_leaf_reg=config["l2_leaf_reg"],
        iterations=int(config["iterations"]) if iterations is None else iterations,
        seed=seed,
        threads=threads,
    )
