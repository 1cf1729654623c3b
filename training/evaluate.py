"""`recstack evaluate`: offline evaluation of the promoted model on a held-out test part.

Protocol (training/protocols.py; default: the one the model was trained with, and its seed):
  * test = the protocol's test part (random: 10% of each user's positives; temporal: each user's latest 10%;
    window: the last 7 days); history = every other event;
  * evaluated users = users with a positive in the test part (a seeded sample of ``users`` of them); relevance =
    their best grade per test item (graded NDCG gain 2^g - 1);
  * every method ranks the full catalog for each user with the items in the user's history excluded;
  * methods, all fit on the history only: popularity, item-kNN, EASE, embeddings only, retrieval + ranker (the
    served code: the four candidate sources -> Feast point-in-time features -> the promoted CatBoost ranker, or the
    source it orders by) and the same followed by the serving rerank. Embeddings and item-item weights are refit on
    the history here (the served ones saw every event), so nothing of the test part is seen.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recstack import db, stack
from recstack.settings import Settings
from recstack.stages.rerank import NEUTRAL, Candidates, RerankParams, long_tail_mask, rerank
from recstack.stages.retrieve import RetrievalParams
from recstack.tables import registry
from training import baselines, dataset, metrics, protocols
from training.batch import ensure_ray
from training.interactions import Catalog, Interactions, load_catalog, load_interactions

ProgressFn = Callable[[str, int, int], None]
KS = (10, 20)
POPULARITY_DAYS = 30


@dataclass
class EvalConfig:
    users: int = 1000
    seed: int = 7
    version: str | None = None  # default: the promoted model
    protocol: str | None = None  # default: the model's
    epochs: int | None = None  # embedding refit epochs; default: the model's (`train --epochs`), else 8
    rerank: RerankParams = field(default_factory=RerankParams)


@dataclass
class TestSet:
    users: np.ndarray
    relevant: list[dict[int, int]]
    hist: dataset.History
    before: Interactions
    requests: pd.DataFrame  # per user: the first test event's time and request context (dataset.first_requests)

    def exclude_mask(self, position: int, n_items: int) -> np.ndarray:
        mask = np.zeros(n_items, bool)
        mask[self.hist.seen(int(self.users[position]))] = True
        return mask


def build_test_set(catalog: Catalog, events: Interactions, holdout: protocols.Holdout, cfg: EvalConfig) -> TestSet:
    before = events.take(~holdout.test)
    window = events.take(holdout.test)
    labels = dataset.window_labels(window)
    positive = labels[labels["grade"] > 0]
    users = np.unique(positive["user"].to_numpy())
    if len(users) > cfg.users:
        users = np.sort(np.random.default_rng(cfg.seed).choice(users, cfg.users, replace=False))
    by_user = positive[positive["user"].isin(users)].groupby("user")
    relevant = [dict(zip(g["item"].tolist(), g["grade"].astype(int).tolist(), strict=True)) for _, g in by_user]
    hist = dataset.history(before, catalog.n_users)
    # Features point-in-time at the user's first test event (later, the test events are inside the aggregates), with
    # the context of the request that event answered.
    return TestSet(users, relevant, hist, before, dataset.first_requests(window))


def top_k(scores: np.ndarray, exclude: np.ndarray, k: int) -> np.ndarray:
    masked = np.where(exclude, -np.inf, scores.astype(np.float64))
    part = np.argpartition(-masked, k - 1)[:k]
    return part[np.argsort(-masked[part], kind="stable")]


def score_slates(test: TestSet, n_items: int, score: Callable[[int], np.ndarray], k: int) -> list[np.ndarray]:
    return [top_k(score(int(u)), test.exclude_mask(i, n_items), k) for i, u in enumerate(test.users)]


def recent_popularity(before: Interactions, n_items: int) -> np.ndarray:
    """Positive events in the last POPULARITY_DAYS of the history (all of it when that holds fewer than 1,000)."""
    positive = before.take(before.grades() > 0)
    end = int(positive.ts.max()) if len(positive) else 0
    recent = positive.take(positive.ts >= end - POPULARITY_DAYS * 86400)
    chosen = recent if len(recent) >= 1000 else positive
    return np.bincount(chosen.item, minlength=n_items).astype(np.float64)


def ranked_candidates(
    settings: Settings,
    record: registry.ModelRecord,
    catalog: Catalog,
    test: TestSet,
    retrieval: dataset.Retrieval,
    progress: Callable[[int, int], None] | None,
) -> pd.DataFrame:
    """Serving's candidates for each test user, scored as serving scores them: by the ranker on Feast point-in-time
    features, or by one source's score when the model orders by it (then no features are joined: serving looks none
    up either, and at 1M users / 4,000 test users the join was 24 of evaluate's 41 minutes)."""
    from recstack.features.store import open_store
    from recstack.stages.rank import model_input

    params = RetrievalParams(**record.params.get("retrieval", {}))
    frame = dataset.candidate_frame(test.users, test.hist, retrieval, params, catalog.n_items)
    order_by = record.params.get("order_by")
    if order_by:  # the ranker did not beat this source on held-out groups: serving orders by it
        frame["score"] = dataset.as_served(frame, frame[order_by].to_numpy(np.float64))
        return frame
    ensure_ray()  # feature-join chunks as Ray tasks
    frame = dataset.join_features(open_store(settings), frame, catalog, test.requests, progress=progress)
    with db.connect(stack.postgres_dsn(settings), settings.connect_timeout_s) as conn:
        model = registry.load_verified(conn, record)
    categorical = record.params.get("categorical", [])
    frame["score"] = dataset.as_served(frame, model.predict(model_input(frame, record.features, categorical)))
    return frame


def ranker_slates(frame: pd.DataFrame, users: np.ndarray, k: int) -> list[np.ndarray]:
    ordered = frame.sort_values(["user", "score"], ascending=[True, False], kind="stable")
    grouped = {u: g["item"].to_numpy()[:k] for u, g in ordered.groupby("user", sort=False)}
    return [grouped.get(int(u), np.empty(0, np.int64)) for u in users]


Pool = tuple[np.ndarray, Candidates]  # one user's rerank pool: its items and them as the rerank takes them


def rerank_pools(
    frame: pd.DataFrame, users: np.ndarray, catalog: Catalog, item_cf: np.ndarray, tail: np.ndarray
) -> list[Pool | None]:
    """Each user's rerank pool as serving hands it over: the ranker's top 100 with their providers, long-tail marks
    and unit collaborative vectors (None: no candidates). Built once, reranked under several settings."""
    norms = np.linalg.norm(item_cf, axis=1, keepdims=True)
    unit = np.divide(item_cf, norms, out=np.zeros_like(item_cf), where=norms > 0)
    grouped = dict(tuple(frame.groupby("user", sort=False)))
    out: list[Pool | None] = []
    for u in users:
        g = grouped.get(int(u))
        if g is None:
            out.append(None)
            continue
        g = g.sort_values("score", ascending=False).head(100)  # rerank the ranker's top 100, as serving does
        items = g["item"].to_numpy()
        candidates = Candidates(
            item_ids=[str(i) for i in items],
            scores=g["score"].to_numpy(),
            providers=[str(catalog.item_provider[i]) for i in items],
            long_tail=tail[items],
            vectors=unit[items],
        )
        out.append((items, candidates))
    return out


def reranked_slates(pools: list[Pool | None], k: int, p: RerankParams) -> list[np.ndarray]:
    """The slate of ``k`` each pool's rerank answers under ``p``."""
    return [pool[0][rerank(pool[1], k, p)] if pool is not None else np.empty(0, np.int64) for pool in pools]


def rerank_knobs(
    pools: list[Pool | None],
    test: TestSet,
    catalog: Catalog,
    tail: np.ndarray,
    popularity: np.ndarray,
    p: RerankParams,
) -> dict[str, dict[str, float]]:
    """What each rerank knob costs and gives on its own: NDCG@10 (and its ratio to no rerank), coverage@10 and the
    long-tail share of the slots (``tail``, the rule the rerank applies) of the k = 10 slates reranked with one knob
    at its configured value and the others neutral (``NEUTRAL``), and with none."""
    providers, out = catalog.item_provider, {}
    for knob in ("none", *NEUTRAL):
        update = {**NEUTRAL, **({knob: getattr(p, knob)} if knob != "none" else {})}
        slates = reranked_slates(pools, 10, p.model_copy(update=update))
        beyond = metrics.beyond_accuracy(slates, 10, catalog.n_items, catalog.item_categories, popularity, providers)
        shown = np.concatenate(slates) if slates else np.empty(0, np.int64)
        out[knob] = {
            **metrics.accuracy(slates, test.relevant, 10),
            "coverage@10": beyond["coverage@10"],
            "long_tail_share@10": float(tail[shown].mean()) if len(shown) else 0.0,
        }
    none = out["none"]["ndcg@10"]
    for row in out.values():
        row["ndcg@10_vs_none"] = row["ndcg@10"] / none if none > 0 else float("nan")
    return out


def evaluate(settings: Settings, cfg: EvalConfig, progress: ProgressFn | None = None) -> dict[str, Any]:
    from recstack.stages.item_item import ItemItem
    from training import item_item
    from training.embeddings import train_embeddings
    from training.pipeline import retrieval_inputs
    from training.vectors import load_content_matrix

    step = progress or (lambda stage, done, total: None)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    with db.connect(stack.postgres_dsn(settings), settings.connect_timeout_s) as conn:
        version = cfg.version or registry.promoted_version(conn)
        if version is None:
            raise registry.RegistryError("no promoted model: run `recstack train` first")
        record = registry.get(conn, version)
        catalog = load_catalog(conn)
        events = load_interactions(conn, catalog)
        content = load_content_matrix(conn, catalog)
    window = record.data_window
    if "protocol" not in window:
        raise registry.RegistryError(f"{version} predates evaluation protocols: retrain (`recstack train`)")
    protocol = protocols.ProtocolConfig(
        name=cfg.protocol or window["protocol"],
        seed=int(window.get("seed", 2020)),
        valid_days=float(window.get("valid_days", 7)),
        test_days=float(window.get("test_days", 7)),
    )
    holdout = protocols.split(events.user, events.item, events.event_type, events.value, events.ts, protocol)
    test = build_test_set(catalog, events, holdout, cfg)
    if not len(test.users):
        raise ValueError("no user has a positive event in the test part: nothing to evaluate")
    timings["load_s"] = round(time.perf_counter() - started, 2)
    n_items, kmax = catalog.n_items, max(KS)
    kmax = min(kmax, n_items - 1)
    popularity = recent_popularity(test.before, n_items)
    all_popularity = np.bincount(test.before.item, minlength=n_items).astype(np.float64)
    started = time.perf_counter()
    epochs = cfg.epochs or int(window.get("embedding_epochs", 8))
    embeddings = train_embeddings(
        test.before,
        catalog.n_users,
        n_items,
        epochs=epochs,
        seed=int(window.get("seed", 42)),
        progress=lambda epoch, loss: step("embeddings", epoch, epochs),
    )
    choice = item_item.Choice.from_params(record.params)  # the fit training chose for this data
    ii: ItemItem = item_item.fit(test.before, catalog.n_users, n_items, choice)
    history_x = item_item.query_matrix(test.before, catalog.n_users, n_items)
    timings["refit_on_history_s"] = round(time.perf_counter() - started, 2)
    item_cf = np.where(embeddings.trained_items[:, None], embeddings.item, 0).astype(np.float32)

    slates: dict[str, list[np.ndarray]] = {}
    method_s: dict[str, float] = {}

    def run(name: str, fn: Callable[[], list[np.ndarray]]) -> None:
        t = time.perf_counter()
        slates[name] = fn()
        method_s[name] = round(time.perf_counter() - t, 2)
        step("methods", len(slates), 6)

    run("popularity", lambda: score_slates(test, n_items, lambda u: popularity, kmax))
    x = baselines.user_item_matrix(test.before, catalog.n_users, n_items)
    knn = baselines.item_knn(x)
    run("item_knn", lambda: score_slates(test, n_items, knn.scores, kmax))
    ease = baselines.ease(x)
    run("ease", lambda: score_slates(test, n_items, ease.scores, kmax))
    retrieval = retrieval_inputs(embeddings, content, ii, history_x)

    def embedding_scores(u: int) -> np.ndarray:
        query, _ = dataset.user_queries(u, test.hist, retrieval)
        return retrieval.item_cf @ query if query is not None else popularity

    run("embeddings", lambda: score_slates(test, n_items, embedding_scores, kmax))
    t = time.perf_counter()
    frame = ranked_candidates(
        settings, record, catalog, test, retrieval, lambda done, total: step("features", done, total)
    )
    timings["ranked_candidates_s"] = round(time.perf_counter() - t, 2)
    run("retrieval_ranker", lambda: ranker_slates(frame, test.users, kmax))
    tail = long_tail_mask(embeddings.item_popularity)  # serving's rule: its head floor over the model's popularity
    # The rerank depends on k (the provider cap is a share of k, the long-tail floor fills the last of k slots): each
    # cut-off is judged on the slates /recommend answers for that k, the headline (and ``slates``) on k = 10's.
    per_k: dict[str, dict[int, list[np.ndarray]]] = {}
    pools = rerank_pools(frame, test.users, catalog, item_cf, tail)

    def served() -> list[np.ndarray]:
        per_k["retrieval_ranker_rerank"] = {k: reranked_slates(pools, k, cfg.rerank) for k in KS}
        return per_k["retrieval_ranker_rerank"][10]

    run("retrieval_ranker_rerank", served)
    knobs = rerank_knobs(pools, test, catalog, tail, all_popularity, cfg.rerank)
    recall = candidate_recall(frame, test)

    results: dict[str, dict[str, float]] = {}
    for name, method_slates in slates.items():
        row: dict[str, float] = {}
        for k in KS:
            row.update(metrics.accuracy(per_k.get(name, {}).get(k, method_slates), test.relevant, k))
        row.update(
            metrics.beyond_accuracy(
                method_slates, 10, n_items, catalog.item_categories, all_popularity, catalog.item_provider
            )
        )
        results[name] = row
    comparisons = {
        method: vs_baselines(slates, method, test.relevant, cfg.seed)
        for method in ("retrieval_ranker", "retrieval_ranker_rerank")
    }
    timings["total_s"] = round(time.perf_counter() - started, 2)
    return {
        "model_version": version,
        "protocol": {
            "name": protocol.name,
            "seed": protocol.seed,
            "min_rating": protocol.min_rating,
            "core": protocol.core,
            "test_days": protocol.test_days,
            "test_events": int(holdout.test.sum()),
            "users_evaluated": len(test.users),
            "catalog_items": int(n_items),
            "seen_items_excluded": True,
            "relevance": "best grade per held-out item: 3 purchase/like/rating>=4, 2 click, 1 view",
            "popularity_window_days": POPULARITY_DAYS,
            "sample_seed": cfg.seed,
            "embedding_epochs": epochs,
        },
        "methods": results,
        "method_seconds": method_s,
        "timings": timings,
        "provider_exposure": provider_exposure(slates, catalog, 10),
        "ranker_vs": comparisons["retrieval_ranker"],
        "served_vs": comparisons["retrieval_ranker_rerank"],  # the pipeline as /recommend runs it
        "candidate_recall": recall,
        "rerank_knobs": knobs,
        "served_order": record.params.get("order_by") or "ranker",
    }


BASELINES = ("popularity", "item_knn", "ease", "embeddings")


def vs_baselines(
    slates: dict[str, list[np.ndarray]], method: str, relevant: list[dict[int, int]], seed: int
) -> dict[str, dict[str, object]]:
    """NDCG@10 of ``method`` over each baseline's, with a 95% interval (paired bootstrap over users)."""
    ndcg = metrics.per_user(slates[method], relevant, 10)["ndcg"]
    out: dict[str, dict[str, object]] = {}
    for base in BASELINES:
        ratio, low, high = metrics.paired_bootstrap_ratio(
            ndcg, metrics.per_user(slates[base], relevant, 10)["ndcg"], seed=seed
        )
        out[base] = {"ndcg@10_ratio": round(ratio, 4), "ci95": [round(low, 4), round(high, 4)]}
    return out


def candidate_recall(frame: pd.DataFrame, test: TestSet) -> dict[str, float]:
    """Share of the test users' relevant items that each candidate source (and all of them) retrieved."""
    wanted = pd.DataFrame(
        [(int(u), int(i)) for u, rel in zip(test.users, test.relevant, strict=True) for i in rel],
        columns=["user", "item"],
    )
    if not len(wanted):
        return {}
    found = wanted.merge(frame, on=["user", "item"], how="left", indicator=True)
    out = {"all": float((found["_merge"] == "both").mean())}
    for source in ("from_ii", "from_cf", "from_content", "from_popular"):
        out[source.removeprefix("from_")] = float(found[source].fillna(0).astype(bool).mean())
    return {k: round(v, 4) for k, v in out.items()}


def provider_exposure(slates: dict[str, list[np.ndarray]], catalog: Catalog, k: int) -> dict[str, Any]:
    """Position-discounted exposure share per provider for each method, next to the provider's catalog share."""
    names, index = np.unique(catalog.item_provider, return_inverse=True)
    weights = 1.0 / np.log2(np.arange(2, k + 2))
    out: dict[str, Any] = {"providers": names.tolist(), "catalog_share": (np.bincount(index) / len(index)).tolist()}
    for method, method_slates in slates.items():
        exposure = np.zeros(len(names))
        for slate in method_slates:
            np.add.at(exposure, index[slate[:k]], weights[: len(slate[:k])])
        out[method] = (exposure / max(exposure.sum(), 1e-12)).tolist()
    return out


# -- report ---------------------------------------------------------------------------------------------------------
HEADLINE = ["ndcg@10", "recall@10", "precision@10", "mrr@10", "hitrate@10", "ndcg@20", "recall@20"]
BEYOND = ["coverage@10", "diversity@10", "novelty@10", "popularity_bias@10", "provider_exposure_tvd@10"]


def write_report(result: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """evaluation.json, evaluation.md and two PNG plots in ``out_dir`` (each written to a temp name, then renamed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "evaluation.json",
        "markdown": out_dir / "evaluation.md",
        "accuracy_png": out_dir / "accuracy.png",
        "exposure_png": out_dir / "exposure.png",
    }
    _atomic_text(paths["json"], json.dumps(result, indent=2))
    _plot_accuracy(result, paths["accuracy_png"])
    _plot_exposure(result, paths["exposure_png"])
    _atomic_text(paths["markdown"], markdown(result))
    return paths


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def markdown(result: dict[str, Any]) -> str:
    methods = result["methods"]
    p = result["protocol"]
    lines = [
        f"# Offline evaluation of {result['model_version']}",
        "",
        f"Protocol {p['name']} (seed {p['seed']}), {p['users_evaluated']:,} users with a held-out positive, full "
        f"ranking over {p['catalog_items']:,} items with each user's history excluded; every method fit on the "
        "history only.",
        f"Relevance: {p['relevance']}.",
        "",
        "## Accuracy",
        "",
        "| method | " + " | ".join(HEADLINE) + " |",
        "|---|" + "---:|" * len(HEADLINE),
    ]
    lines += [f"| {m} | " + " | ".join(f"{row[c]:.4f}" for c in HEADLINE) + " |" for m, row in methods.items()]
    lines += ["", "## Beyond accuracy (k = 10)", "", "| method | " + " | ".join(BEYOND) + " |"]
    lines += ["|---|" + "---:|" * len(BEYOND)]
    lines += [f"| {m} | " + " | ".join(f"{row[c]:.4f}" for c in BEYOND) + " |" for m, row in methods.items()]
    for method, key, title in (
        ("retrieval_ranker", "ranker_vs", "Retrieval + ranker"),
        ("retrieval_ranker_rerank", "served_vs", "Served (retrieval + ranker + rerank, as /recommend)"),
    ):
        ranker = methods.get(method, {}).get("ndcg@10", 0.0)
        lines += ["", f"## {title} vs baselines (NDCG@10; 95% interval: paired bootstrap over users)", ""]
        for base in BASELINES:
            ref = methods[base]["ndcg@10"]
            ratio = f"{ranker / ref:.2f}x" if ref > 0 else "n/a"
            low, high = result.get(key, {}).get(base, {}).get("ci95", [float("nan")] * 2)
            interval = f" (95% CI {low:.2f}x-{high:.2f}x)" if low == low else ""
            lines.append(f"- vs {base}: {ranker:.4f} / {ref:.4f} = {ratio}{interval}")
    knobs = result.get("rerank_knobs", {})
    if knobs:
        lines += ["", "## What each rerank knob costs (that knob at its configured value, the others off)", ""]
        lines += ["| rerank | NDCG@10 | vs none | coverage@10 | long-tail share@10 |", "|---|---:|---:|---:|---:|"]
        lines += [
            f"| {knob} | {row['ndcg@10']:.4f} | {row['ndcg@10_vs_none']:.3f}x "
            f"| {row['coverage@10']:.4f} | {row['long_tail_share@10']:.4f} |"
            for knob, row in knobs.items()
        ]
    lines += ["", "![accuracy](accuracy.png)", "", "![provider exposure](exposure.png)", ""]
    return "\n".join(lines)


def _save_figure(fig: Any, ax: Any, path: Path) -> None:
    """Legend, layout, then PNG written to a temp name and renamed (a reader never sees half a file)."""
    import matplotlib.pyplot as plt

    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def _plot_accuracy(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(result["methods"])
    columns = ["ndcg@10", "recall@10", "ndcg@20", "recall@20"]
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(columns)
    for n, column in enumerate(columns):
        values = [result["methods"][m][column] for m in methods]
        ax.bar(np.arange(len(methods)) + n * width, values, width, label=column)
    ax.set_xticks(np.arange(len(methods)) + 0.4 - width / 2, methods, rotation=20, ha="right")
    ax.set_title(f"Accuracy on the test window ({result['protocol']['users_evaluated']} users)")
    _save_figure(fig, ax, path)


def _plot_exposure(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    exposure = result["provider_exposure"]
    catalog_share = np.array(exposure["catalog_share"])
    order = np.argsort(-catalog_share)[:15]
    labels = [exposure["providers"][i] for i in order]
    series = {"catalog share": catalog_share[order]}
    for method in ("popularity", "retrieval_ranker", "retrieval_ranker_rerank"):
        if method in exposure:
            series[method] = np.array(exposure[method])[order]
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / len(series)
    for n, (name, values) in enumerate(series.items()):
        ax.bar(np.arange(len(order)) + n * width, values, width, label=name)
    ax.set_xticks(np.arange(len(order)) + 0.4 - width / 2, labels, rotation=45, ha="right")
    ax.set_title("Provider exposure share at k=10 vs catalog share (15 largest providers)")
    _save_figure(fig, ax, path)
