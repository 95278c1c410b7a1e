"""One simulated Azure OpenAI instance: routes, rate limiting, Azure-like answers, its socket."""

from __future__ import annotations

import asyncio
import base64
import functools
import itertools
import json
import logging
import math
import os
import socket
import struct
import time
import uuid
import zlib
from email.utils import formatdate
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from ._protocol import Connection, Request, parse_multipart
from ._stats import Outcome, RequestRecord, StatsRecorder
from ._stored import Answer, ObjectStore, Prepared, response_events

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Iterable, Iterator

    from ._config import InstanceConfig

__all__ = ["InstanceRuntime", "format_duration"]

logger = logging.getLogger("openai-priority-loadbalancer.simulator")

DEFAULT_MAX_TOKENS = 16
DEFAULT_DIMENSIONS = 8
MAX_DIMENSIONS = 4096

_CHAT = "chat/completions"
_EMBEDDINGS = "embeddings"
_OPERATIONS = {_CHAT: "ChatCompletions_Create", _EMBEDDINGS: "Embeddings_Create"}
_V1_ROUTES = {
    "/openai/v1/chat/completions": _CHAT,
    "/openai/v1/embeddings": _EMBEDDINGS,
    "/v1/chat/completions": _CHAT,
    "/v1/embeddings": _EMBEDDINGS,
}
_DEPLOYMENTS = "/openai/deployments/"
_STORED_PREFIXES = ("/openai/v1/", "/openai/", "/v1/")

# Stored-object routes: path segments ("*" is an object id) -> method -> operation.
_STORED_ROUTES: dict[tuple[str, ...], dict[str, str]] = {
    ("responses",): {"POST": "responses.create"},
    ("responses", "*"): {"GET": "responses.retrieve", "DELETE": "responses.delete"},
    ("responses", "*", "input_items"): {"GET": "responses.input_items"},
    ("responses", "*", "cancel"): {"POST": "responses.cancel"},
    ("conversations",): {"POST": "conversations.create"},
    ("conversations", "*"): {
        "GET": "conversations.retrieve",
        "POST": "conversations.update",
        "DELETE": "conversations.delete",
    },
    ("conversations", "*", "items"): {
        "POST": "conversations.items.create",
        "GET": "conversations.items.list",
    },
    ("conversations", "*", "items", "*"): {
        "GET": "conversations.items.retrieve",
        "DELETE": "conversations.items.delete",
    },
    ("files",): {"POST": "files.create", "GET": "files.list"},
    ("files", "*"): {"GET": "files.retrieve", "DELETE": "files.delete"},
    ("files", "*", "content"): {"GET": "files.content"},
}
# Operations whose body must be a JSON object (others may send an empty body).
_JSON_OPERATIONS = frozenset({"responses.create", "conversations.update", "conversations.items.create"})
_JSON = ("content-type", "application/json")
_DEPLOYMENT_NOT_FOUND = json.dumps(
    {
        "error": {
            "code": "DeploymentNotFound",
            "message": "The API deployment for this resource does not exist. If you created the deployment "
            "within the last 5 minutes, please wait a moment and try again.",
        }
    }
).encode()

_MESSAGES = {
    400: "BadRequest",
    401: "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid "
    "key for an active subscription and use a correct regional API endpoint for your resource.",
    404: "Resource not found",
    405: "Method not allowed",
    500: "The server had an error while processing your request. Sorry about that!",
    503: "The service is temporarily unable to process your request. Please try again later.",
}


def format_duration(seconds: float) -> str:
    """Format a duration like Azure's reset headers: ``250ms``, ``1s``, ``1.5s``, ``6m0s``, ``1h2m3.5s``.

    Rounded up to the millisecond, at least ``1ms``.
    """
    ms = max(1, math.ceil(seconds * 1000 - 1e-6))
    if ms < 1000:
        return f"{ms}ms"
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    text = f"{ms / 1000:g}s"
    if hours or minutes:
        text = f"{minutes}m{text}"
    if hours:
        text = f"{hours}h{text}"
    return text


def _ceil_seconds(seconds: float) -> int:
    return max(1, math.ceil(seconds - 1e-6))


def _error_body(status: int, message: str | None = None, code: str | None = None) -> bytes:
    error = {"code": code or str(status), "message": message or _MESSAGES.get(status, "Error")}
    return json.dumps({"error": error}).encode()


def _invalid(message: str) -> bytes:
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": None}
    return json.dumps({"error": error}).encode()


def _text_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


def _prompt_tokens(messages: list[Any]) -> int:
    total = 0
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            chars = len(content)
        elif isinstance(content, list):
            chars = sum(
                len(part["text"])
                for part in content
                if isinstance(part, dict) and isinstance(part.get("text"), str)
            )
        else:
            chars = 0
        total += math.ceil(chars / 4) + 1
    return total


def _embedding(seed: int, dimensions: int) -> list[float]:
    return [round(math.sin(seed + i), 6) for i in range(dimensions)]


class _Admission:
    """The rate-limit verdict on one request (computed with the stats lock held)."""

    __slots__ = ("limit", "remaining", "reset_at", "throttled_by", "token_budget", "tokens_remaining")

    def __init__(
        self,
        throttled_by: str | None,
        reset_at: float,
        limit: int | None,
        remaining: int,
        token_budget: int | None,
        tokens_remaining: int,
    ) -> None:
        self.throttled_by = throttled_by  # None (admitted), "requests" or "tokens"
        self.reset_at = reset_at
        self.limit = limit
        self.remaining = remaining
        self.token_budget = token_budget
        self.tokens_remaining = tokens_remaining


class InstanceRuntime:
    """The live side of one instance. Everything but `bind` and `recorder` runs on the simulator's loop."""

    def __init__(self, config: InstanceConfig, host: str) -> None:
        self.config = config
        self.host = host
        self.port = 0
        self.recorder = StatsRecorder(config.name)
        self.connections: set[Connection] = set()
        self._sock: socket.socket | None = None  # bound; listening unless the instance refuses
        self._accepting = False
        self._attaching: set[asyncio.Task[None]] = set()
        self._unattached: set[socket.socket] = set()
        self._sequence = itertools.count(1)
        self.store = ObjectStore()

    # -- sockets ---------------------------------------------------------------------------
    # Connections are accepted by a reader callback rather than `loop.create_server`, so that
    # closing never races an accept in progress (which leaks a transport, or trips an
    # assertion in some Python versions), and a refusing port stays bound without listening.

    def bind(self) -> None:
        """Bind the port (from the caller's thread, so errors surface there); listen unless refusing."""
        self._sock = _bind(self.host, self.config.port or self.port)
        self.port = self._sock.getsockname()[1]
        if self.config.failure != "refuse":
            self._sock.listen(socket.SOMAXCONN)

    def release(self) -> None:
        """Close the bound socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def open(self) -> None:
        """Start accepting connections, unless the instance refuses them."""
        if self.config.failure == "refuse" or self._accepting:
            return
        if self._sock is None:
            self.bind()
        assert self._sock is not None
        self._sock.setblocking(False)
        asyncio.get_running_loop().add_reader(self._sock.fileno(), self._accept)
        self._accepting = True

    def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(64):
            if self._sock is None:
                return
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. out of file descriptors: leave the rest in the backlog
                logger.warning("simulator instance %s could not accept a connection", self.config.name)
                return
            self._unattached.add(conn)
            task = loop.create_task(self._attach(conn))
            self._attaching.add(task)
            task.add_done_callback(self._attaching.discard)

    async def _attach(self, conn: socket.socket) -> None:
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: Connection(self.handle, self.connections, lambda: not self._accepting), conn
            )
        except OSError:
            conn.close()
        finally:
            self._unattached.discard(conn)

    async def close(self) -> None:
        """Stop accepting, drop every connection (hung requests included) and release the port."""
        if self._accepting and self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
        self._accepting = False
        self.release()
        attaching = list(self._attaching)
        for task in attaching:
            task.cancel()
        await asyncio.gather(*attaching, return_exceptions=True)
        for conn in list(self._unattached):  # accepted, but the task was cancelled before it ran
            conn.close()
        self._unattached.clear()
        for connection in list(self.connections):
            connection.abort()
        for _ in range(100):  # let the aborted transports report connection_lost
            if not self.connections:
                break
            await asyncio.sleep(0)

    async def apply(self, config: InstanceConfig) -> None:
        """Switch to a new configuration (same name and port)."""
        old, self.config = self.config, config
        if config.window_s != old.window_s:
            with self.recorder.lock:
                self.recorder.window_start = None
                self.recorder.window_index = -1
        if config.failure == "refuse" and old.failure != "refuse":
            await self.close()
            self.bind()
        elif old.failure == "refuse" and config.failure != "refuse":
            assert self._sock is not None
            self._sock.listen(socket.SOMAXCONN)
            await self.open()

    # -- requests --------------------------------------------------------------------------
    def _count(self, arrival: float, outcome: Outcome, *, in_flight: bool = False) -> None:
        recorder = self.recorder
        with recorder.lock:
            recorder.received += 1
            if outcome == "throttled":
                recorder.throttled += 1
            elif outcome == "failed":
                recorder.failed += 1
            elif outcome == "unauthorized":
                recorder.unauthorized += 1
            elif outcome == "rejected":
                recorder.rejected += 1
            elif outcome == "not_found":
                recorder.not_found += 1
            if in_flight:
                recorder.in_flight += 1
            recorder.records.append(RequestRecord(arrival, outcome))

    def _done(self) -> None:
        with self.recorder.lock:
            self.recorder.in_flight -= 1

    def _reject(
        self, connection: Connection, request: Request, arrival: float, status: int, body: bytes
    ) -> None:
        outcome: Outcome = "unauthorized" if status == 401 else "failed" if status >= 500 else "rejected"
        self._count(arrival, outcome)
        headers = [_JSON, ("x-simulator-instance", self.config.name)]
        if status >= 500:
            request_id = str(uuid.uuid4())
            headers += [("x-request-id", request_id), ("apim-request-id", request_id)]
        connection.send(request, status, headers, body)

    def handle(self, connection: Connection, request: Request) -> Coroutine[Any, Any, None] | None:
        """Answer one request now, or return the coroutine that answers it later."""
        arrival = time.monotonic()
        config = self.config
        if request.error is not None:
            status, message = request.error
            self._reject(connection, request, arrival, status, _invalid(message))
            return None
        if config.failure == "hang":
            self._count(arrival, "hung", in_flight=True)
            return self._hang()
        if config.failure in ("500", "503"):
            status = int(config.failure)
            code = "InternalServerError" if status == 500 else "ServiceUnavailable"
            self._reject(connection, request, arrival, status, _error_body(status, code=code))
            return None

        operation, deployment = _route(request.path)
        if operation is None:
            stored = _stored_route(request.path)
            if stored is not None:
                return self._handle_stored(connection, request, arrival, *stored)
            self._reject(connection, request, arrival, 404, _error_body(404))
            return None
        if request.method != "POST":
            self._reject(connection, request, arrival, 405, _error_body(405))
            return None
        if config.api_key is not None and not _authorized(request, config.api_key):
            self._reject(connection, request, arrival, 401, _error_body(401))
            return None
        body = self._json_object(connection, request, arrival)
        if body is None:
            return None
        model = deployment or body.get("model")
        if not isinstance(model, str) or not model:
            self._reject(connection, request, arrival, 400, _invalid("'model' is a required property."))
            return None
        if config.deployments is not None and model not in config.deployments:
            self._reject(connection, request, arrival, 404, _DEPLOYMENT_NOT_FOUND)
            return None
        inputs: list[tuple[int, int]] | None = None
        if operation == _CHAT:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                self._reject(
                    connection, request, arrival, 400, _invalid("'messages' is a required property.")
                )
                return None
            max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
            if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
                max_tokens = DEFAULT_MAX_TOKENS
            prompt_tokens = _prompt_tokens(messages)
            cost = prompt_tokens + max_tokens
        else:
            inputs = _embedding_inputs(body.get("input"))
            if inputs is None:
                self._reject(connection, request, arrival, 400, _invalid("'input' is a required property."))
                return None
            prompt_tokens = cost = sum(tokens for _, tokens in inputs)
            max_tokens = 0

        streaming = operation == _CHAT and body.get("stream") is True
        admission = self._admit(
            config, arrival, cost, deferred=streaming or config.latency_s > 0, deployment=model
        )
        name = config.name
        if admission.throttled_by is not None:
            self._throttle(connection, request, config, admission, arrival, _OPERATIONS[operation])
            return None

        sequence = next(self._sequence)
        headers = _answer_headers(config, admission, arrival)
        if inputs is not None:
            payload = _embeddings_payload(body, model, inputs)
        elif streaming:
            options = body.get("stream_options")
            usage = isinstance(options, dict) and options.get("include_usage") is True
            headers[0] = ("content-type", "text/event-stream; charset=utf-8")
            headers.append(("cache-control", "no-cache"))
            return self._stream(
                connection, request, config, headers, model, sequence, prompt_tokens, max_tokens, usage
            )
        else:
            payload = _completion_payload(name, model, sequence, prompt_tokens, max_tokens)
        if config.latency_s > 0:
            return self._delayed(connection, request, config.latency_s, headers, payload)
        connection.send(request, 200, headers, payload)
        return None

    def _handle_stored(
        self,
        connection: Connection,
        request: Request,
        arrival: float,
        methods: dict[str, str],
        ids: tuple[str, ...],
    ) -> Coroutine[Any, Any, None] | None:
        """A request about stored objects: responses, conversations, files."""
        config = self.config
        operation = methods.get(request.method)
        if operation is None:
            self._reject(connection, request, arrival, 405, _error_body(405))
            return None
        if config.api_key is not None and not _authorized(request, config.api_key):
            self._reject(connection, request, arrival, 401, _error_body(401))
            return None
        body: dict[str, Any] = {}
        if operation == "files.create":
            form = parse_multipart(request.headers.get("content-type", ""), request.body)
            if form is None:
                self._reject(
                    connection, request, arrival, 400, _invalid("The body must be multipart/form-data.")
                )
                return None
            body = {
                name: (filename, content) if filename is not None else content.decode("utf-8", "replace")
                for name, (filename, content) in form.items()
            }
        elif operation in _JSON_OPERATIONS or (request.method == "POST" and request.body.strip()):
            parsed = self._json_object(connection, request, arrival)
            if parsed is None:
                return None
            body = parsed
        if operation == "responses.create" and (not isinstance(body.get("model"), str) or not body["model"]):
            self._reject(connection, request, arrival, 400, _invalid("'model' is a required property."))
            return None
        deployment = body["model"] if operation == "responses.create" else ""
        if deployment and config.deployments is not None and deployment not in config.deployments:
            self._reject(connection, request, arrival, 404, _DEPLOYMENT_NOT_FOUND)
            return None
        prepared = self.store.prepare(operation, ids, body, dict(parse_qsl(request.query)))
        if not isinstance(prepared, Prepared):
            self._reject(connection, request, arrival, prepared.status, prepared.body)
            return None
        plan = prepared.plan
        missing = prepared.missing
        streaming = plan is not None and plan.stream and not plan.background
        admission = self._admit(
            config,
            arrival,
            prepared.cost,
            deferred=missing is None and (streaming or config.latency_s > 0),
            outcome="served" if missing is None else "not_found",
            deployment=deployment,
        )
        if admission.throttled_by is not None:
            self._throttle(connection, request, config, admission, arrival, _operation_name(operation))
            return None
        headers = _answer_headers(config, admission, arrival)
        if missing is not None:
            connection.send(request, missing.status, headers, missing.body)
            return None
        now = time.time()
        if plan is not None:
            if streaming:
                deltas = _stream_texts(config.name, config.stream_chunks)
                payload = self.store.create_response(plan, now, text="".join(deltas))
                headers[0] = ("content-type", "text/event-stream; charset=utf-8")
                headers.append(("cache-control", "no-cache"))
                return self._stream_response(connection, request, config, headers, payload, deltas)
            background_s = config.latency_s + (config.stream_chunks - 1) * config.stream_chunk_delay_s
            payload = self.store.create_response(
                plan, now, text=f"Simulated response from {config.name}.", background_s=background_s
            )
            answer = Answer(200, json.dumps(payload).encode())
        else:
            assert prepared.run is not None
            answer = prepared.run(now)
        if operation == "files.content":
            headers[0] = ("content-type", "application/octet-stream")
        if config.latency_s > 0:
            return self._delayed(connection, request, config.latency_s, headers, answer.body, answer.status)
        connection.send(request, answer.status, headers, answer.body)
        return None

    def _json_object(self, connection: Connection, request: Request, arrival: float) -> dict[str, Any] | None:
        """The request's JSON object body; ``None`` once a 400 has been sent for anything else."""
        try:
            body = json.loads(request.body)
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            self._reject(
                connection, request, arrival, 400, _invalid("The request body must be a JSON object.")
            )
            return None
        return body

    def _admit(
        self,
        config: InstanceConfig,
        now: float,
        cost: int,
        *,
        deferred: bool,
        outcome: Outcome = "served",
        deployment: str = "",
    ) -> _Admission:
        recorder = self.recorder
        limits = config.deployments.get(deployment) if config.deployments is not None else None
        if limits is None:
            limit = config.requests_per_window
            budget = config.tokens_per_window
        else:
            limit = limits.requests_per_window
            budget = limits.tokens_per_window(config.window_s)
        with recorder.lock:
            recorder.received += 1
            if recorder.window_start is None:
                recorder.window_start = now
            index = int((now - recorder.window_start) // config.window_s)
            if index != recorder.window_index:
                recorder.window_index = index
                recorder.window_requests = 0
                recorder.window_tokens = 0
                recorder.deployment_windows.clear()
                missing = index + 1 - len(recorder.served_per_window)
                if missing > 0:
                    recorder.served_per_window.extend([0] * missing)
            reset_at = recorder.window_start + (index + 1) * config.window_s
            # [requests, tokens] used in this window: the instance's, or with deployments the deployment's
            used = (
                [recorder.window_requests, recorder.window_tokens]
                if limits is None
                else recorder.deployment_windows.setdefault(deployment, [0, 0])
            )
            throttled_by = None
            if limit is not None and used[0] >= limit:
                throttled_by = "requests"
            elif budget is not None and used[1] + cost > budget:
                throttled_by = "tokens"
            if throttled_by is None:
                used[0] += 1
                used[1] += cost
                if limits is None:
                    recorder.window_requests, recorder.window_tokens = used
                recorder.tokens += cost
                if outcome == "served":
                    recorder.served += 1
                    recorder.served_per_window[index] += 1
                else:
                    recorder.not_found += 1
                recorder.records.append(RequestRecord(now, outcome))
                if deferred:
                    recorder.in_flight += 1
            else:
                recorder.throttled += 1
                recorder.records.append(RequestRecord(now, "throttled"))
            return _Admission(
                throttled_by,
                reset_at,
                limit,
                0 if limit is None else limit - used[0],
                budget,
                0 if budget is None else budget - used[1],
            )

    def _throttle(
        self,
        connection: Connection,
        request: Request,
        config: InstanceConfig,
        admission: _Admission,
        now: float,
        operation_name: str,
    ) -> None:
        wait = admission.reset_at - now
        seconds = _ceil_seconds(wait)
        request_id = str(uuid.uuid4())
        headers = [_JSON, ("x-simulator-instance", config.name), ("x-request-id", request_id)]
        headers.append(("apim-request-id", request_id))
        style = config.header_style
        if style in ("retry-after", "azure"):
            headers.append(("retry-after", str(seconds)))
        elif style == "retry-after-float":
            headers.append(("retry-after", f"{math.ceil(wait * 1000 - 1e-6) / 1000:.3f}"))
        elif style == "http-date":
            headers.append(("retry-after", formatdate(math.ceil(time.time() + wait), usegmt=True)))
        elif style == "retry-after-ms":
            headers.append(("retry-after-ms", str(max(1, math.ceil(wait * 1000 - 1e-6)))))
            headers.append(("retry-after", str(seconds)))
        elif style == "retry-after-0":
            headers.append(("retry-after", "0"))
        else:
            headers.append((f"x-ratelimit-reset-{admission.throttled_by}", format_duration(wait)))
        if config.ratelimit_headers:
            _add_budget_headers(headers, admission, now, reset=False, azure=style == "azure")
        version = request.query.partition("api-version=")[2].partition("&")[0] or "v1"
        kind = "call" if admission.throttled_by == "requests" else "token"
        unit = "second" if seconds == 1 else "seconds"
        message = (
            f"Requests to the {operation_name} Operation under Azure OpenAI API version {version} "
            f"have exceeded {kind} rate limit of your current OpenAI S0 pricing tier. Please retry after "
            f"{seconds} {unit}. Please go here: https://aka.ms/oai/quotaincrease "
            "if you would like to further increase the default rate limit."
        )
        connection.send(request, 429, headers, _error_body(429, message))

    async def _hang(self) -> None:
        try:
            await asyncio.get_running_loop().create_future()
        finally:
            self._done()

    async def _delayed(
        self,
        connection: Connection,
        request: Request,
        delay: float,
        headers: list[tuple[str, str]],
        payload: bytes,
        status: int = 200,
    ) -> None:
        try:
            await asyncio.sleep(delay)
            connection.send(request, status, headers, payload)
        finally:
            self._done()

    async def _stream(
        self,
        connection: Connection,
        request: Request,
        config: InstanceConfig,
        headers: list[tuple[str, str]],
        model: str,
        sequence: int,
        prompt_tokens: int,
        max_tokens: int,
        include_usage: bool,
    ) -> None:
        chunks = _chat_chunks(config, model, sequence, prompt_tokens, max_tokens, include_usage)
        try:
            await self._write_events(connection, request, config, headers, chunks)
        finally:
            self._done()

    async def _stream_response(
        self,
        connection: Connection,
        request: Request,
        config: InstanceConfig,
        headers: list[tuple[str, str]],
        payload: dict[str, Any],
        deltas: list[str],
    ) -> None:
        """Stream a response's events: all up to the first delta at once, then one delta per chunk."""
        events = [
            b"event: %s\ndata: %s\n\n" % (event["type"].encode(), json.dumps(event).encode())
            for event in response_events(payload, deltas)
        ]
        first_delta = 4  # created, in_progress, output_item.added, content_part.added
        groups = [
            events[: first_delta + 1],
            *([event] for event in events[first_delta + 1 : first_delta + len(deltas)]),
        ]
        groups[-1] = groups[-1] + events[first_delta + len(deltas) :]
        finish = functools.partial(self.store.finish_response, payload["id"], payload)
        try:
            # Kept complete before the caller can read response.completed and ask for it.
            await self._write_events(connection, request, config, headers, groups, before_last=finish)
        finally:
            finish()  # a caller that left: it completes anyway
            self._done()

    async def _write_events(
        self,
        connection: Connection,
        request: Request,
        config: InstanceConfig,
        headers: list[tuple[str, str]],
        groups: Iterable[list[bytes]],
        before_last: Callable[[], None] | None = None,
    ) -> None:
        """Send each group of SSE messages as one chunk, ``stream_chunk_delay_s`` apart.

        ``groups`` is read after the opening delays; ``before_last`` runs just before the last chunk.
        """
        delay = config.stream_chunk_delay_s
        try:
            if config.latency_s > 0:
                await asyncio.sleep(config.latency_s)
            chunked = connection.start_chunked(request, 200, headers)
            frame = _chunk if chunked else _plain
            if config.first_chunk_delay_s > 0:
                await connection.drain()
                await asyncio.sleep(config.first_chunk_delay_s)
            groups = list(groups)
            for index, group in enumerate(groups):
                if index and delay > 0:
                    await asyncio.sleep(delay)
                data = b"".join(frame(message) for message in group)
                if index == len(groups) - 1:
                    if before_last is not None:
                        before_last()
                    if chunked:
                        data += b"0\r\n\r\n"
                connection.write(data)
                await connection.drain()
        except ConnectionError:
            request.keep_alive = False


def _chat_chunks(
    config: InstanceConfig,
    model: str,
    sequence: int,
    prompt_tokens: int,
    max_tokens: int,
    include_usage: bool,
) -> Iterator[list[bytes]]:
    """The SSE messages of each chunk of a streamed chat completion (the last one ends with [DONE])."""
    count = config.stream_chunks
    completion_id = f"chatcmpl-{config.name}-{sequence}"
    created = int(time.time())
    text_length = 0
    for index, text in enumerate(_stream_texts(config.name, count)):
        text_length += len(text)
        delta: dict[str, str] = {"role": "assistant", "content": text} if index == 0 else {"content": text}
        last = index == count - 1
        chunk = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_simulator",
            "choices": [
                {
                    "index": 0,
                    "delta": delta,
                    "logprobs": None,
                    "finish_reason": "stop" if last else None,
                }
            ],
        }
        messages = [b"data: " + json.dumps(chunk).encode() + b"\n\n"]
        if last:
            if include_usage:
                chunk["choices"] = []
                chunk["usage"] = _usage(prompt_tokens, min(max_tokens, max(1, math.ceil(text_length / 4))))
                messages.append(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            messages.append(b"data: [DONE]\n\n")
        yield messages


def _stream_texts(name: str, count: int) -> list[str]:
    """The text of each chunk of a streamed answer."""
    return [f"Simulated response from {name}."] + [
        f" Chunk {index + 1} of {count}." for index in range(1, count)
    ]


def _answer_headers(config: InstanceConfig, admission: _Admission, now: float) -> list[tuple[str, str]]:
    """The headers of an admitted request's answer (content type first)."""
    request_id = str(uuid.uuid4())
    headers = [_JSON, ("x-simulator-instance", config.name), ("x-request-id", request_id)]
    headers.append(("apim-request-id", request_id))
    if config.ratelimit_headers:
        _add_budget_headers(headers, admission, now, reset=True, azure=config.header_style == "azure")
    return headers


def _stored_route(path: str) -> tuple[dict[str, str], tuple[str, ...]] | None:
    """The methods of a stored-object path and the ids it names; ``None`` if it is none."""
    for prefix in _STORED_PREFIXES:
        if path.startswith(prefix):
            segments = path[len(prefix) :].split("/")
            break
    else:
        return None
    ids = tuple(segments[1::2])
    if not all(ids):
        return None
    shape = tuple("*" if index % 2 else segment for index, segment in enumerate(segments))
    methods = _STORED_ROUTES.get(shape)
    if methods is None:
        return None
    return methods, ids


def _operation_name(operation: str) -> str:
    """The name Azure gives an operation in a 429's message, such as ``Responses_Create``."""
    kind, _, action = operation.rpartition(".")
    noun = "".join(part.capitalize() for part in kind.split("."))
    verb = {"retrieve": "Get", "list": "List", "input_items": "ListInputItems"}.get(
        action, action.capitalize()
    )
    return f"{noun}_{verb}"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _plain(data: bytes) -> bytes:
    return data


def _route(path: str) -> tuple[str | None, str | None]:
    """The operation and deployment a path names; (None, None) if none."""
    if path.startswith(_DEPLOYMENTS):
        deployment, _, operation = path[len(_DEPLOYMENTS) :].partition("/")
        if deployment and operation in (_CHAT, _EMBEDDINGS):
            return operation, deployment
        return None, None
    return _V1_ROUTES.get(path), None


def _authorized(request: Request, key: str) -> bool:
    headers = request.headers
    return headers.get("api-key") == key or headers.get("authorization") == f"Bearer {key}"


def _add_budget_headers(
    headers: list[tuple[str, str]], admission: _Admission, now: float, *, reset: bool, azure: bool = False
) -> None:
    """The budget headers of an answer; ``azure``: only the remaining counts, as Azure OpenAI sends."""
    reset = reset and not azure
    reset_in = format_duration(admission.reset_at - now) if reset else ""
    if admission.limit is not None:
        if not azure:
            headers.append(("x-ratelimit-limit-requests", str(admission.limit)))
        headers.append(("x-ratelimit-remaining-requests", str(admission.remaining)))
        if reset:
            headers.append(("x-ratelimit-reset-requests", reset_in))
    if admission.token_budget is not None:
        if not azure:
            headers.append(("x-ratelimit-limit-tokens", str(admission.token_budget)))
        headers.append(("x-ratelimit-remaining-tokens", str(admission.tokens_remaining)))
        if reset:
            headers.append(("x-ratelimit-reset-tokens", reset_in))


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _completion_payload(name: str, model: str, sequence: int, prompt_tokens: int, max_tokens: int) -> bytes:
    content = f"Simulated response from {name}."
    message = {"role": "assistant", "content": content}
    return json.dumps(
        {
            "id": f"chatcmpl-{name}-{sequence}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_simulator",
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
            "usage": _usage(prompt_tokens, min(max_tokens, _text_tokens(content))),
        }
    ).encode()


def _embedding_inputs(value: object) -> list[tuple[int, int]] | None:
    """(seed, tokens) per input: a string, a list of strings, a token list or a list of token lists."""
    if isinstance(value, str):
        return [(zlib.crc32(value.encode()), _text_tokens(value))]
    if not isinstance(value, list) or not value:
        return None
    if all(isinstance(item, int) for item in value):
        return [(zlib.crc32(str(value).encode()), len(value))]
    inputs = []
    for item in value:
        if isinstance(item, str):
            inputs.append((zlib.crc32(item.encode()), _text_tokens(item)))
        elif isinstance(item, list) and item and all(isinstance(token, int) for token in item):
            inputs.append((zlib.crc32(str(item).encode()), len(item)))
        else:
            return None
    return inputs


def _embeddings_payload(body: dict[str, Any], model: str, inputs: list[tuple[int, int]]) -> bytes:
    dimensions = body.get("dimensions")
    if (
        not isinstance(dimensions, int)
        or isinstance(dimensions, bool)
        or not 1 <= dimensions <= MAX_DIMENSIONS
    ):
        dimensions = DEFAULT_DIMENSIONS
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for index, (seed, _) in enumerate(inputs):
        vector = _embedding(seed, dimensions)
        embedding: list[float] | str = (
            base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode() if as_base64 else vector
        )
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = sum(tokens for _, tokens in inputs)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return json.dumps({"object": "list", "data": data, "model": model, "usage": usage}).encode()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # asyncio then sets TCP_NODELAY
    try:
        if os.name == "posix":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock
