"""`recstack bench`: the benchmarks end to end at one scale, in a throwaway embedded stack.

Ingest (bench/bench_ingest.py) -> feature build, materialize and online lookup (bench/bench_features.py) ->
training with Ray Tune (`recstack train`) -> /recommend latency at constant rates (bench/bench_serving.py).
Each step runs as its own process (peak memory measured per step); figures go to bench/results/scale-*.json and a
summary table. The stack is stopped and its folder removed afterwards unless --keep.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import typer
from rich.table import Table

from recstack import stack
from recstack.console import console

ROOT = Path(__file__).resolve().parents[1]


def bench(
    users: int = typer.Option(1_000_000, min=100, help="Synthetic users."),
    items: int = typer.Option(100_000, min=100, help="Synthetic items."),
    events: int = typer.Option(20_000_000, min=1000, help="Synthetic events."),
    trials: int = typer.Option(2, min=1, help="Ray Tune trials in the training step."),
    serving_seconds: float = typer.Option(20, min=1, help="Seconds per request rate in the serving step."),
    keep: bool = typer.Option(False, "--keep", help="Keep the stack and its data afterwards."),
) -> None:
    """Run every benchmark at one scale (default 1M users / 100k items / 20M events) and print the figures."""
    home = Path(tempfile.mkdtemp(prefix="recstack-bench-"))
    env = {
        **os.environ,
        "RECSTACK_HOME": str(home),
        "RECSTACK_POSTGRES_PORT": str(stack.free_port()),
        "RECSTACK_REDIS_PORT": str(stack.free_port()),
    }
    env.pop("RECSTACK_POSTGRES_DSN", None)
    env.pop("RECSTACK_REDIS_URL", None)
    tag = f"{users}u-{items}i-{events}e"
    results = ROOT / "bench" / "results"
    recstack = [sys.executable, "-m", "recstack.cli"]
    steps = [
        ("up", [*recstack, "up"]),
        (
            "ingest",
            [
                sys.executable,
                "-m",
                "bench.bench_ingest",
                "--use-configured",
                "--users",
                str(users),
                "--items",
                str(items),
                "--events",
                str(events),
                "--out",
                str(results / f"scale-ingest-{tag}.json"),
            ],
        ),
        (
            "features",
            [
                sys.executable,
                "-m",
                "bench.bench_features",
                "--use-configured",
                "--out",
                str(results / f"scale-features-{tag}.json"),
            ],
        ),
        ("train", [*recstack, "train", "--trials", str(trials), "--force"]),
        (
            "serving",
            [
                sys.executable,
                "-m",
                "bench.bench_serving",
                "--seconds",
                str(serving_seconds),
                "--out",
                str(results / f"scale-serving-{tag}.json"),
            ],
        ),
    ]
    summary: dict[str, dict[str, float]] = {}
    try:
        for name, cmd in steps:
            console.rule(f"{name}: {' '.join(cmd[1:])}")
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            started = time.perf_counter()
            result = subprocess.run(cmd, cwd=ROOT, env=env, check=False)
            seconds = time.perf_counter() - started
            peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            summary[name] = {"seconds": round(seconds, 1), "peak_rss_mib_so_far": round(max(peak, before) / 1024)}
            if result.returncode != 0:
                console.print(f"[red]{name} failed (exit {result.returncode}); stopping[/]")
                raise typer.Exit(1)
    finally:
        out = results / f"scale-summary-{tag}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"users": users, "items": items, "events": events, "steps": summary}, indent=2))
        table = Table("step", "seconds", "peak RSS of any step so far (MiB)", title=f"recstack bench {tag}")
        for name, row in summary.items():
            table.add_row(name, f"{row['seconds']:.1f}", str(row["peak_rss_mib_so_far"]))
        console.print(table)
        if not keep:
            subprocess.run([*recstack, "down"], cwd=ROOT, env=env, check=False)
            shutil.rmtree(home, ignore_errors=True)
