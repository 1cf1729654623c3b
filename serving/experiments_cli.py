"""`recstack experiments report`: CTR and like-rate per A/B variant with 95% confidence intervals."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from recstack import db, stack
from recstack.console import console
from recstack.settings import get_settings
from serving.experiments import report_rows

experiments_app = typer.Typer(help="A/B experiments configured in the serve config.", no_args_is_help=True)


@experiments_app.command()
def report(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Per variant: slates served, CTR (click/like/purchase on a slate) and like-rate, with Wilson 95% intervals."""
    settings = get_settings()
    with db.connect(stack.postgres_dsn(settings), settings.connect_timeout_s) as conn:
        rows = report_rows(conn)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        console.print("no impressions with an experiment yet (configure `experiments` in the serve config)")
        return
    table = Table("experiment", "variant", "impressions", "CTR", "95% CI", "like-rate", "95% CI")
    for r in rows:
        ctr, like = r["ctr_ci95"], r["like_rate_ci95"]
        table.add_row(
            str(r["experiment"]),
            str(r["variant"]),
            f"{r['impressions']:,}",
            f"{r['ctr']:.3%}",
            f"{ctr[0]:.3%}..{ctr[1]:.3%}",  # type: ignore[index]
            f"{r['like_rate']:.3%}",
            f"{like[0]:.3%}..{like[1]:.3%}",  # type: ignore[index]
        )
    console.print(table)
