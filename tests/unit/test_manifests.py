"""The Kubernetes manifests would be accepted and would work: each validates against its schema (KubeRay's CRD for
the RayService, Kubernetes' own for every other kind, unknown fields refused as `kubectl apply --validate=strict`
does), one Secret name everywhere with the keys the template defines, the dashboard reachable by the operator and
nothing else, Redis durable, and a scheduled batch job that runs the pipeline."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "infra" / "k8s"
CRD = ROOT / "tests" / "data" / "kuberay" / "ray.io_rayservices.yaml"
KUBERNETES_VERSION = "1.33.0"
DASHBOARD_PORT = 8265


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.load_all(path.read_text(), Loader=yaml.CSafeLoader) if d]


def _manifests() -> list[tuple[str, dict[str, Any]]]:
    found = [(p.name, d) for p in sorted(K8S.glob("*.yaml")) for d in _docs(p)]
    assert found
    return found


def _by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for _, d in _manifests() if d["kind"] == kind]


def _strict(schema: Any) -> Any:
    """The CRD schema with unknown fields refused wherever it lists the fields (the API server drops them silently;
    a manifest relying on one would not do what it says)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out.setdefault("additionalProperties", False)
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def _crd_validator() -> jsonschema.Draft7Validator:
    crd = _docs(CRD)[0]
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return jsonschema.Draft7Validator(_strict(version["schema"]["openAPIV3Schema"]))


def _crd_errors(manifest: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in _crd_validator().iter_errors(manifest)]


def test_the_rayservice_matches_kuberays_crd_and_an_unknown_field_is_refused() -> None:
    (service,) = _by_kind("RayService")
    assert _crd_errors(service) == []
    broken = copy.deepcopy(service)
    broken["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParam"] = {"num-cpus": "0"}  # a typo
    assert any("rayStartParam" in e for e in _crd_errors(broken))


@pytest.mark.parametrize("name, manifest", [m for m in _manifests() if m[1]["kind"] != "RayService"])
def test_every_other_manifest_matches_its_kubernetes_kind(name: str, manifest: dict[str, Any]) -> None:
    kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def test_an_unknown_field_in_a_kubernetes_manifest_is_refused() -> None:
    (redis,) = [d for d in _by_kind("StatefulSet") if d["metadata"]["name"] == "recstack-redis"]
    broken = copy.deepcopy(redis)
    broken["spec"]["template"]["spec"]["containers"][0]["volumeMount"] = []  # a typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def _secret_refs(node: Any) -> list[tuple[str, str | None]]:
    """Every (secret name, key) a manifest reads, through secretKeyRef, secretRef (envFrom) or a secret volume."""
    refs: list[tuple[str, str | None]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "secretKeyRef":
                refs.append((value["name"], value["key"]))
            elif key == "secretRef":
                refs.append((value["name"], None))
            elif key == "secret" and isinstance(value, dict) and "secretName" in value:
                refs.append((value["secretName"], None))
            else:
                refs.extend(_secret_refs(value))
    elif isinstance(node, list):
        for value in node:
            refs.extend(_secret_refs(value))
    elif isinstance(node, str) and node.lstrip().startswith(("applications:", "{")):
        refs.extend(_secret_refs(yaml.safe_load(node)))  # serveConfigV2 is YAML inside a string
    return refs


def test_one_secret_name_everywhere_with_the_keys_of_the_template() -> None:
    (template,) = _docs(K8S / "templates" / "secret.yaml")
    name, keys = template["metadata"]["name"], set(template["stringData"])
    kubernetes_validate.validate(template, KUBERNETES_VERSION, strict=True)
    refs = [ref for _, manifest in _manifests() for ref in _secret_refs(manifest)]
    assert len(refs) >= 8, refs
    assert {n for n, _ in refs} == {name}, f"manifests read Secrets other than {name}: {refs}"
    unknown = {k for _, k in refs if k} - keys
    assert not unknown, f"keys not in the template: {unknown}"


def test_the_dashboard_listens_for_the_operator_and_lets_nothing_else_in() -> None:
    (service,) = _by_kind("RayService")
    cluster = service["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]
    # The operator submits serveConfigV2 through the head Service: a dashboard on the pod's loopback never deploys.
    assert head["rayStartParams"].get("dashboard-host", "0.0.0.0") not in ("127.0.0.1", "localhost", "::1")
    assert cluster.get("authOptions", {}).get("mode") == "token"
    labels = head["template"]["metadata"]["labels"]
    policies = [
        p
        for p in _by_kind("NetworkPolicy")
        if p["spec"]["podSelector"].get("matchLabels", {}).items() <= labels.items()
        and "Ingress" in p["spec"]["policyTypes"]
    ]
    assert policies, "no NetworkPolicy selects the head pod"
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            ports = rule.get("ports")
            opens_dashboard = ports is None or any(
                p["port"] <= DASHBOARD_PORT <= p.get("endPort", p["port"]) for p in ports
            )
            if opens_dashboard:
                sources = rule.get("from")
                assert sources, f"{policy['metadata']['name']}: the dashboard is open to every pod"
                for source in sources:
                    assert source.get("podSelector", {}).get("matchLabels") == {
                        "app.kubernetes.io/name": "kuberay-operator"
                    }, f"{policy['metadata']['name']}: the dashboard is open to {source}"


def test_redis_keeps_its_data_on_a_volume_with_appendonly() -> None:
    (redis,) = [d for d in _by_kind("StatefulSet") if d["metadata"]["name"] == "recstack-redis"]
    container = redis["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    data_dir = args[args.index("--dir") + 1]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    claims = {c["metadata"]["name"] for c in redis["spec"]["volumeClaimTemplates"]}
    assert mounts.get(data_dir) in claims


def test_a_scheduled_job_runs_migrations_features_materialize_and_training() -> None:
    (job,) = _by_kind("CronJob")
    assert job["spec"]["schedule"] and job["spec"]["concurrencyPolicy"] == "Forbid"
    (container,) = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    script = " ".join(container["args"])
    steps = ["recstack up", "recstack features build", "recstack features apply", "recstack materialize"]
    positions = [script.index(step) for step in [*steps, "recstack train"]]
    assert positions == sorted(positions), script
