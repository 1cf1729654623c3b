"""Model registry: rankers, their metadata and promotions in Postgres.

Artifacts are CatBoost's own format (never pickle), kept where every node reads them: inside the registry row by
default, or at an object-store URI (``RECSTACK_ARTIFACT_URI``: any fsspec URL, s3://, gs://, file://) when set. The
sha256 is recorded at registration and verified on every load, so a swapped or truncated artifact is refused.
Models registered before artifacts moved into Postgres keep their local file path.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from recstack.tables import vector_sets

if TYPE_CHECKING:  # CatBoost loads in ~1 s: only the functions that need it import it
    from catboost import CatBoostRanker


class RegistryError(RuntimeError):
    """A registry operation a user asked for cannot be done; the message says why and what to do."""


IN_REGISTRY = "postgres:models.artifact"  # `path` of a model whose bytes are in its own row


@dataclass
class ModelRecord:
    version: str
    path: str  # IN_REGISTRY, an fsspec URI, or (older models) a local file
    sha256: str
    features: list[str]
    params: dict[str, Any]
    metrics: dict[str, Any]
    data_window: dict[str, Any]
    code_revision: str | None
    created_at: datetime
    promoted: bool = False


def code_revision() -> str | None:
    """The git commit of the code that trained a model, when run from a checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def model_bytes(model: CatBoostRanker) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.cbm"
        model.save_model(str(path), format="cbm")
        return path.read_bytes()


def _write_uri(base: str, version: str, data: bytes) -> str:
    """Write ``data`` to ``<base>/<version>.cbm`` (under a temp name, then moved: readers never see half a file)."""
    import fsspec

    uri = f"{base.rstrip('/')}/{version}.cbm"
    fs, path = fsspec.core.url_to_fs(uri)
    fs.makedirs(fs._parent(path), exist_ok=True)
    with fs.open(f"{path}.tmp", "wb") as handle:
        handle.write(data)
    fs.mv(f"{path}.tmp", path)
    return uri


def _read_artifact(conn: psycopg.Connection, record: ModelRecord) -> bytes:
    if record.path == IN_REGISTRY:
        row = conn.execute("SELECT artifact FROM models WHERE version = %s", (record.version,)).fetchone()
        if row is None or row[0] is None:
            raise RegistryError(f"model {record.version} has no artifact in the registry")
        return bytes(row[0])
    if "://" in record.path:
        import fsspec

        try:
            with fsspec.open(record.path, "rb") as handle:
                return bytes(handle.read())
        except (OSError, FileNotFoundError) as err:
            raise RegistryError(f"model {record.version}: cannot read {record.path} ({err})") from err
    path = Path(record.path)
    if not path.exists():
        raise RegistryError(f"model file {path} of version {record.version} is missing")
    return path.read_bytes()


def register(
    conn: psycopg.Connection,
    model: CatBoostRanker,
    features: list[str],
    params: dict[str, Any],
    metrics: dict[str, Any],
    data_window: dict[str, Any],
    artifact_uri: str | None = None,
) -> ModelRecord:
    """Record ``model`` under a new version, its bytes in the row or, with ``artifact_uri``, at that store."""
    version = datetime.now(UTC).strftime("r%Y%m%d-%H%M%S-%f")
    data = model_bytes(model)
    digest = hashlib.sha256(data).hexdigest()
    path = _write_uri(artifact_uri, version, data) if artifact_uri else IN_REGISTRY
    revision = code_revision()
    with conn.transaction():
        conn.execute(
            "INSERT INTO models (version, path, artifact, sha256, features, params, metrics, data_window, "
            "code_revision) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                version,
                path,
                None if artifact_uri else data,
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
    """Make ``version`` the served model and, in the same transaction, its vectors the live ones (a model trained
    before vectors were versioned has none stored: the live vectors stay)."""
    record = get(conn, version)
    with conn.transaction():
        vector_sets.activate(conn, version)
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


def load_verified(conn: psycopg.Connection, record: ModelRecord) -> CatBoostRanker:
    """Load a registered model, wherever its artifact is, after checking its sha256 against the registry."""
    data = _read_artifact(conn, record)
    actual = hashlib.sha256(data).hexdigest()
    if actual != record.sha256:
        raise RegistryError(
            f"model {record.version}: checksum mismatch ({actual[:12]} != {record.sha256[:12]}); "
            "the artifact changed after registration: retrain or restore it"
        )
    from catboost import CatBoostRanker

    model = CatBoostRanker()
    model.load_model(blob=data)
    return model
