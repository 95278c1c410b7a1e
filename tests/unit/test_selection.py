"""Selection statistics within a tier, small (scanned whole) and large (sampled), over 10,000 picks."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import httpx
import pytest
from _unit_support import CALLER_URL

from openai_priority_loadbalancer import Backend, LoadBalancer
from openai_priority_loadbalancer._choice import _SCAN_LIMIT

PICKS = 10_000
#: The balancers' random choices are seeded: a statistical bound checked against a fresh random draw
#: on every run fails now and then however wide it is (a 5-sigma bound over 200 backends, about once in
#: two thousand runs), and a red first ``pytest`` says nothing about the code.
SEED = 20_240_601


def _balancer(
    backends: list[Backend], status: Any = 200, **options: Any
) -> tuple[LoadBalancer, Counter[str]]:
    hits: Counter[str] = Counter()

    def handler(request: httpx.Request) -> httpx.Response:
        hits[request.url.host] += 1
        code = status(request.url.host) if callable(status) else status
        return httpx.Response(code, headers={"retry-after": "60"} if code == 429 else {})

    options.setdefault("max_wait_s", 0)
    lb = LoadBalancer(backends, transport=httpx.MockTransport(handler), **options)
    lb._random = random.Random(SEED)
    return lb, hits


def _send(lb: LoadBalancer, times: int) -> list[int]:
    request = httpx.Request("POST", CALLER_URL, content=b"{}")
    return [lb.handle_request(request).status_code for _ in range(times)]


@pytest.mark.parametrize("size", [2, 5, _SCAN_LIMIT + 1, 200])
def test_weights_hold_within_five_percent(size: int) -> None:
    """Even-numbered backends weigh 3, odd ones 1: each side gets its weight's share, give or take 5 %."""
    backends = [Backend(f"b{i}.example", 1, weight=3 if i % 2 == 0 else 1) for i in range(size)]
    lb, hits = _balancer(backends)
    _send(lb, PICKS)
    heavy = sum(n for host, n in hits.items() if int(host[1:].split(".")[0]) % 2 == 0)
    expected = sum(b.weight for b in backends[::2]) / sum(b.weight for b in backends)
    assert abs(heavy / PICKS - expected) < 0.05 * expected
    assert sum(hits.values()) == PICKS


@pytest.mark.parametrize("size", [10, 200])
def test_equal_weights_spread_evenly(size: int) -> None:
    lb, hits = _balancer([Backend(f"b{i}.example", 1) for i in range(size)])
    _send(lb, PICKS)
    assert len(hits) == size
    mean = PICKS / size
    # Binomial spread: every backend within 5 standard deviations of the mean.
    assert max(abs(n - mean) for n in hits.values()) < 5 * mean**0.5


def test_a_large_tier_finds_its_one_usable_backend() -> None:
    """All but one of 500 are throttled: sampling misses it almost always, the fallback scan finds it."""
    lb, hits = _balancer(
        [Backend(f"b{i}.example", 1) for i in range(500)],
        status=lambda host: 200 if host == "b321.example" else 429,
    )
    statuses = _send(lb, 600)
    assert statuses[-100:] == [200] * 100
    assert hits["b321.example"] == 600
    assert all(n == 1 for host, n in hits.items() if host != "b321.example")


def test_a_large_tier_tries_each_backend_once_before_the_next_tier() -> None:
    backends = [Backend(f"b{i}.example", 1) for i in range(100)] + [Backend("last.example", 2)]
    lb, hits = _balancer(backends, status=lambda host: 200 if host == "last.example" else 429)
    assert _send(lb, 1) == [200]
    assert hits["last.example"] == 1
    assert sum(hits.values()) == 101
    assert set(hits.values()) == {1}


def test_a_large_tier_prefers_idle_backends() -> None:
    """With most of a large tier busy, the sampled pick lands on an idle one."""
    lb, hits = _balancer([Backend(f"b{i}.example", 1) for i in range(100)])
    for state in lb._lane("gpt-4o").states[:90]:  # the deployment CALLER_URL names
        state.in_flight = 5  # as if requests were out on them
    _send(lb, 1000)
    idle = {f"b{i}.example" for i in range(90, 100)}
    on_idle = sum(n for host, n in hits.items() if host in idle)
    assert on_idle / 1000 > 0.8  # 16 draws among 100 include an idle one with p = 1 - 0.9**16 = 0.81
