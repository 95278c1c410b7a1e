"""Shared fixtures for the unit tests: a hand-driven clock, a scripted inner transport, observable streams.

Nothing here opens a socket or sleeps. The inner transport is the HTTP library's own ``MockTransport``
answering by ``request.url.host`` from a per-host script; the balancer's clocks are objects whose time
only moves when a test moves it.
"""

from __future__ import annotations

import threading
import time
import types
from typing import TYPE_CHECKING, Any

import pytest
from _unit_support import LIBS, WALL_NOW, FakeClock

from openai_priority_loadbalancer import AsyncLoadBalancer, Backend, LoadBalancer, _transports

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

#: Where the monotonic fake clock starts: not 0, so that float arithmetic is as in production.
MONOTONIC_START = 1000.0


class Router:
    """The handler of a ``MockTransport``: answers each request by its host from a script.

    ``script(host, *entries)`` queues one-shot answers for a host; ``always(host, entry)`` sets what
    the host answers once its queue is empty (default: 200 with a small JSON body). An entry is:

    - an ``int``: that status, JSON body ``{"host": ...}``;
    - a tuple ``(status, headers)``;
    - an exception instance: raised (as a transport would);
    - a callable taking the request: its result (a response, or a coroutine for async clients).

    Every request that reaches the handler is recorded in ``requests``, in order.
    """

    def __init__(self, lib: Any) -> None:
        self.lib = lib
        self.requests: list[Any] = []
        self._scripts: dict[str, list[Any]] = {}
        self._defaults: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.transport = tracking_mock_transport(lib, self)

    def script(self, host: str, *entries: Any) -> Router:
        with self._lock:
            self._scripts.setdefault(host, []).extend(entries)
        return self

    def always(self, host: str, entry: Any) -> Router:
        self._defaults[host] = entry
        return self

    @property
    def hosts(self) -> list[str]:
        return [r.url.host for r in self.requests]

    def for_host(self, host: str) -> list[Any]:
        return [r for r in self.requests if r.url.host == host]

    def __call__(self, request: Any) -> Any:
        host = request.url.host
        with self._lock:
            self.requests.append(request)
            queue = self._scripts.get(host)
            entry = queue.pop(0) if queue else self._defaults.get(host, 200)
        return self.answer(entry, request)

    def answer(self, entry: Any, request: Any) -> Any:
        if isinstance(entry, BaseException):
            raise entry
        if isinstance(entry, int):
            return self.lib.Response(entry, json={"host": request.url.host})
        if isinstance(entry, tuple):
            status, headers = entry
            return self.lib.Response(status, headers=headers, json={"host": request.url.host})
        if callable(entry):
            return entry(request)
        raise AssertionError(f"bad script entry {entry!r}")


def tracking_mock_transport(lib: Any, handler: Callable[[Any], Any]) -> Any:
    """A ``MockTransport`` of ``lib`` that counts how often it was closed (sync or async)."""

    class TrackingMockTransport(lib.MockTransport):  # type: ignore[misc,name-defined]
        def __init__(self, handler: Callable[[Any], Any]) -> None:
            super().__init__(handler)
            self.closed = 0

        def close(self) -> None:
            self.closed += 1

        async def aclose(self) -> None:
            self.closed += 1

    return TrackingMockTransport(handler)


def _observed_stream(lib: Any, chunks: tuple[bytes, ...] = (b'{"error": {"code": "429"}}',)) -> Any:
    """A response body stream (sync and async) that records whether it was read and closed."""

    class ObservedStream(lib.SyncByteStream, lib.AsyncByteStream):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            self.iterated = False
            self.closed = False

        def __iter__(self) -> Any:
            self.iterated = True
            yield from chunks

        async def __aiter__(self) -> Any:
            self.iterated = True
            for chunk in chunks:
                yield chunk

        def close(self) -> None:
            self.closed = True

        async def aclose(self) -> None:
            self.closed = True

    return ObservedStream()


@pytest.fixture(params=sorted(LIBS))
def lib(request: pytest.FixtureRequest) -> Any:
    """The HTTP library under test: every scenario runs with httpx and with httpx2."""
    return LIBS[request.param]


@pytest.fixture
def observed_stream(lib: Any) -> Callable[..., Any]:
    """Make a response body stream of ``lib`` whose ``iterated`` / ``closed`` flags show what was done."""
    return lambda *chunks: _observed_stream(lib, chunks) if chunks else _observed_stream(lib)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(MONOTONIC_START)


@pytest.fixture
def wall() -> FakeClock:
    return FakeClock(WALL_NOW)


@pytest.fixture
def router(lib: Any) -> Router:
    return Router(lib)


@pytest.fixture
def make_lb(router: Router, clock: FakeClock, wall: FakeClock) -> Callable[..., Any]:
    """Build a LoadBalancer (or ``cls=AsyncLoadBalancer``) over the router, with the fake clocks.

    ``max_wait_s`` defaults to 0 here: when every backend is set aside the balancer answers its 429 at
    once (DESIGN 2.6). Tests of waiting pass ``max_wait_s`` and use the ``fake_sleep`` fixture.
    """

    def make(backends: list[Backend], *, cls: type = LoadBalancer, **options: Any) -> Any:
        options.setdefault("transport", router.transport)
        options.setdefault("clock", clock)
        options.setdefault("wall_clock", wall)
        options.setdefault("max_wait_s", 0)
        return cls(backends, **options)

    return make


@pytest.fixture
def client_for(lib: Any) -> Iterator[Callable[[LoadBalancer], Any]]:
    """A client of the test's HTTP library over a balancer; closed at the end of the test.
    (test_balancer_async.py has its async twin under the same name.)"""
    clients: list[Any] = []

    def make(lb: LoadBalancer) -> Any:
        client = lib.Client(transport=lb)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def make_async_lb(make_lb: Callable[..., Any]) -> Callable[..., Any]:
    def make(backends: list[Backend], **options: Any) -> Any:
        return make_lb(backends, cls=AsyncLoadBalancer, **options)

    return make


# ---------------------------------------------------------------------- sleeping
#
# The balancer sleeps (time.sleep / anyio.sleep in _transports) while waiting for a backend to free
# up; the wait is measured with the injected clock. A test with a fake clock must therefore never
# reach a real sleep (it would wait for a clock that never moves): the autouse guard below turns one
# into a failure, ``fake_sleep`` turns sleeps into moves of the fake clock, and ``real_sleep`` lets a
# test that uses the real monotonic clock sleep for real.


def _patch_sleeps(monkeypatch: pytest.MonkeyPatch, sleep: Callable[[float], None]) -> None:
    shim = types.SimpleNamespace(**{**vars(time), "sleep": sleep})

    async def async_sleep(seconds: float) -> None:
        sleep(seconds)

    monkeypatch.setattr(_transports, "time", shim, raising=False)
    monkeypatch.setattr(_transports, "_async_sleep", async_sleep, raising=False)


@pytest.fixture(autouse=True)
def _no_real_sleep(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if "real_sleep" in request.fixturenames or "fake_sleep" in request.fixturenames:
        return

    def refuse(seconds: float) -> None:
        raise AssertionError(f"the balancer slept {seconds} s in a test that did not expect it")

    _patch_sleeps(monkeypatch, refuse)


@pytest.fixture
def real_sleep() -> None:
    """Let the balancer sleep for real (tests that use the real monotonic clock)."""


@pytest.fixture
def fake_sleep(monkeypatch: pytest.MonkeyPatch, clock: FakeClock) -> list[float]:
    """The balancer's sleeps advance the fake clock instead; returns the list of sleeps, in order."""
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.advance(seconds)

    _patch_sleeps(monkeypatch, sleep)
    return slept
