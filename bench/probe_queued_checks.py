"""Does a readiness check of a stage that has no replica yet count as load on it? A deployment that takes
``--start-s`` seconds to start (autoscaling as serving/app.py's stages: target 1 ongoing request, upscale after 10 s)
and a caller that checks it once a second, with no traffic, three ways:

* ``no-deadline``: ``await handle.ready.remote()`` (what /readyz did): each check waits in the handle's queue until a
  replica runs;
* ``2s-deadline``: the same, given up (and cancelled) after 2 s;
* ``one-at-a-time``: at most one check in flight, given up after 2 s but left running for the next check
  (serving/callers.py ``_one_at_a_time``, what /readyz does).

Serve's autoscaler counts requests queued at a handle as load (so that a deployment can scale up from zero), so the
first two upscale a stage that serves nothing. Prints each variant's check answers and the controller's upscaling
decisions. Starts its own local Ray with RAY_SERVE_THROUGHPUT_OPTIMIZED=1, needs no stack:

    python -m bench.probe_queued_checks [--start-s 20] [--seconds 45]
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import report

RESULTS = Path(__file__).with_name("results") / "probe_queued_checks.json"
VARIANTS = ("no-deadline", "2s-deadline", "one-at-a-time")


def build(start_s: float) -> Any:
    from ray import serve

    from serving.app import AUTOSCALING
    from serving.callers import _one_at_a_time

    @serve.deployment(name="SlowStart", max_ongoing_requests=16, autoscaling_config=AUTOSCALING)
    class SlowStart:
        def __init__(self) -> None:
            time.sleep(start_s)

        async def ready(self) -> bool:
            return True

    @serve.deployment(name="Checker")
    class Checker:
        def __init__(self, stage: Any) -> None:
            self.stage = stage.options(_by_reference=False)
            self.one_at_a_time = _one_at_a_time(self.stage.ready.remote)

        async def check(self, variant: str) -> str:
            call = self.one_at_a_time() if variant == "one-at-a-time" else self.stage.ready.remote()
            try:
                await (call if variant == "no-deadline" else asyncio.wait_for(call, 2.0))
                return "ready"
            except TimeoutError:
                return "late"

        async def run(self, variant: str, seconds: int) -> dict[str, int]:
            tasks = []
            for _ in range(seconds):
                tasks.append(asyncio.ensure_future(self.check(variant)))
                await asyncio.sleep(1)
            return dict(Counter(t.result() if t.done() else "still waiting" for t in tasks))

    return Checker.bind(SlowStart.bind())  # type: ignore[attr-defined]


def upscaling() -> list[str]:
    """The upscaling decisions in this Ray's controller log (each variant runs on a Ray of its own)."""
    out = []
    for path in glob.glob("/tmp/ray/session_latest/logs/serve/controller_*.log"):
        out += [line.split(" -- ", 1)[-1] for line in Path(path).read_text().splitlines() if "Upscaling" in line]
    return out


def one(variant: str, start_s: float, seconds: int) -> dict[str, object]:
    """One variant on a fresh local Ray (this process ends with it: one controller log each)."""
    os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"  # before Serve is imported, here and in the Ray processes
    import ray
    from ray.serve.api import _run

    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    handle = _run(build(start_s), name="probe-queued", route_prefix=None, _blocking=False)
    time.sleep(2)

    async def checks() -> Any:
        return await handle.run.remote(variant, seconds)

    return {"checks": asyncio.run(checks()), "upscaling": upscaling()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start-s", type=float, default=20)
    parser.add_argument("--seconds", type=int, default=45)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # one variant, in a child process
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(one(args.variant, args.start_s, args.seconds)), flush=True)
        os._exit(0)  # Serve's handle shutdown wants the loop asyncio.run closed; nothing is left to flush
    found: dict[str, object] = {"start_s": args.start_s, "seconds": args.seconds}
    for variant in VARIANTS:
        command = [sys.executable, "-m", "bench.probe_queued_checks", "--variant", variant]
        command += ["--start-s", str(args.start_s), "--seconds", str(args.seconds)]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        found[variant] = json.loads(out.strip().splitlines()[-1])
        print(variant, found[variant], flush=True)
    report(found, RESULTS)
    print(f"figures in {RESULTS}")


if __name__ == "__main__":
    main()
