"""What one Ray Serve handle hop costs, by transport and by how the called method runs: a caller deployment calls
echo deployments that return a candidate set (``recstack.stages.retrieve.CandidateSet`` of ``--candidates`` items,
built here) after ``--work-ms`` of numpy, alternating between the variants call by call so that every variant sees
the same machine:

* ``thread-by-value``: a sync method (Serve runs it on its thread pool), called over the inter-deployment gRPC;
* ``loop-by-value``: the same method as ``async def`` (run on the replica's event loop), over gRPC;
* ``thread-by-reference``: the sync method called as a Ray actor task (``_by_reference=True``);
* ``raw-grpc``: no Serve at all: a plain ``grpc.aio`` server on the loop-echo replica's event loop, called from the
  caller's loop with the same pickled answer and the same work: the floor under Serve's hop between these two
  processes (what is Serve's in a hop is the difference).

Then the CPU a call costs the caller and the called process, ``loop-by-value`` against ``raw-grpc``, each alone.

    python -m bench.probe_hop [--calls 300] [--work-ms 0 4] [--candidates 120]

Prints p50 / p90 milliseconds per variant and work size. Starts its own local Ray with
RAY_SERVE_THROUGHPUT_OPTIMIZED=1 (as `recstack serve` does); needs no stack. A probe, not a benchmark with acceptance
figures: it is why serving/callers.py calls stages by value and serving/app.py runs their hot methods on the loop.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pickle
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import report

RESULTS = Path(__file__).with_name("results") / "probe_hop.json"


def candidates(n: int) -> Any:
    from recstack.stages.retrieve import CandidateSet

    rng = np.random.default_rng(0)
    return CandidateSet(
        [str(i) for i in range(n)],
        [f"Title {i} (1999)" for i in range(n)],
        ["movies"] * n,
        ["movielens"] * n,
        [["Drama", "Comedy"] for _ in range(n)],
        rng.random((n, 64), np.float32),
        rng.random((n, 12), np.float32),
        np.zeros(n, bool),
    )


def busy(ms: float) -> None:
    """``ms`` of numpy on this thread (stands in for a stage's work)."""
    started, x = time.perf_counter(), np.ones((200, 64))
    while (time.perf_counter() - started) * 1000 < ms:
        x @ x.T


def build(n: int) -> Any:
    from ray import serve

    options: dict[str, Any] = {"ray_actor_options": {"num_cpus": 0.1}, "max_ongoing_requests": 16}

    @serve.deployment(name="EchoOnThreads", **options)
    class EchoOnThreads:
        def __init__(self) -> None:
            self.answer = candidates(n)

        def get(self, ms: float) -> Any:
            busy(ms)
            return self.answer

    @serve.deployment(name="EchoOnLoop", **options)
    class EchoOnLoop:
        def __init__(self) -> None:
            self.answer = candidates(n)
            self.raw_port = 0
            self.raw_server: Any = None

        async def get(self, ms: float) -> Any:
            busy(ms)
            return self.answer

        def pid(self) -> int:
            return os.getpid()

        async def serve_raw(self) -> int:
            """Start a plain gRPC server on this replica's loop, answering like ``get``; its port."""
            import grpc

            if not self.raw_port:

                async def echo(request: bytes, context: Any) -> bytes:
                    busy(pickle.loads(request))
                    return pickle.dumps(self.answer, protocol=5)

                self.raw_server = grpc.aio.server()
                self.raw_server.add_generic_rpc_handlers(
                    (grpc.method_handlers_generic_handler("probe", {"Get": grpc.unary_unary_rpc_method_handler(echo)}),)
                )
                self.raw_port = self.raw_server.add_insecure_port("127.0.0.1:0")
                await self.raw_server.start()
            return self.raw_port

    @serve.deployment(name="Caller", ray_actor_options={"num_cpus": 0.1})
    class Caller:
        def __init__(self, on_threads: Any, on_loop: Any) -> None:
            self.on_loop = on_loop
            self.handles = {
                "thread-by-value": on_threads.options(_by_reference=False),
                "loop-by-value": on_loop.options(_by_reference=False),
                "thread-by-reference": on_threads.options(_by_reference=True),
            }

        async def raw_get(self) -> Callable[[float], Awaitable[Any]]:
            """The loop echo's answer over a plain gRPC channel from this replica's loop (the raw-grpc variant)."""
            import grpc

            port = await self.on_loop.serve_raw.remote()
            raw = grpc.aio.insecure_channel(f"127.0.0.1:{port}").unary_unary("/probe/Get")

            async def get(ms: float) -> Any:
                return pickle.loads(await raw(pickle.dumps(ms)))

            return get

        async def run(self, calls: int, ms: float) -> dict[str, dict[str, float]]:
            raw_get = await self.raw_get()
            calls_by_name = {name: handle.get.remote for name, handle in self.handles.items()}
            calls_by_name["raw-grpc"] = raw_get
            took: dict[str, list[float]] = {name: [] for name in calls_by_name}
            for _ in range(calls + 20):
                for name, call in calls_by_name.items():
                    started = time.perf_counter()
                    await call(ms)
                    took[name].append(time.perf_counter() - started)
                    await asyncio.sleep(0.02)  # idle between calls, as at 25-50 requests/s
            return {
                name: {
                    "p50_ms": round(float(np.percentile(t[20:], 50)) * 1000, 2),
                    "p90_ms": round(float(np.percentile(t[20:], 90)) * 1000, 2),
                }
                for name, t in took.items()
            }

        async def cpu(self, calls: int) -> dict[str, dict[str, float]]:
            """CPU milliseconds a call in the caller and in the called replica, loop-by-value against raw-grpc, each
            variant alone for ``calls`` calls (20 ms apart), less what both processes burn idle over as long."""
            import psutil

            raw_get = await self.raw_get()
            me = psutil.Process()
            echo = psutil.Process(await self.handles["loop-by-value"].pid.remote())

            def used() -> tuple[float, float]:
                return sum(me.cpu_times()[:2]), sum(echo.cpu_times()[:2])

            out = {}
            for name, call in (("loop-by-value", self.handles["loop-by-value"].get.remote), ("raw-grpc", raw_get)):
                for _ in range(20):
                    await call(0.0)
                before = used()
                for _ in range(calls):
                    await call(0.0)
                    await asyncio.sleep(0.02)
                during = used()
                for _ in range(calls):
                    await asyncio.sleep(0.02)
                idle = used()
                out[name] = {
                    f"{who}_cpu_ms": round(((during[i] - before[i]) - (idle[i] - during[i])) / calls * 1000, 2)
                    for i, who in enumerate(("caller", "called"))
                }
            return out

    return Caller.bind(EchoOnThreads.bind(), EchoOnLoop.bind())  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--work-ms", type=float, nargs="+", default=[0.0, 4.0])
    parser.add_argument("--candidates", type=int, default=120)
    args = parser.parse_args()
    os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"  # before Serve is imported, here and in the Ray processes
    import ray
    from ray import serve

    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    handle = serve.run(build(args.candidates), name="probe-hop", route_prefix=None)

    async def measure() -> dict[str, object]:
        found: dict[str, object] = {f"work {ms:g} ms": await handle.run.remote(args.calls, ms) for ms in args.work_ms}
        found["cpu a call, work 0 ms"] = await handle.cpu.remote(args.calls)
        return found

    found = asyncio.run(measure())
    report({"calls_per_variant": args.calls, "candidates": args.candidates, **found}, RESULTS)
    print(f"figures in {RESULTS}")
    os._exit(0)  # Serve's handle shutdown wants the loop asyncio.run closed; nothing is left to flush


if __name__ == "__main__":
    main()
