"""Shared benchmark plumbing: a throwaway embedded stack on free ports, an open-loop HTTP load, percentiles, figure
output."""

from __future__ import annotations

import asyncio
import json
import random
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import numpy as np

from recstack import stack
from recstack.settings import Settings, get_settings
from recstack.stack import free_port


@contextmanager
def bench_stack(use_configured: bool) -> Iterator[Settings]:
    """The configured stack (RECSTACK_*), or a fresh embedded one in a temporary home that is stopped afterwards."""
    if use_configured:
        settings = get_settings()
    else:
        home = Path(tempfile.mkdtemp(prefix="recstack-bench-"))
        settings = Settings(home=home, postgres_port=free_port(), redis_port=free_port())
    stack.up(settings)
    try:
        yield settings
    finally:
        if not use_configured:
            stack.down(settings)


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    values = np.asarray(seconds) * 1000
    return {f"p{q}": round(float(np.percentile(values, q)), 3) for q in (50, 95, 99)}


def report(figures: dict[str, object], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2))
    for key, value in figures.items():
        print(f"{key:40s} {value}")


class Answer(NamedTuple):
    sent_s: float  # since the load's t0
    latency_s: float
    status: int  # 0: no HTTP answer (timeout, connection error)
    degraded: bool
    cached: bool = False  # answered from the result cache


async def open_loop(
    urls: list[str], users: list[str], phases: list[tuple[float, float]], t0: float | None = None
) -> list[Answer]:
    """POST /recommend on a fixed schedule, whatever the answers do (no coordinated omission): ``phases`` is
    (requests per second, seconds) in order, requests go round robin over ``urls`` for a random one of ``users``."""
    import aiohttp

    t0 = time.monotonic() if t0 is None else t0
    answers: list[Answer] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512)) as session:

        async def one(url: str, user: str) -> None:
            sent = time.monotonic()
            try:
                async with session.post(
                    f"{url}/recommend", json={"user_id": user, "k": 10}, timeout=aiohttp.ClientTimeout(total=30)
                ) as response:
                    status, text = response.status, await response.text()
            except (TimeoutError, aiohttp.ClientError):
                status, text = 0, ""
            latency = time.monotonic() - sent
            try:  # a 503 from Serve's proxy (load shed) is plain text
                body = json.loads(text) if status else None
            except ValueError:
                body = None
            degraded = bool(isinstance(body, dict) and body.get("degraded"))
            cached = bool(isinstance(body, dict) and body.get("cached"))
            answers.append(Answer(sent - t0, latency, status, degraded, cached))

        tasks: list[asyncio.Task[None]] = []
        start = time.monotonic()
        for rate, seconds in phases:
            for i in range(int(rate * seconds)):
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(urls[len(tasks) % len(urls)], random.choice(users))))
            start += seconds
        await asyncio.gather(*tasks)
    return answers
