"""The HTTP guard (plain ASGI middleware): API key, 64 KiB body limit with and without content-length, JSON 500s,
per-endpoint metrics; the request body still reaches the endpoint whole."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from serving import metrics
from serving.http import Guard
from serving.schemas import MAX_BODY_BYTES


def make_client(api_key: str | None = None) -> TestClient:
    api = FastAPI()
    api.add_middleware(Guard, api_key=api_key)

    @api.post("/recommend")
    async def echo(request: Request) -> dict[str, Any]:
        body = await request.body()
        return {"bytes": len(body), "start": body[:10].decode()}

    @api.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz")
    async def boom() -> None:
        raise RuntimeError("secret internals")

    return TestClient(api, raise_server_exceptions=False)


def counted(endpoint: str, status: str) -> float:
    return metrics.RESPONSES.labels(endpoint, status)._value.get()


def test_the_body_reaches_the_endpoint_whole() -> None:
    client = make_client()
    body = b'{"user_id": "' + b"x" * 50_000 + b'"}'
    response = client.post("/recommend", content=body)
    assert response.json() == {"bytes": len(body), "start": '{"user_id"'}


def test_bodies_over_the_limit_are_413_with_or_without_content_length() -> None:
    client = make_client()
    before = counted("/recommend", "413")
    big = b"x" * (MAX_BODY_BYTES + 1)
    response = client.post("/recommend", content=big)
    assert response.status_code == 413 and "larger than" in response.json()["error"]

    def chunks() -> Any:  # a generator body goes out chunked: no content-length header
        for _ in range(MAX_BODY_BYTES // 4096 + 2):
            yield b"y" * 4096

    response = client.post("/recommend", content=chunks())
    assert response.status_code == 413 and response.json()["error"]
    assert counted("/recommend", "413") == before + 2


def test_api_key_is_required_except_on_health_endpoints() -> None:
    client = make_client(api_key="s3cret")
    assert client.post("/recommend", content=b"{}").status_code == 401
    assert client.post("/recommend", content=b"{}", headers={"x-api-key": "wrong"}).status_code == 401
    assert client.post("/recommend", content=b"{}", headers={"x-api-key": "s3cret"}).status_code == 200
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize("api_key", [None, "k"])
def test_an_unhandled_error_is_a_json_500_without_internals(api_key: str | None) -> None:
    client = make_client(api_key)
    before = counted("/readyz", "500")
    response = client.get("/readyz")
    assert response.status_code == 500
    assert response.json()["error"].startswith("internal error") and "secret" not in response.text
    assert counted("/readyz", "500") == before + 1


def test_recommendations_past_the_in_flight_bound_are_shed_at_once_with_503() -> None:
    """Admission control: with 2 /recommend requests in progress, a third is answered 503 with Retry-After at once
    (not queued behind them); once they finish, requests pass again. Other endpoints are never shed."""
    import asyncio

    api = FastAPI()
    release = asyncio.Event()

    @api.post("/recommend")
    async def slow() -> dict[str, str]:
        await release.wait()
        return {"status": "served"}

    @api.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    guard = Guard(api, max_inflight=2)

    async def call(method: str, path: str) -> tuple[int, dict[bytes, bytes]]:
        scope = {
            **{"type": "http", "method": method, "path": path, "headers": [(b"content-length", b"2")]},
            **{"query_string": b"", "root_path": "", "scheme": "http", "server": ("test", 80), "http_version": "1.1"},
        }
        body = [{"type": "http.request", "body": b"{}", "more_body": False}]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return body.pop() if body else await asyncio.Event().wait()  # type: ignore[func-returns-value]

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await guard(scope, receive, send)
        return sent[0]["status"], dict(sent[0]["headers"])

    async def scenario() -> tuple[list[int], int, bytes | None, int, int]:
        held = [asyncio.create_task(call("POST", "/recommend")) for _ in range(2)]
        await asyncio.sleep(0.05)
        shed, headers = await asyncio.wait_for(call("POST", "/recommend"), timeout=1)
        health, _ = await call("GET", "/healthz")
        release.set()
        served = [(await task)[0] for task in held]
        again, _ = await call("POST", "/recommend")
        return served, shed, headers.get(b"retry-after"), health, again

    served, shed, retry_after, health, again = asyncio.run(scenario())
    assert served == [200, 200] and shed == 503 and retry_after == b"1" and health == 200 and again == 200
