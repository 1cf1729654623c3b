"""A serving replica reads a newly trained item-item set off the request path (serving/runtimes.py
Retriever.refresh): retrievals keep the set they have until the new one is read."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from recstack.reload import BackgroundReload
from recstack.stages import item_table
from recstack.stages.item_item import ItemItem
from recstack.tables import neighbours
from serving import runtimes
from serving.runtimes import Retriever


class FakeConnection:
    def execute(self, sql: str, *args: Any) -> Any:
        class Rows:
            def fetchall(self) -> list[tuple[int, float]]:
                return [(1, 3.0), (2, 1.0)]

            def fetchone(self) -> tuple[bool]:  # recstack.stages.retrieve.has_cold_items
                return (False,)

        return Rows()


class FakePool:
    @contextmanager
    def connection(self) -> Any:
        yield FakeConnection()


def test_a_new_item_item_set_is_read_in_the_background(monkeypatch: pytest.MonkeyPatch) -> None:
    stored = {"version": "v1"}
    loads: list[float] = []

    def load(conn: Any, ids: np.ndarray) -> ItemItem:
        loads.append(time.monotonic())
        time.sleep(0.0 if stored["version"] == "v1" else 1.0)  # a 100k-item set takes ~1 s
        return ItemItem.empty(len(ids))

    monkeypatch.setattr(neighbours, "version", lambda conn: stored["version"])
    monkeypatch.setattr(neighbours, "load", load)
    monkeypatch.setattr(runtimes, "_order_by", lambda conn, version: "ii_score")
    monkeypatch.setattr(runtimes, "MODEL_CHECK_S", 0.0)  # every call checks the stored version
    catalog = {"epoch": 1}
    tables: list[SimpleNamespace] = []

    def load_table(conn: Any) -> SimpleNamespace:
        tables.append(SimpleNamespace(epoch=catalog["epoch"], has_cold_items=lambda: True))
        return tables[-1]

    monkeypatch.setattr(item_table, "epoch", lambda conn: catalog["epoch"])
    monkeypatch.setattr(item_table, "load", load_table)
    retriever = Retriever.__new__(Retriever)
    retriever.pool = FakePool()  # type: ignore[assignment]
    retriever._item_item, retriever._item_item_checked = None, 0.0
    retriever._item_item_lock = threading.Lock()
    retriever._item_item_reload = BackgroundReload("item-item-reload")
    retriever._table, retriever._table_reload = None, BackgroundReload("item-table-reload")
    first = retriever.refresh()
    assert first is not None and first.version == "v1"  # the first set is read at once

    stored["version"] = "v2"
    answers: list[tuple[str | None, float]] = []

    def retrieve() -> None:
        started = time.perf_counter()
        found = retriever.refresh()
        answers.append((found.version if found else None, time.perf_counter() - started))

    threads = [threading.Thread(target=retrieve) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(version == "v1" and seconds < 0.5 for version, seconds in answers), answers
    deadline = time.monotonic() + 10
    while (found := retriever.refresh()) is None or found.version != "v2":
        assert time.monotonic() < deadline, "the new set was never served"
        time.sleep(0.05)
    assert len(loads) == 2  # one background read of v2, not one per retrieval

    # The catalog in memory (the model orders by the item-item score): read in the background, again when it moves.
    deadline = time.monotonic() + 10
    for wanted in (1, 2):
        catalog["epoch"] = wanted
        while retriever._table is None or retriever._table.epoch != wanted:
            assert time.monotonic() < deadline, f"the catalog at epoch {wanted} was never read"
            retriever.refresh()
            time.sleep(0.05)
    assert [t.epoch for t in tables] == [1, 2]
    # While the table is current it says whether the catalog has cold items (the fake probe in Postgres says no).
    retriever.refresh()
    assert retriever._cold_items is True
    catalog["epoch"] = 3  # moved: the probe answers until the table is read again
    retriever.refresh()
    assert retriever._cold_items is False
