"""The API port's balancer (serving/front.py): each connection goes to the next target in turn, bytes pass both ways
whole, a target that refuses is skipped for the next one."""

from __future__ import annotations

import asyncio

import pytest

from recstack.stack import free_port
from serving.front import Balancer


async def _named_server(name: bytes) -> tuple[asyncio.AbstractServer, int]:
    """A target answering each request line with its name and the line, then closing."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        writer.write(name + b" " + line)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, limit=1 << 20)
    return server, server.sockets[0].getsockname()[1]


async def _ask(port: int, line: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(line)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return answer


def test_connections_go_round_robin_and_a_refusing_target_is_skipped() -> None:
    async def scenario() -> list[bytes]:
        a, port_a = await _named_server(b"a")
        b, port_b = await _named_server(b"b")
        dead = free_port()  # nothing listens there
        balancer = Balancer([f"127.0.0.1:{port_a}", f"127.0.0.1:{dead}", f"127.0.0.1:{port_b}"])
        front = await asyncio.start_server(balancer.handle, "127.0.0.1", 0)
        port = front.sockets[0].getsockname()[1]
        body = b"x" * 200_000 + b"\n"  # more than one read's worth passes whole
        answers = [await _ask(port, line) for line in (b"1\n", b"2\n", b"3\n", body)]
        for server in (a, b, front):
            server.close()
        return answers

    answers = asyncio.run(scenario())
    assert answers[:3] == [b"a 1\n", b"b 2\n", b"b 3\n"]  # the dead target's turn went to the next one
    assert answers[3] == b"a " + b"x" * 200_000 + b"\n"


def test_serve_start_waits_again_when_its_proxy_was_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a loaded machine Serve's controller replaced a proxy slow to start while serve.start waited on it
    (ActorDiedError); `recstack serve` failed although the next proxy came up."""
    from ray import serve
    from ray.exceptions import ActorDiedError

    from serving.front import SERVE_START_TRIES, start_serve

    calls: list[dict[str, object]] = []

    def flaky_start(http_options: dict[str, object]) -> None:
        calls.append(http_options)
        if len(calls) == 1:
            raise ActorDiedError()

    monkeypatch.setattr(serve, "start", flaky_start)
    start_serve({"host": "127.0.0.1", "port": 1})
    assert len(calls) == 2

    def always_dies(http_options: dict[str, object]) -> None:
        calls.append(http_options)
        raise ActorDiedError()

    calls.clear()
    monkeypatch.setattr(serve, "start", always_dies)
    with pytest.raises(ActorDiedError):
        start_serve({"host": "127.0.0.1", "port": 1})
    assert len(calls) == SERVE_START_TRIES
