"""A/B experiments: variants with weights, each choosing a model version and rerank parameters.

Assignment is a stable hash of (experiment, user_id): identical across replicas, processes and restarts
(never Python's salted ``hash``).
"""

from __future__ import annotations

import hashlib

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serving.stages.rerank import RerankParams


class Variant(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    weight: float = Field(gt=0)
    model_version: str | None = Field(default=None, description="None = the promoted model.")
    rerank: RerankParams = Field(default_factory=RerankParams)


class Experiment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    variants: list[Variant] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> Experiment:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"experiment {self.name}: variant names must be unique, got {names}")
        return self


def bucket(experiment: str, user_id: str) -> float:
    """A uniform number in [0, 1) fixed by (experiment, user): the first 8 bytes of SHA-256."""
    digest = hashlib.sha256(f"{experiment}\x1f{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign(experiment: Experiment, user_id: str) -> Variant:
    """The user's variant: weights split [0, 1) into consecutive ranges."""
    point = bucket(experiment.name, user_id) * sum(v.weight for v in experiment.variants)
    for variant in experiment.variants:
        point -= variant.weight
        if point < 0:
            return variant
    return experiment.variants[-1]
