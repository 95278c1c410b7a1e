"""Async: concurrent streamed completions over simulated Azure OpenAI backends.

python examples/async_example.py
"""

from __future__ import annotations

import asyncio
from collections import Counter

import openai

from openai_priority_loadbalancer import AsyncLoadBalancer, Backend
from openai_priority_loadbalancer.simulator import InstanceConfig, Simulator


async def main() -> None:
    instances = [InstanceConfig(name, requests_per_window=4, window_s=1.0) for name in ("a", "b", "c")]
    async with Simulator(instances) as sim:
        lb = AsyncLoadBalancer([Backend(sim.url(name), 1) for name in ("a", "b", "c")])
        client = openai.AsyncAzureOpenAI(
            azure_endpoint=sim.url("a"),
            api_key="any-key",
            api_version="2024-10-21",
            http_client=openai.DefaultAsyncHttpxClient(transport=lb),
        )

        async def ask(i: int) -> str:
            stream = await client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": f"Hello #{i}"}], stream=True
            )
            parts = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
            return "".join(parts)

        async with client:
            answers = await asyncio.gather(*(ask(i) for i in range(12)))
        print(f"{len(answers)} streamed answers; the first: {answers[0]!r}")
        print("served per backend:", dict(Counter({s.backend: s.successes for s in lb.stats()})))


if __name__ == "__main__":
    asyncio.run(main())
