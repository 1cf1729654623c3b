"""When a model orders slates by the item-item score alone, retrieval skips the collaborative vector source and keeps
only the content source's nearest few (none when every item has a collaborative vector) once the item-item source
fills the rerank pool (recstack.stages.retrieve.retrieve), and only then."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from scipy import sparse

from recstack.stages.item_item import ItemItem, UserHistory
from recstack.stages.retrieve import ALONE_CONTENT, Filters, ItemItemIndex, RetrievalParams, retrieve


class RecordingConnection:
    """Keeps the parameters of each statement; the user's state has a user vector and one recent item with both
    vectors (so both vector sources have a query), the candidate statement finds nothing."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def execute(self, statement: Any, params: dict[str, Any], binary: bool = False) -> RecordingConnection:
        self.calls.append({**params, "cold_only": "v.cf IS NULL" in _text(statement)})
        return self

    def fetchall(self) -> list[Any]:
        if len(self.calls) == 1:  # user_state
            return [("u1", np.ones(64, np.float32), None), ("i1", np.ones(64, np.float32), np.ones(384, np.float32))]
        return []


def _text(statement: Any) -> str:
    return statement if isinstance(statement, str) else statement.as_string()


def _sources(n_items: int, history_items: int, **kwargs: Any) -> dict[str, int]:
    """The candidate statement's source sizes for a user with ``history_items`` items among ``n_items``."""
    rng = np.random.default_rng(0)
    weights = sparse.csr_matrix(rng.random((n_items, n_items)).astype(np.float32))
    index = ItemItemIndex(np.arange(n_items, dtype=np.int64), ItemItem(weights), "v1")
    history = UserHistory(
        np.arange(history_items, dtype=np.int64), np.ones(history_items, np.float32), np.arange(history_items)
    )
    conn = RecordingConnection()
    retrieve(conn, "u1", [], kwargs.pop("filters", Filters()), kwargs.pop("exclude", []), RetrievalParams(),
             item_item=index, history=history, **kwargs)  # fmt: skip
    candidates = conn.calls[-1]
    return {
        "cf": int(candidates["n_cf"]),
        "content": int(candidates["n_ct"]),
        "item_item": len(candidates["ii"]),
        "content_cold_only": candidates["cold_only"],
    }


def test_vector_sources_are_cut_when_item_item_alone_fills_the_pool() -> None:
    # the content scan stays for its nearest few items without a collaborative vector: new near-duplicates of the
    # history rank high (place_cold), any other item ranks by its item-item score whichever source found it
    found = _sources(400, 10, item_item_alone_from=100)
    assert found == {"cf": 0, "content": ALONE_CONTENT, "item_item": 200, "content_cold_only": True}


def test_the_content_scan_is_skipped_too_when_every_item_has_a_collaborative_vector() -> None:
    # no item place_cold could lift: the content scan would only find items the item-item order ranks lower
    found = _sources(400, 10, item_item_alone_from=100, cold_items=False)
    assert (found["cf"], found["content"], found["item_item"]) == (0, 0, 200)
    found = _sources(400, 10, cold_items=False)  # the ranker orders the slate: every source still, every item
    assert found["content"] == RetrievalParams().content and not found["content_cold_only"]


@pytest.mark.parametrize(
    "case",
    [
        {},  # the model's ranker orders the slate: every source
        {"item_item_alone_from": 100, "filters": Filters(domain="movies")},  # a filter may drop item-item candidates
        {"item_item_alone_from": 100, "exclude": [f"x{i}" for i in range(150)]},  # maybe 50 left after these
    ],
)
def test_every_source_is_asked_otherwise(case: dict[str, Any]) -> None:
    found = _sources(400, 10, **case)
    assert found["cf"] == RetrievalParams().cf and found["content"] == RetrievalParams().content
    assert not found["content_cold_only"]


def test_a_user_with_few_item_item_candidates_gets_every_source() -> None:
    found = _sources(60, 10, item_item_alone_from=100)  # 50 unseen items: fewer than the pool
    assert found["cf"] == RetrievalParams().cf and found["item_item"] == 50
