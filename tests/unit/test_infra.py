"""Deployment manifests stay in sync with the code: they parse, the RayService's serveConfigV2 is what
`serve build` produces from serving.app, and the image's Ray version is the installed one."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _applications(config: dict) -> list[dict]:  # type: ignore[type-arg]
    """The parts `serve build` decides: import path and every deployment's options (names are ours to pick)."""
    return [{"import_path": a["import_path"], "deployments": a["deployments"]} for a in config["applications"]]


def test_every_manifest_parses() -> None:
    for path in [*ROOT.glob("infra/**/*.yaml"), ROOT / "serving" / "serve_config.yaml"]:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs, path


def test_serve_config_and_rayservice_match_serve_build(tmp_path: Path) -> None:
    out = tmp_path / "built.yaml"
    serve = Path(sys.executable).with_name("serve")
    result = subprocess.run(
        [str(serve), "build", "serving.app:graph_app", "-o", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    built = _applications(yaml.safe_load(out.read_text()))
    committed = _applications(yaml.safe_load((ROOT / "serving" / "serve_config.yaml").read_text()))
    service = yaml.safe_load((ROOT / "infra" / "k8s" / "rayservice.yaml").read_text())
    in_cluster = _applications(yaml.safe_load(service["spec"]["serveConfigV2"]))
    assert committed == built, "serving/serve_config.yaml is stale: re-run `serve build serving.app:graph_app`"
    assert in_cluster == built, "infra/k8s/rayservice.yaml serveConfigV2 differs from `serve build`"
    names = {d["name"] for d in built[0]["deployments"]}
    assert names == {"Ingress", "Retriever", "FeatureLookup", "Ranker"}
    assert all(0.25 <= d["ray_actor_options"]["num_cpus"] <= 1 for d in built[0]["deployments"])
    assert all("autoscaling_config" in d for d in built[0]["deployments"])


def test_image_and_cluster_use_the_installed_ray_version() -> None:
    import ray

    dockerfile = (ROOT / "infra" / "Dockerfile").read_text()
    image = re.search(r"^FROM rayproject/ray:([0-9.]+)-py311", dockerfile, re.MULTILINE)
    assert image and image.group(1) == ray.__version__
    service = yaml.safe_load((ROOT / "infra" / "k8s" / "rayservice.yaml").read_text())
    assert service["spec"]["rayClusterConfig"]["rayVersion"] == ray.__version__
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]
    assert "dashboard-host" in head  # its value: tests/unit/test_manifests.py
