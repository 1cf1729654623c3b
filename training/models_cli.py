"""`recstack models list | promote VERSION | rollback`: the model registry from the command line."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from recstack import db, stack
from recstack.console import console
from recstack.settings import get_settings
from recstack.tables import registry, vector_sets

models_app = typer.Typer(help="Trained rankers: list, promote a version, roll back.", no_args_is_help=True)


def _connect():  # type: ignore[no-untyped-def]
    settings = get_settings()
    return db.connect(stack.postgres_dsn(settings), settings.connect_timeout_s, autocommit=True)


@models_app.command("list")
def list_(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Every registered model, newest first; the promoted one is marked."""
    with _connect() as conn:
        records = registry.list_models(conn)
    if as_json:
        print(json.dumps([{**r.__dict__, "created_at": r.created_at.isoformat()} for r in records], indent=2))
        return
    table = Table("version", "promoted", "valid NDCG@10", "loss", "features", "sha256", "created")
    for r in records:
        table.add_row(
            r.version,
            "*" if r.promoted else "",
            f"{r.metrics.get('valid_ndcg@10', float('nan')):.4f}",
            str(r.params.get("loss", "")),
            str(len(r.features)),
            r.sha256[:12],
            f"{r.created_at:%Y-%m-%d %H:%M}",
        )
    console.print(table)


def _say_vectors(conn, version: str) -> None:  # type: ignore[no-untyped-def]
    """Promoting switches the vectors too, when the version has its own (recstack.tables.vector_sets)."""
    if vector_sets.exists(conn, version):
        console.print(f"serving the vectors and item-item weights {version} was trained with")
    else:
        console.print(
            f"[yellow]{version} has no stored vectors (trained before vectors were versioned, or pruned): "
            "the vectors serving now stay; `recstack train` stores a set with each model[/yellow]"
        )


@models_app.command()
def promote(version: str = typer.Argument(..., help="A version from `recstack models list`.")) -> None:
    """Make VERSION the model serving uses (picked up without restarting the app)."""
    with _connect() as conn:
        record = registry.promote(conn, version)
        _say_vectors(conn, record.version)
    console.print(f"promoted {record.version}")


@models_app.command()
def rollback() -> None:
    """Re-promote the model that was promoted before the current one."""
    with _connect() as conn:
        record = registry.rollback(conn)
        _say_vectors(conn, record.version)
    console.print(f"rolled back to {record.version}")
