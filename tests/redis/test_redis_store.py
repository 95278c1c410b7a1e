"""RedisStateStore against a real redis-server: what it stores, how writers race, what one load costs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import httpx
import pytest
import redis.asyncio
from _redis_support import URL, Backends, commands_between, script_reports

import redis
from openai_priority_loadbalancer import (
    AsyncLoadBalancer,
    Backend,
    BudgetReport,
    LoadBalancer,
    SharedState,
    shared_key,
)
from openai_priority_loadbalancer.redis import _MAX_CALLS, RedisStateStore

if TYPE_CHECKING:
    from collections.abc import Callable

    from _redis_support import RedisServer

pytestmark = pytest.mark.redis

KEY = "https://eastus.example:443/"
BACKENDS = [Backend("a.example", 1), Backend("b.example", 1), Backend("c.example", 2)]


# -- what a record holds -------------------------------------------------------------------------


def test_nothing_stored_loads_as_none(store: RedisStateStore) -> None:
    assert store.load([KEY, "https://other:443/"]) == [None, None]
    assert store.load([]) == []


def test_a_record_round_trips(store: RedisStateStore, raw: redis.Redis) -> None:
    store.set_aside(KEY, SharedState(5.0, "exhausted", 0, 0, 1200))
    store.set_aside("https://b:443/", SharedState(2.0, "failed", 3))
    a, b, none = store.load([KEY, "https://b:443/", "https://c:443/"])

    assert a is not None
    assert b is not None
    assert none is None
    assert 4.9 < a.cooling_s <= 5.0
    assert (a.reason, a.failures, a.remaining_requests, a.remaining_tokens) == ("exhausted", 0, 0, 1200)
    assert 1.9 < b.cooling_s <= 2.0
    assert (b.reason, b.failures, b.remaining_requests, b.remaining_tokens) == ("failed", 3, None, None)
    # One key per backend: the prefix and the backend's key, nothing else.
    assert sorted(raw.keys("*")) == [b"oplb:https://b:443/", b"oplb:" + KEY.encode()]


def test_the_ttl_is_the_cooldown_and_an_expired_record_is_gone(
    store: RedisStateStore, raw: redis.Redis
) -> None:
    store.set_aside(KEY, SharedState(0.08, "throttled", 0))
    assert 0 < raw.pttl("oplb:" + KEY) <= 80
    assert store.load([KEY])[0] is not None
    time.sleep(0.1)
    assert store.load([KEY]) == [None]
    assert raw.exists("oplb:" + KEY) == 0


def test_a_prefix_keeps_stores_apart(redis_server: RedisServer, raw: redis.Redis) -> None:
    one = RedisStateStore.from_url(redis_server.url, prefix="{app1}:")
    two = RedisStateStore.from_url(redis_server.url, prefix="{app2}:")
    one.set_aside(KEY, SharedState(5.0, "throttled", 0))
    assert two.load([KEY]) == [None]
    assert raw.keys("*") == [b"{app1}:" + KEY.encode()]
    one.close()
    two.close()


def test_keys_name_no_credential(store: RedisStateStore, raw: redis.Redis) -> None:
    backend = Backend("https://eastus.example:8443/base", 1, api_key="the-api-key-123")
    key = shared_key(backend)
    store.set_aside(key, SharedState(5.0, "throttled", 0))
    stored = b" ".join(raw.keys("*") + [raw.get(k) or b"" for k in raw.keys("*")])
    assert stored.startswith(b"oplb:https://eastus.example:8443/base ")
    assert b"the-api-key-123" not in stored


def test_values_it_did_not_write_are_ignored(store: RedisStateStore, raw: redis.Redis) -> None:
    raw.set("oplb:" + KEY, "garbage")
    raw.set("oplb:https://b:443/", "99999999999999999 sleeping 0 - -")
    raw.hset("oplb:https://c:443/", "a", "b")  # another type: MGET says nil
    assert store.load([KEY, "https://b:443/", "https://c:443/"]) == [None, None, None]


# -- keep the later deadline ------------------------------------------------------------------------


def test_a_shorter_cooldown_never_replaces_a_longer_one(store: RedisStateStore) -> None:
    store.set_aside(KEY, SharedState(10.0, "failed", 4))
    store.set_aside(KEY, SharedState(1.0, "throttled", 0, 7))
    record = store.load([KEY])[0]
    assert record is not None
    assert record.cooling_s > 9.0
    assert (record.reason, record.failures, record.remaining_requests) == ("failed", 4, None)


def test_a_longer_cooldown_replaces_a_shorter_one(store: RedisStateStore, raw: redis.Redis) -> None:
    store.set_aside(KEY, SharedState(1.0, "throttled", 0))
    store.set_aside(KEY, SharedState(10.0, "failed", 2))
    record = store.load([KEY])[0]
    assert record is not None
    assert record.cooling_s > 9.0
    assert (record.reason, record.failures) == ("failed", 2)
    assert raw.pttl("oplb:" + KEY) > 9000


def test_threads_racing_keep_the_longest_cooldown(redis_server: RedisServer) -> None:
    stores = [RedisStateStore.from_url(redis_server.url) for _ in range(8)]
    for round_ in range(10):
        key = f"https://race-{round_}:443/"
        longest = random.randrange(len(stores))
        barrier = threading.Barrier(len(stores))

        def write(
            i: int, key: str = key, longest: int = longest, barrier: threading.Barrier = barrier
        ) -> None:
            barrier.wait()
            for j in range(20):
                if i == longest and j == 10:
                    stores[i].set_aside(key, SharedState(30.0, "failed", 99))
                else:
                    stores[i].set_aside(key, SharedState(random.uniform(0.5, 5.0), "throttled", 0, i))

        threads = [threading.Thread(target=write, args=(i,)) for i in range(len(stores))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        record = stores[0].load([key])[0]
        assert record is not None
        assert (record.reason, record.failures) == ("failed", 99), round_
        assert record.cooling_s > 29.0
    for s in stores:
        s.close()


def test_processes_racing_keep_the_longest_cooldown(
    redis_server: RedisServer, worker_env: dict[str, str]
) -> None:
    """Four processes write short cooldowns to one key in a tight loop; one writes a long one among them."""
    go_at = time.time() + 1.0  # every process starts writing at this moment, imports done
    argvs = [[redis_server.url, KEY, str(i), str(i == 2), str(go_at)] for i in range(4)]
    reports = script_reports("_writer.py", argvs, worker_env, timeout=30)
    assert sum(r["writes"] for r in reports) == 4 * 200
    with contextlib.closing(RedisStateStore.from_url(redis_server.url)) as store:
        record = store.load([KEY])[0]
    assert record is not None
    assert (record.reason, record.failures) == ("failed", 99)
    assert record.cooling_s > 25.0


async def test_tasks_racing_keep_the_longest_cooldown(redis_server: RedisServer) -> None:
    store = RedisStateStore.from_url(redis_server.url)
    cooldowns = [random.uniform(0.5, 5.0) for _ in range(60)] + [30.0]
    random.shuffle(cooldowns)
    await asyncio.gather(
        *(store.aset_aside(KEY, SharedState(c, "failed" if c == 30.0 else "throttled", 0)) for c in cooldowns)
    )
    record = (await store.aload([KEY]))[0]
    await store.aclose()
    assert record is not None
    assert record.reason == "failed"
    assert record.cooling_s > 29.0


# -- clear_failure -----------------------------------------------------------------------------------


def test_clear_failure_drops_only_a_failure(store: RedisStateStore) -> None:
    store.set_aside("https://failed:443/", SharedState(5.0, "failed", 2))
    store.set_aside("https://throttled:443/", SharedState(5.0, "throttled", 0))
    store.set_aside("https://exhausted:443/", SharedState(5.0, "exhausted", 0, 0))
    for key in (
        "https://failed:443/",
        "https://throttled:443/",
        "https://exhausted:443/",
        "https://none:443/",
    ):
        store.clear_failure(key)
    failed, throttled, exhausted, none = store.load(
        ["https://failed:443/", "https://throttled:443/", "https://exhausted:443/", "https://none:443/"]
    )
    assert failed is None
    assert none is None
    assert throttled is not None
    assert throttled.reason == "throttled"
    assert exhausted is not None
    assert exhausted.reason == "exhausted"


async def test_the_async_methods_do_the_same(redis_server: RedisServer) -> None:
    store = RedisStateStore.from_url(redis_server.url)
    await store.aset_aside(KEY, SharedState(5.0, "failed", 1))
    await store.aset_aside(KEY, SharedState(1.0, "throttled", 0))
    await store.aset_aside("https://t:443/", SharedState(5.0, "throttled", 0))
    first = await store.aload([KEY, "https://t:443/"])
    await store.aclear_failure(KEY)
    await store.aclear_failure("https://t:443/")
    second = await store.aload([KEY, "https://t:443/"])
    await store.aclose()
    assert [r.reason if r else None for r in first] == ["failed", "throttled"]
    assert [r.reason if r else None for r in second] == [None, "throttled"]


def test_sync_and_async_sides_of_one_store_share(redis_server: RedisServer) -> None:
    store = RedisStateStore.from_url(redis_server.url)
    store.set_aside(KEY, SharedState(5.0, "throttled", 0))

    async def read() -> list[SharedState | None]:
        try:
            return await store.aload([KEY])
        finally:
            await store.aclose()

    # Two event loops one after the other: each gets its own asyncio client.
    assert asyncio.run(read())[0] is not None
    assert asyncio.run(read())[0] is not None
    store.close()


# -- round trips -------------------------------------------------------------------------------------


def test_one_load_is_one_command(store: RedisStateStore, redis_server: RedisServer) -> None:
    keys = [f"https://b{i}:443/" for i in range(5)]
    store.load(keys)  # connects, loads the script
    before = redis_server.stats()
    for _ in range(50):
        store.load(keys)
    # One command from the client; inside the server its script reads the time and the keys.
    assert commands_between(before, redis_server.stats()) == {"evalsha": 50, "time": 50, "mget": 50}


def test_a_restarted_server_learns_the_script_again(
    store: RedisStateStore, redis_server: RedisServer
) -> None:
    store.set_aside(KEY, SharedState(5.0, "throttled", 0))
    redis_server.stop()
    redis_server.start()  # empty, no script cached
    store.set_aside(KEY, SharedState(5.0, "throttled", 0))
    assert store.load([KEY])[0] is not None


# What the scripts run inside the server; a client sends nothing but EVALSHA (and EVAL once per restart).
SCRIPT_COMMANDS = {"time", "mget", "get", "set", "decr", "del", "pttl"}


def _one_script_per_call(delta: dict[str, int], calls: int) -> None:
    """``delta`` is ``calls`` EVALSHA and nothing else from the client, each script reading the time once."""
    assert delta["evalsha"] == calls, delta
    assert delta["time"] == calls, delta
    assert set(delta) <= SCRIPT_COMMANDS | {"evalsha"}, delta


def _warm_up(send: Callable[[], object], handler: Backends, hosts: int) -> None:
    """Send until every backend has answered once: its window's probe, reported at once, is behind it."""
    for _ in range(200):
        if len(handler.hits) == hosts:
            return
        send()
    raise AssertionError(f"not every backend was chosen: {handler.hits}")


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_a_request_costs_one_round_trip_when_nothing_is_throttled(
    redis_server: RedisServer, flavour: str
) -> None:
    """Through the balancer: one EVALSHA per request (the reservation, which reads every record and
    carries the previous answer's budget report), no other command, with three backends."""
    store = RedisStateStore.from_url(redis_server.url)
    backends = [Backend(f"{h}.example", 1) for h in ("a", "b", "c")]
    handler = Backends()
    if flavour == "sync":
        lb = LoadBalancer(backends, transport=httpx.MockTransport(handler), state=store)
        with httpx.Client(transport=lb) as client:
            _warm_up(lambda: client.post(URL, json={}), handler, 3)
            before = redis_server.stats()
            for _ in range(100):
                assert client.post(URL, json={}).status_code == 200
            after = redis_server.stats()
        store.close()
    else:

        async def run() -> tuple[dict[str, int], dict[str, int]]:
            alb = AsyncLoadBalancer(backends, transport=httpx.MockTransport(handler), state=store)
            async with httpx.AsyncClient(transport=alb) as client:
                for _ in range(200):
                    if len(handler.hits) == 3:
                        break
                    await client.post(URL, json={})
                before = redis_server.stats()
                for _ in range(100):
                    assert (await client.post(URL, json={})).status_code == 200
                after = redis_server.stats()
            await store.aclose()
            return before, after

        before, after = asyncio.run(run())
    assert len(handler.hits) == 3
    _one_script_per_call(commands_between(before, after), 100)


def test_a_throttled_backend_costs_one_write(redis_server: RedisServer) -> None:
    store = RedisStateStore.from_url(redis_server.url)
    handler = Backends()
    backends = [Backend("a.example", 1), Backend("b.example", 2)]
    lb = LoadBalancer(backends, transport=httpx.MockTransport(handler), state=store)
    with httpx.Client(transport=lb) as client:
        client.post(URL, json={})
        store.set_aside("warm-up", SharedState(0.001, "throttled", 0))  # the server learns the script
        # b: known, unmetered (for the deployment URL names)
        store.report([BudgetReport(shared_key(backends[1]) + "#deployment=gpt-4o", None, 60.0, None)])
        handler.throttle("a.example", 5.0)
        before = redis_server.stats()
        assert client.post(URL, json={}).json()["host"] == "b.example"
        after = redis_server.stats()
    store.close()
    # Reserve a, 429 from a, write a's record (keeping the later deadline), reserve b (a's report of
    # its spent window riding along), b answers.
    _one_script_per_call(commands_between(before, after), 3)


def test_threads_loading_at_once_share_answers(store: RedisStateStore, redis_server: RedisServer) -> None:
    store.set_aside(KEY, SharedState(5.0, "throttled", 0))
    store.load([KEY])
    before = redis_server.stats()
    barrier = threading.Barrier(16)
    results: list[SharedState | None] = []

    def run() -> None:
        barrier.wait()
        for _ in range(20):
            results.extend(store.load([KEY]))

    threads = [threading.Thread(target=run) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 320
    assert all(r is not None and r.reason == "throttled" for r in results)
    assert commands_between(before, redis_server.stats())["evalsha"] < 320  # a load under way is shared


def _store_connections(server: RedisServer) -> int:
    server.stats()  # makes the inspecting connection, if not yet made
    return int(server._inspector.info("clients")["connected_clients"]) - 1


async def test_a_burst_of_tasks_on_a_cold_store_opens_few_connections(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """300 requests at once take turns on a few connections for their reservations instead of
    opening 300, more than redis-py's pool of 100. (The timeout is raised here: a loop busy with 300
    requests at once can lag past 50 ms, which an asyncio timeout counts too; under coverage's tracer,
    connecting once lagged past 0.5 s.)"""
    store = RedisStateStore.from_url(redis_server.url, socket_timeout=2.0)
    handler = Backends()
    lb = AsyncLoadBalancer(BACKENDS, transport=httpx.MockTransport(handler), state=store)
    async with httpx.AsyncClient(transport=lb) as client:
        handler.throttle("a.example", 5.0)
        responses = await asyncio.gather(*(client.post(URL, json={}) for _ in range(300)))
    assert [r.status_code for r in responses] == [200] * 300
    # The reservations under way at once (each request makes its own), and a's write.
    assert _store_connections(redis_server) <= _MAX_CALLS + 1
    await store.aclose()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_a_burst_of_threads_opens_few_connections(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    store = RedisStateStore.from_url(redis_server.url, socket_timeout=0.5)
    handler = Backends()
    lb = LoadBalancer(BACKENDS, transport=httpx.MockTransport(handler), state=store)
    with httpx.Client(transport=lb) as client, ThreadPoolExecutor(32) as pool:
        handler.throttle("a.example", 5.0)
        statuses = list(pool.map(lambda _: client.post(URL, json={}).status_code, range(320)))
    assert statuses == [200] * 320
    assert _store_connections(redis_server) <= _MAX_CALLS + 1
    store.close()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


# -- clients given -----------------------------------------------------------------------------------


def test_existing_clients_serve_both_balancers(redis_server: RedisServer) -> None:
    sync_client = redis.Redis(port=redis_server.port, socket_timeout=0.05)
    store = RedisStateStore(sync_client)
    store.set_aside(KEY, SharedState(5.0, "throttled", 0))

    async def read() -> list[SharedState | None]:
        async_client = redis.asyncio.Redis(port=redis_server.port, socket_timeout=0.05)
        astore = RedisStateStore(async_client=async_client, prefix="oplb:")
        AsyncLoadBalancer([Backend("a.example", 1)], transport=httpx.MockTransport(Backends()), state=astore)
        try:
            return await astore.aload([KEY])
        finally:
            await async_client.aclose()

    LoadBalancer([Backend("a.example", 1)], transport=httpx.MockTransport(Backends()), state=store)
    assert asyncio.run(read())[0] is not None
    store.close()  # not the store's: the caller's client stays open
    assert sync_client.ping()
    sync_client.close()
