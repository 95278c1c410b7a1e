"""Backend topologies through the real SDK, judged by the simulator's own counters.

One backend; two and three of equal priority; tiers 1-2-2 and 1-2-3. Every request is served exactly
once (nothing lost, nothing duplicated), and a better priority serves up to its capacity in each
window before a worse one sees traffic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from openai_priority_loadbalancer import Backend
from openai_priority_loadbalancer.simulator import InstanceConfig, Simulator

if TYPE_CHECKING:
    from _e2e_support import MakeApi

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("count", [1, 2, 3])
async def test_equal_priorities_serve_every_request_once(make_api: MakeApi, count: int) -> None:
    names = [f"eq{i}" for i in range(count)]
    async with Simulator([InstanceConfig(name) for name in names]) as sim:
        api = make_api([Backend(sim.url(name), 1) for name in names])
        served = [await api.served_by() for _ in range(30)]
        stats = [sim.stats(name) for name in names]
    assert sum(s.received for s in stats) == 30  # no duplicate sends
    assert sum(s.served for s in stats) == 30
    for name, s in zip(names, stats, strict=True):
        assert served.count(name) == s.served
        assert s.served > 0  # each backend of the tier takes a share


@pytest.mark.parametrize("priorities", [(1, 2, 2), (1, 2, 3)], ids=["1-2-2", "1-2-3"])
async def test_tiers_fill_in_priority_order(make_api: MakeApi, priorities: tuple[int, int, int]) -> None:
    capacity = 3
    configs = [InstanceConfig(f"p{i}", requests_per_window=capacity, window_s=2.0) for i in range(3)]
    async with Simulator(configs) as sim:
        backends = [Backend(sim.url(c.name), p) for c, p in zip(configs, priorities, strict=True)]
        api = make_api(backends)
        served = [await api.served_by() for _ in range(7)]
        first, second, third = (sim.stats(c.name) for c in configs)
    # Priority 1 took exactly its window's capacity before anyone else saw a request.
    assert served[:capacity] == ["p0"] * capacity
    assert first.served_per_window[0] == capacity
    assert first.throttled <= 1  # it learns its budget from x-ratelimit-remaining-requests
    assert first.served + second.served + third.served == 7
    assert (
        first.received
        + second.received
        + third.received
        - first.throttled
        - second.throttled
        - third.throttled
        == 7
    )
    if priorities == (1, 2, 3):
        # Priority 3 only once priority 2 is spent as well.
        assert second.served == capacity
        assert third.served == 7 - 2 * capacity
        assert served.index("p2") > max(i for i, name in enumerate(served) if name == "p1")
    else:
        assert second.served + third.served == 7 - capacity
        assert second.served > 0
        assert third.served > 0
