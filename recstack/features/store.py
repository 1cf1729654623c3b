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
    settings.feast_registry.parent.mkdir(parents=True, exist_ok=True)
    return FeatureStore(repo_path=str(settings.feature_repo))


def apply(settings: Settings, repo: os.PathLike[str] | str | None = None) -> str:
    """Run `feast apply` in the feature repo exactly as an ML engineer would; returns Feast's output."""
    settings.feast_registry.parent.mkdir(parents=True, exist_ok=True)
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
