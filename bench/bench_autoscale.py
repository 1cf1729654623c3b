"""Autoscaling you can see: an open-loop load ramped up and down through POST /recommend on the graph application
(the deployments, CPU sizes and autoscaling configs of serving/serve_config.yaml), recording every couple of seconds
the offered and answered rate, p50/p99 of what was answered and each deployment's replicas (Serve's status API), and
each deployment's CPU seconds per request (its replicas' processes, read with psutil).

Needs a stack with data, features materialized and a promoted model (`recstack demo --no-serve`). Usage, with the
stack's RECSTACK_* environment:

    python -m bench.bench_autoscale [--ramp 4:30 12:40 24:60 36:60 12:40 4:120] [--num-cpus 8]

``--ramp`` is rate:seconds phases. ``--num-cpus`` is the local Ray node's logical CPUs: replicas are placed by
their ``num_cpus``, so a laptop node sized like one worker pod (infra/k8s/rayservice.yaml: 4 CPUs) plus the head
shows the scale-up a cluster would make; the physical cores stay what they are, and latency shows it. Writes
bench/results/autoscale.json and autoscale.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.bench_serving import sample_users, serve_mode
from bench.common import Answer, free_port, open_loop, report

RESULTS = Path(__file__).with_name("results")
DEPLOYMENTS = ("Ingress", "Retriever", "FeatureLookup", "Ranker")
APP = "recstack"


def parse_ramp(phases: list[str]) -> list[tuple[float, float]]:
    out = []
    for phase in phases:
        rate, _, seconds = phase.partition(":")
        try:
            out.append((float(rate), float(seconds)))
        except ValueError:
            raise SystemExit(f"--ramp: {phase!r} is not rate:seconds") from None
    return out


def replica_pids() -> dict[str, list[int]]:
    """Each deployment's replica processes (Ray titles them ``ray::ServeReplica:<app>:<deployment>``)."""
    import psutil

    found: dict[str, list[int]] = {name: [] for name in DEPLOYMENTS}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            title = " ".join(proc.info["cmdline"] or [])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for name in DEPLOYMENTS:
            if f"ServeReplica:{APP}:{name}" in title:
                found[name].append(proc.pid)
    return found


class Sampler(threading.Thread):
    """Every ``every`` seconds: replicas per deployment and state, and CPU seconds used by each deployment so far."""

    def __init__(self, t0: float, every: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.t0, self.every = t0, every
        self.samples: list[dict[str, Any]] = []
        self.cpu_seen: dict[int, float] = {}  # pid -> its latest CPU seconds (replicas that ended keep theirs)
        self.cpu_owner: dict[int, str] = {}
        self.stop = threading.Event()

    def cpu_by_deployment(self) -> dict[str, float]:
        import psutil

        for name, pids in replica_pids().items():
            for pid in pids:
                try:
                    times = psutil.Process(pid).cpu_times()
                except psutil.NoSuchProcess:
                    continue
                self.cpu_seen[pid], self.cpu_owner[pid] = times.user + times.system, name
        totals = dict.fromkeys(DEPLOYMENTS, 0.0)
        for pid, seconds in self.cpu_seen.items():
            totals[self.cpu_owner[pid]] += seconds
        return totals

    def run(self) -> None:
        from ray import serve

        while not self.stop.is_set():
            status = serve.status().applications[APP]
            replicas = {
                name: {str(getattr(k, "value", k)): v for k, v in status.deployments[name].replica_states.items()}
                for name in DEPLOYMENTS
                if name in status.deployments
            }
            self.samples.append(
                {"t": round(time.monotonic() - self.t0, 1), "replicas": replicas, "cpu_s": self.cpu_by_deployment()}
            )
            self.stop.wait(self.every)


def timeline(
    answers: list[Answer], samples: list[dict[str, Any]], ramp: list[tuple[float, float]], bucket: float
) -> list[dict[str, Any]]:
    """Per ``bucket`` seconds (by send time): offered rate, answered rate, p50/p99, errors, replicas at its end."""
    bounds = np.cumsum([0.0] + [s for _, s in ramp])
    rows = []
    for start in np.arange(0, bounds[-1], bucket):
        inside = [a for a in answers if start <= a.sent_s < start + bucket]
        ok = [a.latency_s * 1000 for a in inside if a.status == 200]
        phase = min(int(np.searchsorted(bounds, start, side="right")) - 1, len(ramp) - 1)
        sample = next((s for s in samples if s["t"] >= start + bucket), samples[-1] if samples else None)
        replicas = (sample or {}).get("replicas") or {}
        running = {name: states.get("RUNNING", 0) for name, states in replicas.items()}
        waiting = {
            name: sum(n for state, n in states.items() if state != "RUNNING") for name, states in replicas.items()
        }
        rows.append(
            {
                "t": float(start),
                "offered_rps": ramp[phase][0],
                "answered_rps": round(len(ok) / bucket, 1),
                "p50_ms": round(float(np.percentile(ok, 50)), 1) if ok else None,
                "p99_ms": round(float(np.percentile(ok, 99)), 1) if ok else None,
                "errors": sum(1 for a in inside if a.status != 200),
                "degraded": sum(1 for a in inside if a.degraded),
                "running_replicas": running,
                "other_replicas": {name: n for name, n in waiting.items() if n},  # starting, pending, stopping
            }
        )
    return rows


def plot(rows: list[dict[str, Any]], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["t"] for r in rows]
    fig, (load, lat, reps) = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    load.step(t, [r["offered_rps"] for r in rows], where="post", label="offered")
    load.plot(t, [r["answered_rps"] for r in rows], label="answered (200)")
    load.set_ylabel("requests/s")
    load.legend()
    lat.plot(t, [r["p50_ms"] for r in rows], label="p50")
    lat.plot(t, [r["p99_ms"] for r in rows], label="p99")
    lat.set_ylabel("latency (ms)")
    lat.set_yscale("log")
    lat.legend()
    for name in DEPLOYMENTS:
        reps.step(t, [r["running_replicas"].get(name, 0) for r in rows], where="post", label=name)
    reps.set_ylabel("running replicas")
    reps.set_xlabel("seconds")
    reps.legend(ncol=3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ramp", nargs="+", default=["4:30", "12:40", "24:60", "36:60", "12:40", "4:120"])
    parser.add_argument("--num-cpus", type=int, default=8)
    parser.add_argument("--bucket", type=float, default=5.0, help="seconds per timeline row")
    parser.add_argument("--out", type=Path, default=RESULTS / "autoscale.json")
    args = parser.parse_args()
    ramp = parse_ramp(args.ramp)
    users = sample_users(2000)
    from ray import serve

    from serving.app import DEPLOYMENT_SIZES

    (url,) = serve_mode("graph", free_port(), num_cpus=args.num_cpus)
    asyncio.run(open_loop([url], users, [(5, 5)]))  # warm-up
    t0 = time.monotonic()
    sampler = Sampler(t0)
    sampler.start()
    answers = asyncio.run(open_loop([url], users, ramp, t0))
    time.sleep(2)
    sampler.stop.set()
    sampler.join()
    served = sum(1 for a in answers if a.status == 200)
    first, last = sampler.samples[0]["cpu_s"], sampler.samples[-1]["cpu_s"]
    rows = timeline(answers, sampler.samples, ramp, args.bucket)
    figures: dict[str, object] = {
        "ramp": args.ramp,
        "node_logical_cpus": args.num_cpus,
        "sizes": DEPLOYMENT_SIZES,
        "requests": len(answers),
        "statuses": {str(s): sum(1 for a in answers if a.status == s) for s in sorted({a.status for a in answers})},
        "cpu_ms_per_request": {
            name: round(1000 * (last[name] - first[name]) / max(served, 1), 2) for name in DEPLOYMENTS
        },
        "max_running_replicas": {
            name: max((r["running_replicas"].get(name, 0) for r in rows), default=0) for name in DEPLOYMENTS
        },
        "timeline": rows,
    }
    serve.delete(APP)
    serve.shutdown()
    import ray

    ray.shutdown()
    report({k: v for k, v in figures.items() if k != "timeline"}, args.out)
    args.out.write_text(json.dumps(figures, indent=2))
    png = args.out.with_suffix(".png")
    plot(rows, png, f"POST /recommend, graph app, ramp {' '.join(args.ramp)} (rps:s)")
    print(f"figures in {args.out}, plot in {png}")


if __name__ == "__main__":
    main()
