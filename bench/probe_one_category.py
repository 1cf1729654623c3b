"""How much a newcomer's slate follows a one-category history: the issue 4 behaviour "a user whose history is one
category gets mostly that category", measured on a trained stack (not a test: the tiny test data is too small for the
ranker to learn it; tests/unit/test_embeddings.py checks the retrieval model part on planted data).

A new user id likes the 8 most interacted single-category items of the largest single-category group (through the
same FeedbackSink /feedback uses), then the in-process pipeline recommends 10 items with the configured rerank and
relevance-only (``mmr_lambda`` 1, no provider cap or long-tail floor). Usage, with the stack's RECSTACK_* environment:

    python -m bench.probe_one_category [--user probe-one-category-1]

Writes 8 like events for that user: use a new user id for each run.
"""

from __future__ import annotations

import argparse
import asyncio

import psycopg

from recstack import stack
from recstack.settings import get_settings
from recstack.stages.rerank import NEUTRAL


def main() -> None:
    from serving.app import AppConfig, local_backend
    from serving.schemas import FeedbackEvent, RecommendRequest, RerankOverrides

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--user", default="probe-one-category-1")
    args = parser.parse_args()
    settings = get_settings()
    with psycopg.connect(stack.postgres_dsn(settings)) as conn:
        category, liked = conn.execute(
            "SELECT c, (array_agg(i.external_id ORDER BY n DESC, i.item_id))[1:8] FROM items i "
            "JOIN (SELECT item_id, count(*) n FROM events GROUP BY item_id) e USING (item_id), unnest(i.categories) c "
            "WHERE cardinality(i.categories) = 1 GROUP BY c ORDER BY count(*) DESC LIMIT 1"
        ).fetchone()  # type: ignore[misc]
        categories: dict[str, list[str]] = dict(conn.execute("SELECT external_id, categories FROM items").fetchall())
    backend = local_backend(settings, AppConfig(deadline_ms=5000))
    for n, item in enumerate(liked):
        event = FeedbackEvent(event_id=f"{args.user}-{n}", user_id=args.user, item_id=item, type="like")
        backend.feedback_sink().record(event)
    print(f"user {args.user} liked 8 {category!r} items")
    relevance_only = RerankOverrides.model_validate(NEUTRAL)
    for name, overrides in (("configured rerank", None), ("relevance only", relevance_only)):
        slate = asyncio.run(backend.recommender.recommend(RecommendRequest(user_id=args.user, k=10, rerank=overrides)))
        hits = sum(category in categories[i.item_id] for i in slate.items)
        print(f"{name:18s} {hits}/10 {category!r} (degraded={slate.degraded})")


if __name__ == "__main__":
    main()
