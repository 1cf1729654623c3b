"""Ray Tune search over CatBoost rankers: loss, depth, learning rate, L2 and iterations.

Trials run in parallel, one CPU and one CatBoost thread each, so a 2-core laptop runs two at a time and a Ray
cluster (RAY_ADDRESS) runs as many as it has cores, without code changes.

The search is reproducible: configurations are drawn from a seeded generator and each trial is one CatBoost fit
(seeded, early stopping on the validation groups), whose result does not depend on which trial finished first. An
asynchronous scheduler (ASHA, used before) stopped trials by comparing them with whichever had reported so far: on
ml-latest-small two runs of the same `recstack train` picked YetiRank depth 6 lr 0.047 and QueryRMSE depth 6 lr 0.020,
and whether the ranker or the item-item order served flipped between them. CatBoost's own early stopping
(50 rounds without gain) already ends a poor trial early.
"""

from __future__ import annotations

import logging
import signal
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.search import BasicVariantGenerator

from training.batch import ensure_ray
from training.ranker import LOSSES, RankerData, fit_config

log = logging.getLogger("recstack.training")


def search_space(smoke: bool) -> dict[str, Any]:
    if smoke:
        return {
            "loss": tune.choice(["YetiRank", "QueryRMSE"]),
            "depth": tune.choice([4, 6]),
            "learning_rate": tune.loguniform(0.05, 0.3),
            "l2_leaf_reg": tune.loguniform(1.0, 10.0),
            "iterations": 60,
        }
    return {
        "loss": tune.choice(list(LOSSES)),
        "depth": tune.randint(4, 9),
        "learning_rate": tune.loguniform(0.02, 0.3),
        "l2_leaf_reg": tune.loguniform(0.5, 20.0),
        "iterations": tune.choice([200, 400, 800]),
    }


def _trial(config: dict[str, Any], train: RankerData, valid: RankerData, seed: int) -> dict[str, float]:
    """One trial: a fit with early stopping on the validation groups; its best validation NDCG@10 and rounds."""
    _, metrics = fit_config(train, valid, config, seed=seed, threads=1)
    return {"valid_ndcg10": metrics["valid_ndcg@10"], "rounds": metrics["best_iteration"] + 1}


@dataclass
class TuneResult:
    best_config: dict[str, Any]
    best_ndcg10: float
    trials: list[dict[str, Any]]


def run_search(
    train: RankerData, valid: RankerData, trials: int, smoke: bool = False, seed: int = 42, storage: Path | None = None
) -> TuneResult:
    """Run ``trials`` configurations drawn with ``seed`` and return the best one (ties: the first drawn); the same
    inputs and seed give the same trials and the same pick."""

    ensure_ray()
    space = search_space(smoke)
    trainable = tune.with_resources(tune.with_parameters(_trial, train=train, valid=valid, seed=seed), {"cpu": 1})
    tuner = tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            metric="valid_ndcg10",
            mode="max",
            num_samples=trials,
            search_alg=BasicVariantGenerator(random_state=seed),  # trials run as CPUs allow (1 CPU each)
        ),
        run_config=tune.RunConfig(
            storage_path=str(storage or Path(tempfile.mkdtemp(prefix="recstack-tune-"))),
            name="ranker",
            verbose=0,
        ),
    )
    interrupt = signal.getsignal(signal.SIGINT)
    try:
        results = tuner.fit()
    finally:  # Tune installs its own Ctrl-C handler and leaves it: `recstack demo` then could not be stopped by Ctrl-C
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, interrupt)
        _forget_trainables()
    table = results.get_dataframe().sort_values("trial_id", kind="stable")  # ids end in the draw's index
    rows = [
        {
            **{k.removeprefix("config/"): v for k, v in r.items() if k.startswith("config/")},
            "valid_ndcg10": r.get("valid_ndcg10"),
            "rounds": r.get("rounds"),
        }
        for r in table.to_dict("records")
    ]
    if not rows or all(r["valid_ndcg10"] is None for r in rows):
        raise RuntimeError(f"no ranker trial finished; Tune's results are under {tuner_path(results)}")
    best = max(rows, key=lambda r: r["valid_ndcg10"] if r["valid_ndcg10"] is not None else float("-inf"))
    config = {k: v.item() if hasattr(v, "item") else v for k, v in best.items() if k in space}  # plain JSON types
    return TuneResult(best_config=config, best_ndcg10=float(best["valid_ndcg10"]), trials=rows)


def tuner_path(results: Any) -> str:
    return str(getattr(results, "experiment_path", "the Tune storage path"))


def _forget_trainables() -> None:
    """Remove the trainable Tune registered in Ray's KV store now, while Ray is up. Tune otherwise does it in an atexit
    handler, which after `ray.shutdown()` (Ctrl-C on `recstack demo`) waited forever on the stopped GCS."""
    from ray.tune.registry import _unregister_trainables

    try:
        _unregister_trainables()
    except Exception as err:  # best effort: never fail a finished search over cleanup
        log.warning("Tune trainables not unregistered (%s)", err)
