"""`recstack features build | apply` and `recstack materialize`."""

from __future__ import annotations

import typer
from rich.table import Table

from recstack import db, stack
from recstack.console import StageProgress, console, progress_bars
from recstack.features import store
from recstack.features.build import build_features
from recstack.settings import get_settings

features_app = typer.Typer(help="Feature tables in Postgres and the Feast repo.", no_args_is_help=True)


@features_app.command()
def build() -> None:
    """Compute the daily feature snapshots from events (incremental: only days with new events)."""
    settings = get_settings()
    with (
        db.connect(stack.postgres_dsn(settings), settings.connect_timeout_s, autocommit=True) as conn,
        progress_bars() as progress,
    ):
        results = build_features(conn, StageProgress(progress))
    table = Table("table", "days rebuilt", "rows before", "rows after", "added", "time", title="feature build")
    for r in results:
        table.add_row(
            r.table, str(r.days), f"{r.rows_before:,}", f"{r.rows_after:,}", f"{r.rows_added:,}", f"{r.seconds:.1f} s"
        )
    console.print(table)


@features_app.command()
def apply() -> None:
    """Register the definitions in feature_repo/ (the same as `feast apply` there, with the env set)."""
    settings = get_settings()
    with console.status("feast apply"):
        output = store.apply(settings)
    console.print(output.strip(), highlight=False)


def materialize(
    force: bool = typer.Option(False, "--force", help="Materialize even if validation fails."),
    full: bool = typer.Option(
        False, "--full", help="Copy every view's whole history again (automatic when Redis is empty)."
    ),
) -> None:
    """Validate, then copy the latest feature values into Redis (incremental after the first run)."""
    from recstack.features.materialize import GATE_SUITES
    from recstack.features.materialize import materialize as run
    from validation.gate import require_pass

    settings = get_settings()
    require_pass(settings, GATE_SUITES, force=force)
    results = run(settings, full=full)
    table = Table("feature view", "from", "to", "entities", "time", "entities/s", title="materialize")
    for r in results:
        table.add_row(
            r.view,
            f"{r.start:%Y-%m-%d %H:%M}",
            f"{r.end:%Y-%m-%d %H:%M}",
            f"{r.entities:,}",
            f"{r.seconds:.1f} s",
            f"{r.entities_per_s:,.0f}",
        )
    console.print(table)
