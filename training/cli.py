"""`recstack train` and `recstack evaluate`: thin commands over training.pipeline and training.evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from recstack.console import StageProgress, console, progress_bars
from recstack.settings import get_settings


def train(
    trials: int = typer.Option(8, min=1, max=200, help="Ray Tune trials (CatBoostRanker configurations)."),
    smoke: bool = typer.Option(False, "--smoke", help="Tiny search (few iterations): checks the loop end to end."),
    epochs: int = typer.Option(8, min=1, max=500, help="Embedding training epochs."),
    protocol: str = typer.Option(
        "random", help="How ranker labels are held out: random (each user's positives 80/10/10), temporal, window."
    ),
    ranker_users: int = typer.Option(
        5000, min=10, help="Users with held-out positives in the ranker set (TrainConfig.ranker_users says why 5000)."
    ),
    promote: bool = typer.Option(True, help="Promote the new model (serving loads the promoted one)."),
    force: bool = typer.Option(False, "--force", help="Train even when the data validation gate fails."),
    seed: int = typer.Option(42, help="Seed: the same data and seed give the same model."),
) -> None:
    """Train embeddings (pgvector) and a CatBoost ranker tuned by Ray Tune; register (and promote) the model."""
    from training.pipeline import TrainConfig
    from training.pipeline import train as run_train
    from training.protocols import PROTOCOLS

    if protocol not in PROTOCOLS:
        raise typer.BadParameter(f"one of {', '.join(PROTOCOLS)}", param_hint="--protocol")
    config = TrainConfig(
        protocol=protocol,
        trials=trials,
        smoke=smoke,
        epochs=epochs,
        ranker_users=ranker_users,
        promote=promote,
        force=force,
        seed=seed,
    )
    with progress_bars() as progress:
        report = run_train(get_settings(), config, StageProgress(progress))
    table = Table("stage", "seconds", title=f"trained {report.version}" + (" (promoted)" if promote else ""))
    for name, seconds in report.timings.items():
        table.add_row(name.removesuffix("_s"), f"{seconds:.1f}")
    console.print(table)
    console.print(
        f"ranker set: {report.ranker_rows:,} rows, {report.ranker_groups:,} users; best of {len(report.trials)} "
        f"trials: {json.dumps(report.best_config)}; valid NDCG@10 {report.valid_ndcg10:.4f}",
    )
    orders = ", ".join(f"{k} {v:.4f}" for k, v in report.valid_orders.items())
    ratio, low, high = report.ranker_vs_best_source
    console.print(
        f"held-out NDCG@10 by order: {orders}; ranker / best source {ratio:.3f}x (95% CI {low:.3f}-{high:.3f}); "
        "serving orders by "
        + (f"{report.order_by} (the ranker did not beat it clearly)" if report.order_by else "the ranker"),
        highlight=False,
    )
    tried = "; ".join(f"{label} {ndcg:.4f}" for label, ndcg in report.item_item_valid_ndcg.items())
    chosen = report.item_item.label() if report.item_item else "not fit"
    console.print(f"item-item: {chosen} (held-out NDCG@10 by fit: {tried or 'none judged'})", highlight=False)


def evaluate(
    json_path: Path | None = typer.Option(None, "--json", help="Also write the results JSON to this path."),
    users: int = typer.Option(1000, min=1, help="Users with held-out positives evaluated (seeded sample)."),
    version: str | None = typer.Option(None, help="Model version (default: the promoted one)."),
    protocol: str | None = typer.Option(
        None, help="random | temporal | window (default: the one the model was trained with)."
    ),
    epochs: int | None = typer.Option(
        None, min=1, max=500, help="Embedding refit epochs (default: the model's, as `train --epochs` set them)."
    ),
) -> None:
    """Evaluate the served pipeline on a held-out part against popularity, item-kNN, EASE and embeddings only."""
    from training.evaluate import HEADLINE, EvalConfig, write_report
    from training.evaluate import evaluate as run_evaluate
    from training.protocols import PROTOCOLS

    if protocol is not None and protocol not in PROTOCOLS:
        raise typer.BadParameter(f"one of {', '.join(PROTOCOLS)}", param_hint="--protocol")
    settings = get_settings()
    config = EvalConfig(users=users, version=version, protocol=protocol, epochs=epochs)
    with progress_bars() as progress:
        result = run_evaluate(settings, config, StageProgress(progress))
    paths = write_report(result, settings.reports_dir / "evaluation" / result["model_version"])
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = json_path.with_name(json_path.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(json_path)
    columns = HEADLINE[:5]
    table = Table("method", *columns, "coverage@10", title=f"offline evaluation of {result['model_version']}")
    for name, row in result["methods"].items():
        table.add_row(name, *(f"{row[c]:.4f}" for c in columns), f"{row['coverage@10']:.3f}")
    console.print(table)
    recall = ", ".join(f"{k} {v:.3f}" for k, v in result["candidate_recall"].items())
    console.print(f"candidate recall of the held-out items: {recall}; served order: {result['served_order']}")
    served = result["served_vs"]
    best = max(served, key=lambda base: result["methods"][base]["ndcg@10"])
    low, high = served[best]["ci95"]
    console.print(
        f"served pipeline (ranker + rerank) vs the best baseline ({best}): {served[best]['ndcg@10_ratio']:.3f}x "
        f"(95% CI {low:.3f}-{high:.3f})"
    )
    costs = ", ".join(
        f"{knob} {row['ndcg@10_vs_none']:.3f}x (coverage@10 {row['coverage@10']:.3f}, "
        f"long tail {row['long_tail_share@10']:.3f})"
        for knob, row in result["rerank_knobs"].items()
        if knob != "none"
    )
    console.print(f"each rerank knob alone, NDCG@10 vs no rerank: {costs}")
    console.print(f"report: {paths['markdown']}" + (f"; json: {json_path}" if json_path else ""), highlight=False)
