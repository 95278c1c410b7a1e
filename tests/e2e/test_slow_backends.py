"""Slow backends (DESIGN 11): a stream that does not start in time is taken elsewhere.

The real openai SDK through the balancer to the simulator, sync and async, with every installed HTTP
library. ``latency_s`` holds back everything of a simulated answer, headers included (a backend slow to
start); ``first_chunk_delay_s`` sends a stream's headers at once and holds back its first chunk.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest

from openai_priority_loadbalancer import Backend
from openai_priority_loadbalancer.simulator import InstanceConfig, Simulator

if TYPE_CHECKING:
    from _e2e_support import MakeApi

pytestmark = pytest.mark.e2e


def two(sim: Simulator) -> list[Backend]:
    return [Backend(sim.url("p1"), 1), Backend(sim.url("p2"), 2)]


async def test_streams_go_elsewhere_while_priority_one_is_slow_to_start(make_api: MakeApi) -> None:
    # Each of p2's streams takes about 0.2 s: p1's breaker (1 s backoff) half-opens before the last.
    p2 = InstanceConfig("p2", stream_chunks=4, stream_chunk_delay_s=0.07)
    configs = [InstanceConfig("p1", latency_s=20), p2]
    with Simulator(configs) as sim:
        api = make_api(two(sim), first_byte_timeout_s=1)
        start = time.monotonic()
        firsts = []
        for _ in range(6):
            first, _, chunks = await api.stream_timings()
            firsts.append(first)
            assert chunks == 4
        elapsed = time.monotonic() - start

        assert max(firsts) < 1.6, firsts
        assert elapsed < 5.0
        p1 = api.lb.stats()[0]
        # The first stream's attempt, and at most one probe once its breaker's backoff ended.
        assert 1 <= sim.stats("p1").received == p1.requests == p1.slow <= 2
        assert sim.stats("p2").served == 6


async def test_without_the_option_a_slow_start_is_waited_for(make_api: MakeApi) -> None:
    with Simulator([InstanceConfig("p1", latency_s=1.2), InstanceConfig("p2")]) as sim:
        api = make_api(two(sim))
        first, _, _ = await api.stream_timings()

        assert first >= 1.2
        assert sim.stats("p1").served == 1
        assert sim.stats("p2").received == 0


async def test_a_long_non_streamed_completion_is_never_cut(make_api: MakeApi) -> None:
    with Simulator([InstanceConfig("p1", latency_s=1.5), InstanceConfig("p2")]) as sim:
        api = make_api(two(sim), first_byte_timeout_s=0.5)
        start = time.monotonic()

        assert await api.served_by() == "p1"
        assert time.monotonic() - start >= 1.5
        assert sim.stats("p2").received == 0
        assert api.lb.stats()[0].slow == 0


async def test_a_stream_whose_headers_came_is_not_given_up(make_api: MakeApi) -> None:
    """Begun answering means the response has begun: its first chunk may take as long as the caller allows."""
    with Simulator([InstanceConfig("p1", first_chunk_delay_s=1.0), InstanceConfig("p2")]) as sim:
        api = make_api(two(sim), first_byte_timeout_s=0.3)
        first, _, chunks = await api.stream_timings()

        assert first >= 1.0
        assert chunks == 10
        assert sim.stats("p2").received == 0
        assert api.lb.stats()[0].slow == 0
