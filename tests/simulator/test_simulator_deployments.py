"""The simulator meters each deployment on its own and answers 404 DeploymentNotFound for one it lacks."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx
import pytest

from openai_priority_loadbalancer.simulator import DeploymentLimits, InstanceConfig, Simulator

if TYPE_CHECKING:
    from collections.abc import Iterator

MESSAGES = [{"role": "user", "content": "Hello there"}]


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client() as client:
        yield client


def _chat(client: httpx.Client, sim: Simulator, deployment: str, **body: object) -> httpx.Response:
    url = f"{sim.url('eastus')}/openai/deployments/{deployment}/chat/completions?api-version=2024-06-01"
    return client.post(url, json={"messages": MESSAGES, **body})


def _embed(client: httpx.Client, sim: Simulator, deployment: str) -> httpx.Response:
    url = f"{sim.url('eastus')}/openai/deployments/{deployment}/embeddings?api-version=2024-06-01"
    return client.post(url, json={"input": "x"})


def test_each_deployment_has_its_own_budget(client: httpx.Client) -> None:
    deployments = {
        "chat": DeploymentLimits(requests_per_window=2),
        "embed": DeploymentLimits(requests_per_window=3),
    }
    config = InstanceConfig("eastus", window_s=60, requests_per_window=1, deployments=deployments)
    with Simulator([config]) as sim:
        chat = [_chat(client, sim, "chat") for _ in range(3)]
        assert [r.status_code for r in chat] == [200, 200, 429]
        assert chat[0].headers["x-ratelimit-limit-requests"] == "2"
        assert chat[1].headers["x-ratelimit-remaining-requests"] == "0"
        embed = [_embed(client, sim, "embed") for _ in range(4)]  # not spent by the chat
        assert [r.status_code for r in embed] == [200, 200, 200, 429]
        assert embed[0].headers["x-ratelimit-remaining-requests"] == "2"
        stats = sim.stats("eastus")
        assert (stats.served, stats.throttled) == (5, 2)


def test_token_budget_per_deployment(client: httpx.Client) -> None:
    deployments = {"chat": DeploymentLimits(tokens_per_minute=6000), "other": DeploymentLimits()}
    with Simulator([InstanceConfig("eastus", window_s=60, deployments=deployments)]) as sim:
        first = _chat(client, sim, "chat", max_tokens=5000)
        assert first.status_code == 200
        assert first.headers["x-ratelimit-limit-tokens"] == "6000"
        remaining = int(first.headers["x-ratelimit-remaining-tokens"])
        assert 6000 - 5010 < remaining < 1000
        assert _chat(client, sim, "chat", max_tokens=1000).status_code == 429
        assert _chat(client, sim, "other", max_tokens=100_000).status_code == 200  # unlimited


def test_a_deployment_the_instance_lacks_is_not_found(client: httpx.Client) -> None:
    config = InstanceConfig("eastus", deployments={"chat": DeploymentLimits()})
    with Simulator([config]) as sim:
        response = _chat(client, sim, "gpt-4o")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "DeploymentNotFound"
        v1 = client.post(
            sim.url("eastus") + "/openai/v1/chat/completions", json={"model": "x", "messages": MESSAGES}
        )
        assert v1.status_code == 404
        assert _chat(client, sim, "chat").status_code == 200
        stats = sim.stats("eastus")
        assert (stats.received, stats.served, stats.rejected) == (3, 1, 2)


def test_without_deployments_every_name_shares_the_instance_budget(client: httpx.Client) -> None:
    with Simulator([InstanceConfig("eastus", window_s=60, requests_per_window=2)]) as sim:
        assert [_chat(client, sim, name).status_code for name in ("a", "b", "c")] == [200, 200, 429]


@pytest.mark.parametrize(
    ("deployments", "error"),
    [
        ({"": DeploymentLimits()}, ValueError),
        ({"a/b": DeploymentLimits()}, ValueError),
        ({"a": 5}, TypeError),
        (["a"], TypeError),
    ],
)
def test_invalid_deployments(deployments: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="deployments"):
        InstanceConfig("eastus", deployments=deployments)  # type: ignore[arg-type]


@pytest.mark.parametrize("field", ["requests_per_window", "tokens_per_minute"])
def test_invalid_limits(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        DeploymentLimits(**{field: -1})
