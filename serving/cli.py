"""`recstack serve [--detach]`: the recommendation API on Ray Serve (a local Ray, dashboard on localhost only)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import typer

from recstack import ray_runtime, stack
from recstack.console import console
from recstack.settings import Settings, get_settings

APP_NAME = "recstack"


def _ray_bin() -> str:
    found = Path(sys.executable).with_name("ray")
    return str(found) if found.exists() else (shutil.which("ray") or "ray")


def ray_temp_dir(settings: Settings) -> Path:
    """This stack's own Ray folder (short: Ray's socket paths must fit in 107 bytes), so that its processes can be
    told from any other Ray on the machine."""
    import hashlib

    return Path(f"/tmp/rsray-{hashlib.sha1(str(settings.home.resolve()).encode()).hexdigest()[:10]}")


def local_ray_address(settings: Settings) -> str | None:
    """The address of the Ray that `serve --detach` started for this stack (None when there is none)."""
    info = stack.extra_state(settings).get("ray")
    return str(info["address"]) if isinstance(info, dict) and info.get("address") else None


def start_local_ray(settings: Settings) -> str:
    """A detached local Ray head for this stack (outlives this process) on its own port and folder, dashboard bound
    to 127.0.0.1; recorded for `down`. Never the machine's default Ray: other stacks and tests start their own."""
    known = local_ray_address(settings)
    if known:
        return known
    auth_mode = _ray_auth_mode()
    port = stack.free_port()
    cmd = [
        _ray_bin(),
        "start",
        "--head",
        "--port",
        str(port),
        "--temp-dir",
        str(ray_temp_dir(settings)),
        "--num-cpus",
        str(os.cpu_count() or 2),
        "--node-ip-address",
        ray_runtime.LOOPBACK,
        "--dashboard-host",
        ray_runtime.LOOPBACK,
        "--include-dashboard",
        "false",
        "--disable-usage-stats",
    ]
    # Feast points prometheus_client at a temp folder owned by (and deleted with) the importing process; the detached
    # Ray must not inherit it, or its workers outlive the folder and fail when Feast or our metrics write to it.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROMETHEUS_MULTIPROC", "PROMETHEUS_MULTIPROCESS"))}
    env.update(ray_serve_env(settings))
    env.update(ray_runtime.keep_on_loopback())  # every Ray process of this stack binds 127.0.0.1 only
    env["RAY_AUTH_MODE"] = auth_mode
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, env=env)
    if result.returncode != 0:
        raise stack.StackError(f"`ray start` failed: {result.stderr.strip().splitlines()[-1:]}")
    address = f"127.0.0.1:{port}"
    stack.record_extra(
        settings,
        "ray",
        {
            "started_by": "recstack serve",
            "at": time.time(),
            "address": address,
            "temp_dir": str(ray_temp_dir(settings)),
            "auth_mode": auth_mode,
        },
    )
    return address


def _ray_auth_mode() -> str:
    """How the stack's Ray authenticates: RAY_AUTH_MODE when the user set it, else token (Ray 2.60's default for a
    new local cluster; the token is generated once in ~/.ray/auth_token when missing, as ray.init() does).

    Decided here for both sides: left to Ray, `ray start` turns token auth on only when a token file exists (any
    earlier local ray.init(), e.g. `recstack train`, writes one) while a driver given an explicit address never
    does, so `serve --detach` after `train` failed with "Authentication token is missing or incorrect"."""
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode:
        return mode
    result = subprocess.run(  # prints the token: captured, never shown
        [_ray_bin(), "get-auth-token", "--generate"], capture_output=True, text=True, timeout=120, check=False
    )
    if result.returncode != 0:
        raise stack.StackError(f"`ray get-auth-token --generate` failed: {result.stderr.strip().splitlines()[-1:]}")
    return "token"


def connect_local_ray(settings: Settings, runtime_env: dict[str, Any]) -> None:
    """Connect this process to the stack's own Ray (started if needed) with the authentication it was started with."""
    import ray
    from ray._raylet import Config  # type: ignore[attr-defined]

    address = start_local_ray(settings)
    info = stack.extra_state(settings).get("ray")
    os.environ["RAY_AUTH_MODE"] = str(info.get("auth_mode", "disabled") if isinstance(info, dict) else "disabled")
    Config.initialize("")  # Ray caches its config (the auth mode) per process: re-read it, as Ray itself does
    ray_runtime.keep_on_loopback()  # this driver is a loopback node of that Ray too
    ray.init(address=address, _node_ip_address=ray_runtime.LOOPBACK, runtime_env=runtime_env, log_to_driver=False)


# Serve's controller replaces a dead HTTP proxy after 3 failed health checks in a row, one every
# RAY_SERVE_PROXY_HEALTH_CHECK_PERIOD_S (10 s by default, ray/serve/_private/proxy_state.py): with the default, a
# proxy killed under load left the API port refusing connections for about 33 s (bench/bench_faults.py). A dead
# actor fails its check at once, so every 2 s it is replaced in about 6 s plus its start; a check is one small RPC.
PROXY_HEALTH_CHECK_PERIOD_S = 2
# A replica's log records are written at once. RAY_SERVE_THROUGHPUT_OPTIMIZED buffers 1,000 of them before writing
# (ray/serve/_private/constants.py): an ingress's "feature lookup or ranking failed (...)" warnings, and even Serve's
# "Started initializing replica", were never written by a replica that logged fewer, nor by one killed before its
# buffer filled; a CI failure's replica log was empty. With access logs off, a healthy replica logs nothing a request.
LOG_BUFFER_RECORDS = 1


def ray_serve_env(settings: Settings) -> dict[str, str]:
    """Environment for the Ray processes that will run Serve (set before Ray starts: Serve reads it at import)."""
    return {
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1" if settings.serve_throughput_optimized else "0",
        "RAY_SERVE_PROXY_HEALTH_CHECK_PERIOD_S": str(PROXY_HEALTH_CHECK_PERIOD_S),
        "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": str(LOG_BUFFER_RECORDS),
    }


def restore_ctrl_c() -> None:
    """Ctrl-C raises KeyboardInterrupt again, whatever a library installed before (Ray Tune leaves its own handler);
    a SIGINT the shell ignores (a background job) stays ignored."""
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def ray_processes(folder: Path) -> list[Any]:
    """The running processes of the Ray whose folder is ``folder`` (each names it on its command line)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(str(folder) in part for part in proc.info["cmdline"] or []):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def stop_local_ray(settings: Settings) -> bool:
    """Stop the local Ray that `serve --detach` started for this stack (its processes only: `ray stop` would stop
    every Ray on the machine)."""
    info = stack.extra_state(settings).get("ray")
    if not info:
        return False
    import psutil

    mine = ray_processes(ray_temp_dir(settings))
    for proc in mine:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(mine, timeout=15)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    stack.record_extra(settings, "ray", None)
    return True


def wait_ready(url: str, timeout_s: float = 120) -> bool:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(1)
    return False


def serve(
    detach: bool = typer.Option(False, "--detach", help="Return once the API is ready; `recstack down` stops it."),
    mode: str | None = typer.Option(None, help="graph (one deployment per stage) or fused (one replica)."),
    host: str | None = typer.Option(None, help="Listen address (default RECSTACK_SERVE_HOST, 127.0.0.1)."),
    port: int | None = typer.Option(None, min=1, max=65535, help="HTTP port (default RECSTACK_SERVE_PORT, 8000)."),
) -> None:
    """Serve POST /recommend, /feedback, GET /items/{id}/similar, /healthz, /readyz, /metrics, /docs."""
    import ray

    from serving.app import build_app
    from serving.front import run_app

    settings = get_settings()
    if mode is not None and mode not in ("graph", "fused"):
        raise typer.BadParameter("must be graph or fused", param_hint="--mode")
    stack.check_postgres(settings)
    stack.check_redis(settings)
    host, port = host or settings.serve_host, port or settings.serve_port
    env = ray_runtime.runtime_env()
    if ray.is_initialized():  # e.g. `recstack demo` ran training in this process: serve from a fresh connection
        ray.shutdown()
    os.environ.update(ray_serve_env(settings))  # the local Ray started below inherits it
    if detach:
        connect_local_ray(settings, env)
    else:  # this process's own Ray on loopback, or the cluster RAY_ADDRESS names
        ray_runtime.init(include_dashboard=False, runtime_env=env, log_to_driver=False)
    # On a local Ray the API port is the balancer over the replicas' own servers (serving/front.py): Serve's proxy
    # costs ~6 ms of CPU a request; on a cluster (RAY_ADDRESS) a load balancer points at the replicas instead.
    front = (
        settings.serve_front and settings.serve_throughput_optimized and (detach or not os.environ.get("RAY_ADDRESS"))
    )
    proxy_port = run_app(build_app({"mode": mode or settings.serve_mode}), host, port, APP_NAME, front)
    url = f"http://{host}:{port}"
    if not wait_ready(url):
        console.print(f"[yellow]the API at {url} is not ready yet (see {url}/readyz)[/]")
    else:
        console.print(f"serving at {url} (docs {url}/docs), mode {mode or settings.serve_mode}")
        if front:
            console.print(f"Serve's own proxy at http://{host}:{proxy_port}")
    if detach:
        return
    restore_ctrl_c()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        # The local Ray was started by this process: stopping it stops Serve with it, at once (serve.shutdown()
        # waits up to 30 s for its controller's graceful shutdown here).
        ray.shutdown()
        console.print("API stopped")
