"""A Retriever whose model orders by one source's score returns only that order's best RERANK_POOL candidates
(recstack.stages.retrieve.best_by_source): the slate the ingress builds from them must be the one it built from all."""

from __future__ import annotations

import numpy as np
import pytest

from recstack.stages.rerank import RerankParams
from recstack.stages.retrieve import CANDIDATE_FEATURES, CandidateSet, best_by_source, source_order
from serving.runtimes import RERANK_POOL, Reranker


def candidates(n: int, warm: int, seed: int) -> CandidateSet:
    """``n`` candidates of which the first ``warm`` have an item-item score; the others are new items (no score),
    some near-duplicates of the history by content, with tied scores among the warm ones."""
    rng = np.random.default_rng(seed)
    features = np.zeros((n, len(CANDIDATE_FEATURES)), np.float32)
    column = CANDIDATE_FEATURES.index
    features[:warm, column("ii_score")] = rng.choice([0.1, 0.2, 0.3, 0.5, 0.8], warm)  # many ties
    features[warm:, column("content_score")] = rng.choice([0.2, 0.5, 0.95, 1.0], n - warm)
    features[:, column("log_popularity")] = rng.random(n)
    vectors = rng.normal(size=(n, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    order = rng.permutation(n)  # warm and new items interleaved, as retrieval returns them
    return CandidateSet(
        [f"i{i}" for i in range(n)],
        [f"title {i}" for i in range(n)],
        ["movies"] * n,
        [f"p{i % 3}" for i in range(n)],
        [[f"c{i % 5}"] for i in range(n)],
        vectors,
        features,
        rng.random(n) < 0.3,
    ).take(order)


@pytest.mark.parametrize(("n", "warm"), [(227, 200), (227, 60), (150, 100), (101, 0), (80, 40)])
def test_the_slate_from_the_best_candidates_is_the_slate_from_all(n: int, warm: int) -> None:
    for seed in range(5):
        full = candidates(n, warm, seed)
        cut = best_by_source(full, "ii_score", RERANK_POOL)
        assert len(cut) == min(n, RERANK_POOL)
        for params in (RerankParams(), RerankParams(mmr_lambda=1.0, max_provider_share=1.0, long_tail_min=0)):
            from_full = Reranker().rerank(full, source_order(full.features, "ii_score"), 10, params)
            from_cut = Reranker().rerank(cut, source_order(cut.features, "ii_score"), 10, params)
            assert [full.item_ids[i] for i in from_full] == [cut.item_ids[i] for i in from_cut], (n, warm, seed)
            scores_full = dict(zip(full.item_ids, source_order(full.features, "ii_score"), strict=True))
            scores_cut = dict(zip(cut.item_ids, source_order(cut.features, "ii_score"), strict=True))
            assert all(scores_cut[item] == scores_full[item] for item in scores_cut)  # the slate's scores too
