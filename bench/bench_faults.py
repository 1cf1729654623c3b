"""Faults under load: POST /recommend at a constant rate through the Serve URL, and feedback events from a client
that retries until each is acknowledged, while one fault at a time breaks part of the stack (issue 17).

One command prepares a small trained stack in a throwaway RECSTACK_HOME (its own free ports; the home is a
size-limited tmpfs so that its disk can be filled), serves it (`recstack serve --detach`: fused, 2 replicas), runs
every fault and prints one table:

    python -m bench.bench_faults [--faults kill-replica redis-stop postgres-restart kill-front disk-full kill-proxy]

Per fault: ``--baseline`` seconds of load, the fault injected, held ``hold_s`` (bench/faults.py), repaired, then
``--recovery`` seconds more of load. Measured: /recommend answers by status ("no answer": no HTTP answer within
30 s, a timeout or a refused connection), 5xx other than 503 (the goal is 0: a 503 with Retry-After is the API's
documented "try again"), p99 of the requests sent between injection and repair (at least 1 s; for a kill, the 10 s
after it), recovery: the seconds from the repair (from the injection for the faults Serve repairs by itself) until
the end of the last 3-s window with an error or under 80% good answers (200, not degraded; a window rather than
every answer because the shared 2-core machine degrades the odd answer with no fault at all: "base good%" is the
worst such window before the fault), and feedback events acknowledged (2xx) vs stored in Postgres (rows per event_id
in ``events``: every acknowledged event exactly once). Writes bench/results/faults.json. All traffic goes to
127.0.0.1; the stack is stopped, anything stopped is continued and the tmpfs unmounted when the suite ends, also on
error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import Answer, open_loop
from bench.faults import FAULTS, Fault, Undo, is_tmpfs, ray_workers, replica_title
from recstack import stack
from recstack.settings import Settings

RESULTS = Path(__file__).with_name("results") / "faults.json"
MARKER = ".recstack-faults"  # a home this suite created (and may delete)
ACK_DEADLINE_S = 90  # a feedback event not acknowledged this long after it was first sent is given up
BUCKET_S = 1.0
WINDOW_S = 3.0  # recovery: sliding windows of this many seconds ...
GOOD_SHARE = 0.8  # ... with at least this share of good answers (200, not degraded) and no errors


# -- the stack ----------------------------------------------------------------------------------------------------
def recstack_bin() -> str:
    found = Path(sys.executable).with_name("recstack")
    return str(found) if found.exists() else "recstack"


def run(cmd: list[str], env: dict[str, str], timeout_s: float) -> None:
    print(f"$ {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, env=env, check=True, timeout=timeout_s)


def make_home(home: Path, tmpfs_size: str | None) -> bool:
    """A fresh state folder at ``home`` (a tmpfs of ``tmpfs_size`` when given); True when a tmpfs was mounted."""
    if home.exists():
        if not (home / MARKER).exists() and any(home.iterdir()):
            raise SystemExit(f"{home} exists and was not made by this suite: pick another --home")
        if is_tmpfs(home):
            subprocess.run(["umount", str(home)], check=True, timeout=60)
        shutil.rmtree(home)
    home.mkdir(parents=True)
    mounted = False
    if tmpfs_size:
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={tmpfs_size},mode=0755", "tmpfs", str(home)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        mounted = result.returncode == 0
        if not mounted:
            print(f"no tmpfs at {home} ({result.stderr.strip()}): the disk-full fault will be skipped")
    (home / MARKER).write_text("made by bench.bench_faults\n")
    return mounted


def stack_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSTACK_")}
    env.update(
        {
            "RECSTACK_HOME": str(settings.home),
            "RECSTACK_POSTGRES_PORT": str(settings.postgres_port),
            "RECSTACK_REDIS_PORT": str(settings.redis_port),
            "RECSTACK_SERVE_PORT": str(settings.serve_port),
            "RECSTACK_SERVE_HOST": "127.0.0.1",
        }
    )
    return env


def prepare(env: dict[str, str], scale: list[str]) -> None:
    """The demo's pipeline at ``scale`` without its offline evaluation (minutes the faults do not need): synthetic
    data ending today, features, Feast apply + materialize (through the validation gate), a small training run."""
    from datetime import UTC, datetime, timedelta

    start = (datetime.now(UTC) - timedelta(days=181)).strftime("%Y-%m-%d")
    recstack = recstack_bin()
    for step in (
        ["up"],
        ["ingest", "synthetic", *scale, "--start", start],
        ["features", "build"],
        ["features", "apply"],
        ["materialize"],
        ["train", "--trials", "1", "--epochs", "4", "--ranker-users", "500"],
    ):
        run([recstack, *step], env, timeout_s=1800)


def sample(settings: Settings, table: str, n: int) -> list[str]:
    import psycopg

    with psycopg.connect(stack.postgres_dsn(settings)) as conn:
        query = f"SELECT external_id FROM {table} ORDER BY random() LIMIT %s"  # noqa: S608 (a constant table)
        return [r[0] for r in conn.execute(query, (n,)).fetchall()]


def wait_healthy(settings: Settings, url: str, replicas: int, timeout_s: float = 180) -> float:
    """Seconds until /readyz answers 200 and ``replicas`` API replicas run (raises when it never happens)."""
    import requests

    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            ready = requests.get(f"{url}/readyz", timeout=5).status_code == 200
        except requests.RequestException:
            ready = False
        if ready and len(ray_workers(settings, replica_title())) >= replicas:
            return time.monotonic() - started
        time.sleep(1)
    raise RuntimeError(f"the stack at {url} is not healthy after {timeout_s:.0f} s")


# -- feedback client ----------------------------------------------------------------------------------------------
@dataclass
class FeedbackLog:
    sent: list[str] = field(default_factory=list)  # event ids, each once
    acked: set[str] = field(default_factory=set)
    rejected: dict[str, int] = field(default_factory=dict)  # event id -> 4xx status (not retried)
    attempts: Counter[int] = field(default_factory=Counter)  # status of every attempt (0: no HTTP answer)


async def feedback_client(
    url: str, users: list[str], items: list[str], rate: float, seconds: float, prefix: str
) -> FeedbackLog:
    """``rate`` events per second for ``seconds``, each with a unique event id, each retried (same id, same
    payload) on a 5xx, a timeout or a refused connection until a 2xx acknowledges it, for up to ACK_DEADLINE_S."""
    import aiohttp

    log = FeedbackLog()
    async with aiohttp.ClientSession() as session:

        async def until_acked(event: dict[str, Any]) -> None:
            given_up_at = time.monotonic() + ACK_DEADLINE_S
            backoff = 0.2
            while time.monotonic() < given_up_at:
                try:
                    async with session.post(
                        f"{url}/feedback", json=event, timeout=aiohttp.ClientTimeout(total=10)
                    ) as response:
                        status = response.status
                        await response.read()
                except (TimeoutError, aiohttp.ClientError):
                    status = 0
                log.attempts[status] += 1
                if 200 <= status < 300:
                    log.acked.add(event["event_id"])
                    return
                if 400 <= status < 500:
                    log.rejected[event["event_id"]] = status
                    return
                await asyncio.sleep(backoff)
                backoff = min(2 * backoff, 2.0)

        tasks = []
        start = time.monotonic()
        for n in range(int(rate * seconds)):
            delay = start + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            event = {
                "event_id": f"{prefix}-{n}",
                "user_id": random.choice(users),
                "item_id": random.choice(items),
                "type": "click",
            }
            log.sent.append(event["event_id"])
            tasks.append(asyncio.create_task(until_acked(event)))
        await asyncio.gather(*tasks)
    return log


def stored_rows(settings: Settings, prefix: str) -> dict[str, int]:
    """Rows in ``events`` per event id of this run (Postgres may have to come back first)."""
    import psycopg

    deadline = time.monotonic() + 60
    while True:
        try:
            with psycopg.connect(stack.postgres_dsn(settings), connect_timeout=3) as conn:
                rows = conn.execute(
                    "SELECT event_id, count(*) FROM events WHERE event_id LIKE %s GROUP BY event_id",
                    (f"{prefix}-%",),
                ).fetchall()
            return {r[0]: int(r[1]) for r in rows}
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


# -- one fault ----------------------------------------------------------------------------------------------------
@dataclass
class Timing:
    baseline_s: float
    recovery_s: float
    rate: float
    feedback_rate: float


async def run_fault(
    settings: Settings, url: str, users: list[str], items: list[str], fault: Fault, prefix: str, timing: Timing
) -> tuple[list[Answer], FeedbackLog, dict[str, Any]]:
    """Load and feedback for baseline + hold + recovery seconds; the fault injected after the baseline."""
    total = timing.baseline_s + fault.hold_s + timing.recovery_s
    t0 = time.monotonic()
    load = asyncio.create_task(open_loop([url], users, [(timing.rate, total)], t0))
    feedback = asyncio.create_task(feedback_client(url, users, items, timing.feedback_rate, total, prefix))
    undo = Undo()
    events: dict[str, Any] = {}
    try:
        await asyncio.sleep(timing.baseline_s)
        events["inject_at"] = time.monotonic() - t0
        events["inject"] = await asyncio.to_thread(fault.inject, settings, undo)
        events["injected_at"] = time.monotonic() - t0
        await asyncio.sleep(max(0.0, timing.baseline_s + fault.hold_s - (time.monotonic() - t0)))
        events["repair_at"] = time.monotonic() - t0
        events["repair"] = await asyncio.to_thread(fault.recover, settings, undo)
        events["repaired_at"] = time.monotonic() - t0
    finally:
        await asyncio.to_thread(undo.run)  # whatever the repair did not put back (e.g. it failed)
    print(f"  {events['inject']} at {events['inject_at']:.1f} s; {events['repair']} at {events['repaired_at']:.1f} s")
    return await load, await feedback, events


def is_good(answer: Answer) -> bool:
    return answer.status == 200 and not answer.degraded


def good_share(answers: list[Answer], start: float, seconds: float) -> tuple[float, bool]:
    """(share of good answers, any non-200) among the answers sent in [start, start + seconds)."""
    inside = [a for a in answers if start <= a.sent_s < start + seconds]
    if not inside:
        return 1.0, False
    return sum(map(is_good, inside)) / len(inside), any(a.status != 200 for a in inside)


def back_at(answers: list[Answer], since: float, end: float) -> float | None:
    """When answers were good again after ``since``: the end of the last WINDOW_S window (sliding by 1 s) with an
    error or under GOOD_SHARE good answers (``since`` when there was none; None when the run ended in one). A window
    and a share rather than "every answer", because the shared 2 cores degrade the odd answer with no fault at all
    (the baseline column shows how much)."""
    last_bad = None
    for start in np.arange(since, end - WINDOW_S + BUCKET_S, BUCKET_S):
        share, errors = good_share(answers, float(start), WINDOW_S)
        if errors or share < GOOD_SHARE:
            last_bad = float(start) + WINDOW_S
    if last_bad is not None and last_bad >= end:
        return None
    return since if last_bad is None else last_bad


def summarise(
    key: str, fault: Fault, answers: list[Answer], log: FeedbackLog, stored: dict[str, int], events: dict[str, Any]
) -> dict[str, Any]:
    statuses = Counter(a.status for a in answers)
    inject, repaired = events["inject_at"], events["repaired_at"]
    window_end = max(repaired, inject + 1.0)
    during = [a.latency_s * 1000 for a in answers if inject <= a.sent_s < window_end]
    end = max((a.sent_s for a in answers), default=inject)
    # Faults Serve repairs by itself count from the injection, the others from their repair.
    since = inject if fault.self_healing else repaired
    back = back_at(answers, since, end)
    before = np.arange(0, inject - WINDOW_S + BUCKET_S / 2, BUCKET_S)  # windows that end before the injection
    baseline = [good_share(answers, float(t), WINDOW_S)[0] for t in before if t + WINDOW_S <= inject]
    acked_rows = [stored.get(e, 0) for e in log.acked]
    return {
        "fault": fault.name,
        "key": key,
        "requests": len(answers),
        "statuses": {str(s): n for s, n in sorted(statuses.items())},
        "ok_200": statuses[200],
        "degraded": sum(a.degraded for a in answers),
        "degraded_before_fault": sum(a.degraded for a in answers if a.sent_s < inject),
        "s503": statuses[503],
        "other_5xx": sum(n for s, n in statuses.items() if s >= 500 and s != 503),
        "timeouts": statuses[0],
        "p99_ms_during_fault": round(float(np.percentile(during, 99)), 1) if during else None,
        "fault_window_s": round(window_end - inject, 1),
        "baseline_worst_window_good_pct": round(100 * min(baseline, default=1.0)),
        "recovery_from": "injection" if fault.self_healing else "repair",
        "recovery_s": None if back is None else round(back - since, 1),
        "bad_answers_after_inject": sum(1 for a in answers if a.sent_s >= inject and not is_good(a)),
        "feedback_sent": len(log.sent),
        "feedback_acked": len(log.acked),
        "feedback_rejected": len(log.rejected),
        "feedback_attempts": {str(s): n for s, n in sorted(log.attempts.items())},
        "feedback_other_5xx": sum(n for s, n in log.attempts.items() if s >= 500 and s != 503),
        "feedback_stored": sum(1 for rows in acked_rows if rows),
        "feedback_lost": sum(1 for rows in acked_rows if not rows),
        "feedback_duplicated": sum(rows - 1 for rows in stored.values() if rows > 1),
        "feedback_stored_unacked": sum(1 for e in stored if e not in log.acked),
        "timeline": events,
        "per_second": per_second(answers, end),
    }


def per_second(answers: list[Answer], end: float) -> list[list[float]]:
    """[second, sent, 200 not degraded, degraded, 503, other 5xx, no answer, p99 ms] per second of the run."""
    rows = []
    for start in np.arange(0, end + BUCKET_S, BUCKET_S):
        inside = [a for a in answers if start <= a.sent_s < start + BUCKET_S]
        if not inside:
            continue
        status = Counter(a.status for a in inside)
        p99 = float(np.percentile([a.latency_s * 1000 for a in inside], 99))
        rows.append(
            [
                float(start),
                len(inside),
                sum(1 for a in inside if is_good(a)),
                sum(a.degraded for a in inside),
                status[503],
                sum(n for code, n in status.items() if code >= 500 and code != 503),
                status[0],
                round(p99, 1),
            ]
        )
    return rows


COLUMNS = [
    ("fault", "fault", 24),
    ("requests", "requests", 8),
    ("200", "ok_200", 6),
    ("degr", "degraded", 5),
    ("503", "s503", 5),
    ("other 5xx", "other_5xx", 9),
    ("no answer", "timeouts", 9),
    ("p99 ms (fault)", "p99_ms_during_fault", 14),
    ("recovery s", "recovery_s", 10),
    ("base good%", "baseline_worst_window_good_pct", 10),
    ("fb acked", "feedback_acked", 8),
    ("fb 5xx!503", "feedback_other_5xx", 10),
    ("stored", "feedback_stored", 6),
    ("lost", "feedback_lost", 4),
    ("duplicated", "feedback_duplicated", 10),
]


def table(rows: list[dict[str, Any]]) -> str:
    lines = [" | ".join(f"{title:>{width}}" for title, _, width in COLUMNS)]
    lines.append("-+-".join("-" * width for _, _, width in COLUMNS))
    for row in rows:
        cells = []
        for _, key, width in COLUMNS:
            value = row.get(key)
            cells.append(f"{'-' if value is None else value!s:>{width}}")
        lines.append(" | ".join(cells))
    return "\n".join(lines)


# -- the suite ----------------------------------------------------------------------------------------------------
def write_figures(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    figures = {
        "scale": {"users": args.users, "items": args.items, "events": args.events},
        "rate": args.rate,
        "feedback_rate": args.feedback_rate,
        "baseline_s": args.baseline,
        "recovery_s": args.recovery,
        "faults": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # kill-proxy is left out by default: `recstack serve` puts its balancer (kill-front) on the API port, and in that
    # setup the suite found no Serve proxy process to kill (not investigated yet); name it to run it.
    default = [name for name in FAULTS if name != "kill-proxy"]
    parser.add_argument("--faults", nargs="+", choices=list(FAULTS), default=default)
    parser.add_argument("--home", type=Path, default=Path("/tmp/rs-faults-home"))
    parser.add_argument("--tmpfs-size", default="3G", help='size of the tmpfs the state folder is on ("" for none)')
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--items", type=int, default=600)
    parser.add_argument("--events", type=int, default=150_000)
    parser.add_argument("--rate", type=float, default=25, help="/recommend requests per second")
    parser.add_argument("--feedback-rate", type=float, default=5, help="feedback events per second")
    parser.add_argument("--baseline", type=float, default=10, help="seconds of load before each fault")
    parser.add_argument("--recovery", type=float, default=40, help="seconds of load after each repair")
    parser.add_argument("--keep", action="store_true", help="leave the stack running and the home in place")
    parser.add_argument(
        "--reuse", action="store_true", help="reuse the trained stack a --keep run left in --home (restarts it)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # cleanup below runs on `kill` too
    args.home = args.home.resolve()
    ports = args.home / "faults-ports.json"
    reuse = args.reuse and (args.home / MARKER).exists() and ports.exists()
    if reuse:
        mounted = is_tmpfs(args.home) is not None
        settings = Settings(home=args.home, **json.loads(ports.read_text()))
    else:
        mounted = make_home(args.home, args.tmpfs_size or None)
        settings = Settings(
            home=args.home, postgres_port=stack.free_port(), redis_port=stack.free_port(), serve_port=stack.free_port()
        )
        ports.write_text(json.dumps({k: getattr(settings, k) for k in ("postgres_port", "redis_port", "serve_port")}))
    env = stack_env(settings)
    url = f"http://127.0.0.1:{settings.serve_port}"
    rows: list[dict[str, Any]] = []
    try:
        started = time.monotonic()
        scale = ["--users", str(args.users), "--items", str(args.items), "--events", str(args.events)]
        if reuse:
            run([recstack_bin(), "down"], env, timeout_s=600)  # a fresh Serve with the current code
            run([recstack_bin(), "up"], env, timeout_s=600)
        else:
            prepare(env, scale)
        run([recstack_bin(), "serve", "--detach"], env, timeout_s=600)
        wait_healthy(settings, url, replicas=2)
        print(f"stack ready in {time.monotonic() - started:.0f} s at {url}", flush=True)
        users, items = sample(settings, "users", 2000), sample(settings, "items", 300)
        asyncio.run(open_loop([url], users, [(10, 5)]))  # warm-up
        timing = Timing(args.baseline, args.recovery, args.rate, args.feedback_rate)
        run_id = time.strftime("%H%M%S")
        for key in args.faults:
            fault = FAULTS[key]
            if key == "disk-full" and not mounted:
                rows.append({"fault": fault.name, "key": key, "skipped": "the state folder is not on a tmpfs"})
                continue
            healthy_s = wait_healthy(settings, url, replicas=2)
            print(f"{fault.name} (stack healthy after {healthy_s:.0f} s)", flush=True)
            prefix = f"faults-{run_id}-{key}"
            answers, log, events = asyncio.run(run_fault(settings, url, users, items, fault, prefix, timing))
            rows.append(summarise(key, fault, answers, log, stored_rows(settings, prefix), events))
            print(table(rows[-1:]), flush=True)
            write_figures(args, rows)  # after each fault: a failing suite keeps what it measured
    finally:
        if not args.keep:
            subprocess.run([recstack_bin(), "down"], env=env, timeout=600, check=False)
            if mounted:
                subprocess.run(["umount", str(args.home)], timeout=60, check=False)
            shutil.rmtree(args.home, ignore_errors=True)
    write_figures(args, rows)
    print()
    print(table([r for r in rows if "skipped" not in r]))
    for row in rows:
        if "skipped" in row:
            print(f"{row['fault']}: skipped ({row['skipped']})")
    print(f"figures in {args.out}")


if __name__ == "__main__":
    main()
