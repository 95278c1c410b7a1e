"""Shared request budgets: balancers sharing a BudgetStore send a backend no more than its window holds.

The store's semantics are tested on MemoryStateStore (the reference the Redis store follows), then
several balancers share one store in front of a backend with a fixed budget per window, on a fake
clock: without the store they overspend its windows, with it they never do.
"""

from __future__ import annotations

import math
from typing import Any

import httpx
import pytest
from _unit_support import CALLER_URL, FakeClock

from _windowed_backend import WindowedBackend
from openai_priority_loadbalancer import (
    Backend,
    BudgetReport,
    BudgetStore,
    LoadBalancer,
    MemoryStateStore,
    SharedState,
    StateStore,
)

KEYS = ["https://a:443", "https://b:443"]


@pytest.fixture
def store(clock: FakeClock) -> MemoryStateStore:
    return MemoryStateStore(clock=clock)


def test_memory_store_is_a_budget_store(store: MemoryStateStore) -> None:
    assert isinstance(store, BudgetStore)
    assert isinstance(store, StateStore)


def test_an_unknown_budget_is_probed_by_one_request(store: MemoryStateStore) -> None:
    first = store.reserve(KEYS, 0, [], 10.0)
    assert (first.granted, first.probe) == (True, True)
    second = store.reserve(KEYS, 0, [], 10.0)
    assert (second.granted, second.wait_s) == (False, 0.0)  # ask again soon: the probe is out
    assert store.reserve(KEYS, 1, [], 10.0).probe  # each backend has its own


def test_the_probe_holds_the_others_back_for_its_hold_only(store: MemoryStateStore, clock: FakeClock) -> None:
    """A 429 would be back within the probe's hold: past it the probe was admitted, and the others go
    (uncounted: the budget is still unknown) until its answer is reported."""
    assert store.reserve(KEYS, 0, [], 0.5).probe
    clock.advance(0.49)
    assert not store.reserve(KEYS, 0, [], 0.5).granted
    clock.advance(0.01)
    released = [store.reserve(KEYS, 0, [], 0.5) for _ in range(20)]
    assert all(r.granted and not r.probe for r in released)
    store.report([BudgetReport(KEYS[0], 1, 5.0, 30)])  # its answer: the counter takes over
    assert [store.reserve(KEYS, 0, [], 0.5).granted for _ in range(2)] == [True, False]


def test_a_probe_that_is_never_reported_ends_with_its_ttl(store: MemoryStateStore, clock: FakeClock) -> None:
    store.reserve(KEYS, 0, [], 10.0)
    clock.advance(10)
    assert store.reserve(KEYS, 0, [], 10.0).probe


def test_reports_set_the_counter_and_reservations_count_it_down(
    store: MemoryStateStore, clock: FakeClock
) -> None:
    store.reserve(KEYS, 0, [], 10.0)
    store.report([BudgetReport(KEYS[0], 2, 0.8, 4)])
    assert [store.reserve(KEYS, 0, [], 10.0).granted for _ in range(3)] == [True, True, False]
    clock.advance(0.3)
    refused = store.reserve(KEYS, 0, [], 10.0)
    assert not refused.granted
    assert refused.wait_s == pytest.approx(0.5)
    clock.advance(0.5)  # the window ended: the limit is known, so a new one starts full, no probe
    fresh = [store.reserve(KEYS, 0, [], 10.0) for _ in range(5)]
    assert [r.granted for r in fresh] == [True, True, True, True, False]
    assert not any(r.probe for r in fresh)


def test_a_report_only_ever_lowers_a_live_counter(store: MemoryStateStore) -> None:
    store.report([BudgetReport(KEYS[0], 2, 1.0, 10)])
    store.report([BudgetReport(KEYS[0], 9, 1.0, 10)])  # an older answer, arriving late
    assert [store.reserve(KEYS, 0, [], 10.0).granted for _ in range(3)] == [True, True, False]


def test_reports_ride_along_with_a_reservation(store: MemoryStateStore) -> None:
    result = store.reserve(KEYS, 1, [BudgetReport(KEYS[0], 0, 5.0, 3)], 10.0)
    assert result.granted
    refused = store.reserve(KEYS, 0, [], 10.0)
    assert (refused.granted, refused.wait_s) == (False, 5.0)


def test_an_unmetered_backend_is_never_refused(store: MemoryStateStore, clock: FakeClock) -> None:
    store.report([BudgetReport(KEYS[0], None, 1.0, None)])
    assert all(store.reserve(KEYS, 0, [], 10.0).granted for _ in range(100))
    assert not any(store.reserve(KEYS, 0, [], 10.0).probe for _ in range(10))


def test_a_report_with_no_time_left_forgets_the_counter(store: MemoryStateStore) -> None:
    store.reserve(KEYS, 0, [], 10.0)  # the probe
    store.report([BudgetReport(KEYS[0], 0, 0.0, None)])  # it learned nothing
    assert store.reserve(KEYS, 0, [], 10.0).probe  # the next request may try


def test_a_backend_set_aside_is_refused_for_as_long(store: MemoryStateStore) -> None:
    store.set_aside(KEYS[0], SharedState(7.0, "throttled", 0))
    result = store.reserve(KEYS, 0, [], 10.0)
    assert (result.granted, result.wait_s) == (False, 7.0)
    assert result.records[0] is not None
    assert result.records[1] is None


# ---------------------------------------------------------------------- balancers sharing a budget


class AzureBackend(WindowedBackend):
    """Answers as Azure OpenAI does: the remaining count on a success, with no limit and no reset;
    ``Retry-After`` in whole seconds (rounded up) on a 429. A client cannot tell when a window ends."""

    def throttle(self, wait_s: float) -> httpx.Response:
        return httpx.Response(429, headers={"retry-after": str(math.ceil(round(wait_s, 6)))})

    def serve(self, remaining: int, wait_s: float) -> httpx.Response:
        return httpx.Response(200, headers={"x-ratelimit-remaining-requests": str(remaining)})


def _run(
    clock: FakeClock, state: Any, balancers: int = 4, backend: WindowedBackend | None = None, ticks: int = 30
) -> WindowedBackend:
    """Balancers take turns sending, 8 requests per 0.1 s in all, for 3 s; a second backend takes
    what the first cannot."""
    if backend is None:
        backend = WindowedBackend(clock, limit=5)
    lbs = [
        LoadBalancer(
            [Backend("a.example", 1), Backend("b.example", 2)],
            transport=httpx.MockTransport(backend),
            clock=clock,
            state=state,
            max_wait_s=0,
        )
        for _ in range(balancers)
    ]
    request = httpx.Request("POST", CALLER_URL, content=b"{}")
    for tick in range(ticks):
        for i in range(8):
            assert lbs[(tick + i) % balancers].handle_request(request).status_code == 200
        clock.advance(0.1)
    return backend


def test_without_sharing_budgets_balancers_overspend_each_window(clock: FakeClock) -> None:
    backend = _run(clock, state=None)
    assert backend.throttled > 3  # at least one 429 per window: the control


def test_sharing_budgets_balancers_never_overspend_a_window(clock: FakeClock) -> None:
    backend = _run(clock, state=MemoryStateStore(clock=clock))
    assert backend.throttled == 0
    assert all(n == 5 for n in backend.served.values())  # and the backend's capacity is used


# ---------------------------------------------------------------------- backends that name no reset


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "alone"])
def test_a_budget_that_names_no_reset_is_used_every_window(clock: FakeClock, shared: bool) -> None:
    """Azure names no reset: a spent counter must not be believed for ``default_cooldown_s`` (10 s),
    or a fleet sharing it sends nothing for 9 windows in 10 (it took 4 workers on Redis 9x as long
    as one process). Every window is used, at no more than one 429 per window."""
    backend = AzureBackend(clock, limit=5)
    _run(clock, MemoryStateStore(clock=clock) if shared else None, 4 if shared else 1, backend)
    assert backend.served == {0: 5, 1: 5, 2: 5}
    assert backend.throttled <= 1


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "alone"])
def test_a_window_longer_than_guessed_costs_one_429_per_window(clock: FakeClock, shared: bool) -> None:
    """Windows of 2 s, longer than the first guess (1 s) and than any wait named (a whole second,
    rounded up, named half-way through a window): each window costs one 429 at most, whose wait
    tells when it ends, and each is used whole."""
    backend = AzureBackend(clock, limit=5, window_s=2.0)
    _run(clock, MemoryStateStore(clock=clock) if shared else None, 4 if shared else 1, backend, ticks=80)
    assert backend.served == {0: 5, 1: 5, 2: 5, 3: 5}
    assert backend.throttled <= 4


def test_what_is_left_of_a_wait_is_not_a_window(store: MemoryStateStore, clock: FakeClock) -> None:
    """Another balancer's 429 shows here as what is left of its wait (0.3 s): not a window. A counter
    the backend named no reset for still lives a whole window (1 s, the first guess)."""
    from openai_priority_loadbalancer import shared_key

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "a.example":
            return httpx.Response(200, headers={"x-ratelimit-remaining-requests": "0"})
        return httpx.Response(200)

    lb = LoadBalancer(
        [Backend("a.example", 1), Backend("b.example", 2)],
        transport=httpx.MockTransport(handler),
        clock=clock,
        state=store,
        max_wait_s=0,
    )
    keys = [shared_key(b) + "#deployment=gpt-4o" for b in lb.backends]  # the deployment CALLER_URL names
    store.set_aside(keys[0], SharedState(0.3, "throttled", 0))
    request = httpx.Request("POST", CALLER_URL, content=b"{}")
    assert lb.handle_request(request).status_code == 200  # b: a is set aside
    clock.advance(0.3)
    assert lb.handle_request(request).status_code == 200  # a, the window's probe: spent
    clock.advance(0.5)
    refused = store.reserve(keys, 0, [], 10.0)
    assert not refused.granted
    assert refused.wait_s == pytest.approx(0.5)


def test_an_estimated_reset_never_moves_a_counters_end(store: MemoryStateStore, clock: FakeClock) -> None:
    """Estimates (the backend named no reset) lower a live counter but leave its end where the
    window's probe put it."""
    assert store.reserve(KEYS, 0, [], 10.0).probe
    store.report([BudgetReport(KEYS[0], 3, 1.0, None, estimated=True)])  # the probe's answer
    clock.advance(0.5)
    later = BudgetReport(KEYS[0], 1, 1.0, None, estimated=True)  # another balancer's, 0.5 s later
    assert [store.reserve(KEYS, 0, [later], 10.0).granted for _ in range(2)] == [True, False]
    refused = store.reserve(KEYS, 0, [], 10.0)
    assert refused.wait_s == pytest.approx(0.5)
    clock.advance(0.5)
    assert store.reserve(KEYS, 0, [], 10.0).probe  # the window ended when the probe's answer said


def test_an_estimated_reset_starts_no_counter_of_its_own(store: MemoryStateStore, clock: FakeClock) -> None:
    """With no window under way, an estimate may speak of one that has ended: it is dropped, and
    says nothing of the window's length either."""
    store.report([BudgetReport(KEYS[0], 0, 1.0, 4, estimated=True)])
    assert store.reserve(KEYS, 0, [], 10.0).probe  # not refused: no counter, and no window to start from


def test_a_late_report_of_the_last_window_does_not_end_the_current_one(
    store: MemoryStateStore, clock: FakeClock
) -> None:
    """A report measured in the window before arrives after the next began: it may lower the
    counter, but its (almost spent) reset must not end the new window, or a third would begin."""
    store.report([BudgetReport(KEYS[0], 3, 1.0, 4)])
    clock.advance(1.0)  # the window ended; the next starts from the limit
    assert [store.reserve(KEYS, 0, [], 10.0).granted for _ in range(5)] == [True] * 4 + [False]
    late = BudgetReport(KEYS[0], 1, 0.0001, 4)
    assert not store.reserve(KEYS, 0, [late], 10.0).granted
    clock.advance(0.01)
    refused = store.reserve(KEYS, 0, [], 10.0)
    assert not refused.granted  # still the same window, still spent
    assert refused.wait_s == pytest.approx(0.99)


def test_the_window_is_rounded_up_to_a_tenth_of_a_second(store: MemoryStateStore, clock: FakeClock) -> None:
    """A reset reaches the store a little after it was measured: 0.97 s left means a 1 s window."""
    store.report([BudgetReport(KEYS[0], 0, 0.97, 2)])
    clock.advance(0.97)
    assert [store.reserve(KEYS, 0, [], 10.0).granted for _ in range(3)] == [True, True, False]
    clock.advance(0.98)
    assert not store.reserve(KEYS, 0, [], 10.0).granted  # the counter lives 1.0 s, not 0.97
    clock.advance(0.02)
    assert store.reserve(KEYS, 0, [], 10.0).granted


async def test_a_cancelled_probe_lets_the_next_request_probe_at_once() -> None:
    """A request holding a backend's shared probe is cancelled: it says so, instead of leaving every
    balancer refused that backend until the probe's TTL."""
    import asyncio

    from openai_priority_loadbalancer import AsyncLoadBalancer, shared_key

    store = MemoryStateStore()
    gate = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        await gate.wait()
        return httpx.Response(200)

    lb = AsyncLoadBalancer([Backend("a.example", 1)], transport=httpx.MockTransport(handler), state=store)
    keys = [shared_key(lb.backends[0]) + "#deployment=gpt-4o"]  # the deployment CALLER_URL names
    task = asyncio.create_task(lb.handle_async_request(httpx.Request("POST", CALLER_URL, content=b"{}")))
    await asyncio.sleep(0.01)
    assert not store.reserve(keys, 0, [], 10.0).granted  # its probe is out
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert store.reserve(keys, 0, [], 10.0).probe


class _BlockingStore(MemoryStateStore):
    """A MemoryStateStore whose first call of ``method`` waits (until cancelled) once an answer is in."""

    def __init__(self, method: str) -> None:
        super().__init__()
        self.method = method
        self.entered: Any = None

    async def _block(self) -> None:
        import asyncio

        if self.entered is not None and not self.entered.is_set():
            self.entered.set()
            await asyncio.Event().wait()

    async def aset_aside(self, key: str, record: SharedState) -> None:
        if self.method == "set_aside":
            await self._block()
        await super().aset_aside(key, record)

    async def areport(self, reports: Any) -> None:
        if self.method == "report":
            await self._block()
        await super().areport(reports)


@pytest.mark.parametrize(
    ("method", "status", "headers"),
    [
        ("set_aside", 429, {"retry-after": "1"}),  # the 429 is shared, then the probe ended
        ("report", 200, {"x-ratelimit-remaining-requests": "5", "x-ratelimit-limit-requests": "9"}),
    ],
)
async def test_a_request_cancelled_in_a_store_call_after_its_answer_closes_it_and_ends_the_probe(
    lib: Any, observed_stream: Any, method: str, status: int, headers: dict[str, str]
) -> None:
    """Cancelled while it told the store what the answer said, a request left the answer's connection
    open and the shared probe out: every balancer was refused a healthy backend for 10 s."""
    import asyncio

    from openai_priority_loadbalancer import AsyncLoadBalancer, shared_key

    store = _BlockingStore(method)
    store.entered = asyncio.Event()
    body = observed_stream()

    def handler(request: Any) -> Any:
        return lib.Response(status, headers=headers, stream=body)

    lb = AsyncLoadBalancer([Backend("a.example", 1)], transport=lib.MockTransport(handler), state=store)
    keys = [shared_key(lb.backends[0]) + "#deployment=gpt-4o"]  # the deployment CALLER_URL names
    request = lib.Request("POST", CALLER_URL, content=b"{}")
    task = asyncio.create_task(lb.handle_async_request(request))
    await asyncio.wait_for(store.entered.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert body.closed
    assert [s.in_flight for s in lb.stats()] == [0]
    after = store.reserve(keys, 0, [], 10.0)
    # The probe is back: granted, or refused until the 429's reset, but not "wait, a probe is out" (10 s).
    assert after.granted if status == 200 else after.wait_s == pytest.approx(1.0, abs=0.1)
