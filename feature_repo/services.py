"""Feature services: the versioned feature sets models are trained and served with."""

from feast import FeatureService
from on_demand import context_features, user_item_features
from views import item_features, user_features

# Features of the CatBoost ranker, version 1. A new model that needs other features gets ranking_v2;
# a served model keeps reading the service it was trained with.
ranking_v1 = FeatureService(
    name="ranking_v1",
    features=[
        user_features[
            [
                "views_7d",
                "views_30d",
                "clicks_7d",
                "clicks_30d",
                "likes_7d",
                "likes_30d",
                "dislikes_30d",
                "ratings_30d",
                "purchases_30d",
                "skips_30d",
                "events_30d",
                "like_ratio_30d",
                "dislike_ratio_30d",
                "mean_rating_30d",
                "days_active_30d",
            ]
        ],
        item_features[
            [
                "popularity_1d",
                "popularity_7d",
                "popularity_30d",
                "like_ratio_30d",
                "mean_rating_30d",
                "age_days",
                "domain",
                "provider_id",
            ]
        ],
        context_features,
        user_item_features,
    ],
    description="Ranker features: user activity, item popularity, context, user x item affinity.",
)

# The real-time view (user_realtime) has no service: retrieval reads its recent items directly
# (recstack.features.online), and nothing else reads it.
