"""Run the README's Python blocks, each as a script of its own, as a reader would paste it.

    python tests/readme_blocks.py [--env NAME] [--list] [FILE]

Every block fenced as ```python is run, in a fresh temporary directory, by this interpreter, with a
timeout. A block is written for one environment:

- ``default`` (a block with no marker): a fresh install, with only the package, its documented extras
  and the newest openai (so ``httpx2``, and no ``httpx``);
- another one when the line just before its fence is ``<!-- readme-blocks: env=NAME -->``: ``httpx``
  (openai 1.x / 2.x on legacy httpx), ``integrations`` (LangChain, pydantic-ai), ``pytest`` (a test
  file, run with ``python -m pytest``, in an environment with pytest).

``--env NAME`` (repeatable; default: ``default``) runs the blocks written for NAME; run the script
once per environment, with that environment's Python. It prints one line per block, then
``N passed, N failed``, and exits 1 if any block failed, 2 if no block was written for a NAME.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
ENVIRONMENTS = ("default", "httpx", "integrations", "pytest")
TIMEOUT_S = 120

_FENCE = re.compile(r"^(`{3,})\s*(\S*)\s*$")
_MARKER = re.compile(r"^<!--\s*readme-blocks:\s*env=(\S+)\s*-->$")
_PYTHON = ("python", "py", "python3")


@dataclass(frozen=True)
class Block:
    line: int
    """The line of the opening fence (1-based)."""
    env: str
    code: str


def blocks(text: str) -> list[Block]:
    """The Python blocks of a Markdown text, in order, each with the environment it is written for.

    Raises:
        ValueError: a marker names an unknown environment or is not followed by a Python block, or a
            fence is not closed.
    """
    lines = text.splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        marker = _MARKER.match(lines[i].strip())
        if marker:
            env = marker.group(1)
            if env not in ENVIRONMENTS:
                raise ValueError(
                    f"line {i + 1}: unknown environment {env!r} (known: {', '.join(ENVIRONMENTS)})"
                )
            nxt = _FENCE.match(lines[i + 1]) if i + 1 < len(lines) else None
            if nxt is None or nxt.group(2).lower() not in _PYTHON:
                raise ValueError(
                    f"line {i + 1}: a readme-blocks marker must come just before a ```python fence"
                )
            i += 1
            continue
        fence = _FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        ticks, lang = fence.groups()
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == ticks), None)
        if end is None:
            raise ValueError(f"line {i + 1}: the fence is never closed")
        if lang.lower() in _PYTHON:
            previous = _MARKER.match(lines[i - 1].strip()) if i > 0 else None
            env = previous.group(1) if previous else "default"
            found.append(Block(i + 1, env, "\n".join(lines[i + 1 : end]) + "\n"))
        i = end + 1
    return found


def run(block: Block, name: str) -> tuple[bool, float, str]:
    """Run one block as a script; return whether it exited 0, how long it took, and its output."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    with tempfile.TemporaryDirectory(prefix="readme-block-") as tmp:
        prefix = "test_" if block.env == "pytest" else ""
        script = Path(tmp) / f"{prefix}{Path(name).stem.lower()}_line_{block.line}.py"
        script.write_text(block.code, encoding="utf-8")
        command = [sys.executable, str(script)]
        if block.env == "pytest":
            command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(script)]
        started = time.perf_counter()
        try:
            done = subprocess.run(
                command,
                cwd=tmp,
                env=env,
                capture_output=True,
                text=True,
                timeout=TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            output = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            return False, time.perf_counter() - started, f"{output}\ntimed out after {TIMEOUT_S} s"
        return done.returncode == 0, time.perf_counter() - started, done.stdout + done.stderr


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", nargs="?", type=Path, default=README)
    parser.add_argument("--env", choices=ENVIRONMENTS, action="append", help="which blocks to run")
    parser.add_argument("--list", action="store_true", help="list the blocks and their environments")
    args = parser.parse_args(argv)
    try:
        every = blocks(args.file.read_text(encoding="utf-8"))
    except ValueError as exc:
        print(f"{args.file}: {exc}", file=sys.stderr)
        return 2
    if args.list:
        for b in every:
            print(f"{args.file.name}:{b.line}  env={b.env}")
        return 0
    envs = args.env or ["default"]
    missing = [env for env in envs if not any(b.env == env for b in every)]
    if missing:
        print(f"{args.file}: no Python block is written for env={', '.join(missing)}", file=sys.stderr)
        return 2
    mine = [b for b in every if b.env in envs]
    print(
        f"{args.file.name}: {len(mine)} of {len(every)} Python blocks are for env={','.join(envs)},"
        f" run with {sys.executable}"
    )
    failed = 0
    for b in mine:
        ok, seconds, output = run(b, args.file.name)
        print(f"{'PASS' if ok else 'FAIL'}  {args.file.name}:{b.line}  env={b.env}  ({seconds:.1f} s)")
        if not ok:
            failed += 1
            print("\n".join(f"    {line}" for line in output.rstrip().splitlines()))
    print(f"{len(mine) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
