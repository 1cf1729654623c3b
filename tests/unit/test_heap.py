"""Long-lived serving state is kept out of Python's cyclic collector (recstack/heap.py): a full collection then walks
only what requests create, not the replica's hundreds of thousands of loaded objects."""

from __future__ import annotations

import gc
import weakref

import pytest

from recstack import heap
from recstack.features.online import OnlineLookup, ViewFeatures
from tests.unit.test_online_reload import SlowItemsRedis


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def walked() -> set[int]:
    return {id(o) for o in gc.get_objects()}


def test_settled_state_is_not_walked_but_what_comes_after_is() -> None:
    state = [[f"category-{i}"] for i in range(1000)]  # one list per item, as the item feature columns hold
    heap.settle()
    later = [["new"]]
    seen = walked()
    assert not any(id(x) in seen for x in state)
    assert id(later[0]) in seen


def test_garbage_cycles_are_collected_before_freezing() -> None:
    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle: only the collector frees it
    alive = weakref.ref(a)
    del a, b
    heap.settle()
    assert alive() is None  # not frozen with the live state, where nothing would ever free it


def test_loading_item_columns_settles_them(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bool] = []
    monkeypatch.setattr(heap, "settle", lambda full=False: calls.append(full))
    lookup = OnlineLookup(
        SlowItemsRedis(),  # type: ignore[arg-type]
        "recstack",
        [ViewFeatures("user_features", "user_id", ("likes_30d",))],
        [ViewFeatures("item_features", "item_id", ("popularity_30d",))],
    )
    lookup.load_items(["i1", "i2"])
    assert calls == [False]
