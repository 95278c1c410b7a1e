"""A deployment a backend lacks, shared through a real redis-server: its mark is a record like a
cooldown, but it refuses no reservation (a deployment lacking everywhere is still tried)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx
import pytest

from openai_priority_loadbalancer import Backend, LoadBalancer, SharedState

if TYPE_CHECKING:
    from openai_priority_loadbalancer.redis import RedisStateStore

pytestmark = pytest.mark.redis

KEYS = ["https://a:443#deployment=gpt-4o", "https://b:443#deployment=gpt-4o"]
URL = "https://caller.example/openai/deployments/gpt-4o/chat/completions?api-version=2024-06-01"


def test_a_missing_mark_is_kept_and_refuses_no_reservation(store: RedisStateStore) -> None:
    store.set_aside(KEYS[0], SharedState(300.0, "missing", 0))
    record = store.load(KEYS)[0]
    assert record is not None
    assert (record.reason, round(record.cooling_s)) == ("missing", 300)
    reservation = store.reserve(KEYS, 0, [], 10.0)
    assert reservation.granted
    again = reservation.records[0]
    assert again is not None
    assert again.reason == "missing"


def test_a_missing_deployment_found_by_one_process_is_skipped_by_another(store: RedisStateStore) -> None:
    hits: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        hits.append(request.url.host)
        if request.url.host == "a.example":
            return httpx.Response(404, json={"error": {"code": "DeploymentNotFound"}})
        return httpx.Response(200, json={"host": request.url.host})

    backends = [Backend("a.example", 1), Backend("b.example", 2)]
    for _ in range(2):  # as two processes: each balancer of its own, one Redis
        lb = LoadBalancer(backends, transport=httpx.MockTransport(handler), state=store)
        with httpx.Client(transport=lb) as client:
            assert client.post(URL, json={}).json() == {"host": "b.example"}
    assert hits == ["a.example", "b.example", "b.example"]
