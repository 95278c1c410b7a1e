"""Simulated Azure OpenAI endpoints, to test code against throttling and failures without a quota.

Standard library only. Each instance listens on its own loopback port and answers the Azure
OpenAI (and ``/openai/v1``) chat completions and embeddings API as the openai SDK calls it:
capacity per window, optional token budget, latency, SSE streaming, failure modes and a choice
of rate-limit header styles. It counts what it received, served, throttled and could not find.

It also serves the Responses API, in both forms (``/openai/responses?api-version=...`` for
``AzureOpenAI``, ``/openai/v1/responses`` for ``OpenAI(base_url=".../openai/v1/")``):
``POST /responses`` (JSON, or SSE with Azure's event sequence from ``response.created`` to
``response.completed``; ``background: true`` too), ``GET`` and ``DELETE /responses/{id}``,
``GET /responses/{id}/input_items`` and ``POST /responses/{id}/cancel``. Like an Azure resource,
each instance keeps its own responses (unless ``store`` is false): one that names a response
another instance made gets a 404, or a 400 ``previous_response_not_found`` for a
``previous_response_id``, and counts as `InstanceStats.not_found`. `SimulatedInstance.holds`
tells which instance keeps an object::

    from openai import AzureOpenAI
    from openai_priority_loadbalancer.simulator import InstanceConfig, Simulator

    with Simulator([InstanceConfig("eastus", requests_per_window=4)]) as sim:
        client = AzureOpenAI(azure_endpoint=sim.url("eastus"), api_key="k", api_version="2024-06-01")
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])
        assert sim.stats("eastus").served == 1

Command line: ``python -m openai_priority_loadbalancer.simulator --help``.
"""

from ._config import FailureMode, HeaderStyle, InstanceConfig
from ._server import SimulatedInstance, Simulator
from ._stats import InstanceStats, Outcome, RequestRecord

__all__ = [
    "Simulator",
    "InstanceConfig",
    "InstanceStats",
    "SimulatedInstance",
    "RequestRecord",
    "FailureMode",
    "HeaderStyle",
    "Outcome",
]
