"""What the worker scripts share: one SDK call per item, through a balancer, with the sync or async client."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import openai

from openai_priority_loadbalancer import AsyncLoadBalancer, LoadBalancer
from openai_priority_loadbalancer.redis import RedisStateStore

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from openai_priority_loadbalancer import Backend


def send_each(
    redis_url: str,
    mode: str,
    backends: list[Backend],
    items: Iterable[Any],
    send: Callable[[Any, Any], Any],
    note: Callable[[Any, Any], None],
    **options: Any,
) -> list[str]:
    """Call ``send(client, item)`` for each item in turn and ``note(item, raw)`` with what it returns.

    The client is ``AzureOpenAI`` (MODE ``sync``) or ``AsyncAzureOpenAI`` (``async``) made with
    ``options``, on the SDK's own HTTP client over a balancer of ``backends`` with a
    ``RedisStateStore`` on ``redis_url`` (``-``: no store). Returns the errors, ``"Type: message"``.
    """
    store = RedisStateStore.from_url(redis_url) if redis_url != "-" else None
    errors: list[str] = []
    if mode == "sync":
        lb = LoadBalancer(backends, state=store)
        with openai.AzureOpenAI(**options, http_client=openai.DefaultHttpxClient(transport=lb)) as client:
            for item in items:
                try:
                    note(item, send(client, item))
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
        if store is not None:
            store.close()
        return errors

    async def run() -> None:
        alb = AsyncLoadBalancer(backends, state=store)
        http_client = openai.DefaultAsyncHttpxClient(transport=alb)
        async with openai.AsyncAzureOpenAI(**options, http_client=http_client) as client:
            for item in items:
                try:
                    note(item, await send(client, item))
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
        if store is not None:
            await store.aclose()

    asyncio.run(run())
    return errors
