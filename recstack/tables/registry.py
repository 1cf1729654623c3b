"""Model registry: CatBoost .cbm files under RECSTACK_HOME/models, metadata and promotions in Postgres.

Files are CatBoost's own format (never pickle); the sha256 is recorded at registration and verified on every load,
so a swapped or truncated file is refused.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

if TYPE_CHECKING:  # CatBoost loads in ~1 s: only the functions that need it import it
    from catboost import CatBoostRanker


class RegistryError(RuntimeError):
    """A registry operation a user asked for cannot be done; the message says why and what to do."""


@dataclass
class ModelRecord:
    version: str
    path: str
    sha256: str
    features: list[str]
    params: dict[str, Any]
    metrics: dict[str, Any]
    data_window: dict[str, Any]
    code_revision: str | None
    created_at: datetime
    promoted: bool = False


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def code_revision() -> str | None:
    """The git commit of the code that trained a model, when run from a checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def register(
    conn: psycopg.Connection,
    models_dir: Path,
    model: CatBoostRanker,
    features: list[str],
    params: dict[str, Any],
    metrics: dict[str, Any],
    data_window: dict[str, Any],
) -> ModelRecord:
    """Save ``model`` as ``<version>.cbm`` (written to a temp name, then renamed) and record it."""
    version = datetime.now(UTC).strftime("r%Y%m%d-%H%M%S-%f")
    models_dir.mkdir(parents=True, exist_ok=True)
    path = models_dir / f"{version}.cbm"
    tmp = path.with_suffix(".cbm.tmp")
    model.save_model(str(tmp), format="cbm")
    tmp.replace(path)
    digest = sha256_file(path)
    revision = code_revision()
    with conn.transaction():
        conn.execute(
            "INSERT INTO models (version, path, sha256, features, params, metrics, data_window, code_revision) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (
                version,
                str(path),
                digest,
                json.dumps(features),
                json.dumps(params),
                json.dumps(metrics),
                json.dumps(data_window, default=str),
                revision,
            ),
        )
    return get(conn, version)


def _record(row: tuple[Any, ...], promoted: str | None) -> ModelRecord:
    version, path, digest, features, params, metrics, window, revision, created = row
    return ModelRecord(version, path, digest, features, params, metrics, window, revision, created, version == promoted)


def promoted_version(conn: psycopg.Connection, kind: str = "ranker") -> str | None:
    row = conn.execute(
        "SELECT version FROM model_promotions WHERE kind = %s ORDER BY id DESC LIMIT 1", (kind,)
    ).fetchone()
    return row[0] if row else None


def get(conn: psycopg.Connection, version: str) -> ModelRecord:
    row = conn.execute(
        "SELECT version, path, sha256, features, params, metrics, data_window, code_revision, created_at "
        "FROM models WHERE version = %s",
        (version,),
    ).fetchone()
    if row is None:
        raise RegistryError(f"no model version {version!r}: `recstack models list` shows the versions")
    return _record(row, promoted_version(conn))


def list_models(conn: psycopg.Connection) -> list[ModelRecord]:
    promoted = promoted_version(conn)
    rows = conn.execute(
        "SELECT version, path, sha256, features, params, metrics, data_window, code_revision, created_at "
        "FROM models ORDER BY created_at DESC"
    ).fetchall()
    return [_record(r, promoted) for r in rows]


def promote(conn: psycopg.Connection, version: str) -> ModelRecord:
    record = get(conn, version)
    with conn.transaction():
        conn.execute("INSERT INTO model_promotions (version) VALUES (%s)", (version,))
    record.promoted = True
    return record


def rollback(conn: psycopg.Connection) -> ModelRecord:
    """Re-promote the model that was promoted before the current one."""
    rows = conn.execute(
        "SELECT version FROM model_promotions WHERE kind = 'ranker' ORDER BY id DESC LIMIT 50"
    ).fetchall()
    current = rows[0][0] if rows else None
    previous = next((r[0] for r in rows[1:] if r[0] != current), None)
    if previous is None:
        raise RegistryError("nothing to roll back to: fewer than two models were ever promoted")
    return promote(conn, previous)


def load_verified(record: ModelRecord) -> CatBoostRanker:
    """Load a registered model after checking its file's sha256 against the registry."""
    path = Path(record.path)
    if not path.exists():
        raise RegistryError(f"model file {path} of version {record.version} is missing")
    actual = sha256_file(path)
    if actual != record.sha256:
        raise RegistryError(
            f"model {record.version}: checksum mismatch ({actual[:12]} != {record.sha256[:12]}); "
            "the file changed after registration: retrain or restore it"
        )
    from catboost import CatBoostRanker

    model = CatBoostRanker()
    model.load_model(str(path), format="cbm")
    return model
