"""The README's Python blocks: found, valid Python, each written for a known environment, and run.

CI runs every block (``tests/readme_blocks.py``) in the environment it is written for; the suite runs
the plain and legacy-httpx ones here, where what they import is installed.
"""

from __future__ import annotations

import ast
import importlib.util
import re

import pytest

from readme_blocks import ENVIRONMENTS, README, Block, blocks, run


def test_every_python_block_is_valid_python_and_needs_no_hand_built_endpoint() -> None:
    found = blocks(README.read_text(encoding="utf-8"))
    assert len(found) >= 8
    for block in found:
        ast.parse(block.code, filename=f"README.md:{block.line}")
        assert ".host}" not in block.code, f"README.md:{block.line}: use backend.endpoint"
    assert {b.env for b in found} == set(ENVIRONMENTS)  # each environment has blocks: CI runs each


def test_the_default_blocks_do_not_import_httpx() -> None:
    """They run where openai 3.x brought httpx2 alone: ``import httpx`` belongs in env=httpx blocks."""
    for block in blocks(README.read_text(encoding="utf-8")):
        if block.env == "default":
            assert not re.search(r"^\s*(import|from)\s+httpx\b(?!2)", block.code, re.M), block.line


def test_no_signature_or_fragment_is_fenced_as_python() -> None:
    text = README.read_text(encoding="utf-8")
    assert "```python\nBackend(host" not in text


SAMPLE = """\
text
```python
print(1)
```
<!-- readme-blocks: env=httpx -->
```python
import httpx
```
```text
not python
```
````markdown
```python
inside another fence: not a block
```
````
"""


def test_blocks_are_found_with_their_environment() -> None:
    found = blocks(SAMPLE)
    assert [(b.line, b.env, b.code) for b in found] == [
        (2, "default", "print(1)\n"),
        (6, "httpx", "import httpx\n"),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<!-- readme-blocks: env=nowhere -->\n```python\nx\n```\n", "unknown environment"),
        ("<!-- readme-blocks: env=httpx -->\n\n```python\nx\n```\n", "just before"),
        ("```python\nx\n", "never closed"),
    ],
)
def test_malformed_markup_is_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        blocks(text)


def _missing_module(code: str) -> str | None:
    """The first top-level module the block imports that is not installed here, if any."""
    for node in ast.walk(ast.parse(code)):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module]
        for name in names:
            top = name.split(".")[0]
            if importlib.util.find_spec(top) is None:
                return top
    return None


_RUNNABLE = [b for b in blocks(README.read_text(encoding="utf-8")) if b.env in ("default", "httpx")]


@pytest.mark.e2e
@pytest.mark.parametrize("block", _RUNNABLE, ids=[f"README.md:{b.line}" for b in _RUNNABLE])
def test_the_block_runs_here(block: Block) -> None:
    """Each block, run as a script here, where the modules it imports are installed (CI runs every
    block in the environment it is written for: tests/readme_blocks.py)."""
    missing = _missing_module(block.code)
    if missing:
        pytest.skip(f"{missing} is not installed here; CI runs this block in its own environment")
    ok, _, output = run(block, "README.md")
    assert ok, output
