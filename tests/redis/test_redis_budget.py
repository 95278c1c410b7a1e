"""RedisStateStore as a BudgetStore, on a real redis-server: MemoryStateStore's semantics, atomically.

The semantics tests of ``tests/unit/test_shared_budget.py`` run here against Redis (on the server's
clock, so the windows are real and short), then the same random sequences of calls are made on both
stores and must get the same answers. Racing reservers (threads, tasks, processes) never get more
requests than a counter holds; balancers in front of a backend with a fixed budget per window never
overspend it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from typing import TYPE_CHECKING

import httpx
import pytest
from _redis_support import URL, answer_as_memory_does, granted_by_racing_threads, script_reports
from redis.crc import key_slot

from _windowed_backend import WindowedBackend
from openai_priority_loadbalancer import (
    Backend,
    BudgetReport,
    BudgetStore,
    LoadBalancer,
    SharedState,
    shared_key,
)
from openai_priority_loadbalancer._store import PROBE_TTL_S
from openai_priority_loadbalancer.redis import RedisStateStore

if TYPE_CHECKING:
    from _redis_support import RedisServer

    import redis

pytestmark = pytest.mark.redis

KEYS = ["https://a:443", "https://b:443"]
TTL = 10.0  # the probe's


def granted(store: RedisStateStore, n: int, index: int = 0) -> list[bool]:
    return [store.reserve(KEYS, index, [], TTL).granted for _ in range(n)]


def test_it_is_a_budget_store(store: RedisStateStore) -> None:
    assert isinstance(store, BudgetStore)


# -- the semantics of tests/unit/test_shared_budget.py -----------------------------------------------


def test_an_unknown_budget_is_probed_by_one_request(store: RedisStateStore) -> None:
    first = store.reserve(KEYS, 0, [], TTL)
    assert (first.granted, first.probe) == (True, True)
    second = store.reserve(KEYS, 0, [], TTL)
    assert (second.granted, second.probe, second.wait_s) == (False, False, 0.0)  # the probe is out
    assert store.reserve(KEYS, 1, [], TTL).probe  # each backend has its own
    assert first.records == [None, None]


def test_the_probe_holds_the_others_back_for_its_hold_only(store: RedisStateStore, raw: redis.Redis) -> None:
    """Past its hold (a round trip: a 429 would be back by then) the probe was admitted: the others go,
    uncounted, until its answer is reported; unreported, it ends after PROBE_TTL_S."""
    assert store.reserve(KEYS, 0, [], 0.5).probe
    assert PROBE_TTL_S * 1000 - 1000 < raw.pttl(f"oplb:{KEYS[0]}#budget") <= PROBE_TTL_S * 1000
    assert not store.reserve(KEYS, 0, [], 0.5).granted
    time.sleep(0.55)
    released = [store.reserve(KEYS, 0, [], 0.5) for _ in range(5)]
    assert all(r.granted and not r.probe for r in released)
    store.report([BudgetReport(KEYS[0], 1, 5.0, 30)])
    assert granted(store, 2) == [True, False]


def test_a_probe_that_is_never_reported_ends_with_its_ttl(store: RedisStateStore, raw: redis.Redis) -> None:
    assert store.reserve(KEYS, 0, [], 0.05).probe
    raw.pexpire(f"oplb:{KEYS[0]}#budget", 50)  # as if PROBE_TTL_S had nearly passed
    time.sleep(0.07)
    assert store.reserve(KEYS, 0, [], 0.05).probe


def test_a_probe_written_by_an_older_balancer_holds_until_its_ttl(
    store: RedisStateStore, raw: redis.Redis
) -> None:
    raw.set(f"oplb:{KEYS[0]}#budget", "probe", px=10_000)
    assert not store.reserve(KEYS, 0, [], 0.05).granted


def test_reports_set_the_counter_and_reservations_count_it_down(
    store: RedisStateStore, raw: redis.Redis
) -> None:
    assert store.reserve(KEYS, 0, [], TTL).probe
    store.report([BudgetReport(KEYS[0], 2, 0.4, 4)])
    assert granted(store, 3) == [True, True, False]
    time.sleep(0.1)
    refused = store.reserve(KEYS, 0, [], TTL)
    assert not refused.granted
    assert 0.2 < refused.wait_s <= 0.3  # until the window ends
    time.sleep(refused.wait_s + 0.01)
    # The window ended and the limit is known: a new one starts full, no probe, as long as the
    # longest window seen.
    fresh = [store.reserve(KEYS, 0, [], TTL) for _ in range(5)]
    assert [r.granted for r in fresh] == [True, True, True, True, False]
    assert not any(r.probe for r in fresh)
    assert 300 < raw.pttl(f"oplb:{KEYS[0]}#budget") <= 400


def test_a_report_only_ever_lowers_a_live_counter(store: RedisStateStore) -> None:
    store.report([BudgetReport(KEYS[0], 2, 1.0, 10)])
    store.report([BudgetReport(KEYS[0], 9, 1.0, 10)])  # an older answer, arriving late
    assert granted(store, 3) == [True, True, False]


def test_reports_ride_along_with_a_reservation(store: RedisStateStore) -> None:
    result = store.reserve(KEYS, 1, [BudgetReport(KEYS[0], 0, 5.0, 3)], TTL)
    assert result.granted
    refused = store.reserve(KEYS, 0, [], TTL)
    assert not refused.granted
    assert 4.9 < refused.wait_s <= 5.0


def test_an_unmetered_backend_is_never_refused(store: RedisStateStore, raw: redis.Redis) -> None:
    store.report([BudgetReport(KEYS[0], None, 1.0, None)])
    results = [store.reserve(KEYS, 0, [], TTL) for _ in range(100)]
    assert all(r.granted and not r.probe for r in results)
    assert raw.get(f"oplb:{KEYS[0]}#budget") == b"unmetered"
    assert 59_000 < raw.pttl(f"oplb:{KEYS[0]}#budget") <= 60_000  # UNMETERED_S


def test_a_report_with_no_time_left_forgets_the_counter(store: RedisStateStore, raw: redis.Redis) -> None:
    assert store.reserve(KEYS, 0, [], TTL).probe
    store.report([BudgetReport(KEYS[0], 0, 0.0, None)])  # it learned nothing
    assert raw.exists(f"oplb:{KEYS[0]}#budget") == 0
    assert store.reserve(KEYS, 0, [], TTL).probe  # the next request may try


def test_a_backend_set_aside_is_refused_for_as_long(store: RedisStateStore, raw: redis.Redis) -> None:
    store.set_aside(KEYS[0], SharedState(7.0, "throttled", 0))
    result = store.reserve(KEYS, 0, [], TTL)
    assert not result.granted
    assert 6.9 < result.wait_s <= 7.0
    assert result.records[0] is not None
    assert result.records[0].cooling_s == result.wait_s
    assert result.records[1] is None
    assert raw.exists(f"oplb:{KEYS[0]}#budget") == 0  # its budget untouched


def test_the_limit_keeps_the_longest_window_seen(store: RedisStateStore, raw: redis.Redis) -> None:
    store.report([BudgetReport(KEYS[0], 3, 0.3, 4)])
    store.report([BudgetReport(KEYS[0], 2, 0.1, 5)])
    assert raw.get(f"oplb:{KEYS[0]}#limit") == b"5 300000"  # the latest limit, the longest window (µs)
    assert 86_000_000 < raw.pttl(f"oplb:{KEYS[0]}#limit") <= 86_400_000  # a day after the last report
    store.report([BudgetReport(KEYS[0], 1, 0.2, None)])  # no limit said: kept as it was
    assert raw.get(f"oplb:{KEYS[0]}#limit") == b"5 300000"


def test_an_estimated_reset_never_moves_a_counters_end(store: RedisStateStore, raw: redis.Redis) -> None:
    """The backend named no reset: estimates lower a live counter, leave its end where the window's
    probe put it, start no counter of their own and say nothing of the window's length."""
    store.report([BudgetReport(KEYS[0], 0, 1.0, 4, estimated=True)])  # no window under way: dropped
    assert raw.get(f"oplb:{KEYS[0]}#budget") is None
    assert raw.get(f"oplb:{KEYS[0]}#limit") == b"4 0"
    assert store.reserve(KEYS, 0, [], TTL).probe
    store.report([BudgetReport(KEYS[0], 3, 0.5, 4, estimated=True)])  # the probe's answer
    assert 400 < raw.pttl(f"oplb:{KEYS[0]}#budget") <= 500
    later = BudgetReport(KEYS[0], 1, 30.0, 4, estimated=True)
    assert granted(store, 1) == [True]  # 2 left
    assert store.reserve(KEYS, 0, [later], TTL).granted  # lowered to 1, and taken
    assert granted(store, 1) == [False]
    assert raw.pttl(f"oplb:{KEYS[0]}#budget") <= 500  # not moved to 30 s
    assert raw.get(f"oplb:{KEYS[0]}#limit") == b"4 0"
    time.sleep(0.55)
    assert store.reserve(KEYS, 0, [], TTL).probe  # the window ended as the probe's answer said


def test_values_it_did_not_write_are_ignored(store: RedisStateStore, raw: redis.Redis) -> None:
    raw.set(f"oplb:{KEYS[0]}#budget", "garbage", px=5000)
    raw.set(f"oplb:{KEYS[0]}#limit", "lots of them")
    raw.set(f"oplb:{KEYS[0]}", "99999999999999999 sleeping 0 - -")
    assert store.reserve(KEYS, 0, [], TTL).probe  # no counter, no limit, no record: a probe


def test_the_keys_share_the_record_keys_slot(redis_server: RedisServer, raw: redis.Redis) -> None:
    """With a hash-tagged prefix every key a reservation names is in one Redis Cluster slot."""
    key = shared_key(Backend("https://eastus.example:8443/base", 1, api_key="the-api-key-123"))
    store = RedisStateStore.from_url(redis_server.url, prefix="{oplb}:")
    store.reserve([key, KEYS[1]], 0, [BudgetReport(KEYS[1], 3, 1.0, 4)], TTL)
    store.close()
    names = raw.keys("*")
    assert sorted(names) == sorted(
        [
            b"{oplb}:" + key.encode() + b"#budget",
            b"{oplb}:" + KEYS[1].encode() + b"#budget",
            b"{oplb}:" + KEYS[1].encode() + b"#limit",
        ]
    )
    assert len({key_slot(n) for n in names}) == 1
    assert b"the-api-key-123" not in b" ".join(names + [raw.get(n) or b"" for n in names])


async def test_the_async_forms_do_the_same(redis_server: RedisServer) -> None:
    store = RedisStateStore.from_url(redis_server.url)
    first = await store.areserve(KEYS, 0, [], TTL)
    second = await store.areserve(KEYS, 0, [], TTL)
    await store.areport([BudgetReport(KEYS[0], 2, 1.0, 4)])
    counted = [(await store.areserve(KEYS, 0, [], TTL)).granted for _ in range(3)]
    await store.aset_aside(KEYS[1], SharedState(5.0, "failed", 2))
    aside = await store.areserve(KEYS, 1, [], TTL)
    await store.areport([])  # nothing to apply: no call
    await store.aclose()
    assert (first.granted, first.probe) == (True, True)
    assert (second.granted, second.wait_s) == (False, 0.0)
    assert counted == [True, True, False]
    assert not aside.granted
    assert 4.9 < aside.wait_s <= 5.0
    assert aside.records[1] is not None
    assert aside.records[1].failures == 2


def test_a_report_without_a_finite_reset_is_skipped(store: RedisStateStore, raw: redis.Redis) -> None:
    store.report([BudgetReport(KEYS[0], 1, float("inf"), 4), BudgetReport(KEYS[1], 1, float("nan"), 4)])
    assert store.reserve(KEYS, 0, [BudgetReport(KEYS[0], 1, float("nan"), 4)], TTL).probe
    assert sorted(raw.keys("*")) == [f"oplb:{KEYS[0]}#budget".encode()]  # the probe's, nothing else


def test_an_index_is_a_list_index(store: RedisStateStore) -> None:
    assert store.reserve(KEYS, -1, [], TTL).probe  # the last key: b
    assert not store.reserve(KEYS, 1, [], TTL).granted
    with pytest.raises(IndexError):
        store.reserve(KEYS, 2, [], TTL)


# -- the same answers as MemoryStateStore ------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_random_calls_get_the_memory_stores_answers(redis_server: RedisServer, seed: int) -> None:
    """Reservations, reports (riding along or not) and set-asides at random, on both stores; windows
    of 20-60 s, so none ends during the test, and ``reset_s`` 0 sometimes (forget)."""
    rng = random.Random(seed)
    keys = [f"https://k{i}:443/" for i in range(3)]
    store = RedisStateStore.from_url(redis_server.url, prefix=f"diff{seed}:")

    def report() -> BudgetReport:
        remaining = rng.choice([None, 0, 1, 2, 3, 5, 8])
        reset = rng.choice([0.0, 20.0, 40.0, 60.0])
        return BudgetReport(rng.choice(keys), remaining, reset, rng.choice([None, 3, 6]), rng.random() < 0.3)

    def record() -> SharedState:
        return SharedState(rng.uniform(20, 60), rng.choice(["throttled", "failed"]), rng.randrange(3))

    answer_as_memory_does(store, rng, keys, report, record, set_aside_p=0.05)
    store.close()


# -- racing reservers never get more than a counter holds -------------------------------------------


def _counter(store: RedisStateStore, n: int) -> None:
    store.report([BudgetReport(KEYS[0], n, 30.0, 100)])


def test_threads_racing_never_overdraw(redis_server: RedisServer) -> None:
    first = RedisStateStore.from_url(redis_server.url)
    _counter(first, 50)
    first.close()
    assert granted_by_racing_threads(redis_server.url, lambda store: store.reserve(KEYS, 0, [], TTL)) == 50


async def test_tasks_racing_never_overdraw(redis_server: RedisServer) -> None:
    store = RedisStateStore.from_url(redis_server.url, socket_timeout=1.0)
    _counter(store, 50)
    answers = await asyncio.gather(*(store.areserve(KEYS, 0, [], TTL) for _ in range(200)))
    await store.aclose()
    store.close()
    assert sum(a.granted for a in answers) == 50
    assert all(a.wait_s > 29.0 for a in answers if not a.granted)


def test_processes_racing_never_overdraw(redis_server: RedisServer, worker_env: dict[str, str]) -> None:
    """8 processes make 20 reservations each, all at once, of a counter holding 50: exactly 50 granted."""
    with contextlib.closing(RedisStateStore.from_url(redis_server.url)) as store:
        _counter(store, 50)
    go_at = time.time() + 1.5  # imports done and connected, every process starts at this moment
    argv = [redis_server.url, KEYS[0], str(go_at), "20"]
    reports = script_reports("_reserver.py", [argv] * 8, worker_env, timeout=30)
    assert sum(r["granted"] for r in reports) == 50
    assert sum(r["refused"] for r in reports) == 8 * 20 - 50


# -- balancers sharing a budget never overspend a backend's window ----------------------------------


def _run_balancers(redis_server: RedisServer | None, backend: WindowedBackend, seconds: float) -> None:
    """4 balancers, each with a store of its own (as in 4 processes), on 2 threads each, sending as
    fast as they can for ``seconds``; b takes what a cannot."""
    backends = [Backend("a.example", 1), Backend("b.example", 2)]
    stores = [RedisStateStore.from_url(redis_server.url) if redis_server else None for _ in range(4)]
    lbs = [
        LoadBalancer(backends, transport=httpx.MockTransport(backend), state=s, max_wait_s=1.0)
        for s in stores
    ]
    request = httpx.Request("POST", URL, content=b"{}")
    end = time.monotonic() + seconds
    failures: list[int] = []

    def run(lb: LoadBalancer) -> None:
        while time.monotonic() < end:
            status = lb.handle_request(request).status_code
            if status != 200:
                failures.append(status)
            time.sleep(0.002)

    threads = [threading.Thread(target=run, args=(lb,)) for lb in lbs for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        if s is not None:
            s.close()
    assert failures == []


def test_without_sharing_budgets_balancers_overspend_windows() -> None:
    backend = WindowedBackend(time.monotonic, limit=5, window_s=0.25)
    _run_balancers(None, backend, 1.0)
    assert backend.throttled > 3  # the control


def test_balancers_sharing_budgets_on_redis_never_overspend_a_window(redis_server: RedisServer) -> None:
    backend = WindowedBackend(time.monotonic, limit=5, window_s=0.25)
    _run_balancers(redis_server, backend, 1.0)
    assert backend.throttled == 0
    assert sum(backend.served.values()) >= 5 * 3  # and the backend's capacity is used
