"""Failing open: Redis down, slow, refusing, killed mid-run and back. Requests never fail; one warning.

The store's backoff runs on a hand-driven clock, so "after the backoff" takes no sleeping; the
backends are an in-memory ``MockTransport``, so a run of 200 requests takes a fraction of a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import httpx
import pytest
from _redis_support import LOGGER, URL, Backends, FakeClock, RedisServer, records, text_of

import redis
from openai_priority_loadbalancer import (
    AsyncLoadBalancer,
    Backend,
    BudgetReport,
    LoadBalancer,
    Reservation,
    SharedState,
)
from openai_priority_loadbalancer.redis import _MAX_CALLS, RedisStateStore

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.redis

BACKENDS = [Backend("a.example", 1), Backend("b.example", 1), Backend("c.example", 2)]
KEY_A = "://a.example:"
KEY_B = "://b.example:"
# What the balancers share of the deployment URL names is kept under the backend's key and its name.
LANE = "#deployment=gpt-4o"


class Listener:
    """A TCP port that accepts connections and then either drops them at once or never answers.

    ``accepted`` counts the connections: it shows when the store leaves Redis alone.
    """

    def __init__(self, *, answer: bool) -> None:
        self.drop = answer  # drop at once: the client sees its connection reset
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.held: list[socket.socket] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _run(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            if self.drop:
                conn.close()
            else:
                self.held.append(conn)

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()
        for conn in self.held:
            conn.close()
        self.sock.close()


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    return caplog


@pytest.fixture
def dropping() -> Iterator[Listener]:
    listener = Listener(answer=True)
    yield listener
    listener.close()


@pytest.fixture
def silent() -> Iterator[Listener]:
    listener = Listener(answer=False)
    yield listener
    listener.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- Redis unavailable from the start ------------------------------------------------------------


def test_nothing_listening_fails_open_with_one_warning(log: pytest.LogCaptureFixture) -> None:
    store = RedisStateStore.from_url(f"redis://127.0.0.1:{_free_port()}/0")
    lb = LoadBalancer(BACKENDS, transport=httpx.MockTransport(Backends()), state=store)
    with httpx.Client(transport=lb) as client:
        statuses = [client.post(URL, json={}).status_code for _ in range(50)]
    store.close()
    assert statuses == [200] * 50
    warnings = records(log, logging.WARNING)
    assert len(warnings) == 1
    assert "shared state store unavailable" in warnings[0].getMessage()
    assert "using local state" in warnings[0].getMessage()
    assert "Redis unavailable" in repr(store)


def test_the_backoff_leaves_redis_alone_then_one_call_retries(
    dropping: Listener, log: pytest.LogCaptureFixture
) -> None:
    """0.5 s, then 1 s, 2 s...: no connection in between; one probe each time, the others skip."""
    clock = FakeClock()
    store = RedisStateStore.from_url(dropping.url, clock=clock)
    keys = [KEY_A]
    assert store.load(keys) == [None]
    time.sleep(0.02)
    # A connection dropped at once is retried once, at once (a pooled connection may be stale).
    per_call = tried = dropping.accepted
    assert per_call == 2
    for _ in range(100):
        assert store.load(keys) == [None]
        store.set_aside(KEY_A, SharedState(1.0, "throttled", 0))
        store.clear_failure(KEY_A)
    assert dropping.accepted == tried  # within the backoff: not even a connection
    for wait, expected_backoff in ((0.5, "1.0"), (1.0, "2.0"), (2.0, "4.0")):
        clock.advance(wait - 0.01)
        assert store.load(keys) == [None]
        assert dropping.accepted == tried, "too early"
        clock.advance(0.01)
        for _ in range(20):
            assert store.load(keys) == [None]  # the first one probes; the next ones skip again
        time.sleep(0.02)  # let the listener count the probe's connection
        assert dropping.accepted == tried + per_call
        tried = dropping.accepted
        retries = records(log, logging.DEBUG, "still unavailable")
        assert f"retrying in {expected_backoff} s" in retries[-1].getMessage()
    store.close()
    assert len(records(log, logging.WARNING)) == 1


def test_the_backoff_stops_doubling_at_its_maximum(dropping: Listener, log: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    store = RedisStateStore.from_url(dropping.url, clock=clock, backoff_s=0.5, backoff_max_s=3.0)
    store.load([KEY_A])
    for _ in range(6):
        clock.advance(30.0)
        store.load([KEY_A])
    store.close()
    assert "retrying in 3.0 s" in records(log, logging.DEBUG, "still unavailable")[-1].getMessage()


def test_a_silent_redis_costs_one_timeout_then_nothing(
    silent: Listener, log: pytest.LogCaptureFixture
) -> None:
    """A Redis that accepts and never answers: the first request waits one 50 ms timeout, no more."""
    store = RedisStateStore.from_url(silent.url)
    lb = LoadBalancer(BACKENDS, transport=httpx.MockTransport(Backends()), state=store)
    with httpx.Client(transport=lb) as client:
        durations = []
        for _ in range(30):
            start = time.perf_counter()
            assert client.post(URL, json={}).status_code == 200
            durations.append(time.perf_counter() - start)
            if len(durations) == 1:
                connections = silent.accepted
    store.close()
    assert 0.04 < durations[0] < 0.5, durations[0]
    # The next ones skip Redis during the backoff: no connection, no wait.
    assert silent.accepted == connections
    assert sum(durations[1:]) < 0.3, durations
    assert "TimeoutError" in records(log, logging.WARNING)[0].getMessage()
    assert len(records(log, logging.WARNING)) == 1


async def test_a_silent_redis_costs_async_requests_one_timeout(
    silent: Listener, log: pytest.LogCaptureFixture
) -> None:
    store = RedisStateStore.from_url(silent.url)
    lb = AsyncLoadBalancer(BACKENDS, transport=httpx.MockTransport(Backends()), state=store)
    async with httpx.AsyncClient(transport=lb) as client:
        start = time.perf_counter()
        responses = await asyncio.gather(*(client.post(URL, json={}) for _ in range(50)))
        elapsed = time.perf_counter() - start
    await store.aclose()
    assert [r.status_code for r in responses] == [200] * 50
    assert elapsed < 0.5, elapsed  # one timeout, shared by the tasks that were waiting on it
    assert len(records(log, logging.WARNING)) == 1


# -- Redis killed in the middle of a run, and restarted ----------------------------------------------


def _phases(
    server: RedisServer, clock: FakeClock, handler: Backends, observer: RedisStateStore
) -> Iterator[int]:
    """Drive a run of 200 requests in three phases; yields how many requests to send in each.

    Redis up: 60 requests, b answers a 429 that is shared. Redis killed: 80 requests, a answers a
    short 429 that stays local. Redis restarted (empty) and the backoff over: one request, whose
    reservation is the store's retry, then 59 more, where a answers a 429 that is shared again.
    (Requests sent while that retry is out skip Redis, as every call does until it answers: a 429
    met meanwhile would stay local, which is why the retry goes alone.)
    """
    handler.throttle("b.example", 5.0)
    yield 60
    assert handler.hits["b.example"] >= 1
    assert _shared(observer, KEY_B + LANE), "the 429 from b was shared"
    server.kill()
    handler.throttle("a.example", 0.05)
    yield 80
    server.start()  # same port, empty
    clock.advance(0.5)  # the store's backoff is over: its next call tries Redis again
    time.sleep(0.06)  # a's local cooldown is over too
    yield 1
    handler.throttle("a.example", 5.0)
    yield 59
    assert not handler.pending_429, "every 429 was answered"
    assert _shared(observer, KEY_A + LANE), "sharing resumed: the new 429 from a reached Redis"
    with contextlib.closing(redis.Redis(port=server.port)) as raw:
        assert raw.keys("*#budget"), "reservations resumed: the restarted Redis counts budgets again"


def _shared(store: RedisStateStore, key: str) -> bool:
    record = store.load([key])[0]
    return record is not None and record.cooling_s > 4.0


def _other_process_avoids_a(server: RedisServer, handler: Backends) -> None:
    """A balancer of its own, as in another process, sends nothing to a: it learnt a's 429 from Redis."""
    before = handler.hits["a.example"]
    store = RedisStateStore.from_url(server.url)
    other = LoadBalancer(BACKENDS, transport=httpx.MockTransport(handler), state=store)
    with httpx.Client(transport=other) as client:
        hosts = {client.post(URL, json={}).json()["host"] for _ in range(10)}
    store.close()
    assert hosts == {"b.example"}  # b's 429 was written to the Redis that died; a's after the restart
    assert handler.hits["a.example"] == before


def _check_logs(log: pytest.LogCaptureFixture) -> None:
    warnings = records(log, logging.WARNING)
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "shared state store unavailable" in warnings[0].getMessage()
    assert len(records(log, logging.INFO, "sharing resumed")) == 1


def test_redis_killed_mid_run_sync(redis_server: RedisServer, log: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    store = RedisStateStore.from_url(redis_server.url, clock=clock)
    observer = RedisStateStore.from_url(redis_server.url)
    handler = Backends()
    lb = LoadBalancer(BACKENDS, transport=httpx.MockTransport(handler), state=store)
    statuses: list[int] = []
    with httpx.Client(transport=lb) as client, ThreadPoolExecutor(8) as pool:
        for count in _phases(redis_server, clock, handler, observer):
            statuses += pool.map(lambda _: client.post(URL, json={}).status_code, range(count))
    assert statuses == [200] * 200
    _check_logs(log)
    _other_process_avoids_a(redis_server, handler)
    store.close()
    observer.close()


async def test_redis_killed_mid_run_async(redis_server: RedisServer, log: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    store = RedisStateStore.from_url(redis_server.url, clock=clock)
    observer = RedisStateStore.from_url(redis_server.url)
    handler = Backends()
    lb = AsyncLoadBalancer(BACKENDS, transport=httpx.MockTransport(handler), state=store)
    statuses: list[int] = []
    async with httpx.AsyncClient(transport=lb) as client:
        gate = asyncio.Semaphore(8)

        async def one() -> int:
            async with gate:
                return (await client.post(URL, json={})).status_code

        for count in _phases(redis_server, clock, handler, observer):
            statuses += await asyncio.gather(*(one() for _ in range(count)))
    assert statuses == [200] * 200
    _check_logs(log)
    _other_process_avoids_a(redis_server, handler)
    await store.aclose()
    observer.close()


# -- reservations while Redis is unavailable -----------------------------------------------------


def test_reservations_are_granted_locally_while_redis_is_down(
    dropping: Listener, log: pytest.LogCaptureFixture
) -> None:
    """Granted, counted nowhere, no record: the balancer decides on its local state. One warning, and
    during the backoff not even a connection."""
    clock = FakeClock()
    store = RedisStateStore.from_url(dropping.url, clock=clock)
    keys = [KEY_A, KEY_B]
    first = store.reserve(keys, 1, [BudgetReport(KEY_A, 3, 1.0, 4)], 10.0)
    time.sleep(0.02)
    tried = dropping.accepted
    answers = [store.reserve(keys, 0, [], 10.0) for _ in range(50)]
    store.report([BudgetReport(KEY_A, 0, 1.0, 4)])
    assert dropping.accepted == tried
    store.close()
    assert first == Reservation(True, False, 0.0, [None, None])
    assert all(a == first for a in answers)
    assert len(records(log, logging.WARNING)) == 1


async def test_async_reservations_are_granted_locally_while_redis_is_down(
    log: pytest.LogCaptureFixture,
) -> None:
    store = RedisStateStore.from_url(f"redis://127.0.0.1:{_free_port()}/0")
    answers = [await store.areserve([KEY_A], 0, [], 10.0) for _ in range(20)]
    await store.areport([BudgetReport(KEY_A, 0, 1.0, 4)])
    await store.aclose()
    assert all(a == Reservation(True, False, 0.0, [None]) for a in answers)
    assert len(records(log, logging.WARNING)) == 1


@pytest.mark.parametrize("first", ["report", "set_aside"])
def test_a_write_meeting_redis_down_first_warns_once(
    first: str, dropping: Listener, log: pytest.LogCaptureFixture
) -> None:
    store = RedisStateStore.from_url(dropping.url)
    if first == "report":
        store.report([BudgetReport(KEY_A, 0, 1.0, 4)])
    else:
        store.set_aside(KEY_A, SharedState(1.0, "throttled", 0))
    assert store.reserve([KEY_A], 0, [], 10.0) == Reservation(True, False, 0.0, [None])
    store.close()
    assert len(records(log, logging.WARNING)) == 1


@pytest.mark.parametrize("first", ["report", "set_aside"])
async def test_an_async_write_meeting_redis_down_first_warns_once(
    first: str, dropping: Listener, log: pytest.LogCaptureFixture
) -> None:
    store = RedisStateStore.from_url(dropping.url)
    if first == "report":
        await store.areport([BudgetReport(KEY_A, 0, 1.0, 4)])
    else:
        await store.aset_aside(KEY_A, SharedState(1.0, "throttled", 0))
    assert await store.areserve([KEY_A], 0, [], 10.0) == Reservation(True, False, 0.0, [None])
    await store.aclose()
    assert len(records(log, logging.WARNING)) == 1


def test_a_reservation_that_cannot_get_a_turn_goes_on_locally(redis_server: RedisServer) -> None:
    """Every slot busy for longer than a call may take: the request goes on without the store, and
    without calling Redis unavailable."""
    store = RedisStateStore.from_url(redis_server.url, socket_timeout=0.01)
    for _ in range(_MAX_CALLS):
        store._slots.acquire()
    start = time.perf_counter()
    answer = store.reserve([KEY_A], 0, [], 10.0)
    store.report([BudgetReport(KEY_A, 0, 1.0, 4)])
    elapsed = time.perf_counter() - start
    for _ in range(_MAX_CALLS):
        store._slots.release()
    assert answer == Reservation(True, False, 0.0, [None])
    assert 0.03 < elapsed < 0.5  # two waits of 2 x (connect + read timeouts)
    assert store.reserve([KEY_A], 0, [], 10.0).probe  # Redis was never called unavailable
    store.close()


async def test_an_async_reservation_that_cannot_get_a_turn_goes_on_locally(redis_server: RedisServer) -> None:
    store = RedisStateStore.from_url(redis_server.url, socket_timeout=0.01)
    slots = store._loop_state().slots
    for _ in range(_MAX_CALLS):
        await slots.acquire()
    answer = await store.areserve([KEY_A], 0, [], 10.0)
    await store.areport([BudgetReport(KEY_A, 0, 1.0, 4)])
    for _ in range(_MAX_CALLS):
        slots.release()
    assert answer == Reservation(True, False, 0.0, [None])
    assert (await store.areserve([KEY_A], 0, [], 10.0)).probe
    await store.aclose()


def test_no_warning_while_redis_works(redis_server: RedisServer, log: pytest.LogCaptureFixture) -> None:
    store = RedisStateStore.from_url(redis_server.url)
    lb = LoadBalancer(BACKENDS, transport=httpx.MockTransport(Backends()), state=store)
    with httpx.Client(transport=lb) as client:
        for _ in range(20):
            client.post(URL, json={})
    store.close()
    assert records(log, logging.WARNING) == []
    assert "sharing" in repr(store)


# -- no secret in logs or repr --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "redis://default:Pa55-w0rd-secret@127.0.0.1:{port}/0",
        "redis://:Pa55-w0rd-secret@127.0.0.1:{port}/0",
        "redis://Pa55-w0rd-secret@127.0.0.1:{port}/0",
        "redis://127.0.0.1:{port}/0?password=Pa55-w0rd-secret",
        "redis://user:Pa55%2Dw0rd%2Dsecret@127.0.0.1:{port}/0",
    ],
)
def test_no_password_in_repr_or_logs(url: str, dropping: Listener, log: pytest.LogCaptureFixture) -> None:
    store = RedisStateStore.from_url(url.format(port=dropping.port))
    assert store.load([KEY_A]) == [None]
    store.close()
    text = repr(store) + "\n" + text_of(log)
    assert "shared state store unavailable" in text
    assert "127.0.0.1" in text
    for secret in ("Pa55-w0rd-secret", "Pa55%2Dw0rd%2Dsecret"):
        assert secret not in text


def test_a_wrong_password_is_not_logged(
    redis_binary: str, tmp_path: object, log: pytest.LogCaptureFixture
) -> None:
    from pathlib import Path

    from _redis_support import RedisServer

    server = RedisServer(redis_binary, Path(str(tmp_path)), password="right-Passw0rd-123").start()
    try:
        good = RedisStateStore.from_url(f"redis://:right-Passw0rd-123@127.0.0.1:{server.port}/0")
        good.set_aside(KEY_A, SharedState(5.0, "throttled", 0))
        assert good.load([KEY_A])[0] is not None
        bad = RedisStateStore.from_url(f"redis://default:wrong-Passw0rd-456@127.0.0.1:{server.port}/0")
        assert bad.load([KEY_A]) == [None]
        good.close()
        bad.close()
    finally:
        server.stop()
    text = repr(good) + repr(bad) + text_of(log)
    assert len(records(log, logging.WARNING)) == 1
    assert "right-Passw0rd-123" not in text
    assert "wrong-Passw0rd-456" not in text


# -- out of memory: reads work, writes are refused ---------------------------------------------------


def _out_of_memory(client: redis.Redis) -> None:
    """Leave the server over its maxmemory with noeviction: writes fail with OOM, reads work."""
    client.config_set("maxmemory-policy", "noeviction")
    for i in range(2000):
        client.set(f"filler:{i}", "x" * 1000)
    client.config_set("maxmemory", str(int(client.info("memory")["used_memory"]) // 2))
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        client.set("one-more", "x")


def test_out_of_memory_warns_once_until_writes_work_again(
    redis_server: RedisServer, log: pytest.LogCaptureFixture
) -> None:
    """Under noeviction out of memory a read that worked counted as recovery while writes still failed:
    the WARNING / "reachable again" pair came back every backoff. Now: one WARNING, and one INFO once a
    write works again."""
    clock = FakeClock()
    store = RedisStateStore.from_url(redis_server.url, clock=clock)
    report = [BudgetReport(KEY_A, 3, 5.0, 10)]
    with contextlib.closing(redis.Redis(port=redis_server.port)) as client:
        _out_of_memory(client)
        for _ in range(6):
            store.reserve([KEY_A], 0, report, 0.5)  # writes: refused
            clock.advance(40.0)  # past any backoff
            assert store.load([KEY_A]) == [None]  # a read: it works
            clock.advance(40.0)
        assert len(records(log, logging.WARNING)) == 1
        assert records(log, logging.INFO, "reachable again") == []
        client.config_set("maxmemory", "0")
        clock.advance(40.0)
        store.load([KEY_A])  # a read says nothing yet
        assert records(log, logging.INFO, "reachable again") == []
        clock.advance(40.0)
        store.report(report)  # a write works: sharing resumes
        assert len(records(log, logging.INFO, "reachable again")) == 1
        assert store.reserve([KEY_A], 0, [], 0.5).granted
        assert client.get(f"oplb:{KEY_A}#budget") == b"2"
    store.close()
    assert len(records(log, logging.WARNING)) == 1
