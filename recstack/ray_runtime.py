"""How recstack's processes reach Ray, for training and serving alike.

- With ``RAY_ADDRESS`` set, a cluster is joined. Every task, actor and Serve replica gets the ``RECSTACK_*`` settings
  through the job's runtime environment, so nodes that have only the image (no Secret mounted, no state folder)
  reach the same Postgres and Redis. The values travel inside Ray's job config and are never printed.
- Without it, a Ray runtime of this machine is started that listens on loopback only: Ray on Linux otherwise binds
  GCS, raylets and agents to every interface and advertises the host's address, which a laptop never needs.
"""

from __future__ import annotations

import os
import sys
from typing import Any

LOOPBACK = "127.0.0.1"
# Ray's own switch for "a single machine, not a cluster" (its default on macOS and Windows): node addresses resolve
# to loopback instead of the host's routable address, so every Ray process binds 127.0.0.1 (ray._private.services).
SINGLE_MACHINE_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
SETTINGS_PREFIX = "RECSTACK_"


def cluster_address() -> str | None:
    """The cluster RAY_ADDRESS names, or None for a runtime of this machine."""
    return os.environ.get("RAY_ADDRESS") or None


def settings_env() -> dict[str, str]:
    """The ``RECSTACK_*`` settings of this process, for the Ray workers that run its tasks and replicas."""
    return {k: v for k, v in os.environ.items() if k.startswith(SETTINGS_PREFIX)}


def runtime_env(extra: dict[str, str] | None = None) -> dict[str, Any]:
    return {"env_vars": {**settings_env(), **(extra or {})}}


def keep_on_loopback() -> dict[str, str]:
    """Make the Ray runtime this process starts (and every process it spawns) bind and advertise 127.0.0.1.

    Ray reads the switch into a module constant at import: when Ray is already imported, the constant is set too.
    Returns the environment a ``ray start`` subprocess needs for the same effect."""
    os.environ.update(SINGLE_MACHINE_ENV)
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = False  # type: ignore[attr-defined]
    return dict(SINGLE_MACHINE_ENV)


def allow_cluster() -> None:
    """Undo :func:`keep_on_loopback` in this process before it joins a cluster (nodes with routable addresses)."""
    os.environ.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = not constants.IS_WINDOWS_OR_OSX  # type: ignore[attr-defined]


def init(address: str | None = None, **kwargs: Any) -> None:
    """``ray.init`` for batch work and ``recstack serve``: the cluster ``address`` (default RAY_ADDRESS) names, with
    the settings in the runtime environment, else a new runtime of this process on loopback (never whichever
    `ray start` ran last)."""
    import ray

    address = address or cluster_address()
    if address is None:
        keep_on_loopback()
        kwargs.setdefault("_node_ip_address", LOOPBACK)
    else:
        allow_cluster()
    kwargs.setdefault("runtime_env", runtime_env())
    ray.init(address=address or "local", **kwargs)


def bind_replica_servers_to_loopback() -> None:
    """On a loopback runtime, bind this Serve replica's inter-deployment gRPC server to 127.0.0.1.

    Serve 2.60 binds it to ``[::]:0`` whatever the node's address (ray/serve/_private/replica.py, `_on_initialized`),
    after the replica's constructor has run: called from our deployments' constructors, this swaps the address the
    replica passes in. Peers reach a replica at its node's address, which is loopback here. A cluster's replicas
    (no loopback switch in their environment) are left alone."""
    if os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") != SINGLE_MACHINE_ENV["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"]:
        return
    try:
        from ray.serve._private import replica
    except ImportError:
        return
    original = getattr(replica, "add_port_to_grpc_server", None)
    if original is None or getattr(original, "loopback_only", False):
        return

    def add_port(server: Any, address: str) -> Any:
        if address.startswith("[::]:"):
            address = f"{LOOPBACK}:{address.removeprefix('[::]:')}"
        return original(server, address)

    add_port.loopback_only = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = add_port
