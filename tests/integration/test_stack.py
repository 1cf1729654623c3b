"""The stack manager against the real embedded servers: up/status/down and external-server errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from recstack import stack
from recstack.settings import Settings
from tests.conftest import free_port

pytestmark = pytest.mark.integration


def recstack_cli(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "recstack.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture()
def own_env(tmp_path: Path) -> dict[str, str]:
    """A private home and ports, so this test's servers are its own."""
    return {
        "RECSTACK_HOME": str(tmp_path / "home"),
        "RECSTACK_POSTGRES_PORT": str(free_port()),
        "RECSTACK_REDIS_PORT": str(free_port()),
    }


def test_up_is_idempotent_and_down_leaves_no_server(own_env: dict[str, str]) -> None:
    first = recstack_cli("up", env=own_env)
    assert first.returncode == 0, first.stderr
    try:
        status = recstack_cli("status", "--json", env=own_env)
        assert status.returncode == 0, status.stderr
        servers = json.loads(status.stdout)
        assert {s["mode"] for s in servers.values()} == {"embedded"}
        assert all(s["running"] for s in servers.values())
        pids = {name: s["pid"] for name, s in servers.items()}
        assert all(psutil.pid_exists(p) for p in pids.values())

        second = recstack_cli("up", env=own_env)
        assert second.returncode == 0, second.stderr
        again = json.loads(recstack_cli("status", "--json", env=own_env).stdout)
        assert {name: s["pid"] for name, s in again.items()} == pids  # reported, not restarted

        # The servers outlive the CLI process that started them, and the schema is there.
        settings = Settings(**{k.removeprefix("RECSTACK_").lower(): v for k, v in own_env.items()})
        import psycopg

        with psycopg.connect(stack.postgres_dsn(settings)) as conn:
            tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
            assert {"users", "items", "events", "schema_migrations"} <= tables
            assert conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone()
    finally:
        down = recstack_cli("down", env=own_env)
    assert down.returncode == 0, down.stderr
    deadline = time.monotonic() + 10
    while any(psutil.pid_exists(p) for p in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(psutil.pid_exists(p) for p in pids.values())
    assert recstack_cli("status", env=own_env).returncode == 1


def test_the_online_store_survives_down_and_up(own_env: dict[str, str]) -> None:
    """Redis keeps what `feast materialize` wrote across `recstack down` / `recstack up` (snapshot on shutdown)."""
    settings = Settings(**{k.removeprefix("RECSTACK_").lower(): v for k, v in own_env.items()})
    assert recstack_cli("up", env=own_env).returncode == 0
    try:
        with stack.redis_client(settings) as client:
            client.hset("recstack-test", mapping={"feature": "value"})
        assert recstack_cli("down", env=own_env).returncode == 0
        assert recstack_cli("up", env=own_env).returncode == 0
        with stack.redis_client(settings) as client:
            assert client.hgetall("recstack-test") == {b"feature": b"value"}
    finally:
        recstack_cli("down", env=own_env)


def test_up_waits_for_redis_to_read_its_snapshot_back(own_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A restarted Redis answers LOADING until its snapshot is read (15 s for a 1M-user online store): `up` waits for
    it instead of reporting a server that did not start and leaving it running. The start wait is cut to 0.2 s so a
    small snapshot shows it here."""
    settings = Settings(**{k.removeprefix("RECSTACK_").lower(): v for k, v in own_env.items()})
    assert recstack_cli("up", env=own_env).returncode == 0
    try:
        with stack.redis_client(settings) as client:
            client.execute_command("DEBUG", "POPULATE", 2_000_000, "recstack-test")
        assert recstack_cli("down", env=own_env).returncode == 0
        monkeypatch.setattr(stack, "REDIS_START_S", 0.2)
        stack.up(settings)
        with stack.redis_client(settings) as client:
            assert client.dbsize() == 2_000_000
    finally:
        recstack_cli("down", env=own_env)


def test_a_redis_port_in_use_is_named_and_leaves_nothing_running(own_env: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", int(own_env["RECSTACK_REDIS_PORT"])))
        taken.listen(1)
        try:
            result = recstack_cli("up", env=own_env)
        finally:
            recstack_cli("down", env=own_env)
    assert result.returncode == 1
    assert "Redis did not start" in result.stderr and "Failed listening" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    running = [
        p
        for p in psutil.process_iter(["cmdline"])
        if own_env["RECSTACK_REDIS_PORT"] in " ".join(p.info["cmdline"] or [])
    ]
    assert not running


def test_unreachable_external_postgres_is_one_line_without_password(own_env: dict[str, str]) -> None:
    port = free_port()  # nothing listens there
    env = {**own_env, "RECSTACK_POSTGRES_DSN": f"postgresql://app:hunter2@127.0.0.1:{port}/reco"}
    started = time.monotonic()
    result = recstack_cli("up", env=env)
    assert time.monotonic() - started < 15
    assert result.returncode == 1
    assert f"127.0.0.1:{port}" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    home = Path(own_env["RECSTACK_HOME"])
    assert not (home / "postgres").exists() and not (home / "redis").exists()  # nothing embedded was started


def test_hung_external_redis_times_out_within_seconds(own_env: dict[str, str]) -> None:
    with socket.socket() as hung:  # accepts TCP connections but never answers
        hung.bind(("127.0.0.1", 0))
        hung.listen(5)
        port = hung.getsockname()[1]
        env = {**own_env, "RECSTACK_REDIS_URL": f"redis://:pw@127.0.0.1:{port}/0", "RECSTACK_CONNECT_TIMEOUT_S": "2"}
        started = time.monotonic()
        result = recstack_cli("status", env=env)
        elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert elapsed < 15
    assert f"127.0.0.1:{port}" in result.stdout + result.stderr


def test_external_servers_are_used_instead_of_embedded(stack_settings: Settings, own_env: dict[str, str]) -> None:
    env = {
        **own_env,
        "RECSTACK_POSTGRES_DSN": stack.postgres_dsn(stack_settings),
        "RECSTACK_REDIS_URL": stack.redis_url(stack_settings),
    }
    result = recstack_cli("up", env=env)
    assert result.returncode == 0, result.stderr
    servers = json.loads(recstack_cli("status", "--json", env=env).stdout)
    assert {s["mode"] for s in servers.values()} == {"external"}
    assert all(s["running"] and s["pid"] is None for s in servers.values())
    assert not (Path(own_env["RECSTACK_HOME"]) / "postgres").exists()
    assert recstack_cli("down", env=env).returncode == 0
    assert all(s["running"] for s in json.loads(recstack_cli("status", "--json", env=env).stdout).values())


def _py(code: str, home: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "RECSTACK_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""


START = (  # as `serve --detach` connects (the address printed as JOIN prints it, so the two compare)
    "import ray; from recstack.settings import get_settings; from serving.cli import connect_local_ray as c; "
    "c(get_settings(), {}); print(ray.get_runtime_context().gcs_address); ray.shutdown()"
)
STOP = (
    "from recstack.settings import get_settings; from serving.cli import stop_local_ray as s; print(s(get_settings()))"
)
JOIN = (
    "import ray; from training.batch import ensure_ray; ensure_ray(); "
    "print(ray.get_runtime_context().gcs_address); ray.shutdown()"
)


def test_a_detached_serve_ray_belongs_to_its_stack_alone(tmp_path: Path) -> None:
    """`serve --detach` starts a Ray that training and tests never join by accident, and `down` stops that one
    only: before, it took Ray's default slot (every later ray.init() joined it) and `down` ran `ray stop --force`."""
    from serving.cli import ray_processes as _ray_processes
    from serving.cli import ray_temp_dir

    a, b = tmp_path / "a", tmp_path / "b"
    folder_a, folder_b = (ray_temp_dir(Settings(home=h)) for h in (a, b))
    try:
        # A local ray.init() first: it leaves a token file, after which `ray start` turned token auth on and
        # `serve --detach`'s connection (no token: Ray never sends one to an explicit address) was refused.
        _py(JOIN, tmp_path / "c")
        address_a, address_b = _py(START, a), _py(START, b)
        assert address_a != address_b
        assert _py(START, a) == address_a, "a second serve --detach must join the stack's Ray, not start another"
        assert _py(JOIN, tmp_path / "c") not in (address_a, address_b)  # a new process starts its own Ray
        assert _ray_processes(folder_a) and _ray_processes(folder_b)
        assert _py(STOP, a) == "True"
        assert not _ray_processes(folder_a)
        assert _ray_processes(folder_b), "stopping one stack's Ray stopped another's"
    finally:
        _py(STOP, a), _py(STOP, b)
    assert not _ray_processes(folder_b)
