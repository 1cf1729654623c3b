"""The one settings object. Read once (``get_settings``), passed down; nothing reads the environment elsewhere."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_home() -> Path:
    """Per-user state folder (XDG state dir), never inside the repository."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "recstack"


class Settings(BaseSettings):
    """recstack settings; every field can be set as ``RECSTACK_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="RECSTACK_", extra="ignore")

    home: Path = Field(default_factory=default_home, description="All local state: servers' data, models, reports.")
    postgres_dsn: str | None = Field(
        default=None,
        description="External Postgres (libpq URI). When set, no embedded Postgres starts.",
    )
    redis_url: str | None = Field(
        default=None,
        description="External Redis (redis://host:port/db). When set, no embedded Redis starts.",
    )
    postgres_port: int = Field(default=55432, ge=1024, le=65535, description="Port of the embedded Postgres.")
    redis_port: int = Field(default=56379, ge=1024, le=65535, description="Port of the embedded Redis.")
    connect_timeout_s: float = Field(default=3.0, gt=0, le=60, description="Connect/socket timeout for stores.")
    seed: int = Field(default=42, description="Default random seed for generators and training.")
    serve_host: str = Field(default="127.0.0.1", description="Address `recstack serve` listens on.")
    serve_port: int = Field(default=8000, ge=1, le=65535, description="HTTP port of the recommendation API.")
    serve_mode: Literal["graph", "fused"] = Field(
        default="fused",
        description="graph: one Ray Serve deployment per stage; fused: all stages in one replica (fewer hops).",
    )
    serve_front: bool = Field(
        default=True,
        description="`recstack serve` on a local Ray puts a TCP balancer over the ingress replicas' own servers on the "
        "API port (serving/front.py) and Serve's proxy on another port; false: Serve's proxy on the API port.",
    )
    serve_throughput_optimized: bool = Field(
        default=True,
        description="Start Ray Serve with RAY_SERVE_THROUGHPUT_OPTIMIZED=1 (user code on the replica's own event loop, "
        "gRPC from proxy to replicas, buffered request logs): fewer thread and loop hops per request.",
    )
    artifact_uri: str | None = Field(
        default=None,
        description="Where model artifacts go (an fsspec URL: s3://bucket/models, gs://..., file:///shared/models). "
        "Unset: inside the model registry in Postgres, which every node reads.",
    )
    api_key: str | None = Field(default=None, description="When set, every endpoint but health needs X-API-Key.")
    stage_deadline_ms: float = Field(default=150, gt=0, le=10_000, description="Per-stage deadline when serving.")
    recommend_max_inflight: int = Field(
        default=8,
        ge=0,
        le=10_000,
        description="/recommend requests one API process works on at once; beyond it the answer is 503 with "
        "Retry-After at once (load shed, serving/http.py Guard) instead of a wait in its queue. 0: unbounded.",
    )
    result_cache_ttl_s: int = Field(
        default=30,
        ge=0,
        le=3600,
        description="How long a served slate is reused for the same user and request shape (serving/result_cache.py); "
        "the user's next event ends it sooner. 0 turns the cache off.",
    )
    feature_repo: Path = Field(
        default_factory=lambda: Path(__file__).resolve().parents[1] / "feature_repo",
        description="The Feast repository (feature_store.yaml and definitions).",
    )

    @field_validator("postgres_dsn")
    @classmethod
    def _check_postgres_dsn(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a libpq URI such as postgresql://user:pass@host:5432/dbname")
        return value or None

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a URL such as redis://host:6379/0")
        return value or None

    @property
    def pg_dir(self) -> Path:
        return self.home / "postgres"

    @property
    def redis_dir(self) -> Path:
        return self.home / "redis"

    @property
    def feast_registry_file(self) -> Path:
        """Where Feast's registry was a local file before it moved into Postgres (`recstack up` moves it once)."""
        return self.home / "feast" / "registry.db"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Read the settings from the environment once per process."""
    return Settings()
