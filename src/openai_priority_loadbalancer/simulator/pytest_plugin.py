"""A pytest plugin: simulated Azure OpenAI instances for your own tests.

Installed with the package (through the ``pytest11`` entry point, so there is nothing to configure),
it adds the ``simulated_azure_openai`` fixture. Call it with instance names or :class:`InstanceConfig`
objects: it starts those instances on loopback ports and returns their URLs, in the order given; they
stop when the test ends::

    def test_overflow(simulated_azure_openai):
        east, west = simulated_azure_openai(InstanceConfig("eastus", requests_per_window=1), "westus")
        ...  # your code, with Backend(east, 1), Backend(west, 2)
        assert simulated_azure_openai.stats("westus").served == 1

With plugin autoloading disabled (``PYTEST_DISABLE_PLUGIN_AUTOLOAD``), load it with
``-p openai_priority_loadbalancer.simulator.pytest_plugin``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from ._config import InstanceConfig
from ._server import Simulator

if TYPE_CHECKING:
    from collections.abc import Iterator

    from ._server import SimulatedInstance
    from ._stats import InstanceStats

__all__ = ["SimulatedAzureOpenAI", "simulated_azure_openai"]


class SimulatedAzureOpenAI:
    """The ``simulated_azure_openai`` fixture: starts instances when called, stops them all at the end."""

    def __init__(self) -> None:
        self._simulators: list[Simulator] = []
        self._instances: dict[str, SimulatedInstance] = {}

    def __call__(self, *instances: str | InstanceConfig) -> list[str]:
        """Start these instances (a name alone means an :class:`InstanceConfig` of that name, unlimited).

        Returns:
            Their base URLs (``http://127.0.0.1:PORT``), in the order given.

        Raises:
            TypeError: an instance is neither a name nor an ``InstanceConfig``.
            ValueError: no instance is given, or a name is already taken in this test.
        """
        if not instances:
            raise ValueError("simulated_azure_openai: give at least one instance name or InstanceConfig")
        configs: list[InstanceConfig] = []
        for item in instances:
            if isinstance(item, str):
                item = InstanceConfig(item)
            elif not isinstance(item, InstanceConfig):
                raise TypeError(
                    f"simulated_azure_openai: expected an instance name or an InstanceConfig, "
                    f"got {type(item).__name__}"
                )
            if item.name in self._instances or any(c.name == item.name for c in configs):
                raise ValueError(f"simulated_azure_openai: an instance is already called {item.name!r}")
            configs.append(item)
        simulator = Simulator(configs)
        simulator.start()
        self._simulators.append(simulator)
        for config in configs:
            self._instances[config.name] = simulator.instance(config.name)
        return [simulator.url(config.name) for config in configs]

    def instance(self, name: str) -> SimulatedInstance:
        """The running instance called ``name`` (its ``url``, ``config`` and ``stats``).

        Raises:
            KeyError: no instance of that name was started in this test.
        """
        try:
            return self._instances[name]
        except KeyError:
            raise KeyError(f"no simulated instance is called {name!r}") from None

    def stats(self, name: str) -> InstanceStats:
        """A snapshot of the counters of the instance called ``name``: received, served, throttled, ..."""
        return self.instance(name).stats

    def close(self) -> None:
        """Stop every instance started (the fixture does this at the end of the test)."""
        while self._simulators:
            self._simulators.pop().stop()


@pytest.fixture
def simulated_azure_openai() -> Iterator[SimulatedAzureOpenAI]:
    """Start simulated Azure OpenAI instances for this test: ``urls = simulated_azure_openai("eastus")``."""
    simulated = SimulatedAzureOpenAI()
    try:
        yield simulated
    finally:
        simulated.close()
