"""Where the item-item source stands against EASE, offline, in seconds: the split `bench_quality` uses, the served
item-item functions (training/item_item.py: history matrix, EASE fit on the head, recency-weighted query), and
variants of them, all scored with each user's history excluded, beside the EASE baseline `recstack evaluate` reports.
The served relevance-only /recommend figure equals the ``served`` row (checked at c1f8720: 0.2861 both, random).

    python -m bench.probe_item_item --movielens /tmp/ml-latest-small [--protocol random|temporal]

A probe, not a test: use it to try a change to the item-item source before running bench_quality through the API.
Variants: ``selected`` (the fit `recstack train` would choose: training.item_item.select on a random split of this
training part), ``no_recency`` (the query without the recency factor), ``l2=<x>``, ``head=<n>``,
``user_weight=<g>`` (each user's rows weigh n_items^-g in the Gram matrix), ``neighbours=<n>`` (each row cut to its
n largest weights), or several joined by commas (``head=8000,neighbours=200``). Nothing is downloaded; keep MovieLens
out of the repo.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from scipy import sparse

from bench.bench_quality import MIN_YEAR_TS, read_ratings
from recstack.stages.item_item import ItemItem
from training import baselines, metrics
from training import item_item as served
from training.interactions import Interactions
from training.protocols import ProtocolConfig, split


def ease_fit(
    x: sparse.csr_matrix, l2: float, head: int, user_weight: float = 0.0, neighbours: int | None = None
) -> ItemItem:
    """training.item_item.fit_ease with the users' rows optionally weighted in the Gram matrix."""
    if not user_weight:
        return served.fit_ease(x, l2=l2, max_items=head, neighbours=neighbours)
    n = np.asarray((x > 0).sum(1)).ravel().astype(np.float64) + 1
    w = n**-user_weight
    return served.fit_ease(sparse.diags(np.sqrt(w / w.mean())) @ x, l2=l2, max_items=head, neighbours=neighbours)


def score(weights: sparse.spmatrix | np.ndarray, query: sparse.csr_matrix, seen: sparse.csr_matrix, users: np.ndarray):  # type: ignore[no-untyped-def]
    """Top-10 slates of ``users``: query rows times the item-item weights, seen items excluded."""
    s = np.asarray((query[users] @ weights).todense() if sparse.issparse(weights) else query[users] @ weights)
    s = s.astype(np.float64)
    s[seen[users].nonzero()] = -np.inf
    top = np.argpartition(-s, 10, axis=1)[:, :10]
    return list(np.take_along_axis(top, np.argsort(-np.take_along_axis(s, top, 1), 1, kind="stable"), 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--movielens", type=Path, required=True)
    parser.add_argument("--protocol", choices=["random", "temporal"], default="random")
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument(
        "--variants", nargs="*", default=["no_recency", "l2=200", "head=4000", "user_weight=0.5"], help="see above"
    )
    args = parser.parse_args()

    ratings, _, low, high = read_ratings(args.movielens)
    ratings = ratings[ratings["ts"] >= MIN_YEAR_TS].reset_index(drop=True)
    _, user = np.unique(ratings["user"].to_numpy(), return_inverse=True)
    _, item = np.unique(ratings["movie"].to_numpy(), return_inverse=True)
    n_users, n_items = int(user.max()) + 1, int(item.max()) + 1
    kinds = np.full(len(ratings), "rating", object)
    holdout = split(
        user,
        item,
        kinds,
        ratings["rating"].to_numpy(np.float64),
        ratings["ts"].to_numpy(np.int64),
        ProtocolConfig(name=args.protocol, seed=args.seed),
    )
    value = (1.0 + (ratings["rating"].to_numpy(np.float64) - low) * 4.0 / (high - low)).astype(np.float32)
    keep = ~holdout.test  # what bench_quality ingests
    train = Interactions(
        user[keep].astype(np.int32),
        item[keep].astype(np.int32),
        kinds[keep],
        value[keep],
        ratings["ts"].to_numpy()[keep],
    )
    relevant_by_user: dict[int, dict[int, int]] = {}
    for u, i in zip(user[holdout.test & holdout.positive], item[holdout.test & holdout.positive], strict=True):
        relevant_by_user.setdefault(int(u), {})[int(i)] = 1
    users = np.array(sorted(relevant_by_user))
    relevant = [relevant_by_user[u] for u in users]
    seen = sparse.csr_matrix((np.ones(len(train.user)), (train.user, train.item)), shape=(n_users, n_items))

    history = served.history_matrix(train, n_users, n_items)
    query = served.query_matrix(train, n_users, n_items)
    positives = baselines.user_item_matrix(train, n_users, n_items)
    rows: dict[str, list[np.ndarray]] = {}
    started = time.perf_counter()
    ease = baselines.ease(positives, l2=200.0)
    dense = np.zeros((n_items, n_items), np.float32)
    dense[np.ix_(ease.head, ease.head)] = ease.weights
    rows["ease (recstack evaluate's baseline)"] = score(dense, positives, seen, users)
    rows["served"] = score(served.fit_ease(history).weights, query, seen, users)
    if "selected" in args.variants:  # as `recstack train` (defaults) fits it: chosen on its random split
        chosen = served.select_on(train, n_users, n_items)
        print(f"selected {chosen.choice.label()} (valid NDCG@10 by fit {chosen.ndcg})")
        rows["selected"] = score(served.fit(train, n_users, n_items, chosen.choice).weights, query, seen, users)
    for variant in [v for v in args.variants if v != "selected"]:
        fit = {"l2": served.L2, "head": served.MAX_ITEMS, "user_weight": 0.0, "neighbours": 0.0}
        names = set()
        for part in variant.split(","):  # several knobs at once: head=8000,neighbours=200
            name, _, raw = part.partition("=")
            names.add(name)
            if name in fit:
                fit[name] = float(raw)
        model = ease_fit(history, fit["l2"], int(fit["head"]), fit["user_weight"], int(fit["neighbours"]) or None)
        rows[variant] = score(model.weights, history if "no_recency" in names else query, seen, users)
    print(f"{args.protocol}, {len(users)} users, NDCG@10 ({time.perf_counter() - started:.0f} s)")
    report(rows, relevant, "ease (recstack evaluate's baseline)")


def report(rows: dict[str, list[np.ndarray]], relevant: list[dict[int, int]], baseline: str) -> None:
    """NDCG@10 of each method's slates and its ratio to ``baseline``'s, with the paired bootstrap 95% interval."""
    base = metrics.per_user(rows[baseline], relevant, 10)["ndcg"]
    width = max(len(name) for name in rows)
    for name, slates in rows.items():
        ndcg = metrics.per_user(slates, relevant, 10)["ndcg"]
        ratio, lo, hi = metrics.paired_bootstrap_ratio(ndcg, base)
        print(f"  {name:{width}s} {ndcg.mean():.4f}  {ratio:.3f}x EASE (95% CI {lo:.3f}-{hi:.3f})")


if __name__ == "__main__":
    main()
