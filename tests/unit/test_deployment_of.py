"""Which deployment a request names: from the path, or on the v1 API from the body's model."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openai_priority_loadbalancer._deployment import deployment_of


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        (b"/openai/deployments/gpt-4o/chat/completions", b"", "gpt-4o"),
        (b"/openai/deployments/emb/embeddings?api-version=1", b"", "emb"),
        (b"/openai/deployments/x?y", b"", "x"),
        (b"/openai/deployments/", b"", None),
        (b"/openai/v1/chat/completions", b'{"model": "gpt-4o-mini", "messages": []}', "gpt-4o-mini"),
        (b"/v1/embeddings", b'{"input":"x","model":"emb"}', "emb"),
        (b"/openai/v1/responses", b'{"input": "x"}', None),
        (b"/openai/v1/responses", b"", None),
        (b"/openai/v1/chat/completions", b'{"model": null}', None),
        (b"/openai/v1/chat/completions", b'{"model": "a\\"b"}', None),  # escaped: not guessed
        (b"/openai/v1/chat/completions", b'{"tools": [{"model": {"type": "string"}}], "model": "m"}', "m"),
        (b"/openai/files/file-1", b'{"model": "m"}', None),
    ],
)
def test_deployment_of(path: bytes, body: bytes, expected: str | None) -> None:
    assert deployment_of(path, body) == expected


@given(st.from_regex(r"\A[A-Za-z0-9._-]{1,64}\Z"), st.text(max_size=40))
def test_model_after_any_messages(model: str, text: str) -> None:
    body = json.dumps({"messages": [{"role": "user", "content": text}], "model": model}).encode()
    assert deployment_of(b"/openai/v1/chat/completions", body) == model


@given(st.binary(max_size=200))
def test_never_raises(body: bytes) -> None:
    deployment_of(b"/openai/v1/chat/completions", body)
