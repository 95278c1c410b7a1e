"""RedisStateStore's token budgets, on a real redis-server: the scenarios of
``tests/unit/test_store_tokens.py`` through both the sync and the async forms, then what only Redis
has (its keys, values it did not write, counts too large for a script), the same answers as
MemoryStateStore for random calls, and racing reservers that never take more tokens than a counter holds.
"""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING

import pytest
from _redis_support import answer_as_memory_does, granted_by_racing_threads
from redis.crc import key_slot

from openai_priority_loadbalancer import Backend, BudgetReport, SharedState, shared_key
from openai_priority_loadbalancer.redis import RedisStateStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from _redis_support import RedisServer

    import redis
    from openai_priority_loadbalancer import Reservation

pytestmark = pytest.mark.redis

KEYS = ["https://a:443", "https://b:443"]
KEY = KEYS[0]
TTL = 10.0  # the probe's
TOKENS = f"oplb:{KEY}#tokens"
BUDGET = f"oplb:{KEY}#budget"


def tokens(
    left: int, reset_s: float = 5.0, *, requests: int | None = 100, estimated: bool = False
) -> BudgetReport:
    """A report of ``left`` tokens (and, unless told otherwise, plenty of requests) for KEY."""
    return BudgetReport(KEY, requests, reset_s, None if requests is None else 100, estimated, left)


class Ops:
    """A store's budget calls, made through its sync or its async form."""

    def __init__(self, store: RedisStateStore, mode: str) -> None:
        self.store, self.mode = store, mode

    async def reserve(
        self, cost: int = 0, *, index: int = 0, reports: Sequence[BudgetReport] = (), ttl: float = TTL
    ) -> Reservation:
        if self.mode == "sync":
            return self.store.reserve(KEYS, index, list(reports), ttl, cost=cost)
        return await self.store.areserve(KEYS, index, list(reports), ttl, cost=cost)

    async def report(self, *reports: BudgetReport) -> None:
        if self.mode == "sync":
            self.store.report(list(reports))
        else:
            await self.store.areport(list(reports))

    async def costs(self, *each: int) -> list[bool]:
        return [(await self.reserve(c)).granted for c in each]


@pytest.fixture(params=["sync", "async"])
async def ops(request: pytest.FixtureRequest, redis_server: RedisServer) -> AsyncIterator[Ops]:
    store = RedisStateStore.from_url(redis_server.url)
    yield Ops(store, request.param)
    await store.aclose()


def near(wait_s: float, expected: float) -> bool:
    """A wait measured on the server a moment after the counter was written (ms granularity)."""
    return expected - 0.1 < wait_s <= expected


# -- the scenarios of tests/unit/test_store_tokens.py ------------------------------------------------


async def test_a_request_its_tokens_cannot_fit_is_refused_until_they_expire(
    ops: Ops, raw: redis.Redis
) -> None:
    await ops.report(tokens(1000, 6.0))
    assert 5_900 < raw.pttl(TOKENS) <= 6_000
    refused = await ops.reserve(1001)
    assert (refused.granted, refused.probe) == (False, False)
    assert near(refused.wait_s, 6.0)  # until the token counter expires: never 0
    assert await ops.costs(1000) == [True]  # the refusal took none of them
    assert raw.get(TOKENS) == b"0"


async def test_a_refusal_takes_nothing_from_either_counter(ops: Ops, raw: redis.Redis) -> None:
    await ops.report(tokens(100, requests=1))
    assert await ops.costs(101, 101) == [False, False]
    assert (raw.get(BUDGET), raw.get(TOKENS)) == (b"1", b"100")
    assert await ops.costs(100, 0) == [True, False]
    assert near((await ops.reserve()).wait_s, 5.0)  # the request counter's wait


async def test_a_granted_request_lowers_the_tokens_by_its_cost(ops: Ops, raw: redis.Redis) -> None:
    await ops.report(tokens(1000))
    assert await ops.costs(600, 401, 400, 1) == [True, False, True, False]
    pttl = raw.pttl(TOKENS)
    assert 4_900 < pttl <= 5_000  # lowered in place: its end unmoved
    raw.pexpire(TOKENS, 20)
    await asyncio.sleep(0.03)  # the token counter expired: nothing is known of tokens any more
    assert await ops.costs(10**6) == [True]
    assert raw.exists(TOKENS) == 0  # and a grant wrote none


async def test_a_report_only_lowers_live_tokens_and_never_ends_them_sooner(
    ops: Ops, raw: redis.Redis
) -> None:
    await ops.report(tokens(1000, 5.0))
    await ops.report(tokens(5000, 2.0))  # an older answer, arriving late
    refused = await ops.reserve(1001)
    assert not refused.granted
    assert near(refused.wait_s, 5.0)
    await ops.report(tokens(800, 9.0))  # lower, and a later end: both taken
    refused = await ops.reserve(801)
    assert not refused.granted
    assert near(refused.wait_s, 9.0)
    assert await ops.costs(800) == [True]


async def test_an_estimated_report_lowers_live_tokens_but_never_moves_their_end(
    ops: Ops, raw: redis.Redis
) -> None:
    await ops.report(tokens(1000, 5.0))
    await ops.report(tokens(300, 30.0, estimated=True))
    refused = await ops.reserve(301)
    assert not refused.granted
    assert near(refused.wait_s, 5.0)  # not 30
    await ops.report(tokens(200, 1.0, estimated=True))
    assert near((await ops.reserve(201)).wait_s, 5.0)  # not 1 either
    assert raw.get(TOKENS) == b"200"


async def test_an_estimated_report_starts_tokens_where_there_are_none(ops: Ops, raw: redis.Redis) -> None:
    """There is no token probe: an estimate starts a token counter, though it starts no request counter."""
    await ops.report(tokens(100, 4.0, requests=3, estimated=True))
    assert raw.exists(BUDGET) == 0
    refused = await ops.reserve(101)
    assert (refused.granted, refused.probe) == (False, False)
    assert near(refused.wait_s, 4.0)
    first = await ops.reserve(60, ttl=0.05)  # no request counter: the window's probe
    assert (first.granted, first.probe) == (True, True)  # the refusal before it started no probe
    await asyncio.sleep(0.06)  # the probe's hold is over: the others go, within the tokens left
    assert await ops.costs(41, 40) == [False, True]


async def test_a_report_with_no_time_left_forgets_both_counters(ops: Ops, raw: redis.Redis) -> None:
    await ops.report(tokens(0, requests=0))
    assert await ops.costs(1) == [False]
    await ops.report(BudgetReport(KEY, 0, 0.0, None, False, 0))
    assert (raw.exists(BUDGET), raw.exists(TOKENS)) == (0, 0)
    assert await ops.costs(10**6) == [True]  # a new window from the limit, and no token counter
    await ops.report(tokens(0))
    await ops.report(BudgetReport(KEY, 3, 0.0, None))  # no time left, and nothing said of tokens
    assert raw.exists(TOKENS) == 0
    assert await ops.costs(10**6) == [True]


async def test_a_report_that_says_nothing_of_tokens_leaves_them_alone(ops: Ops, raw: redis.Redis) -> None:
    await ops.report(tokens(100))
    await ops.report(BudgetReport(KEY, 50, 20.0, 100))
    refused = await ops.reserve(101)
    assert not refused.granted
    assert near(refused.wait_s, 5.0)


async def test_an_unmetered_report_drops_the_tokens(ops: Ops, raw: redis.Redis) -> None:
    await ops.report(tokens(0))
    await ops.report(BudgetReport(KEY, None, 5.0, None))  # no budget at all
    assert raw.exists(TOKENS) == 0
    assert raw.get(BUDGET) == b"unmetered"
    assert await ops.costs(10**6, 10**6) == [True, True]


async def test_a_report_of_tokens_only_keeps_requests_unmetered_and_counts_tokens(
    ops: Ops, raw: redis.Redis
) -> None:
    await ops.report(tokens(100, requests=None))
    refused = await ops.reserve(101)
    assert not refused.granted
    assert near(refused.wait_s, 5.0)
    granted = await ops.reserve(100)
    assert (granted.granted, granted.probe) == (True, False)  # unmetered requests: no probe
    assert await ops.costs(1, 0, 0) == [False, True, True]


async def test_cost_zero_is_the_request_budget_alone(ops: Ops, raw: redis.Redis) -> None:
    await ops.report(tokens(0, requests=2))
    assert await ops.costs(0, 0) == [True, True]
    refused = await ops.reserve(0)
    assert not refused.granted
    assert near(refused.wait_s, 5.0)
    assert (await ops.reserve(index=1)).probe  # no counter at all: as before
    assert raw.get(TOKENS) == b"0"


async def test_a_backend_set_aside_is_refused_for_its_cooldown_first(ops: Ops) -> None:
    await ops.report(tokens(0))
    ops.store.set_aside(KEY, SharedState(7.0, "throttled", 0))
    refused = await ops.reserve(1)
    assert not refused.granted
    assert near(refused.wait_s, 7.0)


async def test_tokens_ride_along_with_a_reservation(ops: Ops) -> None:
    assert (await ops.reserve(5, index=1, reports=[tokens(10)])).granted  # b: no token counter
    assert await ops.costs(11, 10) == [False, True]


# -- what only Redis has -----------------------------------------------------------------------------


def test_the_token_key_shares_the_record_keys_slot(redis_server: RedisServer, raw: redis.Redis) -> None:
    key = shared_key(Backend("https://eastus.example:8443/base", 1, api_key="the-api-key-123"))
    store = RedisStateStore.from_url(redis_server.url, prefix="{oplb}:")
    store.reserve([key, KEYS[1]], 0, [BudgetReport(key, 3, 1.0, 4, False, 900)], TTL, cost=100)
    store.close()
    names = raw.keys("*")
    assert sorted(names) == sorted(
        [b"{oplb}:" + key.encode() + b"#" + part for part in (b"budget", b"limit", b"tokens")]
    )
    assert raw.get(b"{oplb}:" + key.encode() + b"#tokens") == b"800"
    assert 900 < raw.pttl(b"{oplb}:" + key.encode() + b"#tokens") <= 1000  # it expires by itself
    assert len({key_slot(n) for n in names}) == 1
    assert b"the-api-key-123" not in b" ".join(names + [raw.get(n) or b"" for n in names])


def test_a_token_value_it_did_not_write_is_ignored(store: RedisStateStore, raw: redis.Redis) -> None:
    raw.set(TOKENS, "garbage", px=5000)
    assert store.reserve(KEYS, 0, [], TTL, cost=10).probe  # no token counter: the request rules alone
    assert raw.get(TOKENS) == b"garbage"
    store.report([tokens(50)])  # a report replaces it
    assert [store.reserve(KEYS, 0, [], TTL, cost=30).granted for _ in range(2)] == [True, False]


def test_counts_too_large_for_a_script_are_clamped(store: RedisStateStore) -> None:
    """A token count from a malformed header, beyond what DECRBY takes, must not make the script fail
    (which would leave Redis alone for a backoff, every request granted locally)."""
    store.report([tokens(10**30, requests=1)])
    assert store.reserve(KEYS, 0, [], TTL, cost=10**30).granted
    refused = store.reserve(KEYS, 0, [], TTL, cost=1)
    assert not refused.granted  # Redis answered: its one request is taken
    assert near(refused.wait_s, 5.0)


def test_a_negative_cost_counts_as_none(store: RedisStateStore, raw: redis.Redis) -> None:
    store.report([tokens(10)])
    assert store.reserve(KEYS, 0, [], TTL, cost=-5).granted
    assert raw.get(TOKENS) == b"10"


# -- the same answers as MemoryStateStore ------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_random_calls_get_the_memory_stores_answers(redis_server: RedisServer, seed: int) -> None:
    """Reservations with costs, reports of requests and tokens (riding along or not, estimated or not,
    unmetered, ``reset_s`` 0) and set-asides at random, on both stores; windows of 20-60 s, so none
    ends during the test."""
    rng = random.Random(seed)
    keys = [f"https://k{i}:443/" for i in range(3)]
    store = RedisStateStore.from_url(redis_server.url, prefix=f"tok{seed}:")

    def report() -> BudgetReport:
        remaining = rng.choice([None, 0, 2, 5, 8])
        reset = rng.choice([0.0, 20.0, 40.0, 60.0])
        left = rng.choice([None, None, 0, 100, 300, 1000])
        return BudgetReport(
            rng.choice(keys), remaining, reset, rng.choice([None, 6]), rng.random() < 0.3, left
        )

    def record() -> SharedState:
        return SharedState(rng.uniform(20, 60), "throttled", 0)

    answer_as_memory_does(store, rng, keys, report, record, set_aside_p=0.03, costs=(0, 50, 100, 250))
    store.close()


# -- racing reservers never take more tokens than a counter holds -------------------------------------


def test_threads_racing_never_overdraw_the_tokens(redis_server: RedisServer) -> None:
    first = RedisStateStore.from_url(redis_server.url)
    first.report([tokens(500, 30.0, requests=1000)])
    first.close()
    assert (
        granted_by_racing_threads(redis_server.url, lambda store: store.reserve(KEYS, 0, [], TTL, cost=10))
        == 50
    )


async def test_tasks_racing_never_overdraw_the_tokens(redis_server: RedisServer) -> None:
    store = RedisStateStore.from_url(redis_server.url, socket_timeout=1.0)
    await store.areport([tokens(500, 30.0, requests=1000)])
    answers = await asyncio.gather(*(store.areserve(KEYS, 0, [], TTL, cost=10) for _ in range(200)))
    await store.aclose()
    assert sum(a.granted for a in answers) == 50
    assert all(a.wait_s > 29.0 for a in answers if not a.granted)
