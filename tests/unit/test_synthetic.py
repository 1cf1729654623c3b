"""The synthetic generator: deterministic, well-formed, and with structure a recommender can find."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recstack.ingest.records import DOMAINS, EVENT_COLUMNS, EVENT_TYPES, ITEM_COLUMNS, USER_COLUMNS
from recstack.ingest.synthetic import CATEGORIES, generate, latent_tastes

USERS, ITEMS, EVENTS = 600, 240, 30_000


@pytest.fixture(scope="module")
def batch():  # type: ignore[no-untyped-def]
    return generate(users=USERS, items=ITEMS, events=EVENTS, seed=11)


def test_same_seed_same_data_other_seed_other_data(batch) -> None:  # type: ignore[no-untyped-def]
    again = generate(users=USERS, items=ITEMS, events=EVENTS, seed=11)
    pd.testing.assert_frame_equal(batch.events, again.events)
    pd.testing.assert_frame_equal(batch.items, again.items)
    other = generate(users=USERS, items=ITEMS, events=EVENTS, seed=12)
    assert not other.events["item_external_id"].equals(batch.events["item_external_id"])


def test_frames_follow_the_loader_contract(batch) -> None:  # type: ignore[no-untyped-def]
    assert list(batch.users.columns) == USER_COLUMNS
    assert list(batch.items.columns) == ITEM_COLUMNS
    assert list(batch.events.columns) == EVENT_COLUMNS
    assert (len(batch.users), len(batch.items), len(batch.events)) == (USERS, ITEMS, EVENTS)
    assert batch.rows_read == USERS + ITEMS + EVENTS
    assert batch.events["event_id"].is_unique
    assert str(batch.events["occurred_at"].dt.tz) == "UTC"
    assert set(batch.events["event_type"]) == set(EVENT_TYPES)
    assert set(batch.items["domain"]) == set(DOMAINS)
    ratings = batch.events.loc[batch.events["event_type"] == "rating", "value"]
    assert ratings.between(1, 5).all() and (ratings == ratings.round()).all()
    assert batch.events.loc[batch.events["event_type"] != "rating", "value"].isna().all()


def test_events_reference_existing_users_and_items_after_item_creation(batch) -> None:  # type: ignore[no-untyped-def]
    assert set(batch.events["user_external_id"]) == set(batch.users["external_id"])  # every user is active
    assert set(batch.events["item_external_id"]) <= set(batch.items["external_id"])
    created = batch.items.set_index("external_id")["created_at"]
    assert (batch.events["occurred_at"].to_numpy() >= created[batch.events["item_external_id"]].to_numpy()).all()


def test_providers_have_very_unequal_catalog_sizes(batch) -> None:  # type: ignore[no-untyped-def]
    sizes = batch.items["provider_id"].value_counts()
    assert sizes.max() >= 5 * sizes.median()


def test_positive_feedback_follows_planted_tastes_more_than_popularity(batch) -> None:  # type: ignore[no-untyped-def]
    """Users' positives fall in their own top latent categories far more often than global popularity predicts."""
    taste = latent_tastes(USERS, seed=11)
    top3 = np.argsort(-taste, axis=1)[:, :3]
    cat_index = {c: j for j, (_, c) in enumerate(CATEGORIES)}
    item_cat = batch.items.set_index("external_id")["categories"].map(lambda cs: cat_index[cs[0]])
    events = batch.events
    positive = events["event_type"].isin(["like", "purchase"]) | (
        (events["event_type"] == "rating") & (events["value"] >= 4)
    )
    pos = events[positive]
    user = pos["user_external_id"].str[1:].astype(int).to_numpy() - 1
    cats = item_cat[pos["item_external_id"]].to_numpy()
    in_own_top = (top3[user] == cats[:, None]).any(axis=1).mean()
    global_share = np.bincount(cats, minlength=len(CATEGORIES)) / len(cats)
    popular_top3 = np.argsort(-global_share)[:3]
    in_popular_top = np.isin(cats, popular_top3).mean()
    assert in_own_top > 0.5
    assert in_own_top > 2 * in_popular_top


def test_negative_feedback_falls_outside_tastes(batch) -> None:  # type: ignore[no-untyped-def]
    taste = latent_tastes(USERS, seed=11)
    cat_index = {c: j for j, (_, c) in enumerate(CATEGORIES)}
    item_cat = batch.items.set_index("external_id")["categories"].map(lambda cs: cat_index[cs[0]])
    events = batch.events
    user = events["user_external_id"].str[1:].astype(int).to_numpy() - 1
    weight = taste[user, item_cat[events["item_external_id"]].to_numpy()]
    negative = events["event_type"].isin(["dislike", "skip"]).to_numpy()
    liked = (events["event_type"] == "like").to_numpy()
    assert weight[negative].mean() < 0.5 * weight[liked].mean()


def test_too_small_requests_are_refused() -> None:
    with pytest.raises(ValueError, match="items >= "):
        generate(users=5, items=3, events=100, seed=0)
