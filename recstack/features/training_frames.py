"""Point-in-time correct ranker frames through Feast's `get_historical_features`.

For each label row (user, item, time), Feast joins the newest feature snapshot whose event_timestamp is at or
before the label's time (and within the view's ttl): a value computed after the label is never joined.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from recstack.features import transforms

if TYPE_CHECKING:
    from feast import FeatureStore

FEATURE_SERVICE = "ranking_v1"


def with_request_context(labels: pd.DataFrame) -> pd.DataFrame:
    """Fill the request-time columns the on-demand views need: time fields from each label's timestamp; device and
    locale are the labels' own (the request each row stands for: training.dataset.first_requests), in their one
    spelling (recstack.features.transforms), "unknown" where a label has none."""
    frame = labels.copy()
    ts = pd.to_datetime(frame["event_timestamp"], utc=True)
    frame["event_timestamp"] = ts
    frame["hour_of_day"] = ts.dt.hour.astype("int64")
    frame["day_of_week"] = ts.dt.dayofweek.astype("int64")
    frame["request_ts"] = (ts.astype("int64") // 10**9).astype("int64")
    for column, normalize in (("device", transforms.normalize_device), ("locale", transforms.normalize_locale)):
        values = frame[column] if column in frame else pd.Series(None, index=frame.index, dtype=object)
        frame[column] = values.map(normalize).astype(object)
    return frame


def ranker_frame(store: FeatureStore, labels: pd.DataFrame, service: str = FEATURE_SERVICE) -> pd.DataFrame:
    """Join the feature service's features onto ``labels`` (user_id, item_id, event_timestamp, ...) point-in-time.

    Rows come back in the input order (Feast does not keep it), identified by a ``row_id`` column.
    """
    frame = with_request_context(labels)
    frame["row_id"] = np.arange(len(frame))
    # Full names (view__feature): user and item views both have like_ratio_30d / mean_rating_30d.
    joined = store.get_historical_features(
        entity_df=frame, features=store.get_feature_service(service), full_feature_names=True
    ).to_df()
    return joined.sort_values("row_id").reset_index(drop=True)
