"""``stats()``, per-request attribution (the response extension and the opt-in header), and secrets.

The counters must add up: under threads and under asyncio tasks, the attempts the backends saw, the
responses the callers got, the events and the totals all tell the same story. Nothing the balancer
reports (stats, tables, events, reprs, logs, shared records) may contain a key or a token.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pytest
from _unit_support import CALLER_URL, HOSTS, OUTCOMES, WAIT, A, B, C, MakeLb, held, post

from openai_priority_loadbalancer import (
    EXTENSION,
    Attempt,
    Backend,
    Event,
    LoadBalancer,
    MemoryStateStore,
    Routing,
    Stats,
    Totals,
    shared_key,
)

if TYPE_CHECKING:
    from collections.abc import Callable


def routing(response: Any) -> Routing:
    """The response's routing record, checked to be a ``Routing`` of ``Attempt`` records."""
    value = response.extensions[EXTENSION]
    assert isinstance(value, Routing)
    assert isinstance(value.attempts, tuple)
    assert all(isinstance(a, Attempt) for a in value.attempts)
    return value


def trail(response: Any) -> list[tuple[str, int | None, str | None]]:
    return [(a.backend, a.status, a.error) for a in routing(response).attempts]


def assert_paired_per_actor(events: list[tuple[Any, Event]]) -> None:
    """For each thread (or task), every attempt is followed by exactly one outcome for its backend."""
    pending: dict[Any, str | None] = {}
    for actor, event in events:
        if event.kind == "attempt":
            assert pending.get(actor) is None
            pending[actor] = event.backend
        elif event.kind in OUTCOMES:
            assert pending.get(actor) == event.backend
            pending[actor] = None
        else:
            assert pending.get(actor) is None
    assert all(p is None for p in pending.values())


# ---------------------------------------------------------------------- the snapshot


def test_stats_in_configuration_order(make_lb: MakeLb) -> None:
    lb = make_lb([Backend(C, 3), Backend(A, 1), Backend("http://127.0.0.1:8081/prefix", 2, weight=2)])
    stats = lb.stats()
    assert isinstance(stats, Stats)
    assert isinstance(stats, tuple)
    assert [(s.backend, s.priority) for s in stats] == [(C, 3), (A, 1), ("http://127.0.0.1:8081/prefix", 2)]
    for s in stats:
        assert (s.requests, s.successes, s.throttled, s.failures, s.in_flight) == (0, 0, 0, 0, 0)
        assert (s.cooling_down_for_s, s.breaker) == (0, "closed")
        assert (s.latency_p50_ms, s.latency_p95_ms) == (None, None)
        assert (s.remaining_requests, s.remaining_tokens) == (None, None)


def test_stats_count_each_outcome(make_lb: MakeLb, router: Any, lib: Any, clock: Any) -> None:
    router.script(A, (429, {"retry-after": "5"})).script(B, 500).script(C, 200, 404, lib.ConnectError("x"))
    lb = make_lb([Backend(A, 1), Backend(B, 2), Backend(C, 3)], failure_backoff_s=1)
    with lib.Client(transport=lb) as client:
        assert post(client).json() == {"host": C}  # A 429, B 500, C 200
        assert post(client).status_code == 404  # only C is left; a 4xx is returned
        assert post(client).status_code == 429  # C refuses: nobody is left
    a, b, c = lb.stats()
    assert (a.requests, a.successes, a.throttled, a.failures, a.in_flight) == (1, 0, 1, 0, 0)
    assert (b.requests, b.successes, b.throttled, b.failures, b.in_flight) == (1, 0, 0, 1, 0)
    assert (c.requests, c.successes, c.throttled, c.failures, c.in_flight) == (3, 1, 0, 1, 0)
    assert [(s.cooling_down_for_s, s.breaker) for s in (a, b, c)] == [(5, "closed"), (1, "open"), (1, "open")]
    assert lb.stats().total == Totals(
        requests=5, successes=1, throttled=1, failures=2, in_flight=0, available=0, backends=3, rejected=1
    )
    clock.advance(1)
    a, b, c = lb.stats()
    assert [(s.cooling_down_for_s, s.breaker) for s in (a, b, c)] == [
        (4, "closed"),
        (0, "half-open"),
        (0, "half-open"),
    ]
    assert lb.stats().total.available == 2


def test_stats_remaining_from_headers(make_lb: MakeLb, router: Any, lib: Any) -> None:
    headers = {"x-ratelimit-remaining-requests": "41", "x-ratelimit-remaining-tokens": "9000"}
    router.script(A, (200, headers), (200, {"x-ratelimit-remaining-requests": "40"}))
    lb = make_lb([Backend(A, 1)])
    with lib.Client(transport=lb) as client:
        post(client)
        assert (lb.stats()[0].remaining_requests, lb.stats()[0].remaining_tokens) == (41, 9000)
        post(client)
        assert (lb.stats()[0].remaining_requests, lb.stats()[0].remaining_tokens) == (40, None)
        post(client)  # says nothing of its budget: nothing is believed
        assert (lb.stats()[0].remaining_requests, lb.stats()[0].remaining_tokens) == (None, None)


def test_latency_percentiles(make_lb: MakeLb, router: Any, lib: Any, clock: Any) -> None:
    def taking(seconds: float) -> Callable[[Any], Any]:
        def answer(request: Any) -> Any:
            clock.advance(seconds)
            return lib.Response(200)

        return answer

    # 20 answers taking 10, 20, ..., 200 ms, shuffled: nearest-rank p50 is 100 ms, p95 190 ms.
    durations = [(i * 7 % 20 + 1) * 0.01 for i in range(20)]
    assert sorted(durations) == [pytest.approx((i + 1) * 0.01) for i in range(20)]
    router.script(A, *map(taking, durations))
    lb = make_lb([Backend(A, 1)])
    with lib.Client(transport=lb) as client:
        for _ in durations:
            post(client)
    (a,) = lb.stats()
    assert a.latency_p50_ms == pytest.approx(100)
    assert a.latency_p95_ms == pytest.approx(190)


def test_latency_is_over_the_recent_window(make_lb: MakeLb, router: Any, lib: Any, clock: Any) -> None:
    def taking(seconds: float) -> Callable[[Any], Any]:
        def answer(request: Any) -> Any:
            clock.advance(seconds)
            return lib.Response(200)

        return answer

    router.script(A, *[taking(5.0)] * 10, *[taking(0.002)] * 64)
    lb = make_lb([Backend(A, 1)])
    with lib.Client(transport=lb) as client:
        for _ in range(10):
            post(client)
        assert lb.stats()[0].latency_p50_ms == pytest.approx(5000)
        for _ in range(64):
            post(client)
    assert lb.stats()[0].latency_p95_ms == pytest.approx(2)  # the slow answers have left the window
    assert lb.stats()[0].latency_p50_ms == pytest.approx(2)


def test_stats_is_an_immutable_snapshot(make_lb: MakeLb, lib: Any) -> None:
    lb = make_lb([Backend(A, 1)])
    with lib.Client(transport=lb) as client:
        post(client)
        before = lb.stats()
        post(client)
    assert before[0].requests == 1
    assert lb.stats()[0].requests == 2
    assert before.total.requests == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        before[0].requests = 7  # type: ignore[misc]
    with pytest.raises(TypeError):
        before[0] = before[0]  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        before.total.requests = 7  # type: ignore[misc]


def test_total_is_the_sum_over_backends(make_lb: MakeLb, router: Any, lib: Any) -> None:
    router.script(A, (429, {"retry-after": "9"}), 500).script(B, 503)
    lb = make_lb([Backend(A, 1), Backend(B, 1), Backend(C, 2)], failure_backoff_s=1)
    with lib.Client(transport=lb) as client:
        for _ in range(6):
            post(client)
    stats = lb.stats()
    total = stats.total
    for field in ("requests", "successes", "throttled", "failures", "in_flight"):
        assert getattr(total, field) == sum(getattr(s, field) for s in stats), field
    assert total.backends == 3
    assert total.available == sum(1 for s in stats if s.cooling_down_for_s == 0)
    assert total.throttled == 1
    assert total.failures == 1  # B's 503; A's 500 is still queued (A is cooling)
    assert total.successes == 6  # C served every request


def test_in_flight_counts_requests_on_the_wire(make_lb: MakeLb, router: Any, lib: Any) -> None:
    entered, release = threading.Event(), threading.Event()
    router.script(A, held(lib, entered, release))
    lb = make_lb([Backend(A, 1), Backend(B, 2)])
    with lib.Client(transport=lb) as client, ThreadPoolExecutor(1) as pool:
        future = pool.submit(post, client)
        assert entered.wait(WAIT)
        assert [s.in_flight for s in lb.stats()] == [1, 0]
        assert lb.stats().total.in_flight == 1
        release.set()
        assert future.result(WAIT).status_code == 200
    assert lb.stats().total.in_flight == 0


@pytest.mark.parametrize(
    "answer",
    [
        # A success that spends the window: set aside until its reset.
        (
            200,
            {
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-limit-requests": "4",
                "x-ratelimit-reset-requests": "2s",
            },
        ),
        # A 429 that names the limit: set aside until its Retry-After.
        (429, {"retry-after": "2", "x-ratelimit-limit-requests": "4"}),
    ],
)
def test_a_backend_cooling_down_has_no_requests_left_until_its_window_resets(
    make_lb: MakeLb, router: Any, lib: Any, clock: Any, answer: tuple[int, dict[str, str]]
) -> None:
    """While set aside it reports 0, not the budget of the window that starts when the cooldown ends."""
    router.script(A, answer).always(B, 200)
    lb = make_lb([Backend(A, 1), Backend(B, 2)])
    with lib.Client(transport=lb) as client:
        post(client)
    a = lb.stats()[0]
    assert a.cooling_down_for_s > 0
    assert a.remaining_requests == 0
    assert str(lb.stats()).splitlines()[2].split()[-2] == "0"
    clock.advance(a.cooling_down_for_s)
    a = lb.stats()[0]
    assert (a.cooling_down_for_s, a.remaining_requests) == (0, 4)  # the new window, as its limit says


# ---------------------------------------------------------------------- the table


def test_str_is_a_table_with_every_backend_and_a_total(make_lb: MakeLb, router: Any, lib: Any) -> None:
    router.script(A, (429, {"retry-after": "5"})).always(B, (200, {"x-ratelimit-remaining-requests": "17"}))
    backends = [Backend(A, 1), Backend(B, 1), Backend("http://127.0.0.1:8081/prefix", 2)]
    lb = make_lb(backends, failure_backoff_s=1)
    with lib.Client(transport=lb) as client:
        while A not in router.hosts:
            post(client)
    stats = lb.stats()
    lines = str(stats).splitlines()
    assert len(lines) == 1 + 1 + 3 + 1 + 1  # header, rule, one row per backend, rule, total
    header, rule, *rows, rule2, total = lines
    for label in ("backend", "prio", "requests", "ok", "429", "failed", "rejected", "in flight", "cooling s"):
        assert label in header
    for label in ("p50 ms", "p95 ms", "remaining req", "remaining tok"):
        assert label in header
    assert set(rule) == set(rule2) == {"-"}
    assert [row.split()[0] for row in rows] == [b.id for b in backends]
    a_row, b_row, prefix_row = (row.split() for row in rows)
    assert "breaker" in header
    assert a_row[:10] == [A, "1", "1", "0", "1", "0", "0", "0", "5.0", "closed"]
    assert b_row[:10] == [
        B,
        "1",
        str(stats[1].requests),
        str(stats[1].requests),
        "0",
        "0",
        "0",
        "0",
        "-",
        "closed",
    ]
    assert b_row[-2:] == ["17", "-"]
    assert (
        prefix_row
        == ["http://127.0.0.1:8081/prefix", "2", "0", "0", "0", "0", "0", "0", "-", "closed"] + ["-"] * 4
    )
    t = stats.total
    assert total.startswith("total (2/3 available)")
    assert total.split()[3:] == [str(t.requests), str(t.successes), "1", "0", "0", "0"]
    # Numbers are right-aligned under their heading.
    end = header.index("requests") + len("requests")
    for row, s in zip(rows, stats, strict=True):
        assert row[:end].endswith(f" {s.requests}")
    assert total[:end].endswith(f" {t.requests}")


def test_repr_names_the_class(make_lb: MakeLb) -> None:
    stats = make_lb([Backend(A, 1)]).stats()
    assert repr(stats).startswith("Stats((BackendStats(backend='a.example', priority=1,")
    assert stats == (stats[0],)


# ---------------------------------------------------------------------- counts add up under concurrency


class Outcomes:
    """Each host answers by its own count: every 9th a 429, every 7th a 500, every 11th a refused
    connection, else 200. Counts what it answered.

    Budgets are reported ample (and a 429 names its limit), so that the balancer sends side by side
    instead of probing one request at a time.
    """

    def __init__(self, lib: Any) -> None:
        self.lib = lib
        self.lock = threading.Lock()
        self.per_host: Counter[str] = Counter()
        self.seen: Counter[str] = Counter()

    def decide(self, request: Any) -> str:
        host = request.url.host
        with self.lock:
            self.per_host[host] += 1
            n = self.per_host[host]
            outcome = "429" if n % 9 == 0 else "500" if n % 7 == 0 else "refused" if n % 11 == 0 else "200"
            self.seen[outcome] += 1
            self.seen["attempts"] += 1
        return outcome

    def respond(self, outcome: str, request: Any) -> Any:
        if outcome == "429":
            return self.lib.Response(
                429, headers={"retry-after-ms": "1", "x-ratelimit-limit-requests": "1000"}
            )
        if outcome == "500":
            return self.lib.Response(500)
        if outcome == "refused":
            raise self.lib.ConnectError("refused")
        return self.lib.Response(
            200, headers={"x-ratelimit-remaining-requests": "1000"}, json={"host": request.url.host}
        )

    def __call__(self, request: Any) -> Any:
        return self.respond(self.decide(request), request)


def check_counts(lb: Any, backend: Outcomes, responses: list[Any], events: list[tuple[Any, Event]]) -> None:
    stats = lb.stats()
    total = stats.total
    kinds = Counter(event.kind for _, event in events)
    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {200, 429}
    # What the backends saw, what the stats say, what the events say.
    assert sum(s.requests for s in stats) == total.requests == backend.seen["attempts"] == kinds["attempt"]
    assert sum(s.successes for s in stats) == total.successes == statuses[200] == kinds["served"]
    assert sum(s.throttled for s in stats) == total.throttled == backend.seen["429"] == kinds["throttled"]
    failures = backend.seen["500"] + backend.seen["refused"]
    assert sum(s.failures for s in stats) == total.failures == failures == kinds["failed"]
    assert [s.requests for s in stats] == [backend.per_host[h] for h in HOSTS]
    assert total.in_flight == 0
    assert [s.in_flight for s in stats] == [0, 0, 0]
    assert kinds["abandoned"] == 0
    # Every attempt belongs to exactly one caller's response.
    assert sum(len(routing(r).attempts) for r in responses) == total.requests
    synthesized = [r for r in responses if routing(r).backend is None]
    assert len(synthesized) == statuses[429] == kinds["exhausted"]
    for r in responses:
        if r.status_code == 200:
            assert routing(r).backend == r.json()["host"] == routing(r).attempts[-1].backend
    assert_paired_per_actor(events)


def test_counts_add_up_under_threads(make_lb: MakeLb, router: Any, lib: Any, real_sleep: None) -> None:
    backend = Outcomes(lib)
    for host in HOSTS:
        router.always(host, backend)
    events: list[tuple[Any, Event]] = []
    lb = make_lb(
        [Backend(A, 1), Backend(B, 1), Backend(C, 2)],
        clock=time.monotonic,
        wall_clock=time.time,
        failure_backoff_s=0.001,
        failure_backoff_max_s=0.002,
        on_event=lambda e: events.append((threading.get_ident(), e)),
    )
    threads = 8
    barrier = threading.Barrier(threads)

    def worker(_: int) -> list[Any]:
        barrier.wait(WAIT)
        return [post(client) for _ in range(40)]

    with lib.Client(transport=lb) as client, ThreadPoolExecutor(threads) as pool:
        responses = [r for chunk in pool.map(worker, range(threads)) for r in chunk]
    assert len(responses) == threads * 40
    assert any(len(routing(r).attempts) > 1 for r in responses)  # some failed over
    check_counts(lb, backend, responses, events)


async def test_counts_add_up_under_tasks(make_async_lb: MakeLb, router: Any, lib: Any) -> None:
    backend = Outcomes(lib)

    async def answer(request: Any) -> Any:
        outcome = backend.decide(request)
        await asyncio.sleep(0)  # on the wire: let the other tasks in
        return backend.respond(outcome, request)

    async def yield_instead_of_sleeping(seconds: float) -> None:
        await asyncio.sleep(0)

    for host in HOSTS:
        router.always(host, answer)
    events: list[tuple[Any, Event]] = []
    lb = make_async_lb(
        [Backend(A, 1), Backend(B, 1), Backend(C, 2)],
        clock=time.monotonic,
        wall_clock=time.time,
        failure_backoff_s=0.001,
        failure_backoff_max_s=0.002,
        max_wait_s=2,  # callers wait for capacity (looking again at every turn of the loop)
        sleep=yield_instead_of_sleeping,
        on_event=lambda e: events.append((asyncio.current_task(), e)),
    )
    semaphore = asyncio.Semaphore(12)

    async def one(client: Any) -> Any:
        async with semaphore:
            return await post(client)

    async with lib.AsyncClient(transport=lb) as client:
        responses = await asyncio.wait_for(asyncio.gather(*(one(client) for _ in range(300))), WAIT)
    assert any(len(routing(r).attempts) > 1 for r in responses)
    check_counts(lb, backend, responses, events)


# ---------------------------------------------------------------------- the response extension


def test_extension_on_every_response_path(make_lb: MakeLb, router: Any, lib: Any, clock: Any) -> None:
    router.script(A, 200, 400, (429, {"retry-after": "3"}))
    router.script(B, 500, 503)
    router.script(C, 200, lib.ConnectError("refused"))
    lb = make_lb([Backend(A, 1), Backend(B, 2), Backend(C, 3)], failure_backoff_s=1)
    with lib.Client(transport=lb) as client:
        ok = post(client)
        assert routing(ok) == Routing(A, (Attempt(A, 200, None, 0.0),))
        bad = post(client)
        assert bad.status_code == 400
        assert routing(bad) == Routing(A, (Attempt(A, 400, None, 0.0),))
        failed_over = post(client)
        assert failed_over.json() == {"host": C}
        assert routing(failed_over).backend == C
        assert trail(failed_over) == [(A, 429, None), (B, 500, None), (C, 200, None)]
        clock.advance(1)  # B is half-open again; A still cools
        synthesized = post(client)
        assert synthesized.status_code == 429
        assert routing(synthesized).backend is None
        assert trail(synthesized) == [(B, 503, None), (C, None, "ConnectError")]
        clock.advance(5)
        with client.stream("POST", CALLER_URL, json={}) as streamed:
            assert routing(streamed).backend == A
            assert trail(streamed) == [(A, 200, None)]


def test_extension_on_a_429_when_nothing_could_be_tried(make_lb: MakeLb, router: Any, lib: Any) -> None:
    router.script(A, (429, {"retry-after": "30"}))
    lb = make_lb([Backend(A, 1)])
    with lib.Client(transport=lb) as client:
        post(client)
        response = post(client)  # A is cooling: not even tried
    assert response.status_code == 429
    assert routing(response) == Routing(None, ())


async def test_extension_on_every_response_path_async(make_async_lb: MakeLb, router: Any, lib: Any) -> None:
    router.script(A, 200, 404, (429, {"retry-after": "3"}))
    router.script(B, lib.ConnectError("refused"))
    lb = make_async_lb([Backend(A, 1), Backend(B, 2)], failure_backoff_s=1)
    async with lib.AsyncClient(transport=lb) as client:
        ok = await post(client)
        assert trail(ok) == [(A, 200, None)]
        assert routing(ok).backend == A
        bad = await post(client)
        assert (bad.status_code, routing(bad).backend) == (404, A)
        synthesized = await post(client)
        assert synthesized.status_code == 429
        assert routing(synthesized).backend is None
        assert trail(synthesized) == [(A, 429, None), (B, None, "ConnectError")]


# ---------------------------------------------------------------------- the opt-in header


def test_backend_header_is_off_by_default(make_lb: MakeLb, router: Any, lib: Any) -> None:
    with lib.Client(transport=make_lb([Backend(A, 1)])) as client:
        response = post(client)
    plain = lib.Response(200, json={"host": A})
    assert set(response.headers.keys()) == set(plain.headers.keys())
    assert all(A not in value for value in response.headers.values())


def test_backend_header_names_the_serving_backend(make_lb: MakeLb, router: Any, lib: Any) -> None:
    url_backend = "http://127.0.0.1:8081/prefix"
    router.script(A, (200, {"X-Served-By": "upstream-said-so"}), (429, {"retry-after": "1"}))
    router.script("127.0.0.1", 200)
    lb = make_lb([Backend(A, 1), Backend(url_backend, 2)], backend_header="x-served-by")
    with lib.Client(transport=lb) as client:
        first = post(client)
        assert first.headers.get_list("x-served-by") == [A]  # the backend's own value is replaced
        second = post(client)  # A throttles: the other one serves
        assert second.headers.get_list("x-served-by") == [url_backend]
        assert routing(second).backend == url_backend


def test_backend_header_on_a_returned_4xx_and_not_on_the_balancers_429(
    make_lb: MakeLb, router: Any, lib: Any
) -> None:
    router.script(A, 400, (429, {"retry-after": "1"}))
    lb = make_lb([Backend(A, 1)], backend_header="X-Backend")
    with lib.Client(transport=lb) as client:
        assert post(client).headers["x-backend"] == A
        synthesized = post(client)
    assert synthesized.status_code == 429
    assert synthesized.headers.get("x-backend") in (None, "")


async def test_backend_header_async(make_async_lb: MakeLb, router: Any, lib: Any) -> None:
    router.script(A, 503)
    lb = make_async_lb([Backend(A, 1), Backend(B, 2)], backend_header="x-served-by")
    async with lib.AsyncClient(transport=lb) as client:
        response = await post(client)
    assert response.headers["x-served-by"] == B


@pytest.mark.parametrize("name", ["", "x served by", "x-served-by:", "x-served-by\r\n", "x-séRVED", "(x)"])
def test_backend_header_must_be_a_header_name(name: str) -> None:
    with pytest.raises(ValueError, match="backend_header"):
        LoadBalancer([Backend(A, 1)], backend_header=name)


@pytest.mark.parametrize("name", [123, b"x-served-by"])
def test_backend_header_must_be_a_str(name: Any) -> None:
    with pytest.raises((TypeError, ValueError), match="backend_header"):
        LoadBalancer([Backend(A, 1)], backend_header=name)


# ---------------------------------------------------------------------- no secrets anywhere


def test_no_key_or_token_in_anything_reported(
    make_lb: MakeLb,
    router: Any,
    lib: Any,
    clock: Any,
    fake_sleep: list[float],
    caplog: pytest.LogCaptureFixture,
) -> None:
    key, token = "sk-Zq7DISTINCTIVEkey93x", "eyJ0DISTINCTIVEtoken41w"
    backends = [
        Backend(A, 1, "/ai", key, deployments={"gpt-4o": "gpt-4o-east"}),
        Backend(B, 1, azure_ad_token_provider=lambda: token),
        Backend(C, 2, api_key=key),
    ]
    router.script(A, (429, {"retry-after": "60"}), (200, {"x-ratelimit-remaining-requests": "3"}))
    router.script(B, (503, {"retry-after": "60"}))
    router.script(C, *[lib.ConnectError("refused")] * 3, lib.ReadTimeout("slow"))
    store = MemoryStateStore(clock=clock)
    events: list[Event] = []
    lb = make_lb(backends, on_event=events.append, state=store, backend_header="x-served-by", max_wait_s=5)
    texts: list[str] = []
    with caplog.at_level(logging.DEBUG), lib.Client(transport=lb) as client:
        exhausted = post(client)  # A 429, B 503, C refuses three times between two waits
        texts += [exhausted.text, str(exhausted.headers), repr(routing(exhausted))]
        texts += [repr(store), repr(store.load([shared_key(b) for b in backends]))]
        clock.advance(60)
        router.requests.clear()
        while not {A, B} <= set(router.hosts):  # both recover (A reports a budget)
            ok = post(client)
            texts += [ok.text, str(ok.headers), repr(routing(ok))]
        clock.advance(60)
        router.script(A, (429, {"retry-after": "60"})).script(B, (429, {"retry-after": "60"}))
        with pytest.raises(lib.ReadTimeout) as raised:  # only C is left, and it goes silent
            post(client)
        texts += [str(raised.value), repr(raised.value)]
    assert exhausted.status_code == 429
    assert fake_sleep  # the waiting path ran
    assert {e.kind for e in events} >= {"attempt", "throttled", "failed", "waited", "exhausted", "served"}
    formatter = logging.Formatter()
    texts += [formatter.format(r) for r in caplog.records]
    texts += [repr(r.args) for r in caplog.records]
    texts += [repr(e) for e in events] + [str(e) for e in events]
    texts += [repr(lb), str(lb), str(lb.stats()), repr(lb.stats()), repr(lb.stats().total)]
    texts += [repr(b) for b in backends] + [str(b) for b in backends] + [shared_key(b) for b in backends]
    texts += [repr(store), repr(store.load([shared_key(b) for b in backends]))]
    leaks = [t for t in texts if key in t or token in t]
    assert leaks == []
    assert len(caplog.records) > 5
    # The test exercised the credentials: they did reach their backends.
    sent = router.requests
    assert any(r.headers.get("api-key") == key for r in sent)
    assert any(r.headers.get("authorization") == f"Bearer {token}" for r in sent)
