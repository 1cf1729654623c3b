"""Shared benchmark plumbing: a throwaway embedded stack on free ports, percentiles, figure output."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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
