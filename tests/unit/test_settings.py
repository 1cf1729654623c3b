from pathlib import Path

import pytest
from pydantic import ValidationError

from recstack import stack
from recstack.settings import Settings


def test_env_prefix_sets_fields(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RECSTACK_HOME", str(tmp_path))
    monkeypatch.setenv("RECSTACK_POSTGRES_PORT", "55001")
    settings = Settings()
    assert settings.home == tmp_path
    assert settings.postgres_port == 55001
    assert stack.postgres_dsn(settings).endswith("127.0.0.1:55001/recstack")


def test_default_home_is_outside_the_repository(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RECSTACK_HOME", raising=False)
    repo = Path(__file__).resolve().parents[2]
    assert repo not in Settings().home.resolve().parents


@pytest.mark.parametrize(
    ("field", "value"),
    [("RECSTACK_POSTGRES_DSN", "mysql://x"), ("RECSTACK_REDIS_URL", "localhost:6379"), ("RECSTACK_REDIS_PORT", "80")],
)
def test_bad_settings_name_the_field(monkeypatch: pytest.MonkeyPatch, field: str, value: str) -> None:
    monkeypatch.setenv(field, value)
    with pytest.raises(ValidationError) as info:
        Settings()
    assert field.removeprefix("RECSTACK_").lower() in str(info.value)


def test_external_servers_replace_embedded_ones_and_hide_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSTACK_POSTGRES_DSN", "postgresql://app:s3cret@db.example:6543/reco")
    monkeypatch.setenv("RECSTACK_REDIS_URL", "redis://:pw@cache.example:6380/2")
    settings = Settings()
    assert stack.postgres_dsn(settings) == "postgresql://app:s3cret@db.example:6543/reco"
    env = stack.client_env(settings)
    assert env["FEAST_PG_HOST"] == "db.example" and env["FEAST_PG_PORT"] == "6543"
    assert env["FEAST_REDIS"].startswith("cache.example:6380,db=2,password=pw,socket_timeout=")
    from recstack.db import describe_dsn

    assert "s3cret" not in describe_dsn(stack.postgres_dsn(settings))
