"""The state-store seam: ``MemoryStateStore`` semantics, and balancers sharing cooldowns through it.

Balancers built with one store (``state=``) share when a backend is set aside and why: a 429 or an
open breaker seen by one makes the others avoid the backend without sending to it, the later deadline
wins, and a breaker closing clears a failure record but never a throttle. A store that raises never
fails a request. The store and the balancers share one fake clock here.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import pytest
from _unit_support import WALL_NOW, A, B, C, MakeLb, post, stats_by_id

from openai_priority_loadbalancer import (
    AsyncLoadBalancer,
    Backend,
    BudgetReport,
    Event,
    LoadBalancer,
    MemoryStateStore,
    SetAsideEvent,
    SharedState,
    StateStore,
    shared_key,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

# The tests' requests name deployment gpt-4o (CALLER_URL): its state is kept under the backend's key
# and the deployment's name.
KEY_A = shared_key(Backend(A, 1)) + "#deployment=gpt-4o"
# A breaker is the backend's, for every deployment: it is shared under the backend's own key.
BREAKER_A = shared_key(Backend(A, 1))


def record_of(store: Any, key: str = KEY_A) -> SharedState | None:
    (record,) = store.load([key])
    return record


class CooldownsOnly(MemoryStateStore):
    """A MemoryStateStore that shares cooldowns and breakers but not budgets: a plain StateStore,
    read with ``load`` before every choice. (A protocol method set to None opts out of the protocol.)"""

    reserve = areserve = report = areport = None  # type: ignore[assignment]


class Recording(CooldownsOnly):
    """A cooldowns-only store that keeps a log of the calls it gets (sync and async alike)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.calls: list[tuple[str, Any]] = []
        self.bound: list[str] = []

    def bind(self, mode: str) -> None:
        self.bound.append(mode)

    def load(self, keys: Sequence[str]) -> list[SharedState | None]:
        self.calls.append(("load", tuple(keys)))
        return super().load(keys)

    def set_aside(self, key: str, record: SharedState) -> None:
        self.calls.append(("set_aside", (key, record.reason)))
        super().set_aside(key, record)

    def clear_failure(self, key: str) -> None:
        self.calls.append(("clear_failure", key))
        super().clear_failure(key)

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


class Broken:
    """A store whose every method raises."""

    def __init__(self, error: type[BaseException] = RuntimeError) -> None:
        self.error = error
        self.calls = 0

    def _fail(self, *args: Any) -> Any:
        self.calls += 1
        raise self.error("the store is down")

    def load(self, keys: Sequence[str]) -> Sequence[SharedState | None]:
        return self._fail(keys)

    async def aload(self, keys: Sequence[str]) -> Sequence[SharedState | None]:
        return self._fail(keys)

    def set_aside(self, key: str, record: SharedState) -> None:
        self._fail(key, record)

    async def aset_aside(self, key: str, record: SharedState) -> None:
        self._fail(key, record)

    def clear_failure(self, key: str) -> None:
        self._fail(key)

    async def aclear_failure(self, key: str) -> None:
        self._fail(key)


# ---------------------------------------------------------------------- MemoryStateStore


def test_memory_store_is_a_state_store() -> None:
    assert isinstance(MemoryStateStore(), StateStore)
    assert isinstance(Broken(), StateStore)


def test_memory_store_records_expire(clock: Any) -> None:
    store = MemoryStateStore(clock=clock)
    assert store.load([KEY_A, "other"]) == [None, None]
    store.set_aside(KEY_A, SharedState(10.0, "throttled", 0, remaining_requests=0))
    clock.advance(4)
    record, other = store.load([KEY_A, "other"])
    assert other is None
    assert record == SharedState(6.0, "throttled", 0, remaining_requests=0)
    clock.advance(6)
    assert store.load([KEY_A]) == [None]


@pytest.mark.parametrize(("first", "second"), [(30.0, 5.0), (5.0, 30.0)])
def test_memory_store_keeps_the_later_deadline(clock: Any, first: float, second: float) -> None:
    store = MemoryStateStore(clock=clock)
    store.set_aside(KEY_A, SharedState(first, "failed", 2))
    store.set_aside(KEY_A, SharedState(second, "throttled", 0))
    record = record_of(store)
    assert record is not None
    assert record.cooling_s == 30.0
    assert record.reason == ("failed" if first > second else "throttled")


def test_memory_store_later_deadline_is_measured_from_each_write(clock: Any) -> None:
    store = MemoryStateStore(clock=clock)
    store.set_aside(KEY_A, SharedState(10.0, "throttled", 0))  # until +10
    clock.advance(8)
    store.set_aside(KEY_A, SharedState(5.0, "failed", 1))  # until +13: later, though shorter
    record = record_of(store)
    assert record is not None
    assert (record.cooling_s, record.reason) == (5.0, "failed")


@pytest.mark.parametrize(
    ("reason", "cleared"), [("failed", True), ("throttled", False), ("exhausted", False)]
)
def test_memory_store_clear_failure_drops_only_failures(clock: Any, reason: Any, cleared: bool) -> None:
    store = MemoryStateStore(clock=clock)
    store.set_aside(KEY_A, SharedState(10.0, reason, 1 if reason == "failed" else 0))
    store.clear_failure(KEY_A)
    store.clear_failure("never-written")
    assert (record_of(store) is None) == cleared


async def test_memory_store_async_forms(clock: Any) -> None:
    store = MemoryStateStore(clock=clock)
    await store.aset_aside(KEY_A, SharedState(10.0, "failed", 3))
    await store.aset_aside(KEY_A, SharedState(1.0, "throttled", 0))
    assert await store.aload([KEY_A]) == [SharedState(10.0, "failed", 3)]
    assert store.load([KEY_A]) == [SharedState(10.0, "failed", 3)]
    await store.aclear_failure(KEY_A)
    assert await store.aload([KEY_A]) == [None]


def test_shared_key_names_the_endpoint_and_no_secret() -> None:
    secret = "sk-SHAREDKEY-SECRET"
    assert shared_key(Backend("https://a.example:8443/ai", 1, api_key=secret)) == "https://a.example:8443/ai"
    assert shared_key(Backend("a.example", 1, "/x", secret)) == "://a.example:/x"
    # One endpoint, one key, whatever the credentials; another port or prefix is another endpoint.
    assert shared_key(Backend("https://A.example:443/ai/", 1)) == shared_key(
        Backend("https://a.example/ai", 2)
    )
    assert shared_key(Backend("https://a.example/ai", 1)) != shared_key(Backend("https://a.example/ai2", 1))
    assert shared_key(Backend("a.example:1", 1)) != shared_key(Backend("a.example:2", 1))
    store = MemoryStateStore()
    store.set_aside(shared_key(Backend(A, 1, api_key=secret)), SharedState(5, "throttled", 0))
    assert secret not in repr(store)


# ---------------------------------------------------------------------- building a balancer with a store


class SyncOnly:
    load = MemoryStateStore.load
    set_aside = MemoryStateStore.set_aside
    clear_failure = MemoryStateStore.clear_failure


@pytest.mark.parametrize("cls", [LoadBalancer, AsyncLoadBalancer])
@pytest.mark.parametrize(
    "state", [object(), {}, "redis://localhost", SyncOnly()], ids=["object", "dict", "str", "sync-only"]
)
def test_state_must_be_a_state_store(cls: type, state: Any) -> None:
    with pytest.raises(TypeError, match="state"):
        cls([Backend(A, 1)], state=state)


def test_bind_is_told_the_mode(make_lb: MakeLb, make_async_lb: MakeLb) -> None:
    sync_store, async_store = Recording(), Recording()
    make_lb([Backend(A, 1)], state=sync_store)
    make_async_lb([Backend(A, 1)], state=async_store)
    assert (sync_store.bound, async_store.bound) == (["sync"], ["async"])


class AsyncOnlyStore(MemoryStateStore):
    """Stands in for a store holding only an asyncio client."""

    def bind(self, mode: str) -> None:
        if mode != "async":
            raise TypeError("this store serves AsyncLoadBalancer only")


def test_a_store_may_refuse_a_mode_at_construction(make_lb: MakeLb, make_async_lb: MakeLb) -> None:
    with pytest.raises(TypeError, match="AsyncLoadBalancer only"):
        make_lb([Backend(A, 1)], state=AsyncOnlyStore())
    make_async_lb([Backend(A, 1)], state=AsyncOnlyStore())


def test_store_is_read_once_per_choice_and_written_on_change(
    make_lb: MakeLb, router: Any, lib: Any, clock: Any
) -> None:
    store = Recording(clock=clock)
    # The deployment's keys, then the backends' own (their breakers).
    keys = (KEY_A, shared_key(Backend(B, 2)) + "#deployment=gpt-4o", BREAKER_A, shared_key(Backend(B, 2)))
    router.script(A, 200, (429, {"retry-after": "5"}), 500, 200)
    lb = make_lb([Backend(A, 1), Backend(B, 2)], state=store, failure_backoff_s=1)
    with lib.Client(transport=lb) as client:
        post(client)  # A serves: one read, nothing to write
        assert store.calls == [("load", keys)]
        store.calls.clear()
        post(client)  # A throttles, B serves
        assert store.calls == [("load", keys), ("set_aside", (KEY_A, "throttled")), ("load", keys)]
        clock.advance(5)
        store.calls.clear()
        post(client)  # A fails, B serves
        assert store.names() == ["load", "set_aside", "load"]
        assert store.calls[1] == ("set_aside", (BREAKER_A, "failed"))
        clock.advance(1)
        store.calls.clear()
        post(client)  # A's breaker closes
    assert store.calls == [("load", keys), ("clear_failure", BREAKER_A)]


# ---------------------------------------------------------------------- sharing between balancers


def test_a_429_seen_by_one_balancer_keeps_the_other_away(
    make_lb: MakeLb, router: Any, lib: Any, clock: Any
) -> None:
    store = MemoryStateStore(clock=clock)
    backends = [Backend(A, 1), Backend(B, 2)]
    events: list[Event] = []
    lb1 = make_lb(backends, state=store)
    lb2 = make_lb(backends, state=store, on_event=events.append)
    router.script(A, (429, {"retry-after": "10"}))
    with lib.Client(transport=lb1) as one, lib.Client(transport=lb2) as two:
        assert post(one).json() == {"host": B}
        router.requests.clear()
        assert post(two).json() == {"host": B}
        assert router.hosts == [B]  # lb2 never sent to A
        assert stats_by_id(lb2)[A].cooling_down_for_s == 10
        assert stats_by_id(lb2)[A].throttled == 0  # lb2 saw no 429 itself
        clock.advance(9.5)
        assert post(two).json() == {"host": B}
        clock.advance(0.5)
        assert post(two).json() == {"host": A}
    assert [(e.backend, e.probe) for e in events if e.kind == "attempt"][-1] == (A, True)


SPENT_6S = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6s"}


@pytest.mark.parametrize(
    ("answer", "reason", "cooldown_s"),
    [
        ((429, {"retry-after": "10"}), "throttled", 10.0),
        (500, "failed", 1.0),
        ((200, SPENT_6S), "exhausted", 6.0),
    ],
)
@pytest.mark.parametrize("store_cls", [MemoryStateStore, CooldownsOnly])
def test_a_set_aside_learned_from_the_store_is_one_event(
    make_lb: MakeLb,
    router: Any,
    lib: Any,
    clock: Any,
    store_cls: type,
    answer: Any,
    reason: str,
    cooldown_s: float,
) -> None:
    store = store_cls(clock=clock)
    backends = [Backend(A, 1), Backend(B, 2)]
    events: list[Event] = []
    lb1 = make_lb(backends, state=store, failure_backoff_s=1)
    lb2 = make_lb(backends, state=store, failure_backoff_s=1, on_event=events.append)
    router.script(A, answer)
    with lib.Client(transport=lb1) as one, lib.Client(transport=lb2) as two:
        post(one)
        for _ in range(3):
            assert post(two).json() == {"host": B}
    set_asides = [e for e in events if e.kind == "set_aside"]
    assert set_asides == [SetAsideEvent(WALL_NOW, A, reason, cooldown_s, True, "gpt-4o")]  # type: ignore[arg-type]
    assert events[0] == set_asides[0]  # before lb2's first attempt


def test_a_refusal_of_the_shared_budget_is_a_set_aside_event(
    make_lb: MakeLb, router: Any, lib: Any, clock: Any
) -> None:
    store = MemoryStateStore(clock=clock)
    store.report([BudgetReport(KEY_A, 0, 5.0, 10)])  # another balancer spent A's window: no record
    events: list[Event] = []
    lb = make_lb([Backend(A, 1), Backend(B, 2)], state=store, on_event=events.append)
    with lib.Client(transport=lb) as client:
        assert post(client).json() == {"host": B}
    assert [(e.kind, e.backend) for e in events] == [("set_aside", A), ("attempt", B), ("served", B)]
    assert events[0] == SetAsideEvent(WALL_NOW, A, "exhausted", 5.0, True, "gpt-4o")
    assert router.hosts == [B]


def test_an_open_breaker_is_shared(make_lb: MakeLb, router: Any, lib: Any, clock: Any) -> None:
    store = MemoryStateStore(clock=clock)
    backends = [Backend(A, 1), Backend(B, 2)]
    events: list[Event] = []
    lb1 = make_lb(backends, state=store, failure_backoff_s=1)
    lb2 = make_lb(backends, state=store, failure_backoff_s=1, on_event=events.append)
    router.script(A, 500, 503)
    with lib.Client(transport=lb1) as one, lib.Client(transport=lb2) as two:
        post(one)
        router.requests.clear()
        assert post(two).json() == {"host": B}
        assert router.hosts == [B]
        assert stats_by_id(lb2)[A].breaker == "open"
        clock.advance(1)
        events.clear()
        assert post(two).json() == {"host": B}  # lb2's probe fails: the second consecutive failure
    attempt, failed = events[:2]
    assert (attempt.kind, attempt.backend, attempt.probe) == ("attempt", A, True)
    assert (failed.kind, failed.consecutive_failures, failed.cooldown_s) == ("failed", 2, 2.0)
    record = record_of(store, BREAKER_A)
    assert record is not None
    assert (record.reason, record.failures, record.cooling_s) == ("failed", 2, 2.0)


@pytest.mark.parametrize(("inner_s", "outer_s"), [(30, 5), (5, 30)])
def test_the_later_deadline_wins_across_balancers(
    make_lb: MakeLb, router: Any, lib: Any, clock: Any, inner_s: int, outer_s: int
) -> None:
    store = CooldownsOnly(clock=clock)  # with shared budgets, lb1 would not even try A
    backends = [Backend(A, 1), Backend(B, 2)]
    lb1, lb2 = make_lb(backends, state=store), make_lb(backends, state=store)
    with lib.Client(transport=lb1) as one, lib.Client(transport=lb2) as two:

        def meanwhile(request: Any) -> Any:
            # While lb2's attempt is on the wire, lb1 gets a 429 from A.
            assert post(one).json() == {"host": B}
            return lib.Response(429, headers={"retry-after": str(outer_s)})

        router.script(A, meanwhile, (429, {"retry-after": str(inner_s)}))
        assert post(two).json() == {"host": B}
        record = record_of(store)
        assert record is not None
        assert record.cooling_s == 30
        clock.advance(5)
        router.requests.clear()
        assert post(one).json() == {"host": B}
        assert post(two).json() == {"host": B}
        assert router.hosts == [B, B]
        assert stats_by_id(lb1)[A].cooling_down_for_s == stats_by_id(lb2)[A].cooling_down_for_s == 25
        clock.advance(25)
        assert post(one).json() == {"host": A}


async def test_async_balancers_share(make_async_lb: MakeLb, router: Any, lib: Any, clock: Any) -> None:
    store = Recording(clock=clock)
    backends = [Backend(A, 1), Backend(B, 2)]
    lb1 = make_async_lb(backends, state=store, failure_backoff_s=4)
    lb2 = make_async_lb(backends, state=store, failure_backoff_s=4)
    router.script(A, (429, {"retry-after": "3"}), lib.ConnectError("refused"))
    async with lib.AsyncClient(transport=lb1) as one, lib.AsyncClient(transport=lb2) as two:
        await post(one)
        router.requests.clear()
        assert (await post(two)).json() == {"host": B}
        assert router.hosts == [B]
        assert stats_by_id(lb2)[A].cooling_down_for_s == 3
        clock.advance(3)
        assert (await post(two)).json() == {"host": B}  # A refuses lb2: its breaker opens, for all
        router.requests.clear()
        assert (await post(one)).json() == {"host": B}
        assert router.hosts == [B]
        assert stats_by_id(lb1)[A].breaker == "open"
        assert stats_by_id(lb1)[A].cooling_down_for_s == 4
    assert store.bound == ["async", "async"]
    assert {"load", "set_aside"} <= set(store.names())


async def test_sync_and_async_balancers_share_one_store(
    make_lb: MakeLb, make_async_lb: MakeLb, router: Any, lib: Any, clock: Any
) -> None:
    store = MemoryStateStore(clock=clock)
    backends = [Backend(A, 1), Backend(B, 2)]
    sync_lb = make_lb(backends, state=store)
    async_lb = make_async_lb(backends, state=store)
    router.script(A, (429, {"retry-after": "8"}))
    with lib.Client(transport=sync_lb) as sync_client:
        assert post(sync_client).json() == {"host": B}
    router.requests.clear()
    async with lib.AsyncClient(transport=async_lb) as async_client:
        assert (await post(async_client)).json() == {"host": B}
    assert router.hosts == [B]
    assert stats_by_id(async_lb)[A].cooling_down_for_s == 8


def test_a_spent_budget_with_a_reset_is_shared(make_lb: MakeLb, router: Any, lib: Any, clock: Any) -> None:
    store = MemoryStateStore(clock=clock)
    backends = [Backend(A, 1), Backend(B, 2)]
    lb1, lb2 = make_lb(backends, state=store), make_lb(backends, state=store)
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6s"}
    router.script(A, (200, headers))
    with lib.Client(transport=lb1) as one, lib.Client(transport=lb2) as two:
        assert post(one).json() == {"host": A}
        record = record_of(store)
        assert record is not None
        assert (record.reason, record.cooling_s) == ("exhausted", 6)
        router.requests.clear()
        assert post(two).json() == {"host": B}
        assert router.hosts == [B]


def test_a_shared_spent_budget_names_what_was_seen(
    make_lb: MakeLb, router: Any, lib: Any, clock: Any
) -> None:
    store = MemoryStateStore(clock=clock)
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6s"}
    router.script(A, (200, headers))
    with lib.Client(transport=make_lb([Backend(A, 1)], state=store)) as client:
        post(client)
    record = record_of(store)
    assert record is not None
    assert record.remaining_requests == 0


# ---------------------------------------------------------------------- a breaker closing


def recovery_with_record_written_meanwhile(
    make_lb: MakeLb, router: Any, lib: Any, clock: Any, record: SharedState, answer: Any = 200
) -> tuple[Any, Any, MemoryStateStore]:
    """A fails, its breaker opens; while its probe is on the wire another balancer shares ``record``."""
    store = MemoryStateStore(clock=clock)
    backends = [Backend(A, 1), Backend(B, 2)]
    lb1 = make_lb(backends, state=store, failure_backoff_s=1)
    lb2 = make_lb(backends, state=store, failure_backoff_s=1)

    def probe(request: Any) -> Any:
        store.set_aside(BREAKER_A if record.reason == "failed" else KEY_A, record)
        return router.answer(answer, request)

    router.script(A, 500, probe)
    with lib.Client(transport=lb1) as one:
        post(one)
        clock.advance(1)
        assert post(one).json() == {"host": A}  # the probe succeeds: A's breaker closes
    assert stats_by_id(lb1)[A].breaker == "closed"
    return lb1, lb2, store


def test_a_breaker_closing_clears_the_shared_failure(
    make_lb: MakeLb, router: Any, lib: Any, clock: Any
) -> None:
    _, lb2, store = recovery_with_record_written_meanwhile(
        make_lb, router, lib, clock, SharedState(30.0, "failed", 3)
    )
    assert record_of(store, BREAKER_A) is None
    router.requests.clear()
    with lib.Client(transport=lb2) as two:
        assert post(two).json() == {"host": A}


def test_a_breaker_closing_keeps_a_shared_throttle(
    make_lb: MakeLb, router: Any, lib: Any, clock: Any
) -> None:
    lb1, lb2, store = recovery_with_record_written_meanwhile(
        make_lb, router, lib, clock, SharedState(30.0, "throttled", 0)
    )
    record = record_of(store)
    assert record is not None
    assert (record.reason, record.cooling_s) == ("throttled", 30)
    router.requests.clear()
    with lib.Client(transport=lb1) as one, lib.Client(transport=lb2) as two:
        assert post(one).json() == {"host": B}
        assert post(two).json() == {"host": B}
    assert router.hosts == [B, B]


def test_a_breaker_closing_clears_the_shared_failure_when_the_budget_is_spent(
    make_lb: MakeLb, router: Any, lib: Any, clock: Any
) -> None:
    spent = (200, {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2s"})
    _, _, store = recovery_with_record_written_meanwhile(
        make_lb, router, lib, clock, SharedState(30.0, "failed", 3), spent
    )
    assert record_of(store, BREAKER_A) is None
    spent_record = record_of(store)  # the deployment's spent window is its own record
    assert spent_record is not None
    assert spent_record.reason == "exhausted"


# ---------------------------------------------------------------------- a store that fails


def test_a_failing_store_never_fails_a_request(
    make_lb: MakeLb, router: Any, lib: Any, clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    store = Broken()
    events: list[Event] = []
    router.script(A, (429, {"retry-after": "2"})).script(B, 500)
    lb = make_lb(
        [Backend(A, 1), Backend(B, 1), Backend(C, 2)],
        state=store,
        on_event=events.append,
        failure_backoff_s=1,
    )
    with caplog.at_level(logging.DEBUG), lib.Client(transport=lb) as client:
        responses = [post(client) for _ in range(6)]
        clock.advance(2)
        responses.append(post(client))
    assert [r.status_code for r in responses] == [200] * 7
    assert store.calls > 7  # it was asked, and failed, every time
    # Local state still works: A and B were set aside, C served meanwhile, then they came back.
    assert [r.json()["host"] for r in responses[1:6]] == [C] * 5
    assert responses[-1].json()["host"] in (A, B)
    assert stats_by_id(lb)[A].throttled == 1
    assert stats_by_id(lb)[B].failures == 1
    assert {e.kind for e in events} >= {"attempt", "throttled", "failed", "served"}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_failing_store_never_fails_an_async_request(
    make_async_lb: MakeLb, router: Any, lib: Any
) -> None:
    store = Broken(ConnectionError)
    router.script(A, (429, {"retry-after": "2"}), 200).script(B, lib.ConnectError("refused"))
    lb = make_async_lb([Backend(A, 1), Backend(B, 1), Backend(C, 2)], state=store)
    async with lib.AsyncClient(transport=lb) as client:
        responses = [await post(client) for _ in range(6)]
    assert [r.status_code for r in responses] == [200] * 6
    assert store.calls > 6
    assert (stats_by_id(lb)[A].throttled, stats_by_id(lb)[B].failures) == (1, 1)


async def test_a_store_whose_async_methods_are_not_awaitable_fails_open(
    make_async_lb: MakeLb, router: Any, lib: Any
) -> None:
    class NotAwaitable(MemoryStateStore):
        def aload(self, keys: Sequence[str]) -> Any:  # type: ignore[override]
            return self.load(keys)

        def aset_aside(self, key: str, record: SharedState) -> Any:  # type: ignore[override]
            return self.set_aside(key, record)

    router.script(A, (429, {"retry-after": "2"}))
    lb = make_async_lb([Backend(A, 1), Backend(B, 2)], state=NotAwaitable())
    async with lib.AsyncClient(transport=lb) as client:
        assert (await post(client)).json() == {"host": B}
        assert (await post(client)).json() == {"host": B}


def test_a_store_returning_nothing_is_nothing_shared(make_lb: MakeLb, router: Any, lib: Any) -> None:
    class Forgetful(MemoryStateStore):
        def load(self, keys: Sequence[str]) -> Any:
            return None

    lb = make_lb([Backend(A, 1)], state=Forgetful())
    with lib.Client(transport=lb) as client:
        assert post(client).status_code == 200


def test_wait_ends_when_another_balancer_shares_a_longer_cooldown(
    make_lb: MakeLb, router: Any, lib: Any, clock: Any
) -> None:
    store = MemoryStateStore(clock=clock)
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.advance(seconds)
        # While this request waits, another balancer learns that A is out for much longer.
        store.set_aside(KEY_A, SharedState(60.0, "throttled", 0))

    router.script(A, (429, {"retry-after": "2"}))
    lb = make_lb([Backend(A, 1)], state=store, max_wait_s=10, sleep=sleep)
    with lib.Client(transport=lb) as client:
        response = post(client)
    assert response.status_code == 429
    assert slept == [2]
    assert response.headers["retry-after"] == "60"
    assert len(router.requests) == 1
