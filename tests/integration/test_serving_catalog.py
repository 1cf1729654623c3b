"""The catalog held in memory (recstack.stages.item_table) gives the item-item order the candidates, features and
attributes the candidate statement gives, on the real Postgres of a trained stack; writes move its epoch.

Named to run after test_serving.py: the session's trained stack is built once, after the modules that reload data."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import psycopg
import pytest

from recstack import stack
from recstack.settings import Settings
from recstack.stages import item_table
from recstack.stages.retrieve import CANDIDATE_FEATURES, CandidateSet, Filters, configure_connection, retrieve
from recstack.tables import history

pytestmark = pytest.mark.integration

COLD = ("table-cold-1", "table-cold-2", "table-cold-3")  # items with a content vector and no collaborative one


@pytest.fixture()
def conn(trained_stack: Settings) -> Iterator[psycopg.Connection]:
    """A retrieval connection on the trained stack, with three cold copies of catalog items (removed after)."""
    with psycopg.connect(stack.postgres_dsn(trained_stack), autocommit=True) as c:
        configure_connection(c)
        for n, external in enumerate(COLD):
            c.execute(
                "INSERT INTO items (external_id, domain, title, categories, description, provider_id) "
                "SELECT %s, domain, title || ' (copy)', categories, description, provider_id FROM items "
                "ORDER BY item_id OFFSET %s LIMIT 1",
                (external, 10 * n),
            )
            c.execute(
                "INSERT INTO item_vectors (item_id, external_id, domain, provider_id, categories, content) "
                "SELECT i.item_id, i.external_id, i.domain, i.provider_id, i.categories, "
                "(SELECT content FROM item_vectors ORDER BY item_id OFFSET %s LIMIT 1) FROM items i "
                "WHERE i.external_id = %s",
                (10 * n, external),
            )
        try:
            yield c
        finally:
            c.execute("DELETE FROM item_vectors WHERE external_id = ANY(%s)", (list(COLD),))
            c.execute("DELETE FROM items WHERE external_id = ANY(%s)", (list(COLD),))


def _by_item(found: CandidateSet) -> dict[str, tuple[object, ...]]:
    return {
        item: (
            found.titles[n],
            found.domains[n],
            found.providers[n],
            tuple(found.categories[n]),
            found.vectors[n].tolist(),
            bool(found.long_tail[n]),
            found.features[n],
        )
        for n, item in enumerate(found.item_ids)
    }


def test_the_item_item_order_gets_the_statements_candidates_from_memory(
    trained_stack: Settings, conn: psycopg.Connection
) -> None:
    from serving.runtimes import Retriever

    retriever = Retriever(trained_stack)
    index = retriever.refresh()
    assert index is not None
    table = item_table.load(conn)
    assert table.has_cold_items()
    users = [
        str(r[0])
        for r in conn.execute(
            "SELECT u.external_id FROM users u JOIN events e ON e.user_id = u.user_id "
            "GROUP BY u.external_id ORDER BY count(*) DESC, u.external_id LIMIT 12"
        ).fetchall()
    ]
    contents = 0
    for n, user in enumerate(users):
        found = history.from_postgres(conn, user)  # type: ignore[arg-type]
        recent = [
            str(r[0])
            for r in conn.execute(
                "SELECT i.external_id FROM events e JOIN users u ON u.user_id = e.user_id "
                "JOIN items i ON i.item_id = e.item_id WHERE u.external_id = %s ORDER BY e.occurred_at DESC LIMIT 20",
                (user,),
            ).fetchall()
        ]
        exclude = recent[:1] if n % 2 else []  # a request's own exclusions too
        args = (conn, user, recent, Filters(), exclude, retriever.params, True, index, 1.0, found, 1, True)
        statement, memory = retrieve(*args), retrieve(*args, table=table)
        expected, got = _by_item(statement), _by_item(memory)
        assert set(got) == set(expected), user
        for item, row in expected.items():
            assert got[item][:6] == row[:6], (user, item)
            np.testing.assert_allclose(got[item][6], row[6], rtol=1e-4, atol=1e-5, err_msg=f"{user} {item}")
        assert not set(exclude) & set(got)
        contents += int(memory.features[:, CANDIDATE_FEATURES.index("from_content")].sum())
    assert contents, "no user reached a cold item through the content source: the comparison missed that source"


def test_writes_to_the_catalog_move_its_epoch(conn: psycopg.Connection) -> None:
    before = item_table.epoch(conn)
    conn.execute("UPDATE item_vectors SET popularity = popularity WHERE external_id = %s", (COLD[0],))
    after_vectors = item_table.epoch(conn)
    conn.execute("UPDATE items SET title = title WHERE external_id = %s", (COLD[0],))
    after_items = item_table.epoch(conn)
    conn.execute("SELECT 1 FROM item_vectors LIMIT 1")
    assert before < after_vectors < after_items == item_table.epoch(conn)
    assert item_table.load(conn).epoch == after_items
