"""Deployments end to end, through the real SDK (httpx and httpx2, sync and async) and the simulator:
a deployment priority 1 lacks, and the header spellings Azure sends (issue 15)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import openai
import pytest

from openai_priority_loadbalancer import Backend
from openai_priority_loadbalancer.simulator import DeploymentLimits, InstanceConfig, Simulator

if TYPE_CHECKING:
    from _e2e_support import MakeApi

pytestmark = pytest.mark.e2e


async def test_a_deployment_priority_1_lacks_is_served_by_priority_2(make_api: MakeApi) -> None:
    configs = [InstanceConfig("lacking", deployments={"embed": DeploymentLimits()}), InstanceConfig("having")]
    async with Simulator(configs) as sim:
        api = make_api([Backend(sim.url("lacking"), 1), Backend(sim.url("having"), 2)])
        served = [await api.served_by() for _ in range(20)]
        assert served == ["having"] * 20
        assert sim.stats("lacking").rejected == 1  # one try, then set aside for that deployment
        a, _ = api.lb.stats()
        assert a.rejected == 1


async def test_a_deployment_that_exists_nowhere_gets_the_404(make_api: MakeApi) -> None:
    configs = [InstanceConfig(name, deployments={"embed": DeploymentLimits()}) for name in ("a", "b")]
    async with Simulator(configs) as sim:
        api = make_api([Backend(sim.url("a"), 1), Backend(sim.url("b"), 2)])
        with pytest.raises(openai.NotFoundError) as caught:
            await api.create()
        assert caught.value.code == "DeploymentNotFound"
        assert (sim.stats("a").rejected, sim.stats("b").rejected) == (1, 1)


async def test_token_bound_burst_is_sent_where_its_tokens_fit(make_api: MakeApi, mode: str) -> None:
    """Chat completions of ~1,500 tokens each on instances of 6,100 tokens a second: the balancer
    reads x-ratelimit-remaining-tokens and sends no request where its tokens cannot fit."""
    if mode == "sync":
        pytest.skip("a burst needs concurrent requests: the async client")
    names = ("east", "west")
    configs = [InstanceConfig(name, tokens_per_minute=6100 * 60, latency_s=0.05) for name in names]
    async with Simulator(configs) as sim:
        api = make_api([Backend(sim.url(name), 1) for name in names], max_retries=2)
        gate = asyncio.Semaphore(6)

        async def one(i: int) -> None:
            async with gate:
                content = (f"Request {i}: " + "x" * 4000)[:4000]
                await api.create(messages=[{"role": "user", "content": content}], max_tokens=500)

        await asyncio.gather(*(one(i) for i in range(24)))
        throttled = sum(sim.stats(name).throttled for name in names)
        served = sum(sim.stats(name).served for name in names)
        assert served == 24
        assert throttled <= 4  # about one per instance per window at worst; 20-35 before tokens counted
