"""Opening the Feast store from recstack settings, and `feast apply` as users run it."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import TYPE_CHECKING

from recstack import stack
from recstack.settings import Settings

if TYPE_CHECKING:
    from feast import FeatureStore


class FeastError(RuntimeError):
    """A Feast step failed; the message carries Feast's own last lines."""


def feast_env(settings: Settings) -> dict[str, str]:
    """The process environment plus the FEAST_* variables feature_store.yaml expands."""
    return {**os.environ, **stack.client_env(settings)}


def open_store(settings: Settings) -> FeatureStore:
    """A FeatureStore on feature_repo/; the FEAST_* variables are set in this process first (the yaml reads them)."""
    from feast import FeatureStore

    os.environ.update(stack.client_env(settings))
    return FeatureStore(repo_path=str(settings.feature_repo))


def apply(settings: Settings, repo: os.PathLike[str] | str | None = None) -> str:
    """Run `feast apply` in the feature repo exactly as an ML engineer would; returns Feast's output."""
    feast = os.path.join(os.path.dirname(sys.executable), "feast")
    result = subprocess.run(
        [feast, "apply"],
        cwd=str(repo or settings.feature_repo),
        env=feast_env(settings),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
        raise FeastError(f"feast apply failed in {repo or settings.feature_repo}:\n{tail}")
    return result.stdout


def move_file_registry(settings: Settings) -> int | None:
    """Copy a local file registry (how Feast's definitions were kept before they moved into Postgres) into the SQL
    registry once, then rename the file ``registry.db.moved``. Returns the number of objects copied; None when there
    was no file. A SQL registry that already holds definitions for the project wins: nothing is overwritten."""
    from feast.infra.registry.registry import Registry
    from feast.repo_config import RegistryConfig

    path = settings.feast_registry_file
    if not path.is_file():
        return None
    store = open_store(settings)
    project, target = store.project, store.registry
    source = Registry(project, RegistryConfig(registry_type="file", path=str(path)), repo_path=None)
    copied = 0
    if not target.list_feature_views(project, allow_cache=False) and not target.list_entities(
        project, allow_cache=False
    ):
        for entity in source.list_entities(project):
            target.apply_entity(entity, project, commit=False)
            copied += 1
        for data_source in source.list_data_sources(project):
            target.apply_data_source(data_source, project, commit=False)
            copied += 1
        views = [
            *source.list_feature_views(project),
            *source.list_stream_feature_views(project),
            *source.list_on_demand_feature_views(project),
        ]
        for view in views:
            target.apply_feature_view(view, project, commit=False)
            copied += 1
        for service in source.list_feature_services(project):
            target.apply_feature_service(service, project, commit=False)
            copied += 1
        target.commit()
    path.rename(path.with_name(path.name + ".moved"))
    return copied
