"""Shared token budgets: a BudgetStore keeps, beside each backend's request counter, a counter of the
tokens left, and refuses a reservation whose cost it cannot fit (MemoryStateStore, on a fake clock).

The same scenarios run against Redis in ``tests/redis/test_redis_tokens.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from openai_priority_loadbalancer import BudgetReport, MemoryStateStore, SharedState

if TYPE_CHECKING:
    from _unit_support import FakeClock

KEYS = ["https://a:443", "https://b:443"]
KEY = KEYS[0]
TTL = 10.0  # the probe's


@pytest.fixture
def store(clock: FakeClock) -> MemoryStateStore:
    return MemoryStateStore(clock=clock)


def tokens(
    left: int, reset_s: float = 5.0, *, requests: int | None = 100, estimated: bool = False
) -> BudgetReport:
    """A report of ``left`` tokens (and, unless told otherwise, plenty of requests) for KEY."""
    return BudgetReport(KEY, requests, reset_s, None if requests is None else 100, estimated, left)


def costs(store: MemoryStateStore, *each: int) -> list[bool]:
    """Whether a reservation of KEY is granted, for each cost in turn."""
    return [store.reserve(KEYS, 0, [], TTL, cost=c).granted for c in each]


def test_a_report_is_built_positionally_as_before() -> None:
    assert BudgetReport(KEY, 1, 2.0, 3, True).remaining_tokens is None
    assert BudgetReport(KEY, 1, 2.0, 3, False, 7).remaining_tokens == 7


def test_a_request_its_tokens_cannot_fit_is_refused_until_they_expire(
    store: MemoryStateStore, clock: FakeClock
) -> None:
    store.report([tokens(1000, 6.0)])
    clock.advance(1.0)
    refused = store.reserve(KEYS, 0, [], TTL, cost=1001)
    assert (refused.granted, refused.probe) == (False, False)
    assert refused.wait_s == pytest.approx(5.0)  # until the token counter expires: never 0
    assert costs(store, 1000) == [True]  # the refusal took none of them


def test_a_refusal_takes_nothing_from_either_counter(store: MemoryStateStore) -> None:
    store.report([tokens(100, requests=1)])
    assert costs(store, 101, 101) == [False, False]
    assert costs(store, 100, 0) == [True, False]  # the one request, and all the tokens, were still there
    assert store.reserve(KEYS, 0, [], TTL).wait_s == pytest.approx(5.0)  # the request counter's wait


def test_a_granted_request_lowers_the_tokens_by_its_cost(store: MemoryStateStore, clock: FakeClock) -> None:
    store.report([tokens(1000)])
    assert costs(store, 600, 401, 400, 1) == [True, False, True, False]
    clock.advance(5.0)  # the token counter expired: nothing is known of tokens any more
    assert costs(store, 10**6) == [True]


def test_a_report_only_lowers_live_tokens_and_never_ends_them_sooner(
    store: MemoryStateStore, clock: FakeClock
) -> None:
    store.report([tokens(1000, 5.0)])
    store.report([tokens(5000, 2.0)])  # an older answer, arriving late
    refused = store.reserve(KEYS, 0, [], TTL, cost=1001)
    assert not refused.granted
    assert refused.wait_s == pytest.approx(5.0)
    store.report([tokens(800, 9.0)])  # lower, and a later end: both taken
    refused = store.reserve(KEYS, 0, [], TTL, cost=801)
    assert not refused.granted
    assert refused.wait_s == pytest.approx(9.0)
    clock.advance(8.9)
    assert costs(store, 801, 800) == [False, True]


def test_an_estimated_report_lowers_live_tokens_but_never_moves_their_end(
    store: MemoryStateStore, clock: FakeClock
) -> None:
    store.report([tokens(1000, 5.0)])
    store.report([tokens(300, 30.0, estimated=True)])
    refused = store.reserve(KEYS, 0, [], TTL, cost=301)
    assert not refused.granted
    assert refused.wait_s == pytest.approx(5.0)  # not 30
    store.report([tokens(200, 1.0, estimated=True)])
    refused = store.reserve(KEYS, 0, [], TTL, cost=201)
    assert refused.wait_s == pytest.approx(5.0)  # not 1 either
    clock.advance(5.0)
    assert costs(store, 10**6) == [True]


def test_an_estimated_report_starts_tokens_where_there_are_none(
    store: MemoryStateStore, clock: FakeClock
) -> None:
    """There is no token probe: an estimate starts a token counter, though it starts no request counter."""
    store.report([tokens(100, 4.0, requests=3, estimated=True)])
    refused = store.reserve(KEYS, 0, [], TTL, cost=101)
    assert (refused.granted, refused.probe) == (False, False)
    assert refused.wait_s == pytest.approx(4.0)
    first = store.reserve(KEYS, 0, [], 0.5, cost=60)  # no request counter: the window's probe
    assert (first.granted, first.probe) == (True, True)  # the refusal before it started no probe
    clock.advance(0.5)  # the probe's hold is over: the others go, within the tokens left
    assert costs(store, 41, 40) == [False, True]


def test_a_report_with_no_time_left_forgets_both_counters(store: MemoryStateStore) -> None:
    store.report([tokens(0, requests=0)])
    assert costs(store, 1) == [False]
    store.report([BudgetReport(KEY, 0, 0.0, None, False, 0)])
    assert costs(store, 10**6) == [True]  # a new window from the limit, and no token counter
    store.report([tokens(0)])
    store.report([BudgetReport(KEY, 3, 0.0, None)])  # no time left, and nothing said of tokens
    assert costs(store, 10**6) == [True]


def test_a_report_that_says_nothing_of_tokens_leaves_them_alone(store: MemoryStateStore) -> None:
    store.report([tokens(100)])
    store.report([BudgetReport(KEY, 50, 20.0, 100)])
    refused = store.reserve(KEYS, 0, [], TTL, cost=101)
    assert not refused.granted
    assert refused.wait_s == pytest.approx(5.0)


def test_an_unmetered_report_drops_the_tokens(store: MemoryStateStore) -> None:
    store.report([tokens(0)])
    store.report([BudgetReport(KEY, None, 5.0, None)])  # no budget at all
    assert costs(store, 10**6, 10**6) == [True, True]


def test_a_report_of_tokens_only_keeps_requests_unmetered_and_counts_tokens(store: MemoryStateStore) -> None:
    store.report([tokens(100, requests=None)])
    refused = store.reserve(KEYS, 0, [], TTL, cost=101)
    assert not refused.granted
    assert refused.wait_s == pytest.approx(5.0)
    granted = store.reserve(KEYS, 0, [], TTL, cost=100)
    assert (granted.granted, granted.probe) == (True, False)  # unmetered requests: no probe
    assert costs(store, 1, 0, 0) == [False, True, True]


def test_cost_zero_is_the_request_budget_alone(store: MemoryStateStore) -> None:
    store.report([tokens(0, requests=2)])
    assert [store.reserve(KEYS, 0, [], TTL).granted for _ in range(2)] == [True, True]
    refused = store.reserve(KEYS, 0, [], TTL, cost=0)
    assert not refused.granted
    assert refused.wait_s == pytest.approx(5.0)
    assert store.reserve(KEYS, 1, [], TTL, cost=0).probe  # no counter at all: as before


def test_a_backend_set_aside_is_refused_for_its_cooldown_first(store: MemoryStateStore) -> None:
    store.report([tokens(0)])
    store.set_aside(KEY, SharedState(7.0, "throttled", 0))
    refused = store.reserve(KEYS, 0, [], TTL, cost=1)
    assert not refused.granted
    assert refused.wait_s == pytest.approx(7.0)


def test_tokens_ride_along_with_a_reservation(store: MemoryStateStore) -> None:
    assert store.reserve(KEYS, 1, [tokens(10)], TTL, cost=5).granted  # b: no token counter
    assert costs(store, 11, 10) == [False, True]


def test_each_backend_has_its_own_tokens(store: MemoryStateStore) -> None:
    store.report([tokens(0)])
    assert store.reserve(KEYS, 1, [], TTL, cost=10**6).granted


async def test_the_async_form_takes_a_cost(store: MemoryStateStore) -> None:
    await store.areport([tokens(10)])
    refused = await store.areserve(KEYS, 0, [], TTL, cost=11)
    granted = await store.areserve(KEYS, 0, [], TTL, 10)
    assert (refused.granted, granted.granted) == (False, True)
    assert refused.wait_s == pytest.approx(5.0)
