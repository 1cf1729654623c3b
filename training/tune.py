"""Ray Tune search over CatBoost rankers: loss, depth, learning rate, L2 and iterations, ASHA early stopping.

Trials run in parallel, one CPU and one CatBoost thread each, so a 2-core laptop runs two at a time and a Ray
cluster (RAY_ADDRESS) runs as many as it has cores, without code changes.
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
from ray.tune.schedulers import ASHAScheduler

from training.batch import ensure_ray
from training.ranker import LOSSES, RankerData, train_ranker

log = logging.getLogger("recstack.training")

REPORT_EVERY = 25  # boosting rounds between intermediate reports (ASHA's rungs are counted in reports)


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


def _trial(config: dict[str, Any], train: RankerData, valid: RankerData, seed: int) -> None:
    """One trial: fit in chunks of REPORT_EVERY rounds (warm start), reporting validation NDCG@10 after each."""
    from catboost import CatBoostRanker

    total = int(config["iterations"])
    model: CatBoostRanker | None = None
    done = 0
    while done < total:
        step = min(REPORT_EVERY, total - done)
        model, metrics = train_ranker(
            train,
            valid,
            loss=config["loss"],
            depth=int(config["depth"]),
            learning_rate=config["learning_rate"],
            l2_leaf_reg=config["l2_leaf_reg"],
            iterations=step,
            seed=seed,
            threads=1,
            init_model=model,
            use_best_model=False,
        )
        done += step
        tune.report({"valid_ndcg10": metrics["valid_ndcg@10"], "rounds": done})


@dataclass
class TuneResult:
    best_config: dict[str, Any]
    best_ndcg10: float
    trials: list[dict[str, Any]]


def run_search(
    train: RankerData, valid: RankerData, trials: int, smoke: bool = False, seed: int = 42, storage: Path | None = None
) -> TuneResult:
    """Run ``trials`` configurations with ASHA and return the best one (retrain it on full data afterwards)."""

    ensure_ray()
    space = search_space(smoke)
    max_rounds = max(space["iterations"].categories) if hasattr(space["iterations"], "categories") else 60
    scheduler = ASHAScheduler(max_t=max(1, max_rounds // REPORT_EVERY), grace_period=2, reduction_factor=2)
    trainable = tune.with_resources(tune.with_parameters(_trial, train=train, valid=valid, seed=seed), {"cpu": 1})
    tuner = tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            metric="valid_ndcg10", mode="max", num_samples=trials, scheduler=scheduler, max_concurrent_trials=2
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
    best = results.get_best_result()
    table = results.get_dataframe()
    rows = [
        {
            **{k.removeprefix("config/"): v for k, v in r.items() if k.startswith("config/")},
            "valid_ndcg10": r.get("valid_ndcg10"),
            "rounds": r.get("rounds"),
        }
        for r in table.to_dict("records")
    ]
    assert best.config is not None and best.metrics is not None  # a finished trial has both
    return TuneResult(best_config=dict(best.config), best_ndcg10=float(best.metrics["valid_ndcg10"]), trials=rows)


def _forget_trainables() -> None:
    """Remove the trainable Tune registered in Ray's KV store now, while Ray is up. Tune otherwise does it in an atexit
    handler, which after `ray.shutdown()` (Ctrl-C on `recstack demo`) waited forever on the stopped GCS."""
    from ray.tune.registry import _unregister_trainables

    try:
        _unregister_trainables()
    except Exception as err:  # best effort: never fail a finished search over cleanup
        log.warning("Tune trainables not unregistered (%s)", err)
