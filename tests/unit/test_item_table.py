"""ItemTable.candidates: the item-item order's sources from memory (the statement's twin is compared on real Postgres
in tests/integration/test_serving_catalog.py)."""

from __future__ import annotations

import numpy as np
import pytest
from pgvector import Vector

from recstack.stages.item_table import ItemTable
from recstack.stages.retrieve import SOURCE_FEATURES, RetrievalParams, vector_matrix

COLUMN = {name: n for n, name in enumerate([*SOURCE_FEATURES, "from_ii"])}


def _table() -> ItemTable:
    """Eight items given out of id order; 7 and 8 have content only (cold); 3 and 5 tie on popularity."""
    ids = [5, 1, 2, 3, 4, 6, 7, 8]
    rng = np.random.default_rng(0)
    content = {i: rng.normal(size=384).astype(np.float32) for i in ids}
    content[8] = content[1] * 2  # the same direction as item 1's, another length
    cf = {i: Vector(rng.normal(size=64).astype(np.float32)).to_binary() for i in ids if i < 7}
    popularity = {1: 9.0, 2: 8.0, 3: 5.0, 4: 1.0, 5: 5.0, 6: 0.0, 7: 0.0, 8: 0.0}
    return ItemTable.build(
        np.array(ids),
        [f"e{i}" for i in ids],
        [None if i == 4 else f"title {i}" for i in ids],
        ["movies"] * len(ids),
        ["p"] * len(ids),
        [["a"] if i % 2 else None for i in ids],
        np.array([popularity[i] for i in ids], np.float32),
        vector_matrix([cf.get(i) for i in ids], 64),
        np.array([i in cf for i in ids]),
        vector_matrix([Vector(content[i]).to_binary() for i in ids], 384),
        np.ones(len(ids), bool),
        epoch=3,
    )


def test_sources_exclusions_and_features() -> None:
    table = _table()
    assert table.item_ids.tolist() == [1, 2, 3, 4, 5, 6, 7, 8]
    assert table.titles[3] == "" and table.categories[1] == []
    assert table.has_cold_items()
    p = RetrievalParams(item_item=2, cf=0, content=1, popular=3)
    content_q = table.content[0] / np.linalg.norm(table.content[0])
    query = np.ones(64, np.float32)
    at, features = table.candidates(query, content_q, ["e1"], p, np.array([6, 99, 2, 4]), np.array([3]))
    items = table.item_ids[at].tolist()
    # item-item: 6 and 2 (99 is not in the catalog; two at most); popular: 1 excluded by external id, 3 seen, so 2, 5
    # (3 and 5 tie; the lower id first, but 3 is out), 4; content: 8 (cold, the same direction as item 1)
    assert items == [2, 4, 5, 6, 8]
    from_ii = dict(zip(items, features[:, COLUMN["from_ii"]], strict=True))
    assert [i for i, f in from_ii.items() if f] == [2, 6]
    assert [i for i, f in zip(items, features[:, COLUMN["from_popular"]], strict=True) if f] == [2, 4, 5]
    assert [i for i, f in zip(items, features[:, COLUMN["from_content"]], strict=True) if f] == [8]
    assert features[:, COLUMN["from_cf"]].sum() == 0
    np.testing.assert_allclose(features[items.index(8), COLUMN["content_score"]], 1.0, rtol=1e-5)
    assert features[items.index(8), COLUMN["cf_score"]] == 0  # no collaborative vector
    np.testing.assert_allclose(features[items.index(2), COLUMN["cf_score"]], table.cf[1].sum(), rtol=1e-5)
    np.testing.assert_allclose(features[:, COLUMN["log_popularity"]], np.log1p([8.0, 1.0, 5.0, 0.0, 0.0]), rtol=1e-6)


def test_without_history_vectors_only_popular_and_item_item() -> None:
    at, features = _table().candidates(None, None, [], RetrievalParams(item_item=5, cf=0, popular=2), np.array([7]))
    assert at.tolist() == [0, 1, 6]  # items 1, 2 (popular), 7 (item-item)
    assert not features[:, COLUMN["cf_score"]].any() and not features[:, COLUMN["content_score"]].any()


def test_a_collaborative_scan_is_refused() -> None:
    with pytest.raises(ValueError, match="item-item order alone"):
        _table().candidates(np.ones(64, np.float32), None, [], RetrievalParams(cf=10), np.array([1]))


def test_recent_vectors_keep_the_order_and_leave_out_what_has_none() -> None:
    table = _table()
    cf, content = table.recent_vectors(["e7", "unknown", "e2", "e1", "e2"])
    np.testing.assert_array_equal(cf, table.cf[[1, 0, 1]])  # 7 has no collaborative vector
    np.testing.assert_array_equal(content, table.content[[6, 1, 0, 1]])
    assert table.recent_vectors([])[0].shape == (0, 64)


def test_category_lists_of_equal_length_stay_one_list_per_item() -> None:
    n = 3
    table = ItemTable.build(
        np.array([3, 1, 2]),
        ["c", "a", "b"],
        ["t"] * n,
        ["movies"] * n,
        ["p"] * n,
        [["x", "y"], ["x", "z"], ["y", "z"]],
        np.zeros(n, np.float32),
        np.zeros((n, 64), np.float32),
        np.zeros(n, bool),
        np.zeros((n, 384), np.float32),
        np.zeros(n, bool),
        epoch=1,
    )
    assert table.categories.shape == (n,)
    assert table.categories.tolist() == [["x", "z"], ["y", "z"], ["x", "y"]]  # in item id order
    assert table.external_ids.tolist() == ["a", "b", "c"] and table.position_of == {"a": 0, "b": 1, "c": 2}
