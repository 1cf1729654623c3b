"""The one URL `recstack serve` prints, on the fast path: a TCP balancer over the ingress replicas' own HTTP servers.

With RAY_SERVE_THROUGHPUT_OPTIMIZED, Ray Serve starts an HTTP server in every ingress replica (direct ingress) and
lists them as target groups (``ServeController.get_target_groups``: the replicas, or Serve's proxy while an app has
none), which is what a cluster load balancer is pointed at. On one machine there is no load balancer, and Serve's
proxy costs about 6 ms of CPU a request: on ml-latest-small it saturated at 100 requests/s where the replicas'
own servers answered 100 rps with p99 26 ms (bench/reference/serving-ml-latest-small-9326c92.json). So `recstack
serve` puts this balancer on the API port: each connection goes to the next target, round robin, and bytes are
copied both ways (no HTTP parsing: a few syscalls a request). Targets are re-read every TARGETS_REFRESH_S; a target
that refuses the connection is skipped for the next one. It runs as a detached Ray actor of the stack's Ray, so it
lives and stops with it (`recstack down`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
from typing import Any

log = logging.getLogger("recstack.serving.front")

TARGETS_REFRESH_S = 2.0
CONNECT_TIMEOUT_S = 2.0
CHUNK = 65536
ACTOR_NAME = "recstack-front"


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy ``reader`` to ``writer`` until the end of the stream, then half-close ``writer``."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


class Balancer:
    """Round-robin TCP forwarding to ``targets`` (``host:port`` strings), replaced by ``Front._refresh``."""

    def __init__(self, targets: list[str] | None = None) -> None:
        self.targets: list[str] = list(targets or [])
        self._turn = itertools.count()

    def order(self) -> list[str]:
        """The targets to try for the next connection: the next in turn first, then the others."""
        if not self.targets:
            return []
        start = next(self._turn) % len(self.targets)
        return self.targets[start:] + self.targets[:start]

    async def handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        upstream = None
        for target in self.order():
            host, _, port = target.rpartition(":")
            try:
                upstream = await asyncio.wait_for(asyncio.open_connection(host, int(port)), CONNECT_TIMEOUT_S)
                break
            except (OSError, TimeoutError) as err:
                log.debug("target %s refused (%s)", target, err)
        if upstream is None:  # nothing to forward to: the client sees the connection close
            client_writer.close()
            return
        up_reader, up_writer = upstream
        try:
            await asyncio.gather(pipe(client_reader, up_writer), pipe(up_reader, client_writer))
        finally:
            for writer in (up_writer, client_writer):
                with contextlib.suppress(Exception):
                    writer.close()


def target_ports(app_name: str, replicas_only: bool = False) -> list[int]:
    """Ports of the HTTP targets Serve lists for ``app_name``: its ingress replicas' servers, or its proxy while the app
    has no replica (``replicas_only``: none then). On one machine they all listen on the serve host."""
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    groups: list[Any] = ray.get(controller.get_target_groups.remote(app_name), timeout=10)
    targets = [t for g in groups if str(g.protocol).upper().endswith("HTTP") for t in g.targets]
    if replicas_only and any("proxy" in t.name.lower() for t in targets):
        return []
    return [int(t.port) for t in targets]


class Front:
    """The Ray actor: the balancer listening on ``host:port`` on its own thread's event loop (bound in the constructor,
    so a restarted actor listens again), its targets re-read from Serve."""

    def __init__(self, host: str, port: int, app_name: str, proxy_port: int) -> None:
        self.host, self.port, self.app_name = host, port, app_name
        self.connect_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        self.fallback = f"{self.connect_host}:{proxy_port}"
        self.balancer = Balancer([self.fallback])
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="front", daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._listen(), self.loop).result(timeout=30)

    async def _listen(self) -> None:
        await asyncio.start_server(self.balancer.handle, self.host, self.port, reuse_address=True, backlog=1024)
        self.loop.create_task(self._refresh())

    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def _refresh(self) -> None:
        while True:
            try:
                ports = await asyncio.to_thread(target_ports, self.app_name)
                self.balancer.targets = [f"{self.connect_host}:{p}" for p in ports] or [self.fallback]
            except Exception as err:  # Serve restarting: keep the last targets
                log.debug("targets not refreshed (%s)", err)
            await asyncio.sleep(TARGETS_REFRESH_S)


def start_front(host: str, port: int, app_name: str, proxy_port: int) -> str:
    """Start (or find) the stack's balancer on ``host:port`` in the connected Ray; ``proxy_port``: Serve's proxy, the
    target until the app's replicas are listed."""
    import ray

    actor: Any = (
        ray.remote(Front)
        .options(
            name=ACTOR_NAME, namespace="recstack", lifetime="detached", get_if_exists=True, num_cpus=0, max_restarts=-1
        )
        .remote(host, port, app_name, proxy_port)
    )
    return str(ray.get(actor.address.remote(), timeout=60))


# Serve's controller replaces a proxy that fails 3 readiness checks (5 s each) in a row; on a machine busy with
# training (load average > 3 on the 2 cores) the first proxy was replaced while `serve.start` waited on it, and
# `recstack serve` failed with ActorDiedError although the controller had started another proxy.
SERVE_START_TRIES = 3


def start_serve(http_options: dict[str, Any]) -> None:
    """``serve.start``, again when the proxy it waited for was replaced (the next call finds the running controller
    and its new proxy)."""
    from ray import serve
    from ray.exceptions import ActorDiedError

    for attempt in range(1, SERVE_START_TRIES + 1):
        try:
            serve.start(http_options=http_options)
            return
        except ActorDiedError as err:
            if attempt == SERVE_START_TRIES:
                raise
            log.warning("Serve's proxy was replaced while starting (%s); waiting for the next one", err)


def run_app(app: Any, host: str, port: int, app_name: str, front: bool) -> int:
    """Serve ``app`` on the connected Ray with its URL on ``host:port``: with ``front``, Serve's proxy on a free port
    and this balancer on the API port (what `recstack serve` does on a local Ray, and bench_serving's "-front"
    modes); without, Serve's proxy on the API port. Returns the proxy's port."""
    from ray import serve

    from recstack import stack

    proxy_port = stack.free_port() if front else port
    start_serve({"host": host, "port": proxy_port})
    serve.run(app, name=app_name, route_prefix="/", blocking=False)
    if front:
        start_front(host, port, app_name, proxy_port)
    return proxy_port
