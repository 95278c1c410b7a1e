"""Simulated Azure OpenAI endpoints, to test code against throttling and failures without a quota.

Standard library only. Each instance listens on its own loopback port and answers the Azure
OpenAI (and ``/openai/v1``) chat completions and embeddings API as the openai SDK calls it:
capacity per window, optional token budget, latency, SSE streaming, failure modes and a choice
of rate-limit header styles. It counts what it received, served, throttled and could not find.

It also serves stored objects, in both forms (``/openai/...?api-version=...`` for
``AzureOpenAI``, ``/openai/v1/...`` for ``OpenAI(base_url=".../openai/v1/")``):

- the Responses API: ``POST /responses`` (JSON, or SSE with Azure's event sequence from
  ``response.created`` to ``response.completed``; ``background: true``; ``previous_response_id``;
  ``conversation``; ``include=["reasoning.encrypted_content"]`` adds a reasoning item sealed by
  this instance), ``GET`` and ``DELETE /responses/{id}``, ``GET /responses/{id}/input_items`` and
  ``POST /responses/{id}/cancel``;
- conversations: ``POST /conversations``, ``GET``, ``POST`` (metadata) and ``DELETE
  /conversations/{id}``, ``POST`` and ``GET /conversations/{id}/items``, ``GET`` and ``DELETE
  /conversations/{id}/items/{item_id}``; a response created in a conversation reads it as input
  and appends its input and output to it;
- files: ``POST /files`` (multipart upload), ``GET /files``, ``GET`` and ``DELETE /files/{id}``,
  ``GET /files/{id}/content``.

Like an Azure resource, each instance keeps its own objects (responses unless ``store`` is false;
at most `MAX_STORED` of each kind, the oldest forgotten first). A request that names one another
instance made fails as on Azure and counts as `InstanceStats.not_found`: 404 for an id in the path,
an unknown ``conversation``, an ``item_reference`` or reasoning item it does not keep, or an
``input_file`` it does not have; 400 ``previous_response_not_found`` for a ``previous_response_id``;
400 ``invalid_encrypted_content`` for reasoning sealed elsewhere. `SimulatedInstance.holds` tells
which instance keeps an object::

    from openai import AzureOpenAI
    from openai_priority_loadbalancer.simulator import InstanceConfig, Simulator

    with Simulator([InstanceConfig("eastus", requests_per_window=4)]) as sim:
        client = AzureOpenAI(azure_endpoint=sim.url("eastus"), api_key="k", api_version="2024-06-01")
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])
        assert sim.stats("eastus").served == 1

Command line: ``python -m openai_priority_loadbalancer.simulator --help``.
"""

from ._config import DeploymentLimits, FailureMode, HeaderStyle, InstanceConfig
from ._server import SimulatedInstance, Simulator
from ._stats import InstanceStats, Outcome, RequestRecord
from ._stored import MAX_STORED

__all__ = [
    "Simulator",
    "InstanceConfig",
    "DeploymentLimits",
    "InstanceStats",
    "SimulatedInstance",
    "RequestRecord",
    "FailureMode",
    "HeaderStyle",
    "MAX_STORED",
    "Outcome",
]
