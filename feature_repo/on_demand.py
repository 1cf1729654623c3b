"""On-demand feature views: computed at request time from request context and materialized features."""

import pandas as pd
from feast import Field
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64, Int64, String
from sources import request_context
from views import item_features, user_features


# When and where the request happens: hour on the unit circle, weekend flag, device, locale.
@on_demand_feature_view(
    sources=[request_context],
    schema=[
        Field(name="hour_sin", dtype=Float64),
        Field(name="hour_cos", dtype=Float64),
        Field(name="is_weekend", dtype=Int64),
        Field(name="ctx_device", dtype=String),
        Field(name="ctx_locale", dtype=String),
    ],
)
def context_features(inputs: pd.DataFrame) -> pd.DataFrame:
    # Feast re-runs this function from its source text, without this module's globals: import inside.
    from recstack.features import transforms

    return transforms.context_features(inputs)


# How much this user likes this item's categories, and how long ago the user was last active.
@on_demand_feature_view(
    sources=[
        user_features[["affinity_categories", "affinity_shares", "last_event_at"]],
        item_features[["categories"]],
        request_context,
    ],
    schema=[
        Field(name="category_affinity", dtype=Float64),
        Field(name="category_match_rank", dtype=Int64),
        Field(name="seconds_since_last_event", dtype=Float64),
    ],
)
def user_item_features(inputs: pd.DataFrame) -> pd.DataFrame:
    from recstack.features import transforms

    return transforms.user_item_crosses(inputs)
