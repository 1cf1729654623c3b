"""Offline ranking metrics: accuracy at k and beyond-accuracy (coverage, diversity, novelty, popularity bias,
provider exposure fairness). Pure numpy; slates are item indices per user, best first."""

from __future__ import annotations

import numpy as np


def per_user(slates: list[np.ndarray], relevant: list[dict[int, int]], k: int) -> dict[str, np.ndarray]:
    """Recall, Precision, NDCG (graded gain 2^g - 1), MRR and HitRate at k for each user with a relevant item."""
    out: dict[str, list[float]] = {name: [] for name in ("recall", "precision", "ndcg", "mrr", "hitrate")}
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    for slate, rel in zip(slates, relevant, strict=True):
        if not rel:
            continue
        top = slate[:k]
        gains = np.array([2.0 ** rel.get(int(i), 0) - 1 for i in top])
        hits = gains > 0
        ideal = np.sort(np.array([2.0**g - 1 for g in rel.values()]))[::-1][:k]
        dcg = float((gains * discounts[: len(gains)]).sum())
        idcg = float((ideal * discounts[: len(ideal)]).sum())
        out["recall"].append(hits.sum() / len(rel))
        out["precision"].append(hits.sum() / k)
        out["ndcg"].append(dcg / idcg if idcg > 0 else 0.0)
        first = np.flatnonzero(hits)
        out["mrr"].append(1.0 / (first[0] + 1) if len(first) else 0.0)
        out["hitrate"].append(float(hits.any()))
    return {name: np.asarray(values, dtype=np.float64) for name, values in out.items()}


def accuracy(slates: list[np.ndarray], relevant: list[dict[int, int]], k: int) -> dict[str, float]:
    """The per-user metrics at k averaged over users."""
    values = per_user(slates, relevant, k)
    return {f"{name}@{k}": float(v.mean()) if len(v) else 0.0 for name, v in values.items()}


def paired_bootstrap_ratio(
    a: np.ndarray, b: np.ndarray, samples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """mean(a) / mean(b) for paired per-user values, with a 95% percentile interval from resampling users."""
    if len(a) != len(b) or not len(a) or b.mean() <= 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(a), size=(samples, len(a)))
    ratios = a[rows].mean(1) / np.maximum(b[rows].mean(1), 1e-12)
    low, high = np.percentile(ratios, [2.5, 97.5])
    return float(a.mean() / b.mean()), float(low), float(high)


def gini(values: np.ndarray) -> float:
    """Gini coefficient of a non-negative distribution (0 = equal, 1 = all on one)."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    if v.sum() == 0:
        return 0.0
    n = len(v)
    return float((2 * np.arange(1, n + 1) - n - 1).dot(v) / (n * v.sum()))


def beyond_accuracy(
    slates: list[np.ndarray],
    k: int,
    n_items: int,
    item_categories: list[list[str]],
    popularity: np.ndarray,
    providers: np.ndarray,
) -> dict[str, float]:
    """Coverage, intra-list diversity (1 - category Jaccard), novelty (-log2 popularity share), popularity bias
    (mean popularity percentile), and provider exposure fairness (position-discounted exposure share vs catalog
    share: the largest over-exposure ratio, total variation distance, Gini of exposure per catalog item)."""
    slates = [s[:k] for s in slates if len(s)]
    recommended = np.concatenate(slates) if slates else np.empty(0, np.int64)
    coverage = len(np.unique(recommended)) / n_items
    sets = [set(c) for c in item_categories]
    diversity = []
    for slate in slates:
        pairs = [(a, b) for i, a in enumerate(slate) for b in slate[i + 1 :]]
        if pairs:
            jac = [len(sets[a] & sets[b]) / max(1, len(sets[a] | sets[b])) for a, b in pairs]
            diversity.append(1 - float(np.mean(jac)))
    share = (popularity + 1) / (popularity + 1).sum()
    novelty = float(np.mean(-np.log2(share[recommended]))) if len(recommended) else 0.0
    percentile = np.argsort(np.argsort(popularity)) / max(1, n_items - 1)
    pop_bias = float(np.mean(percentile[recommended])) if len(recommended) else 0.0

    names, provider_index = np.unique(providers, return_inverse=True)
    exposure = np.zeros(len(names))
    weights = 1.0 / np.log2(np.arange(2, k + 2))
    for slate in slates:
        np.add.at(exposure, provider_index[slate], weights[: len(slate)])
    catalog_share = np.bincount(provider_index, minlength=len(names)) / n_items
    exposure_share = exposure / exposure.sum() if exposure.sum() else exposure
    return {
        f"coverage@{k}": coverage,
        f"diversity@{k}": float(np.mean(diversity)) if diversity else 0.0,
        f"novelty@{k}": novelty,
        f"popularity_bias@{k}": pop_bias,
        f"provider_exposure_tvd@{k}": float(0.5 * np.abs(exposure_share - catalog_share).sum()),
        f"provider_max_overexposure@{k}": float((exposure_share / np.maximum(catalog_share, 1e-12)).max()),
        f"provider_exposure_gini@{k}": gini(exposure / np.maximum(catalog_share * n_items, 1)),
    }
