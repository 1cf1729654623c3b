"""The item-item source's head against the EASE baseline on a stack's own events, offline: `recstack evaluate`'s
split and sampled users (random protocol, seed 42; ``--users`` of them, sampled as `recstack evaluate --users`
samples), the served item-item functions (training/item_item.py), each user's seen items excluded. For data too
large to re-ingest as MovieLens (bench/probe_item_item.py is the ml-latest-small twin). The ``default`` row
reproduces `recstack evaluate`'s item-item order when the trained model serves it (at 1M users, head 2500: 0.0687
both).

    RECSTACK_HOME=... python -m bench.probe_head [--users 1000] default 2500 8000:1000

Variants: ``default`` (fit_ease's defaults), ``<head>`` (whole rows on that many of the most touched items, if they
fit the weight budget) or ``<head>:<n>`` (rows cut to their n largest magnitudes), any of them with ``,l2=<x>`` (the
ridge penalty instead of the default: ``default,l2=400``), or ``selected`` (the fit `recstack train` chooses,
training.item_item.select on a random split of the history).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from bench.probe_item_item import report
from recstack import db, stack
from recstack.settings import get_settings
from training import baselines, item_item, protocols
from training.evaluate import EvalConfig, build_test_set, score_slates
from training.interactions import load_catalog, load_interactions

BASELINE = "ease (recstack evaluate's baseline)"


def _rows_of(scores: np.ndarray, row: dict[int, int]) -> Callable[[int], np.ndarray]:
    return lambda user: scores[row[user]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+", help="default | <head> | <head>:<neighbours>")
    parser.add_argument("--users", type=int, default=EvalConfig.users, help="test users sampled, as `evaluate --users`")
    args = parser.parse_args()
    settings = get_settings()
    started = time.perf_counter()
    with db.connect(stack.postgres_dsn(settings), settings.connect_timeout_s) as conn:
        catalog = load_catalog(conn)
        events = load_interactions(conn, catalog)
    split = protocols.ProtocolConfig(name="random", seed=42)
    holdout = protocols.split(events.user, events.item, events.event_type, events.value, events.ts, split)
    test = build_test_set(catalog, events, holdout, EvalConfig(users=args.users))
    n_items = catalog.n_items
    print(f"{len(events)} events, {len(test.users)} users ({time.perf_counter() - started:.0f} s)", flush=True)
    history = item_item.history_matrix(test.before, catalog.n_users, n_items)
    queries = item_item.query_matrix(test.before, catalog.n_users, n_items)[test.users]
    ease = baselines.ease(baselines.user_item_matrix(test.before, catalog.n_users, n_items))
    slates = {BASELINE: score_slates(test, n_items, ease.scores, 10)}
    row = {int(u): n for n, u in enumerate(test.users)}
    for variant in args.variants:
        started = time.perf_counter()
        shape, _, penalty = variant.partition(",l2=")
        l2 = float(penalty) if penalty else item_item.L2
        if shape == "selected":  # the fit `recstack train` (defaults) chooses: on a random split of the history
            chosen = item_item.select_on(test.before, catalog.n_users, n_items)
            print(f"selected {chosen.choice.label()}, valid NDCG@10 by fit {chosen.ndcg}", flush=True)
            shape, l2, model = (
                "selected",
                chosen.choice.l2,
                item_item.fit(test.before, catalog.n_users, n_items, chosen.choice),
            )
        if shape == "default":
            model = item_item.fit_ease(history, l2=l2)
        elif shape != "selected":
            head, _, cut = shape.partition(":")
            model = item_item.fit_ease(history, l2=l2, max_items=int(head), neighbours=int(cut) if cut else None)
        scores = np.asarray((queries @ model.weights.tocsr()).todense())
        slates[variant] = score_slates(test, n_items, _rows_of(scores, row), 10)
        print(f"{variant}: {model.weights.nnz} weights ({time.perf_counter() - started:.0f} s)", flush=True)
    report(slates, test.relevant, BASELINE)  # bench/probe_item_item.py's table


if __name__ == "__main__":
    main()
