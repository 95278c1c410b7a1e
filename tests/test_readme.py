"""The README's Python blocks: found, valid Python, each written for a known environment.

CI runs them (``tests/readme_blocks.py``), each in the environment it is written for; these checks
are the quick part, run with the suite.
"""

from __future__ import annotations

import ast
import re

import pytest

from readme_blocks import ENVIRONMENTS, README, blocks


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
