"""Recommendation quality where users meet it: a MovieLens folder split by a protocol, the training part run through
the CLI a new user runs (default settings) in a throwaway stack, then `POST /recommend {user_id, k: 10}` for every
user with held-out positives, beside EASE, item-kNN and popularity fit on the same training part in the same run.

    python -m bench.bench_quality --movielens /tmp/ml-latest-small --protocol random

The split is training/protocols.py (the one `recstack evaluate --protocol` uses): ratings >= 3.5 are positives,
10-core, each user's positives 80/10/10 (random, seed 2020) or the latest 10% (temporal); the test part is never
ingested. Ratings dated before 1990 are dropped first (the ingest refuses them). Nothing is downloaded: point
--movielens at a folder you have (MovieLens may not be redistributed; keep it out of the repo).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recstack.stack import free_port
from recstack.stages.rerank import NEUTRAL, RerankParams, long_tail_mask
from training import baselines, metrics
from training.embeddings import item_popularity
from training.interactions import Interactions
from training.protocols import ProtocolConfig, split

ROOT = Path(__file__).resolve().parents[1]
MIN_YEAR_TS = 631152000  # 1990-01-01


def read_ratings(folder: Path) -> tuple[pd.DataFrame, str, float, float]:
    """(ratings with user, movie, rating, ts; the ratings file name; scale low; scale high)."""
    if (folder / "ratings.csv").is_file():
        frame = pd.read_csv(folder / "ratings.csv")
        frame.columns = ["user", "movie", "rating", "ts"]
        return frame, "ratings.csv", 0.5, 5.0
    if (folder / "u.data").is_file():
        frame = pd.read_csv(folder / "u.data", sep="\t", names=["user", "movie", "rating", "ts"])
        return frame, "u.data", 1.0, 5.0
    raise SystemExit(f"{folder}: no ratings.csv (ml-latest) or u.data (ml-100k)")


def write_training_part(folder: Path, out: Path, name: str, frame: pd.DataFrame) -> None:
    out.mkdir(parents=True)
    for f in folder.iterdir():
        if f.is_file() and f.name != name:
            shutil.copy(f, out / f.name)
    if name == "ratings.csv":
        frame.rename(columns={"user": "userId", "movie": "movieId", "rating": "rating", "ts": "timestamp"}).to_csv(
            out / name, index=False
        )
    else:
        frame.to_csv(out / name, sep="\t", header=False, index=False)


def post(url: str, body: dict, timeout: float = 10.0, retries: int = 5) -> dict:
    """POST as a client should: a 503 (overload, Retry-After) is retried after the time it asks for."""
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    for attempt in range(retries + 1):
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as err:
            if err.code != 503 or attempt == retries:
                raise
            time.sleep(float(err.headers.get("Retry-After") or 1))
    raise AssertionError("unreachable")


def as_events(train: pd.DataFrame, low: float, high: float) -> tuple[Interactions, np.ndarray, np.ndarray]:
    """(the ratings as recstack's training stages see them: the importer's 1..5 mapping; user ids; movie ids), users
    and movies numbered in the order of their ids."""
    uid, user = np.unique(train["user"].to_numpy(), return_inverse=True)
    iid, item = np.unique(train["movie"].to_numpy(), return_inverse=True)
    value = 1.0 + (train["rating"].to_numpy(np.float64) - low) * 4.0 / (high - low)
    events = Interactions(
        user.astype(np.int32),
        item.astype(np.int32),
        np.full(len(train), "rating", object),
        value.astype(np.float32),
        train["ts"].to_numpy(np.int64),
    )
    return events, uid, iid


def long_tail_movies(events: Interactions, uid: np.ndarray, iid: np.ndarray) -> set[int]:
    """The movies serving's long-tail rule calls long tail (rerank.head_floor over the trained popularity,
    item_vectors.popularity: summed positive weight), over ``as_events``' training part."""
    return set(iid[long_tail_mask(item_popularity(events, len(uid), len(iid)))].tolist())


def baseline_slates(
    events: Interactions, uid: np.ndarray, iid: np.ndarray, users: np.ndarray
) -> dict[str, list[np.ndarray]]:
    """EASE (l2 200), item-kNN (cosine, 200 neighbours) and popularity on ``as_events``' training part, seen items
    excluded, on recstack's positives (the importer's 1..5 mapping, then the training stages' event weights)."""
    user, item = events.user, events.item
    x = baselines.user_item_matrix(events, len(uid), len(iid))
    seen = pd.Series(item).groupby(user).apply(lambda s: np.unique(s.to_numpy())).to_dict()
    popularity = np.asarray(x.sum(0)).ravel().astype(np.float64)
    scorers = {
        "popularity": lambda u: popularity,
        "item_knn": baselines.item_knn(x, neighbours=200).scores,
        "ease": baselines.ease(x, l2=200.0).scores,
    }
    position = {u: n for n, u in enumerate(uid)}
    out: dict[str, list[np.ndarray]] = {}
    for name, scorer in scorers.items():
        slates = []
        for u in users:
            s = scorer(position[u]).astype(np.float64).copy()
            s[seen.get(position[u], [])] = -np.inf
            top = np.argpartition(-s, 10)[:10]
            slates.append(iid[top[np.argsort(-s[top], kind="stable")]])
        out[name] = slates
    return out


def run(cmd: list[str], env: dict[str, str], log: Path) -> float:
    started = time.perf_counter()
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        code = subprocess.call(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    if code != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {code}: see {log}")
    return round(time.perf_counter() - started, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--movielens", type=Path, required=True)
    parser.add_argument("--protocol", choices=["random", "temporal"], default="random")
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--users", type=int, default=0, help="at most this many test users (0: all)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="leave the stack and the API running")
    args = parser.parse_args()

    ratings, name, low, high = read_ratings(args.movielens)
    dropped = int((ratings["ts"] < MIN_YEAR_TS).sum())
    ratings = ratings[ratings["ts"] >= MIN_YEAR_TS].reset_index(drop=True)
    _, user = np.unique(ratings["user"].to_numpy(), return_inverse=True)
    _, item = np.unique(ratings["movie"].to_numpy(), return_inverse=True)
    holdout = split(
        user,
        item,
        np.full(len(ratings), "rating", object),
        ratings["rating"].to_numpy(np.float64),
        ratings["ts"].to_numpy(np.int64),
        ProtocolConfig(name=args.protocol, seed=args.seed),
    )
    test = ratings[holdout.test]
    train = ratings[~holdout.test]
    relevant_by_user: dict[int, dict[int, int]] = {}
    for u, m in zip(test["user"].to_numpy(), test["movie"].to_numpy(), strict=True):
        relevant_by_user.setdefault(int(u), {})[int(m)] = 1
    users = np.array(sorted(relevant_by_user))
    if args.users and len(users) > args.users:
        users = np.sort(np.random.default_rng(args.seed).choice(users, args.users, replace=False))
    relevant = [relevant_by_user[u] for u in users]

    work = args.workdir or Path(tempfile.mkdtemp(prefix="rs-quality-"))
    data = work / "movielens-train"
    write_training_part(args.movielens, data, name, train)
    api_port = free_port()
    env = {
        **os.environ,
        "RECSTACK_HOME": str(work / "home"),
        "RECSTACK_POSTGRES_PORT": str(free_port()),
        "RECSTACK_REDIS_PORT": str(free_port()),
        "RECSTACK_SERVE_PORT": str(api_port),
    }
    for key in ("RECSTACK_POSTGRES_DSN", "RECSTACK_REDIS_URL", "RAY_ADDRESS"):
        env.pop(key, None)
    log = work / "pipeline.log"
    recstack = [sys.executable, "-m", "recstack.cli"]
    steps = [
        ("up", ["up"]),
        ("ingest", ["ingest", "movielens", str(data), "--id-prefix", ""]),
        ("features_build", ["features", "build"]),
        ("features_apply", ["features", "apply"]),
        ("materialize", ["materialize"]),
        ("train", ["train"]),
        ("serve", ["serve", "--detach"]),
    ]
    timings: dict[str, float] = {}
    try:
        for step, cmd in steps:
            print(f"{step} ...", flush=True)
            timings[step] = run([*recstack, *cmd], env, log)
        url = f"http://127.0.0.1:{api_port}/recommend"
        # the default rerank, none (relevance only), and each knob alone at its default, the others neutral
        default = RerankParams()
        variants: dict[str, dict[str, Any]] = {
            "recstack_recommend": {},
            "recstack_recommend_relevance_only": {"rerank": NEUTRAL},
            **{
                f"recstack_recommend_{knob}_only": {"rerank": {**NEUTRAL, knob: getattr(default, knob)}}
                for knob in NEUTRAL
            },
        }
        slates: dict[str, list[np.ndarray]] = {}
        degraded: dict[str, int] = {}
        started = time.perf_counter()
        for variant, extra in variants.items():
            slates[variant], degraded[variant] = [], 0
            for u in users:
                answer = post(url, {"user_id": str(u), "k": 10, **extra})
                degraded[variant] += bool(answer["degraded"])
                slates[variant].append(np.array([int(i["item_id"]) for i in answer["items"]], np.int64))
        timings["http_requests"] = round(time.perf_counter() - started, 1)
    finally:
        if not args.keep:
            subprocess.call([*recstack, "down"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    started = time.perf_counter()
    events, uid, iid = as_events(train, low, high)
    slates.update(baseline_slates(events, uid, iid, users))
    timings["baselines"] = round(time.perf_counter() - started, 1)

    tail = long_tail_movies(events, uid, iid)
    results = {}
    for method, method_slates in slates.items():
        row = metrics.accuracy(method_slates, relevant, 10)
        results[method] = {k: round(v, 4) for k, v in row.items() if k in ("ndcg@10", "recall@10", "hitrate@10")}
        shown = np.concatenate(method_slates) if method_slates else np.empty(0, np.int64)
        results[method]["coverage@10"] = round(len(np.unique(shown)) / max(len(iid), 1), 4)
        # exposure beyond the head: share of slate slots given to long-tail items (the rule serving applies)
        results[method]["long_tail_share@10"] = round(float(np.mean([m in tail for m in shown])), 4)
    served = metrics.per_user(slates["recstack_recommend"], relevant, 10)["ndcg"]
    vs: dict[str, dict[str, Any]] = {}
    for base in ("ease", "item_knn", "popularity", "recstack_recommend_relevance_only"):
        ratio, lo, hi = metrics.paired_bootstrap_ratio(served, metrics.per_user(slates[base], relevant, 10)["ndcg"])
        vs[base] = {"ratio": round(ratio, 4), "ci95": [round(lo, 4), round(hi, 4)]}
    summary = {
        "dataset": str(args.movielens),
        "protocol": {
            "name": args.protocol,
            "seed": args.seed,
            "min_rating": 3.5,
            "core": 10,
            "dropped_pre_1990": dropped,
        },
        "users_evaluated": len(users),
        "test_positives": len(test),
        "training_ratings": len(train),
        "results": results,
        "recommend_vs": vs,
        "degraded_answers": degraded,
        "timings_s": timings,
    }
    print(f"\n{args.protocol} protocol, {len(users)} users, NDCG@10 / Recall@10 / HitRate@10 / coverage / long tail")
    for method, row in results.items():
        figures = [row[k] for k in ("ndcg@10", "recall@10", "hitrate@10", "coverage@10", "long_tail_share@10")]
        print(f"  {method:36s} " + "  ".join(f"{v:.4f}" for v in figures))
    for base, versus in vs.items():
        lo, hi = versus["ci95"]
        print(f"  /recommend vs {base}: {versus['ratio']:.3f}x (95% CI {lo:.3f}-{hi:.3f})")
    out = args.out or ROOT / "bench" / "results" / f"quality-{args.movielens.name}-{args.protocol}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    print(f"written {out}; pipeline log {log}")


if __name__ == "__main__":
    main()
