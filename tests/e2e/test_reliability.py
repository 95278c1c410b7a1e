"""Defects found by adversarial testing, each through the real openai SDK against the simulator."""

from __future__ import annotations

import traceback
from typing import TYPE_CHECKING, Any

import openai
import pytest
from _e2e_support import API_VERSION, MESSAGES, MODEL

from openai_priority_loadbalancer import AsyncLoadBalancer, Backend, LoadBalancer
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
