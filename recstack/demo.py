"""`recstack demo`: the main job on a laptop, step by step, reusing whatever earlier runs left."""

from __future__ import annotations

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


def demo(
    users: int = typer.Option(20_000, min=1, help="Synthetic users."),
    items: int = typer.Option(5_000, min=10, help="Synthetic items."),
    events: int = typer.Option(1_000_000, min=1, help="Synthetic events."),
    seed: int = typer.Option(42, help="Random seed."),
) -> None:
    """Bring the stack up, load synthetic multi-domain data (skipped when already loaded), print a summary."""
    from recstack.ingest.cli import synthetic

    settings = get_settings()
    console.rule("1. stack")
    for info in stack.up(settings):
        console.print(f"{info.name}: {info.mode} at {info.address} (pid {info.pid or '-'})")
    console.rule("2. synthetic data")
    synthetic(users=users, items=items, events=events, seed=seed)  # idempotent: a re-run adds 0 rows
    console.rule("3. summary")
    with db.connect(stack.postgres_dsn(settings), settings.connect_timeout_s) as conn:
        print_summary(summarize(conn))
    console.print("next: [bold]recstack status[/], [bold]recstack down[/] to stop the servers")
