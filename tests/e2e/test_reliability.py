"""Defects found by adversarial testing, each through the real openai SDK against the simulator."""

from __future__ import annotations

import asyncio
import functools
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import openai
import pytest
from _e2e_support import API_VERSION, MESSAGES, MODEL, Api, MakeApi

from openai_priority_loadbalancer import AsyncLoadBalancer, Backend, LoadBalancer, MemoryStateStore
from openai_priority_loadbalancer.simulator import InstanceConfig, Simulator

if TYPE_CHECKING:
    from types import ModuleType

pytestmark = pytest.mark.e2e


def _client(http_lib: ModuleType, mode: str, backends: list[Backend], **options: Any) -> Any:
    """An SDK client of ``mode`` through a balancer over ``backends`` (options go to the SDK client)."""
    options = {"azure_endpoint": backends[0].host, "api_version": API_VERSION, "max_retries": 0, **options}
    if mode == "sync":
        return openai.AzureOpenAI(**options, http_client=http_lib.Client(transport=LoadBalancer(backends)))
    lb = AsyncLoadBalancer(backends)
    return openai.AsyncAzureOpenAI(**options, http_client=http_lib.AsyncClient(transport=lb))


async def _create(client: Any) -> Any:
    result = client.chat.completions.create(model=MODEL, messages=MESSAGES)
    return await result if isinstance(client, openai.AsyncAzureOpenAI) else result


async def _close(client: Any) -> None:
    if isinstance(client, openai.AsyncAzureOpenAI):
        await client.close()
    else:
        client.close()


# -- a caller's credential that cannot be a header value -------------------------------------------


async def test_a_callers_key_with_a_stray_space_is_not_shown_in_the_error(
    http_lib: ModuleType, mode: str
) -> None:
    """The HTTP library refuses the header and quotes it; what reaches the caller does not show it."""
    with Simulator([InstanceConfig("a")]) as sim:
        client = _client(http_lib, mode, [Backend(sim.url("a"), 1)], api_key="caller-SECRET-key ")
        try:
            with pytest.raises(openai.APIConnectionError) as raised:
                await _create(client)
        finally:
            await _close(client)
        assert "SECRET" not in "".join(traceback.format_exception(raised.value))
        assert sim.stats("a").received == 0


async def _all_at_once(api: Api, count: int, **kwargs: Any) -> list[Any]:
    """``count`` chat completions sent together (tasks with an async client, threads with a sync one)."""
    if api.is_async:
        return list(await asyncio.gather(*(api.create(**kwargs) for _ in range(count))))
    create = functools.partial(api.client.chat.completions.create, model=MODEL, messages=MESSAGES, **kwargs)

    def run() -> list[Any]:
        with ThreadPoolExecutor(count) as pool:
            return list(pool.map(lambda _: create(), range(count)))

    return await asyncio.to_thread(run)  # the event loop stays free for other callers meanwhile


# -- Retry-After: 0 ----------------------------------------------------------------------------------


async def test_retry_after_0_does_not_spin_on_the_backend(make_api: MakeApi) -> None:
    """A backend that throttles while saying "retry now": the balancer backs off instead of hammering it
    every few milliseconds (300 to 500 429s in about a second before), and every request is served."""
    config = InstanceConfig(
        "p", requests_per_window=3, window_s=1.0, header_style="retry-after-0", ratelimit_headers=False
    )
    with Simulator([config]) as sim:
        api = make_api([Backend(sim.url("p"), 1)])
        start = time.monotonic()
        completions = await _all_at_once(api, 6)
        elapsed = time.monotonic() - start

        stats = sim.stats("p")
        assert len(completions) == 6
        assert stats.served == 6
        assert stats.throttled <= 30, stats.throttled
        assert elapsed < 5.0  # loosely: about two windows, on a loaded machine


# -- a cold start with long completions -----------------------------------------------------------

COMPLETION_S = 2.0


async def test_a_cold_start_of_long_completions_serves_them_side_by_side(make_api: MakeApi) -> None:
    """A fresh balancer sent one request at a time until the backend first answered: 10 concurrent
    long completions with max_wait_s shorter than one got 8 or 9 balancer 429s. Its first request now
    holds the others back for a round trip at most: all 10 are served in about one completion time."""
    with Simulator([InstanceConfig("a", latency_s=COMPLETION_S)]) as sim:
        api = make_api([Backend(sim.url("a"), 1)], max_wait_s=COMPLETION_S / 2)
        start = time.monotonic()
        completions = await _all_at_once(api, 10)
        elapsed = time.monotonic() - start

        assert len(completions) == 10
        stats = sim.stats("a")
        assert (stats.served, stats.throttled) == (10, 0)
        # Side by side: all of them reached the backend within the first one's hold (not one after
        # the other, a completion apart); the wall time is about one completion (loosely: a loaded
        # machine).
        arrivals = [r.arrival for r in stats.records]
        assert max(arrivals) - min(arrivals) < COMPLETION_S / 2, arrivals
        assert elapsed < 3 * COMPLETION_S, elapsed


async def test_workers_sharing_a_store_start_cold_side_by_side(make_api: MakeApi) -> None:
    """The same across balancers sharing a store: another balancer's probe holds them back as briefly."""
    store = MemoryStateStore()
    with Simulator([InstanceConfig("a", latency_s=COMPLETION_S)]) as sim:
        apis = [
            make_api([Backend(sim.url("a"), 1)], max_wait_s=COMPLETION_S / 2, state=store) for _ in range(2)
        ]
        start = time.monotonic()
        served = await asyncio.gather(*(_all_at_once(api, 5) for api in apis))
        elapsed = time.monotonic() - start

        assert [len(s) for s in served] == [5, 5]
        stats = sim.stats("a")
        assert stats.served == 10
        arrivals = [r.arrival for r in stats.records]
        assert max(arrivals) - min(arrivals) < COMPLETION_S / 2, arrivals
        assert elapsed < 3 * COMPLETION_S, elapsed
