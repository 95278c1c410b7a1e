"""What one instance keeps, as an Azure OpenAI resource does: its responses (the Responses API).

Pure: no I/O, no clock of its own (the caller passes ``time.time()``), no locks (only the
simulator's loop touches a store). Each request is first *prepared* (validated and looked up,
nothing changed) so that the instance can admit or throttle it, then *executed*.
"""

from __future__ import annotations

import json
import math
import os
from collections import OrderedDict
from typing import Any

__all__ = [
    "DEFAULT_MAX_OUTPUT_TOKENS",
    "MAX_STORED",
    "Answer",
    "Missing",
    "ObjectStore",
    "ResponsePlan",
    "invalid",
    "response_events",
    "text_tokens",
]

DEFAULT_MAX_OUTPUT_TOKENS = 16
"""The ``max_output_tokens`` charged to the token budget when a request names none."""

MAX_STORED = 50_000
"""How many objects of each kind an instance keeps; beyond that the oldest are forgotten."""

_ITEMS_DEFAULT_LIMIT = 20


def text_tokens(text: str) -> int:
    """The simulator's token estimate of a text: about 4 characters per token, at least 1."""
    return max(1, math.ceil(len(text) / 4))


def invalid(message: str, *, param: str | None = None, code: str | None = None) -> bytes:
    """An ``invalid_request_error`` body as Azure OpenAI and OpenAI send it."""
    error = {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    return json.dumps({"error": error}).encode()


def new_id(prefix: str) -> str:
    """A fresh object id such as ``resp_<48 hex digits>`` (ids name nothing about their instance)."""
    return prefix + os.urandom(24).hex()


class Answer:
    """A complete answer: status and JSON body."""

    __slots__ = ("body", "status")

    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body


class Missing(Answer):
    """The answer to a request that names an object this instance does not hold (404 or 400)."""

    __slots__ = ()


def _response_not_found(response_id: str) -> Missing:
    return Missing(404, invalid(f"Response with id '{response_id}' not found."))


class _StoredResponse:
    __slots__ = ("background_until", "context_tokens", "input_items", "payload")

    def __init__(
        self, payload: dict[str, Any], input_items: list[dict[str, Any]], context_tokens: int
    ) -> None:
        self.payload = payload
        self.input_items = input_items
        self.context_tokens = context_tokens  # what a follow-up's input carries from this chain
        self.background_until: float | None = None  # a background response completes then


class ResponsePlan:
    """A validated ``POST /responses``, ready to be admitted and executed.

    Attributes:
        cost: Tokens charged to the budget at admission: the prompt estimate of this request's
            input and instructions plus ``max_output_tokens`` (`DEFAULT_MAX_OUTPUT_TOKENS` when
            absent), as Azure counts them.
        missing: The not-found answer when ``previous_response_id`` names a response this
            instance does not hold; ``None`` otherwise.
        stream: Whether the answer is an SSE stream.
        background: Whether the response runs in the background (``background: true``).
    """

    __slots__ = (
        "background",
        "body",
        "cost",
        "input_items",
        "input_tokens",
        "max_output_tokens",
        "missing",
        "model",
        "previous",
        "store",
        "stream",
    )

    def __init__(self, body: dict[str, Any], model: str) -> None:
        self.body = body
        self.model = model
        self.store = body.get("store") is not False
        self.stream = body.get("stream") is True
        self.background = body.get("background") is True
        self.missing: Missing | None = None
        self.previous: _StoredResponse | None = None
        self.input_items: list[dict[str, Any]] = []
        self.input_tokens = 0
        self.max_output_tokens = DEFAULT_MAX_OUTPUT_TOKENS
        self.cost = 0


class ObjectStore:
    """The stored objects of one instance."""

    def __init__(self) -> None:
        self.responses: OrderedDict[str, _StoredResponse] = OrderedDict()

    def clear(self) -> None:
        """Forget every object."""
        self.responses.clear()

    def holds(self, object_id: str) -> bool:
        """Whether this instance keeps an object with that id."""
        return object_id in self.responses

    def response_missing(self, response_id: str) -> Missing | None:
        """The 404 for a response this instance does not hold; ``None`` if it holds it."""
        return None if response_id in self.responses else _response_not_found(response_id)

    def cancel_refusal(self, response_id: str) -> Answer | None:
        """The 400 for cancelling a response that did not run in the background."""
        stored = self.responses.get(response_id)
        if stored is not None and not stored.payload.get("background"):
            return Answer(400, invalid("Cannot cancel a synchronous response.", param="response_id"))
        return None

    # -- POST /responses -------------------------------------------------------------------
    def prepare_response(self, body: dict[str, Any], model: str) -> ResponsePlan | Answer:
        """Validate a create request and look up what it names; change nothing."""
        plan = ResponsePlan(body, model)
        max_output = body.get("max_output_tokens")
        if max_output is not None:
            if not isinstance(max_output, int) or isinstance(max_output, bool) or max_output < 16:
                return Answer(
                    400,
                    invalid(
                        f"Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 16, "
                        f"but got {max_output!r} instead.",
                        param="max_output_tokens",
                        code="integer_below_min_value",
                    ),
                )
            plan.max_output_tokens = max_output
        instructions = body.get("instructions")
        if instructions is not None and not isinstance(instructions, str):
            return Answer(400, invalid("'instructions' must be a string.", param="instructions"))
        items = _input_items(body.get("input"))
        if items is None:
            return Answer(400, invalid("'input' must be a string or a list of input items.", param="input"))
        if plan.background and not plan.store:
            return Answer(400, invalid("Background mode requires 'store' to be true.", param="background"))
        plan.input_items = items
        prompt = sum(_item_tokens(item) for item in items)
        if isinstance(instructions, str) and instructions:
            prompt += text_tokens(instructions) + 1
        plan.cost = prompt + plan.max_output_tokens
        plan.input_tokens = prompt
        previous_id = body.get("previous_response_id")
        if previous_id is not None:
            if not isinstance(previous_id, str) or not previous_id:
                return Answer(
                    400, invalid("'previous_response_id' must be a string.", param="previous_response_id")
                )
            plan.previous = self.responses.get(previous_id)
            if plan.previous is None:
                plan.missing = Missing(
                    400,
                    invalid(
                        f"Previous response with id '{previous_id}' not found.",
                        param="previous_response_id",
                        code="previous_response_not_found",
                    ),
                )
            else:
                plan.input_tokens += plan.previous.context_tokens
        return plan

    def create_response(
        self, plan: ResponsePlan, now: float, *, text: str, background_s: float = 0.0
    ) -> dict[str, Any]:
        """Make the response an admitted plan asks for and keep it (unless ``store`` is false).

        Returns the response object as a non-streamed answer sends it (completed, or queued for a
        background response, which completes ``background_s`` after ``now``). A streamed response
        is kept ``in_progress`` until `finish_response`.
        """
        body = plan.body
        response_id = new_id("resp_")
        message_id = new_id("msg_")
        output_tokens = min(plan.max_output_tokens, text_tokens(text))
        payload: dict[str, Any] = {
            "id": response_id,
            "object": "response",
            "created_at": int(now),
            "status": "completed",
            "background": plan.background,
            "completed_at": int(now),
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "metadata": body.get("metadata") if isinstance(body.get("metadata"), dict) else {},
            "model": plan.model,
            "output": [_output_message(message_id, text)],
            "parallel_tool_calls": body.get("parallel_tool_calls") is not False,
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": {"effort": None, "summary": None},
            "service_tier": "default",
            "store": plan.store,
            "temperature": _number(body.get("temperature"), 1.0),
            "text": {"format": {"type": "text"}},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") if isinstance(body.get("tools"), list) else [],
            "top_p": _number(body.get("top_p"), 1.0),
            "truncation": body.get("truncation", "disabled"),
            "usage": _usage(plan.input_tokens, output_tokens),
            "user": body.get("user"),
            "conversation": None,
        }
        if plan.store:
            stored = _StoredResponse(payload, plan.input_items, plan.input_tokens + output_tokens)
            self.responses[response_id] = stored
            while len(self.responses) > MAX_STORED:
                self.responses.popitem(last=False)
            if plan.background:
                stored.background_until = now + background_s
                return _pending(payload, "queued")
            if plan.stream:
                stored.payload = _pending(payload, "in_progress")
        return payload

    def finish_response(self, response_id: str, payload: dict[str, Any]) -> None:
        """A streamed response is complete: keep its final form (if it is kept at all)."""
        stored = self.responses.get(response_id)
        if stored is not None:
            stored.payload = payload

    # -- /responses/{id} -------------------------------------------------------------------
    def retrieve_response(self, response_id: str, now: float) -> Answer:
        """``GET /responses/{id}``."""
        stored = self._refreshed(response_id, now)
        if stored is None:
            return _response_not_found(response_id)
        return Answer(200, json.dumps(stored.payload).encode())

    def delete_response(self, response_id: str) -> Answer:
        """``DELETE /responses/{id}``."""
        if self.responses.pop(response_id, None) is None:
            return _response_not_found(response_id)
        return Answer(200, json.dumps({"id": response_id, "object": "response", "deleted": True}).encode())

    def cancel_response(self, response_id: str, now: float) -> Answer:
        """``POST /responses/{id}/cancel``: only a background response can be cancelled."""
        stored = self._refreshed(response_id, now)
        if stored is None:
            return _response_not_found(response_id)
        refusal = self.cancel_refusal(response_id)
        if refusal is not None:
            return refusal
        if stored.background_until is not None:  # still running: stop it
            stored.background_until = None
            stored.payload = {**_pending(stored.payload, "cancelled"), "output": []}
        return Answer(200, json.dumps(stored.payload).encode())

    def input_items(self, response_id: str, query: dict[str, str]) -> Answer:
        """``GET /responses/{id}/input_items`` with ``limit``, ``order`` and ``after``."""
        stored = self.responses.get(response_id)
        if stored is None:
            return _response_not_found(response_id)
        return _item_list(stored.input_items, query)

    def _refreshed(self, response_id: str, now: float) -> _StoredResponse | None:
        stored = self.responses.get(response_id)
        if stored is not None and stored.background_until is not None and now >= stored.background_until:
            stored.background_until = None
            stored.payload = {**stored.payload, "status": "completed", "completed_at": int(now)}
        return stored


def response_events(payload: dict[str, Any], deltas: list[str]) -> list[dict[str, Any]]:
    """The SSE events of a streamed response, in Azure's order, with their ``sequence_number``.

    ``payload`` is the completed response; the events before ``response.completed`` carry it
    ``in_progress`` and without output. The text deltas are the ``response.output_text.delta``
    events, one per entry of ``deltas``.
    """
    message = payload["output"][0]
    item_id = message["id"]
    text = message["content"][0]["text"]
    pending = _pending(payload, "in_progress")
    where = {"item_id": item_id, "output_index": 0, "content_index": 0}
    empty_part = {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": pending},
        {"type": "response.in_progress", "response": pending},
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": {
                "id": item_id,
                "type": "message",
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            },
        },
        {"type": "response.content_part.added", **where, "part": empty_part},
    ]
    events.extend(
        {"type": "response.output_text.delta", **where, "delta": delta, "logprobs": []} for delta in deltas
    )
    events += [
        {"type": "response.output_text.done", **where, "text": text, "logprobs": []},
        {"type": "response.content_part.done", **where, "part": message["content"][0]},
        {"type": "response.output_item.done", "output_index": 0, "item": message},
        {"type": "response.completed", "response": payload},
    ]
    for number, event in enumerate(events):
        event["sequence_number"] = number
    return events


def _pending(payload: dict[str, Any], status: str) -> dict[str, Any]:
    return {**payload, "status": status, "completed_at": None, "output": [], "usage": None}


def _output_message(message_id: str, text: str) -> dict[str, Any]:
    return {
        "id": message_id,
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def _usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def _number(value: object, default: float) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return default


def _input_items(value: object) -> list[dict[str, Any]] | None:
    """The input as stored items (each with an ``id``); ``None`` if it is not valid input."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [{"role": "user", "content": value}]
    if not isinstance(value, list):
        return None
    items = []
    for entry in value:
        if not isinstance(entry, dict):
            return None
        item = dict(entry)
        kind = item.setdefault("type", "message")
        if kind == "message":
            role = item.get("role")
            content = item.get("content")
            if not isinstance(role, str):
                return None
            if isinstance(content, str):
                part = "output_text" if role == "assistant" else "input_text"
                item["content"] = [{"type": part, "text": content}]
            elif not isinstance(content, list):
                return None
            item.setdefault("status", "completed")
        item.setdefault("id", new_id("msg_" if kind == "message" else "item_"))
        items.append(item)
    return items


def _item_tokens(item: dict[str, Any]) -> int:
    content = item.get("content")
    chars = 0
    if isinstance(content, list):
        chars = sum(
            len(part["text"])
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    elif isinstance(item.get("output"), str):
        chars = len(item["output"])
    return math.ceil(chars / 4) + 1


def _item_list(items: list[dict[str, Any]], query: dict[str, str]) -> Answer:
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        return Answer(400, invalid("'order' must be 'asc' or 'desc'.", param="order"))
    limit_text = query.get("limit", str(_ITEMS_DEFAULT_LIMIT))
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= 100:
        return Answer(400, invalid("'limit' must be an integer from 1 to 100.", param="limit"))
    ordered = items if order == "asc" else items[::-1]
    after = query.get("after")
    if after:
        ids = [item["id"] for item in ordered]
        ordered = ordered[ids.index(after) + 1 :] if after in ids else []
    page = ordered[: int(limit_text)]
    listing = {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(ordered) > len(page),
    }
    return Answer(200, json.dumps(listing).encode())
