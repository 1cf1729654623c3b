"""Behaviour of a trained model on MovieLens-format data with planted tastes, through the API a user calls.

A small ml-latest layout folder (ratings.csv, movies.csv) is made here: each user loves one genre and rates most of
it 4-5, everyone also watched a few blockbusters and rated them 3. Held out: a random 10% of each user's ratings
>= 3.5 (training/protocols.py, as `recstack evaluate --protocol random` and bench/bench_quality.py cut it). The rest
is imported with `recstack ingest movielens`, built, materialized and trained with the library calls the commands
make; then `POST /recommend` answers for every user with held-out ratings. A most-popular list knows nothing of
the tastes; the served slates must find far more of the held-out movies.

Runs after tests/integration (it takes over the session's stack and replaces its data).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from recstack.settings import Settings
from tests.conftest import load_featured
from training import metrics
from training.protocols import ProtocolConfig, split

pytestmark = pytest.mark.integration

GENRES = ["Action", "Comedy", "Drama", "Horror"]


def planted_movielens(folder: Path, users: int = 240, per_genre: int = 30, seed: int = 5) -> pd.DataFrame:
    """Write ratings.csv and movies.csv; return the ratings (userId, movieId, rating, timestamp)."""
    rng = np.random.default_rng(seed)
    movies = pd.DataFrame(
        {
            "movieId": np.arange(1, per_genre * len(GENRES) + 11),
            "title": [f"Movie {n} ({1980 + n % 40})" for n in range(1, per_genre * len(GENRES) + 11)],
            "genres": [GENRES[n // per_genre] for n in range(per_genre * len(GENRES))] + ["Action|Comedy"] * 10,
        }
    )
    blockbusters = movies["movieId"].to_numpy()[-10:]
    rows = []
    t = 1_500_000_000
    for u in range(1, users + 1):
        genre = u % len(GENRES)
        own = np.arange(genre * per_genre, (genre + 1) * per_genre) + 1
        taste = rng.choice(own, 18, replace=False, p=np.linspace(2, 1, per_genre) / np.linspace(2, 1, per_genre).sum())
        other = rng.choice(np.setdiff1d(movies["movieId"].to_numpy()[:-10], own), 4, replace=False)
        watched = rng.choice(blockbusters, 6, replace=False)
        for movie, rating in [
            *[(m, rng.choice([4.0, 4.5, 5.0])) for m in taste],
            *[(m, rng.choice([1.5, 2.0, 2.5])) for m in other],
            *[(m, 3.0) for m in watched],
        ]:
            t += int(rng.integers(60, 3600))
            rows.append((u, int(movie), float(rating), t))
    ratings = pd.DataFrame(rows, columns=["userId", "movieId", "rating", "timestamp"])
    folder.mkdir(parents=True, exist_ok=True)
    movies.to_csv(folder / "movies.csv", index=False)
    ratings.to_csv(folder / "ratings.csv", index=False)
    return ratings


def test_served_slates_find_the_planted_tastes_a_popular_list_cannot(stack_settings: Settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from recstack.ingest.movielens import IdMapping, read_movielens
    from serving.app import AppConfig, local_backend
    from serving.http import create_api
    from training.pipeline import TrainConfig, train

    ratings = planted_movielens(tmp_path / "all")
    holdout = split(
        ratings["userId"].to_numpy(),
        ratings["movieId"].to_numpy(),
        np.full(len(ratings), "rating", object),
        ratings["rating"].to_numpy(),
        ratings["timestamp"].to_numpy(),
        ProtocolConfig(name="random", core=5, seed=2020),
    )
    test, kept = ratings[holdout.test], ratings[~holdout.test]
    planted_movielens(tmp_path / "train")  # movies.csv; ratings.csv replaced by the training part
    kept.to_csv(tmp_path / "train" / "ratings.csv", index=False)

    load_featured(stack_settings, read_movielens(tmp_path / "train", IdMapping(prefix="")), source="movielens")
    report = train(stack_settings, TrainConfig(trials=2, smoke=True, epochs=4, seed=3))
    assert report.valid_orders  # the ranker was compared with its best single source

    relevant: dict[int, dict[int, int]] = {}
    for u, m in zip(test["userId"], test["movieId"], strict=True):
        relevant.setdefault(int(u), {})[int(m)] = 1
    users = sorted(relevant)
    popular = kept.groupby("movieId").size().sort_values(ascending=False, kind="stable").index.to_numpy()
    seen = kept.groupby("userId")["movieId"].apply(set).to_dict()
    popular_slates = [np.array([m for m in popular if m not in seen[u]][:10]) for u in users]
    # A generous stage deadline, as in the serving tests: right after an in-process train (Tune's workers still
    # exiting) a lookup has missed the default 150 ms on the busy CI machine (CI at 9c4fc74), and the popular slate
    # it degraded to says nothing about slate quality, which is what this test is about.
    backend = local_backend(stack_settings, AppConfig(deadline_ms=3000))  # every stage in this process, no Ray
    with TestClient(create_api(backend, stack_settings)) as client:
        # One request to warm the caches first.
        client.post("/recommend", json={"user_id": str(users[0]), "k": 10})
        served = []
        for u in users:
            answer = client.post("/recommend", json={"user_id": str(u), "k": 10})
            assert answer.status_code == 200, answer.text
            assert not answer.json()["degraded"]
            served.append(np.array([int(i["item_id"]) for i in answer.json()["items"]]))
    rel = [relevant[u] for u in users]
    ndcg_served = metrics.accuracy(served, rel, 10)["ndcg@10"]
    ndcg_popular = metrics.accuracy(popular_slates, rel, 10)["ndcg@10"]
    assert ndcg_served > 2 * ndcg_popular, (ndcg_served, ndcg_popular)
