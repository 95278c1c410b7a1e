"""Command line: run simulated Azure OpenAI instances in the foreground until Ctrl-C."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from ._config import FAILURE_MODES, HEADER_STYLES, InstanceConfig
from ._server import Simulator

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import FrameType

__all__ = ["DEFAULT_INSTANCES", "main", "parse_instance"]

DEFAULT_INSTANCES = (
    InstanceConfig("eastus", requests_per_window=4, window_s=1.0, latency_s=0.05),
    InstanceConfig(
        "westus", requests_per_window=8, window_s=1.0, latency_s=0.05, header_style="retry-after-ms"
    ),
    InstanceConfig(
        "swedencentral", requests_per_window=16, window_s=1.0, latency_s=0.1, header_style="reset-requests"
    ),
)

_ALIASES = {
    "rpw": "requests_per_window",
    "window": "window_s",
    "tpm": "tokens_per_minute",
    "latency": "latency_s",
    "chunks": "stream_chunks",
    "chunk_delay": "stream_chunk_delay_s",
    "first_chunk": "first_chunk_delay_s",
    "style": "header_style",
    "key": "api_key",
    "headers": "ratelimit_headers",
}
_INTS = {"requests_per_window", "tokens_per_minute", "stream_chunks", "port"}
_FLOATS = {"window_s", "latency_s", "stream_chunk_delay_s", "first_chunk_delay_s"}
_OPTIONAL = {"requests_per_window", "tokens_per_minute", "failure", "api_key"}
_FIELDS = {field.name for field in fields(InstanceConfig)}

_EPILOG = f"""\
instance syntax:
  --instance NAME[,KEY=VALUE...]  or  --instance name=NAME,KEY=VALUE,...
  keys (short or long form):
    rpw / requests_per_window   requests admitted per window (int; "none" = unlimited)
    window / window_s           window length in seconds (default 1)
    tpm / tokens_per_minute     token budget per minute, enforced pro rata per window
    latency / latency_s         seconds before the answer / a streamed answer's headers
    first_chunk / first_chunk_delay_s   seconds between a streamed answer's headers and first chunk
    chunks / stream_chunks      chunks in a streamed answer (default 10)
    chunk_delay / stream_chunk_delay_s   seconds between streamed chunks
    failure                     none | {" | ".join(FAILURE_MODES)}
    style / header_style        how a 429 says when to retry:
                                {" | ".join(HEADER_STYLES)}
    key / api_key               required api-key (else 401)
    port                        TCP port (0 = any free port)
    headers / ratelimit_headers report x-ratelimit-* budget headers (true | false)

config file (--config FILE.json): a list of instance objects, or {{"instances": [...]}}, with the
same keys, e.g. {{"instances": [{{"name": "eastus", "rpw": 4, "style": "retry-after-ms"}}]}}

Windows are fixed and start with each instance's first request. Each instance prints a line
"NAME URL"; use the URL as azure_endpoint. Ctrl-C (SIGINT) or SIGTERM stops and prints counters.

example:
  python -m openai_priority_loadbalancer.simulator \\
      --instance eastus,rpw=4,window=1,latency=0.05,port=8081 \\
      --instance name=westus,rpw=8,style=retry-after-ms,port=8082
"""


def _convert(field: str, value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip()
        if field in _OPTIONAL and text.lower() in ("none", "null", "unlimited", ""):
            return None
        if field in _INTS:
            return int(text)
        if field in _FLOATS:
            return float(text)
        if field == "ratelimit_headers":
            if text.lower() in ("true", "yes", "1", "on"):
                return True
            if text.lower() in ("false", "no", "0", "off"):
                return False
            raise ValueError(f"{field}: expected true or false, not {value!r}")
    elif field in _FLOATS and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _build(items: dict[str, Any], source: str) -> InstanceConfig:
    values: dict[str, Any] = {}
    for key, value in items.items():
        field = _ALIASES.get(key, key)
        if field not in _FIELDS:
            raise ValueError(f"{source}: unknown key {key!r}")
        if field in values:
            raise ValueError(f"{source}: {field!r} is given twice")
        try:
            values[field] = _convert(field, value)
        except ValueError as exc:
            raise ValueError(f"{source}: {key}={value!r}: {exc}") from None
    if "name" not in values:
        raise ValueError(f"{source}: a name is required")
    try:
        return InstanceConfig(**values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{source}: {exc}") from None


def parse_instance(spec: str) -> InstanceConfig:
    """Parse ``NAME,KEY=VALUE,...`` or ``name=NAME,KEY=VALUE,...`` into an `InstanceConfig`.

    Raises:
        ValueError: Unknown key or invalid value.
    """
    items: dict[str, str] = {}
    for position, part in enumerate(spec.split(",")):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep:
            if position == 0 and key:
                key, value = "name", key
            else:
                raise ValueError(f"--instance {spec!r}: expected KEY=VALUE, not {part!r}")
        if key in items:
            raise ValueError(f"--instance {spec!r}: {key!r} is given twice")
        items[key] = value.strip()
    return _build(items, f"--instance {spec!r}")


def _load_config(path: str) -> list[InstanceConfig]:
    with open(path, encoding="utf-8") as file:
        data = json.load(file)
    if isinstance(data, dict):
        data = data.get("instances")
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of instances or {{'instances': [...]}}")
    configs = []
    for index, item in enumerate(data):
        if not isinstance(item, dict):
            raise ValueError(f"{path}: instance #{index + 1} is not an object")
        configs.append(_build(item, f"{path}: instance #{index + 1}"))
    return configs


def _describe(config: InstanceConfig) -> str:
    parts = []
    if config.requests_per_window is None:
        parts.append("unlimited")
    else:
        parts.append(f"{config.requests_per_window} requests per {config.window_s:g} s")
    if config.tokens_per_minute is not None:
        parts.append(f"{config.tokens_per_minute} tokens per minute")
    if config.latency_s:
        parts.append(f"latency {config.latency_s:g} s")
    if config.first_chunk_delay_s:
        parts.append(f"first chunk after {config.first_chunk_delay_s:g} s")
    parts.append(f"429 style {config.header_style}")
    if config.failure is not None:
        parts.append(f"failure {config.failure}")
    if config.api_key is not None:
        parts.append("api-key required")
    return ", ".join(parts)


def _counters(simulator: Simulator) -> str:
    columns = (
        "received",
        "served",
        "throttled",
        "failed",
        "unauthorized",
        "rejected",
        "not_found",
        "in_flight",
    )
    width = max(8, *(len(instance.name) for instance in simulator.instances))
    lines = [f"{'instance':<{width}}  " + "  ".join(f"{column:>12}" for column in columns)]
    for instance in simulator.instances:
        stats = instance.stats
        values = "  ".join(f"{getattr(stats, column):>12}" for column in columns)
        lines.append(f"{instance.name:<{width}}  {values}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m openai_priority_loadbalancer.simulator",
        description="Run simulated Azure OpenAI endpoints (chat completions, embeddings, responses,\n"
        "conversations, files) with rate limits, latency, streaming and failure modes.\n"
        "Each instance keeps its own stored objects. Without --instance or --config, runs three instances:\n"
        + "\n".join(f"  {config.name}: {_describe(config)}" for config in DEFAULT_INSTANCES),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--instance",
        action="append",
        default=[],
        metavar="SPEC",
        help="an instance (repeatable), e.g. eastus,rpw=4,window=1,style=retry-after-ms,port=8081",
    )
    parser.add_argument("--config", metavar="FILE.json", help="read instances from a JSON file")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--duration", type=float, metavar="SECONDS", help="stop by itself after this long")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        configs = [parse_instance(spec) for spec in args.instance]
        if args.config:
            configs += _load_config(args.config)
        simulator = Simulator(configs or DEFAULT_INSTANCES, host=args.host)
    except (OSError, ValueError, TypeError) as exc:
        parser.error(str(exc))
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            simulator.start()
        except OSError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        try:
            for instance in simulator.instances:
                print(f"{instance.name} {instance.url}  ({_describe(instance.config)})", flush=True)
            print("Simulator running; press Ctrl-C to stop.", file=sys.stderr, flush=True)
            stop.wait(args.duration)
        finally:
            simulator.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(_counters(simulator), flush=True)
    return 0
