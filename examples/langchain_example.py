"""LangChain: AzureChatOpenAI through the balancer, sync, async and streamed, on simulated backends.

pip install langchain-openai && python examples/langchain_example.py

AzureChatOpenAI builds its openai clients itself: give it the HTTP clients, each with its balancer,
as ``http_client`` (invoke, stream) and ``http_async_client`` (ainvoke, astream). One state store
lets the two balancers act as one.
"""

from __future__ import annotations

import asyncio

import openai
from langchain_openai import AzureChatOpenAI

from openai_priority_loadbalancer import AsyncLoadBalancer, Backend, LoadBalancer, MemoryStateStore
from openai_priority_loadbalancer.simulator import InstanceConfig, Simulator


def main() -> None:
    instances = [
        InstanceConfig("primary", requests_per_window=3, window_s=60.0),  # 3 a minute: to show the overflow
        InstanceConfig("fallback"),
    ]
    with Simulator(instances) as sim:
        backends = [Backend(sim.url("primary"), 1), Backend(sim.url("fallback"), 2)]
        store = MemoryStateStore()  # the sync and the async balancer share what they learn
        lb, alb = LoadBalancer(backends, state=store), AsyncLoadBalancer(backends, state=store)
        llm = AzureChatOpenAI(
            azure_endpoint=backends[0].endpoint,
            azure_deployment="gpt-4o",
            api_version="2024-10-21",
            api_key="any-key",  # the simulator takes any key unless configured with one
            http_client=openai.DefaultHttpxClient(transport=lb),
            http_async_client=openai.DefaultAsyncHttpxClient(transport=alb),
            max_retries=0,  # the balancer fails over; no request here needs the SDK's retries
        )
        for i in range(4):
            print(f"invoke {i}: {llm.invoke(f'Hello #{i}').content}")

        async def concurrently() -> list[str]:
            answers = await asyncio.gather(*(llm.ainvoke(f"Async #{i}") for i in range(4)))
            return [str(a.content) for a in answers]

        for answer in asyncio.run(concurrently()):
            print(f"ainvoke: {answer}")
        chunks = [str(chunk.content) for chunk in llm.stream("Stream, please")]
        print(f"stream: {len(chunks)} chunks: {''.join(chunks)!r}")
        print()
        for name, balancer in (("sync", lb), ("async", alb)):
            for s in balancer.stats():
                print(f"{name:<5} {s.backend:<28} priority {s.priority}  served {s.successes}")


if __name__ == "__main__":
    main()
