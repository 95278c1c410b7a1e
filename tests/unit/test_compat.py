"""A program written for openai-priority-loadbalancer 1.1.1 runs unchanged, through the real openai SDK.

Only the network is swapped: the balancer gets a ``MockTransport`` as its inner transport, answering
like Azure OpenAI. Everything else is the 1.1.1 usage from its README.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import httpx
import openai
import pytest
from _unit_support import LOGGER, httpx2, needs_httpx2

# The 1.1.1 imports, exactly.
from openai_priority_loadbalancer import AsyncLoadBalancer, Backend, BaseLoadBalancer, LoadBalancer

if TYPE_CHECKING:
    from collections.abc import Callable

EAST, WEST = "oai-eastus.openai.azure.com", "oai-westus.openai.azure.com"
API_VERSION = "2024-08-01-preview"
COMPLETION = {
    "id": "chatcmpl-123",
    "object": "chat.completion",
    "created": 1_700_000_000,
    "model": "gpt-4o",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello from the balancer."},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11},
}
EXPECTED = {  # host -> (path, api-key) each backend must receive
    EAST: ("/openai/deployments/gpt-4o/chat/completions", "obtain_from_load_balancer"),
    WEST: ("/ai/openai/deployments/gpt-4o/chat/completions", "key"),
}


def backends_1_1_1() -> list[Backend]:
    return [
        Backend("oai-eastus.openai.azure.com", 1),
        Backend("oai-westus.openai.azure.com", 1, "/ai", "key"),
    ]


class Azure:
    """Answers like Azure OpenAI; ``throttle`` lists hosts that answer 429 (retry-after 10)."""

    def __init__(self, module: Any = httpx, throttle: tuple[str, ...] = ()) -> None:
        self.module = module
        self.throttle = throttle
        self.requests: list[Any] = []

    def __call__(self, request: Any) -> Any:
        self.requests.append(request)
        if request.url.host in self.throttle:
            return self.module.Response(
                429,
                headers={"retry-after": "10"},
                json={
                    "error": {"code": "429", "message": "Rate limit is exceeded. Try again in 10 seconds."}
                },
            )
        return self.module.Response(200, json=COMPLETION)

    def check(self) -> None:
        assert self.requests
        for request in self.requests:
            path, key = EXPECTED[request.url.host]
            assert request.url.scheme == "https"
            assert request.url.path == path
            assert request.url.params["api-version"] == API_VERSION
            assert request.headers.get_list("api-key") == [key]
            assert request.headers["host"] == request.url.host
            assert json.loads(request.content)["messages"] == [{"role": "user", "content": "Hi"}]


def azure_client(backends: list[Backend], http_client: Any, **options: Any) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(
        azure_endpoint=f"https://{backends[0].host}",
        api_key="obtain_from_load_balancer",
        api_version=API_VERSION,
        http_client=http_client,
        **options,
    )


def ask(client: Any) -> Any:
    return client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])


def test_the_1_1_1_program(caplog: pytest.LogCaptureFixture) -> None:
    backends = backends_1_1_1()
    azure = Azure()
    lb = LoadBalancer(backends, transport=httpx.MockTransport(azure))
    client = azure_client(backends, httpx.Client(transport=lb))
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        for _ in range(30):
            completion = ask(client)
            assert completion.choices[0].message.content == "Hello from the balancer."
            assert completion.usage is not None
            assert completion.usage.total_tokens == 11
    azure.check()
    assert {r.url.host for r in azure.requests} == {EAST, WEST}  # same priority: both share
    assert any(r.name == LOGGER for r in caplog.records)
    client.close()


def test_failover_to_the_keyed_backend_with_its_prefix() -> None:
    backends = backends_1_1_1()
    azure = Azure(throttle=(EAST,))
    client = azure_client(
        backends, httpx.Client(transport=LoadBalancer(backends, transport=httpx.MockTransport(azure)))
    )
    for _ in range(5):
        assert ask(client).id == "chatcmpl-123"
    azure.check()
    assert [r.url.host for r in azure.requests].count(EAST) <= 1  # set aside after its 429
    assert [r.url.host for r in azure.requests][-1] == WEST


def test_all_throttled_reaches_the_sdk_as_a_rate_limit_error() -> None:
    backends = backends_1_1_1()
    azure = Azure(throttle=(EAST, WEST))
    lb = LoadBalancer(backends, transport=httpx.MockTransport(azure), max_wait_s=0)
    client = azure_client(backends, httpx.Client(transport=lb), max_retries=0)
    with pytest.raises(openai.RateLimitError) as info:
        ask(client)
    assert info.value.status_code == 429
    assert info.value.response.headers["retry-after"] == "10"
    body = info.value.body
    assert isinstance(body, dict)
    assert body.get("code") == "429" or body.get("error", {}).get("code") == "429"


async def test_the_1_1_1_async_program() -> None:
    backends = backends_1_1_1()
    azure = Azure(throttle=(WEST,))
    lb = AsyncLoadBalancer(backends, transport=httpx.MockTransport(azure))
    client = openai.AsyncAzureOpenAI(
        azure_endpoint=f"https://{backends[0].host}",
        api_key="obtain_from_load_balancer",
        api_version=API_VERSION,
        http_client=httpx.AsyncClient(transport=lb),
    )
    for _ in range(5):
        completion = await client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "Hi"}]
        )
        assert completion.choices[0].message.content == "Hello from the balancer."
    azure.check()
    await client.close()


@needs_httpx2
def test_the_same_program_on_httpx2() -> None:
    backends = backends_1_1_1()
    azure = Azure(httpx2, throttle=(EAST,))
    lb = LoadBalancer(backends, transport=httpx2.MockTransport(azure))
    client = azure_client(backends, httpx2.Client(transport=lb))
    assert ask(client).choices[0].message.content == "Hello from the balancer."
    azure.check()


def test_streaming_through_the_sdk() -> None:
    chunk = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o",
        "choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}],
    }
    second = {**chunk, "choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]}
    body = b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in (chunk, second)) + b"data: [DONE]\n\n"
    backends = backends_1_1_1()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=iter([body]), headers={"content-type": "text/event-stream"})

    client = azure_client(
        backends, httpx.Client(transport=LoadBalancer(backends, transport=httpx.MockTransport(handler)))
    )
    stream = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "Hi"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Hello"


def test_the_1_1_1_demo_with_per_backend_keys_and_a_token_provider() -> None:
    """1.1.1's aoai.py: ``Backend(host, 1, None, key)``; the client authenticates with Entra ID."""
    backends = [
        Backend("oai-eastus-xxxxxxxx.openai.azure.com", 1, None, "east-key"),
        Backend("oai-westus-xxxxxxxx.openai.azure.com", 1),
    ]
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=COMPLETION)

    client = openai.AzureOpenAI(
        azure_endpoint=f"https://{backends[0].host}",
        azure_ad_token_provider=lambda: "entra-token",
        api_version="2024-04-01-preview",
        http_client=httpx.Client(transport=LoadBalancer(backends, transport=httpx.MockTransport(handler))),
    )
    for _ in range(100):
        ask(client)
        if {r.url.host for r in seen} == {b.host for b in backends}:
            break
    for request in seen:
        if request.url.host == backends[0].host:
            assert request.headers.get_list("api-key") == ["east-key"]
            assert "authorization" not in request.headers
        else:
            assert request.headers["authorization"] == "Bearer entra-token"
            assert "api-key" not in request.headers
        assert request.url.path == "/openai/deployments/gpt-4o/chat/completions"
    assert {r.url.host for r in seen} == {b.host for b in backends}


# ---------------------------------------------------------------------- the 1.1.1 surface


def test_backend_attributes_of_1_1_1() -> None:
    east, west = backends_1_1_1()
    assert (east.host, east.priority, east.path, east.api_key) == (EAST, 1, "", None)
    assert (west.host, west.priority, west.path, west.api_key) == (WEST, 1, "/ai", "key")


@pytest.mark.parametrize("cls", [LoadBalancer, AsyncLoadBalancer])
def test_balancer_keeps_the_backends_list(cls: Callable[..., Any]) -> None:
    backends = backends_1_1_1()
    lb = cls(backends, transport=httpx.MockTransport(Azure()))
    assert isinstance(lb, BaseLoadBalancer)
    assert isinstance(lb.backends, list)
    assert lb.backends == backends
    assert all(mine is theirs for mine, theirs in zip(lb.backends, backends, strict=True))


@pytest.mark.parametrize("cls", [LoadBalancer, AsyncLoadBalancer])
def test_balancer_builds_without_a_transport(cls: Callable[..., Any]) -> None:
    """``LoadBalancer(backends)``, as in 1.1.1: no inner transport given."""
    lb = cls(backends_1_1_1())
    assert isinstance(lb, httpx.AsyncBaseTransport if cls is AsyncLoadBalancer else httpx.BaseTransport)


def test_logger_name_receives_records(caplog: pytest.LogCaptureFixture) -> None:
    backends = backends_1_1_1()
    azure = Azure(throttle=(EAST,))
    client = httpx.Client(transport=LoadBalancer(backends, transport=httpx.MockTransport(azure)))
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        for _ in range(100):  # until EAST has been tried (same priority: chosen at random)
            client.post(f"https://{EAST}/openai/deployments/gpt-4o/chat/completions", json={})
            if any(r.url.host == EAST for r in azure.requests):
                break
    levels = {r.levelno for r in caplog.records if r.name == LOGGER}
    assert logging.DEBUG in levels
    assert logging.INFO in levels  # EAST set aside after its 429
    assert logging.getLogger(LOGGER).handlers  # the library's NullHandler: no "no handler" warnings
