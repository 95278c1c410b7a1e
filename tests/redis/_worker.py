"""One worker process: chat completions through the openai SDK and a balancer sharing state on Redis.

``_worker.py REDIS_URL|- MODE N NAME=URL:PRIORITY...`` sends N chat completions one after the other
through ``AzureOpenAI`` (MODE ``sync``) or ``AsyncAzureOpenAI`` (``async``) with the SDK's own HTTP
client over a balancer of the backends given; ``-`` runs it without a shared store. Prints one JSON
object: which backend served each request (by the simulator's ``x-simulator-instance`` header) and
the errors.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import openai

from openai_priority_loadbalancer import AsyncLoadBalancer, Backend, LoadBalancer
from openai_priority_loadbalancer.redis import RedisStateStore

MESSAGES: list[Any] = [{"role": "user", "content": "Hello"}]


def main() -> None:
    redis_url, mode, count, *specs = sys.argv[1:]
    backends = []
    for spec in specs:
        _, url_priority = spec.split("=", 1)
        url, priority = url_priority.rsplit(":", 1)
        backends.append(Backend(url, int(priority)))
    store = RedisStateStore.from_url(redis_url) if redis_url != "-" else None
    served: list[str] = []
    errors: list[str] = []
    endpoint = backends[0].host
    if mode == "sync":
        lb = LoadBalancer(backends, state=store)
        client = openai.AzureOpenAI(
            azure_endpoint=endpoint,
            api_key="k",
            api_version="2024-06-01",
            http_client=openai.DefaultHttpxClient(transport=lb),
            max_retries=0,
        )
        with client:
            for _ in range(int(count)):
                try:
                    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
                    served.append(raw.headers["x-simulator-instance"])
                except Exception as exc:
                    errors.append(type(exc).__name__)
        if store is not None:
            store.close()
    else:

        async def run() -> None:
            alb = AsyncLoadBalancer(backends, state=store)
            async with openai.AsyncAzureOpenAI(
                azure_endpoint=endpoint,
                api_key="k",
                api_version="2024-06-01",
                http_client=openai.DefaultAsyncHttpxClient(transport=alb),
                max_retries=0,
            ) as aclient:
                for _ in range(int(count)):
                    try:
                        raw = await aclient.chat.completions.with_raw_response.create(
                            model="gpt-4o", messages=MESSAGES
                        )
                        served.append(raw.headers["x-simulator-instance"])
                    except Exception as exc:
                        errors.append(type(exc).__name__)
            if store is not None:
                await store.aclose()

        asyncio.run(run())
    print(json.dumps({"served": served, "errors": errors}))


if __name__ == "__main__":
    main()
