"""The ``simulated_azure_openai`` fixture, which the package's pytest plugin gives every test suite."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import openai
import pytest

from openai_priority_loadbalancer import Backend, LoadBalancer
from openai_priority_loadbalancer.simulator import InstanceConfig

if TYPE_CHECKING:
    from openai_priority_loadbalancer.simulator.pytest_plugin import SimulatedAzureOpenAI

pytest_plugins = ["pytester"]

pytestmark = pytest.mark.e2e


def test_overflow_reaches_priority_2_through_the_sdk(simulated_azure_openai: SimulatedAzureOpenAI) -> None:
    east, west = simulated_azure_openai(InstanceConfig("eastus", requests_per_window=2), "westus")
    backends = [Backend(east, 1), Backend(west, 2)]
    with openai.AzureOpenAI(
        azure_endpoint=backends[0].endpoint,
        api_key="any",
        api_version="2024-10-21",
        http_client=openai.DefaultHttpxClient(transport=LoadBalancer(backends)),
        max_retries=0,
    ) as client:
        for i in range(3):
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": f"#{i}"}])
    assert simulated_azure_openai.stats("eastus").served == 2
    assert simulated_azure_openai.stats("westus").served == 1
    assert simulated_azure_openai.instance("westus").url == west


def test_calls_add_instances_and_refuse_bad_ones(simulated_azure_openai: SimulatedAzureOpenAI) -> None:
    (first,) = simulated_azure_openai("a")
    second, third = simulated_azure_openai("b", InstanceConfig("c", failure="503"))
    assert len({first, second, third}) == 3
    with pytest.raises(ValueError, match="'a'"):
        simulated_azure_openai("a")
    with pytest.raises(ValueError, match="'d'"):
        simulated_azure_openai("d", "d")
    with pytest.raises(ValueError, match="at least one"):
        simulated_azure_openai()
    with pytest.raises(TypeError, match="got int"):
        simulated_azure_openai(3)  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="'zz'"):
        simulated_azure_openai.instance("zz")


def test_a_users_suite_gets_the_fixture_from_the_entry_point_and_it_stops_the_instances(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        import pathlib
        import urllib.request

        def test_mine(simulated_azure_openai):
            (url,) = simulated_azure_openai("eastus")
            pathlib.Path("url.txt").write_text(url)
            request = urllib.request.Request(
                url + "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
                data=b'{"messages": [{"role": "user", "content": "Hi"}]}',
                headers={"content-type": "application/json", "api-key": "k"},
            )
            with urllib.request.urlopen(request) as answer:
                assert answer.status == 200
            assert simulated_azure_openai.stats("eastus").served == 1
        """
    )
    # A subprocess: the plugin comes from the installed package's pytest11 entry point, as for users.
    # (Less two slow plugins of the dev environment that the inner suite does not use.)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "no:langsmith_plugin", "-p", "no:hypothesispytest"
    )
    result.assert_outcomes(passed=1)
    parts = urlsplit((pytester.path / "url.txt").read_text())
    assert parts.hostname is not None
    assert parts.port is not None
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection((parts.hostname, parts.port), timeout=1),
    ):
        pass
