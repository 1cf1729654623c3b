"""Where a /recommend's time and CPU go in each Serve shape, side by side: per stage as the ingress saw it (the
``recstack_stage_seconds`` histograms of /metrics, whole across replicas) and CPU milliseconds per request of every
process that burnt any (Ray workers by deployment, Postgres backends, Redis, the balancer), from the processes' own
counters over the same load window.

Needs a stack with data, features and a promoted model, with its RECSTACK_* environment; runs the modes one after
the other on a fresh local Ray each, as bench_serving does:

    python -m bench.probe_graph [--modes graph-front fused-front] [--rate 25] [--seconds 15] [--users 2000]

A probe, not a benchmark with acceptance figures (bench_serving has those): use it to see what a hop costs before
changing the graph. The machine should be otherwise idle: CPU per request counts every process on it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path

from bench.bench_serving import constant_rate, sample_users, serve_mode
from bench.common import free_port, report

RESULTS = Path(__file__).with_name("results") / "probe_graph.json"


def stage_sums(url: str) -> dict[tuple[str, str], float]:
    """(stage or endpoint, "sum" | "count") -> value, summed over replicas."""
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(requests.get(f"{url}/metrics", timeout=30).text):
        for sample in family.samples:
            name = sample.labels.get("stage") or sample.labels.get("endpoint")
            if name and sample.name.endswith(("_sum", "_count")):
                key = (name, sample.name.rsplit("_", 1)[1])
                out[key] = out.get(key, 0.0) + sample.value
    return out


def cpu_seconds() -> dict[int, tuple[str, float]]:
    """pid -> (role, user + system CPU seconds), for every process this user can read (by pid: Ray workers
    retitle themselves while they run a task)."""
    import psutil

    out: dict[int, tuple[str, float]] = {}
    for proc in psutil.process_iter(["cmdline", "name"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or []) or proc.info["name"]
            times = proc.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        out[proc.pid] = (_role(cmd), times.user + times.system)
    return out


def _role(cmd: str) -> str:
    if cmd.startswith("ray::ServeReplica:"):
        return cmd.split()[0].rsplit(":", 1)[-1]  # the deployment
    if cmd.startswith("ray::"):
        return cmd.split()[0].split(".")[0]  # ray::ServeController, not the method it runs now
    if cmd.startswith("postgres"):
        return "postgres"
    if "redis-server" in cmd:
        return "redis"
    if "probe_graph" in cmd:
        return "client (this probe)"
    return "other: " + cmd.split()[0].rsplit("/", 1)[-1][:40] if cmd else "other"


def probe(mode: str, users: list[str], rate: float, seconds: float) -> dict[str, object]:
    import ray
    from ray import serve

    url = serve_mode(mode, free_port())[0]
    asyncio.run(constant_rate([url], users, 10, 5))  # warm-up
    time.sleep(6)  # every replica has published its warm-up counts (serving/metrics.py PUBLISH_S)
    stages0, cpu0 = stage_sums(url), cpu_seconds()
    load = asyncio.run(constant_rate([url], users, rate, seconds))
    cpu1 = cpu_seconds()
    time.sleep(6)
    stages1 = stage_sums(url)
    serve.delete("recstack")
    serve.shutdown()
    ray.shutdown()
    requests_sent = int(load["requests"])  # type: ignore[call-overload]
    stage_ms = {}
    for name in sorted({k[0] for k in stages1}):
        n = stages1.get((name, "count"), 0) - stages0.get((name, "count"), 0)
        if n:
            total = stages1.get((name, "sum"), 0) - stages0.get((name, "sum"), 0)
            stage_ms[name] = {"requests": int(n), "mean_ms": round(1000 * total / n, 2)}
    cpu_ms: dict[str, float] = {}
    for pid, (role, after) in cpu1.items():
        used = after - cpu0.get(pid, (role, 0.0))[1]
        if used > 0:
            cpu_ms[role] = cpu_ms.get(role, 0.0) + 1000 * used / requests_sent
    cpu_ms = {k: round(v, 2) for k, v in sorted(cpu_ms.items(), key=lambda kv: -kv[1]) if v >= 0.05}
    return {
        "load": load,
        "stages_seen_by_ingress": stage_ms,
        "cpu_ms_per_request": cpu_ms,
        "cpu_ms_per_request_total": round(sum(cpu_ms.values()), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", default=["graph-front", "fused-front"])
    parser.add_argument("--rate", type=float, default=25)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    os.environ["RECSTACK_RESULT_CACHE_TTL_S"] = "0"  # the stages' cost, not the cache's
    users = sample_users(args.users)
    figures: dict[str, object] = {"rate": args.rate, "seconds": args.seconds, "users_sampled": len(users)}
    for mode in args.modes:
        figures[mode] = found = probe(mode, users, args.rate, args.seconds)
        load = found["load"]
        print(f"{mode}: p50 {load['p50']} ms, p99 {load['p99']} ms, {load['statuses']}", flush=True)  # type: ignore[index]
        for stage, seen in found["stages_seen_by_ingress"].items():  # type: ignore[attr-defined]
            print(f"  stage {stage:12s} {seen['mean_ms']:7.2f} ms mean over {seen['requests']}")
        for role, ms in found["cpu_ms_per_request"].items():  # type: ignore[attr-defined]
            print(f"  cpu   {role:32s} {ms:6.2f} ms a request")
    report(figures, args.out)
    print(f"figures in {args.out}")


if __name__ == "__main__":
    main()
