"""Constants and small helpers of the unit tests, one definition each; the fixtures are in conftest.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
import pytest

if TYPE_CHECKING:
    import threading

    from openai_priority_loadbalancer import BackendStats

try:
    import httpx2
except ImportError:  # pragma: no cover - httpx2 needs Python 3.11
    httpx2 = None

#: The HTTP libraries the scenarios run with (httpx2 needs Python 3.11; the suite runs without it).
LIBS: dict[str, Any] = {name: m for name, m in (("httpx", httpx), ("httpx2", httpx2)) if m is not None}
needs_httpx2 = pytest.mark.skipif(httpx2 is None, reason="httpx2 is not installed")

#: The name of the balancer's logger.
LOGGER = "openai-priority-loadbalancer"
#: Where the callers send their requests; the balancer readdresses them to a backend.
CALLER_URL = "https://caller.example/openai/deployments/gpt-4o/chat/completions?api-version=2024-06-01"
#: The ``wall`` fixture's reading (seconds since the epoch), for HTTP-date Retry-After values.
WALL_NOW = 1_700_000_000.0
#: Seconds a test waits for another thread or task before giving up (never reached when green).
WAIT = 5.0
#: The backends' hosts.
A, B, C = "a.example", "b.example", "c.example"
HOSTS = (A, B, C)
#: The kinds of event that end an attempt.
OUTCOMES = frozenset({"served", "throttled", "failed", "abandoned"})

#: The ``make_lb`` and ``make_async_lb`` fixtures.
MakeLb = Callable[..., Any]


class FakeClock:
    """A clock for the balancer whose time moves only by ``advance`` / ``set``."""

    def __init__(self, start: float) -> None:
        self.now = start
        self.start = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def set(self, moment: float) -> None:
        self.now = moment


def post(client: Any, url: str = CALLER_URL, *, api_key: str | None = None, **kwargs: Any) -> Any:
    """POST a one-message chat request; with an async client, await the result.

    ``api_key`` is sent as the caller's ``api-key`` header, unless ``headers`` are given.
    """
    kwargs.setdefault("json", {"messages": [{"role": "user", "content": "hi"}]})
    if api_key is not None:
        kwargs.setdefault("headers", {"api-key": api_key})
    return client.post(url, **kwargs)


def routing(response: Any) -> Any:
    """The balancer's record of where a response's request went."""
    return response.extensions["openai_priority_loadbalancer"]


def stats_by_id(lb: Any, deployment: str | None = "gpt-4o") -> dict[str, BackendStats]:
    """The balancer's stats rows of ``deployment`` (by default the one CALLER_URL names), by backend;
    a backend with no row of it shows its first row."""
    rows: dict[str, BackendStats] = {}
    for s in lb.stats():
        if s.backend not in rows or s.deployment == deployment:
            rows[s.backend] = s
    return rows


def held(lib: Any, entered: threading.Event, release: threading.Event, status: int = 200) -> Any:
    """A script entry that blocks in the inner transport until ``release`` is set."""

    def answer(request: Any) -> Any:
        entered.set()
        assert release.wait(WAIT), "the held request was never released"
        return lib.Response(status, json={"host": request.url.host})

    return answer
