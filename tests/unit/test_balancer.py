"""The request flow through the synchronous LoadBalancer, with httpx and with httpx2 clients.

Every test runs twice (the ``lib`` fixture): once with ``httpx.Client`` over ``httpx.MockTransport``
and once with ``httpx2.Client`` over ``httpx2.MockTransport``. Time is a fake clock moved by hand.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import traceback
from email.utils import formatdate
from typing import TYPE_CHECKING, Any

import _unit_support
import httpx
import pytest
from _unit_support import (
    CALLER_URL,
    LIBS,
    LOGGER,
    WAIT,
    A,
    B,
    C,
    MakeLb,
    held,
    httpx2,
    needs_httpx2,
    routing,
    stats_by_id,
)

from openai_priority_loadbalancer import AsyncLoadBalancer, Backend, LoadBalancer

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

#: Requests carry the caller's own ``api-key`` unless a test passes ``headers=``; a backend's key replaces it.
post = functools.partial(_unit_support.post, api_key="caller-key")


def run_in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run ``target`` in a daemon thread; its result (or exception) lands in the returned list."""
    result: list[Any] = []

    def body() -> None:
        try:
            result.append(target())
        except BaseException as exc:  # handed to the test thread
            result.append(exc)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, result


# ---------------------------------------------------------------------- it is a transport


@pytest.mark.parametrize("module", LIBS.values(), ids=LIBS.keys())
def test_is_a_transport_of_every_library(module: Any) -> None:
    lb = LoadBalancer([Backend(A, 1)], transport=module.MockTransport(lambda r: module.Response(200)))
    assert isinstance(lb, module.BaseTransport)
    assert not isinstance(lb, module.AsyncBaseTransport)


def test_close_closes_the_inner_transport(make_lb: MakeLb, router: Any) -> None:
    lb = make_lb([Backend(A, 1)])
    lb.close()
    assert router.transport.closed == 1


def test_context_manager_closes_on_exit(make_lb: MakeLb, router: Any) -> None:
    with make_lb([Backend(A, 1)]) as lb:
        assert isinstance(lb, LoadBalancer)
        assert router.transport.closed == 0
    assert router.transport.closed == 1


def test_closing_the_client_closes_the_balancer(make_lb: MakeLb, router: Any, lib: Any) -> None:
    with lib.Client(transport=make_lb([Backend(A, 1)])) as client:
        assert post(client).status_code == 200
    assert router.transport.closed == 1


class _FakeInner:
    """Stands in for a library's HTTPTransport: answers 200 naming itself, records its closing."""

    instances: list[_FakeInner]

    def __init__(self, module: Any, **kwargs: Any) -> None:
        self.module = module
        self.kwargs = kwargs
        self.closed = 0
        self.requests: list[Any] = []

    def handle_request(self, request: Any) -> Any:
        assert isinstance(request, self.module.Request)
        self.requests.append(request)
        return self.module.Response(200, json={"inner": self.module.__name__})

    def close(self) -> None:
        self.closed += 1


@pytest.fixture
def fake_inners(monkeypatch: pytest.MonkeyPatch) -> list[_FakeInner]:
    created: list[_FakeInner] = []
    for module in LIBS.values():

        def factory(*, _module: Any = module, **kwargs: Any) -> _FakeInner:
            inner = _FakeInner(_module, **kwargs)
            created.append(inner)
            return inner

        monkeypatch.setattr(module, "HTTPTransport", factory)
    return created


def test_default_inner_transport_follows_the_request_library(fake_inners: list[_FakeInner]) -> None:
    lb = LoadBalancer([Backend(A, 1)])
    for name, module in LIBS.items():
        with module.Client(transport=lb) as client:
            response = client.get(f"https://caller.example/{name}")  # distinct URLs: see the next test
        assert isinstance(response, module.Response)
        assert response.json() == {"inner": name}
    used = {inner.module.__name__ for inner in fake_inners if inner.requests}
    assert used == set(LIBS)


def test_default_inner_transports_one_per_backend_and_library_built_on_use_all_closed(
    fake_inners: list[_FakeInner],
) -> None:
    lb = LoadBalancer([Backend(A, 1), Backend(B, 1)])
    assert fake_inners == []  # nothing built before it is needed
    for module in LIBS.values():
        client = module.Client(transport=lb)  # not closed here: closing a client closes the balancer
        for _ in range(40):
            assert client.get("https://caller.example/").status_code == 200
    # One transport per backend and library, each sending only to its own backend.
    assert len(fake_inners) == 2 * len(LIBS)
    for inner in fake_inners:
        assert len({request.url.host for request in inner.requests}) == 1
    assert {(i.module.__name__, i.requests[0].url.host) for i in fake_inners} == {
        (name, host) for name in LIBS for host in (A, B)
    }
    # Those of one library share one TLS context.
    for module in LIBS.values():
        contexts = {id(i.kwargs["verify"]) for i in fake_inners if i.module is module}
        assert len(contexts) == 1
    lb.close()
    assert all(inner.closed == 1 for inner in fake_inners)


def _proxy_by_backend(fake_inners: list[_FakeInner]) -> dict[str, Any]:
    return {inner.requests[0].url.host: inner.kwargs["proxy"] for inner in fake_inners}


def test_default_transports_take_the_proxy_the_environment_names(
    fake_inners: list[_FakeInner], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://user:secret@proxy.example:3128")
    monkeypatch.setenv("HTTP_PROXY", "http://plain-proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", f"localhost, .{C}, {B}")
    lb = LoadBalancer([Backend(A, 1), Backend(B, 1), Backend(f"x.{C}", 1), Backend(f"http://{C}", 1)])
    client = httpx.Client(transport=lb)
    for _ in range(80):
        assert client.get("https://caller.example/").status_code == 200
    assert _proxy_by_backend(fake_inners) == {
        A: "http://user:secret@proxy.example:3128",  # HTTPS_PROXY for an https request
        B: None,  # NO_PROXY names it
        f"x.{C}": None,  # NO_PROXY names its domain
        C: "http://plain-proxy.example:3128",  # ".c.example" is for subdomains; HTTP_PROXY for http
    }
    assert "secret" not in repr(lb)


@pytest.mark.parametrize(
    ("environment", "proxy"),
    [
        ({}, None),
        ({"HTTP_PROXY": "proxy.example:3128"}, None),  # an https request
        ({"ALL_PROXY": "proxy.example:3128"}, "http://proxy.example:3128"),
        ({"HTTPS_PROXY": "http://proxy.example:3128", "NO_PROXY": "*"}, None),
        (
            {"https_proxy": "http://proxy.example:3128", "no_proxy": "other.example"},
            "http://proxy.example:3128",
        ),
        (
            {"HTTPS_PROXY": "http://proxy.example:3128", "NO_PROXY": "http://a.example"},
            "http://proxy.example:3128",
        ),
        ({"HTTPS_PROXY": "http://proxy.example:3128", "NO_PROXY": "https://A.EXAMPLE"}, None),
    ],
)
def test_environment_proxy_rules(
    fake_inners: list[_FakeInner], monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], proxy: Any
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    client = httpx.Client(transport=LoadBalancer([Backend(A, 1)]))
    assert client.get("https://caller.example/").status_code == 200
    assert _proxy_by_backend(fake_inners) == {A: proxy}


def test_a_given_transport_is_used_whatever_the_environment_says(
    make_lb: MakeLb, router: Any, client_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert post(client_for(make_lb([Backend(A, 1)]))).status_code == 200
    assert router.hosts == [A]


# ---------------------------------------------------------------------- priority and sharing


def test_priority_1_gets_everything_while_available(make_lb: MakeLb, router: Any, client_for: Any) -> None:
    client = client_for(make_lb([Backend(B, 2), Backend(A, 1), Backend(C, 3)]))
    for _ in range(50):
        assert post(client).status_code == 200
    assert set(router.hosts) == {A}


def test_same_priority_backends_share(make_lb: MakeLb, router: Any, client_for: Any) -> None:
    client = client_for(make_lb([Backend(A, 1), Backend(B, 1), Backend(C, 2)]))
    for _ in range(200):
        assert post(client).status_code == 200
    counts = {host: router.hosts.count(host) for host in (A, B, C)}
    assert counts[C] == 0
    assert counts[A] > 50
    assert counts[B] > 50


def test_weights_are_respected(make_lb: MakeLb, router: Any, client_for: Any) -> None:
    client = client_for(make_lb([Backend(A, 1, weight=3), Backend(B, 1, weight=1)]))
    for _ in range(2000):
        post(client)
    share = router.hosts.count(A) / 2000
    assert 0.69 < share < 0.81


def test_fewest_in_flight_preferred(make_lb: MakeLb, router: Any, client_for: Any, lib: Any) -> None:
    entered, release = threading.Event(), threading.Event()
    hold = held(lib, entered, release)

    def first_held(request: Any) -> Any:
        return lib.Response(200) if entered.is_set() else hold(request)

    router.always(A, first_held).always(B, first_held)
    client = client_for(make_lb([Backend(A, 1), Backend(B, 1)]))
    thread, result = run_in_thread(lambda: post(client))
    assert entered.wait(WAIT)
    busy = router.hosts[0]
    idle = B if busy == A else A
    for _ in range(5):
        assert routing(post(client)).backend == idle
    release.set()
    thread.join(WAIT)
    assert result[0].status_code == 200
    assert all(s.in_flight == 0 for s in lb_stats(client))


def lb_stats(client: Any) -> Any:
    return client._transport.stats()


def test_priority_2_only_when_all_priority_1_are_cooling(
    make_lb: MakeLb, router: Any, client_for: Any, clock: Any
) -> None:
    router.script(A, (429, {"retry-after": "10"}))
    client = client_for(make_lb([Backend(A, 1), Backend(B, 1), Backend(C, 2)]))
    while A not in router.hosts:  # until A has throttled, once
        assert post(client).json() == {"host": B}
    # A is cooling; B still takes everything, C nothing.
    for _ in range(5):
        assert post(client).json() == {"host": B}
    router.script(B, (429, {"retry-after": "20"}))
    response = post(client)  # B throttles too: only now priority 2
    assert response.json() == {"host": C}
    assert [(a.backend, a.status) for a in routing(response).attempts] == [(B, 429), (C, 200)]
    assert post(client).json() == {"host": C}
    clock.set(clock.start + 10)
    assert post(client).json() == {"host": A}


# ---------------------------------------------------------------------- the per-attempt request


@pytest.mark.parametrize(
    ("backend", "caller_url", "expected_url", "expected_host"),
    [
        (
            Backend("a.example", 1),
            "https://caller.example/openai/x?q=1",
            "https://a.example/openai/x?q=1",
            "a.example",
        ),
        (  # a bare host keeps the client's scheme and port, as 1.1.1 did
            Backend("a.example", 1),
            "http://caller.example:8080/openai/x",
            "http://a.example:8080/openai/x",
            "a.example:8080",
        ),
        (
            Backend("a.example:9000", 1),
            "https://caller.example/openai/x",
            "https://a.example:9000/openai/x",
            "a.example:9000",
        ),
        (
            Backend("http://127.0.0.1:8081/prefix", 1),
            "https://caller.example/openai/x?q=1",
            "http://127.0.0.1:8081/prefix/openai/x?q=1",
            "127.0.0.1:8081",
        ),
        (
            Backend("https://a.example/ai/", 1),
            "http://caller.example:8080/openai/x",
            "https://a.example/ai/openai/x",
            "a.example",
        ),
        (
            Backend("a.example", 1, "/ai"),
            "https://caller.example/openai/x",
            "https://a.example/ai/openai/x",
            "a.example",
        ),
        (
            Backend("https://a.example/base", 1, "ai"),
            "https://caller.example/openai/x",
            "https://a.example/base/ai/openai/x",
            "a.example",
        ),
        (
            Backend("[::1]:8080", 1),
            "http://caller.example/openai/x",
            "http://[::1]:8080/openai/x",
            "[::1]:8080",
        ),
        (
            Backend("http://[::1]:8080/x", 1),
            "https://caller.example/openai/x",
            "http://[::1]:8080/x/openai/x",
            "[::1]:8080",
        ),
    ],
)
def test_attempt_is_addressed_to_the_backend(
    make_lb: MakeLb,
    router: Any,
    client_for: Any,
    backend: Backend,
    caller_url: str,
    expected_url: str,
    expected_host: str,
) -> None:
    client = client_for(make_lb([backend]))
    response = post(client, caller_url)
    assert response.status_code == 200
    (sent,) = router.requests
    assert str(sent.url) == expected_url
    assert sent.headers["host"] == expected_host
    # The caller's request is left as it was.
    assert str(response.request.url) == caller_url


def test_backend_api_key_replaces_caller_credentials(make_lb: MakeLb, router: Any, client_for: Any) -> None:
    client = client_for(make_lb([Backend(A, 1, api_key="key-A")]))
    post(client, headers={"api-key": "caller-key", "Authorization": "Bearer caller-token"})
    (sent,) = router.requests
    assert sent.headers.get_list("api-key") == ["key-A"]
    assert "authorization" not in sent.headers


def test_backend_without_key_gets_caller_headers(make_lb: MakeLb, router: Any, client_for: Any) -> None:
    client = client_for(make_lb([Backend(A, 1)]))
    post(client, headers={"api-key": "caller-key", "Authorization": "Bearer caller-token", "x-custom": "1"})
    (sent,) = router.requests
    assert sent.headers["api-key"] == "caller-key"
    assert sent.headers["authorization"] == "Bearer caller-token"
    assert sent.headers["x-custom"] == "1"


def test_failover_does_not_leak_the_previous_backend_key(
    make_lb: MakeLb, router: Any, client_for: Any
) -> None:
    router.script(A, 429)
    client = client_for(make_lb([Backend(A, 1, api_key="key-A"), Backend(B, 2)]))
    response = post(client, headers={"api-key": "caller-key", "Authorization": "Bearer caller-token"})
    assert response.status_code == 200
    to_a, to_b = router.requests
    assert to_a.headers["api-key"] == "key-A"
    assert to_b.headers.get_list("api-key") == ["caller-key"]
    assert to_b.headers["authorization"] == "Bearer caller-token"
    assert to_b.headers["host"] == B


def test_failover_between_keyed_backends(make_lb: MakeLb, router: Any, client_for: Any) -> None:
    router.script(A, 503)
    client = client_for(make_lb([Backend(A, 1, api_key="key-A"), Backend(B, 2, api_key="key-B")]))
    post(client)
    assert [r.headers.get_list("api-key") for r in router.requests] == [["key-A"], ["key-B"]]


def test_callers_request_object_is_untouched(make_lb: MakeLb, router: Any, client_for: Any) -> None:
    router.script(A, 429)
    client = client_for(make_lb([Backend(A, 1, "/ai", "key-A"), Backend(B, 2, "/b")]))
    request = client.build_request("POST", CALLER_URL, json={"x": 1}, headers={"api-key": "caller-key"})
    headers_before = list(request.headers.multi_items())
    response = client.send(request)
    assert response.status_code == 200
    assert response.request is request
    assert str(request.url) == CALLER_URL
    assert list(request.headers.multi_items()) == headers_before
    assert all(r is not request for r in router.requests)


def test_path_prefix_applied_exactly_once(make_lb: MakeLb, router: Any, client_for: Any, clock: Any) -> None:
    """1.1.1 rewrote the caller's request in place, so a retry got the prefix twice."""
    router.script(A, (429, {"retry-after": "1"}))
    client = client_for(make_lb([Backend(A, 1, "/a"), Backend(B, 2, "/b")]))
    request = client.build_request("POST", CALLER_URL, json={})
    client.send(request)
    clock.advance(1)
    client.send(request)
    client.send(request)
    paths = [(r.url.host, r.url.path) for r in router.requests]
    expected = "/openai/deployments/gpt-4o/chat/completions"
    assert paths == [(A, "/a" + expected), (B, "/b" + expected), (A, "/a" + expected), (A, "/a" + expected)]
    assert all(r.url.params["api-version"] == "2024-06-01" for r in router.requests)


def test_deployments_rewritten_only_for_that_backend(make_lb: MakeLb, router: Any, client_for: Any) -> None:
    router.script(A, 429)
    backends = [Backend(A, 1, "/ai", deployments={"gpt-4o": "gpt-4o-eastus"}), Backend(B, 2)]
    client = client_for(make_lb(backends))
    post(client)
    to_a, to_b = router.requests
    assert to_a.url.path == "/ai/openai/deployments/gpt-4o-eastus/chat/completions"
    assert to_a.url.params["api-version"] == "2024-06-01"
    assert to_b.url.path == "/openai/deployments/gpt-4o/chat/completions"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/openai/deployments/gpt-4o/chat/completions", "/openai/deployments/gpt-4o-x/chat/completions"),
        ("/openai/deployments/gpt-4o", "/openai/deployments/gpt-4o-x"),
        (
            "/openai/deployments/gpt-4o-mini/chat/completions",
            "/openai/deployments/gpt-4o-mini/chat/completions",
        ),
        ("/openai/deployments/other/embeddings", "/openai/deployments/other/embeddings"),
        ("/openai/v1/chat/completions", "/openai/v1/chat/completions"),
        ("/v1/openai/deployments/gpt-4o/x", "/v1/openai/deployments/gpt-4o/x"),
    ],
)
def test_deployment_mapping_matches_the_whole_name(
    make_lb: MakeLb, router: Any, client_for: Any, path: str, expected: str
) -> None:
    client = client_for(make_lb([Backend(A, 1, deployments={"gpt-4o": "gpt-4o-x"})]))
    post(client, f"https://caller.example{path}?api-version=1")
    assert router.requests[0].url.path == expected
    assert router.requests[0].url.query == b"api-version=1"


def test_v1_body_model_mapped_only_for_that_backend(make_lb: MakeLb, router: Any, client_for: Any) -> None:
    router.script(A, 429)
    client = client_for(make_lb([Backend(A, 1, deployments={"gpt-4o": "gpt-4o-east"}), Backend(B, 2)]))
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "h\u00e9"}]}
    response = post(client, "https://caller.example/openai/v1/chat/completions", json=body)
    assert response.status_code == 200
    to_a, to_b = router.requests
    assert json.loads(to_a.content) == {**body, "model": "gpt-4o-east"}
    assert int(to_a.headers["content-length"]) == len(to_a.content)
    assert json.loads(to_b.content) == body
    assert int(to_b.headers["content-length"]) == len(to_b.content)
    assert json.loads(response.request.content) == body


def test_streamed_upload_is_replayed_on_failover(make_lb: MakeLb, router: Any, client_for: Any) -> None:
    router.script(A, 500)
    client = client_for(make_lb([Backend(A, 1), Backend(B, 2)]))

    def body() -> Iterator[bytes]:
        yield b'{"a": '
        yield b"1}"

    response = client.post(CALLER_URL, content=body())
    assert response.status_code == 200
    assert [r.content for r in router.requests] == [b'{"a": 1}', b'{"a": 1}']


def test_a_rewritten_streamed_body_is_framed_once(make_lb: MakeLb, router: Any, client_for: Any) -> None:
    """A streamed upload is sent chunked; once its model is rewritten it has a length, and only that:
    both ``Content-Length`` and ``Transfer-Encoding`` on one request is a request-smuggling hazard."""
    client = client_for(make_lb([Backend(A, 1, deployments={"gpt-4o": "gpt-4o-east"}), Backend(B, 2)]))
    router.script(A, 429)

    def body() -> Iterator[bytes]:
        yield b'{"model": "gpt-4o", '
        yield b'"messages": []}'

    response = client.post("https://caller.example/openai/v1/chat/completions", content=body())
    assert response.status_code == 200
    to_a, to_b = router.requests
    assert json.loads(to_a.content)["model"] == "gpt-4o-east"
    assert int(to_a.headers["content-length"]) == len(to_a.content)
    assert "transfer-encoding" not in to_a.headers
    # Not rewritten, the other attempt goes as the caller framed it.
    assert json.loads(to_b.content)["model"] == "gpt-4o"
    assert to_b.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in to_b.headers


# ---------------------------------------------------------------------- 429


def test_429_sets_backend_aside_for_exactly_the_header_time(
    make_lb: MakeLb, router: Any, client_for: Any, clock: Any
) -> None:
    router.script(A, (429, {"retry-after": "7"}))
    lb = make_lb([Backend(A, 1), Backend(B, 2)])
    client = client_for(lb)
    response = post(client)
    assert response.status_code == 200
    assert response.json() == {"host": B}
    assert [(a.backend, a.status) for a in routing(response).attempts] == [(A, 429), (B, 200)]
    assert stats_by_id(lb)[A].cooling_down_for_s == pytest.approx(7)
    clock.set(clock.start + 7 - 0.001)
    assert post(client).json() == {"host": B}
    clock.set(clock.start + 7)
    assert post(client).json() == {"host": A}
    assert router.hosts == [A, B, B, A]


@pytest.mark.parametrize(
    ("headers", "options"),
    [
        ({"retry-after": "0"}, {}),
        ({"retry-after-ms": "1"}, {}),
        ({"retry-after": "<http-date 30 s ago>"}, {}),
        ({"retry-after": "5"}, {"max_cooldown_s": 0}),
        ({"x-ratelimit-reset-requests": "0s"}, {}),
    ],
    ids=lambda v: json.dumps(v),
)
def test_a_429_saying_retry_now_backs_off(
    make_lb: MakeLb,
    router: Any,
    client_for: Any,
    clock: Any,
    wall: Any,
    headers: dict[str, str],
    options: dict[str, Any],
) -> None:
    """Taken at its word, "retry now" had the balancer try the backend again every 10 ms (hundreds of
    429s a second): a 429 sets its backend aside for 25 ms at least, doubling with each further 429
    up to default_cooldown_s, and a success starts again from 25 ms."""
    if headers.get("retry-after", "").startswith("<http-date"):
        headers = {"retry-after": formatdate(wall.now - 30, usegmt=True)}
    router.always(A, (429, headers))
    lb = make_lb([Backend(A, 1), Backend(B, 2)], default_cooldown_s=1.5, **options)
    client = client_for(lb)
    cooldowns = []
    for _ in range(8):
        assert post(client).json() == {"host": B}
        cooldowns.append(round(stats_by_id(lb)[A].cooling_down_for_s, 6))
        clock.advance(stats_by_id(lb)[A].cooling_down_for_s)
    assert cooldowns == [0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.5, 1.5]
    assert router.hosts == [A, B] * 8
    router.script(A, 200)
    assert post(client).json() == {"host": A}
    assert post(client).json() == {"host": B}
    assert stats_by_id(lb)[A].cooling_down_for_s == pytest.approx(0.025)


@pytest.mark.parametrize(
    ("headers", "cooldown"),
    [
        ({"retry-after-ms": "2500"}, 2.5),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"retry-after": "7"}, 7),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after": "<http-date now + 30 s>"}, 30),
        ({"x-ratelimit-reset-requests": "2s"}, 2),
        ({"x-ratelimit-reset-requests": "250ms"}, 0.25),
        ({"x-ratelimit-reset-tokens": "1m30s"}, 90),
        (
            {
                "x-ratelimit-reset-requests": "2s",
                "x-ratelimit-reset-tokens": "20s",
                "x-ratelimit-remaining-requests": "5",
                "x-ratelimit-remaining-tokens": "0",
            },
            20,
        ),
        ({}, 12),  # no header: default_cooldown_s
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else str(v),
)
def test_429_cooldown_headers(
    make_lb: MakeLb,
    router: Any,
    client_for: Any,
    clock: Any,
    wall: Any,
    headers: dict[str, str],
    cooldown: float,
) -> None:
    if headers.get("retry-after", "").startswith("<http-date"):
        headers = {"retry-after": formatdate(wall.now + 30, usegmt=True)}
    router.script(A, (429, headers))
    client = client_for(make_lb([Backend(A, 1), Backend(B, 2)], default_cooldown_s=12))
    assert post(client).json() == {"host": B}
    clock.set(clock.start + cooldown - 0.001)
    assert post(client).json() == {"host": B}
    clock.set(clock.start + cooldown)
    assert post(client).json() == {"host": A}


@pytest.mark.parametrize(
    "headers",
    [
        {"retry-after": "soon"},
        {"retry-after": "-5"},
        {"retry-after-ms": "1e3"},
        {"retry-after": "Thu, 31 Feb 2026 00:00:00 GMT"},
        {"x-ratelimit-reset-requests": "forever"},
    ],
    ids=lambda v: next(iter(v.values())),
)
def test_malformed_cooldown_falls_back_to_default_and_warns(
    make_lb: MakeLb,
    router: Any,
    client_for: Any,
    clock: Any,
    caplog: pytest.LogCaptureFixture,
    headers: dict[str, str],
) -> None:
    router.script(A, (429, headers))
    client = client_for(make_lb([Backend(A, 1), Backend(B, 2)], default_cooldown_s=12))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert post(client).json() == {"host": B}
    assert any(r.levelno == logging.WARNING and r.name == LOGGER for r in caplog.records)
    clock.set(clock.start + 12 - 0.001)
    assert post(client).json() == {"host": B}
    clock.set(clock.start + 12)
    assert post(client).json() == {"host": A}


def test_absurd_cooldown_is_clamped(make_lb: MakeLb, router: Any, client_for: Any, clock: Any) -> None:
    router.script(A, (429, {"retry-after": "999999999"}))
    client = client_for(make_lb([Backend(A, 1), Backend(B, 2)], max_cooldown_s=60))
    post(client)
    clock.set(clock.start + 60)
    assert post(client).json() == {"host": A}


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_discarded_response_is_closed_unread(
    make_lb: MakeLb, router: Any, client_for: Any, lib: Any, observed_stream: Any, status: int
) -> None:
    stream = observed_stream()
    router.script(A, lambda request: lib.Response(status, headers={"retry-after": "1"}, stream=stream))
    client = client_for(make_lb([Backend(A, 1), Backend(B, 2)]))
    assert post(client).status_code == 200
    assert stream.closed
    assert not stream.iterated


def test_429_is_counted_as_throttled(make_lb: MakeLb, router: Any, client_for: Any) -> None:
    router.script(A, 429)
    lb = make_lb([Backend(A, 1), Backend(B, 2)])
    post(client_for(lb))
    stats = stats_by_id(lb)
    assert (stats[A].requests, stats[A].throttled, stats[A].failures, stats[A].successes) == (1, 1, 0, 0)
    assert (stats[B].requests, stats[B].throttled, stats[B].failures, stats[B].successes) == (1, 0, 0, 1)
    assert stats[A].breaker == "closed"


def test_throttled_backend_shares_again_after_its_cooldown(
    make_lb: MakeLb, router: Any, client_for: Any, clock: Any
) -> None:
    """After a 429's cooldown the backend is a full member of its priority again."""
    router.script(A, (429, {"retry-after": "1"}))
    client = client_for(make_lb([Backend(A, 1), Backend(B, 1)]))
    while A not in router.hosts:
        post(client)
    clock.advance(1)
    router.requests.clear()
    for _ in range(100):
        assert post(client).status_code == 200
    assert router.hosts.count(A) > 20
    assert router.hosts.count(B) > 20


def test_throttled_backend_comes_back_alone(
    make_lb: MakeLb, router: Any, client_for: Any, clock: Any
) -> None:
    router.script(A, (429, {"retry-after": "1"}))
    client = client_for(make_lb([Backend(A, 1), Backend(B, 2)]))
    post(client)
    clock.advance(1)
    router.requests.clear()
    for _ in range(10):
        assert post(client).status_code == 200
    assert router.hosts == [A] * 10


# ---------------------------------------------------------------------- 5xx and the breaker


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_fails_over_with_exponential_backoff(
    make_lb: MakeLb, router: Any, client_for: Any, clock: Any, status: int
) -> None:
    router.always(A, status)
    lb = make_lb([Backend(A, 1), Backend(B, 2)], failure_backoff_s=1, failure_backoff_max_s=5)
    client = client_for(lb)
    moment = clock.start
    for backoff in (1, 2, 4, 5, 5):
        router.requests.clear()
        clock.set(moment)
        response = post(client)
        assert response.json() == {"host": B}
        assert [(a.backend, a.status) for a in routing(response).attempts] == [(A, status), (B, 200)]
        assert stats_by_id(lb)[A].breaker == "open"
        clock.set(moment + backoff - 0.001)
        assert post(client).json() == {"host": B}
        assert router.for_host(A) == router.requests[:1]
        moment += backoff
    assert stats_by_id(lb)[A].failures == 5


def test_success_closes_the_breaker(make_lb: MakeLb, router: Any, client_for: Any, clock: Any) -> None:
    router.script(A, 500, 500)
    lb = make_lb([Backend(A, 1), Backend(B, 2)], failure_backoff_s=1, failure_backoff_max_s=60)
    client = client_for(lb)
    post(client)  # backoff 1
    clock.advance(1)
    post(client)  # the probe fails: backoff 2
    assert stats_by_id(lb)[A].cooling_down_for_s == pytest.approx(2)
    clock.advance(1)
    assert stats_by_id(lb)[A].breaker == "open"
    clock.advance(1)
    assert stats_by_id(lb)[A].breaker == "half-open"
    assert post(client).json() == {"host": A}  # the probe succeeds
    assert stats_by_id(lb)[A].breaker == "closed"
    # A later failure starts from the first backoff again.
    router.script(A, 500)
    moment = clock.now
    post(client)
    assert stats_by_id(lb)[A].cooling_down_for_s == pytest.approx(1)
    clock.set(moment + 1)
    assert post(client).json() == {"host": A}


@pytest.mark.parametrize(
    ("retry_after", "cooldown"),
    [("30", 30), ("0.5", 1), ("1500ms", 1)],
    ids=["longer", "shorter", "malformed"],
)
def test_5xx_retry_after_honoured_when_longer(
    make_lb: MakeLb, router: Any, client_for: Any, clock: Any, retry_after: str, cooldown: float
) -> None:
    router.script(A, (503, {"retry-after": retry_after}))
    client = client_for(make_lb([Backend(A, 1), Backend(B, 2)], failure_backoff_s=1))
    assert post(client).json() == {"host": B}
    clock.set(clock.start + cooldown - 0.001)
    assert post(client).json() == {"host": B}
    clock.set(clock.start + cooldown)
    assert post(client).json() == {"host": A}


def test_429_does_not_grow_the_backoff(make_lb: MakeLb, router: Any, client_for: Any, clock: Any) -> None:
    router.script(A, *([(429, {"retry-after": "1"})] * 3), 500)
    lb = make_lb([Backend(A, 1), Backend(B, 2)], failure_backoff_s=1, failure_backoff_max_s=60)
    client = client_for(lb)
    for _ in range(3):
        post(client)
        clock.advance(1)
    moment = clock.now
    assert post(client).json() == {"host": B}  # A answered 500
    assert stats_by_id(lb)[A].cooling_down_for_s == pytest.approx(1)
    clock.set(moment + 1)
    assert post(client).json() == {"host": A}


def test_only_one_probe_while_half_open(
    make_lb: MakeLb, router: Any, client_for: Any, clock: Any, lib: Any
) -> None:
    entered, release = threading.Event(), threading.Event()
    router.script(A, 500, held(lib, entered, release))
    lb = make_lb([Backend(A, 1), Backend(B, 2)], failure_backoff_s=1)
    client = client_for(lb)
    assert post(client).json() == {"host": B}
    clock.advance(1)
    assert stats_by_id(lb)[A].breaker == "half-open"
    thread, result = run_in_thread(lambda: post(client))
    assert entered.wait(WAIT)
    # While the probe is out, everything else goes elsewhere.
    for _ in range(3):
        assert post(client).json() == {"host": B}
    assert stats_by_id(lb)[A].in_flight == 1
    release.set()
    thread.join(WAIT)
    assert result[0].json() == {"host": A}
    assert stats_by_id(lb)[A].breaker == "closed"
    assert post(client).json() == {"host": A}
    assert [s.in_flight for s in lb.stats()] == [0, 0]


# ---------------------------------------------------------------------- returned unchanged


@pytest.mark.parametrize("status", [400, 401, 403, 404, 408, 413, 422, 501])
def test_other_statuses_are_returned_unchanged(
    make_lb: MakeLb, router: Any, client_for: Any, lib: Any, status: int
) -> None:
    router.script(
        A, lambda request: lib.Response(status, headers={"x-original": "yes"}, json={"error": "mine"})
    )
    lb = make_lb([Backend(A, 1), Backend(B, 2)])
    response = post(client_for(lb))
    assert response.status_code == status
    assert response.json() == {"error": "mine"}
    assert response.headers["x-original"] == "yes"
    assert router.hosts == [A]
    assert routing(response).backend == A
    assert [(a.backend, a.status) for a in routing(response).attempts] == [(A, status)]
    stats = stats_by_id(lb)[A]
    assert (stats.cooling_down_for_s, stats.failures, stats.throttled, stats.breaker) == (0, 0, 0, "closed")


# ---------------------------------------------------------------------- transport errors


@pytest.mark.parametrize("error", ["ConnectError", "ConnectTimeout", "RemoteProtocolError"])
def test_connection_errors_fail_over(
    make_lb: MakeLb, router: Any, client_for: Any, lib: Any, clock: Any, error: str
) -> None:
    router.script(A, getattr(lib, error)("boom"))
    lb = make_lb([Backend(A, 1), Backend(B, 2)], failure_backoff_s=1)
    client = client_for(lb)
    response = post(client)
    assert response.json() == {"host": B}
    assert [(a.backend, a.status, a.error) for a in routing(response).attempts] == [
        (A, None, error),
        (B, 200, None),
    ]
    stats = stats_by_id(lb)[A]
    assert (stats.failures, stats.in_flight, stats.breaker) == (1, 0, "open")
    clock.advance(1)
    assert post(client).json() == {"host": A}


def test_read_timeout_sets_aside_and_is_raised(
    make_lb: MakeLb, router: Any, client_for: Any, lib: Any
) -> None:
    router.script(A, lib.ReadTimeout("slow"))
    lb = make_lb([Backend(A, 1), Backend(B, 2)], failure_backoff_s=1)
    client = client_for(lb)
    with pytest.raises(lib.ReadTimeout):
        post(client)
    assert router.hosts == [A]  # the backend may have acted on it: not replayed elsewhere
    stats = stats_by_id(lb)[A]
    assert (stats.failures, stats.in_flight, stats.cooling_down_for_s) == (1, 0, 1)
    assert post(client).json() == {"host": B}


@pytest.mark.parametrize("error", ["RuntimeError", "PoolTimeout", "KeyboardInterrupt"])
def test_unrelated_errors_are_raised_and_not_counted(
    make_lb: MakeLb, router: Any, client_for: Any, lib: Any, error: str
) -> None:
    exc_type = (
        getattr(lib, error, None)
        or {"RuntimeError": RuntimeError, "KeyboardInterrupt": KeyboardInterrupt}[error]
    )
    router.script(A, exc_type("local trouble"))
    lb = make_lb([Backend(A, 1), Backend(B, 2)])
    client = client_for(lb)
    with pytest.raises(exc_type):
        post(client)
    assert router.hosts == [A]
    stats = stats_by_id(lb)[A]
    assert (stats.failures, stats.in_flight, stats.cooling_down_for_s, stats.breaker) == (0, 0, 0, "closed")
    assert post(client).json() == {"host": A}


def test_all_backends_unreachable_gives_a_429(
    make_lb: MakeLb, router: Any, client_for: Any, lib: Any
) -> None:
    router.script(A, lib.ConnectError("refused"))
    router.script(B, lib.ConnectError("refused"))
    lb = make_lb([Backend(A, 1), Backend(B, 2)], failure_backoff_s=2)
    response = post(client_for(lb))
    assert response.status_code == 429
    assert response.headers["retry-after"] == "2"
    assert routing(response).backend is None
    assert [(a.backend, a.error) for a in routing(response).attempts] == [
        (A, "ConnectError"),
        (B, "ConnectError"),
    ]
    assert all(s.in_flight == 0 for s in lb.stats())


# ---------------------------------------------------------------------- the synthesized 429


def test_all_throttled_gives_one_429_naming_the_soonest(
    make_lb: MakeLb, router: Any, client_for: Any, clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    router.script(A, (429, {"retry-after": "7"}))
    router.script(B, (429, {"retry-after-ms": "3500"}))
    lb = make_lb([Backend(A, 1), Backend(B, 2)])
    client = client_for(lb)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        response = post(client)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "4"
    assert response.headers["retry-after-ms"] == "3500"
    assert response.headers["x-should-retry"] == "true"
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"]["code"] == "429"
    assert isinstance(body["error"]["message"], str)
    assert routing(response).backend is None
    assert [(a.backend, a.status) for a in routing(response).attempts] == [(A, 429), (B, 429)]
    assert [r.levelno for r in caplog.records if r.name == LOGGER] == [logging.WARNING]
    # While all are cooling, no request reaches a backend.
    clock.set(clock.start + 1.5)
    again = post(client)
    assert again.status_code == 429
    assert again.headers["retry-after"] == "2"
    assert again.headers["retry-after-ms"] == "2000"
    assert routing(again).attempts == ()
    assert len(router.requests) == 2
    clock.set(clock.start + 3.5)
    assert post(client).json() == {"host": B}
    assert all(s.in_flight == 0 for s in lb.stats())


def test_synthesized_429_has_exact_milliseconds(make_lb: MakeLb, router: Any, client_for: Any) -> None:
    router.script(A, (429, {"retry-after": "7"}))
    router.script(B, (429, {"retry-after-ms": "3200"}))
    response = post(client_for(make_lb([Backend(A, 1), Backend(B, 2)])))
    assert response.headers["retry-after"] == "4"
    assert response.headers["retry-after-ms"] == "3200"


def test_synthesized_429_whole_seconds_round_up(make_lb: MakeLb, router: Any, client_for: Any) -> None:
    router.script(A, (429, {"retry-after": "3"}))
    router.script(B, (429, {"retry-after": "0.25"}))
    response = post(client_for(make_lb([Backend(A, 1), Backend(B, 1)])))
    assert response.headers["retry-after"] == "1"
    assert response.headers["retry-after-ms"] == "250"


def test_synthesized_429_is_a_response_of_the_client_library(
    make_lb: MakeLb, router: Any, client_for: Any, lib: Any
) -> None:
    router.script(A, 429)
    response = post(client_for(make_lb([Backend(A, 1)])))
    assert response.status_code == 429
    assert isinstance(response, lib.Response)
    assert str(response.request.url) == CALLER_URL


# ---------------------------------------------------------------------- waiting for a backend (max_wait_s)


def test_waits_for_the_soonest_backend_within_max_wait(
    make_lb: MakeLb, router: Any, client_for: Any, fake_sleep: list[float]
) -> None:
    router.script(A, (429, {"retry-after": "7"}))
    router.script(B, (429, {"retry-after-ms": "3500"}))
    lb = make_lb([Backend(A, 1), Backend(B, 2)], max_wait_s=30)
    response = post(client_for(lb))
    assert response.json() == {"host": B}
    assert sum(fake_sleep) == pytest.approx(3.5)
    assert [(a.backend, a.status) for a in routing(response).attempts] == [(A, 429), (B, 429), (B, 200)]
    assert all(s.in_flight == 0 for s in lb.stats())


def test_no_wait_beyond_max_wait(
    make_lb: MakeLb, router: Any, client_for: Any, fake_sleep: list[float]
) -> None:
    router.script(A, (429, {"retry-after": "7"}))
    router.script(B, (429, {"retry-after-ms": "3500"}))
    response = post(client_for(make_lb([Backend(A, 1), Backend(B, 2)], max_wait_s=3)))
    assert response.status_code == 429
    assert response.headers["retry-after"] == "4"
    assert fake_sleep == []


def test_no_wait_beyond_the_read_timeout(
    make_lb: MakeLb, router: Any, lib: Any, fake_sleep: list[float]
) -> None:
    router.script(A, (429, {"retry-after": "7"}))
    lb = make_lb([Backend(A, 1)], max_wait_s=30)
    with lib.Client(transport=lb, timeout=lib.Timeout(60, read=5)) as client:
        response = post(client)
    assert response.status_code == 429
    assert fake_sleep == []


# ---------------------------------------------------------------------- routing and streaming


def test_routing_lists_every_attempt_in_order(
    make_lb: MakeLb, router: Any, client_for: Any, lib: Any
) -> None:
    router.script(A, 503)
    router.script(B, lib.ConnectError("refused"))
    router.script(C, 429)
    router.script("d.example", 201)
    backends = [Backend(A, 1), Backend(B, 2), Backend(C, 3), Backend("d.example", 4)]
    response = post(client_for(make_lb(backends)))
    record = routing(response)
    assert record.backend == "d.example"
    assert [(a.backend, a.status, a.error) for a in record.attempts] == [
        (A, 503, None),
        (B, None, "ConnectError"),
        (C, 429, None),
        ("d.example", 201, None),
    ]
    assert all(a.elapsed_s >= 0 for a in record.attempts)


def test_elapsed_and_latency_come_from_the_injected_clock(
    make_lb: MakeLb, router: Any, client_for: Any, clock: Any, lib: Any
) -> None:
    def slow(request: Any) -> Any:
        clock.advance(0.25)
        return lib.Response(200)

    router.script(A, slow)
    lb = make_lb([Backend(A, 1)])
    response = post(client_for(lb))
    assert routing(response).attempts[0].elapsed_s == pytest.approx(0.25)
    assert stats_by_id(lb)[A].latency_p50_ms == pytest.approx(250)


def test_streamed_body_is_not_read_by_the_balancer(
    make_lb: MakeLb, router: Any, client_for: Any, lib: Any
) -> None:
    produced: list[str] = []

    def events() -> Iterator[bytes]:
        produced.append("first")
        yield b"data: 1\n\n"
        produced.append("second")
        yield b"data: 2\n\n"
        produced.append("done")

    router.script(
        A, lambda request: lib.Response(200, content=events(), headers={"content-type": "text/event-stream"})
    )
    client = client_for(make_lb([Backend(A, 1)]))
    with client.stream("POST", CALLER_URL, json={"stream": True}) as response:
        assert response.status_code == 200
        assert routing(response).backend == A
        assert produced == []
        chunks = response.iter_raw()
        assert next(chunks) == b"data: 1\n\n"
        assert produced == ["first"]
        assert next(chunks) == b"data: 2\n\n"
        assert produced == ["first", "second"]


# ---------------------------------------------------------------------- budget headers on successes


def test_success_with_spent_budget_sets_backend_aside_until_reset(
    make_lb: MakeLb, router: Any, client_for: Any, clock: Any
) -> None:
    router.script(A, (200, {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2s"}))
    lb = make_lb([Backend(A, 1), Backend(B, 2)])
    client = client_for(lb)
    assert post(client).json() == {"host": A}  # the success itself is returned
    assert stats_by_id(lb)[A].cooling_down_for_s == pytest.approx(2)
    clock.set(clock.start + 2 - 0.001)
    assert post(client).json() == {"host": B}
    clock.set(clock.start + 2)
    assert post(client).json() == {"host": A}


def test_spent_tokens_set_backend_aside_until_token_reset(
    make_lb: MakeLb, router: Any, client_for: Any, clock: Any
) -> None:
    headers = {
        "x-ratelimit-remaining-requests": "10",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-requests": "1s",
        "x-ratelimit-reset-tokens": "6s",
    }
    router.script(A, (200, headers))
    client = client_for(make_lb([Backend(A, 1), Backend(B, 2)]))
    post(client)
    clock.set(clock.start + 6 - 0.001)
    assert post(client).json() == {"host": B}
    clock.set(clock.start + 6)
    assert post(client).json() == {"host": A}


def test_minus_one_means_unknown(make_lb: MakeLb, router: Any, client_for: Any) -> None:
    headers = {
        "x-ratelimit-limit-requests": "-1",
        "x-ratelimit-remaining-requests": "-1",
        "x-ratelimit-remaining-tokens": "-1",
        "x-ratelimit-reset-requests": "-1",
        "x-ratelimit-reset-tokens": "0",
    }
    router.always(A, (200, headers))
    lb = make_lb([Backend(A, 1), Backend(B, 2)])
    client = client_for(lb)
    for _ in range(5):
        assert post(client).json() == {"host": A}
    stats = stats_by_id(lb)[A]
    assert (stats.cooling_down_for_s, stats.remaining_requests, stats.remaining_tokens) == (0, None, None)


def test_remaining_budget_is_reported(make_lb: MakeLb, router: Any, client_for: Any) -> None:
    router.script(A, (200, {"x-ratelimit-remaining-requests": "41", "x-ratelimit-remaining-tokens": "9000"}))
    lb = make_lb([Backend(A, 1)])
    post(client_for(lb))
    stats = stats_by_id(lb)[A]
    assert (stats.remaining_requests, stats.remaining_tokens) == (41, 9000)


def test_spent_budget_without_reset_is_not_believed_forever(
    make_lb: MakeLb, router: Any, client_for: Any, clock: Any
) -> None:
    router.script(A, (200, {"x-ratelimit-remaining-requests": "0"}))
    client = client_for(make_lb([Backend(A, 1), Backend(B, 1)]))
    while A not in router.hosts:
        post(client)
    clock.advance(3600)  # whatever window it was, it has long reset
    router.requests.clear()
    for _ in range(100):
        post(client)
    assert router.hosts.count(A) > 20


def test_a_new_window_brings_the_known_limit_not_an_unlimited_budget(
    make_lb: MakeLb, router: Any, client_for: Any, clock: Any
) -> None:
    """When a report's reset passes, the backend is believed to hold its limit again, and no more."""
    budget = {"x-ratelimit-remaining-requests": "1", "x-ratelimit-limit-requests": "2"}
    router.script(A, (200, {**budget, "x-ratelimit-reset-requests": "1s"}))
    router.always(A, 400)  # answers that say nothing of the budget, and do not succeed
    lb = make_lb([Backend(A, 1), Backend(B, 1)])
    client = client_for(lb)
    while A not in router.hosts:
        post(client)
    assert stats_by_id(lb)[A].remaining_requests == 1
    clock.advance(1)  # the window reset: a fresh budget of 2
    believed = []
    while len(believed) < 2:
        if routing(post(client)).backend == A:
            believed.append(stats_by_id(lb)[A].remaining_requests)
    assert believed == [1, 0]


def test_budget_headers_on_the_probe_restore_concurrency(
    make_lb: MakeLb, router: Any, client_for: Any, clock: Any, lib: Any
) -> None:
    """After a 429, one request finds out whether the window reset; its budget headers say how much."""
    entered, release = threading.Event(), threading.Event()
    router.script(
        A,
        (429, {"retry-after": "1"}),
        (200, {"x-ratelimit-remaining-requests": "50"}),
        held(lib, entered, release),
    )
    lb = make_lb([Backend(A, 1)])
    client = client_for(lb)
    assert post(client).status_code == 429
    clock.advance(1)
    assert post(client).status_code == 200  # the one request that finds out
    thread, result = run_in_thread(lambda: post(client))
    assert entered.wait(WAIT)
    assert post(client).json() == {"host": A}  # concurrently with the held one
    release.set()
    thread.join(WAIT)
    assert result[0].status_code == 200


def test_lone_backend_serves_concurrently_again_after_a_429(
    make_lb: MakeLb, router: Any, client_for: Any, clock: Any, lib: Any
) -> None:
    entered, release = threading.Event(), threading.Event()
    router.script(A, (429, {"retry-after": "1"}), 200, held(lib, entered, release))
    lb = make_lb([Backend(A, 1)])
    client = client_for(lb)
    assert post(client).status_code == 429
    clock.advance(1)
    assert post(client).status_code == 200  # the window has reset: a plain success
    clock.advance(3600)
    thread, result = run_in_thread(lambda: post(client))
    assert entered.wait(WAIT)
    try:
        second = post(client)  # while the first is out: the balancer answers 429 itself
    finally:
        release.set()
        thread.join(WAIT)
    assert result[0].status_code == 200
    assert second.status_code == 200


# ---------------------------------------------------------------------- token providers


def test_sync_token_provider_sets_bearer_for_its_backend_only(
    make_lb: MakeLb, router: Any, client_for: Any
) -> None:
    calls: list[int] = []

    def provider() -> str:
        calls.append(1)
        return "token-A"

    router.script(A, 429)
    client = client_for(make_lb([Backend(A, 1, azure_ad_token_provider=provider), Backend(B, 2)]))
    post(client, headers={"api-key": "caller-key"})
    to_a, to_b = router.requests
    assert to_a.headers["authorization"] == "Bearer token-A"
    assert "api-key" not in to_a.headers
    assert to_b.headers["api-key"] == "caller-key"
    assert "authorization" not in to_b.headers
    assert len(calls) == 1


def test_async_token_provider_with_sync_balancer_raises_type_error(
    make_lb: MakeLb, router: Any, client_for: Any
) -> None:
    async def provider() -> str:
        return "token"

    lb = make_lb([Backend(A, 1, azure_ad_token_provider=provider), Backend(B, 2)])
    with pytest.raises(TypeError, match="AsyncLoadBalancer"):
        post(client_for(lb))
    assert router.requests == []
    assert all(s.in_flight == 0 for s in lb.stats())


def test_failing_token_provider_is_raised_and_not_counted(
    make_lb: MakeLb, router: Any, client_for: Any
) -> None:
    def provider() -> str:
        raise PermissionError("no credential")

    lb = make_lb([Backend(A, 1, azure_ad_token_provider=provider), Backend(B, 2)])
    with pytest.raises(PermissionError):
        post(client_for(lb))
    assert router.requests == []
    stats = stats_by_id(lb)[A]
    assert (stats.in_flight, stats.failures, stats.cooling_down_for_s) == (0, 0, 0)


@pytest.mark.parametrize("token", ["t\u00f6ken", "token\r\nx-injected: 1", "token-SECRET ", " token-SECRET"])
def test_a_token_that_cannot_be_a_header_fails_clearly_without_leaking_in_flight(
    make_lb: MakeLb, router: Any, client_for: Any, token: str
) -> None:
    lb = make_lb([Backend(A, 1, azure_ad_token_provider=lambda: token), Backend(B, 2)])
    with pytest.raises(ValueError, match=r"not printable ASCII|whitespace") as raised:
        post(client_for(lb))
    assert token not in str(raised.value)
    assert router.requests == []
    assert [s.in_flight for s in lb.stats()] == [0, 0]


@pytest.mark.parametrize("header", ["api-key", "authorization"])
def test_an_error_quoting_the_callers_credential_does_not_show_it(
    make_lb: MakeLb, router: Any, client_for: Any, lib: Any, header: str
) -> None:
    """An HTTP library refusing a header value quotes it; the balancer takes the secret out of the text."""
    value = "caller-SECRET-key " if header == "api-key" else "Bearer caller-SECRET-token "
    cause = ValueError(f"Illegal header value {value.encode()!r}")
    error = lib.LocalProtocolError(f"Illegal header value {value.encode()!r}")
    error.__cause__ = cause
    router.script(A, error)
    lb = make_lb([Backend(A, 1), Backend(B, 2)])
    with pytest.raises(lib.LocalProtocolError) as raised:
        post(client_for(lb), headers={header: value})
    assert "Illegal header value" in str(raised.value)
    assert "SECRET" not in "".join(traceback.format_exception(raised.value))
    assert [s.in_flight for s in lb.stats()] == [0, 0]


# ---------------------------------------------------------------------- logging and secrets


def test_logging_levels(
    make_lb: MakeLb, router: Any, client_for: Any, clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    router.script(A, (429, {"retry-after": "1"}))
    client = client_for(make_lb([Backend(A, 1), Backend(B, 2)]))
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        post(client)
        records = [r for r in caplog.records if r.name == LOGGER]
        debug = [r.getMessage() for r in records if r.levelno == logging.DEBUG]
        info = [r.getMessage() for r in records if r.levelno == logging.INFO]
        assert len(debug) == 2  # one per attempt
        assert A in debug[0]
        assert B in debug[1]
        assert len(info) == 1
        assert A in info[0]  # set aside
        caplog.clear()
        clock.advance(1)
        post(client)
        info = [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.INFO]
        assert len(info) == 1
        assert A in info[0]  # available again
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_secrets_never_appear(
    make_lb: MakeLb,
    router: Any,
    client_for: Any,
    lib: Any,
    clock: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret_a, secret_b, token = "sk-SECRET-123", "sk-SECRET-456", "eyJ-SECRET-TOKEN"
    backends = [
        Backend(A, 1, "/ai", secret_a, deployments={"gpt-4o": "gpt-4o-east"}),
        Backend(B, 1, api_key=secret_b),
        Backend(C, 2, azure_ad_token_provider=lambda: token),
    ]
    router.script(A, (429, {"retry-after": "soon"}), 500)
    router.script(B, 503, lib.ConnectError("refused"))
    router.script(C, (429, {"retry-after": "1"}), lib.ReadTimeout("slow"))
    lb = make_lb(backends)
    client = client_for(lb)
    texts: list[str] = []
    with caplog.at_level(logging.DEBUG):
        first = post(client)  # all three fail: the synthesized 429
        texts += [first.text, str(first.headers), repr(routing(first))]
        clock.advance(60)
        with pytest.raises(lib.ReadTimeout) as raised:
            post(client)
        texts += [str(raised.value), repr(raised.value)]
        clock.advance(60)
        ok = post(client)
        texts += [ok.text, repr(routing(ok))]
    assert first.status_code == 429
    texts += [r.getMessage() for r in caplog.records]
    texts += [repr(r.args) for r in caplog.records]
    texts += [repr(lb), str(lb), str(lb.stats()), *map(repr, backends), *map(str, backends)]
    leaks = [t for t in texts if "SECRET" in t]
    assert leaks == []
    assert len(caplog.records) > 5


# ---------------------------------------------------------------------- mixing libraries


@needs_httpx2
def test_one_balancer_serves_httpx_and_httpx2_clients(fake_inners: list[_FakeInner]) -> None:
    lb = LoadBalancer([Backend(A, 1)])
    with httpx.Client(transport=lb) as one, httpx2.Client(transport=lb) as two:
        assert isinstance(one.get("https://caller.example/x"), httpx.Response)
        assert isinstance(two.get("https://caller.example/x"), httpx2.Response)
    assert sum(len(inner.requests) for inner in fake_inners) == 2


@pytest.mark.parametrize("module", LIBS.values(), ids=LIBS.keys())
def test_async_class_is_not_a_sync_transport(module: Any) -> None:
    lb = AsyncLoadBalancer([Backend(A, 1)], transport=module.MockTransport(lambda r: module.Response(200)))
    assert not isinstance(lb, module.BaseTransport)


# ---------------------------------------------------------------------- budgets under concurrency


def test_a_backend_never_heard_from_takes_one_request_first(
    make_lb: MakeLb, router: Any, client_for: Any, lib: Any
) -> None:
    """Its budget is unknown: a burst would land in 429s, so the first request goes alone."""
    entered, release = threading.Event(), threading.Event()
    router.script(A, held(lib, entered, release))
    client = client_for(make_lb([Backend(A, 1), Backend(B, 2)]))
    thread, result = run_in_thread(lambda: post(client))
    assert entered.wait(WAIT)
    assert routing(post(client)).backend == B  # A's first answer is not in yet
    release.set()
    thread.join(WAIT)
    assert routing(result[0]).backend == A
    assert routing(post(client)).backend == A  # it answered: A serves freely again


def test_a_report_is_taken_as_counting_none_of_the_attempts_still_in_flight(
    make_lb: MakeLb, router: Any, client_for: Any, lib: Any
) -> None:
    """A backend admits concurrent attempts in any order: "2 remaining" with 2 others out may mean 0."""
    first = [threading.Event(), threading.Event()]
    second = [threading.Event(), threading.Event()]
    budget = {"x-ratelimit-remaining-requests": "2", "x-ratelimit-limit-requests": "10"}

    def reports(request: Any) -> Any:
        return lib.Response(200, headers=budget, json={"host": request.url.host})

    router.script(
        A,
        (200, {"x-ratelimit-remaining-requests": "9"}),
        held(lib, *first),
        held(lib, *second),
        reports,
    )
    lb = make_lb([Backend(A, 1), Backend(B, 2)])
    client = client_for(lb)
    post(client)  # A's first answer: plenty left
    threads = []
    for entered, _ in (first, second):
        threads.append(run_in_thread(lambda: post(client)))
        assert entered.wait(WAIT)
    assert routing(post(client)).backend == A  # reports 2 remaining, with 2 still out
    assert stats_by_id(lb)[A].remaining_requests == 0
    assert routing(post(client)).backend == B  # believed spent while attempts are out: not A
    for _, release in (first, second):
        release.set()
    for thread, _ in threads:
        thread.join(WAIT)
