"""OpenTelemetryMetrics: the balancer's events as OpenTelemetry metrics, read with the SDK's in-memory reader.

Every test passes its own ``MeterProvider``; the global one is never touched. The balancers are real,
over the HTTP library's ``MockTransport`` (httpx and httpx2 through the ``lib`` fixture).
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import itertools
import json
import sys
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import _unit_support
import pytest
from _unit_support import HOSTS, WAIT, A, B, C, held
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader

from openai_priority_loadbalancer import (
    AbandonedEvent,
    AsyncLoadBalancer,
    AttemptEvent,
    Backend,
    Event,
    ExhaustedEvent,
    FailedEvent,
    LoadBalancer,
    MemoryStateStore,
    OwnerDiscoveredEvent,
    RecoveredEvent,
    ServedEvent,
    SetAsideEvent,
    ThrottledEvent,
    WaitedEvent,
    __version__,
)
from openai_priority_loadbalancer.otel import METER_NAME, OpenTelemetryMetrics

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

CALLER_KEY = "caller-key-0000-must-not-leak"
SECRET = "sk-backend-key-1234-must-not-leak"

P = "openai_priority_loadbalancer."
ATTEMPTS = P + "attempts"
DURATION = P + "attempt.duration"
ACTIVE = P + "attempt.active"
THROTTLES = P + "throttles"
FAILURES = P + "failures"
RECOVERIES = P + "recoveries"
COOLDOWN = P + "cooldown.duration"
WAITS = P + "waits"
WAIT_DURATION = P + "wait.duration"
EXHAUSTED = P + "exhausted_requests"
SET_ASIDES = P + "set_asides"
OWNERS_DISCOVERED = P + "owners_discovered"
STATUS = "http.response.status_code"

INSTRUMENTS = {  # name -> (unit, the attribute keys its points may have)
    ATTEMPTS: ("{attempt}", {"backend", "deployment", "outcome", STATUS}),
    DURATION: ("s", {"backend", "deployment", "outcome", STATUS}),
    ACTIVE: ("{attempt}", {"backend", "deployment"}),
    THROTTLES: ("{throttle}", {"backend", "deployment"}),
    FAILURES: ("{failure}", {"backend", "deployment", "cause"}),
    RECOVERIES: ("{recovery}", {"backend", "deployment"}),
    COOLDOWN: ("s", {"backend", "deployment", "reason"}),
    WAITS: ("{wait}", set()),
    WAIT_DURATION: ("s", set()),
    EXHAUSTED: ("{request}", set()),
    SET_ASIDES: ("{set_aside}", {"backend", "deployment", "reason", "shared"}),
    OWNERS_DISCOVERED: ("{object}", {"backend", "deployment"}),
}


# ---------------------------------------------------------------------- reading the metrics


class Exported:
    """One collection of the in-memory reader: the points of every instrument, by name."""

    def __init__(self, reader: InMemoryMetricReader) -> None:
        data = reader.get_metrics_data()
        self.json = data.to_json() if data is not None else ""
        self.scopes: list[Any] = []
        self.metrics: dict[str, Any] = {}
        for resource_metrics in data.resource_metrics if data is not None else ():
            for scope_metrics in resource_metrics.scope_metrics:
                self.scopes.append(scope_metrics.scope)
                for metric in scope_metrics.metrics:
                    self.metrics[metric.name] = metric

    def points(self, name: str) -> list[Any]:
        metric = self.metrics.get(name)
        return list(metric.data.data_points) if metric is not None else []

    def _matching(self, name: str, attributes: dict[str, Any]) -> list[Any]:
        return [p for p in self.points(name) if all(p.attributes.get(k) == v for k, v in attributes.items())]

    def value(self, name: str, **attributes: Any) -> float:
        """The sum of a counter's points whose attributes include ``attributes``."""
        return float(sum(p.value for p in self._matching(name, attributes)))

    def count(self, name: str, **attributes: Any) -> int:
        """The number of a histogram's recordings whose attributes include ``attributes``."""
        return int(sum(p.count for p in self._matching(name, attributes)))

    def total(self, name: str, **attributes: Any) -> float:
        """The sum of a histogram's recordings whose attributes include ``attributes``."""
        return float(sum(p.sum for p in self._matching(name, attributes)))

    def series(self, name: str) -> dict[frozenset[tuple[str, Any]], Any]:
        """Each point's attributes -> its value (a counter) or its count (a histogram)."""
        return {
            frozenset(p.attributes.items()): p.count if isinstance(p, HistogramDataPoint) else p.value
            for p in self.points(name)
        }


def at(**attributes: Any) -> frozenset[tuple[str, Any]]:
    """A series key: ``at(backend=A, outcome="served", status=200)`` (``status`` is the OTel status key).
    A series of a backend has the deployment the tests' requests name (CALLER_URL), unless told."""
    if "backend" in attributes and attributes.setdefault("deployment", "gpt-4o") is None:
        del attributes["deployment"]
    if "status" in attributes:
        attributes[STATUS] = attributes.pop("status")
    return frozenset(attributes.items())


class Otel:
    """A MeterProvider of the test's own with an in-memory reader, and the callback under test."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader])
        self.metrics = OpenTelemetryMetrics(self.provider)
        self.events: list[Event] = []
        self._lock = threading.Lock()

    def on_event(self, event: Event) -> None:
        """The documented pattern: the metrics, then a callback of one's own (here: a recorder)."""
        self.metrics(event)
        with self._lock:
            self.events.append(event)

    def read(self) -> Exported:
        return Exported(self.reader)

    @property
    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]


@pytest.fixture
def otel() -> Iterator[Otel]:
    o = Otel()
    yield o
    o.provider.shutdown()


def check_consistent(exported: Exported, events: list[Event]) -> None:
    """What holds after every test: the instruments agree with each other and with the events."""
    outcomes = [
        e for e in events if isinstance(e, ServedEvent | ThrottledEvent | FailedEvent | AbandonedEvent)
    ]
    assert exported.value(ATTEMPTS) == len(outcomes) == sum(isinstance(e, AttemptEvent) for e in events)
    assert exported.series(DURATION) == exported.series(ATTEMPTS)
    assert exported.total(DURATION) == pytest.approx(sum(e.elapsed_s for e in outcomes))
    assert all(v == 0 for v in exported.series(ACTIVE).values())
    assert exported.value(THROTTLES) == exported.value(ATTEMPTS, outcome="throttled")
    assert exported.value(FAILURES) == exported.value(ATTEMPTS, outcome="failed")
    local_set_asides = sum(isinstance(e, SetAsideEvent) and not e.shared for e in events)
    assert exported.count(COOLDOWN) == exported.value(THROTTLES) + exported.value(FAILURES) + local_set_asides
    assert exported.value(SET_ASIDES) == sum(isinstance(e, SetAsideEvent) for e in events)
    assert (
        exported.value(WAITS)
        == exported.count(WAIT_DURATION)
        == sum(isinstance(e, WaitedEvent) for e in events)
    )
    assert exported.value(EXHAUSTED) == sum(isinstance(e, ExhaustedEvent) for e in events)
    for name, metric in exported.metrics.items():
        unit, keys = INSTRUMENTS[name]
        assert metric.unit == unit
        assert metric.description
        for point in metric.data.data_points:
            assert set(point.attributes) <= keys


# ---------------------------------------------------------------------- each event, by hand


def test_each_event_lands_in_its_instruments(otel: Otel) -> None:
    m = otel.metrics
    bare = functools.partial(at, deployment=None)  # events made by hand name no deployment
    m(AttemptEvent(1.0, A, 1, False))
    assert otel.read().series(ACTIVE) == {bare(backend=A): 1}
    m(ServedEvent(1.0, A, 200, 0.5))
    m(AttemptEvent(1.0, A, 1, False))
    m(ServedEvent(1.0, A, 400, 0.25))
    m(AttemptEvent(1.0, A, 1, True))
    m(ThrottledEvent(1.0, A, 7.0, 0.125))
    m(AttemptEvent(1.0, B, 2, False))
    m(FailedEvent(1.0, B, "503", 1, 2.0, 0.0625))
    m(AttemptEvent(1.0, B, 2, False))
    m(FailedEvent(1.0, B, "ConnectError", 2, 4.0, 0.03125))
    m(AttemptEvent(1.0, C, 3, False))
    m(AbandonedEvent(1.0, C, 0.015625))
    m(RecoveredEvent(1.0, B, 2))
    m(SetAsideEvent(1.0, A, "exhausted", 3.0, False))
    m(SetAsideEvent(1.0, C, "throttled", 9.0, True))
    m(WaitedEvent(1.0, 1.5))
    m(ExhaustedEvent(1.0, 3.0, 2))
    m(OwnerDiscoveredEvent(1.0, C, "resp_1"))
    m(object())  # type: ignore[arg-type]  # not an event: ignored

    exported = otel.read()
    assert exported.series(ATTEMPTS) == {
        bare(backend=A, outcome="served", status=200): 1,
        bare(backend=A, outcome="served", status=400): 1,
        bare(backend=A, outcome="throttled", status=429): 1,
        bare(backend=B, outcome="failed", status=503): 1,
        bare(backend=B, outcome="failed"): 1,
        bare(backend=C, outcome="abandoned"): 1,
    }
    assert exported.series(DURATION) == exported.series(ATTEMPTS)
    assert exported.total(DURATION, backend=A) == 0.875
    assert exported.total(DURATION, backend=B, outcome="failed") == 0.09375
    assert exported.series(ACTIVE) == {bare(backend=A): 0, bare(backend=B): 0, bare(backend=C): 0}
    assert exported.series(THROTTLES) == {bare(backend=A): 1}
    assert exported.series(FAILURES) == {
        bare(backend=B, cause="503"): 1,
        bare(backend=B, cause="ConnectError"): 1,
    }
    assert exported.series(RECOVERIES) == {bare(backend=B): 1}
    assert exported.series(OWNERS_DISCOVERED) == {bare(backend=C): 1}
    assert exported.series(COOLDOWN) == {
        bare(backend=A, reason="throttled"): 1,
        bare(backend=A, reason="exhausted"): 1,  # C's was recorded by the balancer that saw it
        bare(backend=B, reason="failed"): 2,
    }
    assert exported.total(COOLDOWN, backend=B) == 6.0
    assert exported.total(COOLDOWN, backend=A, reason="exhausted") == 3.0
    assert exported.series(SET_ASIDES) == {
        bare(backend=A, reason="exhausted", shared=False): 1,
        bare(backend=C, reason="throttled", shared=True): 1,
    }
    assert exported.series(WAITS) == {at(): 1}
    assert exported.total(WAIT_DURATION) == 1.5
    assert exported.series(EXHAUSTED) == {at(): 1}
    assert set(exported.metrics) == set(INSTRUMENTS)
    [scope] = exported.scopes
    assert (scope.name, scope.version) == (METER_NAME, __version__)
    for name, metric in exported.metrics.items():
        unit, keys = INSTRUMENTS[name]
        assert metric.unit == unit, name
        assert all(set(p.attributes) <= keys for p in metric.data.data_points), name


def test_histograms_use_second_buckets(otel: Otel) -> None:
    otel.metrics(AttemptEvent(1.0, A, 1, False))
    otel.metrics(ServedEvent(1.0, A, 200, 0.3))
    [point] = otel.read().points(DURATION)
    assert point.explicit_bounds[0] == 0.01
    assert point.explicit_bounds[-1] > 60
    assert point.bucket_counts[list(point.explicit_bounds).index(0.32)] == 1  # (0.16, 0.32]


def test_meter_name_is_configurable(otel: Otel) -> None:
    metrics = OpenTelemetryMetrics(otel.provider, meter_name="my-app.balancer")
    metrics(ExhaustedEvent(1.0, 1.0, 0))
    assert [s.name for s in otel.read().scopes] == ["my-app.balancer"]
    assert repr(metrics) == "OpenTelemetryMetrics(meter_name='my-app.balancer')"


def test_without_opentelemetry_the_import_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(sys.modules):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    monkeypatch.delitem(sys.modules, "openai_priority_loadbalancer.otel")
    with pytest.raises(ImportError, match=r'pip install "openai-priority-loadbalancer\[otel\]"'):
        importlib.import_module("openai_priority_loadbalancer.otel")


# ---------------------------------------------------------------------- through a balancer


#: A request with no messages and the caller's key, which must never reach the metrics.
#: Through an async client, await what it returns.
post = functools.partial(_unit_support.post, json={"messages": []}, api_key=CALLER_KEY)


def taking(lib: Any, clock: Any, seconds: float, status: int = 200, headers: Any = None) -> Any:
    """A script entry answering ``status`` after ``seconds`` of the fake clock."""

    def answer(request: Any) -> Any:
        clock.advance(seconds)
        return lib.Response(status, headers=headers, json={"host": request.url.host})

    return answer


def test_a_failover_sequence(
    otel: Otel, make_lb: Callable[..., Any], router: Any, clock: Any, lib: Any
) -> None:
    lb = make_lb([Backend(A, 1), Backend(B, 2), Backend(C, 3)], on_event=otel.on_event)
    router.script(A, taking(lib, clock, 0.5, 429, {"retry-after": "5"}), lib.ConnectError("refused"))
    router.script(B, 503, 200, (429, {"retry-after": "30"}))
    router.script(C, 200, (429, {"retry-after": "30"}))
    with lib.Client(transport=lb) as client:
        # A throttled, B failing: C serves.
        assert post(client).status_code == 200
        clock.advance(6)
        # A refuses the connection; B answers again (it recovers).
        assert post(client).status_code == 200
        # A's breaker is open; B and C throttle: the balancer's own 429.
        response = post(client)
        assert response.status_code == 429
        assert response.extensions["openai_priority_loadbalancer"].backend is None

    assert otel.kinds == [
        *("attempt", "throttled", "attempt", "failed", "attempt", "served"),
        *("attempt", "failed", "attempt", "served", "recovered"),
        *("attempt", "throttled", "attempt", "throttled", "exhausted"),
    ]
    exported = otel.read()
    assert exported.series(ATTEMPTS) == {
        at(backend=A, outcome="throttled", status=429): 1,
        at(backend=A, outcome="failed"): 1,
        at(backend=B, outcome="failed", status=503): 1,
        at(backend=B, outcome="served", status=200): 1,
        at(backend=B, outcome="throttled", status=429): 1,
        at(backend=C, outcome="served", status=200): 1,
        at(backend=C, outcome="throttled", status=429): 1,
    }
    assert exported.total(DURATION, backend=A, outcome="throttled") == 0.5
    assert exported.series(THROTTLES) == {at(backend=A): 1, at(backend=B): 1, at(backend=C): 1}
    assert exported.series(FAILURES) == {
        at(backend=A, cause="ConnectError"): 1,
        at(backend=B, cause="503"): 1,
    }
    assert exported.series(RECOVERIES) == {at(backend=B): 1}
    assert exported.total(COOLDOWN, backend=A, reason="throttled") == 5.0
    assert exported.total(COOLDOWN, backend=B, reason="throttled") == 30.0
    assert exported.count(COOLDOWN, reason="failed") == 2
    assert exported.series(EXHAUSTED) == {at(): 1}
    assert WAITS not in exported.metrics
    assert exported.series(ACTIVE) == {at(backend=A): 0, at(backend=B): 0, at(backend=C): 0}
    check_consistent(exported, otel.events)
    # The counters tell what stats() tells.
    for s in lb.stats():
        assert s.requests == exported.value(ATTEMPTS, backend=s.backend)
        assert s.throttled == exported.value(THROTTLES, backend=s.backend)
        assert s.failures == exported.value(FAILURES, backend=s.backend)


def test_a_spent_budget_and_a_shared_set_aside_are_counted(
    otel: Otel, make_lb: Callable[..., Any], router: Any, clock: Any, lib: Any
) -> None:
    store = MemoryStateStore(clock=clock)
    backends = [Backend(A, 1), Backend(B, 2)]
    seen_here = make_lb(backends, state=store, on_event=otel.on_event)
    told = make_lb(backends, state=store, on_event=otel.on_event)
    router.script(A, (200, {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6s"}))
    with lib.Client(transport=seen_here) as one, lib.Client(transport=told) as two:
        assert post(one).json() == {"host": A}
        assert post(two).json() == {"host": B}
    assert otel.kinds == ["attempt", "served", "set_aside", "set_aside", "attempt", "served"]
    exported = otel.read()
    assert exported.series(SET_ASIDES) == {
        at(backend=A, reason="exhausted", shared=False): 1,
        at(backend=A, reason="exhausted", shared=True): 1,
    }
    assert exported.series(COOLDOWN) == {at(backend=A, reason="exhausted"): 1}  # once, where it was seen
    assert exported.total(COOLDOWN) == 6.0
    check_consistent(exported, otel.events)


def test_waiting_is_counted(
    otel: Otel, make_lb: Callable[..., Any], router: Any, fake_sleep: list[float], lib: Any
) -> None:
    lb = make_lb([Backend(A, 1)], on_event=otel.on_event, max_wait_s=10)
    router.script(A, (429, {"retry-after": "2"}))
    with lib.Client(transport=lb) as client:
        assert post(client).status_code == 200
    assert otel.kinds == ["attempt", "throttled", "waited", "attempt", "served"]
    exported = otel.read()
    assert exported.series(WAITS) == {at(): 1}
    assert exported.total(WAIT_DURATION) == pytest.approx(2.0)
    assert EXHAUSTED not in exported.metrics
    check_consistent(exported, otel.events)


def test_a_failing_token_provider_abandons_the_attempt(
    otel: Otel, make_lb: Callable[..., Any], lib: Any
) -> None:
    def provider() -> str:
        raise RuntimeError("no token")

    lb = make_lb([Backend(A, 1, azure_ad_token_provider=provider)], on_event=otel.on_event)
    with lib.Client(transport=lb) as client, pytest.raises(RuntimeError, match="no token"):
        post(client)
    exported = otel.read()
    assert exported.series(ATTEMPTS) == {at(backend=A, outcome="abandoned"): 1}
    assert exported.series(ACTIVE) == {at(backend=A): 0}
    assert FAILURES not in exported.metrics
    check_consistent(exported, otel.events)


def test_active_is_one_while_a_request_is_out(
    otel: Otel, make_lb: Callable[..., Any], router: Any, lib: Any
) -> None:
    entered, release = threading.Event(), threading.Event()
    router.script(A, held(lib, entered, release))
    lb = make_lb([Backend(A, 1), Backend(B, 2)], on_event=otel.on_event)
    with lib.Client(transport=lb) as client, ThreadPoolExecutor(1) as pool:
        future = pool.submit(post, client)
        assert entered.wait(WAIT)
        during = otel.read()
        release.set()
        assert future.result(WAIT).status_code == 200
    assert during.series(ACTIVE) == {at(backend=A): 1}
    assert ATTEMPTS not in during.metrics  # counted when it ends
    exported = otel.read()
    assert exported.series(ACTIVE) == {at(backend=A): 0}
    assert exported.series(ATTEMPTS) == {at(backend=A, outcome="served", status=200): 1}
    check_consistent(exported, otel.events)


async def test_active_is_one_while_a_request_is_out_async(
    otel: Otel, make_async_lb: Callable[..., Any], router: Any, lib: Any
) -> None:
    entered, release = asyncio.Event(), asyncio.Event()

    async def held(request: Any) -> Any:
        entered.set()
        await release.wait()
        return lib.Response(200)

    router.script(A, held, held)
    lb = make_async_lb([Backend(A, 1), Backend(B, 2)], on_event=otel.on_event)
    async with lib.AsyncClient(transport=lb) as client:
        task = asyncio.create_task(post(client))
        await asyncio.wait_for(entered.wait(), WAIT)
        assert otel.read().series(ACTIVE) == {at(backend=A): 1}
        release.set()
        assert (await asyncio.wait_for(task, WAIT)).status_code == 200
        assert otel.read().series(ACTIVE) == {at(backend=A): 0}

        # A cancelled request: its attempt is abandoned, and no longer active.
        entered.clear()
        release.clear()
        task = asyncio.create_task(post(client))
        await asyncio.wait_for(entered.wait(), WAIT)
        assert otel.read().series(ACTIVE) == {at(backend=A): 1}
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    exported = otel.read()
    assert exported.series(ACTIVE) == {at(backend=A): 0}
    assert exported.series(ATTEMPTS) == {
        at(backend=A, outcome="served", status=200): 1,
        at(backend=A, outcome="abandoned"): 1,
    }
    check_consistent(exported, otel.events)


def test_no_secret_reaches_the_metrics(
    otel: Otel, make_lb: Callable[..., Any], router: Any, clock: Any, lib: Any
) -> None:
    backends = [
        Backend(A, 1, api_key=SECRET, deployments={"gpt-4o": "gpt-4o-secret-deployment"}),
        Backend(f"https://{B}:8443/gateway", 2, api_key=SECRET),
        Backend(C, 3, azure_ad_token_provider=lambda: SECRET),
    ]
    lb = make_lb(backends, on_event=otel.on_event)
    router.script(A, (429, {"retry-after": "1", "x-debug": SECRET}), lib.ConnectError(f"refused {SECRET}"))
    router.script(B, lib.ConnectError(f"refused {SECRET}"))
    router.script(C, (500, {"x-debug": SECRET}), 200)
    with lib.Client(transport=lb) as client:
        post(client)
        clock.advance(5)
        post(client)
        clock.advance(5)
        post(client)
    # The backends did get the key; the metrics never do.
    assert any(r.headers.get("api-key") == SECRET for r in router.requests)
    exported = otel.read()
    assert exported.value(ATTEMPTS) == len(router.requests)
    check_consistent(exported, otel.events)
    ids = {b.id for b in backends}
    assert ids == {A, f"https://{B}:8443/gateway", C}
    for name in exported.metrics:
        for point in exported.points(name):
            assert point.attributes.get("backend", A) in ids
    dumped = exported.json + json.dumps([repr(e) for e in otel.events]) + repr(otel.metrics)
    # The deployment is an attribute as the caller names it: never the name a backend knows it by.
    for secret in (SECRET, CALLER_KEY, "refused", "gpt-4o-secret", "chat/completions", "api-version"):
        assert secret not in dumped


# ---------------------------------------------------------------------- concurrency

THREADS = 8
REQUESTS = 400


class Throttling:
    """Each backend answers 429 (retry-after-ms 5) to every 10th request, 500 to every 7th, and refuses
    the connection of every 13th; 200 otherwise."""

    def __init__(self, lib: Any) -> None:
        self.lib = lib
        self.lock = threading.Lock()
        self.counters = {host: itertools.count(1) for host in HOSTS}
        self.seen: Counter[tuple[str, str]] = Counter()  # (host, outcome) -> count

    def __call__(self, request: Any) -> Any:
        host = request.url.host
        with self.lock:
            n = next(self.counters[host])
            outcome = "429" if n % 10 == 0 else "500" if n % 7 == 0 else "refused" if n % 13 == 0 else "200"
            self.seen[host, outcome] += 1
        if outcome == "refused":
            raise self.lib.ConnectError("refused")
        headers = {"retry-after-ms": "5"} if outcome == "429" else None
        return self.lib.Response(int(outcome), headers=headers, json={"host": host})

    def count(self, host: str | None = None, outcome: str | None = None) -> int:
        return sum(n for (h, o), n in self.seen.items() if host in (None, h) and outcome in (None, o))


def check_against_backends(exported: Exported, backend: Throttling, statuses: Counter[int], lb: Any) -> None:
    for host in HOSTS:
        assert exported.value(ATTEMPTS, backend=host) == backend.count(host)
        assert exported.value(ATTEMPTS, backend=host, outcome="served") == backend.count(host, "200")
        assert exported.value(THROTTLES, backend=host) == backend.count(host, "429")
        assert exported.value(FAILURES, backend=host, cause="500") == backend.count(host, "500")
        assert exported.value(FAILURES, backend=host, cause="ConnectError") == backend.count(host, "refused")
    assert exported.value(ATTEMPTS, outcome="abandoned") == 0
    assert exported.series(ACTIVE) == {at(backend=host): 0 for host in HOSTS}
    assert exported.value(ATTEMPTS, outcome="served") == statuses[200]
    assert exported.value(EXHAUSTED) == statuses[429]
    assert sum(statuses.values()) == REQUESTS
    for s in lb.stats():
        assert s.requests == exported.value(ATTEMPTS, backend=s.backend)
        assert s.successes == exported.value(ATTEMPTS, backend=s.backend, outcome="served")
        assert s.failures == exported.value(FAILURES, backend=s.backend)


@pytest.mark.parametrize("max_wait_s", [0, 30], ids=["no-wait", "wait"])
def test_counts_add_up_under_threads(otel: Otel, real_sleep: None, lib: Any, max_wait_s: float) -> None:
    backend = Throttling(lib)
    lb = LoadBalancer(
        [Backend(host, 1) for host in HOSTS],
        transport=lib.MockTransport(backend),
        failure_backoff_s=0.005,
        failure_backoff_max_s=0.02,
        max_wait_s=max_wait_s,
        on_event=otel.on_event,
    )
    barrier = threading.Barrier(THREADS)

    def worker(_: int) -> list[Any]:
        barrier.wait()
        return [post(client) for _ in range(REQUESTS // THREADS)]

    with lib.Client(transport=lb) as client, ThreadPoolExecutor(THREADS) as pool:
        responses = [r for chunk in pool.map(worker, range(THREADS)) for r in chunk]
    exported = otel.read()
    check_against_backends(exported, backend, Counter(r.status_code for r in responses), lb)
    check_consistent(exported, otel.events)


async def test_counts_add_up_under_tasks(otel: Otel, real_sleep: None, lib: Any) -> None:
    backend = Throttling(lib)

    async def answer(request: Any) -> Any:
        await asyncio.sleep(0)  # let the other tasks in while this one is "on the wire"
        return backend(request)

    lb = AsyncLoadBalancer(
        [Backend(host, 1) for host in HOSTS],
        transport=lib.MockTransport(answer),
        failure_backoff_s=0.005,
        failure_backoff_max_s=0.02,
        on_event=otel.on_event,
    )
    semaphore = asyncio.Semaphore(32)
    active: list[float] = []

    async def one(i: int, client: Any) -> Any:
        async with semaphore:
            response = await post(client)
        if i % 40 == 0:  # while other tasks are out
            active.append(sum(p.value for p in otel.read().points(ACTIVE)))
        return response

    async with lib.AsyncClient(transport=lb) as client:
        responses = await asyncio.wait_for(asyncio.gather(*(one(i, client) for i in range(REQUESTS))), WAIT)
    exported = otel.read()
    check_against_backends(exported, backend, Counter(r.status_code for r in responses), lb)
    check_consistent(exported, otel.events)
    assert max(active) > 1
