"""A request's token cost, as Azure OpenAI estimates it when it admits the request (DESIGN 10).

Azure charges a request against its deployment's tokens-per-minute budget before running it: an
estimate of the prompt from its characters (about 4 a token) plus the most the answer may use,
``max_tokens`` (``max_completion_tokens`` on newer models, ``max_output_tokens`` in the Responses
API). The balancer makes the same estimate, to know whether a request fits what a deployment has
left, and does it on the hot path: from the body's size and a byte scan for the output limit, never
a JSON parse. The body's size counts its JSON syntax as well as its text, so the prompt estimate is
on the high side by a few tokens per message: a request is sent where it fits, not where it might.

Pure functions: no I/O, no state.
"""

from __future__ import annotations

from typing import Final

__all__ = ["CHARS_PER_TOKEN", "DEFAULT_MAX_OUTPUT_TOKENS", "estimate_cost", "max_output_tokens"]

#: Azure's estimate of a prompt: one token per this many characters.
CHARS_PER_TOKEN: Final = 4
#: The output a request may use when it names no limit (Azure's and the simulator's assumption).
DEFAULT_MAX_OUTPUT_TOKENS: Final = 16

# The JSON keys naming the output limit, as they appear in a body (a quote inside a JSON string is
# escaped, so these bytes cannot come from a message's text).
_OUTPUT_KEYS: Final = (b'"max_tokens"', b'"max_completion_tokens"', b'"max_output_tokens"')
_JSON_SPACE: Final = b" \t\r\n"
_DIGITS: Final = frozenset(b"0123456789")
_MAX_DIGITS: Final = 9  # a billion tokens is beyond any model's output


def max_output_tokens(body: bytes) -> int | None:
    """The body's ``max_tokens`` / ``max_completion_tokens`` / ``max_output_tokens``, or None.

    A key whose value is not a plain positive integer (``null``, an object: a tool's parameter
    schema may be named so) is passed over, and the scan goes on to the previous occurrence.
    """
    for key in _OUTPUT_KEYS:
        # From the end: the SDK writes the options after the messages, and rfind scans faster.
        start = body.rfind(key)
        while start != -1:
            value = _integer_after(body, start + len(key))
            if value is not None:
                return value
            start = body.rfind(key, 0, start)
    return None


def _integer_after(body: bytes, i: int) -> int | None:
    """The positive integer of a ``: 123`` that starts at ``body[i]``, or None."""
    n = len(body)
    while i < n and body[i] in _JSON_SPACE:
        i += 1
    if i >= n or body[i] != 0x3A:  # ":"
        return None
    i += 1
    while i < n and body[i] in _JSON_SPACE:
        i += 1
    end = i
    while end < n and body[end] in _DIGITS and end - i <= _MAX_DIGITS:
        end += 1
    if end == i or end - i > _MAX_DIGITS or (end < n and body[end] in b".eE"):
        return None
    value = int(body[i:end])
    return value if value > 0 else None


def estimate_cost(body: bytes, *, generates: bool = True) -> int:
    """Tokens Azure charges for a request with this JSON ``body`` when it admits it.

    The prompt: ``len(body) / CHARS_PER_TOKEN``, rounded up. Plus, for a request that generates
    text (``generates``; embeddings do not), its output limit, or ``DEFAULT_MAX_OUTPUT_TOKENS`` when
    the body names none. An empty body costs 0 (nothing Azure meters by tokens).
    """
    if not body:
        return 0
    prompt = -(-len(body) // CHARS_PER_TOKEN)
    if not generates:
        return prompt
    output = max_output_tokens(body)
    return prompt + (DEFAULT_MAX_OUTPUT_TOKENS if output is None else output)
