"""A serving replica's long-lived heap kept out of Python's cyclic garbage collector.

A replica holds a few hundred thousand long-lived Python objects: imported modules, Feast's registry, the catalog's
item feature columns (one list per item for the category lists). A full (generation 2) collection walks every one
with the GIL held, inside whichever request happens to trigger it. Measured at 1M users / 100k items, 480k objects in
a fused replica's process (serving.app.local_backend answering 1,500 requests one after the other): a full collection
took 240-270 ms, which made the in-process p99 26.6 ms and its max 282 ms. ``gc.freeze`` moves every object alive
now into a permanent generation the collector never walks (reference counting still frees them); with it the same
1,500 requests had p99 20.0 ms and max 37 ms. Frozen cyclic garbage is never freed, so the young garbage goes first.
"""

from __future__ import annotations

import gc


def settle(full: bool = False) -> None:
    """Collect the young generations (everything with ``full``: at start-up, before any request), then freeze what
    is alive: call after loading long-lived state."""
    gc.collect(2 if full else 1)
    gc.freeze()
