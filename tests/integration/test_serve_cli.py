"""`recstack serve --detach` as a user runs it, on the trained stack: it answers on the URL it prints, and none of
the Ray processes it starts listens beyond loopback (Ray on Linux binds every interface unless told otherwise)."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from collections.abc import Iterator

import psutil
import pytest
import requests

from recstack.settings import Settings
from tests.conftest import free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def detached(trained_stack: Settings) -> Iterator[tuple[str, str]]:
    from serving.cli import stop_local_ray

    port = free_port()
    env = {**os.environ, "RECSTACK_SERVE_PORT": str(port), "RECSTACK_STAGE_DEADLINE_MS": "3000"}
    env.pop("RAY_ADDRESS", None)
    result = subprocess.run(
        [sys.executable, "-m", "recstack.cli", "serve", "--detach"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    try:
        assert result.returncode == 0, result.stderr[-2000:]
        yield f"http://127.0.0.1:{port}", result.stdout
    finally:
        stop_local_ray(trained_stack)


def _listening(pids: set[int]) -> list[tuple[str, int, str]]:
    found = []
    for conn in psutil.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids:
            found.append((conn.laddr.ip, conn.laddr.port, psutil.Process(conn.pid).name()))
    return sorted(found)


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return (mapped or ip).is_loopback


def test_serve_detach_answers_and_ray_listens_on_loopback_only(
    detached: tuple[str, str], trained_stack: Settings
) -> None:
    from serving.cli import ray_processes, ray_temp_dir

    url, printed = detached
    assert url in printed, printed
    response = requests.post(f"{url}/recommend", json={"user_id": "u0000001", "k": 10}, timeout=30)
    assert response.status_code == 200, response.text
    assert len(response.json()["items"]) == 10
    processes = ray_processes(ray_temp_dir(trained_stack))
    pids = {p.pid for p in processes}
    for proc in processes:  # workers (Serve's proxy and replicas) are children of the raylet
        try:
            pids.update(child.pid for child in proc.children(recursive=True))
        except psutil.NoSuchProcess:
            continue
    sockets = _listening(pids)
    assert any(port for _, port, name in sockets if name == "gcs_server"), sockets
    exposed = [s for s in sockets if not _is_loopback(s[0])]
    assert not exposed, f"Ray processes listen beyond loopback: {exposed}"
