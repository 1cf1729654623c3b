"""Shared fixtures: an isolated embedded stack (real Postgres + pgvector, real Redis) per test session."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from recstack import stack
from recstack.settings import Settings, get_settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Start the embedded stack through the stack manager in a throwaway RECSTACK_HOME; stop it afterwards.

    The environment is set too, so CLI commands (which read settings from the environment) see the same stack.
    """
    home = Path(tmp_path_factory.mktemp("recstack-home"))
    env = {
        "RECSTACK_HOME": str(home),
        "RECSTACK_POSTGRES_PORT": str(free_port()),
        "RECSTACK_REDIS_PORT": str(free_port()),
    }
    saved = {k: os.environ.get(k) for k in [*env, "RECSTACK_POSTGRES_DSN", "RECSTACK_REDIS_URL"]}
    os.environ.update(env)
    os.environ.pop("RECSTACK_POSTGRES_DSN", None)
    os.environ.pop("RECSTACK_REDIS_URL", None)
    get_settings.cache_clear()
    settings = get_settings()
    stack.up(settings)
    try:
        yield settings
    finally:
        stack.down(settings)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        get_settings.cache_clear()


@pytest.fixture()
def clean_db(stack_settings: Settings) -> Settings:
    """Empty catalog and event tables (schema kept) for tests that count rows."""
    import psycopg

    with psycopg.connect(stack.postgres_dsn(stack_settings)) as conn:
        conn.execute("TRUNCATE events, items, users RESTART IDENTITY")
    return stack_settings
