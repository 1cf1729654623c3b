"""`recstack bench`: the benchmarks end to end at one scale, in a throwaway embedded stack.

Ingest (bench/bench_ingest.py) -> feature build, materialize and online lookup (bench/bench_features.py) ->
training with Ray Tune (`recstack train`) -> offline evaluation (`recstack evaluate`) -> /recommend latency at
constant rates (bench/bench_serving.py). Each step runs as its own process, so its wall time and peak RSS (of the
step's process tree it waits for; the Postgres and Redis servers are not counted) are its own. Figures go to
bench/results/scale-*.json, a PNG of the steps and, when another scale's summary is there, a growth table.
The stack is stopped and its folder removed afterwards unless --keep.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from recstack import stack
from recstack.console import console

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def run_step(cmd: list[str], env: dict[str, str]) -> tuple[int, float, float]:
    """(exit code, wall seconds, peak RSS MiB of the process and the descendants it waited for)."""
    started = time.perf_counter()
    process = subprocess.Popen(cmd, cwd=ROOT, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, time.perf_counter() - started, usage.ru_maxrss / 1024


def steps_for(users: int, items: int, events: int, trials: int, epochs: int, seconds: float, tag: str) -> list:
    python = sys.executable
    recstack = [python, "-m", "recstack.cli"]
    out = {name: str(RESULTS / f"scale-{name}-{tag}.json") for name in ("ingest", "features", "evaluate", "serving")}
    scale = ["--users", str(users), "--items", str(items), "--events", str(events)]
    return [
        ("up", [*recstack, "up"]),
        ("ingest", [python, "-m", "bench.bench_ingest", "--use-configured", *scale, "--out", out["ingest"]]),
        ("features", [python, "-m", "bench.bench_features", "--use-configured", "--out", out["features"]]),
        ("train", [*recstack, "train", "--trials", str(trials), "--epochs", str(epochs), "--force"]),
        ("evaluate", [*recstack, "evaluate", "--users", "1000", "--json", out["evaluate"]]),
        ("serving", [python, "-m", "bench.bench_serving", "--seconds", str(seconds), "--out", out["serving"]]),
    ]


def growth(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """This scale's step times against every other scale's summary in bench/results (ratio of seconds)."""
    rows = []
    for path in sorted(RESULTS.glob("scale-summary-*.json")):
        other = json.loads(path.read_text())
        if (other["users"], other["items"], other["events"]) == (summary["users"], summary["items"], summary["events"]):
            continue
        for name, step in summary["steps"].items():
            before = other["steps"].get(name)
            if before and before["seconds"] > 0:
                rows.append(
                    {
                        "step": name,
                        "from": f"{other['users']:,}u/{other['items']:,}i/{other['events']:,}e",
                        "from_seconds": before["seconds"],
                        "seconds": step["seconds"],
                        "ratio": round(step["seconds"] / before["seconds"], 2),
                        "users_ratio": round(summary["users"] / other["users"], 2),
                    }
                )
    return rows


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary["steps"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.bar(names, [summary["steps"][n]["seconds"] for n in names], color="tab:blue")
    left.set_ylabel("seconds")
    left.set_title("wall time per step")
    right.bar(names, [summary["steps"][n]["peak_rss_mib"] for n in names], color="tab:orange")
    right.set_ylabel("MiB")
    right.set_title("peak RSS per step")
    scale = f"{summary['users']:,} users / {summary['items']:,} items / {summary['events']:,} events"
    fig.suptitle(f"recstack bench: {scale}")
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def bench(
    users: int = typer.Option(1_000_000, min=100, help="Synthetic users."),
    items: int = typer.Option(100_000, min=100, help="Synthetic items."),
    events: int = typer.Option(20_000_000, min=1000, help="Synthetic events."),
    trials: int = typer.Option(2, min=1, help="Ray Tune trials in the training step."),
    epochs: int = typer.Option(2, min=1, help="Embedding training epochs in the training step."),
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
    RESULTS.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {
        "users": users,
        "items": items,
        "events": events,
        "trials": trials,
        "epochs": epochs,
        "complete": False,
        "steps": {},
    }
    try:
        for name, cmd in steps_for(users, items, events, trials, epochs, serving_seconds, tag):
            console.rule(f"{name}: {' '.join(cmd[1:])}")
            code, seconds, peak = run_step(cmd, env)
            summary["steps"][name] = {"seconds": round(seconds, 1), "peak_rss_mib": round(peak)}
            if code != 0:
                console.print(f"[red]{name} failed (exit {code}); stopping[/]")
                raise typer.Exit(1)
        summary["complete"] = True
    finally:
        summary["growth"] = growth(summary) if summary["complete"] else []
        out = RESULTS / f"scale-summary-{tag}.json"
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(summary, indent=2))
        tmp.replace(out)
        if summary["steps"]:
            plot(summary, RESULTS / f"scale-summary-{tag}.png")
        table = Table("step", "seconds", "peak RSS (MiB)", title=f"recstack bench {tag}")
        for name, row in summary["steps"].items():
            table.add_row(name, f"{row['seconds']:.1f}", str(row["peak_rss_mib"]))
        console.print(table)
        if summary["growth"]:
            grown = Table("step", "from", "seconds then", "seconds now", "x time", "x users", title="growth")
            for row in summary["growth"]:
                keys = ("step", "from", "from_seconds", "seconds", "ratio", "users_ratio")
                grown.add_row(*(str(row[k]) for k in keys))
            console.print(grown)
        console.print(f"figures: {out}", highlight=False)
        if not keep:
            subprocess.run([sys.executable, "-m", "recstack.cli", "down"], cwd=ROOT, env=env, check=False)
            shutil.rmtree(home, ignore_errors=True)
