"""Helpers of the simulator's tests."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from openai_priority_loadbalancer.simulator import Simulator


def sdk(openai: Any, sim: Simulator, name: str, form: str, http_lib: Any, *, is_async: bool) -> Any:
    """An openai SDK client of instance ``name``: ``form`` is ``"azure"`` or ``"v1"`` (its base URL)."""
    http_client = http_lib.AsyncClient() if is_async else http_lib.Client()
    options: dict[str, Any] = {"api_key": "k", "max_retries": 0, "http_client": http_client}
    if form == "azure":
        cls = openai.AsyncAzureOpenAI if is_async else openai.AzureOpenAI
        return cls(azure_endpoint=sim.url(name), api_version="2025-04-01-preview", **options)
    cls = openai.AsyncOpenAI if is_async else openai.OpenAI
    return cls(base_url=sim.url(name) + "/openai/v1/", **options)
