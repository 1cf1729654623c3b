"""CPU of one ranking call: the promoted CatBoost model fed a pandas DataFrame (the simple way) against CatBoost's
FeaturesData (what serving does), on real requests of a trained stack (~300 candidates each).

Usage, with the stack's RECSTACK_* environment:

    python -m bench.bench_rank_input [--users 200] [--repeat 3]

Prints CPU milliseconds per call (process time, so other load on the machine does not inflate it) of building the
input and predicting, for both ways, and checks that both give the same scores.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from bench.bench_serving import sample_users
from recstack.settings import get_settings


def main() -> None:
    from recstack.stages.rank import RankContext, model_columns, score
    from recstack.stages.retrieve import Filters
    from serving.runtimes import FeatureLookup, Ranker, Retriever, limit_math_threads

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    limit_math_threads()
    settings = get_settings()
    retriever, lookup, ranker = Retriever(settings), FeatureLookup(settings), Ranker(settings)
    found = ranker.model(None)
    if found is None:
        raise SystemExit("no promoted model: run `recstack train` first")
    version, model, features, categorical = found.version, found.model, found.features, found.categorical
    requests = []
    for user_id in sample_users(args.users):
        candidates = retriever.retrieve(user_id, Filters(), [])
        looked_up = lookup.lookup(user_id, candidates.item_ids)
        requests.append(
            (looked_up.user, looked_up.items, candidates, RankContext(when=pd.Timestamp.now(tz="UTC").to_pydatetime()))
        )

    def via_frame(user, items, candidates, ctx):  # type: ignore[no-untyped-def]
        frame = pd.DataFrame(model_columns(user, items, candidates, ctx, features, categorical))
        return np.asarray(model.predict(frame, thread_count=1), dtype=np.float64)

    def via_features_data(user, items, candidates, ctx):  # type: ignore[no-untyped-def]
        return score(model, model_columns(user, items, candidates, ctx, features, categorical), categorical)

    for request in requests[:20]:
        np.testing.assert_allclose(via_frame(*request), via_features_data(*request), rtol=0, atol=1e-9)
    sizes = [len(r[2]) for r in requests]
    print(
        f"model {version}: {len(features)} features ({len(categorical)} categorical), "
        f"{len(requests)} requests, {np.mean(sizes):.0f} candidates on average; scores equal"
    )
    for _ in range(args.repeat):
        for way in (via_frame, via_features_data):
            started = time.process_time()
            for request in requests:
                way(*request)
            per_call = (time.process_time() - started) / len(requests) * 1000
            print(f"{way.__name__:20s} {per_call:6.2f} ms CPU per call (columns + predict)")


if __name__ == "__main__":
    main()
