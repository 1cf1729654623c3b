import numpy as np

from recstack.stages.rerank import Candidates, RerankParams, rerank


def _candidates(n: int = 20, seed: int = 0) -> Candidates:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, 8)).astype(np.float32)
    vectors[: n // 2] = vectors[0] + 0.01 * rng.normal(size=(n // 2, 8))  # a cluster of near-duplicates on top
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return Candidates(
        item_ids=[f"i{j}" for j in range(n)],
        scores=np.linspace(1.0, 0.0, n),
        providers=["big"] * (n // 2) + [f"p{j}" for j in range(n - n // 2)],
        long_tail=np.array([j >= n - 3 for j in range(n)]),
        vectors=vectors,
    )


def test_pure_relevance_without_constraints_keeps_score_order() -> None:
    cands = _candidates()
    params = RerankParams(mmr_lambda=1.0, max_provider_share=1.0, long_tail_min=0)
    assert rerank(cands, 5, params) == [0, 1, 2, 3, 4]


def test_mmr_breaks_up_near_duplicates() -> None:
    cands = _candidates()
    relevance_only = rerank(cands, 5, RerankParams(mmr_lambda=1.0, max_provider_share=1.0, long_tail_min=0))
    diverse = rerank(cands, 5, RerankParams(mmr_lambda=0.5, max_provider_share=1.0, long_tail_min=0))
    sim = cands.vectors @ cands.vectors.T  # type: ignore[operator]

    def mean_pairwise(idx: list[int]) -> float:
        sub = sim[np.ix_(idx, idx)]
        return float((sub.sum() - len(idx)) / (len(idx) * (len(idx) - 1)))

    assert mean_pairwise(diverse) < mean_pairwise(relevance_only) - 0.2
    assert diverse[0] == 0  # the most relevant item still leads


def test_provider_cap_and_long_tail_floor_hold() -> None:
    cands = _candidates()
    slate = rerank(cands, 10, RerankParams(mmr_lambda=1.0, max_provider_share=0.3, long_tail_min=2))
    providers = [cands.providers[i] for i in slate]
    assert providers.count("big") <= 3
    assert int(cands.long_tail[slate].sum()) >= 2
    assert len(set(slate)) == 10


def test_boost_moves_an_item_up_and_k_larger_than_candidates_is_clipped() -> None:
    cands = _candidates(n=6)
    params = RerankParams(mmr_lambda=1.0, max_provider_share=1.0, long_tail_min=0, boost={"i5": 100.0})
    slate = rerank(cands, 50, params)
    assert slate[0] == 5 and sorted(slate) == list(range(6))


def test_category_similarity_is_used_without_vectors() -> None:
    cands = _candidates(n=6)
    cands.vectors = None
    cands.categories = [["a"], ["a"], ["a"], ["b"], ["c"], ["d"]]
    slate = rerank(cands, 3, RerankParams(mmr_lambda=0.3, max_provider_share=1.0, long_tail_min=0))
    assert len({cands.categories[i][0] for i in slate}) == 3


def test_long_tail_is_everything_outside_the_head_holding_80_percent() -> None:
    import numpy as np

    from recstack.stages.rerank import long_tail_mask

    popularity = np.array([50.0, 30.0, 10.0, 5.0, 3.0, 2.0])
    tail = long_tail_mask(popularity)
    assert tail.tolist() == [False, False, True, True, True, True]


def test_one_long_tail_rule_whatever_the_set_it_is_applied_to() -> None:
    """Serving marks candidates against the catalog's floor; a request whose candidates are all popular gets no tail
    item (the old rule, below the median of the candidates, called half of any candidate set long tail)."""
    import numpy as np

    from recstack.stages.rerank import head_floor, long_tail_mask

    catalog = np.array([50.0, 30.0, 10.0, 10.0, 3.0, 2.0, 0.0])
    floor = head_floor(catalog)
    assert floor == 10.0  # items tied with the last head item are head too
    assert long_tail_mask(catalog).tolist() == (catalog < floor).tolist()
    candidates = np.array([50.0, 30.0, 10.0])
    assert not (candidates < floor).any()
    assert head_floor(np.zeros(3)) == 0.0 and not long_tail_mask(np.zeros(3)).any()


def test_request_overrides_apply_on_top_of_the_config_within_bounds() -> None:
    import pytest
    from pydantic import ValidationError

    from serving.orchestrate import _with_overrides
    from serving.schemas import RecommendRequest

    config = RerankParams(mmr_lambda=0.8, max_provider_share=0.4, long_tail_min=1, boost={"a": 2.0, "b": 3.0})
    req = RecommendRequest.model_validate(
        {"user_id": "u1", "rerank": {"mmr_lambda": 1.0, "boost": {"b": 0.0, "c": 5.0}}}
    )
    assert req.rerank is not None
    merged = _with_overrides(config, req.rerank)
    assert merged.mmr_lambda == 1.0 and merged.max_provider_share == 0.4 and merged.long_tail_min == 1
    assert merged.boost == {"a": 2.0, "b": 0.0, "c": 5.0}
    assert config.mmr_lambda == 0.8  # the configured params are not changed by a request
    for bad in ({"mmr_lambda": 1.5}, {"max_provider_share": 0}, {"long_tail_min": 11}, {"boost": {"x": 11.0}}):
        with pytest.raises(ValidationError) as err:
            RecommendRequest.model_validate({"user_id": "u1", "rerank": bad})
        assert err.value.errors()[0]["loc"][:2] == ("rerank", next(iter(bad)))


def test_a_provider_cap_that_cannot_be_met_does_not_reorder_the_slate() -> None:
    """One provider (MovieLens): a 40% cap cannot be met, so it must not push items around; the long-tail floor
    still holds."""
    n = 30
    candidates = Candidates(
        item_ids=[f"i{i}" for i in range(n)],
        scores=np.linspace(1.0, 0.0, n),
        providers=["movielens"] * n,
        long_tail=np.arange(n) >= 20,
    )
    slate = rerank(candidates, 10, RerankParams(mmr_lambda=1.0, max_provider_share=0.4, long_tail_min=1))
    assert slate[:9] == list(range(9)) and slate[9] == 20
