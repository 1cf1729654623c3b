"""Request context (device, locale) from the request an interaction answered into the ranker's training rows, with
the values serving computes for the same request."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pytest

from recstack.features import transforms
from recstack.features.training_frames import with_request_context
from recstack.stages.rank import RankContext, model_columns
from recstack.stages.retrieve import CANDIDATE_FEATURES, CandidateSet
from training import dataset
from training.interactions import Catalog, Interactions

CONTEXT_FEATURES = ["context_features__ctx_device", "context_features__ctx_locale"]


def catalog(users: int, items: int) -> Catalog:
    return Catalog(
        user_ids=np.arange(1, users + 1),
        user_external=np.array([f"u{u}" for u in range(users)], object),
        item_ids=np.arange(1, items + 1),
        item_external=np.array([f"i{i}" for i in range(items)], object),
        item_domain=np.array(["movies"] * items, object),
        item_provider=np.array(["p"] * items, object),
        item_categories=[[] for _ in range(items)],
        item_created_at=np.zeros(items, "datetime64[s]"),
    )


def window(devices: list[Any], locales: list[Any], users: list[int], ts: list[int]) -> Interactions:
    """Held-out events, each with the (raw) device and locale stored for it."""
    from training.interactions import context_codes

    codes, contexts = context_codes(pd.Series(devices, dtype=object), pd.Series(locales, dtype=object))
    n = len(users)
    return Interactions(
        user=np.array(users, np.int32),
        item=np.arange(n, dtype=np.int32),
        event_type=np.array(["click"] * n, object),
        value=np.full(n, np.nan, np.float32),
        ts=np.array(ts, np.int64),
        context=codes,
        contexts=contexts,
    )


class _RecordingStore:
    """Feast's get_historical_features as far as the ranker frame needs it: keeps the entity rows it was given."""

    def __init__(self) -> None:
        self.entity_rows: list[pd.DataFrame] = []

    def get_feature_service(self, name: str) -> str:
        return name

    def get_historical_features(self, entity_df: pd.DataFrame, features: Any, full_feature_names: bool) -> Any:
        self.entity_rows.append(entity_df.copy())
        joined = entity_df.copy()
        joined = pd.concat([joined, transforms.context_features(entity_df).add_prefix("context_features__")], axis=1)

        class _Job:
            def to_df(self) -> pd.DataFrame:
                return joined.sample(frac=1.0, random_state=0)  # Feast does not keep the order

        return _Job()


def test_a_training_row_carries_the_device_and_locale_of_the_request_its_interaction_answered() -> None:
    # User 0's first held-out event answered a request from a phone in German; user 1's came from a batch import
    # without any context.
    held_out = window(["mobile", None, "desktop"], ["de-DE", None, "fr_FR"], users=[0, 1, 0], ts=[100, 150, 200])
    requests = dataset.first_requests(held_out)
    candidates = pd.DataFrame({"user": [0, 0, 1], "item": [0, 1, 2]})
    store = _RecordingStore()

    frame = dataset.join_features(store, candidates, catalog(2, 3), requests)  # type: ignore[arg-type]

    rows = store.entity_rows[0]
    assert rows["device"].tolist() == ["mobile", "mobile", "unknown"]
    assert rows["locale"].tolist() == ["de_DE", "de_DE", "unknown"]
    assert frame["context_features__ctx_device"].tolist() == ["mobile", "mobile", "unknown"]
    assert frame["context_features__ctx_locale"].tolist() == ["de_DE", "de_DE", "unknown"]
    # Every candidate of a list shares its request's context: labelled rows with a device and unlabelled ones
    # without would teach the ranker that "a device is known" means "acted on".
    assert rows.groupby("user_id")["device"].nunique().eq(1).all()


def test_the_request_of_a_user_is_the_first_held_out_event_with_its_time() -> None:
    held_out = window(["tv", "mobile"], ["en_US", "de_DE"], users=[3, 3], ts=[500, 400])
    requests = dataset.first_requests(held_out)
    assert requests.loc[3].to_dict() == {"ts": 400, "device": "mobile", "locale": "de_DE"}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("mobile", "mobile"),
        (" Mobile ", "mobile"),
        ("TV", "tv"),
        ("smartphone", "mobile"),
        ("toaster", "other"),
        ("", "unknown"),
        (None, "unknown"),
        (float("nan"), "unknown"),
    ],
)
def test_device_strings_have_one_spelling(raw: Any, expected: str) -> None:
    assert transforms.normalize_device(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("de_DE", "de_DE"),
        ("de-DE", "de_DE"),
        ("DE-de", "de_DE"),
        ("en", "en"),
        ("zh-Hant-TW", "zh_TW"),
        ("es-419", "es_419"),
        ("not a locale", "other"),
        ("", "unknown"),
        (None, "unknown"),
    ],
)
def test_locale_strings_have_one_spelling(raw: Any, expected: str) -> None:
    assert transforms.normalize_locale(raw) == expected


@pytest.mark.parametrize("raw", ["Mobile", "phone", "toaster", None, "unknown", "other", "de-DE", "es-419", "xx yy"])
def test_a_spelled_value_stays_as_it_is(raw: Any) -> None:
    for normalize in (transforms.normalize_device, transforms.normalize_locale):
        once = normalize(raw)
        assert normalize(once) == once


def test_serving_computes_the_context_columns_training_joined_for_the_same_request() -> None:
    when = datetime(2026, 5, 2, 21, 30, tzinfo=UTC)
    features = ["context_features__hour_sin", *CONTEXT_FEATURES]
    n = 2
    blank = [""] * n
    features_in = np.zeros((n, len(CANDIDATE_FEATURES)))
    candidates = CandidateSet(["i0", "i1"], blank, blank, blank, [[]] * n, np.zeros((n, 0), np.float32), features_in)
    served = model_columns({}, {}, candidates, RankContext(when, "Mobile", "de-DE"), features, CONTEXT_FEATURES)

    labels = pd.DataFrame({"user_id": ["u"], "item_id": ["i"], "event_timestamp": [when]})
    labels["device"], labels["locale"] = ["mobile"], ["de_DE"]  # as stored for an imported event
    trained = transforms.context_features(with_request_context(labels)).iloc[0]
    assert served["context_features__ctx_device"].tolist() == [trained["ctx_device"]] * n == ["mobile"] * n
    assert served["context_features__ctx_locale"].tolist() == [trained["ctx_locale"]] * n == ["de_DE"] * n


def test_the_api_takes_a_bcp47_locale_and_a_posix_one() -> None:
    from serving.schemas import RequestContext

    assert RequestContext(locale="de-DE").locale == "de-DE"
    assert RequestContext(locale="de_DE").locale == "de_DE"
    with pytest.raises(ValueError, match="locale"):
        RequestContext(locale="de DE")
