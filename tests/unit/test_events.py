"""``on_event``: the typed events, their order, the sleep hook, and how budget beliefs age.

Every attempt is one ``attempt`` event followed by exactly one outcome (``served``, ``throttled``,
``failed`` or ``abandoned``) for the same backend; ``recovered``, ``waited`` and ``exhausted`` come
around them. A callback that raises is logged at WARNING and ignored. Time is a fake clock moved by
hand; waiting goes through the ``sleep=`` hook or the ``fake_sleep`` fixture, never a real sleep.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from typing import TYPE_CHECKING, Any

import pytest
from _unit_support import LOGGER, OUTCOMES, WAIT, WALL_NOW, A, B, C, MakeLb, post, routing, stats_by_id

from openai_priority_loadbalancer import (
    AsyncLoadBalancer,
    AttemptEvent,
    Backend,
    Event,
    ExhaustedEvent,
    FailedEvent,
    LoadBalancer,
    RecoveredEvent,
    ServedEvent,
    SetAsideEvent,
    ThrottledEvent,
    WaitedEvent,
)

if TYPE_CHECKING:
    from collections.abc import Callable


class Recorder:
    """An ``on_event`` callback that keeps every event, in order."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def trace(self) -> list[tuple[str, str | None]]:
        return [(e.kind, e.backend) for e in self.events]

    def of(self, kind: str) -> list[Any]:
        return [e for e in self.events if e.kind == kind]

    def clear(self) -> None:
        self.events.clear()


def assert_paired(events: list[Event]) -> None:
    """Each attempt is followed by exactly one outcome for its backend, before anything else happens."""
    pending: str | None = None
    for event in events:
        if event.kind == "attempt":
            assert pending is None, f"attempt on {event.backend} while {pending} had no outcome"
            pending = event.backend
        elif event.kind in OUTCOMES:
            assert pending == event.backend, f"{event.kind} on {event.backend} without its attempt"
            pending = None
        else:
            assert pending is None, f"{event.kind} between an attempt on {pending} and its outcome"
    assert pending is None


async def until(condition: Callable[[], bool]) -> None:
    """Let other tasks run until ``condition`` holds."""
    for _ in range(10_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


# ---------------------------------------------------------------------- order of events


def test_failover_on_429_event_order(make_lb: MakeLb, router: Any, lib: Any) -> None:
    router.script(A, (429, {"retry-after": "7"}))
    rec = Recorder()
    with lib.Client(transport=make_lb([Backend(A, 1), Backend(B, 2)], on_event=rec)) as client:
        response = post(client)
    assert response.json() == {"host": B}
    assert rec.trace() == [("attempt", A), ("throttled", A), ("attempt", B), ("served", B)]
    attempt_a, throttled, attempt_b, served = rec.events
    assert isinstance(attempt_a, AttemptEvent)
    assert attempt_a.priority == 1
    assert isinstance(throttled, ThrottledEvent)
    assert throttled.cooldown_s == 7
    assert isinstance(attempt_b, AttemptEvent)
    assert attempt_b.priority == 2
    assert isinstance(served, ServedEvent)
    assert served.status == 200
    assert all(e.time == WALL_NOW for e in rec.events)


async def test_failover_on_429_event_order_async(make_async_lb: MakeLb, router: Any, lib: Any) -> None:
    router.script(A, (429, {"retry-after": "7"}))
    rec = Recorder()
    lb = make_async_lb([Backend(A, 1), Backend(B, 2)], on_event=rec)
    async with lib.AsyncClient(transport=lb) as client:
        response = await post(client)
    assert response.json() == {"host": B}
    assert rec.trace() == [("attempt", A), ("throttled", A), ("attempt", B), ("served", B)]
    assert rec.events[1].cooldown_s == 7


def test_failover_on_failures_event_order(make_lb: MakeLb, router: Any, lib: Any) -> None:
    router.script(A, 503).script(B, lib.ConnectError("refused"))
    rec = Recorder()
    lb = make_lb([Backend(A, 1), Backend(B, 2), Backend(C, 3)], on_event=rec, failure_backoff_s=2)
    with lib.Client(transport=lb) as client:
        assert post(client).json() == {"host": C}
    assert rec.trace() == [
        ("attempt", A),
        ("failed", A),
        ("attempt", B),
        ("failed", B),
        ("attempt", C),
        ("served", C),
    ]
    failed_a, failed_b = rec.of("failed")
    assert isinstance(failed_a, FailedEvent)
    assert isinstance(failed_b, FailedEvent)
    assert (failed_a.cause, failed_a.consecutive_failures, failed_a.cooldown_s) == ("503", 1, 2.0)
    assert (failed_b.cause, failed_b.consecutive_failures, failed_b.cooldown_s) == ("ConnectError", 1, 2.0)


def test_breaker_recovery_event_order(make_lb: MakeLb, router: Any, lib: Any, clock: Any) -> None:
    router.script(A, 500)
    rec = Recorder()
    lb = make_lb([Backend(A, 1), Backend(B, 2)], on_event=rec, failure_backoff_s=1)
    with lib.Client(transport=lb) as client:
        post(client)
        assert rec.trace() == [("attempt", A), ("failed", A), ("attempt", B), ("served", B)]
        assert stats_by_id(lb)[A].breaker == "open"
        rec.clear()
        post(client)  # the breaker is open: A is not tried
        assert rec.trace() == [("attempt", B), ("served", B)]
        clock.advance(1)
        assert stats_by_id(lb)[A].breaker == "half-open"
        rec.clear()
        assert post(client).json() == {"host": A}
    assert rec.trace() == [("attempt", A), ("served", A), ("recovered", A)]
    attempt, _, recovered = rec.events
    assert attempt.probe is True
    assert isinstance(recovered, RecoveredEvent)
    assert recovered.after_failures == 1
    assert stats_by_id(lb)[A].breaker == "closed"


def test_breaker_backoff_and_recovery_after_two_failures(
    make_lb: MakeLb, router: Any, lib: Any, clock: Any
) -> None:
    router.script(A, 500, 502)
    rec = Recorder()
    lb = make_lb([Backend(A, 1), Backend(B, 2)], on_event=rec, failure_backoff_s=1)
    with lib.Client(transport=lb) as client:
        post(client)
        clock.advance(1)
        post(client)  # the probe fails too: twice as long
        clock.advance(1)
        assert post(client).json() == {"host": B}  # still open
        clock.advance(1)
        assert post(client).json() == {"host": A}
    assert_paired(rec.events)
    assert [(e.cause, e.consecutive_failures, e.cooldown_s) for e in rec.of("failed")] == [
        ("500", 1, 1.0),
        ("502", 2, 2.0),
    ]
    assert [e.probe for e in rec.of("attempt") if e.backend == A][1:] == [True, True]  # half-open
    assert [e.after_failures for e in rec.of("recovered")] == [2]
    assert rec.events[-2:] == [rec.of("served")[-1], rec.of("recovered")[0]]


def test_probe_answered_with_429_reports_the_breaker_closing(
    make_lb: MakeLb, router: Any, lib: Any, clock: Any
) -> None:
    router.script(A, 500, (429, {"retry-after": "1"}))
    rec = Recorder()
    lb = make_lb([Backend(A, 1), Backend(B, 2)], on_event=rec, failure_backoff_s=1)
    with lib.Client(transport=lb) as client:
        post(client)
        clock.advance(1)
        rec.clear()
        post(client)
    # Either the 429 closes the breaker and says so, or the breaker stays open: never closed silently.
    closed = stats_by_id(lb)[A].breaker == "closed"
    assert closed == ([e.backend for e in rec.of("recovered")] == [A])


def test_returned_4xx_is_served(make_lb: MakeLb, router: Any, lib: Any) -> None:
    router.script(A, 404)
    rec = Recorder()
    with lib.Client(transport=make_lb([Backend(A, 1), Backend(B, 2)], on_event=rec)) as client:
        assert post(client).status_code == 404
    assert rec.trace() == [("attempt", A), ("served", A)]
    assert rec.events[1].status == 404


def test_read_timeout_is_a_failed_outcome_and_reaches_the_caller(
    make_lb: MakeLb, router: Any, lib: Any
) -> None:
    router.script(A, lib.ReadTimeout("slow"))
    rec = Recorder()
    with (
        lib.Client(transport=make_lb([Backend(A, 1), Backend(B, 2)], on_event=rec)) as client,
        pytest.raises(lib.ReadTimeout),
    ):
        post(client)
    assert rec.trace() == [("attempt", A), ("failed", A)]
    assert rec.events[1].cause == "ReadTimeout"


def test_token_provider_error_is_abandoned(make_lb: MakeLb, router: Any, lib: Any) -> None:
    def provider() -> str:
        raise LookupError("no token today")

    rec = Recorder()
    lb = make_lb([Backend(A, 1, azure_ad_token_provider=provider), Backend(B, 2)], on_event=rec)
    with lib.Client(transport=lb) as client, pytest.raises(LookupError):
        post(client)
    assert rec.trace() == [("attempt", A), ("abandoned", A)]
    assert router.requests == []
    assert stats_by_id(lb)[A].in_flight == 0


async def test_cancelled_attempt_is_abandoned(make_async_lb: MakeLb, router: Any, lib: Any) -> None:
    entered, release = asyncio.Event(), asyncio.Event()

    async def held(request: Any) -> Any:
        entered.set()
        await asyncio.wait_for(release.wait(), WAIT)
        return lib.Response(200)

    router.script(A, held)
    rec = Recorder()
    lb = make_async_lb([Backend(A, 1), Backend(B, 2)], on_event=rec)
    async with lib.AsyncClient(transport=lb) as client:
        task = asyncio.create_task(post(client))
        await asyncio.wait_for(entered.wait(), WAIT)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert rec.trace() == [("attempt", A), ("abandoned", A)]
    assert stats_by_id(lb)[A].in_flight == 0


def test_elapsed_is_measured_on_the_balancer_clock(
    make_lb: MakeLb, router: Any, lib: Any, clock: Any
) -> None:
    def slow(status: int, seconds: float) -> Callable[[Any], Any]:
        def answer(request: Any) -> Any:
            clock.advance(seconds)
            return lib.Response(status, headers={"retry-after": "1"} if status == 429 else {})

        return answer

    router.script(A, slow(429, 0.25)).script(B, slow(200, 0.5))
    rec = Recorder()
    with lib.Client(transport=make_lb([Backend(A, 1), Backend(B, 2)], on_event=rec)) as client:
        response = post(client)
    assert [e.elapsed_s for e in rec.events if e.kind in OUTCOMES] == [
        pytest.approx(0.25),
        pytest.approx(0.5),
    ]
    assert [a.elapsed_s for a in routing(response).attempts] == [pytest.approx(0.25), pytest.approx(0.5)]


def test_events_are_frozen(make_lb: MakeLb, lib: Any) -> None:
    rec = Recorder()
    with lib.Client(transport=make_lb([Backend(A, 1)], on_event=rec)) as client:
        post(client)
    for event in rec.events:
        with pytest.raises(dataclasses.FrozenInstanceError):
            event.backend = "elsewhere"  # type: ignore[misc]


# ---------------------------------------------------------------------- waiting and exhaustion


def test_waited_then_served(make_lb: MakeLb, router: Any, lib: Any, fake_sleep: list[float]) -> None:
    router.script(A, (429, {"retry-after": "2"}))
    rec = Recorder()
    with lib.Client(transport=make_lb([Backend(A, 1)], on_event=rec, max_wait_s=5)) as client:
        assert post(client).json() == {"host": A}
    assert fake_sleep == [pytest.approx(2)]
    assert rec.trace() == [("attempt", A), ("throttled", A), ("waited", None), ("attempt", A), ("served", A)]
    waited = rec.of("waited")[0]
    assert isinstance(waited, WaitedEvent)
    assert waited.waited_s == pytest.approx(2)
    assert rec.of("exhausted") == []


def test_waited_then_exhausted(make_lb: MakeLb, router: Any, lib: Any, fake_sleep: list[float]) -> None:
    router.script(A, (429, {"retry-after": "2"}), (429, {"retry-after": "10"}))
    rec = Recorder()
    with lib.Client(transport=make_lb([Backend(A, 1)], on_event=rec, max_wait_s=5)) as client:
        response = post(client)
    assert response.status_code == 429
    assert routing(response).backend is None
    assert fake_sleep == [pytest.approx(2)]
    assert rec.trace() == [
        ("attempt", A),
        ("throttled", A),
        ("waited", None),
        ("attempt", A),
        ("throttled", A),
        ("exhausted", None),
    ]
    exhausted = rec.events[-1]
    assert isinstance(exhausted, ExhaustedEvent)
    assert (exhausted.retry_after_s, exhausted.attempts) == (pytest.approx(10), 2)
    assert response.headers["retry-after"] == "10"


def test_exhausted_at_once_without_waiting(make_lb: MakeLb, router: Any, lib: Any) -> None:
    router.script(A, (429, {"retry-after": "3"})).script(B, 503)
    rec = Recorder()
    lb = make_lb([Backend(A, 1), Backend(B, 1)], on_event=rec, failure_backoff_s=1)
    with lib.Client(transport=lb) as client:
        assert post(client).status_code == 429
    assert_paired(rec.events)
    assert [e.kind for e in rec.events][-1] == "exhausted"
    assert rec.of("waited") == []
    assert (rec.events[-1].retry_after_s, rec.events[-1].attempts) == (pytest.approx(1), 2)


def test_sleep_hook_is_used_for_waiting(make_lb: MakeLb, router: Any, lib: Any, clock: Any) -> None:
    slept: list[float] = []

    def sleep(seconds: float) -> None:  # the autouse guard fails the test if a real sleep is reached
        slept.append(seconds)
        clock.advance(seconds)

    router.script(A, (429, {"retry-after": "3"}))
    rec = Recorder()
    lb = make_lb([Backend(A, 1)], on_event=rec, max_wait_s=5, sleep=sleep)
    with lib.Client(transport=lb) as client:
        assert post(client).json() == {"host": A}
    assert slept == [pytest.approx(3)]
    assert rec.of("waited")[0].waited_s == pytest.approx(3)


async def test_async_sleep_hook_is_used_for_waiting(
    make_async_lb: MakeLb, router: Any, lib: Any, clock: Any
) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.advance(seconds)

    router.script(A, (429, {"retry-after": "3"}), (429, {"retry-after": "1"}))
    rec = Recorder()
    lb = make_async_lb([Backend(A, 1)], on_event=rec, max_wait_s=5, sleep=sleep)
    async with lib.AsyncClient(transport=lb) as client:
        assert (await post(client)).json() == {"host": A}
    assert slept == [pytest.approx(3), pytest.approx(1)]
    assert [e.waited_s for e in rec.of("waited")] == [pytest.approx(3), pytest.approx(1)]
    assert_paired(rec.events)


@pytest.mark.parametrize("cls", [LoadBalancer, AsyncLoadBalancer])
@pytest.mark.parametrize("sleep", [1.0, "time.sleep"])
def test_sleep_must_be_callable(cls: type, sleep: Any) -> None:
    with pytest.raises(TypeError, match="sleep"):
        cls([Backend(A, 1)], sleep=sleep)


# ---------------------------------------------------------------------- the callback


def test_raising_callback_is_logged_and_ignored(
    make_lb: MakeLb, router: Any, lib: Any, clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []

    def callback(event: Event) -> None:
        seen.append(event.kind)
        raise RuntimeError(f"callback broke on {event.kind}")

    router.script(A, (429, {"retry-after": "1"}), 500).script(B, 400, 503)
    lb = make_lb([Backend(A, 1), Backend(B, 2)], on_event=callback, failure_backoff_s=1)
    with caplog.at_level(logging.WARNING, logger=LOGGER), lib.Client(transport=lb) as client:
        assert post(client).status_code == 400  # throttled A, served B (a 4xx)
        clock.advance(1)
        assert post(client).status_code == 429  # failed A, failed B: exhausted
        clock.advance(1)
        assert post(client).status_code == 200  # probe A, served, recovered
    assert set(seen) == {"attempt", "throttled", "served", "failed", "exhausted", "recovered"}
    warnings = [r for r in caplog.records if r.name == LOGGER and "on_event" in r.getMessage()]
    assert len(warnings) == len(seen)
    assert all(r.levelno == logging.WARNING for r in warnings)
    assert all(kind in r.getMessage() for kind, r in zip(seen, warnings, strict=True))
    assert all(r.exc_info and isinstance(r.exc_info[1], RuntimeError) for r in warnings)
    assert all(s.in_flight == 0 for s in lb.stats())


async def test_raising_callback_is_ignored_async(
    make_async_lb: MakeLb, router: Any, lib: Any, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    def callback(event: Event) -> None:
        calls.append(event.kind)
        raise ValueError("nope")

    router.script(A, (429, {"retry-after": "1"}))
    lb = make_async_lb([Backend(A, 1), Backend(B, 2)], on_event=callback)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        async with lib.AsyncClient(transport=lb) as client:
            assert (await post(client)).json() == {"host": B}
    assert calls == ["attempt", "throttled", "attempt", "served"]
    assert len([r for r in caplog.records if r.levelno == logging.WARNING and r.name == LOGGER]) == 4


@pytest.mark.parametrize("on_event", [1, "print", [print]])
def test_on_event_must_be_callable(on_event: Any) -> None:
    with pytest.raises(TypeError, match="on_event"):
        LoadBalancer([Backend(A, 1)], on_event=on_event)


def test_callback_runs_on_the_request_thread_outside_the_lock(make_lb: MakeLb, router: Any, lib: Any) -> None:
    router.script(A, (429, {"retry-after": "1"}))
    threads: set[int] = set()
    snapshots: list[Any] = []
    lb: Any = None

    def callback(event: Event) -> None:
        threads.add(threading.get_ident())
        snapshots.append(lb.stats())  # would deadlock if the balancer held its lock here

    lb = make_lb([Backend(A, 1), Backend(B, 2)], on_event=callback)
    caller: list[int] = []
    result: list[Any] = []

    def run() -> None:
        caller.append(threading.get_ident())
        with lib.Client(transport=lb) as client:
            result.append(post(client).status_code)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(WAIT)
    assert not thread.is_alive(), "the request deadlocked in its on_event callback"
    assert result == [200]
    assert threads == set(caller)
    assert len(snapshots) == 4
    assert snapshots[1][0].throttled == 1  # the throttled event comes after the count was taken


# ---------------------------------------------------------------------- budget beliefs age


def test_spent_budget_without_reset_is_believed_until_its_window_would_end(
    make_lb: MakeLb, router: Any, lib: Any, clock: Any
) -> None:
    """Azure names no reset on a success. Before the backend has shown how long its windows last, a
    spent report is believed for one second (the shortest window Azure meters), not for
    ``default_cooldown_s``: the backend is set aside that long, then one request finds out."""
    router.script(A, (200, {"x-ratelimit-remaining-requests": "0"}))
    lb = make_lb([Backend(A, 1), Backend(B, 1)], default_cooldown_s=3)
    with lib.Client(transport=lb) as client:
        while A not in router.hosts:
            post(client)
        assert stats_by_id(lb)[A].remaining_requests == 0
        assert stats_by_id(lb)[A].cooling_down_for_s == pytest.approx(1.0)
        router.requests.clear()
        clock.advance(0.9)
        for _ in range(20):
            post(client)
        assert set(router.hosts) == {B}
        clock.advance(0.1)  # one window after the report: it has ended
        router.requests.clear()
        for _ in range(40):
            post(client)
    assert router.hosts.count(A) > 5
    assert router.hosts.count(B) > 5
    assert stats_by_id(lb)[A].remaining_requests is None


@pytest.mark.parametrize(("retry_after", "default", "believed"), [("2", 10.0, 2.0), ("20", 5.0, 5.0)])
def test_spent_budget_without_reset_is_believed_for_the_window_the_backend_showed(
    make_lb: MakeLb, router: Any, lib: Any, clock: Any, retry_after: str, default: float, believed: float
) -> None:
    """The longest wait a backend named shows how long its windows last: a spent report with no reset
    is believed that long from the window's first answer, and never beyond ``default_cooldown_s``."""
    one_left = (200, {"x-ratelimit-remaining-requests": "1"})
    spent = (200, {"x-ratelimit-remaining-requests": "0"})
    router.script(A, (429, {"retry-after": retry_after}), one_left, spent)
    lb = make_lb([Backend(A, 1), Backend(B, 2)], default_cooldown_s=default)
    with lib.Client(transport=lb) as client:
        assert post(client).json() == {"host": B}  # A: 429
        clock.advance(float(retry_after))
        assert post(client).json() == {"host": A}  # the window's first answer: 1 left
        clock.advance(0.5)
        assert post(client).json() == {"host": A}  # spent
        assert stats_by_id(lb)[A].cooling_down_for_s == pytest.approx(believed - 0.5)
        clock.advance(believed - 0.5)
        assert post(client).json() == {"host": A}


def test_stats_stop_reporting_an_aged_out_budget(make_lb: MakeLb, router: Any, lib: Any, clock: Any) -> None:
    router.script(A, (200, {"x-ratelimit-remaining-requests": "0"}))
    lb = make_lb([Backend(A, 1)], default_cooldown_s=3)
    with lib.Client(transport=lb) as client:
        post(client)
    assert stats_by_id(lb)[A].remaining_requests == 0
    clock.advance(3)
    assert stats_by_id(lb)[A].remaining_requests is None


def test_spent_budget_with_reset_sets_the_backend_aside(make_lb: MakeLb, router: Any, lib: Any) -> None:
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "4s"}
    router.script(A, (200, headers))
    lb = make_lb([Backend(A, 1), Backend(B, 2)])
    with lib.Client(transport=lb) as client:
        assert post(client).json() == {"host": A}
        assert stats_by_id(lb)[A].cooling_down_for_s == pytest.approx(4)
        assert post(client).json() == {"host": B}


def test_a_spent_budget_is_a_set_aside_event_after_the_answer(make_lb: MakeLb, router: Any, lib: Any) -> None:
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "4s"}
    router.script(A, (200, headers))
    rec = Recorder()
    with lib.Client(transport=make_lb([Backend(A, 1), Backend(B, 2)], on_event=rec)) as client:
        post(client)
        post(client)
    assert rec.trace() == [("attempt", A), ("served", A), ("set_aside", A), ("attempt", B), ("served", B)]
    assert rec.of("set_aside") == [SetAsideEvent(WALL_NOW, A, "exhausted", 4.0, False, "gpt-4o")]
    assert_paired(rec.events)


def test_a_budget_with_room_left_is_no_event(make_lb: MakeLb, router: Any, lib: Any) -> None:
    headers = {"x-ratelimit-remaining-requests": "5", "x-ratelimit-reset-requests": "4s"}
    router.script(A, (200, headers))
    rec = Recorder()
    with lib.Client(transport=make_lb([Backend(A, 1)], on_event=rec)) as client:
        post(client)
    assert rec.trace() == [("attempt", A), ("served", A)]


def test_after_429_without_limit_one_probe_at_a_time(
    make_lb: MakeLb, router: Any, lib: Any, clock: Any
) -> None:
    router.script(A, (429, {"retry-after": "1"}))
    rec = Recorder()
    lb = make_lb([Backend(A, 1), Backend(B, 2)], on_event=rec)
    with lib.Client(transport=lb) as client:
        post(client)
        clock.advance(1)
        rec.clear()
        post(client)
        post(client)
    assert [(e.backend, e.probe) for e in rec.of("attempt")] == [(A, True), (A, False)]


def test_after_429_with_limit_no_probe(make_lb: MakeLb, router: Any, lib: Any, clock: Any) -> None:
    router.script(A, (429, {"retry-after": "1", "x-ratelimit-limit-requests": "5"}))
    rec = Recorder()
    lb = make_lb([Backend(A, 1), Backend(B, 2)], on_event=rec)
    with lib.Client(transport=lb) as client:
        post(client)
        clock.advance(1)
        assert stats_by_id(lb)[A].remaining_requests == 5  # a fresh window's full budget
        rec.clear()
        post(client)
    assert [(e.backend, e.probe) for e in rec.of("attempt")] == [(A, False)]


async def test_after_429_without_limit_probe_is_alone_but_ranks_normally(
    make_async_lb: MakeLb, router: Any, lib: Any, clock: Any
) -> None:
    release = asyncio.Event()
    answered: list[str] = []

    async def held(request: Any) -> Any:
        await asyncio.wait_for(release.wait(), WAIT)
        answered.append(request.url.host)
        return lib.Response(200, json={"host": request.url.host})

    rec = Recorder()
    lb = make_async_lb([Backend(A, 1), Backend(B, 1)], on_event=rec)
    async with lib.AsyncClient(transport=lb) as client:
        router.script(A, (429, {"retry-after": "1"}))
        while A not in router.hosts:  # until A has throttled once (B takes the rest)
            await post(client)
        clock.advance(1)
        router.always(A, held).always(B, held)
        router.requests.clear()
        rec.clear()
        first = [asyncio.create_task(post(client)) for _ in range(2)]
        await until(lambda: len(router.requests) == 2)
        # One each: A is not ranked last after its cooldown (B already has one in flight).
        assert sorted(router.hosts) == [A, B]
        assert [e.probe for e in rec.of("attempt") if e.backend == A] == [True]
        third = asyncio.create_task(post(client))
        await until(lambda: len(router.requests) == 3)
        assert router.hosts[2] == B  # A's probe is out: nothing else goes to A meanwhile
        assert stats_by_id(lb)[A].in_flight == 1
        release.set()
        await asyncio.gather(*first, third)
        # The probe answered: A takes requests side by side again.
        release.clear()
        router.requests.clear()
        rec.clear()
        tasks = [asyncio.create_task(post(client)) for _ in range(4)]
        await until(lambda: len(router.requests) == 4)
        assert stats_by_id(lb)[A].in_flight == 2
        release.set()
        await asyncio.gather(*tasks)
    assert [e.probe for e in rec.of("attempt")] == [False] * 4
