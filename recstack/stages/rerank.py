"""Rerank stage: diversity, provider exposure fairness and business rules over a scored candidate list.

Pure functions over numpy arrays; the Ray Serve Reranker deployment and the in-process pipeline both call ``rerank``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

# The knobs' bounds, the one home of them: the serving config (RerankParams) and a request's overrides
# (serving/schemas.py RerankOverrides) are checked against these.
MMR_LAMBDA_BOUNDS = (0.0, 1.0)  # inclusive
PROVIDER_SHARE_BOUNDS = (0.0, 1.0)  # above the first, up to the second
LONG_TAIL_MIN_BOUNDS = (0, 10)  # inclusive
# Each knob's value that leaves the score order as it is: all of them = a relevance-only slate.
NEUTRAL = {"mmr_lambda": 1.0, "max_provider_share": 1.0, "long_tail_min": 0}


class RerankParams(BaseModel):
    """Rerank knobs. Set in the serving config; a request or an experiment variant may override within bounds."""

    model_config = ConfigDict(extra="forbid")

    mmr_lambda: float = Field(
        default=0.8,
        ge=MMR_LAMBDA_BOUNDS[0],
        le=MMR_LAMBDA_BOUNDS[1],
        description="1 = relevance only, 0 = diversity only.",
    )
    max_provider_share: float = Field(
        default=0.4,
        gt=PROVIDER_SHARE_BOUNDS[0],
        le=PROVIDER_SHARE_BOUNDS[1],
        description="Cap on one provider's slate share.",
    )
    long_tail_min: int = Field(
        default=1,
        ge=LONG_TAIL_MIN_BOUNDS[0],
        le=LONG_TAIL_MIN_BOUNDS[1],
        description="Minimum long-tail items in the slate.",
    )
    boost: dict[str, float] = Field(default_factory=dict, description="Business rule: item_id -> score multiplier.")


@dataclass
class Candidates:
    """Scored candidates (parallel arrays); ``vectors`` are unit-normalised item embeddings (or None)."""

    item_ids: list[str]
    scores: np.ndarray
    providers: list[str]
    long_tail: np.ndarray  # bool: item outside the head of the popularity distribution
    vectors: np.ndarray | None = None
    categories: list[list[str]] | None = None


HEAD_SHARE = 0.8


def head_floor(popularity: np.ndarray, head_share: float = HEAD_SHARE) -> float:
    """The popularity of the least popular head item, the head being the most popular items that together hold
    ``head_share`` of the catalog's interactions. The one long-tail rule: an item is long tail when its popularity
    is below this floor (serving applies it to the candidates, evaluation and the quality bench to their slates)."""
    popularity = np.asarray(popularity, np.float64)
    if not len(popularity) or popularity.sum() <= 0:
        return 0.0
    ordered = np.sort(popularity)[::-1]
    head_size = int(np.searchsorted(np.cumsum(ordered) / ordered.sum(), head_share)) + 1
    return float(ordered[min(head_size, len(ordered)) - 1])


def long_tail_mask(popularity: np.ndarray, head_share: float = HEAD_SHARE) -> np.ndarray:
    """True for items below the head's popularity floor (``head_floor``)."""
    return np.asarray(popularity, np.float64) < head_floor(popularity, head_share)


def _similarity(candidates: Candidates) -> np.ndarray:
    """Pairwise item similarity: cosine of embeddings, else Jaccard of category sets."""
    if candidates.vectors is not None:
        return np.clip(candidates.vectors @ candidates.vectors.T, -1.0, 1.0)
    cats = [set(c) for c in (candidates.categories or [[] for _ in candidates.item_ids])]
    n = len(cats)
    sim = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        for j in range(i + 1, n):
            union = len(cats[i] | cats[j])
            sim[i, j] = sim[j, i] = len(cats[i] & cats[j]) / union if union else 0.0
    return sim


def _normalise(scores: np.ndarray) -> np.ndarray:
    """Min-max to [0.05, 1]: comparable with similarities, and never 0 so a multiplicative boost always acts."""
    span = float(scores.max() - scores.min()) if len(scores) else 0.0
    return 0.05 + 0.95 * (scores - scores.min()) / span if span > 0 else np.ones_like(scores)


def rerank(candidates: Candidates, k: int, params: RerankParams) -> list[int]:
    """Pick ``k`` candidate positions greedily by Maximal Marginal Relevance (Carbonell & Goldstein 1998),

    MMR(i) = lambda * rel(i) - (1 - lambda) * max_{j in slate} sim(i, j),

    subject to a cap on any one provider's share of the slate and a floor of long-tail items (a simple form of
    exposure control in the spirit of Singh & Joachims 2018). Business-rule boosts multiply relevance first.
    Returns indices into ``candidates`` in slate order.
    """
    n = len(candidates.item_ids)
    k = min(k, n)
    if k == 0:
        return []
    boost = np.array([params.boost.get(i, 1.0) for i in candidates.item_ids], dtype=np.float64)
    relevance = _normalise(candidates.scores.astype(np.float64)) * boost
    sim = _similarity(candidates) if params.mmr_lambda < 1.0 else np.zeros((n, n))
    cap = max(1, int(np.floor(params.max_provider_share * k)))
    chosen: list[int] = []
    providers, provider_of = np.unique(np.asarray(candidates.providers, dtype=object), return_inverse=True)
    if len(providers) * cap < k:  # too few providers to fill the slate under the cap (MovieLens has one): no cap
        cap = k
    provider_count = np.zeros(len(providers), dtype=np.int64)
    max_sim = np.full(n, 0.0)
    available = np.ones(n, dtype=bool)
    for slot in range(k):
        open_slots = k - slot
        tail_needed = params.long_tail_min - int(candidates.long_tail[chosen].sum()) if chosen else params.long_tail_min
        allowed = available & (provider_count[provider_of] < cap)
        if tail_needed >= open_slots and (allowed & candidates.long_tail).any():
            allowed &= candidates.long_tail  # the remaining slots must go to the long tail
        if not allowed.any():
            allowed = available  # the caps cannot be met with what is left: relevance wins
        mmr = params.mmr_lambda * relevance - (1 - params.mmr_lambda) * max_sim
        mmr[~allowed] = -np.inf
        best = int(np.argmax(mmr))
        chosen.append(best)
        available[best] = False
        provider_count[provider_of[best]] += 1
        max_sim = np.maximum(max_sim, sim[best])
    return chosen
