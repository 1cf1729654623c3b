"""`recstack train`: validate -> content vectors -> embeddings -> ranker set -> Ray Tune -> registry -> pgvector.

Windows (time split of the events): train | valid (7 days) | test (7 days).
  1. Embeddings E1 on train; candidates + labels from the valid window; Feast features point-in-time -> ranker set,
     its users split 80/20 into fit and early-stopping groups; Ray Tune searches CatBoost on it.
  2. Embeddings E2 on train + valid (everything before the test window) are what serving uses and what
     `recstack evaluate` scores on the held-out test window, so the evaluation measures the served artifacts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import psycopg

from recstack import stack
from recstack.settings import Settings
from serving.stages.rank import model_input
from serving.stages.retrieve import CANDIDATE_FEATURES, RetrievalParams
from training import dataset, registry
from training.batch import ensure_ray
from training.embeddings import EmbeddingModel, train_embeddings
from training.interactions import Catalog, Interactions, TimeSplit, load_catalog, load_interactions, time_split
from training.ranker import RankerData, sort_by_group, train_ranker

ProgressFn = Callable[[str, int, int], None]
TRAIN_SUITES = ["users", "items", "events", "user_features", "item_features"]
KEY_COLUMNS = ["user", "item", "label"]


@dataclass
class TrainConfig:
    trials: int = 8
    smoke: bool = False
    epochs: int = 8
    ranker_users: int = 2000  # users of the valid window whose candidates form the ranker set
    unlabelled_per_user: int = 60  # random "none" candidates kept per user (every labelled one is kept)
    valid_days: float = 7
    test_days: float = 7
    seed: int = 42
    promote: bool = True
    force: bool = False
    retrieval: RetrievalParams = field(default_factory=RetrievalParams)


@dataclass
class TrainReport:
    version: str
    timings: dict[str, float]
    ranker_rows: int
    ranker_groups: int
    best_config: dict[str, Any]
    valid_ndcg10: float
    trials: list[dict[str, Any]]


def retrieval_inputs(model: EmbeddingModel, content: np.ndarray) -> dataset.Retrieval:
    return retrieval_inputs_from_arrays(model.user, model.item, model.trained_items, content, model.item_popularity)


def retrieval_inputs_from_arrays(
    user_cf: np.ndarray, item_cf: np.ndarray, trained: np.ndarray, content: np.ndarray, popularity: np.ndarray
) -> dataset.Retrieval:
    """What candidate generation sees, as serving stores it: items without a trained vector get none (zeros)."""
    return dataset.Retrieval(
        user_cf=user_cf,
        item_cf=np.where(trained[:, None], item_cf, 0).astype(np.float32),
        item_content=content,
        log_popularity=np.log1p(popularity).astype(np.float32),
        has_user_vector=np.abs(user_cf).sum(1) > 0,
    )


def _is_list_column(column: pd.Series) -> bool:
    """Array-valued columns (category lists feeding the on-demand views) are inputs, not ranker features."""
    values = column.dropna()
    return bool(len(values)) and isinstance(values.iloc[0], (list, tuple, np.ndarray))


def ranker_columns(frame: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(feature columns in model order, categorical ones): Feast's view__feature columns + retrieval scores."""
    feast_columns = sorted(
        c for c in frame.columns if "__" in c and not c.startswith("user_realtime") and not _is_list_column(frame[c])
    )
    features = [*feast_columns, *CANDIDATE_FEATURES]
    categorical = [c for c in features if frame[c].dtype == object]
    return features, categorical


def build_ranker_set(
    store: Any,
    catalog: Catalog,
    before: Interactions,
    window: Interactions,
    retrieval: dataset.Retrieval,
    params: RetrievalParams,
    max_users: int,
    unlabelled_per_user: int,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Candidates for a sample of the window's users, with graded labels and point-in-time features."""
    hist = dataset.history(before, catalog.n_users)
    labels = dataset.window_labels(window)
    users = np.unique(labels.loc[labels["grade"] > 0, "user"].to_numpy())
    rng = np.random.default_rng(seed)
    if len(users) > max_users:
        users = np.sort(rng.choice(users, max_users, replace=False))
    candidates = dataset.candidate_frame(users, hist, retrieval, params, catalog.n_items)
    labelled = dataset.subsample_unlabelled(dataset.attach_labels(candidates, labels), unlabelled_per_user, seed)
    return dataset.join_features(store, labelled, catalog, dataset.first_event_ts(window), progress=progress)


def split_groups(frame: pd.DataFrame, seed: int, fit_share: float = 0.8) -> tuple[pd.DataFrame, pd.DataFrame]:
    users = frame["user"].unique()
    rng = np.random.default_rng(seed)
    fit_users = set(rng.choice(users, int(len(users) * fit_share), replace=False).tolist())
    fit = frame["user"].isin(fit_users)
    return frame[fit], frame[~fit]


def to_ranker_data(frame: pd.DataFrame, features: list[str], categorical: list[str]) -> RankerData:
    ordered = sort_by_group(frame, "user")
    return RankerData(
        features=model_input(ordered, features, categorical),
        label=ordered["label"].to_numpy(np.float64),
        group=ordered["user"].to_numpy(np.int64),
        cat_features=categorical,
    )


def load_split(conn: psycopg.Connection, config: TrainConfig) -> tuple[Catalog, TimeSplit]:
    catalog = load_catalog(conn)
    events = load_interactions(conn, catalog)
    if len(events) == 0:
        raise ValueError("no events: ingest data first (`recstack ingest synthetic` or `recstack ingest movielens`)")
    return catalog, time_split(events, config.valid_days, config.test_days)


def train(settings: Settings, config: TrainConfig, progress: ProgressFn | None = None) -> TrainReport:
    from recstack.features.store import open_store
    from training.tune import run_search
    from training.vectors import load_content_matrix, update_content_vectors, write_cf_vectors
    from validation.gate import require_pass

    step = progress or (lambda stage, done, total: None)
    timings: dict[str, float] = {}

    def timed(name: str, started: float) -> None:
        timings[name] = round(time.perf_counter() - started, 2)

    require_pass(settings, TRAIN_SUITES, force=config.force)
    ensure_ray()  # Tune's trials and the feature-join chunks run as Ray tasks (a cluster with RAY_ADDRESS)
    dsn = stack.postgres_dsn(settings)
    with psycopg.connect(dsn) as conn:
        started = time.perf_counter()
        catalog, split = load_split(conn, config)
        timed("load_events_s", started)
        started = time.perf_counter()
        update_content_vectors(conn, progress=lambda done, total: step("content", done, total))
        content = load_content_matrix(conn, catalog)
        timed("content_vectors_s", started)

    started = time.perf_counter()
    e1 = train_embeddings(
        split.train,
        catalog.n_users,
        catalog.n_items,
        epochs=config.epochs,
        seed=config.seed,
        progress=lambda epoch, loss: step("embed 1/2", epoch, config.epochs),
    )
    timed("embeddings_train_window_s", started)

    started = time.perf_counter()
    store = open_store(settings)
    frame = build_ranker_set(
        store,
        catalog,
        split.train,
        split.valid,
        retrieval_inputs(e1, content),
        config.retrieval,
        config.ranker_users,
        config.unlabelled_per_user,
        config.seed,
        progress=lambda done, total: step("features", done, total),
    )
    timed("ranker_set_s", started)
    features, categorical = ranker_columns(frame)
    fit, early = split_groups(frame, config.seed)
    fit_data, early_data = to_ranker_data(fit, features, categorical), to_ranker_data(early, features, categorical)

    started = time.perf_counter()
    step("tune", 0, config.trials)
    result = run_search(fit_data, early_data, trials=config.trials, smoke=config.smoke, seed=config.seed)
    step("tune", config.trials, config.trials)
    timed("tune_s", started)
    started = time.perf_counter()
    best = result.best_config
    model, metrics = train_ranker(
        fit_data,
        early_data,
        loss=best["loss"],
        depth=int(best["depth"]),
        learning_rate=best["learning_rate"],
        l2_leaf_reg=best["l2_leaf_reg"],
        iterations=int(best["iterations"]),
        seed=config.seed,
        threads=2,
    )
    timed("ranker_final_fit_s", started)

    started = time.perf_counter()
    before_test = Interactions(
        *(
            np.concatenate([getattr(split.train, a), getattr(split.valid, a)])
            for a in ("user", "item", "event_type", "value", "ts")
        )
    )
    e2 = train_embeddings(
        before_test,
        catalog.n_users,
        catalog.n_items,
        epochs=config.epochs,
        seed=config.seed,
        progress=lambda epoch, loss: step("embed 2/2", epoch, config.epochs),
    )
    timed("embeddings_serving_s", started)

    window = {
        "train_end": datetime.fromtimestamp(split.valid_start, UTC).isoformat(),
        "test_start": datetime.fromtimestamp(split.test_start, UTC).isoformat(),
        "valid_days": config.valid_days,
        "test_days": config.test_days,
    }
    with psycopg.connect(dsn) as conn:
        record = registry.register(
            conn,
            settings.models_dir,
            model,
            features,
            params={**best, "categorical": categorical, "retrieval": config.retrieval.__dict__},
            metrics={**metrics, "tune_best_valid_ndcg@10": result.best_ndcg10},
            data_window=window,
        )
        started = time.perf_counter()
        write_cf_vectors(conn, catalog, e2, record.version)
        conn.commit()
        timed("write_vectors_s", started)
        if config.promote:
            registry.promote(conn, record.version)
            conn.commit()
    return TrainReport(
        version=record.version,
        timings=timings,
        ranker_rows=len(frame),
        ranker_groups=int(frame["user"].nunique()),
        best_config=best,
        valid_ndcg10=float(metrics["valid_ndcg@10"]),
        trials=result.trials,
    )
