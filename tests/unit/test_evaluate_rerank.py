"""evaluate's served slates are the ones /recommend answers for the same k: the long-tail floor fills the last of
k slots, so a slate cut from a longer answer is not what a k = 10 request gets."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd

from recstack.stages.rerank import NEUTRAL, RerankParams
from training.evaluate import rerank_pools, reranked_slates


def test_the_long_tail_floor_lands_inside_the_k_asked_for() -> None:
    items = np.arange(30)
    frame = pd.DataFrame({"user": 0, "item": items, "score": np.linspace(1.0, 0.1, 30)})
    tail = items >= 25  # only the five lowest scored are long tail
    catalog: Any = SimpleNamespace(item_provider=np.array(["p"] * 30, object))
    item_cf = np.random.default_rng(0).normal(size=(30, 8)).astype(np.float32)
    floor = RerankParams(**{**NEUTRAL, "long_tail_min": 1})
    pools = rerank_pools(frame, np.array([0, 1]), catalog, item_cf, tail)  # user 1 has no candidates
    assert pools[1] is None and reranked_slates(pools, 10, floor)[1].size == 0
    for k in (10, 20):
        slate = reranked_slates(pools, k, floor)[0]
        assert len(slate) == k and tail[slate].sum() == 1 and tail[slate[-1]]  # the last slot, within k
        assert list(slate[:-1]) == list(range(k - 1))  # the rest in score order
    none = reranked_slates(pools, 10, RerankParams(**NEUTRAL))[0]
    assert list(none) == list(range(10)) and not tail[none].any()
