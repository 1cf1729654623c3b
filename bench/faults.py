"""The faults of the fault suite (bench/bench_faults.py): each one breaks one part of a running stack and undoes it.

Every fault finds its target among *this stack's* processes only (the embedded Postgres and Redis by the pids in
``$RECSTACK_HOME/stack.json``, Ray's workers as descendants of the raylet whose command line names this stack's Ray
folder), so other stacks on the machine are never touched. Whatever a fault stopped or filled is recorded in
:class:`Undo` as it happens, so the suite's cleanup restores it even when a run fails half way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from recstack import stack
from recstack.settings import Settings
from serving.cli import APP_NAME, ray_processes, ray_temp_dir


@dataclass
class Undo:
    """What must be put back whatever happens: stopped processes, filler files, a shrunk tmpfs."""

    stopped: list[int] = field(default_factory=list)
    fillers: list[Path] = field(default_factory=list)
    tmpfs_size: tuple[Path, str] | None = None  # (mount point, size to restore)

    def run(self) -> None:
        for pid in self.stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.stopped.clear()
        for filler in self.fillers:
            filler.unlink(missing_ok=True)
        self.fillers.clear()
        if self.tmpfs_size is not None:
            mount_point, size = self.tmpfs_size
            remount(mount_point, size)
            self.tmpfs_size = None


@dataclass
class Fault:
    """One fault: ``inject`` breaks, ``hold_s`` later ``recover`` repairs (a no-op when the platform repairs itself,
    e.g. Serve restarting a killed actor). Both return a short note of what they did."""

    name: str
    inject: Callable[[Settings, Undo], str]
    recover: Callable[[Settings, Undo], str]
    hold_s: float
    self_healing: bool = False  # the platform repairs it (``recover`` only waits): recovery counts from injection


# -- this stack's processes -------------------------------------------------------------------------------------
def ray_workers(settings: Settings, title: str) -> list[psutil.Process]:
    """This stack's Ray worker processes whose title contains ``title`` (Ray retitles a worker ``ray::<Actor>``,
    which hides the Ray folder from its command line: they are found as descendants of this Ray's raylet)."""
    found: list[psutil.Process] = []
    for raylet in ray_processes(ray_temp_dir(settings)):
        try:
            if "raylet" not in raylet.name():
                continue
            for child in raylet.children(recursive=True):
                if title in " ".join(child.cmdline()):
                    found.append(child)
        except psutil.Error:
            continue
    return found


def replica_title() -> str:
    return f"ServeReplica:{APP_NAME}:Ingress"


def _embedded_pid(settings: Settings, name: str) -> int:
    pid = stack._read_state(settings).get(name, {}).get("pid")
    if not isinstance(pid, int) or not psutil.pid_exists(pid):
        raise RuntimeError(f"no running embedded {name} recorded in {settings.home / 'stack.json'}")
    return pid


# -- the faults -------------------------------------------------------------------------------------------------
def kill_replica(settings: Settings, undo: Undo) -> str:
    """kill -9 one of the API's (fused Ingress) replicas; Serve's controller starts a new one."""
    replicas = ray_workers(settings, replica_title())
    if len(replicas) < 2:
        raise RuntimeError(f"expected 2 or more API replicas, found {len(replicas)}")
    victim = replicas[0]
    victim.kill()
    return f"killed replica pid {victim.pid} ({len(replicas)} were running)"


def kill_proxy(settings: Settings, undo: Undo) -> str:
    """kill -9 Serve's HTTP proxy actor; Serve's controller starts a new one on the same port."""
    proxies = ray_workers(settings, "ProxyActor")
    if not proxies:
        raise RuntimeError("no Serve proxy process found")
    proxies[0].kill()
    return f"killed proxy pid {proxies[0].pid}"


def kill_front(settings: Settings, undo: Undo) -> str:
    """kill -9 the balancer on the API port (serving/front.py, the URL `recstack serve` prints); Ray restarts the
    actor, which binds the port again in its constructor."""
    fronts = ray_workers(settings, "ray::Front")
    if not fronts:
        raise RuntimeError("no balancer (ray::Front) process found: was the stack served with RECSTACK_SERVE_FRONT?")
    fronts[0].kill()
    return f"killed balancer pid {fronts[0].pid}"


def stop_redis(settings: Settings, undo: Undo) -> str:
    """SIGSTOP the embedded Redis: it keeps its sockets open but answers nothing (hung, not dead)."""
    pid = _embedded_pid(settings, "redis")
    undo.stopped.append(pid)
    os.kill(pid, signal.SIGSTOP)
    return f"SIGSTOP redis pid {pid}"


def continue_redis(settings: Settings, undo: Undo) -> str:
    undo.run()
    return "SIGCONT redis"


def stop_postgres(settings: Settings, undo: Undo) -> str:
    """Postgres restart, first half: a fast shutdown (open connections are cut, committed data is kept)."""
    pid = _embedded_pid(settings, "postgres")
    stack._stop_postgres(settings, pid)
    return f"stopped postgres pid {pid}"


def start_postgres(settings: Settings, undo: Undo) -> str:
    """Postgres restart, second half: `recstack up` starts it again on the same port and data."""
    stack.up(settings)
    return f"started postgres pid {_embedded_pid(settings, 'postgres')}"


def remount(mount_point: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mount_point)], check=True, timeout=30)


def fill_state_disk(settings: Settings, undo: Undo) -> str:
    """Fill the tmpfs the state folder is mounted on: shrink it to its use plus a little, then write a filler file
    until the file system says ENOSPC (bounded: at most 1 GiB written)."""
    home = settings.home
    mounted = is_tmpfs(home)
    if mounted is None:
        raise RuntimeError(f"{home} is not a tmpfs mount point: the disk-full fault needs one")
    used = _used_bytes(home)
    undo.tmpfs_size = (home, mounted)
    remount(home, str(used + 16 * 2**20))
    filler = home / "disk-filler"
    undo.fillers.append(filler)
    written = 0
    chunk = b"\0" * 2**20
    with open(filler, "wb", buffering=0) as out:
        while written < 2**30:
            try:
                written += out.write(chunk)
            except OSError:
                break
    left = os.statvfs(home)
    return f"state tmpfs full: {written / 2**20:.0f} MiB filler, {left.f_bavail * left.f_frsize} bytes left"


def free_state_disk(settings: Settings, undo: Undo) -> str:
    undo.run()
    return "filler removed, tmpfs size restored"


def is_tmpfs(path: Path) -> str | None:
    """The ``size=`` of the tmpfs mounted exactly at ``path`` (None: not a tmpfs mount point)."""
    for line in Path("/proc/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[1] == str(path.resolve()) and parts[2] == "tmpfs":
            opts = dict(o.partition("=")[::2] for o in parts[3].split(","))
            return opts.get("size") or "50%"
    return None


def _used_bytes(path: Path) -> int:
    info = os.statvfs(path)
    return (info.f_blocks - info.f_bfree) * info.f_frsize


def _nothing(settings: Settings, undo: Undo) -> str:
    return "(Serve or Ray restarts it by itself)"


def _restart_now(settings: Settings, undo: Undo) -> str:
    return start_postgres(settings, undo)


FAULTS: dict[str, Fault] = {
    "kill-replica": Fault("kill -9 one API replica", kill_replica, _nothing, hold_s=10, self_healing=True),
    "redis-stop": Fault("SIGSTOP Redis 10 s", stop_redis, continue_redis, hold_s=10),
    "postgres-restart": Fault("restart Postgres", stop_postgres, _restart_now, hold_s=0),
    "kill-proxy": Fault("kill -9 Serve proxy", kill_proxy, _nothing, hold_s=10, self_healing=True),
    "kill-front": Fault("kill -9 the API port's balancer", kill_front, _nothing, hold_s=10, self_healing=True),
    "disk-full": Fault("state disk full 15 s", fill_state_disk, free_state_disk, hold_s=15),
}
