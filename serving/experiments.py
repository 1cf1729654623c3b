"""A/B experiments: variants with weights, each choosing a model version and rerank parameters.

Assignment is a stable hash of (experiment, user_id): identical across replicas, processes and restarts
(never Python's salted ``hash``).
"""

from __future__ import annotations

import hashlib

from pydantic import BaseModel, ConfigDict, Field, model_validator

from recstack.stages.rerank import RerankParams


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


# -- report: CTR and like-rate per variant, from impressions joined with feedback by request_id -------------------
REPORT_SQL = """
SELECT i.experiment, i.variant, count(DISTINCT i.request_id) AS impressions,
       count(DISTINCT i.request_id) FILTER (WHERE e.event_type IN ('click', 'like', 'purchase')) AS clicked,
       count(DISTINCT i.request_id) FILTER (WHERE e.event_type = 'like') AS liked
FROM impressions i
LEFT JOIN events e ON e.context ? 'request_id' AND e.context->>'request_id' = i.request_id
WHERE i.experiment IS NOT NULL
GROUP BY i.experiment, i.variant ORDER BY i.experiment, i.variant
"""


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (sound for small counts and rates near 0)."""
    if n == 0:
        return 0.0, 0.0
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * ((p * (1 - p) + z * z / (4 * n)) / n) ** 0.5
    denominator = 1 + z * z / n
    return max(0.0, (centre - spread) / denominator), min(1.0, (centre + spread) / denominator)


def report_rows(conn) -> list[dict[str, object]]:  # type: ignore[no-untyped-def]
    rows = []
    for experiment, variant, impressions, clicked, liked in conn.execute(REPORT_SQL).fetchall():
        ctr_lo, ctr_hi = wilson(clicked, impressions)
        like_lo, like_hi = wilson(liked, impressions)
        rows.append(
            {
                "experiment": experiment,
                "variant": variant,
                "impressions": impressions,
                "ctr": clicked / impressions if impressions else 0.0,
                "ctr_ci95": [ctr_lo, ctr_hi],
                "like_rate": liked / impressions if impressions else 0.0,
                "like_rate_ci95": [like_lo, like_hi],
            }
        )
    return rows
