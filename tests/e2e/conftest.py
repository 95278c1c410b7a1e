"""Fixtures of the end-to-end suite: the real openai SDK, through the balancer, to the simulator.

The suite runs wherever the SDK does: openai 3.x (its own clients on ``httpx2``, with legacy ``httpx``
installed too) and openai 1.x/2.x with ``httpx`` alone. ``http_lib`` runs each test with every HTTP
library that is installed; ``mode`` runs it through the sync and the async SDK client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import openai
import pytest
from _e2e_support import API_VERSION, CALLER_KEY, Api, MakeApi

from openai_priority_loadbalancer import AsyncLoadBalancer, Backend, LoadBalancer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from types import ModuleType


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    """Whether the test goes through ``AzureOpenAI`` or ``AsyncAzureOpenAI``."""
    return str(request.param)


@pytest.fixture
async def make_api(mode: str, http_lib: ModuleType) -> AsyncIterator[MakeApi]:
    """Build SDK clients through a balancer, closed at the end of the test.

    ``make_api(backends, endpoint=..., max_retries=0, timeout=None, balanced=True, **lb_options)``:
    ``endpoint`` is the client's ``azure_endpoint`` (default: the first backend's URL); with
    ``balanced=False`` the client talks to ``endpoint`` directly, through a plain client of the same
    library.
    """
    clients: list[Any] = []

    def make(
        backends: list[Backend],
        *,
        endpoint: str | None = None,
        max_retries: int = 0,
        timeout: float | None = None,
        balanced: bool = True,
        **lb_options: Any,
    ) -> Api:
        lb: LoadBalancer | AsyncLoadBalancer | None = None
        extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        if mode == "sync":
            lb = LoadBalancer(backends, **lb_options) if balanced else None
            http_client = http_lib.Client(transport=lb) if lb is not None else http_lib.Client()
            client: Any = openai.AzureOpenAI(
                azure_endpoint=endpoint or backends[0].host,
                api_key=CALLER_KEY,
                api_version=API_VERSION,
                http_client=http_client,
                max_retries=max_retries,
                **extra,
            )
        else:
            lb = AsyncLoadBalancer(backends, **lb_options) if balanced else None
            http_client = http_lib.AsyncClient(transport=lb) if lb is not None else http_lib.AsyncClient()
            client = openai.AsyncAzureOpenAI(
                azure_endpoint=endpoint or backends[0].host,
                api_key=CALLER_KEY,
                api_version=API_VERSION,
                http_client=http_client,
                max_retries=max_retries,
                **extra,
            )
        clients.append(client)
        return Api(client, lb)

    yield make
    for client in clients:
        if isinstance(client, openai.AsyncAzureOpenAI):
            await client.close()
        else:
            client.close()
