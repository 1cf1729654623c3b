"""`recstack demo`: the main job on a laptop, step by step, reusing whatever earlier runs left."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import typer
from rich.table import Table

from recstack import db, stack
from recstack.catalog import CatalogSummary, summarize
from recstack.console import console
from recstack.settings import get_settings


def print_summary(summary: CatalogSummary) -> None:
    table = Table("", "count", title="catalog and events")
    table.add_row("users", f"{summary.users:,}")
    table.add_row("items", f"{summary.items:,}")
    table.add_row("providers", f"{summary.providers:,}")
    table.add_row("events", f"{summary.events:,}")
    for domain, count in summary.items_by_domain.items():
        table.add_row(f"  items in {domain}", f"{count:,}")
    for event_type, count in summary.events_by_type.items():
        table.add_row(f"  {event_type} events", f"{count:,}")
    table.add_row("event time span", f"{summary.first_event} .. {summary.last_event}")
    console.print(table)


STALE_SHARE = 0.01  # retrain when more than this share of the events arrived after the promoted model


def _needs_training(settings) -> str | None:  # type: ignore[no-untyped-def]
    """None when the promoted model is newer than every event (a re-run reuses it), else why to train."""
    from recstack.tables import registry

    with db.connect(stack.postgres_dsn(settings), settings.connect_timeout_s) as conn:
        version = registry.promoted_version(conn)
        if version is None:
            return "no model yet"
        record = registry.get(conn, version)
        added, total = conn.execute(
            "SELECT count(*) FILTER (WHERE ingested_at > %s), count(*) FROM events", (record.created_at,)
        ).fetchone()  # type: ignore[misc]
        vectors = conn.execute("SELECT count(*) FROM user_vectors WHERE model_version = %s", (version,)).fetchone()
    if not vectors or not vectors[0]:
        return f"the stored vectors are not {version}'s"
    if added > STALE_SHARE * total:
        return f"{added:,} events were added after {version} was trained"
    return None


def _show_slate(title: str, slate: dict, categories: dict[str, list[str]]) -> None:  # type: ignore[type-arg]
    table = Table("#", "item", "title", "domain", "categories", "score", title=title)
    for n, item in enumerate(slate["items"], 1):
        cats = ", ".join(categories.get(item["item_id"], []))
        table.add_row(str(n), item["item_id"], item["title"], item["domain"], cats, f"{item['score']:.3f}")
    console.print(table)


def _post(url: str, body: dict) -> dict:  # type: ignore[type-arg]
    import json
    import urllib.request

    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # our own local API
        return json.loads(response.read())  # type: ignore[no-any-return]


def _feedback_round(settings, url: str, user: str) -> None:  # type: ignore[no-untyped-def]
    """First slate; the user likes 5 items of one category (not shown in it); second slate; compare."""
    first = _post(f"{url}/recommend", {"user_id": user, "k": 10})
    with db.connect(stack.postgres_dsn(settings), settings.connect_timeout_s) as conn:
        shown = [i["item_id"] for i in first["items"]]
        category, liked = conn.execute(
            "SELECT c, (array_agg(external_id ORDER BY random()))[1:5] FROM items, unnest(categories) c "
            "WHERE NOT external_id = ANY(%s) GROUP BY c HAVING count(*) >= 20 ORDER BY random() LIMIT 1",
            (shown,),
        ).fetchone()  # type: ignore[misc]
    for n, item in enumerate(liked):
        _post(
            f"{url}/feedback", {"event_id": f"demo-{user}-{item}-{n}", "user_id": user, "item_id": item, "type": "like"}
        )
    second = _post(f"{url}/recommend", {"user_id": user, "k": 10})
    with db.connect(stack.postgres_dsn(settings), settings.connect_timeout_s) as conn:
        ids = [i["item_id"] for i in first["items"] + second["items"]] + liked
        categories: dict[str, list[str]] = dict(
            conn.execute("SELECT external_id, categories FROM items WHERE external_id = ANY(%s)", (ids,))
        )
    _show_slate(f"first slate for {user}", first, categories)
    console.print(f"{user} likes 5 [bold]{category}[/] items: {', '.join(liked)}")
    _show_slate(f"second slate for {user} (after the likes)", second, categories)
    before = sum(category in categories[i["item_id"]] for i in first["items"])
    after = sum(category in categories[i["item_id"]] for i in second["items"])
    console.print(f"{category} items in the slate: {before} -> {after}")


def demo(
    users: int = typer.Option(20_000, min=1, help="Synthetic users."),
    items: int = typer.Option(5_000, min=10, help="Synthetic items."),
    events: int = typer.Option(1_000_000, min=1, help="Synthetic events."),
    seed: int = typer.Option(42, help="Random seed."),
    trials: int = typer.Option(4, min=1, max=200, help="Ray Tune trials when training."),
    serve_api: bool = typer.Option(True, "--serve/--no-serve", help="Start the API and run the feedback round."),
    detach: bool = typer.Option(False, "--detach", help="Leave the API running in the background and return."),
) -> None:
    """The whole pipeline, reusing what earlier runs left: stack, synthetic data, validation, features, Feast
    apply + materialize, training, evaluation, then the API (left running) with a like-driven second slate."""
    from recstack.features import store as feast_store
    from recstack.features.build import build_features
    from recstack.features.materialize import materialize
    from recstack.ingest.cli import synthetic
    from serving.cli import restore_ctrl_c, serve, stop_local_ray
    from training.cli import evaluate, train
    from validation.cli import validate

    settings = get_settings()
    console.rule("1. stack")
    for info in stack.up(settings):
        console.print(f"{info.name}: {info.mode} at {info.address} (pid {info.pid or '-'})")
    console.rule("2. synthetic data")
    # The 180-day window ends today, so the live feedback below continues the history instead of jumping months.
    start = (datetime.now(UTC) - timedelta(days=181)).strftime("%Y-%m-%d")
    synthetic(users=users, items=items, events=events, seed=seed, start=start)  # a re-run adds 0 rows
    with db.connect(stack.postgres_dsn(settings), settings.connect_timeout_s) as conn:
        print_summary(summarize(conn))
    console.rule("3. features (incremental) and validation")
    with db.connect(stack.postgres_dsn(settings), settings.connect_timeout_s) as conn:
        for result in build_features(conn):
            console.print(f"{result.table}: {result.days} day(s) rebuilt, {result.rows_added:+,} rows")
    try:
        validate(suite=None, docs=True, show_rows=False)
    except typer.Exit as exit_:
        if exit_.exit_code:
            raise
    console.rule("4. Feast apply + materialize")
    feast_store.apply(settings)
    for m in materialize(settings):  # validated just above
        console.print(f"{m.view}: {m.entities:,} entities in {m.seconds:.1f} s")
    console.rule("5. training")
    reason = _needs_training(settings)
    if reason is None:
        console.print("the promoted model is up to date: reusing it (`recstack train` retrains)")
    else:
        console.print(f"training: {reason}")
        train(
            trials=trials,
            smoke=False,
            epochs=6,
            protocol="random",
            ranker_users=1500,
            promote=True,
            force=False,
            seed=seed,
        )
    console.rule("6. offline evaluation")
    evaluate(json_path=None, users=500, version=None, protocol=None)
    if not serve_api:
        console.print("next: [bold]recstack serve[/], [bold]recstack down[/] to stop the servers")
        return
    console.rule("7. serving and feedback")
    serve(detach=True, mode=None, host=None, port=None)
    url = f"http://{settings.serve_host}:{settings.serve_port}"
    _feedback_round(settings, url, f"demo-{datetime.now(UTC):%Y%m%d-%H%M%S}")
    console.print(f"API docs: {url}/docs   metrics: {url}/metrics   readiness: {url}/readyz")
    if detach:
        console.print("the API keeps running; [bold]recstack down[/] stops it and the servers")
        return
    console.print("serving until Ctrl-C (the embedded servers keep running; `recstack down` stops them)")
    restore_ctrl_c()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        import ray

        ray.shutdown()  # disconnect before the local Ray goes away: exit handlers then have no dead GCS to wait on
        stop_local_ray(settings)
        console.print("API stopped")
