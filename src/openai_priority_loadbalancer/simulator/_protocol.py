"""A small HTTP/1.1 server protocol on asyncio: keep-alive, pipelining, chunked bodies, no I/O of its own.

One `Connection` per TCP connection. It parses requests out of the bytes it receives and hands
each to a handler. The handler answers at once (returns ``None``) or returns a coroutine that
answers later; the connection then reads nothing more until that coroutine is done, so answers
go out in order.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import functools
import json
import logging
from collections.abc import Callable, Coroutine
from http import HTTPStatus
from typing import Any

__all__ = ["Connection", "Handler", "Request", "parse_multipart"]

logger = logging.getLogger("openai-priority-loadbalancer.simulator")

MAX_HEAD = 64 * 1024
MAX_BODY = 32 * 1024 * 1024

_REASONS = {status.value: status.phrase for status in HTTPStatus}


class Request:
    """One parsed request. ``error`` is set (status, message) when it could not be parsed."""

    __slots__ = ("body", "error", "headers", "keep_alive", "method", "path", "query", "version")

    def __init__(
        self,
        method: str,
        path: str,
        query: str,
        version: str,
        headers: dict[str, str],
        body: bytes = b"",
        error: tuple[int, str] | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.version = version
        self.headers = headers
        self.body = body
        self.error = error
        connection = headers.get("connection", "").lower()
        if error is not None:
            self.keep_alive = False
        elif version == "HTTP/1.1":
            self.keep_alive = "close" not in connection
        else:
            self.keep_alive = "keep-alive" in connection


Handler = Callable[["Connection", Request], "Coroutine[Any, Any, None] | None"]


class Connection(asyncio.Protocol):
    """The server side of one HTTP/1.1 connection."""

    def __init__(self, handler: Handler, registry: set[Connection], is_shutting_down: Callable[[], bool]):
        self._handler = handler
        self._registry = registry
        self._is_shutting_down = is_shutting_down
        self._buffer = bytearray()
        self._head: tuple[Request, int] | None = None  # parsed head waiting for its body
        self._continue_sent = False
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._eof = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self.transport: asyncio.Transport | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._registry.add(self)
        if self._is_shutting_down():
            self.abort()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._task is None:
            self._process()

    def eof_received(self) -> bool:
        # The client sends nothing more: finish the answer in progress, if any, then close.
        self._eof = True
        if self._task is None:
            self._close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._registry.discard(self)
        if self._task is not None:
            self._task.cancel()
        self._wake_writer()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_writer()

    # -- used by handlers ------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """Whether the connection is gone (the peer left or the server closes it)."""
        return self._closed

    def write(self, data: bytes) -> None:
        """Send bytes as they are."""
        if not self._closed and self.transport is not None:
            self.transport.write(data)

    async def drain(self) -> None:
        """Wait until the peer has taken the written bytes; raise `ConnectionError` once it left."""
        if self._closed:
            raise ConnectionResetError("connection lost")
        if self._write_paused:
            self._drain_waiter = asyncio.get_running_loop().create_future()
            await self._drain_waiter
            if self._closed:
                raise ConnectionResetError("connection lost")

    def send(self, request: Request, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        """Send a whole response with a ``content-length``."""
        self.write(_head(request, status, headers, f"content-length: {len(body)}\r\n") + body)

    def start_chunked(self, request: Request, status: int, headers: list[tuple[str, str]]) -> bool:
        """Send the head of a streamed response; return whether the body must be chunked.

        HTTP/1.0 clients get a close-delimited body instead (and the connection closes after it).
        """
        if request.version == "HTTP/1.1":
            self.write(_head(request, status, headers, "transfer-encoding: chunked\r\n"))
            return True
        request.keep_alive = False
        self.write(_head(request, status, headers, ""))
        return False

    def abort(self) -> None:
        """Drop the connection at once."""
        self._closed = True
        if self.transport is not None:
            self.transport.abort()

    # -- internals -------------------------------------------------------------------------
    def _wake_writer(self) -> None:
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _close(self) -> None:
        self._closed = True
        if self.transport is not None:
            self.transport.close()

    def _process(self) -> None:
        while not self._closed:
            request = self._next_request()
            if request is None:
                return
            try:
                pending = self._handler(self, request)
            except Exception:
                logger.exception("simulator handler failed")
                self.write(_error_response(request, 500, "The simulator failed on this request."))
                self._close()
                return
            if pending is not None:
                assert self.transport is not None
                self.transport.pause_reading()
                self._task = asyncio.get_running_loop().create_task(pending)
                self._task.add_done_callback(functools.partial(self._after, request=request))
                return
            if not request.keep_alive:
                self._close()
                return

    def _after(self, task: asyncio.Task[None], *, request: Request) -> None:
        self._task = None
        if self._closed:
            return
        if not task.cancelled() and task.exception() is not None:
            logger.error("simulator handler failed", exc_info=task.exception())
            self.abort()
            return
        if not request.keep_alive:
            self._close()
            return
        assert self.transport is not None
        self.transport.resume_reading()
        self._process()
        if self._eof and self._task is None:
            self._close()

    def _next_request(self) -> Request | None:
        """Take one complete request out of the buffer, or return ``None`` if more is needed."""
        if self._head is None:
            buffer = self._buffer
            while buffer[:2] == b"\r\n":  # stray line breaks between requests are allowed
                del buffer[:2]
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD:
                    return _bad(431, "Request header fields too large.")
                return None
            head = _parse_head(bytes(buffer[:end]))
            del buffer[: end + 4]
            if head.error is not None:
                return head
            self._head = (head, _body_length(head))
            self._continue_sent = False
        request, length = self._head
        if request.error is not None:
            self._head = None
            return request
        if length >= 0:
            if len(self._buffer) < length:
                self._send_continue(request)
                return None
            request.body = bytes(self._buffer[:length])
            del self._buffer[:length]
        else:
            decoded = _decode_chunked(self._buffer)
            if decoded is None:
                self._send_continue(request)
                return None
            if isinstance(decoded, tuple):
                request.body, used = decoded
                del self._buffer[:used]
            else:
                request.error = (400, decoded)
                request.keep_alive = False
        self._head = None
        return request

    def _send_continue(self, request: Request) -> None:
        if not self._continue_sent and request.headers.get("expect", "").lower() == "100-continue":
            self._continue_sent = True
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n")


def _bad(status: int, message: str) -> Request:
    return Request("", "", "", "HTTP/1.1", {}, error=(status, message))


def _parse_head(raw: bytes) -> Request:
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        return _bad(400, "Malformed request line.")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        return _bad(505, "HTTP version not supported.")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        name = name.strip().lower()
        if not sep or not name:
            return _bad(400, "Malformed header line.")
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    path, _, query = target.partition("?")
    return Request(method, path, query, version, headers)


def _body_length(request: Request) -> int:
    """The body length from the headers; -1 for a chunked body; sets ``request.error`` if unusable."""
    encoding = request.headers.get("transfer-encoding")
    if encoding is not None:
        if encoding.lower() != "chunked":
            request.error = (501, "Only the chunked transfer encoding is supported.")
            request.keep_alive = False
        return -1
    length = request.headers.get("content-length", "0").strip()
    if not length.isdigit() or not length.isascii():
        request.error = (400, "Malformed content-length.")
        request.keep_alive = False
        return 0
    if int(length) > MAX_BODY:
        request.error = (413, "Request body too large.")
        request.keep_alive = False
        return 0
    return int(length)


def _decode_chunked(buffer: bytearray) -> tuple[bytes, int] | str | None:
    """Decode the chunked body at the start of ``buffer``.

    Returns:
        (body, bytes used), an error message, or ``None`` if incomplete.
    """
    body = bytearray()
    position = 0
    while True:
        line_end = buffer.find(b"\r\n", position)
        if line_end < 0:
            return None
        size_text = bytes(buffer[position:line_end]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            return "Malformed chunk size."
        position = line_end + 2
        if size == 0:
            break
        if len(body) + size > MAX_BODY:
            return "Request body too large."
        if len(buffer) < position + size + 2:
            return None
        body += buffer[position : position + size]
        position += size + 2
    while True:  # trailer lines up to an empty line
        line_end = buffer.find(b"\r\n", position)
        if line_end < 0:
            return None
        if line_end == position:
            return bytes(body), position + 2
        position = line_end + 2


def _head(request: Request, status: int, headers: list[tuple[str, str]], framing: str) -> bytes:
    parts = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n"]
    parts.extend(f"{name}: {value}\r\n" for name, value in headers)
    parts.append(framing)
    if not request.keep_alive:
        parts.append("connection: close\r\n")
    elif request.version == "HTTP/1.0":
        parts.append("connection: keep-alive\r\n")
    parts.append("\r\n")
    return "".join(parts).encode("latin-1")


def _error_response(request: Request, status: int, message: str) -> bytes:
    request.keep_alive = False
    body = json.dumps({"error": {"code": str(status), "message": message}}).encode()
    framing = f"content-length: {len(body)}\r\n"
    return _head(request, status, [("content-type", "application/json")], framing) + body


def parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]] | None:
    """The fields of a ``multipart/form-data`` body: name -> (filename or ``None``, bytes).

    ``None`` if the body is not a well-formed form (wrong content type, no boundary, no field).
    """
    if not content_type.lower().startswith("multipart/form-data"):
        return None
    head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", "replace")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart() or message.defects:
        return None
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            fields[name] = (part.get_filename(), payload)
    return fields or None
