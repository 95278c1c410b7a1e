"""A second worker process continuing Responses chains another process started.

``_chains.py REDIS_URL|- MODE URL... < ids`` reads one response id per line from stdin and, for
each, sends one ``responses.create(previous_response_id=id)`` through ``AzureOpenAI`` (MODE ``sync``)
or ``AsyncAzureOpenAI`` (``async``) over a balancer of the backends given (priority 1 each), with a
``RedisStateStore`` on REDIS_URL or, for ``-``, no store. Prints one JSON object: per id, the
instance that served the follow-up and how the balancer knew where to send it; and the errors.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import openai

from openai_priority_loadbalancer import AsyncLoadBalancer, Backend, LoadBalancer
from openai_priority_loadbalancer.redis import RedisStateStore


def main() -> None:
    redis_url, mode, *urls = sys.argv[1:]
    ids = sys.stdin.read().split()
    backends = [Backend(url, 1) for url in urls]
    store = RedisStateStore.from_url(redis_url) if redis_url != "-" else None
    served: dict[str, list[str | None]] = {}
    errors: list[str] = []

    def note(response_id: str, raw: Any) -> None:
        pinned = raw.http_response.extensions["openai_priority_loadbalancer"].pinned
        served[response_id] = [raw.headers["x-simulator-instance"], pinned.owner if pinned else None]

    options: dict[str, Any] = {"azure_endpoint": urls[0], "api_key": "k", "api_version": "2025-04-01-preview"}
    if mode == "sync":
        with openai.AzureOpenAI(
            **options, http_client=openai.DefaultHttpxClient(transport=LoadBalancer(backends, state=store))
        ) as client:
            for response_id in ids:
                try:
                    note(
                        response_id,
                        client.responses.with_raw_response.create(
                            model="gpt-4o", input="Go on", previous_response_id=response_id
                        ),
                    )
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
        if store is not None:
            store.close()
    else:

        async def run() -> None:
            lb = AsyncLoadBalancer(backends, state=store)
            async with openai.AsyncAzureOpenAI(
                **options, http_client=openai.DefaultAsyncHttpxClient(transport=lb)
            ) as client:
                for response_id in ids:
                    try:
                        note(
                            response_id,
                            await client.responses.with_raw_response.create(
                                model="gpt-4o", input="Go on", previous_response_id=response_id
                            ),
                        )
                    except Exception as exc:
                        errors.append(f"{type(exc).__name__}: {exc}")
            if store is not None:
                await store.aclose()

        asyncio.run(run())
    print(json.dumps({"served": served, "errors": errors}))


if __name__ == "__main__":
    main()
