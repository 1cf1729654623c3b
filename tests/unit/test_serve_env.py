"""The environment `recstack serve` starts Ray with (serving/cli.py, ``ray_serve_env``), and the image's copy of it."""

from __future__ import annotations

import re
from pathlib import Path

from recstack.settings import Settings
from serving.cli import ray_serve_env

INFRA = Path(__file__).resolve().parents[2] / "infra"


def test_a_dead_serve_proxy_is_replaced_within_seconds() -> None:
    """Serve replaces a dead proxy after 3 failed health checks; at the default period (10 s) the API port refused
    connections for ~33 s after a kill -9 of the proxy (bench/bench_faults.py)."""
    from ray.serve._private.constants import PROXY_HEALTH_CHECK_UNHEALTHY_THRESHOLD

    period = float(ray_serve_env(Settings())["RAY_SERVE_PROXY_HEALTH_CHECK_PERIOD_S"])
    assert period * PROXY_HEALTH_CHECK_UNHEALTHY_THRESHOLD <= 10


def test_the_image_and_the_vm_cluster_set_the_same_serve_environment() -> None:
    expected = ray_serve_env(Settings(serve_throughput_optimized=True))
    image = dict(re.findall(r"\b(RAY_SERVE_[A-Z_]+)=(\S+)", (INFRA / "Dockerfile").read_text()))
    assert image == expected
    starts = [line for line in (INFRA / "ray" / "cluster.yaml").read_text().splitlines() if "ray start" in line]
    assert len(starts) == 2
    for line in starts:
        assert dict(re.findall(r"\b(RAY_SERVE_[A-Z_]+)=(\S+)", line)) == expected, line
