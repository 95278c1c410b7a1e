"""The simulator: instances on loopback ports, served by one asyncio loop in a background thread."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
from typing import TYPE_CHECKING, Any

from ._config import InstanceConfig
from ._instance import InstanceRuntime

if TYPE_CHECKING:
    from collections.abc import Iterable
    from types import TracebackType

    from ._stats import InstanceStats

__all__ = ["SimulatedInstance", "Simulator"]

_STOP_TIMEOUT_S = 5.0


class SimulatedInstance:
    """One running instance of a `Simulator` (see `Simulator.instances`)."""

    def __init__(self, simulator: Simulator, runtime: InstanceRuntime) -> None:
        self._simulator = simulator
        self._runtime = runtime

    def __repr__(self) -> str:
        port = self._runtime.port or "?"
        return f"<SimulatedInstance {self.name!r} port={port}>"

    @property
    def name(self) -> str:
        """The instance's name."""
        return self._runtime.config.name

    @property
    def config(self) -> InstanceConfig:
        """The current configuration (see `Simulator.update`)."""
        return self._runtime.config

    @property
    def port(self) -> int:
        """The TCP port.

        Raises:
            RuntimeError: The simulator has not been started.
        """
        if not self._runtime.port:
            raise RuntimeError("the simulator has not been started")
        return self._runtime.port

    @property
    def url(self) -> str:
        """The base URL, such as ``http://127.0.0.1:8081``, to use as ``azure_endpoint``.

        Raises:
            RuntimeError: The simulator has not been started.
        """
        host = self._runtime.host
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    @property
    def stats(self) -> InstanceStats:
        """A snapshot of the counters, taken now."""
        return self._runtime.recorder.snapshot(self._runtime.config.window_s)

    def holds(self, object_id: str) -> bool:
        """Whether this instance keeps the stored object ``object_id`` (a response, ...)."""
        return self._runtime.store.holds(object_id)


class Simulator:
    """Simulated Azure OpenAI endpoints on local ports, for tests, demos and benchmarks.

    Every instance listens on its own port of ``host``; one asyncio loop in a background thread
    serves them all. Use it as a context manager (``with`` or ``async with``), or call `start`
    and `stop`::

        with Simulator([InstanceConfig("eastus", requests_per_window=4)]) as sim:
            client = AzureOpenAI(azure_endpoint=sim.url("eastus"), api_key="k", api_version="2024-06-01")

    Args:
        instances: The instances' configurations; names must be unique.
        host: The address to listen on.

    Raises:
        ValueError: No instance, or two with the same name or the same non-zero port.
    """

    def __init__(self, instances: Iterable[InstanceConfig], *, host: str = "127.0.0.1") -> None:
        configs = list(instances)
        if not configs:
            raise ValueError("instances: at least one InstanceConfig is needed")
        names = set()
        ports = set()
        for config in configs:
            if not isinstance(config, InstanceConfig):
                raise TypeError(f"instances must be InstanceConfig objects, not {type(config).__name__}")
            if config.name in names:
                raise ValueError(f"instances: the name {config.name!r} is used twice")
            if config.port and config.port in ports:
                raise ValueError(f"instances: the port {config.port} is used twice")
            names.add(config.name)
            ports.add(config.port)
        self._host = host
        self._runtimes = {config.name: InstanceRuntime(config, host) for config in configs}
        self._instances = {name: SimulatedInstance(self, runtime) for name, runtime in self._runtimes.items()}
        self._state_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._stopped = False

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped" if self._stopped else "new"
        return f"<Simulator {state} {list(self._instances.values())!r}>"

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """Whether the simulator has been started and not stopped."""
        return self._thread is not None and not self._stopped

    def start(self) -> Simulator:
        """Bind every port and start serving in a background thread; return once all listen.

        Returns:
            The simulator itself.

        Raises:
            RuntimeError: Already started.
            OSError: A port could not be bound.
        """
        with self._state_lock:
            if self._thread is not None:
                raise RuntimeError("a Simulator can be started only once")
            bound: list[InstanceRuntime] = []
            try:
                for runtime in self._runtimes.values():
                    runtime.bind()
                    bound.append(runtime)
            except BaseException:
                for runtime in bound:
                    runtime.release()
                raise
            self._thread = threading.Thread(target=self._run, name="openai-simulator", daemon=True)
            self._thread.start()
        self._ready.wait()
        if self._start_error is not None:
            self._thread.join()
            self._stopped = True
            raise self._start_error
        return self

    def stop(self) -> None:
        """Stop serving: drop every connection, release the ports and join the thread.

        Idempotent; pending and hung requests are cut off.
        """
        with self._state_lock:
            if self._thread is None or self._stopped:
                return
            self._stopped = True
            thread, loop, event = self._thread, self._loop, self._stop_event
        if thread is threading.current_thread():
            raise RuntimeError("Simulator.stop() cannot be called from the simulator's own thread")
        if loop is not None and event is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                loop.call_soon_threadsafe(event.set)
        thread.join(_STOP_TIMEOUT_S)
        if thread.is_alive():
            raise RuntimeError("the simulator's thread did not stop in time")

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Simulator:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)

    def _run(self) -> None:
        # A selector loop everywhere: the instances accept connections with add_reader().
        loop = asyncio.SelectorEventLoop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._main())
            remaining = asyncio.all_tasks(loop)
            for task in remaining:
                task.cancel()
            if remaining:
                loop.run_until_complete(asyncio.gather(*remaining, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        try:
            for runtime in self._runtimes.values():
                await runtime.open()
        except BaseException as exc:
            self._start_error = exc
        finally:
            self._ready.set()
        try:
            if self._start_error is None:
                await self._stop_event.wait()
        finally:
            for runtime in self._runtimes.values():
                await runtime.close()

    # -- access ----------------------------------------------------------------------------
    @property
    def instances(self) -> list[SimulatedInstance]:
        """The instances, in the order they were given."""
        return list(self._instances.values())

    def instance(self, name: str) -> SimulatedInstance:
        """The instance called ``name``.

        Raises:
            KeyError: No such instance.
        """
        try:
            return self._instances[name]
        except KeyError:
            raise KeyError(f"no simulated instance is called {name!r}") from None

    def url(self, name: str) -> str:
        """The base URL of an instance, such as ``http://127.0.0.1:8081``.

        Raises:
            KeyError: No such instance.
            RuntimeError: The simulator has not been started.
        """
        return self.instance(name).url

    def stats(self, name: str) -> InstanceStats:
        """A snapshot of an instance's counters.

        Raises:
            KeyError: No such instance.
        """
        return self.instance(name).stats

    def reset_stats(self, name: str | None = None) -> None:
        """Zero the counters of one instance (or of all) and restart its rate-limit windows.

        The next request opens a fresh window with the full capacity. ``in_flight`` is kept:
        those requests are still pending; so are the stored objects (responses, conversations,
        files).

        Raises:
            KeyError: No such instance.
        """
        runtimes = [self.instance(name)._runtime] if name is not None else list(self._runtimes.values())
        for runtime in runtimes:
            with runtime.recorder.lock:
                runtime.recorder.clear()

    def update(self, name: str, **changes: Any) -> InstanceConfig:
        """Change an instance's configuration while it runs, e.g. ``update("eastus", failure="503")``.

        Accepts the fields of `InstanceConfig` except ``name`` and ``port``. Switching to or from
        ``failure="refuse"`` closes or reopens the port (same number); switching to ``"refuse"``
        drops open connections. Changing ``window_s`` restarts the windows.

        Returns:
            The new configuration.

        Raises:
            KeyError: No such instance.
            ValueError: An invalid value, or ``name`` or ``port`` given.
            TypeError: An unknown field.
        """
        runtime = self.instance(name)._runtime
        if "name" in changes or "port" in changes:
            raise ValueError("update() cannot change an instance's name or port")
        config = dataclasses.replace(runtime.config, **changes)
        with self._state_lock:
            loop = self._loop if self.running else None
            if loop is None:
                runtime.config = config
                return config
            future = asyncio.run_coroutine_threadsafe(runtime.apply(config), loop)
        future.result(_STOP_TIMEOUT_S)
        return config
