"""recstack on a multi-node Ray cluster, on this machine: a head and two workers started with `ray start`, each with
its own CPUs, temp dir and a custom resource, the stores addressed by DSN as on a cluster, the nodes given no
RECSTACK_* setting (what reaches them travels in the job's runtime environment).

- `RAY_ADDRESS=... recstack train`: Tune trials and feature-join tasks run on several nodes, and the registered
  model is readable from every node;
- `serve deploy` of the committed Serve config through the dashboard's REST API (what KubeRay does), the ranking
  stage on a worker node: `/recommend` answers with the promoted model;
- a worker node killed under a bounded loopback load: no 5xx but 503, and normal answers again once Serve has
  replaced the replicas (time to recover printed).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
import yaml

from recstack import ray_runtime, stack
from recstack.settings import Settings
from recstack.tables import registry
from tests.conftest import free_port, load_featured

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
WORKERS = ("w1", "w2")
# The graph needs 1.75 CPUs at one replica a deployment (serving/app.py DEPLOYMENT_SIZES): after a worker is lost,
# the head (1 CPU) and the other worker must still hold every replica, the Ranker on the worker.
WORKER_CPUS = 2


@dataclass
class Cluster:
    address: str  # host:port of the head's GCS
    dashboard: str  # http://127.0.0.1:port
    folders: dict[str, Path]  # node name -> its Ray temp dir
    node_ids: dict[str, str] = field(default_factory=dict)  # node name -> Ray node id

    def node_name(self, node_id: str) -> str:
        return next((name for name, known in self.node_ids.items() if known == node_id), node_id)


def _ray_bin() -> str:
    return str(Path(sys.executable).with_name("ray"))


def _node_env() -> dict[str, str]:
    """What a cluster node's image has: no RECSTACK_* setting, no loopback switch, no driver's RAY_ADDRESS."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith((ray_runtime.SETTINGS_PREFIX, "PROMETHEUS_MULTIPROC", "RAY_"))
    }
    env["RAY_AUTH_MODE"] = "disabled"
    return env


def _processes(folder: Path) -> list[Any]:
    """Every process of the node whose temp dir is ``folder``: those naming it, and the raylet's children."""
    import psutil

    from serving.cli import ray_processes

    found = {p.pid: p for p in ray_processes(folder)}
    for proc in list(found.values()):
        with contextlib.suppress(psutil.NoSuchProcess):
            found.update({c.pid: c for c in proc.children(recursive=True)})
    return list(found.values())


def _kill(folder: Path) -> None:
    import psutil

    procs = _processes(folder)
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(procs, timeout=10)


def _ray_start(args: list[str], folder: Path) -> str:
    result = subprocess.run(
        [
            _ray_bin(),
            "start",
            "--temp-dir",
            str(folder),
            "--node-ip-address",
            "127.0.0.1",
            "--disable-usage-stats",
            *args,
        ],
        env=_node_env(),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-1500:] + result.stderr[-1500:]
    return result.stdout


@pytest.fixture(scope="module")
def cluster_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Stores of the cluster's own (the session's stack keeps its data and model): features built, Feast applied and
    materialized, no model yet: the cluster trains the first one."""
    from recstack.ingest.synthetic import generate

    settings = Settings(
        home=tmp_path_factory.mktemp("cluster-stack"), postgres_port=free_port(), redis_port=free_port()
    )
    stack.up(settings)
    try:
        load_featured(settings, generate(users=600, items=300, events=40_000, seed=11))
        yield settings
    finally:
        stack.down(settings)


@pytest.fixture(scope="module")
def cluster(cluster_stack: Settings) -> Iterator[Cluster]:
    tag = os.urandom(3).hex()
    folders = {name: Path(f"/tmp/rsc-{tag}-{name}") for name in ("head", *WORKERS)}
    port, dashboard_port = free_port(), free_port()
    try:
        _ray_start(
            [
                "--head",
                "--port",
                str(port),
                "--num-cpus",
                "1",
                "--resources",
                '{"head": 1}',
                "--include-dashboard",
                "true",
                "--dashboard-host",
                "127.0.0.1",
                "--dashboard-port",
                str(dashboard_port),
            ],
            folders["head"],
        )
        address = f"127.0.0.1:{port}"
        for name in WORKERS:
            _ray_start(
                ["--address", address, "--num-cpus", str(WORKER_CPUS), "--resources", f'{{"worker": 1, "{name}": 1}}'],
                folders[name],
            )
        found = Cluster(address=address, dashboard=f"http://127.0.0.1:{dashboard_port}", folders=folders)
        found.node_ids = _wait_for_nodes(found, expected=3)
        yield found
    finally:
        for folder in folders.values():
            _kill(folder)
            shutil.rmtree(folder, ignore_errors=True)


def _wait_for_nodes(found: Cluster, expected: int) -> dict[str, str]:
    from ray.util.state import list_nodes

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        nodes = [n for n in list_nodes(address=found.dashboard) if n.state == "ALIVE"]
        if len(nodes) >= expected:
            names = {}
            for node in nodes:
                resources = node.resources_total or {}
                name = "head" if "head" in resources else next(w for w in WORKERS if w in resources)
                names[name] = node.node_id
            return names
        time.sleep(1)
    raise AssertionError(f"{expected} nodes did not join")


def _driver_env(settings: Settings, home: Path, cluster: Cluster) -> dict[str, str]:
    """A driver pointed at the cluster and the stores only (a fresh RECSTACK_HOME, no local state)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith((ray_runtime.SETTINGS_PREFIX, "RAY_"))}
    env.update(
        {
            "RAY_ADDRESS": cluster.address,
            "RAY_AUTH_MODE": "disabled",
            "RECSTACK_HOME": str(home),
            "RECSTACK_POSTGRES_DSN": stack.postgres_dsn(settings),
            "RECSTACK_REDIS_URL": stack.redis_url(settings),
        }
    )
    return env


@pytest.fixture(scope="module")
def trained_on_cluster(cluster: Cluster, cluster_stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> str:
    """`RAY_ADDRESS=<head> recstack train --trials 4` from a driver with no local state: the version it promotes."""
    home = tmp_path_factory.mktemp("driver-home")
    result = subprocess.run(
        [
            *(sys.executable, "-m", "recstack.cli", "train"),
            *("--trials", "4", "--smoke", "--epochs", "2", "--ranker-users", "300", "--seed", "5"),
        ],
        env=_driver_env(cluster_stack, home, cluster),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=home,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    with psycopg.connect(stack.postgres_dsn(cluster_stack)) as conn:
        version = registry.promoted_version(conn)
    assert version is not None
    return version


# Run by a driver of its own on the cluster: on each named node, load the model from the registry (its sha256
# verified) -> {node name: [node id, sha256 of the model's bytes]}.
PROBE = """
import hashlib, json, sys

import psycopg
import ray

from recstack import ray_runtime
from recstack.tables import registry


def load_here(dsn, version):
    with psycopg.connect(dsn) as conn:
        model = registry.load_verified(conn, registry.get(conn, version))
    return ray.get_runtime_context().get_node_id(), hashlib.sha256(registry.model_bytes(model)).hexdigest()


dsn, version, names = sys.argv[1], sys.argv[2], sys.argv[3:]
ray_runtime.init(log_to_driver=False)
probe = ray.remote(num_cpus=0)(load_here)
refs = {name: probe.options(resources={name: 0.01}).remote(dsn, version) for name in names}
print(json.dumps({name: ray.get(ref, timeout=120) for name, ref in refs.items()}))
"""


def test_training_runs_on_several_nodes_and_its_model_loads_on_every_node(
    cluster: Cluster, trained_on_cluster: str, cluster_stack: Settings, tmp_path: Path
) -> None:
    from ray.util.state import list_actors, list_tasks

    joins = list_tasks(address=cluster.dashboard, filters=[("name", "=", "_join_chunk")], limit=1000, detail=True)
    join_nodes = {cluster.node_name(t.node_id) for t in joins if t.node_id}
    actors = list_actors(address=cluster.dashboard, limit=1000, detail=True)
    print(sorted({a.class_name for a in actors}))
    trials = [a for a in actors if "trial" in a.class_name.lower() or "ImplicitFunc" in a.class_name]
    trial_nodes = {cluster.node_name(a.node_id) for a in trials if a.node_id}
    print(
        f"feature-join tasks: {len(joins)} on {sorted(join_nodes)}; Tune trials: {len(trials)} on {sorted(trial_nodes)}"
    )
    assert len(join_nodes) >= 2, joins
    assert len(trial_nodes) >= 2, trials

    result = subprocess.run(
        [sys.executable, "-c", PROBE, stack.postgres_dsn(cluster_stack), trained_on_cluster, "head", *WORKERS],
        env=_driver_env(cluster_stack, tmp_path, cluster),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert {name: node for name, (node, _) in loaded.items()} == cluster.node_ids
    assert len({sha for _, sha in loaded.values()}) == 1, loaded


@pytest.fixture(scope="module")
def deployed(
    cluster: Cluster, trained_on_cluster: str, cluster_stack: Settings, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """`serve deploy` of the committed Serve config through the head's dashboard (the REST path KubeRay uses), with
    what a cluster's config sets: the stores' DSNs in the application's runtime environment, the proxy on the head,
    the ranking stage on a worker node."""
    config = yaml.safe_load((REPO / "serving" / "serve_config.yaml").read_text())
    port = free_port()
    config["proxy_location"] = "HeadOnly"
    config["http_options"] = {"host": "127.0.0.1", "port": port}
    config["grpc_options"]["port"] = free_port()
    (app,) = config["applications"]
    app["runtime_env"] = {
        "env_vars": {
            "RECSTACK_POSTGRES_DSN": stack.postgres_dsn(cluster_stack),
            "RECSTACK_REDIS_URL": stack.redis_url(cluster_stack),
            "RECSTACK_STAGE_DEADLINE_MS": "3000",
        }
    }
    for deployment in app["deployments"]:
        if deployment["name"] == "Ranker":
            deployment["ray_actor_options"]["resources"] = {"worker": 0.01}
        # One replica each: this test measures how Serve replaces what a lost node held (bench/bench_autoscale.py
        # shows autoscaling); an upscale racing the replacement for the survivors' CPUs would make that a lottery.
        deployment.pop("autoscaling_config", None)
        deployment["num_replicas"] = 1
    path = tmp_path_factory.mktemp("serve") / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [str(Path(sys.executable).with_name("serve")), "deploy", str(path), "--address", cluster.dashboard],
        env=_node_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-1500:] + result.stderr[-1500:]
    url = f"http://127.0.0.1:{port}"
    from serving.cli import wait_ready

    assert wait_ready(url, timeout_s=240), f"{url}/readyz never answered 200"
    return url


def _replica_nodes(cluster: Cluster, deployment: str) -> list[str]:
    from ray.util.state import list_actors

    actors = list_actors(
        address=cluster.dashboard,
        filters=[("class_name", "=", f"ServeReplica:recstack:{deployment}"), ("state", "=", "ALIVE")],
    )
    return sorted(cluster.node_name(a.node_id) for a in actors)


def _node_state(cluster: Cluster, name: str) -> str:
    from ray.util.state import list_nodes

    states = {node.node_id: str(node.state) for node in list_nodes(address=cluster.dashboard)}
    return states[cluster.node_ids[name]]


def _recommend(url: str, user: str) -> tuple[int, dict[str, Any]]:
    try:
        response = requests.post(f"{url}/recommend", json={"user_id": user, "k": 10}, timeout=30)
    except requests.RequestException as err:
        return 0, {"error": str(err)}
    body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
    return response.status_code, body


def test_serve_deploy_ranks_on_a_worker_and_survives_losing_it(
    cluster: Cluster, deployed: str, trained_on_cluster: str
) -> None:
    status, body = _recommend(deployed, "u0000001")
    assert status == 200, body
    assert body["model_version"] == trained_on_cluster and not body["degraded"], body
    (ranker_node,) = _replica_nodes(cluster, "Ranker")
    assert ranker_node in WORKERS
    print({name: _replica_nodes(cluster, name) for name in ("Ingress", "Retriever", "FeatureLookup", "Ranker")})

    answers: list[tuple[float, int, bool]] = []  # (seconds since the kill, status, normal answer)
    stop = threading.Event()
    killed_at = [0.0]

    def load(worker: int) -> None:  # ~10 requests/s in all, each client waiting for its answer
        n = 0
        while not stop.is_set():
            status, body = _recommend(deployed, f"u{(worker * 97 + n) % 500 + 1:07d}")
            normal = status == 200 and not body.get("degraded") and body.get("model_version") == trained_on_cluster
            answers.append((time.monotonic() - killed_at[0], status, normal))
            n += 1
            time.sleep(0.4)

    clients = [threading.Thread(target=load, args=(i,), daemon=True) for i in range(4)]
    killed_at[0] = time.monotonic()
    for client in clients:
        client.start()
    time.sleep(5)
    killed_at[0] = time.monotonic()
    _kill(cluster.folders[ranker_node])
    assert not _processes(cluster.folders[ranker_node]), "processes of the killed node still run"
    recovered = None
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and recovered is None:
        time.sleep(1)
        after = [a for a in list(answers) if a[0] > 0]
        streak, start = 0, 0.0
        for seconds, _, normal in after:
            if not normal:
                streak = 0
                continue
            streak, start = streak + 1, start if streak else seconds
            if streak >= 20:
                recovered = start  # the first of 20 normal answers in a row
                break
    stop.set()
    for client in clients:
        client.join(timeout=60)
    statuses: dict[int, int] = {}
    for _, status, _ in answers:
        statuses[status] = statuses.get(status, 0) + 1
    degraded = sum(1 for s, st, normal in answers if s > 0 and st == 200 and not normal)
    print(
        f"worker {ranker_node} killed: answers {statuses}, degraded after the kill {degraded},"
        f" normal again {recovered} s after it"
    )
    assert not [s for s in statuses if s >= 500 and s != 503], statuses
    assert 0 not in statuses, "connections failed"
    assert recovered is not None, "answers never went back to normal"
    other = next(w for w in WORKERS if w != ranker_node)
    deadline = time.monotonic() + 90  # the GCS declares a silent node dead after its health checks time out
    while time.monotonic() < deadline and (
        _node_state(cluster, ranker_node) != "DEAD" or _replica_nodes(cluster, "Ranker") != [other]
    ):
        time.sleep(2)
    assert _node_state(cluster, ranker_node) == "DEAD"
    assert _replica_nodes(cluster, "Ranker") == [other]
