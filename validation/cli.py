"""`recstack validate`: run the suites, print a per-suite summary, write Data Docs, exit 1 on failure."""

from __future__ import annotations

import typer
from rich.table import Table

from recstack.console import console
from recstack.settings import get_settings

SHOWN_ROWS = 5


def validate(
    suite: list[str] | None = typer.Option(None, "--suite", "-s", help="Suite to run (repeatable); default all."),
    docs: bool = typer.Option(True, help="Write Data Docs HTML under RECSTACK_HOME/reports/data_docs."),
    show_rows: bool = typer.Option(
        False,
        "--show-rows",
        help=f"Under each failed row rule (e.g. events_before_1990), list {SHOWN_ROWS} offending rows with their ids.",
    ),
) -> None:
    """Validate users, items, events and feature tables with Great Expectations."""
    from validation.gate import run_suites  # Great Expectations loads in seconds: only when validating
    from validation.suites import all_specs

    settings = get_settings()
    unknown = sorted(set(suite or []) - set(all_specs()))
    if unknown:
        raise typer.BadParameter(f"unknown suite(s) {unknown}; known: {sorted(all_specs())}", param_hint="--suite")
    docs_dir = settings.reports_dir / "data_docs" if docs else None
    with console.status("validating"):
        results = run_suites(settings, suite or None, docs_dir, show_rows=SHOWN_ROWS if show_rows else 0)
    table = Table("suite", "expectations", "passed", "failed", "status", "time", title="data validation")
    for r in results:
        colour = {"passed": "green", "failed": "red", "missing": "yellow"}[r.status]
        table.add_row(
            r.name,
            str(r.evaluated),
            str(r.evaluated - r.failed),
            str(r.failed),
            f"[{colour}]{r.status}[/]",
            f"{r.seconds:.1f} s",
        )
    console.print(table)
    for r in results:
        for failure in r.failures:
            console.print(f"[red]{r.name}[/]: {failure}", highlight=False)
            for row in r.rows.get(failure, []):
                console.print(f"    {row}", markup=False, highlight=False)
    if not show_rows and any(r.failures for r in results):
        console.print("`recstack validate --show-rows` lists offending events of failed row rules", highlight=False)
    if docs_dir is not None:
        console.print(f"Data Docs: {docs_dir / 'index.html'}")
    if any(r.status == "failed" for r in results):
        raise typer.Exit(1)
