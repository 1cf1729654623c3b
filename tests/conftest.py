"""Shared fixtures: an isolated embedded stack (real Postgres + pgvector, real Redis) per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from recstack import stack
from recstack.settings import Settings, get_settings
from recstack.stack import free_port


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


def load_featured(settings: Settings, batch: object, source: str = "synthetic") -> None:
    """Empty every data table, load ``batch``, build features, apply the Feast repo from scratch and materialize."""
    import psycopg

    from recstack.features import store as feast_store
    from recstack.features.build import build_features
    from recstack.features.materialize import GATE_SUITES, materialize
    from recstack.ingest.loader import load_batch
    from validation.gate import require_pass

    with psycopg.connect(stack.postgres_dsn(settings), autocommit=True) as conn:
        conn.execute(
            "TRUNCATE events, items, users, user_features, item_features, feature_watermarks, user_realtime, "
            "item_vectors, user_vectors, impressions RESTART IDENTITY CASCADE"
        )
        load_batch(conn, batch, source)  # type: ignore[arg-type]
        build_features(conn)
        conn.execute("DROP SCHEMA feast CASCADE")  # Feast's registry: applied afresh below
        conn.execute("CREATE SCHEMA feast")
    with stack.redis_client(settings) as client:
        client.flushdb()
    feast_store.apply(settings)
    require_pass(settings, GATE_SUITES, force=False)
    materialize(settings)


@pytest.fixture(scope="session")
def trained_stack(stack_settings: Settings) -> Settings:
    """Tiny synthetic data taken through the whole pipeline: features built, Feast applied and materialized,
    embeddings + ranker trained (smoke search) and promoted. Shared by the training, serving and demo tests."""

    from recstack.ingest.synthetic import generate
    from training.pipeline import TrainConfig, train

    load_featured(stack_settings, generate(users=600, items=300, events=40_000, seed=11))
    report = train(stack_settings, TrainConfig(trials=2, smoke=True, epochs=4, ranker_users=300, seed=3))
    stack_settings.home.joinpath("trained_version").write_text(report.version)
    return stack_settings
