"""Balancers in different processes, through the real openai SDK to the simulator, sharing one Redis.

Process A meets a 429 from the priority-1 backend x; process B, started afterwards, never sends x a
request: it read x's cooldown from Redis before its first choice. A process without the store, as a
control, tries x first. Then the same in one process, with two SDK clients on two balancers, each
with a store of its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import openai
import pytest
from _e2e_support import API_VERSION, CALLER_KEY, Api
from _redis_support import script_reports

from openai_priority_loadbalancer import AsyncLoadBalancer, Backend, LoadBalancer
from openai_priority_loadbalancer.redis import RedisStateStore
from openai_priority_loadbalancer.simulator import InstanceConfig, Simulator

if TYPE_CHECKING:
    from collections.abc import Iterator

    from _redis_support import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.e2e]

# x throttles everything for a 30 s window (its 429 says "retry after" the window's end); y serves.
CONFIGS = [InstanceConfig("x", requests_per_window=0, window_s=30.0), InstanceConfig("y")]


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(CONFIGS) as simulator:
        yield simulator


def run_worker(env: dict[str, str], redis_url: str, mode: str, count: int, sim: Simulator) -> dict[str, Any]:
    specs = [f"x={sim.url('x')}:1", f"y={sim.url('y')}:2"]
    [report] = script_reports("_worker.py", [[redis_url, mode, str(count), *specs]], env)
    assert report["errors"] == []
    return report


@pytest.mark.parametrize(("first", "second"), [("sync", "async"), ("async", "sync")])
def test_a_cooldown_met_in_one_process_steers_the_next(
    redis_server: RedisServer, worker_env: dict[str, str], sim: Simulator, first: str, second: str
) -> None:
    a = run_worker(worker_env, redis_server.url, first, 1, sim)
    assert a["served"] == ["y"]  # x answered 429, the balancer failed over
    assert sim.stats("x").received == 1
    assert sim.stats("x").throttled == 1

    b = run_worker(worker_env, redis_server.url, second, 5, sim)
    assert b["served"] == ["y"] * 5
    assert sim.stats("x").received == 1, "process B sent x nothing: it knew x's cooldown from Redis"

    control = run_worker(worker_env, "-", second, 1, sim)  # no shared store
    assert control["served"] == ["y"]
    assert sim.stats("x").received == 2, "without the store, a fresh process tries x first"


def _client(mode: str, lb: LoadBalancer | AsyncLoadBalancer, endpoint: str) -> Any:
    if mode == "sync":
        return openai.AzureOpenAI(
            azure_endpoint=endpoint,
            api_key=CALLER_KEY,
            api_version=API_VERSION,
            http_client=openai.DefaultHttpxClient(transport=lb),
            max_retries=0,
        )
    return openai.AsyncAzureOpenAI(
        azure_endpoint=endpoint,
        api_key=CALLER_KEY,
        api_version=API_VERSION,
        http_client=openai.DefaultAsyncHttpxClient(transport=lb),
        max_retries=0,
    )


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_two_sdk_clients_with_stores_of_their_own_share_a_cooldown(
    redis_server: RedisServer, sim: Simulator, mode: str
) -> None:
    backends = [Backend(sim.url("x"), 1), Backend(sim.url("y"), 2)]
    stores = [RedisStateStore.from_url(redis_server.url) for _ in range(2)]
    cls = LoadBalancer if mode == "sync" else AsyncLoadBalancer
    apis = [Api(_client(mode, cls(backends, state=s), sim.url("x")), None) for s in stores]
    try:
        assert await apis[0].served_by() == "y"
        assert sim.stats("x").received == 1
        assert [await apis[1].served_by() for _ in range(3)] == ["y"] * 3
        assert sim.stats("x").received == 1
    finally:
        for api, store in zip(apis, stores, strict=True):
            if mode == "sync":
                api.client.close()
                store.close()
            else:
                await api.client.close()
                await store.aclose()
