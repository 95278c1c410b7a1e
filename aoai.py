"""Side by side: a standard Azure OpenAI client against the same client behind the load balancer.

With no arguments, three simulated Azure OpenAI instances start on loopback ports: one of priority 1
with the most capacity, as a provisioned (PTU) deployment would have (12 requests a second), and two
of priority 2 for the overflow (4 a second each). The same workload goes through both clients. The
standard client talks to the first instance only, as an application without a balancer would; the
load-balanced one sends priority 1 all it can take and priority 2 only the rest, window by window.

    python aoai.py                         # the demo, on simulated backends
    python aoai.py --json                  # the same, as one JSON object
    python aoai.py --mode async --stream   # AsyncAzureOpenAI, streamed completions
    python aoai.py --api responses         # multi-turn Responses API chains (previous_response_id)
    python aoai.py --config azure.toml     # real Azure OpenAI endpoints (see README)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

DEFAULT_API_VERSION = "2024-10-21"
RESPONSES_API_VERSION = "2025-04-01-preview"  # the Responses API needs a preview version on Azure
PTU_FACTOR = 3  # the simulated priority-1 instance's capacity, in multiples of a priority-2 one's


class ConfigError(Exception):
    """A problem with the command line or the config file: reported in one line, exit code 2."""


@dataclass
class Target:
    name: str
    url: str
    priority: int
    api_key: str | None = None


@dataclass
class Setup:
    targets: list[Target]
    deployment: str
    api_version: str
    token_provider: Callable[[], str] | None = None
    simulated: Any = None  # the running Simulator, when the backends are simulated


@dataclass
class Result:
    ok: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    per_backend: dict[str, int] = field(default_factory=dict)
    backend_429s: int | None = None
    served_per_window: dict[str, list[int]] | None = None  # simulated backends: each one's own windows

    def as_dict(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        return {
            "ok": self.ok,
            "failed": dict(self.failed),
            "wall_s": round(self.wall_s, 3),
            "p50_ms": round(_percentile(lat, 0.50) * 1000, 1) if lat else None,
            "p95_ms": round(_percentile(lat, 0.95) * 1000, 1) if lat else None,
            "per_backend": self.per_backend,
            "backend_429s": self.backend_429s,
            "served_per_window": self.served_per_window,
        }


def _percentile(values: list[float], q: float) -> float:
    return values[max(0, min(len(values) - 1, round(q * len(values)) - 1))]


# ---------------------------------------------------------------------- configuration


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Compare a standard Azure OpenAI client with the load-balanced one.",
        epilog="With neither --backend nor --config, three simulated instances start (no account needed).",
    )
    parser.add_argument("-n", "--requests", type=int, default=48, help="requests per client (default 48)")
    parser.add_argument(
        "-c", "--concurrency", type=int, default=12, help="requests in flight at most (default 12)"
    )
    parser.add_argument(
        "-r",
        "--rate",
        type=float,
        default=16.0,
        help="requests sent per second (default 16: more than priority 1 takes, less than all three);"
        " 0 sends them as fast as the concurrency allows",
    )
    parser.add_argument("--mode", choices=("sync", "async"), default="sync", help="SDK client kind")
    parser.add_argument("--stream", action="store_true", help="stream the completions")
    parser.add_argument(
        "--api",
        choices=("chat", "responses"),
        default="chat",
        help="chat completions (default), or multi-turn Responses API chains linked by previous_response_id",
    )
    parser.add_argument(
        "--turns", type=int, default=3, help="--api responses: turns per chain (default 3); -n is chains"
    )
    parser.add_argument(
        "--backend",
        action="append",
        default=[],
        metavar="URL:PRIORITY",
        help="a real backend, e.g. https://oai-eastus.openai.azure.com:1 (repeatable; key from"
        " AZURE_OPENAI_API_KEY or Entra ID)",
    )
    parser.add_argument(
        "--config", type=Path, help="JSON or TOML file naming backends, deployment, credentials"
    )
    parser.add_argument("--deployment", default=None, help="deployment (model) name (default gpt-4o)")
    parser.add_argument("--api-version", default=None, help=f"API version (default {DEFAULT_API_VERSION})")
    parser.add_argument(
        "--rpw",
        type=int,
        default=4,
        help="simulated: requests per 1 s window of each priority-2 instance (default 4); the"
        " priority-1 instance takes three times as many",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument(
        "--no-stats",
        action="store_true",
        help="do not print the balancer's own stats() table after the comparison",
    )
    args = parser.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1 or args.rpw < 1 or args.turns < 1:
        raise ConfigError("--requests, --concurrency, --rpw and --turns must be at least 1")
    if not args.rate >= 0:
        raise ConfigError("--rate must be 0 (unpaced) or more")
    if args.backend and args.config:
        raise ConfigError("use --backend or --config, not both")
    return args


def load_setup(args: argparse.Namespace, stack: contextlib.ExitStack) -> Setup:
    deployment = args.deployment or "gpt-4o"
    api_version = args.api_version or (
        RESPONSES_API_VERSION if args.api == "responses" else DEFAULT_API_VERSION
    )
    if args.config:
        return _from_config(args.config, args)
    if args.backend:
        targets = [_parse_backend_arg(text) for text in args.backend]
        key = os.environ.get("AZURE_OPENAI_API_KEY")
        for t in targets:
            t.api_key = key
        return Setup(targets, deployment, api_version, None if key else _entra_token_provider())

    from openai_priority_loadbalancer.simulator import InstanceConfig, Simulator

    names = [("eastus", 1), ("southcentralus", 2), ("westus", 2)]
    sim = stack.enter_context(
        Simulator(
            [
                InstanceConfig(
                    name,
                    requests_per_window=args.rpw * (PTU_FACTOR if priority == 1 else 1),
                    window_s=1.0,
                    latency_s=0.05,
                    stream_chunk_delay_s=0.01,
                )
                for name, priority in names
            ]
        )
    )
    targets = [Target(name, sim.url(name), priority, api_key="simulated-key") for name, priority in names]
    return Setup(targets, deployment, api_version, simulated=sim)


def _parse_backend_arg(text: str) -> Target:
    url, sep, priority = text.rpartition(":")
    if not sep or not priority.isdigit() or not url.startswith(("http://", "https://")):
        raise ConfigError(
            f"--backend {text!r}: expected URL:PRIORITY, e.g. https://oai-eastus.openai.azure.com:1"
        )
    return Target(url.split("//", 1)[1].split("/", 1)[0], url, int(priority))


def _from_config(path: Path, args: argparse.Namespace) -> Setup:
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".toml":
            import tomllib  # Python >= 3.11

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except ImportError:
        raise ConfigError("TOML config files need Python >= 3.11; use JSON") from None
    except ValueError as exc:  # json.JSONDecodeError and tomllib.TOMLDecodeError both are
        raise ConfigError(
            f"{path} is not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: {exc}"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("backends"), list) or not data["backends"]:
        raise ConfigError(f"{path}: expected a 'backends' list (each with 'url' and 'priority')")
    targets = []
    for i, item in enumerate(data["backends"]):
        if not isinstance(item, dict) or not isinstance(item.get("url"), str):
            raise ConfigError(f"{path}: backends[{i}] needs a 'url'")
        priority = item.get("priority", 1)
        if not isinstance(priority, int) or priority < 1:
            raise ConfigError(f"{path}: backends[{i}].priority must be an integer >= 1")
        key = item.get("api_key")
        if "api_key_env" in item:
            key = os.environ.get(str(item["api_key_env"]))
            if not key:
                raise ConfigError(
                    f"{path}: backends[{i}]: environment variable {item['api_key_env']} is not set"
                )
        name = item.get("name") or item["url"].split("//", 1)[-1].split("/", 1)[0]
        targets.append(Target(str(name), item["url"], priority, key))
    deployment = args.deployment or data.get("deployment")
    if not isinstance(deployment, str) or not deployment:
        raise ConfigError(f"{path}: 'deployment' (the deployment name) is required")
    api_version = args.api_version or data.get("api_version") or DEFAULT_API_VERSION
    needs_token = any(t.api_key is None for t in targets)
    return Setup(targets, deployment, str(api_version), _entra_token_provider() if needs_token else None)


def _entra_token_provider() -> Callable[[], str]:
    try:
        from azure.identity import DefaultAzureCredential, get_bearer_token_provider
    except ImportError:
        raise ConfigError(
            "no API key given and azure-identity is not installed: set AZURE_OPENAI_API_KEY, give api_key per"
            ' backend, or pip install "openai-priority-loadbalancer[azure]" for Entra ID'
        ) from None
    provider: Callable[[], str] = get_bearer_token_provider(
        DefaultAzureCredential(), "https://cognitiveservices.azure.com/.default"
    )
    return provider


# ---------------------------------------------------------------------- the two clients


def make_backends(setup: Setup) -> list[Any]:
    from openai_priority_loadbalancer import Backend

    return [Backend(t.url, t.priority, api_key=t.api_key) for t in setup.targets]


def make_client(setup: Setup, mode: str, balancer: Any | None) -> Any:
    import openai

    first = setup.targets[0]
    # Alone, the client talks to the first backend's URL as it is; through the balancer, to its
    # endpoint, without a path prefix: the balancer adds each backend's prefix itself.
    endpoint = first.url if balancer is None else balancer.backends[0].endpoint
    auth: dict[str, Any] = (
        {"api_key": first.api_key or "set-per-backend"}
        if setup.token_provider is None or first.api_key
        else {"azure_ad_token_provider": setup.token_provider}
    )
    if mode == "sync":
        http = openai.DefaultHttpxClient(transport=balancer) if balancer else None
        return openai.AzureOpenAI(
            azure_endpoint=endpoint, api_version=setup.api_version, http_client=http, **auth
        )
    ahttp = openai.DefaultAsyncHttpxClient(transport=balancer) if balancer else None
    return openai.AsyncAzureOpenAI(
        azure_endpoint=endpoint, api_version=setup.api_version, http_client=ahttp, **auth
    )


class Progress:
    """A one-line progress bar on stderr (only when it is a terminal)."""

    def __init__(self, label: str, total: int, enabled: bool) -> None:
        self.label, self.total, self.done = label, total, 0
        self.enabled = enabled and sys.stderr.isatty()
        self._lock = threading.Lock()

    def step(self) -> None:
        with self._lock:
            self.done += 1
            if self.enabled:
                filled = int(30 * self.done / self.total)
                sys.stderr.write(
                    f"\r{self.label:<14} [{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total}"
                )
                if self.done == self.total:
                    sys.stderr.write("\n")
                sys.stderr.flush()


def _messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Request {i}: say hello."}]


def _due(t0: float, i: int, rate: float) -> float:
    """Seconds until request ``i`` is due, at ``rate`` a second from ``t0`` (0 when unpaced)."""
    return max(0.0, t0 + i / rate - time.perf_counter()) if rate > 0 else 0.0


def run_sync(
    client: Any, setup: Setup, n: int, concurrency: int, stream: bool, progress: Progress, rate: float = 0.0
) -> Result:
    result = Result()
    lock = threading.Lock()
    t0 = time.perf_counter()

    def one(i: int) -> None:
        time.sleep(_due(t0, i, rate))
        started = time.perf_counter()
        try:
            if stream:
                for _ in client.chat.completions.create(
                    model=setup.deployment, messages=_messages(i), stream=True
                ):
                    pass
            else:
                client.chat.completions.create(model=setup.deployment, messages=_messages(i))
        except Exception as exc:  # every failure is counted by type, which is what the demo shows
            with lock:
                result.failed[type(exc).__name__] += 1
        else:
            with lock:
                result.ok += 1
                result.latencies.append(time.perf_counter() - started)
        progress.step()

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, range(n)))
    result.wall_s = time.perf_counter() - t0
    return result


async def run_async(
    client: Any, setup: Setup, n: int, concurrency: int, stream: bool, progress: Progress, rate: float = 0.0
) -> Result:
    result = Result()
    gate = asyncio.Semaphore(concurrency)
    t0 = time.perf_counter()

    async def one(i: int) -> None:
        await asyncio.sleep(_due(t0, i, rate))
        async with gate:
            started = time.perf_counter()
            try:
                if stream:
                    async for _ in await client.chat.completions.create(
                        model=setup.deployment, messages=_messages(i), stream=True
                    ):
                        pass
                else:
                    await client.chat.completions.create(model=setup.deployment, messages=_messages(i))
            except Exception as exc:  # counted by type
                result.failed[type(exc).__name__] += 1
            else:
                result.ok += 1
                result.latencies.append(time.perf_counter() - started)
            progress.step()

    await asyncio.gather(*(one(i) for i in range(n)))
    result.wall_s = time.perf_counter() - t0
    return result


def run_side(setup: Setup, args: argparse.Namespace, balanced: bool) -> tuple[Result, Any]:
    from openai_priority_loadbalancer import AsyncLoadBalancer, LoadBalancer

    sim = setup.simulated
    if sim is not None:
        _start_of_window()
        sim.reset_stats()
    balancer = None
    if balanced:
        backends = make_backends(setup)
        balancer = LoadBalancer(backends) if args.mode == "sync" else AsyncLoadBalancer(backends)
    client = make_client(setup, args.mode, balancer)
    progress = Progress("load-balanced" if balanced else "standard", args.requests, not args.json)
    if args.mode == "sync":
        with client:
            result = run_sync(
                client, setup, args.requests, args.concurrency, args.stream, progress, args.rate
            )
    else:

        async def go() -> Result:
            async with client:
                return await run_async(
                    client, setup, args.requests, args.concurrency, args.stream, progress, args.rate
                )

        result = asyncio.run(go())
    names = {t.url: t.name for t in setup.targets}
    if balancer is not None:
        stats = balancer.stats()
        result.per_backend = {names.get(s.backend, s.backend): s.successes for s in stats}
        result.backend_429s = sum(s.throttled for s in stats)
    else:
        result.per_backend = {t.name: 0 for t in setup.targets}
        result.per_backend[setup.targets[0].name] = result.ok
    if sim is not None:
        result.backend_429s = sum(sim.stats(t.name).throttled for t in setup.targets)
        result.served_per_window = {t.name: list(sim.stats(t.name).served_per_window) for t in setup.targets}
    return result, balancer


# ---------------------------------------------------------------------- Responses API chains


@dataclass
class Chains:
    """What became of multi-turn Responses chains: each turn names the previous one's id."""

    chains: int = 0
    turns: int = 0
    ok: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    wall_s: float = 0.0
    latencies: list[float] = field(default_factory=list)
    kept: int = 0  # chains whose every turn was answered by the backend that stored its first
    started_on: Counter[str] = field(default_factory=Counter)  # chains by the backend of their first turn

    def as_dict(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        return {
            "chains": self.chains,
            "turns": self.turns,
            "ok": self.ok,
            "failed": dict(self.failed),
            "wall_s": round(self.wall_s, 3),
            "p50_ms": round(_percentile(lat, 0.50) * 1000, 1) if lat else None,
            "chains_kept_on_their_backend": self.kept,
            "chains_started_on": dict(self.started_on),
        }


def _turn(client: Any, setup: Setup, chain: int, turn: int, previous: str | None) -> tuple[str, str | None]:
    """One turn: the new response's id, and the balancer's backend for it (None without a balancer)."""
    kwargs: dict[str, Any] = {"model": setup.deployment, "input": f"Chain {chain}, turn {turn}: go on."}
    if previous is not None:
        kwargs["previous_response_id"] = previous
    raw = client.responses.with_raw_response.create(**kwargs)
    return raw.parse().id, _routed_to(raw)


async def _aturn(
    client: Any, setup: Setup, chain: int, turn: int, previous: str | None
) -> tuple[str, str | None]:
    kwargs: dict[str, Any] = {"model": setup.deployment, "input": f"Chain {chain}, turn {turn}: go on."}
    if previous is not None:
        kwargs["previous_response_id"] = previous
    raw = await client.responses.with_raw_response.create(**kwargs)
    return raw.parse().id, _routed_to(raw)


def _routed_to(raw: Any) -> str | None:
    routing = raw.http_response.extensions.get("openai_priority_loadbalancer")
    return routing.backend if routing is not None else None


def _record(
    result: Chains, lock: threading.Lock, backends: list[str | None], done: int, error: str | None
) -> None:
    with lock:
        result.ok += done
        if error is not None:
            result.failed[error] += 1
        if backends and backends[0] is not None:
            result.started_on[backends[0]] += 1
        if error is None and len(set(backends)) == 1:
            result.kept += 1


def run_chains(
    client: Any, setup: Setup, args: argparse.Namespace, chains: int, progress: Progress
) -> Chains:
    """``chains`` chains of ``args.turns`` turns, ``args.concurrency`` chains at a time."""
    result = Chains(chains=chains, turns=chains * args.turns)
    lock = threading.Lock()

    def one(chain: int) -> None:
        backends: list[str | None] = []
        previous: str | None = None
        error = None
        for turn in range(args.turns):
            started = time.perf_counter()
            try:
                previous, backend = _turn(client, setup, chain, turn, previous)
            except Exception as exc:  # counted by type, as the chat demo does
                error = type(exc).__name__
                break
            backends.append(backend)
            with lock:
                result.latencies.append(time.perf_counter() - started)
            progress.step()
        _record(result, lock, backends, len(backends), error)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        list(pool.map(one, range(chains)))
    result.wall_s = time.perf_counter() - started
    return result


async def run_chains_async(
    client: Any, setup: Setup, args: argparse.Namespace, chains: int, progress: Progress
) -> Chains:
    result = Chains(chains=chains, turns=chains * args.turns)
    lock = threading.Lock()
    gate = asyncio.Semaphore(args.concurrency)

    async def one(chain: int) -> None:
        async with gate:
            backends: list[str | None] = []
            previous: str | None = None
            error = None
            for turn in range(args.turns):
                started = time.perf_counter()
                try:
                    previous, backend = await _aturn(client, setup, chain, turn, previous)
                except Exception as exc:
                    error = type(exc).__name__
                    break
                backends.append(backend)
                result.latencies.append(time.perf_counter() - started)
                progress.step()
            _record(result, lock, backends, len(backends), error)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(chains)))
    result.wall_s = time.perf_counter() - started
    return result


def chains_side(setup: Setup, args: argparse.Namespace, balanced: bool, chains: int, quiet: bool) -> Chains:
    """Run ``chains`` Responses chains through the standard client or the load-balanced one."""
    from openai_priority_loadbalancer import AsyncLoadBalancer, LoadBalancer

    if setup.simulated is not None:
        _start_of_window()
    balancer = None
    if balanced:
        backends = make_backends(setup)
        balancer = LoadBalancer(backends) if args.mode == "sync" else AsyncLoadBalancer(backends)
    version = setup.api_version if args.api == "responses" else RESPONSES_API_VERSION
    client = make_client(
        Setup(setup.targets, setup.deployment, version, setup.token_provider), args.mode, balancer
    )
    label = "load-balanced" if balanced else "standard"
    progress = Progress(label, chains * args.turns, not (args.json or quiet))
    if args.mode == "sync":
        with client:
            result = run_chains(client, setup, args, chains, progress)
    else:

        async def go() -> Chains:
            async with client:
                return await run_chains_async(client, setup, args, chains, progress)

        result = asyncio.run(go())
    names = {t.url: t.name for t in setup.targets}
    if balancer is None:  # every turn went to the first backend
        result.started_on = Counter({setup.targets[0].name: chains - sum(result.failed.values())})
    else:
        result.started_on = Counter({names.get(k, k): v for k, v in result.started_on.items()})
    return result


def render_chains(setup: Setup, standard: Chains, balanced: Chains, args: argparse.Namespace) -> str:
    s, b = standard.as_dict(), balanced.as_dict()

    def failures(r: dict[str, Any]) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(r["failed"].items())) or "0"

    rows: list[tuple[str, str, str]] = [
        ("turns succeeded", f"{s['ok']}/{s['turns']}", f"{b['ok']}/{b['turns']}"),
        ("chains failed", failures(s), failures(b)),
        (
            "chains on their backend",
            f"{s['chains_kept_on_their_backend']}/{s['chains']}",
            f"{b['chains_kept_on_their_backend']}/{b['chains']}",
        ),
        ("wall time", f"{s['wall_s']:.2f} s", f"{b['wall_s']:.2f} s"),
    ]
    for t in setup.targets:
        rows.append(
            (
                f"chains started on {t.name}",
                str(s["chains_started_on"].get(t.name, 0)),
                str(b["chains_started_on"].get(t.name, 0)),
            )
        )
    width = max(len(r[0]) for r in rows)
    col = max(14, *(len(r[1]) for r in rows), *(len(r[2]) for r in rows))
    header = f"{'':<{width}}  {'standard':>{col}}  {'load-balanced':>{col}}"
    lines = [header, "-" * len(header)]
    lines += [f"{name:<{width}}  {left:>{col}}  {right:>{col}}" for name, left, right in rows]
    kind = "simulated" if setup.simulated is not None else "configured"
    title = (
        f"{b['chains']} Responses API chains of {args.turns} turns (previous_response_id), "
        f"{args.concurrency} at a time ({args.mode}), over {len(setup.targets)} {kind} backends"
    )
    return "\n".join([title, "", *lines])


def chains_line(chains: Chains, turns: int) -> str:
    """One line for the default run: did the balancer keep every chain on its backend?"""
    spread = ", ".join(f"{name} {n}" for name, n in sorted(chains.started_on.items()))
    verdict = (
        "the balancer kept every chain on the backend that stored it"
        if chains.kept == chains.chains
        else f"only {chains.kept} of {chains.chains} chains stayed on their backend"
    )
    return (
        f"Responses API: {chains.chains} chains of {turns} turns through the balancer, "
        f"{chains.ok}/{chains.turns} turns succeeded; {verdict} (chains started on: {spread})."
    )


def _start_of_window() -> None:
    """Start a run at a fresh one-second window, so both runs see the same simulated capacity."""
    time.sleep(1.05)


# ---------------------------------------------------------------------- output


def render_table(setup: Setup, standard: Result, balanced: Result, args: argparse.Namespace) -> str:
    s, b = standard.as_dict(), balanced.as_dict()

    def failures(r: dict[str, Any]) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(r["failed"].items())) or "0"

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:,.0f} ms"

    rows: list[tuple[str, str, str]] = [
        ("succeeded", f"{s['ok']}/{args.requests}", f"{b['ok']}/{args.requests}"),
        ("failed", failures(s), failures(b)),
        ("wall time", f"{s['wall_s']:.2f} s", f"{b['wall_s']:.2f} s"),
        ("latency p50", ms(s["p50_ms"]), ms(b["p50_ms"])),
        ("latency p95", ms(s["p95_ms"]), ms(b["p95_ms"])),
        (
            "429s from backends",
            str(s["backend_429s"] if s["backend_429s"] is not None else "-"),
            str(b["backend_429s"]),
        ),
    ]

    def share(r: dict[str, Any], name: str) -> str:
        served = r["per_backend"].get(name, 0)
        return f"{served} ({100 * served / r['ok']:.0f} %)" if r["ok"] else str(served)

    for t in setup.targets:
        rows.append((f"served by {t.name} (p{t.priority})", share(s, t.name), share(b, t.name)))
    width = max(len(r[0]) for r in rows)
    col = max(14, *(len(r[1]) for r in rows), *(len(r[2]) for r in rows))
    header = f"{'':<{width}}  {'standard':>{col}}  {'load-balanced':>{col}}"
    lines = [header, "-" * len(header)]
    lines += [f"{name:<{width}}  {left:>{col}}  {right:>{col}}" for name, left, right in rows]
    kind = "simulated" if setup.simulated is not None else "configured"
    mode = f"{args.mode}{', streamed' if args.stream else ''}"
    pace = f"{args.rate:g} a second, " if args.rate else ""
    title = (
        f"{args.requests} chat completions, {pace}up to {args.concurrency} at a time ({mode}), "
        f"over {len(setup.targets)} {kind} backends"
    )
    return "\n".join([title, "", *lines, *render_windows(setup, balanced)])


def render_windows(setup: Setup, balanced: Result) -> list[str]:
    """What each simulated backend served in each of its rate-limit windows, through the balancer."""
    windows = balanced.served_per_window
    if not windows or setup.simulated is None:
        return []
    labels = {
        t.name: f"{t.name} (p{t.priority}, {setup.simulated.instance(t.name).config.requests_per_window}/s)"
        for t in setup.targets
    }
    width = max(len(label) for label in labels.values())
    lines = [
        "",
        "Load-balanced, served in each 1 s window of each backend (priority 2 gets only the overflow):",
    ]
    for t in setup.targets:
        counts = "".join(f"{n:>4}" for n in windows.get(t.name, [])) or "   -"
        lines.append(f"  {labels[t.name]:<{width}}{counts}")
    return lines


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        with contextlib.ExitStack() as stack:
            setup = load_setup(args, stack)
            if args.api == "responses":
                return _main_responses(setup, args)
            standard, _ = run_side(setup, args, balanced=False)
            balanced, balancer = run_side(setup, args, balanced=True)
            if args.json:
                print(
                    json.dumps(
                        {"standard": standard.as_dict(), "load_balanced": balanced.as_dict()}, indent=2
                    )
                )
            else:
                print(render_table(setup, standard, balanced, args))
                if not args.no_stats:
                    print("\nWhat the balancer saw (print(lb.stats())):\n")
                    print(balancer.stats())
                if setup.simulated is not None:  # the simulator serves the Responses API too
                    args.turns = 3
                    print("\n" + chains_line(chains_side(setup, args, True, 6, quiet=True), 3))
    except ConfigError as exc:
        print(f"aoai.py: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def _main_responses(setup: Setup, args: argparse.Namespace) -> int:
    standard = chains_side(setup, args, False, args.requests, quiet=False)
    balanced = chains_side(setup, args, True, args.requests, quiet=False)
    if args.json:
        print(json.dumps({"standard": standard.as_dict(), "load_balanced": balanced.as_dict()}, indent=2))
    else:
        print(render_chains(setup, standard, balanced, args))
        print("\n" + chains_line(balanced, args.turns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
