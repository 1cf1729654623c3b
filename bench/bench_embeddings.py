"""Embedding training: seconds per step and loss after one epoch, dense Adam vs sparse gradients + SparseAdam, on
random power-law interactions at the given sizes (no stack needed). Usage:

    python -m bench.bench_embeddings [USERS/ITEMS/EVENTS ...]      (default 20000/5000/200000 1000000/100000/100000)
"""

from __future__ import annotations

import sys
import time

import numpy as np

from training.embeddings import train_embeddings
from training.interactions import Interactions


def random_events(n_users: int, n_items: int, n: int, seed: int = 0) -> Interactions:
    rng = np.random.default_rng(seed)
    return Interactions(
        user=rng.integers(0, n_users, n).astype(np.int32),
        item=(rng.zipf(1.3, n) % n_items).astype(np.int32),
        event_type=np.array(["like"] * n, dtype=object),
        value=np.full(n, np.nan, np.float32),
        ts=np.arange(n, dtype=np.int64),
    )


def main() -> None:
    sizes = sys.argv[1:] or ["20000/5000/200000", "1000000/100000/100000"]
    for size in sizes:
        n_users, n_items, n = (int(x) for x in size.split("/"))
        events = random_events(n_users, n_items, n)
        for sparse in (False, True):
            started = time.perf_counter()
            model = train_embeddings(events, n_users, n_items, epochs=1, sparse=sparse, seed=1)
            seconds = time.perf_counter() - started
            steps = max(1, -(-n // 1024))
            print(
                f"{n_users:>8} users {n_items:>7} items {n:>8} events  {'sparse' if sparse else 'dense ':6}  "
                f"{seconds:7.1f} s  {1000 * seconds / steps:7.1f} ms/step  loss {model.losses[-1]:.3f}"
            )


if __name__ == "__main__":
    main()
