"""What one instance keeps, as an Azure OpenAI resource does: responses, conversations, files.

Pure: no I/O, no clock of its own (the caller passes ``time.time()``), no locks (only the
simulator's loop touches a store). Each request is first *prepared* (validated and looked up,
nothing changed) so that the instance can admit or throttle it, then *executed*.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import os
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "DEFAULT_MAX_OUTPUT_TOKENS",
    "MAX_STORED",
    "Answer",
    "Missing",
    "ObjectStore",
    "Prepared",
    "ResponsePlan",
    "invalid",
    "response_events",
    "text_tokens",
]

DEFAULT_MAX_OUTPUT_TOKENS = 16
"""The ``max_output_tokens`` charged to the token budget when a request names none."""

MAX_STORED = 50_000
"""How many objects of each kind an instance keeps; beyond that the oldest are forgotten."""

MAX_CONVERSATION_ITEMS = 20
"""How many items ``POST /conversations`` and ``POST /conversations/{id}/items`` take at once."""

FILE_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")


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


def _conversation_not_found(conversation_id: str, param: str | None = None) -> Missing:
    return Missing(404, invalid(f"Conversation with id '{conversation_id}' not found.", param=param))


def _item_not_found(item_id: str) -> Missing:
    return Missing(
        404,
        invalid(
            f"Item with id '{item_id}' not found. Items are not persisted when `store` is set to false. "
            "Try again with `store` set to true, or remove this item from your input.",
            param="input",
        ),
    )


def _file_not_found(file_id: str) -> Missing:
    return Missing(404, invalid(f"No such File object: {file_id}", param="id"))


class Prepared:
    """A validated request, looked up but not yet executed.

    Attributes:
        cost: Tokens to charge at admission.
        missing: The not-found answer when the request names an object this instance does not
            hold (answered instead of running it).
        run: Executes the request (called once, after admission, with ``time.time()``).
        plan: For ``POST /responses``, the plan the instance executes itself (it may stream).
    """

    __slots__ = ("cost", "missing", "plan", "run")

    def __init__(
        self,
        run: Callable[[float], Answer] | None = None,
        *,
        missing: Missing | None = None,
        plan: ResponsePlan | None = None,
    ) -> None:
        self.run = run
        self.missing = missing
        self.plan = plan
        self.cost = 0 if plan is None else plan.cost


class _Conversation:
    __slots__ = ("items", "payload")

    def __init__(self, payload: dict[str, Any], items: list[dict[str, Any]]) -> None:
        self.payload = payload
        self.items = items


class _File:
    __slots__ = ("content", "payload")

    def __init__(self, payload: dict[str, Any], content: bytes) -> None:
        self.payload = payload
        self.content = content


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
        "conversation",
        "cost",
        "encrypted_reasoning",
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
        self.conversation: _Conversation | None = None
        include = body.get("include")
        self.encrypted_reasoning = isinstance(include, list) and "reasoning.encrypted_content" in include
        self.input_items: list[dict[str, Any]] = []
        self.input_tokens = 0
        self.max_output_tokens = DEFAULT_MAX_OUTPUT_TOKENS
        self.cost = 0


class ObjectStore:
    """The stored objects of one instance."""

    def __init__(self) -> None:
        self.responses: OrderedDict[str, _StoredResponse] = OrderedDict()
        self.conversations: OrderedDict[str, _Conversation] = OrderedDict()
        self.files: OrderedDict[str, _File] = OrderedDict()
        self.items: OrderedDict[str, dict[str, Any]] = OrderedDict()  # every item kept, by id
        self._key = os.urandom(32)  # seals this instance's encrypted reasoning

    def holds(self, object_id: str) -> bool:
        """Whether this instance keeps an object (response, conversation, file or item) with that id."""
        return any(object_id in kind for kind in (self.responses, self.conversations, self.files, self.items))

    # -- dispatch --------------------------------------------------------------------------
    def prepare(
        self, operation: str, ids: tuple[str, ...], body: dict[str, Any], query: dict[str, str]
    ) -> Prepared | Answer:
        """Validate a request and look up what it names, changing nothing.

        ``body`` is the JSON object (or, for ``files.create``, the form fields: ``purpose`` as a
        str and ``file`` as a (filename, bytes) tuple); an `Answer` is a refusal (a 400) to
        send before admission.
        """
        first = ids[0] if ids else ""
        if operation == "responses.create":
            plan = self.prepare_response(body, body.get("model") or "")
            return plan if isinstance(plan, Answer) else Prepared(plan=plan, missing=plan.missing)
        if operation.startswith("responses."):
            missing = self.response_missing(first)
            if missing is not None:
                return Prepared(missing=missing)
            if operation == "responses.cancel":
                refusal = self.cancel_refusal(first)
                return refusal or Prepared(lambda now: self.cancel_response(first, now))
            if operation == "responses.retrieve":
                return Prepared(lambda now: self.retrieve_response(first, now))
            if operation == "responses.delete":
                return Prepared(lambda now: self.delete_response(first))
            return Prepared(lambda now: self.input_items(first, query))
        if operation == "conversations.create":
            return self._prepare_conversation(body)
        if operation.startswith("conversations."):
            conversation = self.conversations.get(first)
            if conversation is None:
                return Prepared(missing=_conversation_not_found(first))
            return self._prepare_on_conversation(operation, conversation, ids, body, query)
        if operation == "files.create":
            return self._prepare_file(body)
        if operation == "files.list":
            return Prepared(lambda now: self._list_files(query))
        stored_file = self.files.get(first)
        if stored_file is None:
            return Prepared(missing=_file_not_found(first))
        if operation == "files.retrieve":
            return Prepared(lambda now: Answer(200, json.dumps(stored_file.payload).encode()))
        if operation == "files.content":
            return Prepared(lambda now: Answer(200, stored_file.content))
        return Prepared(lambda now: self._delete_file(first))

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
        conversation_id = body.get("conversation")
        if isinstance(conversation_id, dict):
            conversation_id = conversation_id.get("id")
        if conversation_id is not None and (not isinstance(conversation_id, str) or not conversation_id):
            return Answer(
                400, invalid("'conversation' must be an id or an object with an id.", param="conversation")
            )
        if conversation_id is not None and body.get("previous_response_id") is not None:
            return Answer(
                400,
                invalid(
                    "Mutually exclusive parameters: Ensure you are only providing one of: "
                    "'previous_response_id' or 'conversation'.",
                    param="conversation",
                ),
            )
        plan.missing = self._resolve_input(items)
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
                plan.missing = plan.missing or Missing(
                    400,
                    invalid(
                        f"Previous response with id '{previous_id}' not found.",
                        param="previous_response_id",
                        code="previous_response_not_found",
                    ),
                )
            else:
                plan.input_tokens += plan.previous.context_tokens
        if isinstance(conversation_id, str):
            plan.conversation = self.conversations.get(conversation_id)
            if plan.conversation is None:
                plan.missing = plan.missing or _conversation_not_found(conversation_id, "conversation")
            else:
                plan.input_tokens += sum(_item_tokens(item) for item in plan.conversation.items)
        return plan

    def _resolve_input(self, items: list[dict[str, Any]]) -> Missing | None:
        """Check what input items name (in place: a reference becomes the item it names).

        An ``item_reference``, or a reasoning item without its ``encrypted_content``, must name
        an item this instance keeps (404 otherwise); encrypted reasoning must have been sealed
        here (400 ``invalid_encrypted_content`` otherwise); an ``input_file`` must name a file
        kept here (404 otherwise). Other items are taken as given, ids or not.
        """
        for index, item in enumerate(items):
            kind = item.get("type")
            item_id = item.get("id")
            sealed = item.get("encrypted_content")
            if kind == "reasoning" and sealed is not None:
                if not self._verify(sealed):
                    return Missing(
                        400,
                        invalid(
                            f"The encrypted content for item {item_id or 'in the input'} could not be "
                            "verified.",
                            code="invalid_encrypted_content",
                        ),
                    )
            elif kind in ("item_reference", "reasoning"):
                kept = self.items.get(item_id) if isinstance(item_id, str) else None
                if kept is None:
                    return _item_not_found(str(item_id))
                if kind == "item_reference":
                    items[index] = kept
            content = item.get("content")
            for part in content if isinstance(content, list) else ():
                if isinstance(part, dict) and part.get("type") == "input_file":
                    file_id = part.get("file_id")
                    if isinstance(file_id, str) and file_id not in self.files:
                        return _file_not_found(file_id)
        return None

    def _seal(self) -> str:
        nonce = os.urandom(16)
        return base64.b64encode(nonce + hmac.new(self._key, nonce, hashlib.sha256).digest()[:16]).decode()

    def _verify(self, sealed: object) -> bool:
        if not isinstance(sealed, str):
            return False
        try:
            raw = base64.b64decode(sealed, validate=True)
        except (binascii.Error, ValueError):
            return False
        expected = hmac.new(self._key, raw[:16], hashlib.sha256).digest()[:16]
        return len(raw) == 32 and hmac.compare_digest(raw[16:], expected)

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
        output: list[dict[str, Any]] = []
        if plan.encrypted_reasoning:
            output.append(
                {"id": new_id("rs_"), "type": "reasoning", "summary": [], "encrypted_content": self._seal()}
            )
        output.append(_output_message(new_id("msg_"), text))
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
            "output": output,
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
            "conversation": None if plan.conversation is None else {"id": plan.conversation.payload["id"]},
        }
        if plan.conversation is not None:  # its items are kept with the conversation, whatever `store` says
            plan.conversation.items.extend(plan.input_items + output)
            self._keep_items(plan.input_items + output)
        if plan.store:
            stored = _StoredResponse(payload, plan.input_items, plan.input_tokens + output_tokens)
            _keep(self.responses, response_id, stored)
            self._keep_items(plan.input_items + output)
            if plan.background:
                stored.background_until = now + background_s
                return _pending(payload, "queued")
            if plan.stream:
                stored.payload = _pending(payload, "in_progress")
        return payload

    def _keep_items(self, items: list[dict[str, Any]]) -> None:
        for item in items:
            _keep(self.items, item["id"], item)

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

    # -- /conversations --------------------------------------------------------------------
    def _prepare_conversation(self, body: dict[str, Any]) -> Prepared | Answer:
        items = _conversation_items(body.get("items"))
        if isinstance(items, Answer):
            return items
        metadata = body.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            return Answer(400, invalid("'metadata' must be an object.", param="metadata"))
        missing = self._resolve_input(items)
        if missing is not None:
            return Prepared(missing=missing)

        def run(now: float) -> Answer:
            conversation_id = new_id("conv_")
            payload = {"id": conversation_id, "object": "conversation", "created_at": int(now)}
            payload["metadata"] = metadata or {}
            _keep(self.conversations, conversation_id, _Conversation(payload, items))
            self._keep_items(items)
            return Answer(200, json.dumps(payload).encode())

        return Prepared(run)

    def _prepare_on_conversation(
        self,
        operation: str,
        conversation: _Conversation,
        ids: tuple[str, ...],
        body: dict[str, Any],
        query: dict[str, str],
    ) -> Prepared | Answer:
        conversation_id = conversation.payload["id"]
        if operation == "conversations.retrieve":
            return Prepared(lambda now: Answer(200, json.dumps(conversation.payload).encode()))
        if operation == "conversations.update":
            metadata = body.get("metadata")
            if not isinstance(metadata, dict):
                return Answer(400, invalid("'metadata' is a required object.", param="metadata"))

            def update(now: float) -> Answer:
                conversation.payload = {**conversation.payload, "metadata": metadata}
                return Answer(200, json.dumps(conversation.payload).encode())

            return Prepared(update)
        if operation == "conversations.delete":

            def delete(now: float) -> Answer:
                self.conversations.pop(conversation_id, None)
                deleted = {"id": conversation_id, "object": "conversation.deleted", "deleted": True}
                return Answer(200, json.dumps(deleted).encode())

            return Prepared(delete)
        if operation == "conversations.items.list":
            return Prepared(lambda now: _item_list(conversation.items, query))
        if operation == "conversations.items.create":
            items = _conversation_items(body.get("items"), required=True)
            if isinstance(items, Answer):
                return items
            missing = self._resolve_input(items)
            if missing is not None:
                return Prepared(missing=missing)

            def add(now: float) -> Answer:
                conversation.items.extend(items)
                self._keep_items(items)
                return _item_list(items, {"order": "asc", "limit": "100"})

            return Prepared(add)
        item_id = ids[1]
        position = next((n for n, item in enumerate(conversation.items) if item["id"] == item_id), None)
        if position is None:
            return Prepared(missing=Missing(404, invalid(f"Item with id '{item_id}' not found.")))
        if operation == "conversations.items.retrieve":
            item = conversation.items[position]
            return Prepared(lambda now: Answer(200, json.dumps(item).encode()))

        def remove(now: float) -> Answer:
            conversation.items = [item for item in conversation.items if item["id"] != item_id]
            return Answer(200, json.dumps(conversation.payload).encode())

        return Prepared(remove)

    # -- /files ----------------------------------------------------------------------------
    def _prepare_file(self, form: dict[str, Any]) -> Prepared | Answer:
        purpose = form.get("purpose")
        upload = form.get("file")
        if purpose not in FILE_PURPOSES:
            return Answer(
                400, invalid(f"'purpose' must be one of {', '.join(FILE_PURPOSES)}.", param="purpose")
            )
        if not isinstance(upload, tuple):
            return Answer(400, invalid("'file' is a required property.", param="file"))
        filename, content = upload

        def run(now: float) -> Answer:
            payload = {
                "id": new_id("file-"),
                "object": "file",
                "bytes": len(content),
                "created_at": int(now),
                "expires_at": None,
                "filename": filename or "upload",
                "purpose": purpose,
                "status": "processed",
                "status_details": None,
            }
            _keep(self.files, payload["id"], _File(payload, content))
            return Answer(200, json.dumps(payload).encode())

        return Prepared(run)

    def _list_files(self, query: dict[str, str]) -> Answer:
        purpose = query.get("purpose")
        files = [kept.payload for kept in self.files.values() if purpose in (None, kept.payload["purpose"])]
        return _item_list(files, query, default_limit=10_000, max_limit=10_000)

    def _delete_file(self, file_id: str) -> Answer:
        self.files.pop(file_id, None)
        return Answer(200, json.dumps({"id": file_id, "object": "file", "deleted": True}).encode())

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
    *others, message = payload["output"]
    index = len(others)
    item_id = message["id"]
    text = message["content"][0]["text"]
    pending = _pending(payload, "in_progress")
    where = {"item_id": item_id, "output_index": index, "content_index": 0}
    empty_part = {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": pending},
        {"type": "response.in_progress", "response": pending},
    ]
    for number, item in enumerate(others):
        events.append({"type": "response.output_item.added", "output_index": number, "item": item})
        events.append({"type": "response.output_item.done", "output_index": number, "item": item})
    events += [
        {
            "type": "response.output_item.added",
            "output_index": index,
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
        {"type": "response.output_item.done", "output_index": index, "item": message},
        {"type": "response.completed", "response": payload},
    ]
    for number, event in enumerate(events):
        event["sequence_number"] = number
    return events


def _keep(kind: OrderedDict[str, Any], key: str, value: object) -> None:
    kind[key] = value
    while len(kind) > MAX_STORED:
        kind.popitem(last=False)


def _conversation_items(value: object, *, required: bool = False) -> list[dict[str, Any]] | Answer:
    if value is None and not required:
        return []
    items = _input_items(value) if isinstance(value, list) else None
    if items is None or (required and not items):
        return Answer(400, invalid("'items' must be a list of items.", param="items"))
    if len(items) > MAX_CONVERSATION_ITEMS:
        return Answer(
            400, invalid(f"'items' takes at most {MAX_CONVERSATION_ITEMS} items at once.", param="items")
        )
    return items


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


def _item_list(
    items: list[dict[str, Any]], query: dict[str, str], *, default_limit: int = 20, max_limit: int = 100
) -> Answer:
    """A page of ``items`` (oldest first) as ``limit``, ``order`` (default ``desc``) and ``after`` ask."""
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        return Answer(400, invalid("'order' must be 'asc' or 'desc'.", param="order"))
    limit_text = query.get("limit", str(default_limit))
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= max_limit:
        return Answer(400, invalid(f"'limit' must be an integer from 1 to {max_limit}.", param="limit"))
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
