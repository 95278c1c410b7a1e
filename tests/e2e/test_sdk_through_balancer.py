"""The real openai SDK, through the balancer, against simulated Azure OpenAI instances on loopback.

Each scenario runs through the sync and the async client, with every installed HTTP library.
"""

from __future__ import annotations

import time

import openai
import pytest
from _e2e_support import API_VERSION, CALLER_KEY, INSTANCE_HEADER, MESSAGES, MODEL, MakeApi

from openai_priority_loadbalancer import Backend, LoadBalancer
from openai_priority_loadbalancer.simulator import InstanceConfig, Simulator

pytestmark = pytest.mark.e2e


def backends(sim: Simulator, *priorities: tuple[str, int]) -> list[Backend]:
    return [Backend(sim.url(name), priority) for name, priority in priorities]


# -- 1. the happy path -------------------------------------------------------------------------


async def test_equal_priorities_share_the_traffic(make_api: MakeApi) -> None:
    with Simulator([InstanceConfig("a"), InstanceConfig("b")]) as sim:
        api = make_api(backends(sim, ("a", 1), ("b", 1)))
        served_by = [await api.served_by() for _ in range(20)]

        assert set(served_by) == {"a", "b"}
        assert served_by.count("a") == sim.stats("a").served
        assert served_by.count("b") == sim.stats("b").served
        assert sim.stats("a").served + sim.stats("b").served == 20
        assert sim.stats("a").throttled == sim.stats("b").throttled == 0


# -- 2. a throttling backend ---------------------------------------------------------------------


async def test_throttled_priority_one_overflows_to_priority_two(make_api: MakeApi) -> None:
    configs = [InstanceConfig("p1", requests_per_window=2, window_s=1.0), InstanceConfig("p2")]
    with Simulator(configs) as sim:
        api = make_api(backends(sim, ("p1", 1), ("p2", 2)))
        start = time.monotonic()
        served_by = [await api.served_by() for _ in range(10)]
        elapsed = time.monotonic() - start

        p1, p2 = sim.stats("p1"), sim.stats("p2")
        assert elapsed < 1.0, "the requests should all fall in p1's first window"
        assert served_by[:2] == ["p1", "p1"]
        assert served_by[2:] == ["p2"] * 8
        assert p1.served_per_window == (2,)
        assert p2.served == 8
        # The balancer learns the budget from x-ratelimit-remaining-requests: at most one probe 429.
        assert p1.throttled <= 1
        assert p2.throttled == 0


# -- 3. every rate-limit header style ------------------------------------------------------------

WINDOW_S = 1.5


@pytest.mark.parametrize(
    ("style", "rounds_up"),
    [
        ("retry-after", True),
        ("retry-after-float", False),
        ("http-date", True),
        ("retry-after-ms", False),
        ("reset-requests", False),
    ],
)
async def test_cooldown_follows_every_header_style(make_api: MakeApi, style: str, rounds_up: bool) -> None:
    configs = [
        InstanceConfig("p1", requests_per_window=0, window_s=WINDOW_S, header_style=style),  # type: ignore[arg-type]
        InstanceConfig("p2"),
    ]
    with Simulator(configs) as sim:
        api = make_api(backends(sim, ("p1", 1), ("p2", 2)))
        assert await api.served_by() == "p2"
        cooling = api.lb.stats()[0].cooling_down_for_s
        checked_at = time.monotonic()

        p1 = sim.stats("p1")
        assert p1.throttled == 1
        assert p1.window_start is not None
        window_left = p1.window_start + WINDOW_S - checked_at
        # Whole-second styles round the wait up, by less than a second.
        upper = window_left + (1.0 if rounds_up else 0.0) + 0.1
        assert window_left - 0.1 <= cooling <= upper, (style, cooling, window_left)
        assert api.lb.stats()[1].cooling_down_for_s == 0


# -- 4. a failing backend ------------------------------------------------------------------------


async def test_500_backend_is_skipped_by_the_circuit_breaker(make_api: MakeApi) -> None:
    with Simulator([InstanceConfig("bad", failure="500"), InstanceConfig("good")]) as sim:
        api = make_api(backends(sim, ("bad", 1), ("good", 1)))
        served_by = [await api.served_by() for _ in range(20)]

        assert served_by == ["good"] * 20
        assert sim.stats("good").served == 20
        assert sim.stats("bad").received <= 2
        assert sim.stats("bad").served == 0


# -- 5. a refused port ---------------------------------------------------------------------------


async def test_refused_port_is_skipped(make_api: MakeApi) -> None:
    with Simulator([InstanceConfig("dead", failure="refuse"), InstanceConfig("good")]) as sim:
        api = make_api(backends(sim, ("dead", 1), ("good", 1)))
        served_by = [await api.served_by() for _ in range(20)]

        assert served_by == ["good"] * 20
        assert sim.stats("good").served == 20
        assert api.lb.stats()[0].successes == 0
        assert api.lb.stats()[0].failures >= 1


# -- openai's own default client -----------------------------------------------------------------


def test_default_httpx_client_of_the_sdk() -> None:
    with Simulator([InstanceConfig("a"), InstanceConfig("b")]) as sim:
        lb = LoadBalancer(backends(sim, ("a", 1), ("b", 2)))
        with openai.AzureOpenAI(
            azure_endpoint=sim.url("b"),
            api_key=CALLER_KEY,
            api_version=API_VERSION,
            http_client=openai.DefaultHttpxClient(transport=lb),
            max_retries=0,
        ) as client:
            raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
            assert raw.parse().choices[0].message.content
            assert raw.headers[INSTANCE_HEADER] == "a"
        assert sim.stats("a").served == 1
        assert sim.stats("b").received == 0
