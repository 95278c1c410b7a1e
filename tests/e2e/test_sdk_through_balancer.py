"""The real openai SDK, through the balancer, against simulated Azure OpenAI instances on loopback.

Each scenario runs through the sync and the async client, with every installed HTTP library.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

import openai
import pytest
from _e2e_support import API_VERSION, CALLER_KEY, INSTANCE_HEADER, MESSAGES, MODEL, MakeApi

from openai_priority_loadbalancer import AsyncLoadBalancer, Backend, LoadBalancer
from openai_priority_loadbalancer.simulator import FailureMode, HeaderStyle, InstanceConfig, Simulator

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.e2e


def backends(sim: Simulator, *priorities: tuple[str, int]) -> list[Backend]:
    return [Backend(sim.url(name), priority) for name, priority in priorities]


# -- 1. the happy path -------------------------------------------------------------------------


async def test_equal_priorities_share_the_traffic(make_api: MakeApi) -> None:
    with Simulator([InstanceConfig("a"), InstanceConfig("b")]) as sim:
        api = make_api(backends(sim, ("a", 1), ("b", 1)))
        served_by = [await api.served_by() for _ in range(20)]

        assert set(served_by) == {"a", "b"}
        assert served_by.count("a") == sim.stats("a").served
        assert served_by.count("b") == sim.stats("b").served
        assert sim.stats("a").served + sim.stats("b").served == 20
        assert sim.stats("a").throttled == sim.stats("b").throttled == 0


# -- 2. a throttling backend ---------------------------------------------------------------------


async def test_throttled_priority_one_overflows_to_priority_two(make_api: MakeApi) -> None:
    configs = [InstanceConfig("p1", requests_per_window=2, window_s=1.0), InstanceConfig("p2")]
    with Simulator(configs) as sim:
        api = make_api(backends(sim, ("p1", 1), ("p2", 2)))
        start = time.monotonic()
        served_by = [await api.served_by() for _ in range(10)]
        elapsed = time.monotonic() - start

        p1, p2 = sim.stats("p1"), sim.stats("p2")
        assert elapsed < 1.0, "the requests should all fall in p1's first window"
        assert served_by[:2] == ["p1", "p1"]
        assert served_by[2:] == ["p2"] * 8
        assert p1.served_per_window == (2,)
        assert p2.served == 8
        # The balancer learns the budget from x-ratelimit-remaining-requests: at most one probe 429.
        assert p1.throttled <= 1
        assert p2.throttled == 0


# -- 3. every rate-limit header style ------------------------------------------------------------

WINDOW_S = 1.5


@pytest.mark.parametrize(
    ("style", "rounds_up"),
    [
        ("retry-after", True),
        ("retry-after-float", False),
        ("http-date", True),
        ("retry-after-ms", False),
        ("reset-requests", False),
    ],
)
async def test_cooldown_follows_every_header_style(
    make_api: MakeApi, style: HeaderStyle, rounds_up: bool
) -> None:
    configs = [
        InstanceConfig("p1", requests_per_window=0, window_s=WINDOW_S, header_style=style),
        InstanceConfig("p2"),
    ]
    with Simulator(configs) as sim:
        api = make_api(backends(sim, ("p1", 1), ("p2", 2)))
        assert await api.served_by() == "p2"
        cooling = api.lb.stats()[0].cooling_down_for_s
        checked_at = time.monotonic()

        p1 = sim.stats("p1")
        assert p1.throttled == 1
        assert p1.window_start is not None
        window_left = p1.window_start + WINDOW_S - checked_at
        # Whole-second styles round the wait up, by less than a second.
        upper = window_left + (1.0 if rounds_up else 0.0) + 0.1
        assert window_left - 0.1 <= cooling <= upper, (style, cooling, window_left)
        assert api.lb.stats()[1].cooling_down_for_s == 0


# -- 4. a failing backend ------------------------------------------------------------------------


@pytest.mark.parametrize("failure", ["500", "503"])
async def test_5xx_backend_is_skipped_by_the_circuit_breaker(make_api: MakeApi, failure: FailureMode) -> None:
    with Simulator([InstanceConfig("bad", failure=failure), InstanceConfig("good")]) as sim:
        api = make_api(backends(sim, ("bad", 1), ("good", 1)))
        served_by = [await api.served_by() for _ in range(20)]

        assert served_by == ["good"] * 20
        assert sim.stats("good").served == 20
        assert sim.stats("bad").received <= 2
        assert sim.stats("bad").served == 0


# -- 5. a refused port ---------------------------------------------------------------------------


async def test_refused_port_is_skipped(make_api: MakeApi) -> None:
    with Simulator([InstanceConfig("dead", failure="refuse"), InstanceConfig("good")]) as sim:
        api = make_api(backends(sim, ("dead", 1), ("good", 1)))
        served_by = [await api.served_by() for _ in range(20)]

        assert served_by == ["good"] * 20
        assert sim.stats("good").served == 20
        assert api.lb.stats()[0].successes == 0
        assert api.lb.stats()[0].failures >= 1


# -- openai's own default client -----------------------------------------------------------------


def test_default_httpx_client_of_the_sdk() -> None:
    with Simulator([InstanceConfig("a"), InstanceConfig("b")]) as sim:
        lb = LoadBalancer(backends(sim, ("a", 1), ("b", 2)))
        with openai.AzureOpenAI(
            azure_endpoint=sim.url("b"),
            api_key=CALLER_KEY,
            api_version=API_VERSION,
            http_client=openai.DefaultHttpxClient(transport=lb),
            max_retries=0,
        ) as client:
            raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
            assert raw.parse().choices[0].message.content
            assert raw.headers[INSTANCE_HEADER] == "a"
        assert sim.stats("a").served == 1
        assert sim.stats("b").received == 0


# -- 6. every backend throttled ------------------------------------------------------------------

ALL_THROTTLED_WINDOW_S = 3.0


def window_left(sim: Simulator, *names: str) -> float:
    """Seconds until the first of these instances opens its next window."""
    starts = [sim.stats(name).window_start for name in names]
    assert None not in starts
    return min(s for s in starts if s is not None) + ALL_THROTTLED_WINDOW_S - time.monotonic()


async def test_all_throttled_answers_429_or_waits(make_api: MakeApi) -> None:
    window = {"requests_per_window": 1, "window_s": ALL_THROTTLED_WINDOW_S}
    configs = [InstanceConfig(name, **window, header_style="retry-after-ms") for name in ("a", "b")]
    with Simulator(configs) as sim:
        pair = backends(sim, ("a", 1), ("b", 1))
        impatient = make_api(pair, max_wait_s=0)
        assert sorted([await impatient.served_by(), await impatient.served_by()]) == ["a", "b"]

        with pytest.raises(openai.RateLimitError) as caught:
            await impatient.create()
        left = window_left(sim, "a", "b")
        headers = caught.value.response.headers
        retry_after_ms = int(headers["retry-after-ms"])
        assert abs(retry_after_ms / 1000 - left) <= 0.15, (retry_after_ms, left)
        assert int(headers["retry-after"]) >= retry_after_ms / 1000 > int(headers["retry-after"]) - 1
        assert sim.stats("a").served == sim.stats("b").served == 1

        patient = make_api(pair)  # the default max_wait_s
        left = window_left(sim, "a", "b")
        start = time.monotonic()
        await patient.served_by()
        elapsed = time.monotonic() - start
        assert left - 0.05 <= elapsed < ALL_THROTTLED_WINDOW_S + 1.0, (elapsed, left)
        assert sim.stats("a").served + sim.stats("b").served == 3


# -- 7. streaming --------------------------------------------------------------------------------


async def test_stream_is_not_buffered(make_api: MakeApi, mode: str, http_lib: object) -> None:
    config = InstanceConfig("s", stream_chunks=10, stream_chunk_delay_s=0.1)
    with Simulator([config, InstanceConfig("other")]) as sim:
        plain = make_api(backends(sim, ("s", 1)), balanced=False)
        balanced = make_api(backends(sim, ("s", 1), ("other", 2)))
        # Warm both with a one-chunk stream: the first request of a client pays for its connection.
        sim.update("s", stream_chunks=1, stream_chunk_delay_s=0.0)
        await plain.stream_timings()
        await balanced.stream_timings()
        sim.update("s", stream_chunks=10, stream_chunk_delay_s=0.1)
        # The balancer goes first: the first stream measured after the warm-up sometimes pays
        # about 40 ms more (with or without the balancer), which the 0.1 s margin absorbs.

        first, total, chunks = await balanced.stream_timings()
        plain_first, plain_total, plain_chunks = await plain.stream_timings()

        print(
            f"\nstream [{mode}-{getattr(http_lib, '__name__', http_lib)}]: first chunk "
            f"{first * 1000:.1f} ms via the balancer, {plain_first * 1000:.1f} ms direct; "
            f"whole stream {total:.3f} s / {plain_total:.3f} s"
        )
        assert chunks == plain_chunks >= 10
        assert first < 0.3
        assert total >= 0.9
        assert first <= plain_first + 0.1
        assert sim.stats("other").received == 0


# -- 8. a hanging backend ------------------------------------------------------------------------


async def test_read_timeout_opens_the_breaker(make_api: MakeApi) -> None:
    with Simulator([InstanceConfig("hang", failure="hang"), InstanceConfig("p2")]) as sim:
        api = make_api(backends(sim, ("hang", 1), ("p2", 2)), timeout=0.5)
        start = time.monotonic()
        with pytest.raises(openai.APITimeoutError):
            await api.create()
        assert 0.45 <= time.monotonic() - start < 1.5
        assert api.lb.stats()[0].breaker == "open"

        start = time.monotonic()
        assert await api.served_by() == "p2"
        assert time.monotonic() - start < 0.3
        assert sim.stats("hang").received == 1


# -- 9. per-backend credentials ------------------------------------------------------------------


async def test_each_backend_gets_its_own_api_key(make_api: MakeApi) -> None:
    configs = [InstanceConfig("a", api_key="key-A"), InstanceConfig("b", api_key="key-B")]
    with Simulator(configs) as sim:
        api = make_api([Backend(sim.url("a"), 1, api_key="key-A"), Backend(sim.url("b"), 1, api_key="key-B")])
        served_by = [await api.served_by() for _ in range(10)]

        assert set(served_by) == {"a", "b"}
        # Each instance answers 401 to any other key: the caller's, or the other backend's.
        assert sim.stats("a").unauthorized == sim.stats("b").unauthorized == 0
        assert sim.stats("a").served + sim.stats("b").served == 10


async def test_default_async_httpx_client_of_the_sdk() -> None:
    with Simulator([InstanceConfig("a"), InstanceConfig("b")]) as sim:
        lb = AsyncLoadBalancer(backends(sim, ("a", 1), ("b", 2)))
        async with openai.AsyncAzureOpenAI(
            azure_endpoint=sim.url("b"),
            api_key=CALLER_KEY,
            api_version=API_VERSION,
            http_client=openai.DefaultAsyncHttpxClient(transport=lb),
            max_retries=0,
        ) as client:
            raw = await client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
            assert raw.parse().choices[0].message.content
            assert raw.headers[INSTANCE_HEADER] == "a"
        assert sim.stats("a").served == 1
        assert sim.stats("b").received == 0


# -- 10. a proxy named by the environment ----------------------------------------------------------

COMPLETION = {
    "id": "chatcmpl-proxy",
    "object": "chat.completion",
    "created": 0,
    "model": MODEL,
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "via proxy"}, "finish_reason": "stop"}
    ],
}


class _Proxy(BaseHTTPRequestHandler):
    """A forward proxy that answers every request itself, recording what it was asked."""

    protocol_version = "HTTP/1.1"
    server: _ProxyServer

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        self.server.seen.append(
            (self.path, self.headers.get("proxy-authorization"), self.headers.get("api-key"))
        )
        body = json.dumps(COMPLETION).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.send_header(INSTANCE_HEADER, "proxy")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    seen: list[tuple[str, str | None, str | None]]


@contextmanager
def forward_proxy() -> Iterator[_ProxyServer]:
    server = _ProxyServer(("127.0.0.1", 0), _Proxy)
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


async def test_default_transports_go_through_the_proxy_the_environment_names(
    make_api: MakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Simulator([InstanceConfig("direct")]) as sim, forward_proxy() as proxy:
        port = proxy.server_address[1]
        monkeypatch.setenv("HTTP_PROXY", f"http://user:secret@127.0.0.1:{port}")
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        # far.invalid does not resolve: only the proxy can reach it. The simulator is in NO_PROXY.
        far = Backend("http://far.invalid:8080", 1, api_key="far-key")
        api = make_api([far, Backend(sim.url("direct"), 2)])

        assert await api.served_by() == "proxy"
        target, authorization, api_key = proxy.seen[0]
        assert target.startswith("http://far.invalid:8080/openai/deployments/gpt-4o/chat/completions?")
        assert authorization == "Basic " + base64.b64encode(b"user:secret").decode()
        assert api_key == "far-key"

        direct = make_api([Backend(sim.url("direct"), 1)])
        assert await direct.served_by() == "direct"
        assert len(proxy.seen) == 1
