"""`recstack ingest synthetic | movielens | events`: parse or generate, then load atomically with a summary."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from recstack import db, stack
from recstack.console import StageProgress, console, progress_bars
from recstack.ingest import DEFAULT_ID_PREFIX
from recstack.settings import get_settings

if TYPE_CHECKING:  # the loader and records import pandas: `recstack --help` should not pay for it
    from recstack.ingest.loader import LoadReport
    from recstack.ingest.records import Batch

ingest_app = typer.Typer(help="Load users, items and events into Postgres (idempotent, atomic).", no_args_is_help=True)


def run_load(batch: Batch, source: str, notes: list[str] | None = None) -> LoadReport:
    """Load ``batch`` into the configured Postgres with progress bars, then print the summary table and ``notes``."""
    from recstack.ingest.loader import load_batch

    settings = get_settings()
    with db.connect(stack.postgres_dsn(settings), settings.connect_timeout_s) as conn, progress_bars() as progress:
        report = load_batch(conn, batch, source, StageProgress(progress))
    print_report(report, notes)
    return report


def print_report(report: LoadReport, notes: list[str] | None = None) -> None:
    table = Table(
        "source",
        "rows read",
        "users",
        "items",
        "items updated",
        "events",
        "duplicates",
        "rejected",
        "time",
        title="ingest summary",
    )
    table.add_row(
        report.source,
        f"{report.rows_read:,}",
        f"{report.users_loaded:,}",
        f"{report.items_loaded:,}",
        f"{report.items_updated:,}",
        f"{report.events_loaded:,}",
        f"{report.events_duplicate:,}",
        f"{report.rejected:,}",
        f"{report.seconds:.1f} s",
    )
    console.print(table)
    for note in notes or []:
        console.print(note, markup=False, highlight=False)
    if report.rejects:
        console.print(f"[yellow]first {len(report.rejects)} of {report.rejected:,} rejected rows:[/]")
        for reject in report.rejects:
            console.print(f"  {reject}", markup=False)


@ingest_app.command()
def synthetic(
    users: int = typer.Option(20_000, min=1, max=10_000_000, help="Number of users."),
    items: int = typer.Option(5_000, min=10, max=1_000_000, help="Number of items."),
    events: int = typer.Option(1_000_000, min=1, max=100_000_000, help="Number of events."),
    seed: int = typer.Option(42, help="Random seed: the same seed gives the same data."),
    start: str | None = typer.Option(
        None, help="First day of the 180-day event window, YYYY-MM-DD (default 2026-01-01)."
    ),
) -> None:
    """Generate multi-domain users, items and events with planted taste structure, and load them."""
    from datetime import UTC, datetime

    from recstack.ingest.synthetic import generate

    try:
        first = datetime.strptime(start, "%Y-%m-%d").replace(tzinfo=UTC) if start else None
    except ValueError:
        raise typer.BadParameter(f"{start!r} is not a date like 2026-01-01", param_hint="--start") from None
    with console.status(f"generating {users:,} users / {items:,} items / {events:,} events (seed {seed})"):
        batch = generate(users=users, items=items, events=events, seed=seed, start=first)
    run_load(batch, f"synthetic(seed={seed})")


@ingest_app.command()
def movielens(
    path: Path = typer.Argument(..., exists=True, file_okay=False, help="Unzipped MovieLens folder."),
    id_prefix: str = typer.Option(
        DEFAULT_ID_PREFIX,
        help="Namespace of the ids: user 1 becomes <prefix>u1, movie 1 <prefix>m1 (default ml-u1, ml-m1, as earlier "
        "imports stored them); '' keeps MovieLens's numbers (user 1 is user_id \"1\").",
    ),
) -> None:
    """Import MovieLens 100K, 1M or latest(-small); ratings become `rating` events, genres categories."""
    from recstack.ingest.movielens import IdMapping, read_movielens

    try:
        ids = IdMapping(id_prefix)
    except ValueError as err:
        raise typer.BadParameter(str(err), param_hint="--id-prefix") from None
    with console.status(f"reading {path}"):
        batch = read_movielens(path, ids)
    run_load(batch, str(path), ids.describe())


@ingest_app.command()
def events(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="CSV (.csv, .csv.gz) or Parquet file."),
) -> None:
    """Import interaction events; columns are documented in the README (unknown users are created)."""
    from recstack.ingest.events_file import read_events_file

    with console.status(f"reading {file}"):
        batch = read_events_file(file)
    run_load(batch, str(file))
