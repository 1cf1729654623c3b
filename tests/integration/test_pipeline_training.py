"""The training loop end to end on tiny generated data (real Postgres + pgvector, Redis, Feast, Ray Tune), and
behavioural tests of the trained models through the same retrieval code serving uses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from recstack import stack
from recstack.settings import Settings
from recstack.tables import registry

pytestmark = pytest.mark.integration


def test_train_registers_promotes_and_stores_vectors(trained_stack: Settings) -> None:
    version = (trained_stack.home / "trained_version").read_text()
    with psycopg.connect(stack.postgres_dsn(trained_stack)) as conn:
        assert registry.promoted_version(conn) == version
        record = registry.get(conn, version)
        n_items, with_cf, with_content = conn.execute(
            "SELECT count(*), count(cf), count(content) FROM item_vectors"
        ).fetchone()  # type: ignore[misc]
        catalog = conn.execute("SELECT count(*) FROM items").fetchone()
        n_users = conn.execute("SELECT count(*) FROM user_vectors WHERE model_version = %s", (version,)).fetchone()
        index = conn.execute("SELECT indexdef FROM pg_indexes WHERE tablename = 'item_vectors'").fetchall()
    assert record.path == registry.IN_REGISTRY and record.features and record.data_window["protocol"] == "random"
    assert record.data_window["served_vectors_saw"] == "every event"
    # Retrieval scores as places in their own list (the served ones come from models refit on every event).
    assert {"cf_score_in_list", "ii_score_in_list", "from_ii"} <= set(record.features)
    assert "cf_score" not in record.features and "user_features__last_event_at" not in record.features
    assert any(f.startswith("user_features__") for f in record.features)
    assert catalog == (n_items,) and with_content == n_items and 0 < with_cf <= 300
    assert n_users is not None and n_users[0] == 600
    assert any("hnsw" in row[0] and "vector_ip_ops" in row[0] for row in index)
    with psycopg.connect(stack.postgres_dsn(trained_stack)) as conn:
        registry.load_verified(conn, record)  # checksum verified on load
        stored = conn.execute("SELECT count(*), min(model_version), max(model_version) FROM item_neighbours").fetchone()
    assert stored is not None and stored[0] > 0 and stored[1] == stored[2] == version  # the item-item source


def test_a_model_is_read_where_every_node_reads_it_and_a_changed_artifact_is_refused(
    trained_stack: Settings, tmp_path: Path
) -> None:
    """The promoted model loads from the registry alone (no file under any node's RECSTACK_HOME); with an object-store
    URI (file:// here, as s3:// or gs:// would be) it loads from there; either way changed bytes are refused."""
    version = (trained_stack.home / "trained_version").read_text()
    added = []
    with psycopg.connect(stack.postgres_dsn(trained_stack)) as conn:
        record = registry.get(conn, version)
        model = registry.load_verified(conn, record)
        assert not (trained_stack.home / "models").exists()
        args = (record.features, record.params, record.metrics, record.data_window)
        in_store = registry.register(conn, model, *args, artifact_uri=(tmp_path / "store").as_uri())
        in_row = registry.register(conn, model, *args)
        added += [in_store.version, in_row.version]
        try:
            assert in_store.path == f"{(tmp_path / 'store').as_uri()}/{in_store.version}.cbm"
            assert registry.model_bytes(registry.load_verified(conn, in_store)) == registry.model_bytes(model)
            artifact = tmp_path / "store" / f"{in_store.version}.cbm"
            artifact.write_bytes(artifact.read_bytes()[:-16])
            with pytest.raises(registry.RegistryError, match="checksum mismatch"):
                registry.load_verified(conn, in_store)
            artifact.unlink()
            with pytest.raises(registry.RegistryError, match="cannot read"):
                registry.load_verified(conn, in_store)
            conn.execute(
                "UPDATE models SET artifact = substring(artifact from 1 for 1000) WHERE version = %s", (in_row.version,)
            )
            with pytest.raises(registry.RegistryError, match="checksum mismatch"):
                registry.load_verified(conn, in_row)
        finally:
            conn.execute("DELETE FROM models WHERE version = ANY(%s)", (added,))
            conn.commit()


def test_item_neighbours_round_trip_through_postgres(trained_stack: Settings) -> None:
    """Whole rows written by training come back exactly, in the reader's own dense id order (unknown ids dropped)."""
    import numpy as np
    from scipy import sparse

    from recstack.stages.item_item import ItemItem
    from recstack.tables import neighbours, vector_sets

    rng = np.random.default_rng(3)
    ids = np.array([11, 40, 41, 95, 300], np.int64)
    dense = rng.normal(size=(5, 5)).astype(np.float32)
    np.fill_diagonal(dense, 0.0)
    with psycopg.connect(stack.postgres_dsn(trained_stack)) as conn:
        conn.execute("SELECT 1")  # an open transaction: write's own becomes a savepoint the rollback below undoes
        vector_sets.write_neighbours(conn, "round-trip", ids, ItemItem(sparse.csr_matrix(dense)))
        assert vector_sets.activate(conn, "round-trip")
        assert neighbours.version(conn) == "round-trip"
        same = neighbours.load(conn, ids).weights.toarray()
        fewer = neighbours.load(conn, ids[[0, 2, 3]]).weights.toarray()  # a replica that knows three of the items
        conn.rollback()  # leave the trained set in place for the other tests
    np.testing.assert_array_equal(same, dense)
    np.testing.assert_array_equal(fewer, dense[np.ix_([0, 2, 3], [0, 2, 3])])
    with psycopg.connect(stack.postgres_dsn(trained_stack)) as conn:
        assert neighbours.version(conn) == (trained_stack.home / "trained_version").read_text()  # left as it was


def _live_vectors(conn: psycopg.Connection) -> dict[str, object]:
    """What serving reads, as comparable values: every user's and item's collaborative vector and popularity, and
    the item-item rows."""
    return {
        "users": conn.execute("SELECT user_id, external_id, cf::text FROM user_vectors ORDER BY user_id").fetchall(),
        "items": conn.execute("SELECT item_id, popularity, cf::text FROM item_vectors ORDER BY item_id").fetchall(),
        "neighbours": conn.execute(
            "SELECT item_id, neighbour_ids, weights FROM item_neighbours ORDER BY item_id"
        ).fetchall(),
    }


def test_promote_and_rollback_switch_the_vectors_with_the_model(trained_stack: Settings) -> None:
    """A rollback restores the ranker and the vectors and item-item weights it was trained with; promoting a model
    that has no stored set (trained before sets existed) leaves the live vectors alone."""
    import numpy as np
    from scipy import sparse

    from recstack.stages.item_item import ItemItem
    from recstack.tables import neighbours, vector_sets

    trained = (trained_stack.home / "trained_version").read_text()
    with psycopg.connect(stack.postgres_dsn(trained_stack)) as conn:
        before = _live_vectors(conn)
        assert vector_sets.exists(conn, trained) and neighbours.version(conn) == trained
        record = registry.get(conn, trained)

        def copy_of_trained() -> str:
            model = registry.load_verified(conn, record)
            return registry.register(
                conn, model, record.features, record.params, record.metrics, record.data_window
            ).version

        retrained, unversioned = copy_of_trained(), copy_of_trained()
        flipped = [
            (
                item_id,
                popularity + 1.0,
                None if cf is None else "[" + ",".join(str(-float(x)) for x in cf[1:-1].split(",")) + "]",
            )
            for item_id, popularity, cf in before["items"]  # type: ignore[attr-defined]
        ]
        users = [(u, e, "[" + ",".join("0.125" for _ in range(64)) + "]") for u, e, _ in before["users"]]  # type: ignore[attr-defined]
        vector_sets.write_vectors(conn, retrained, flipped, users)
        ids = np.array([r[0] for r in before["items"]][:20], np.int64)  # type: ignore[index]
        vector_sets.write_neighbours(
            conn, retrained, ids, ItemItem(sparse.csr_matrix(np.eye(20, k=1, dtype=np.float32)))
        )
        conn.commit()

        registry.promote(conn, retrained)
        conn.commit()
        live = _live_vectors(conn)
        assert neighbours.version(conn) == retrained and len(live["neighbours"]) == 19  # type: ignore[arg-type]
        assert live["users"] == users
        assert np.allclose([r[1] for r in live["items"]], [r[1] for r in flipped])  # type: ignore[attr-defined]

        assert registry.rollback(conn).version == trained
        conn.commit()
        assert _live_vectors(conn) == before and neighbours.version(conn) == trained

        registry.promote(conn, unversioned)  # no set of its own: what serves stays
        conn.commit()
        assert _live_vectors(conn) == before
        registry.promote(conn, trained)
        dropped = vector_sets.prune(conn, keep=1)  # keeps the newest model's, the latest promotion's and the live set
        conn.commit()
        assert retrained in dropped and trained not in dropped and vector_sets.exists(conn, trained)


def test_evaluate_cli_writes_json_and_markdown_report(trained_stack: Settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "eval.json"
    result = subprocess.run(
        [sys.executable, "-m", "recstack.cli", "evaluate", "--json", str(out), "--users", "150"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    methods = report["methods"]
    assert set(methods) == {
        "popularity",
        "item_knn",
        "ease",
        "embeddings",
        "retrieval_ranker",
        "retrieval_ranker_rerank",
    }
    for row in methods.values():
        for key in (
            "recall@10",
            "precision@10",
            "ndcg@10",
            "mrr@10",
            "hitrate@10",
            "ndcg@20",
            "coverage@10",
            "diversity@10",
            "novelty@10",
            "popularity_bias@10",
            "provider_exposure_gini@10",
        ):
            bounded = key != "novelty@10"
            assert (0 <= row[key] <= 1) if bounded else row[key] > 0, (key, row[key])
    # The planted tastes are learnable: the trained pipeline finds more than the popularity baseline does.
    assert methods["retrieval_ranker"]["ndcg@10"] > methods["popularity"]["ndcg@10"]
    assert report["protocol"]["name"] == "random" and 0 < report["candidate_recall"]["all"] <= 1
    # the served pipeline's ratio over each baseline, with its interval, as the acceptance lines state it
    served = report["served_vs"]["popularity"]
    ratio = methods["retrieval_ranker_rerank"]["ndcg@10"] / methods["popularity"]["ndcg@10"]
    assert abs(served["ndcg@10_ratio"] - ratio) < 1e-3 and served["ci95"][0] <= ratio <= served["ci95"][1]
    assert "served pipeline (ranker + rerank) vs the best baseline" in result.stdout
    # each rerank knob on its own beside none; no rerank is the ranker's own order
    knobs = report["rerank_knobs"]
    assert set(knobs) == {"none", "mmr_lambda", "max_provider_share", "long_tail_min"}
    assert abs(knobs["none"]["ndcg@10"] - methods["retrieval_ranker"]["ndcg@10"]) < 0.02
    assert all(0 < row["ndcg@10"] <= 1 and 0 < row["coverage@10"] <= 1 for row in knobs.values())
    # the floor puts a long-tail item (serving's rule) in the 10 slots of each slate whose best candidates hold one
    assert knobs["long_tail_min"]["long_tail_share@10"] > knobs["none"]["long_tail_share@10"]
    assert "each rerank knob alone" in result.stdout
    folder = trained_stack.reports_dir / "evaluation" / report["model_version"]
    assert (folder / "evaluation.md").read_text().count("| retrieval_ranker |") == 2
    assert (
        "## Served (retrieval + ranker + rerank, as /recommend) vs baselines" in (folder / "evaluation.md").read_text()
    )
    assert (folder / "accuracy.png").stat().st_size > 1000 and (folder / "exposure.png").stat().st_size > 1000


def test_models_cli_lists_the_promoted_model(trained_stack: Settings) -> None:
    version = (trained_stack.home / "trained_version").read_text()
    listed = subprocess.run(
        [sys.executable, "-m", "recstack.cli", "models", "list", "--json"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=120,
    )
    assert listed.returncode == 0, listed.stderr
    assert next(m for m in json.loads(listed.stdout) if m["version"] == version)["promoted"]
