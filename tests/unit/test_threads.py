"""One balancer shared by many threads (and many tasks): no error, and the counters add up exactly.

These use the real monotonic clock and real (millisecond) cooldowns, so the balancer's own waiting
is real too; each test takes well under a second.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from _unit_support import CALLER_URL, HOSTS

from openai_priority_loadbalancer import AsyncLoadBalancer, Backend, LoadBalancer

THREADS = 8
REQUESTS = 400


class Throttling:
    """Each backend answers 429 (retry-after-ms 5) to every 10th request it gets, 200 otherwise.

    With ``failures``, every 7th request instead gets a 500 and every 13th a refused connection.
    """

    def __init__(self, *, failures: bool = False) -> None:
        self.failures = failures
        self.lock = threading.Lock()
        self.counters = {host: itertools.count(1) for host in HOSTS}
        self.seen: Counter[str] = Counter()  # host/outcome -> count

    def answer(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        with self.lock:
            n = next(self.counters[host])
            self.seen["attempts"] += 1
            if n % 10 == 0:
                outcome = "429"
            elif self.failures and n % 7 == 0:
                outcome = "500"
            elif self.failures and n % 13 == 0:
                outcome = "refused"
            else:
                outcome = "200"
            self.seen[outcome] += 1
        if outcome == "429":
            return httpx.Response(429, headers={"retry-after-ms": "5"}, json={"error": {"code": "429"}})
        if outcome == "500":
            return httpx.Response(500)
        if outcome == "refused":
            raise httpx.ConnectError("refused")
        return httpx.Response(200, json={"host": host})

    def __call__(self, request: httpx.Request) -> httpx.Response:
        return self.answer(request)


def check_counters(lb: Any, backend: Throttling, statuses: Counter[int]) -> None:
    stats = lb.stats()
    assert sum(s.requests for s in stats) == backend.seen["attempts"]
    assert sum(s.successes for s in stats) == backend.seen["200"] == statuses[200]
    assert sum(s.throttled for s in stats) == backend.seen["429"]
    assert sum(s.failures for s in stats) == backend.seen["500"] + backend.seen["refused"]
    assert [s.in_flight for s in stats] == [0, 0, 0]
    assert set(statuses) <= {200, 429}
    assert sum(statuses.values()) == REQUESTS


def _synthesized(response: httpx.Response) -> bool:
    return response.extensions["openai_priority_loadbalancer"].backend is None


@pytest.mark.parametrize("failures", [False, True], ids=["throttling", "throttling-and-failing"])
def test_shared_by_threads(real_sleep: None, failures: bool) -> None:
    backend = Throttling(failures=failures)
    lb = LoadBalancer(
        [Backend(host, 1) for host in HOSTS],
        transport=httpx.MockTransport(backend),
        failure_backoff_s=0.005,
        failure_backoff_max_s=0.02,
    )
    started = time.monotonic()
    with httpx.Client(transport=lb) as client, ThreadPoolExecutor(THREADS) as pool:
        responses = list(pool.map(lambda _: client.post(CALLER_URL, json={"i": 1}), range(REQUESTS)))
    assert time.monotonic() - started < 3
    statuses = Counter(r.status_code for r in responses)
    assert all(_synthesized(r) for r in responses if r.status_code == 429)
    assert all(r.json()["host"] in HOSTS for r in responses if r.status_code == 200)
    check_counters(lb, backend, statuses)


def test_shared_by_threads_without_waiting(real_sleep: None) -> None:
    """With max_wait_s=0 the balancer answers its own 429s at once; the counts still add up."""
    backend = Throttling()
    lb = LoadBalancer(
        [Backend(host, 1) for host in HOSTS], transport=httpx.MockTransport(backend), max_wait_s=0
    )
    barrier = threading.Barrier(THREADS)

    def worker(_: int) -> list[httpx.Response]:
        barrier.wait()
        return [client.post(CALLER_URL, json={}) for _ in range(REQUESTS // THREADS)]

    with httpx.Client(transport=lb) as client, ThreadPoolExecutor(THREADS) as pool:
        responses = [r for chunk in pool.map(worker, range(THREADS)) for r in chunk]
    statuses = Counter(r.status_code for r in responses)
    assert all(_synthesized(r) for r in responses if r.status_code == 429)
    check_counters(lb, backend, statuses)


async def test_shared_by_tasks(real_sleep: None) -> None:
    backend = Throttling(failures=True)

    async def answer(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0)  # let the other tasks in while this one is "on the wire"
        return backend.answer(request)

    lb = AsyncLoadBalancer(
        [Backend(host, 1) for host in HOSTS],
        transport=httpx.MockTransport(answer),
        failure_backoff_s=0.005,
        failure_backoff_max_s=0.02,
    )
    semaphore = asyncio.Semaphore(32)

    async def one(client: httpx.AsyncClient) -> httpx.Response:
        async with semaphore:
            return await client.post(CALLER_URL, json={})

    async with httpx.AsyncClient(transport=lb) as client:
        responses = await asyncio.wait_for(asyncio.gather(*(one(client) for _ in range(REQUESTS))), 5)
    statuses = Counter(r.status_code for r in responses)
    check_counters(lb, backend, statuses)
