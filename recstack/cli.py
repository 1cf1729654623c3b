"""The ``recstack`` command: one Typer sub-app per area; commands are plain functions tests can call."""

from __future__ import annotations

import json
import sys

import typer
from rich.table import Table

from recstack import stack
from recstack.bench import bench
from recstack.console import console, err_console
from recstack.db import StoreUnreachable
from recstack.demo import demo
from recstack.features.cli import features_app, materialize
from recstack.features.store import FeastError
from recstack.ingest.cli import ingest_app
from recstack.ingest.records import SourceFormatError
from recstack.settings import get_settings
from recstack.tables.registry import RegistryError
from serving.cli import serve
from serving.experiments_cli import experiments_app
from training.cli import evaluate, train
from training.models_cli import models_app
from validation.cli import validate
from validation.errors import ValidationFailed

app = typer.Typer(
    help="recstack: feature store and model serving for personalized recommendations.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(ingest_app, name="ingest")
app.add_typer(models_app, name="models")
app.add_typer(features_app, name="features")
app.add_typer(experiments_app, name="experiments")
app.command()(validate)
app.command()(materialize)
app.command()(demo)
app.command()(train)
app.command()(evaluate)
app.command()(serve)
app.command()(bench)

# Errors a user can act on: printed as one line, exit code 1, never a stack trace.
USER_ERRORS = (
    stack.StackError,
    StoreUnreachable,
    SourceFormatError,
    FileNotFoundError,
    RegistryError,
    ValidationFailed,
    FeastError,
)


@app.command()
def up() -> None:
    """Start the embedded Postgres (pgvector) and Redis, or check the external ones; apply migrations."""
    from recstack.features.store import move_file_registry

    settings = get_settings()
    infos = stack.up(settings)
    moved = move_file_registry(settings)
    if moved is not None:
        console.print(f"feast registry: {moved} definitions moved from {settings.feast_registry_file} into Postgres")
    _print_status(infos)


@app.command()
def down() -> None:
    """Stop the embedded servers that `up` started (external servers are left alone)."""
    from serving.cli import stop_local_ray

    settings = get_settings()
    ray_stopped = stop_local_ray(settings)
    stopped = stack.down(settings) + (["ray (serve)"] if ray_stopped else [])
    console.print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Show each store: embedded or external, address, pid, reachable. Exit 1 if any is down."""
    infos = stack.status(get_settings())
    if as_json:
        print(json.dumps({i.name: i.public() for i in infos}, indent=2))
    else:
        _print_status(infos)
    if not all(i.running for i in infos):
        raise typer.Exit(1)


@app.command()
def env() -> None:
    """Print `export` lines for tools that read the environment (feast CLI in feature_repo/).

    Usage: eval "$(recstack env)"
    """
    settings = get_settings()
    for key, value in stack.client_env(settings).items():
        print(f"export {key}={json.dumps(value)}")


def _print_status(infos: list[stack.ServerInfo]) -> None:
    table = Table("store", "mode", "address", "pid", "state")
    for i in infos:
        state = "[green]running[/]" if i.running else f"[red]down[/] {i.error or ''}"
        table.add_row(i.name, i.mode, i.address, str(i.pid or "-"), state)
    console.print(table)


def main() -> None:
    """Console entry point: user errors become one red line and exit code 1."""
    try:
        app()
    except USER_ERRORS as err:
        err_console.print(f"[red]error:[/] {err}")
        sys.exit(1)


if __name__ == "__main__":
    main()
