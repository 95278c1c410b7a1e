"""The request flow through AsyncLoadBalancer, with httpx.AsyncClient and httpx2.AsyncClient.

The same scenarios as test_balancer.py, through ``handle_async_request``: the decisions are shared,
so these check that the async loop carries out every action (send, close, token, sleep) the same way.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from typing import TYPE_CHECKING, Any

import _unit_support
import pytest
from _unit_support import CALLER_URL, LIBS, LOGGER, WAIT, A, B, C, MakeLb, routing, stats_by_id

from openai_priority_loadbalancer import AsyncLoadBalancer, Backend, LoadBalancer, MemoryStateStore
from openai_priority_loadbalancer._state import PROBE_HOLD_FACTOR, PROBE_HOLD_MAX_S
from openai_priority_loadbalancer._waiting import PROBE_POLL_S as _PROBE_POLL_S

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

#: Requests carry the caller's own ``api-key`` unless a test passes ``headers=``; a backend's key replaces it.
#: The client is async: await what it returns.
post = functools.partial(_unit_support.post, api_key="caller-key")


@pytest.fixture
async def client_for(lib: Any) -> AsyncIterator[Callable[[AsyncLoadBalancer], Any]]:
    clients: list[Any] = []

    def make(lb: AsyncLoadBalancer) -> Any:
        client = lib.AsyncClient(transport=lb)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


def held(lib: Any, entered: asyncio.Event, release: asyncio.Event, status: int = 200) -> Any:
    """A script entry that waits in the inner transport until ``release`` is set."""

    async def answer(request: Any) -> Any:
        entered.set()
        await asyncio.wait_for(release.wait(), WAIT)
        return lib.Response(status, json={"host": request.url.host})

    return answer


# ---------------------------------------------------------------------- it is a transport


@pytest.mark.parametrize("module", LIBS.values(), ids=LIBS.keys())
def test_is_an_async_transport_of_every_library(module: Any) -> None:
    lb = AsyncLoadBalancer([Backend(A, 1)], transport=module.MockTransport(lambda r: module.Response(200)))
    assert isinstance(lb, module.AsyncBaseTransport)
    assert not isinstance(lb, module.BaseTransport)


async def test_aclose_closes_the_inner_transport(make_async_lb: MakeLb, router: Any) -> None:
    lb = make_async_lb([Backend(A, 1)])
    await lb.aclose()
    assert router.transport.closed == 1


async def test_async_context_manager_closes_on_exit(make_async_lb: MakeLb, router: Any) -> None:
    async with make_async_lb([Backend(A, 1)]) as lb:
        assert isinstance(lb, AsyncLoadBalancer)
        assert router.transport.closed == 0
    assert router.transport.closed == 1


async def test_closing_the_client_closes_the_balancer(make_async_lb: MakeLb, router: Any, lib: Any) -> None:
    async with lib.AsyncClient(transport=make_async_lb([Backend(A, 1)])) as client:
        assert (await post(client)).status_code == 200
    assert router.transport.closed == 1


async def test_default_inner_transport_follows_the_request_library(monkeypatch: pytest.MonkeyPatch) -> None:
    created: list[Any] = []

    class FakeInner:
        def __init__(self, module: Any, **kwargs: Any) -> None:
            self.module = module
            self.closed = 0
            created.append(self)

        async def handle_async_request(self, request: Any) -> Any:
            assert isinstance(request, self.module.Request)
            return self.module.Response(200, json={"inner": self.module.__name__})

        async def aclose(self) -> None:
            self.closed += 1

    for module in LIBS.values():
        monkeypatch.setattr(module, "AsyncHTTPTransport", lambda _m=module, **kw: FakeInner(_m, **kw))
    lb = AsyncLoadBalancer([Backend(A, 1)])
    assert created == []  # built on first use
    for name, module in LIBS.items():
        async with module.AsyncClient(transport=lb) as client:
            response = await client.get(f"https://caller.example/{name}")
        assert response.json() == {"inner": name}
    assert all(inner.closed >= 1 for inner in created)  # each client closed the balancer on exit


# ---------------------------------------------------------------------- priority and sharing


async def test_priority_and_sharing(make_async_lb: MakeLb, router: Any, client_for: Any, clock: Any) -> None:
    client = client_for(make_async_lb([Backend(A, 1), Backend(B, 1), Backend(C, 2)]))
    for _ in range(200):
        assert (await post(client)).status_code == 200
    assert router.hosts.count(C) == 0
    assert router.hosts.count(A) > 50
    assert router.hosts.count(B) > 50
    router.script(A, (429, {"retry-after": "5"}))
    router.script(B, (429, {"retry-after": "5"}))
    router.requests.clear()
    while {A, B} - set(router.hosts):
        await post(client)
    assert (await post(client)).json() == {"host": C}
    clock.advance(5)
    assert (await post(client)).json()["host"] in (A, B)


async def test_fewest_in_flight_preferred(
    make_async_lb: MakeLb, router: Any, client_for: Any, lib: Any
) -> None:
    entered, release = asyncio.Event(), asyncio.Event()
    hold = held(lib, entered, release)

    def first_held(request: Any) -> Any:
        return lib.Response(200) if entered.is_set() else hold(request)

    router.always(A, first_held).always(B, first_held)
    lb = make_async_lb([Backend(A, 1), Backend(B, 1)])
    client = client_for(lb)
    task = asyncio.create_task(post(client))
    await asyncio.wait_for(entered.wait(), WAIT)
    busy = router.hosts[0]
    idle = B if busy == A else A
    for _ in range(5):
        assert routing(await post(client)).backend == idle
    release.set()
    assert (await task).status_code == 200
    assert all(s.in_flight == 0 for s in lb.stats())


async def test_the_429s_of_one_burst_back_off_once(
    make_async_lb: MakeLb, router: Any, client_for: Any, lib: Any, clock: Any
) -> None:
    """Attempts in flight together that all get "429, retry now" are one 429 for the backoff: the
    backend is set aside for the floor (25 ms), not the floor doubled once per attempt."""
    entered, release = asyncio.Event(), asyncio.Event()
    arrived: list[int] = []

    async def throttled(request: Any) -> Any:
        arrived.append(1)
        if len(arrived) == 3:
            entered.set()
        await asyncio.wait_for(release.wait(), WAIT)
        return lib.Response(429, headers={"retry-after": "0"})

    router.script(A, 200, throttled, throttled, throttled)
    lb = make_async_lb([Backend(A, 1), Backend(B, 2)])
    client = client_for(lb)
    assert (await post(client)).json() == {"host": A}  # A is known: more than one request at a time
    tasks = [asyncio.create_task(post(client)) for _ in range(3)]
    await asyncio.wait_for(entered.wait(), WAIT)
    release.set()
    assert [(await t).json() for t in tasks] == [{"host": B}] * 3
    assert stats_by_id(lb)[A].cooling_down_for_s == pytest.approx(0.025)
    clock.advance(0.025)
    router.script(A, (429, {"retry-after": "0"}))
    assert (await post(client)).json() == {"host": B}  # a 429 of an attempt sent after the burst's
    assert stats_by_id(lb)[A].cooling_down_for_s == pytest.approx(0.05)


# ---------------------------------------------------------------------- the per-attempt request


@pytest.mark.parametrize(
    ("backend", "caller_url", "expected_url", "expected_host"),
    [
        (
            Backend("a.example", 1),
            "http://caller.example:8080/x?q=1",
            "http://a.example:8080/x?q=1",
            "a.example:8080",
        ),
        (
            Backend("http://127.0.0.1:8081/prefix", 1, "/ai"),
            "https://caller.example/x",
            "http://127.0.0.1:8081/prefix/ai/x",
            "127.0.0.1:8081",
        ),
        (
            Backend("http://[::1]:8080/x", 1),
            "https://caller.example/y",
            "http://[::1]:8080/x/y",
            "[::1]:8080",
        ),
    ],
)
async def test_attempt_is_addressed_to_the_backend(
    make_async_lb: MakeLb,
    router: Any,
    client_for: Any,
    backend: Backend,
    caller_url: str,
    expected_url: str,
    expected_host: str,
) -> None:
    response = await post(client_for(make_async_lb([backend])), caller_url)
    (sent,) = router.requests
    assert str(sent.url) == expected_url
    assert sent.headers["host"] == expected_host
    assert str(response.request.url) == caller_url


async def test_keys_and_prefix_on_failover(
    make_async_lb: MakeLb, router: Any, client_for: Any, clock: Any
) -> None:
    router.script(A, (429, {"retry-after": "1"}))
    backends = [Backend(A, 1, "/a", "key-A", deployments={"gpt-4o": "gpt-4o-a"}), Backend(B, 2, "/b")]
    client = client_for(make_async_lb(backends))
    request = client.build_request(
        "POST", CALLER_URL, json={}, headers={"api-key": "caller-key", "Authorization": "Bearer caller"}
    )
    response = await client.send(request)
    assert response.request is request
    assert str(request.url) == CALLER_URL
    assert request.headers["api-key"] == "caller-key"
    clock.advance(1)
    await client.send(request)
    to_a, to_b, again = router.requests
    assert to_a.url.path == "/a/openai/deployments/gpt-4o-a/chat/completions"
    assert to_a.headers.get_list("api-key") == ["key-A"]
    assert "authorization" not in to_a.headers
    assert to_b.url.path == "/b/openai/deployments/gpt-4o/chat/completions"
    assert to_b.headers.get_list("api-key") == ["caller-key"]
    assert to_b.headers["authorization"] == "Bearer caller"
    assert again.url.path == to_a.url.path


async def test_streamed_upload_is_replayed_on_failover(
    make_async_lb: MakeLb, router: Any, client_for: Any
) -> None:
    router.script(A, 502)

    async def body() -> AsyncIterator[bytes]:
        yield b'{"a": '
        yield b"1}"

    client = client_for(make_async_lb([Backend(A, 1), Backend(B, 2)]))
    assert (await client.post(CALLER_URL, content=body())).status_code == 200
    assert [r.content for r in router.requests] == [b'{"a": 1}', b'{"a": 1}']


async def test_v1_body_model_mapped_only_for_that_backend(
    make_async_lb: MakeLb, router: Any, client_for: Any
) -> None:
    router.script(A, 503)
    client = client_for(make_async_lb([Backend(A, 1, deployments={"gpt-4o": "gpt-4o-a"}), Backend(B, 2)]))
    await post(client, "https://caller.example/openai/v1/chat/completions", json={"model": "gpt-4o"})
    assert [json.loads(r.content)["model"] for r in router.requests] == ["gpt-4o-a", "gpt-4o"]


# ---------------------------------------------------------------------- 429, 5xx, the breaker


@pytest.mark.parametrize(
    ("headers", "cooldown"),
    [
        ({"retry-after-ms": "2500"}, 2.5),
        ({"retry-after": "7"}, 7),
        ({"x-ratelimit-reset-tokens": "1m"}, 60),
        ({}, 12),
    ],
)
async def test_429_sets_backend_aside_for_exactly_the_header_time(
    make_async_lb: MakeLb, router: Any, client_for: Any, clock: Any, headers: dict[str, str], cooldown: float
) -> None:
    router.script(A, (429, headers))
    client = client_for(make_async_lb([Backend(A, 1), Backend(B, 2)], default_cooldown_s=12))
    response = await post(client)
    assert response.json() == {"host": B}
    assert [(a.backend, a.status) for a in routing(response).attempts] == [(A, 429), (B, 200)]
    clock.set(clock.start + cooldown - 0.001)
    assert (await post(client)).json() == {"host": B}
    clock.set(clock.start + cooldown)
    assert (await post(client)).json() == {"host": A}


async def test_malformed_cooldown_warns_and_uses_default(
    make_async_lb: MakeLb, router: Any, client_for: Any, clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    router.script(A, (429, {"retry-after": "tomorrow"}))
    client = client_for(make_async_lb([Backend(A, 1), Backend(B, 2)], default_cooldown_s=12))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert (await post(client)).json() == {"host": B}
    assert any(r.levelno == logging.WARNING for r in caplog.records)
    clock.set(clock.start + 12)
    assert (await post(client)).json() == {"host": A}


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
async def test_discarded_response_is_closed_unread(
    make_async_lb: MakeLb, router: Any, client_for: Any, lib: Any, observed_stream: Any, status: int
) -> None:
    stream = observed_stream()
    router.script(A, lambda request: lib.Response(status, stream=stream))
    assert (await post(client_for(make_async_lb([Backend(A, 1), Backend(B, 2)])))).status_code == 200
    assert stream.closed
    assert not stream.iterated


async def test_5xx_backoff_and_one_probe(
    make_async_lb: MakeLb, router: Any, client_for: Any, clock: Any, lib: Any
) -> None:
    entered, release = asyncio.Event(), asyncio.Event()
    router.script(A, 500, 503, held(lib, entered, release))
    lb = make_async_lb([Backend(A, 1), Backend(B, 2)], failure_backoff_s=1, failure_backoff_max_s=60)
    client = client_for(lb)
    assert (await post(client)).json() == {"host": B}  # backoff 1
    clock.advance(1)
    assert (await post(client)).json() == {"host": B}  # the probe failed: backoff 2
    clock.advance(2 - 0.001)
    assert (await post(client)).json() == {"host": B}
    assert stats_by_id(lb)[A].breaker == "open"
    clock.advance(0.001)
    assert stats_by_id(lb)[A].breaker == "half-open"
    probe = asyncio.create_task(post(client))
    await asyncio.wait_for(entered.wait(), WAIT)
    for _ in range(3):
        assert (await post(client)).json() == {"host": B}
    release.set()
    assert (await probe).json() == {"host": A}
    assert stats_by_id(lb)[A].breaker == "closed"
    assert (await post(client)).json() == {"host": A}
    assert stats_by_id(lb)[A].failures == 2


async def test_5xx_retry_after_longer_than_backoff(
    make_async_lb: MakeLb, router: Any, client_for: Any, clock: Any
) -> None:
    router.script(A, (503, {"retry-after": "30"}))
    client = client_for(make_async_lb([Backend(A, 1), Backend(B, 2)], failure_backoff_s=1))
    await post(client)
    clock.set(clock.start + 30 - 0.001)
    assert (await post(client)).json() == {"host": B}
    clock.set(clock.start + 30)
    assert (await post(client)).json() == {"host": A}


@pytest.mark.parametrize("status", [400, 401, 403, 404, 501])
async def test_other_statuses_are_returned_unchanged(
    make_async_lb: MakeLb, router: Any, client_for: Any, status: int
) -> None:
    router.script(A, status)
    lb = make_async_lb([Backend(A, 1), Backend(B, 2)])
    response = await post(client_for(lb))
    assert response.status_code == status
    assert response.json() == {"host": A}
    assert router.hosts == [A]
    assert [(a.backend, a.status) for a in routing(response).attempts] == [(A, status)]
    assert stats_by_id(lb)[A].cooling_down_for_s == 0


# ---------------------------------------------------------------------- transport errors


@pytest.mark.parametrize("error", ["ConnectError", "ConnectTimeout", "RemoteProtocolError"])
async def test_connection_errors_fail_over(
    make_async_lb: MakeLb, router: Any, client_for: Any, lib: Any, error: str
) -> None:
    router.script(A, getattr(lib, error)("boom"))
    lb = make_async_lb([Backend(A, 1), Backend(B, 2)])
    response = await post(client_for(lb))
    assert response.json() == {"host": B}
    assert [(a.backend, a.error) for a in routing(response).attempts] == [(A, error), (B, None)]
    assert stats_by_id(lb)[A].breaker == "open"
    assert all(s.in_flight == 0 for s in lb.stats())


async def test_read_timeout_sets_aside_and_is_raised(
    make_async_lb: MakeLb, router: Any, client_for: Any, lib: Any
) -> None:
    router.script(A, lib.ReadTimeout("slow"))
    lb = make_async_lb([Backend(A, 1), Backend(B, 2)])
    with pytest.raises(lib.ReadTimeout):
        await post(client_for(lb))
    assert router.hosts == [A]
    stats = stats_by_id(lb)[A]
    assert (stats.failures, stats.in_flight, stats.breaker) == (1, 0, "open")


@pytest.mark.parametrize("error", ["RuntimeError", "PoolTimeout"])
async def test_unrelated_errors_are_raised_and_not_counted(
    make_async_lb: MakeLb, router: Any, client_for: Any, lib: Any, error: str
) -> None:
    exc_type = getattr(lib, error, RuntimeError)
    router.script(A, exc_type("local"))
    lb = make_async_lb([Backend(A, 1), Backend(B, 2)])
    with pytest.raises(exc_type):
        await post(client_for(lb))
    stats = stats_by_id(lb)[A]
    assert (stats.failures, stats.in_flight, stats.cooling_down_for_s) == (0, 0, 0)


async def test_cancelled_request_releases_its_backend(
    make_async_lb: MakeLb, router: Any, client_for: Any, lib: Any
) -> None:
    entered, release = asyncio.Event(), asyncio.Event()
    router.script(A, held(lib, entered, release))
    lb = make_async_lb([Backend(A, 1), Backend(B, 2)], failure_backoff_s=1)
    client = client_for(lb)
    task = asyncio.create_task(post(client))
    await asyncio.wait_for(entered.wait(), WAIT)
    assert stats_by_id(lb)[A].in_flight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    stats = stats_by_id(lb)[A]
    assert (stats.in_flight, stats.failures, stats.cooling_down_for_s) == (0, 0, 0)
    assert (await post(client)).json() == {"host": A}


# ---------------------------------------------------------------------- the synthesized 429 and waiting


async def test_all_throttled_gives_one_429(
    make_async_lb: MakeLb, router: Any, client_for: Any, lib: Any, caplog: pytest.LogCaptureFixture
) -> None:
    router.script(A, (429, {"retry-after": "7"}))
    router.script(B, (429, {"retry-after-ms": "3500"}))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        response = await post(client_for(make_async_lb([Backend(A, 1), Backend(B, 2)])))
    assert isinstance(response, lib.Response)
    assert response.status_code == 429
    assert (response.headers["retry-after"], response.headers["retry-after-ms"]) == ("4", "3500")
    assert response.headers["x-should-retry"] == "true"
    assert response.json()["error"]["code"] == "429"
    assert routing(response).backend is None
    assert [(a.backend, a.status) for a in routing(response).attempts] == [(A, 429), (B, 429)]
    assert [r.levelno for r in caplog.records if r.name == LOGGER] == [logging.WARNING]


async def test_waits_without_blocking_the_loop(
    make_async_lb: MakeLb, router: Any, client_for: Any, fake_sleep: list[float]
) -> None:
    router.script(A, (429, {"retry-after": "2"}))
    lb = make_async_lb([Backend(A, 1)], max_wait_s=10)
    response = await post(client_for(lb))
    assert response.json() == {"host": A}
    assert sum(fake_sleep) == pytest.approx(2)
    assert [(a.backend, a.status) for a in routing(response).attempts] == [(A, 429), (A, 200)]


# ---------------------------------------------------------------------- streaming


async def test_streamed_body_is_not_read_by_the_balancer(
    make_async_lb: MakeLb, router: Any, client_for: Any, lib: Any
) -> None:
    produced: list[str] = []

    async def events() -> AsyncIterator[bytes]:
        produced.append("first")
        yield b"data: 1\n\n"
        produced.append("second")
        yield b"data: 2\n\n"

    router.script(A, lambda request: lib.Response(200, content=events()))
    client = client_for(make_async_lb([Backend(A, 1)]))
    async with client.stream("POST", CALLER_URL, json={"stream": True}) as response:
        assert routing(response).backend == A
        assert produced == []
        chunks = response.aiter_raw()
        assert await chunks.__anext__() == b"data: 1\n\n"
        assert produced == ["first"]
        assert await chunks.__anext__() == b"data: 2\n\n"
        assert produced == ["first", "second"]
        await chunks.aclose()


# ---------------------------------------------------------------------- budget headers


async def test_success_with_spent_budget_sets_aside_until_reset(
    make_async_lb: MakeLb, router: Any, client_for: Any, clock: Any
) -> None:
    router.script(A, (200, {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2s"}))
    router.always(B, (200, {"x-ratelimit-remaining-requests": "-1", "x-ratelimit-remaining-tokens": "-1"}))
    client = client_for(make_async_lb([Backend(A, 1), Backend(B, 2)]))
    assert (await post(client)).json() == {"host": A}
    clock.set(clock.start + 2 - 0.001)
    assert (await post(client)).json() == {"host": B}
    assert (await post(client)).json() == {"host": B}  # -1: unknown, B stays usable
    clock.set(clock.start + 2)
    assert (await post(client)).json() == {"host": A}


# ---------------------------------------------------------------------- token providers


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_token_provider_sets_bearer_for_its_backend_only(
    make_async_lb: MakeLb, router: Any, client_for: Any, kind: str
) -> None:
    calls: list[int] = []

    def sync_provider() -> str:
        calls.append(1)
        return "token-A"

    async def async_provider() -> str:
        await asyncio.sleep(0)
        return sync_provider()

    provider = sync_provider if kind == "sync" else async_provider
    router.script(A, 429)
    client = client_for(make_async_lb([Backend(A, 1, azure_ad_token_provider=provider), Backend(B, 2)]))
    await post(client, headers={"api-key": "caller-key"})
    to_a, to_b = router.requests
    assert to_a.headers["authorization"] == "Bearer token-A"
    assert "api-key" not in to_a.headers
    assert to_b.headers["api-key"] == "caller-key"
    assert "authorization" not in to_b.headers
    assert len(calls) == 1


async def test_failing_async_token_provider_is_raised_and_not_counted(
    make_async_lb: MakeLb, router: Any, client_for: Any
) -> None:
    async def provider() -> str:
        raise PermissionError("no credential")

    lb = make_async_lb([Backend(A, 1, azure_ad_token_provider=provider), Backend(B, 2)])
    with pytest.raises(PermissionError):
        await post(client_for(lb))
    assert router.requests == []
    stats = stats_by_id(lb)[A]
    assert (stats.in_flight, stats.failures) == (0, 0)


# ---------------------------------------------------------------------- secrets


async def test_secrets_never_appear(
    make_async_lb: MakeLb, router: Any, client_for: Any, lib: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async def provider() -> str:
        return "eyJ-SECRET-TOKEN"

    backends = [Backend(A, 1, api_key="sk-SECRET-123"), Backend(B, 2, azure_ad_token_provider=provider)]
    router.script(A, 500)
    router.script(B, (429, {"retry-after": "bad"}))
    lb = make_async_lb(backends)
    with caplog.at_level(logging.DEBUG):
        response = await post(client_for(lb))
    assert response.status_code == 429
    texts = [r.getMessage() for r in caplog.records] + [repr(r.args) for r in caplog.records]
    texts += [response.text, str(response.headers), repr(routing(response)), repr(lb), str(lb.stats())]
    assert [t for t in texts if "SECRET" in t] == []


# ---------------------------------------------------------------------- shared with a sync balancer


async def test_sync_and_async_balancers_share_one_backend_list(
    router: Any, clock: Any, wall: Any, lib: Any
) -> None:
    backends = [Backend(A, 1), Backend(B, 2)]
    router.script(A, (429, {"retry-after": "5"}))
    options: dict[str, Any] = {
        "transport": router.transport,
        "clock": clock,
        "wall_clock": wall,
        "max_wait_s": 0,
    }
    sync_lb, async_lb = LoadBalancer(backends, **options), AsyncLoadBalancer(backends, **options)
    with lib.Client(transport=sync_lb) as client:
        assert client.get("https://caller.example/x").json() == {"host": B}
    async with lib.AsyncClient(transport=async_lb) as client:
        # Each balancer keeps its own state; the backends themselves are not changed.
        assert (await client.get("https://caller.example/x")).json() == {"host": A}
    assert backends == [Backend(A, 1), Backend(B, 2)]


# ---------------------------------------------------------------------- the probe of an unknown budget


async def _until(condition: Callable[[], bool]) -> None:
    """Let the other tasks run until ``condition`` holds (they run without a real sleep)."""
    for _ in range(10_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("never happened")


def _slow(lib: Any, clock: Any, release: asyncio.Event, arrivals: list[float]) -> Any:
    """A script entry that notes when (on the fake clock) it was reached, then answers when released."""

    async def answer(request: Any) -> Any:
        arrivals.append(clock.now - clock.start)
        await asyncio.wait_for(release.wait(), WAIT)
        return lib.Response(200, json={"host": request.url.host})

    return answer


def _taking(lib: Any, clock: Any, seconds: float, status: int = 200, headers: Any = None) -> Any:
    """A script entry that answers ``status`` after ``seconds`` on the fake clock."""

    def answer(request: Any) -> Any:
        clock.advance(seconds)
        return lib.Response(status, headers=headers or {}, json={"host": request.url.host})

    return answer


async def test_a_cold_backends_probe_holds_the_others_back_for_a_round_trip_at_most(
    make_async_lb: MakeLb, router: Any, client_for: Any, lib: Any, clock: Any, fake_sleep: list[float]
) -> None:
    """A fresh balancer sent one request at a time until the backend first answered: with long
    completions the others waited, and past max_wait_s got the balancer's own 429. A 429 comes back
    in milliseconds: once the probe has been out for its hold (PROBE_HOLD_MAX_S while nothing is known
    of the backend), the others go; none gets a 429 for a probe being out, even with max_wait_s=0."""
    release, arrivals = asyncio.Event(), []
    router.always(A, _slow(lib, clock, release, arrivals))
    client = client_for(make_async_lb([Backend(A, 1)]))  # max_wait_s=0
    tasks = [asyncio.create_task(post(client))]
    await _until(lambda: len(arrivals) == 1)
    tasks += [asyncio.create_task(post(client)) for _ in range(3)]
    await _until(lambda: len(arrivals) == 4)
    release.set()
    assert [(await t).status_code for t in tasks] == [200] * 4
    assert arrivals[0] == 0
    assert arrivals[1:] == [pytest.approx(PROBE_HOLD_MAX_S, abs=_PROBE_POLL_S)] * 3


async def test_after_a_429_the_probe_holds_the_others_for_a_few_of_the_fastest_successes(
    make_async_lb: MakeLb, router: Any, client_for: Any, lib: Any, clock: Any, fake_sleep: list[float]
) -> None:
    """After a 429's cooldown with the limit unknown, one request goes first again, for a round trip
    measured from the backend's successes: four times its fastest recent one (at least 50 ms). Not
    from its 429s: they come back sooner than any success, and a hold that short let the others go
    before the probe's answer told the budget (4 workers sharing Redis drew ~30 429s for ~2)."""
    release, arrivals = asyncio.Event(), []
    router.script(A, _taking(lib, clock, 0.03), _taking(lib, clock, 0.02, 429, {"retry-after": "1"}))
    router.always(A, _slow(lib, clock, release, arrivals))
    client = client_for(make_async_lb([Backend(A, 1)]))
    assert (await post(client)).status_code == 200
    assert routing(await post(client)).backend is None  # the 429: nothing else to try
    clock.set(clock.start + 2)
    tasks = [asyncio.create_task(post(client))]
    await _until(lambda: len(arrivals) == 1)
    tasks += [asyncio.create_task(post(client)) for _ in range(2)]
    await _until(lambda: len(arrivals) == 3)
    release.set()
    assert [(await t).status_code for t in tasks] == [200] * 3
    hold = PROBE_HOLD_FACTOR * 0.03  # the success's time, not the faster 429's
    assert [a - arrivals[0] for a in arrivals[1:]] == [pytest.approx(hold, abs=_PROBE_POLL_S)] * 2


async def test_across_balancers_the_shared_probe_holds_the_others_as_briefly(
    router: Any, client_for: Any, lib: Any, clock: Any, fake_sleep: list[float]
) -> None:
    """Balancers sharing a store: another balancer's probe of a backend whose budget is unknown holds
    this one's requests back for the probe's hold, no longer, and never turns them into 429s."""
    release, arrivals = asyncio.Event(), []
    router.always(A, _slow(lib, clock, release, arrivals))
    store = MemoryStateStore(clock=clock)
    options = {"transport": router.transport, "clock": clock, "max_wait_s": 0, "state": store}
    first = client_for(AsyncLoadBalancer([Backend(A, 1)], **options))
    second = client_for(AsyncLoadBalancer([Backend(A, 1)], **options))
    tasks = [asyncio.create_task(post(first))]
    await _until(lambda: len(arrivals) == 1)
    tasks += [asyncio.create_task(post(second)) for _ in range(2)]
    await _until(lambda: len(arrivals) == 3)
    release.set()
    assert [(await t).status_code for t in tasks] == [200] * 3
    assert arrivals[1:] == [pytest.approx(PROBE_HOLD_MAX_S, abs=_PROBE_POLL_S)] * 2
