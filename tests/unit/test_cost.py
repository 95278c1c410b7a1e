"""Token costs: the prompt from the body's size, plus the output limit found by a byte scan (DESIGN 10)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openai_priority_loadbalancer._cost import (
    CHARS_PER_TOKEN,
    DEFAULT_MAX_OUTPUT_TOKENS,
    estimate_cost,
    max_output_tokens,
)


def _body(**fields: object) -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": "hi"}], **fields}).encode()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (_body(max_tokens=500), 500),
        (_body(max_completion_tokens=1200), 1200),
        (b'{"input": "x", "max_output_tokens": 77}', 77),
        (b'{"max_tokens" :\n 12 , "x": 1}', 12),
        (b'{"max_tokens":1}', 1),
        (_body(), None),
        (_body(max_tokens=None), None),
        (_body(max_tokens=0), None),
        (_body(max_tokens=-5), None),
        (_body(max_tokens=1.5), None),
        (_body(max_tokens=1e3), None),
        (b'{"max_tokens": 12345678901}', None),  # beyond any model: not believed
        (b'{"max_tokens": "10"}', None),
        (b'{"max_tokens"', None),
        (b'{"max_tokens":', None),
        # a tool's parameter named max_tokens: passed over, the request's own limit found after it
        (
            json.dumps(
                {
                    "tools": [{"parameters": {"properties": {"max_tokens": {"type": "integer"}}}}],
                    "max_tokens": 40,
                }
            ).encode(),
            40,
        ),
        # the key's text inside a message is escaped, so it is not a key
        (_body(messages=[{"role": "user", "content": '"max_tokens": 999'}]), None),
    ],
)
def test_max_output_tokens(body: bytes, expected: int | None) -> None:
    assert max_output_tokens(body) == expected


def test_max_tokens_wins_over_the_newer_names() -> None:
    assert max_output_tokens(_body(max_completion_tokens=9, max_tokens=3)) == 3


def test_cost_is_prompt_from_size_plus_output_limit() -> None:
    body = _body(messages=[{"role": "user", "content": "x" * 4000}], max_tokens=500)
    assert estimate_cost(body) == -(-len(body) // CHARS_PER_TOKEN) + 500
    assert 1000 < estimate_cost(body) - 500 < 1020  # the JSON syntax adds a few tokens, no more


def test_cost_without_a_limit_uses_the_documented_default() -> None:
    body = _body()
    assert (
        estimate_cost(body)
        == -(-len(body) // CHARS_PER_TOKEN) + DEFAULT_MAX_OUTPUT_TOKENS
        == len(body) // 4 + 1 + 16
    )


def test_embeddings_cost_only_their_input() -> None:
    body = json.dumps({"input": "y" * 400}).encode()
    assert estimate_cost(body, generates=False) == -(-len(body) // CHARS_PER_TOKEN)


def test_empty_body_costs_nothing() -> None:
    assert estimate_cost(b"") == 0


@given(st.binary(max_size=300))
def test_never_raises(body: bytes) -> None:
    value = max_output_tokens(body)
    assert value is None or 0 < value < 10**10
    assert estimate_cost(body) >= 0


@given(st.integers(1, 10**9 - 1), st.text(max_size=50))
def test_finds_any_limit_after_any_text(limit: int, text: str) -> None:
    body = json.dumps({"messages": [{"role": "user", "content": text}], "max_tokens": limit}).encode()
    assert max_output_tokens(body) == limit
