"""`recstack train`: validate -> content vectors -> embeddings + item-item -> ranker set -> Ray Tune -> registry ->
pgvector.

The events are split by an evaluation protocol (training/protocols.py; default ``random``: each user's positives
80/10/10 into train / valid / test, seed recorded in the model):
  1. Embeddings E1 and item-item weights II1 on the train part (the item-item ridge penalty and session model chosen
     on the valid part's positives, training.item_item.select; II2 keeps the choice); candidates for every user
     with valid positives
     (up to ``ranker_users``), labelled by the valid part; Feast features point-in-time at the user's first held-out
     event (later, the user's own held-out ratings are inside the item and user aggregates: on ml-latest-small that
     leak made the ranker look 1.4x better than item-item on held-out users and lose to it on the real test) ->
     ranker set, its users split 80/20 into fit and early-stopping groups; Ray Tune searches CatBoost on
     it (seeded, reproducible). The ranker is kept only if it orders whole candidate lists clearly better than its
     best single source (item-item or collaborative score): lists scored by rankers cross-fitted over the users,
     the lower end of the paired bootstrap interval of the NDCG ratio above 1; otherwise the model records that
     source as its order.
  2. What serves is refit on every event (E2, II2): `recstack evaluate` refits on everything but the test part
     itself, so the evaluation scores the served code with nothing of the test part seen.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from recstack import db, stack
from recstack.settings import Settings
from recstack.stages.item_item import ItemItem
from recstack.stages.rank import RANKER_CANDIDATE_FEATURES, model_input
from recstack.stages.retrieve import RetrievalParams
from recstack.tables import registry, vector_sets
from training import dataset, protocols
from training.batch import ensure_ray
from training.embeddings import EmbeddingModel, train_embeddings
from training.interactions import Catalog, Interactions, load_catalog, load_interactions
from training.metrics import paired_bootstrap_ratio
from training.ranker import RankerData, fit_config, sort_by_group

if TYPE_CHECKING:
    from training.item_item import Choice

ProgressFn = Callable[[str, int, int], None]
TRAIN_SUITES = ["users", "items", "events", "user_features", "item_features"]
# Single sources the ranker has to beat on held-out groups (their score orders the slate when it does not).
ORDER_SOURCES = ["ii_score", "cf_score"]
GUARD_USERS = 2000  # users whose whole candidate lists judge the ranker against the sources
GUARD_FOLDS = 4  # cross-fitted rankers: each guard user's list is scored by one fit without that user


@dataclass
class TrainConfig:
    trials: int = 8
    smoke: bool = False
    epochs: int = 8
    protocol: str = "random"  # how ranker labels are held out (training/protocols.py)
    # Users with held-out positives whose candidates form the ranker set (~62 rows each). On the default synthetic data
    # (20k users) 20,000 made a 1.02M-row set and `train` ran past 35 minutes on 2 cores (Tune's YetiRank trials and
    # the guard's cross-fitted fits ~6.5 min each); 5,000 (310k rows) trains in 10.5 minutes with 8 trials, and the
    # ranker lost to the item-item order at both sizes (1M users, 20,000: 1.088x, CI 0.953-1.294; synthetic, 5,000:
    # 1.002x, CI 0.962-1.043). Every user of a small dataset is still in (ml-latest-small: ~600).
    ranker_users: int = 5000
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
    order_by: str | None = None  # a source's score serves instead of the ranker (it did not beat that source)
    valid_orders: dict[str, float] = field(default_factory=dict)
    ranker_vs_best_source: tuple[float, float, float] = (float("nan"), float("nan"), float("nan"))  # ratio, 95% CI
    item_item: Choice | None = None  # how the item-item source was fit, chosen on the valid part
    item_item_valid_ndcg: dict[str, float] = field(default_factory=dict)  # held-out NDCG@10 by fit tried


def retrieval_inputs(
    model: EmbeddingModel, content: np.ndarray, ii: ItemItem | None = None, history_x: Any = None
) -> dataset.Retrieval:
    """What candidate generation sees, as serving stores it: items without a trained vector get none (zeros)."""
    return dataset.Retrieval(
        user_cf=model.user,
        item_cf=np.where(model.trained_items[:, None], model.item, 0).astype(np.float32),
        item_content=content,
        log_popularity=np.log1p(model.item_popularity).astype(np.float32),
        has_user_vector=np.abs(model.user).sum(1) > 0,
        item_item=ii,
        history_x=history_x,
    )


def _is_list_column(column: pd.Series) -> bool:
    """Array-valued columns (category lists feeding the on-demand views) are inputs, not ranker features."""
    values = column.dropna()
    return bool(len(values)) and isinstance(values.iloc[0], (list, tuple, np.ndarray))


def ranker_columns(frame: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(feature columns in model order, categorical ones): Feast's view__feature columns + retrieval scores.

    Instants (a user's last event time) are inputs of the on-demand views, not features: a model serves after the
    data it learned from, so every served instant lies beyond the range it split on."""
    feast_columns = sorted(
        c
        for c in frame.columns
        if "__" in c
        and not c.startswith("user_realtime")
        and not _is_list_column(frame[c])
        and not pd.api.types.is_datetime64_any_dtype(frame[c])
    )
    features = [*feast_columns, *RANKER_CANDIDATE_FEATURES]
    categorical = [c for c in features if frame[c].dtype == object]
    return features, categorical


def labelled_candidates(
    catalog: Catalog,
    before: Interactions,
    window: Interactions,
    retrieval: dataset.Retrieval,
    params: RetrievalParams,
    users: np.ndarray,
    seen: Interactions | None = None,
) -> pd.DataFrame:
    """Serving's candidates for ``users`` from their history ``before``, labelled by their events in ``window``.

    ``seen`` (default ``before``) are the events whose items are left out of the candidates: the history plus the
    evaluation's test part. With the test part's items kept, each user's own held-out positives sat in the lists as
    "none", as many as the labelled ones, and the ranker learned to push down the candidates that look like
    positives."""
    hist = dataset.history(before, catalog.n_users)
    if seen is not None:
        hist = dataset.with_seen(hist, seen)
    candidates = dataset.candidate_frame(users, hist, retrieval, params, catalog.n_items)
    return dataset.attach_labels(candidates, dataset.window_labels(window))


def sample_users(users: np.ndarray, max_users: int, seed: int) -> np.ndarray:
    """At most ``max_users`` of ``users`` (distinct), drawn with ``seed``, sorted."""
    users = np.unique(users)
    if len(users) > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
    return users


def labelled_users(window: Interactions, max_users: int, seed: int) -> np.ndarray:
    labels = dataset.window_labels(window)
    return sample_users(labels.loc[labels["grade"] > 0, "user"].to_numpy(), max_users, seed)


def guard_users(frame: pd.DataFrame, seed: int, max_users: int = GUARD_USERS) -> np.ndarray:
    """The users whose whole candidate lists judge the ranker against its sources: drawn from the ranker set's users
    (cross-fitting scores each with a fit that left that user out). Drawing them from all labelled users and keeping
    those in the ranker set left 7, 45 and 9 users in three trainings at 1M users (5,000 or 20,000 in the set): the
    served order was chosen between two sources on 9 users (ranker / best 95% CI 0.0-3.9), and it was the weaker one
    (cf_score 0.1763 against ii_score 0.1727 there; in `recstack evaluate` at 1M the embeddings score 0.0508, the
    item-item order 0.0827)."""
    return sample_users(frame["user"].to_numpy(), max_users, seed)


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
    seen: Interactions | None = None,
) -> pd.DataFrame:
    """Candidates for a sample of the users with held-out positives, with graded labels and point-in-time features
    at the user's first held-out event."""
    users = labelled_users(window, max_users, seed)
    candidates = labelled_candidates(catalog, before, window, retrieval, params, users, seen)
    labelled = dataset.subsample_unlabelled(candidates, unlabelled_per_user, seed)
    return dataset.join_features(store, labelled, catalog, dataset.first_requests(window), progress=progress)


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


def holdout_for(events: Interactions, config: TrainConfig) -> protocols.Holdout:
    """The protocol's split of the events (the same function and seed `recstack evaluate` uses)."""
    cfg = protocols.ProtocolConfig(
        name=config.protocol, valid_days=config.valid_days, test_days=config.test_days, seed=config.seed
    )
    return protocols.split(events.user, events.item, events.event_type, events.value, events.ts, cfg)


def per_user_ndcg(frame: pd.DataFrame, column: str) -> np.ndarray:
    """NDCG@10 of ordering each user's candidates by one column, per user with a labelled positive in the list (users
    in ascending order, the same for every column; graded labels as the ranker sees them)."""
    from training.metrics import per_user

    ordered = frame.sort_values(["user", column], ascending=[True, False], kind="stable")
    slates, relevant = [], []
    for _, group in ordered.groupby("user", sort=True):
        labels = group["label"].to_numpy() - 1  # stored shifted by +1 (attach_labels)
        slates.append(group["item"].to_numpy()[:10])
        relevant.append({int(i): int(g) for i, g in zip(group["item"], labels, strict=True) if g > 0})
    return per_user(slates, relevant, 10)["ndcg"]


def cross_fitted_scores(
    frame: pd.DataFrame,
    guard: pd.DataFrame,
    served: pd.DataFrame,
    features: list[str],
    categorical: list[str],
    config: dict[str, Any],
    rounds: int,
    seed: int,
    progress: ProgressFn,
) -> np.ndarray:
    """Score each guard row (``served`` holds its model input) with a ranker of ``config`` fit for ``rounds`` on the
    ranker set without that user's fold of the guard users (GUARD_FOLDS folds)."""
    users = np.unique(guard["user"].to_numpy())
    fold_of = pd.Series(np.random.default_rng(seed).permutation(len(users)) % GUARD_FOLDS, index=users)
    guard_fold = guard["user"].map(fold_of).to_numpy()
    frame_fold = frame["user"].map(fold_of).fillna(-1).to_numpy()  # users outside the guard train every fold
    out = np.zeros(len(guard), np.float64)
    for fold in range(GUARD_FOLDS):
        rows = guard_fold == fold
        if rows.any():
            data = to_ranker_data(frame[frame_fold != fold], features, categorical)
            model, _ = fit_config(data, None, config, seed=seed, threads=2, iterations=rounds)
            out[rows] = model.predict(served[rows])
        progress("guard", fold + 1, GUARD_FOLDS)
    return out


def train(settings: Settings, config: TrainConfig, progress: ProgressFn | None = None) -> TrainReport:
    from recstack.features.online import OnlineLookup
    from recstack.features.store import open_store
    from recstack.features.training_frames import FEATURE_SERVICE
    from training import item_item
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
    with db.connect(dsn, settings.connect_timeout_s) as conn:
        started = time.perf_counter()
        catalog = load_catalog(conn)
        events = load_interactions(conn, catalog)
        if len(events) == 0:
            raise ValueError(
                "no events: ingest data first (`recstack ingest synthetic` or `recstack ingest movielens`)"
            )
        holdout = holdout_for(events, config)
        timed("load_events_s", started)
        started = time.perf_counter()
        update_content_vectors(conn, progress=lambda done, total: step("content", done, total))
        content = load_content_matrix(conn, catalog)
        timed("content_vectors_s", started)

    history, valid = events.take(holdout.train), events.take(holdout.valid)
    seen = events.take(holdout.train | holdout.test)  # left out of the ranker's candidates
    started = time.perf_counter()
    e1 = train_embeddings(
        history,
        catalog.n_users,
        catalog.n_items,
        epochs=config.epochs,
        seed=config.seed,
        progress=lambda epoch, loss: step("embed 1/2", epoch, config.epochs),
    )
    timed("embeddings_train_part_s", started)
    started = time.perf_counter()
    step("item-item", 0, 1)
    selected = item_item.select(history, valid, seen, catalog.n_users, catalog.n_items, config.seed)
    ii1 = selected.model
    step("item-item", 1, 1)
    timed("item_item_train_part_s", started)

    retrieval_1 = retrieval_inputs(e1, content, ii1, item_item.query_matrix(history, catalog.n_users, catalog.n_items))
    started = time.perf_counter()
    store = open_store(settings)
    frame = build_ranker_set(
        store,
        catalog,
        history,
        valid,
        retrieval_1,
        config.retrieval,
        config.ranker_users,
        config.unlabelled_per_user,
        config.seed,
        progress=lambda done, total: step("features", done, total),
        seen=seen,
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
    model, metrics = fit_config(fit_data, early_data, best, seed=config.seed, threads=2)
    timed("ranker_final_fit_s", started)
    # The ranker must beat its best single source, or that source's order serves. Judged on whole candidate lists, as
    # serving ranks them (the ranker set holds a sample of each user's unlabelled candidates, an easier problem), by
    # rankers of the chosen configuration cross-fitted over the users: every user's list is scored by a model that
    # never saw that user, and not by the model whose early stopping and Tune's pick were chosen on them.
    started = time.perf_counter()
    step("guard", 0, GUARD_FOLDS)
    judged = guard_users(frame, config.seed + 1)
    guard = labelled_candidates(catalog, history, valid, retrieval_1, config.retrieval, judged, seen)
    guard = sort_by_group(guard, "user")
    # Features as serving reads them: the online store's latest values through the rank stage's columns (a request
    # comes now, not at the data's time). On replayed history (ml-latest-small ends in 2016) the ranker's time-window
    # features are then nothing like the point-in-time ones it learned from; it scored 0.256 -> 0.040 NDCG@10 through
    # /recommend while beating item-item on point-in-time features. Judged on the offline store at now() instead
    # (every window empty), a ranker that lost through /recommend (0.88x EASE) passed this guard.
    lookup = OnlineLookup.for_service(store, stack.redis_client(settings), FEATURE_SERVICE)
    requests = dataset.first_requests(valid)  # each guard list served with its request's device and locale
    served = dataset.served_features(lookup, guard, catalog, features, categorical, datetime.now(UTC), requests)
    rounds = int(metrics["best_iteration"]) + 1
    oof = cross_fitted_scores(frame, guard, served, features, categorical, best, rounds, config.seed, step)
    guard["ranker"] = dataset.as_served(guard, oof)  # new items placed by content, per list
    for source in ORDER_SOURCES:  # as serving orders by a source
        guard[source + "_order"] = dataset.as_served(guard, guard[source].to_numpy(np.float64))
    columns = ["ranker", *(s + "_order" for s in ORDER_SOURCES)]
    per_user = {c.removesuffix("_order"): per_user_ndcg(guard, c) for c in columns}
    orders = {k: float(v.mean()) if len(v) else 0.0 for k, v in per_user.items()}
    best_source = max(ORDER_SOURCES, key=lambda c: orders[c])
    gain, gain_low, gain_high = paired_bootstrap_ratio(per_user["ranker"], per_user[best_source], seed=config.seed)
    order_by = None if gain_low > 1.0 else best_source
    timed("ranker_vs_sources_s", started)

    started = time.perf_counter()
    e2 = train_embeddings(
        events,
        catalog.n_users,
        catalog.n_items,
        epochs=config.epochs,
        seed=config.seed,
        progress=lambda epoch, loss: step("embed 2/2", epoch, config.epochs),
    )
    timed("embeddings_serving_s", started)
    started = time.perf_counter()
    ii2 = item_item.fit(events, catalog.n_users, catalog.n_items, selected.choice)
    timed("item_item_serving_s", started)

    window = {
        "protocol": config.protocol,
        "seed": config.seed,
        "valid_days": config.valid_days,
        "test_days": config.test_days,
        "embedding_epochs": config.epochs,  # evaluate refits the embeddings as training fitted them
        "events": len(events),
        "ranker_labels": int(holdout.valid.sum()),
        "ranker_history": int(holdout.train.sum()),
        "last_event": datetime.fromtimestamp(int(events.ts.max()), UTC).isoformat(),
        "served_vectors_saw": "every event",
    }
    with db.connect(dsn, settings.connect_timeout_s) as conn:
        record = registry.register(
            conn,
            model,
            features,
            params={
                **best,
                "categorical": categorical,
                "retrieval": config.retrieval.__dict__,
                "order_by": order_by,
                **selected.choice.params(),  # chosen on the held-out part (item_item.select)
            },
            metrics={
                **metrics,
                "tune_best_valid_ndcg@10": result.best_ndcg10,
                **{f"valid_ndcg@10_by_{k}": round(v, 4) for k, v in orders.items()},
                "ranker_vs_best_source": [round(gain, 4), round(gain_low, 4), round(gain_high, 4)],
                "guard_users": len(per_user["ranker"]),
                "item_item_valid_ndcg@10": {k: round(v, 4) for k, v in selected.ndcg.items()},
            },
            data_window=window,
            artifact_uri=settings.artifact_uri,
        )
        started = time.perf_counter()
        write_cf_vectors(conn, catalog, e2, record.version)
        vector_sets.write_neighbours(conn, record.version, catalog.item_ids, ii2)
        conn.commit()
        timed("write_vectors_s", started)
        if config.promote:  # the ranker and its vectors go live together
            registry.promote(conn, record.version)
            conn.commit()
        vector_sets.prune(conn)
        conn.commit()
    return TrainReport(
        version=record.version,
        timings=timings,
        ranker_rows=len(frame),
        ranker_groups=int(frame["user"].nunique()),
        best_config=best,
        valid_ndcg10=float(metrics["valid_ndcg@10"]),
        trials=result.trials,
        order_by=order_by,
        valid_orders=orders,
        ranker_vs_best_source=(gain, gain_low, gain_high),
        item_item=selected.choice,
        item_item_valid_ndcg=selected.ndcg,
    )
