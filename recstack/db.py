"""Postgres access: connections with timeouts, idempotent migrations, error messages users can act on."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources

import psycopg
from psycopg.conninfo import conninfo_to_dict

MIGRATIONS_TABLE = "schema_migrations"


class StoreUnreachable(RuntimeError):
    """A configured server does not answer; the message names host/port, never the password."""


def describe_dsn(dsn: str) -> str:
    """``host:port/dbname`` of a DSN, safe to print (no user, no password)."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparseable DSN>"
    host = parts.get("host") or "localhost"
    return f"{host}:{parts.get('port') or 5432}/{parts.get('dbname') or ''}"


def connect(dsn: str, timeout_s: float = 3.0, **kwargs: object) -> psycopg.Connection:
    """Open a connection that gives up after ``timeout_s`` instead of hanging on a dead server."""
    try:
        return psycopg.connect(dsn, connect_timeout=max(1, round(timeout_s)), **kwargs)  # type: ignore[arg-type]
    except psycopg.OperationalError as err:
        raise StoreUnreachable(f"Postgres at {describe_dsn(dsn)} is unreachable: {_reason(err)}") from None


def _reason(err: Exception) -> str:
    """The short cause of a libpq connection error ("Connection refused", "timeout expired", ...)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    return lines[0].rsplit("failed: ", 1)[-1]


@contextmanager
def transaction(dsn: str, timeout_s: float = 3.0) -> Iterator[psycopg.Connection]:
    """A connection whose work commits on success and rolls back on any error (atomic writes)."""
    conn = connect(dsn, timeout_s)
    try:
        with conn.transaction():
            yield conn
    finally:
        conn.close()


def migration_files() -> list[tuple[str, str]]:
    """(version, sql) of every migration, in order; the version is the file name's numeric prefix."""
    folder = resources.files("recstack") / "migrations"
    files = sorted((p for p in folder.iterdir() if p.name.endswith(".sql")), key=lambda p: p.name)
    return [(p.name.split("_", 1)[0], p.read_text()) for p in files]


def migrate(dsn: str, timeout_s: float = 3.0) -> list[str]:
    """Apply the migrations not yet recorded, each in its own transaction; returns the versions applied.

    An advisory lock serializes concurrent callers (two ``recstack up`` at once).
    """
    applied_now: list[str] = []
    with connect(dsn, timeout_s, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(hashtext('recstack.migrate'))")
        try:
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} ("
                "version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r[0] for r in conn.execute(f"SELECT version FROM {MIGRATIONS_TABLE}")}  # noqa: S608 (constant name)
            for version, sql in migration_files():
                if version in done:
                    continue
                with conn.transaction():
                    conn.execute(sql)  # type: ignore[arg-type]
                    conn.execute(f"INSERT INTO {MIGRATIONS_TABLE} (version) VALUES (%s)", (version,))  # noqa: S608
                applied_now.append(version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(hashtext('recstack.migrate'))")
    return applied_now
