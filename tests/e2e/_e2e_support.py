"""Shared pieces of the end-to-end suite: the SDK wrapper that hides sync vs async, and constants."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import openai

if TYPE_CHECKING:
    from openai_priority_loadbalancer import AsyncLoadBalancer, LoadBalancer

API_VERSION = "2024-06-01"
CALLER_KEY = "caller-key"
MODEL = "gpt-4o"
MESSAGES = [{"role": "user", "content": "Hello there"}]
INSTANCE_HEADER = "x-simulator-instance"


class Api:
    """One SDK client on one balancer, with awaitable calls whatever the client's flavour.

    A sync client's calls run inline: the simulator serves from its own thread, so blocking the
    test's event loop is harmless.
    """

    def __init__(self, client: Any, lb: LoadBalancer | AsyncLoadBalancer | None) -> None:
        self.client = client
        self._lb = lb
        self.is_async = isinstance(client, openai.AsyncAzureOpenAI)

    @property
    def lb(self) -> LoadBalancer | AsyncLoadBalancer:
        assert self._lb is not None, "this client does not go through a balancer"
        return self._lb

    async def _call(self, function: Callable[..., Any], **kwargs: Any) -> Any:
        result = function(**kwargs)
        return await result if self.is_async else result

    async def create(self, **kwargs: Any) -> Any:
        """``chat.completions.create`` with the test's model and messages unless given."""
        kwargs = {"model": MODEL, "messages": MESSAGES, **kwargs}
        return await self._call(self.client.chat.completions.create, **kwargs)

    async def served_by(self, **kwargs: Any) -> str:
        """Send one chat completion; return the simulated instance that answered it."""
        kwargs = {"model": MODEL, "messages": MESSAGES, **kwargs}
        raw = await self._call(self.client.chat.completions.with_raw_response.create, **kwargs)
        completion = raw.parse()
        assert completion.choices[0].message.content
        return str(raw.headers[INSTANCE_HEADER])

    async def stream_timings(self, **kwargs: Any) -> tuple[float, float, int]:
        """Stream one chat completion: (seconds to the first chunk, seconds to the end, chunks)."""
        kwargs = {"model": MODEL, "messages": MESSAGES, "stream": True, **kwargs}
        start = time.perf_counter()
        first: float | None = None
        chunks = 0
        stream = await self._call(self.client.chat.completions.create, **kwargs)
        if self.is_async:
            async with stream:
                async for _ in stream:
                    first = time.perf_counter() - start if first is None else first
                    chunks += 1
        else:
            with stream:
                for _ in stream:
                    first = time.perf_counter() - start if first is None else first
                    chunks += 1
        assert first is not None, "the stream had no chunk"
        return first, time.perf_counter() - start, chunks


MakeApi = Callable[..., Api]
