"""CatBoost ranker and Ray Tune search on small generated groups where relevance depends on known features."""

import numpy as np
import pandas as pd
import pytest

from training.ranker import RankerData, train_ranker


def _groups(n_groups: int, per_group: int, seed: int) -> RankerData:
    rng = np.random.default_rng(seed)
    n = n_groups * per_group
    frame = pd.DataFrame(
        {
            "affinity": rng.random(n),
            "popularity": rng.random(n),
            "noise": rng.random(n),
            "device": rng.choice(["mobile", "desktop"], size=n),
        }
    )
    # Relevance: mostly the user-item affinity, a little popularity; the noise column is irrelevant.
    utility = 3 * frame["affinity"] + 0.5 * frame["popularity"] + rng.normal(0, 0.3, n)
    label = np.digitize(utility, [1.5, 2.5, 3.0]).astype(float)
    group = np.repeat(np.arange(n_groups), per_group)
    return RankerData(frame, label, group, cat_features=["device"])


def _ndcg10(scores: np.ndarray, data: RankerData) -> float:
    values = []
    for g in np.unique(data.group):
        idx = np.flatnonzero(data.group == g)
        order = idx[np.argsort(-scores[idx])][:10]
        ideal = idx[np.argsort(-data.label[idx])][:10]
        discount = 1 / np.log2(np.arange(2, len(order) + 2))
        dcg = ((2 ** data.label[order] - 1) * discount).sum()
        idcg = ((2 ** data.label[ideal] - 1) * discount).sum()
        values.append(dcg / idcg if idcg > 0 else 0.0)
    return float(np.mean(values))


@pytest.mark.parametrize("loss", ["YetiRank", "PairLogit", "QueryRMSE"])
def test_ranker_learns_the_planted_relevance(loss: str) -> None:
    train, valid, test = _groups(150, 30, 1), _groups(40, 30, 2), _groups(40, 30, 3)
    model, metrics = train_ranker(train, valid, loss=loss, iterations=120, depth=4)
    learned = _ndcg10(model.predict(test.features), test)
    random = _ndcg10(np.random.default_rng(0).random(len(test.label)), test)
    assert learned > random + 0.15
    assert metrics["valid_ndcg@10"] > 0.7
    importance = dict(zip(model.feature_names_, model.get_feature_importance(train.pool()), strict=True))
    assert importance["affinity"] > importance["noise"]


def test_unknown_loss_is_refused() -> None:
    data = _groups(5, 5, 0)
    with pytest.raises(ValueError, match="loss must be one of"):
        train_ranker(data, data, loss="MSE")
