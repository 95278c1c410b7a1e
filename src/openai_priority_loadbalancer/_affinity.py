"""Stored-object affinity: a request that names a stored object goes to the backend that holds it.

Azure keeps responses, conversations, files, uploads, batches, vector stores, containers, fine-tuning
jobs, assistants and threads on the resource that made them, and only that resource can read its
encrypted reasoning items. A follow-up sent anywhere else fails (404, or 400
``previous_response_not_found``). This module gives the flow (:meth:`BaseLoadBalancer._flow`) what it
needs to send such a follow-up to the right backend, through a narrow interface:

- :meth:`Affinity.examine` reads a request: ``None`` for one that names no stored object and creates
  none (the common case: a path test and, for a few endpoints, a byte search of the body; no JSON
  parse), else a :class:`Pin` listing the objects it names and whether its answer creates one.
- The :class:`Pin` says which backends the request may go to (its owner, or while the owner is being
  discovered, those not yet asked), judges each answer (``"not here"`` moves on to the next backend),
  and, on success, remembers the owner of every object named and wraps the response's body so that
  the ids of the objects it creates are learned as the caller reads them.

Owners are kept in a bounded in-process map (:class:`OwnerMap`), and in the state store when it can
keep them (:class:`~._store.OwnerStore`), so that every worker knows them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import threading
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

from ._events import OwnerDiscoveredEvent
from ._store import OwnerStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator, Sequence

    from ._backend import Backend
    from ._events import Event
    from ._http import HttpLib, Request, Response
    from ._state import BackendState
    from ._store import StateStore

__all__ = ["DEFAULT_MAX_OBJECTS", "DEFAULT_OWNER_TTL_S", "Affinity", "OwnerMap", "Pin", "Pinned"]

logger = logging.getLogger("openai-priority-loadbalancer")

#: How many objects' owners a balancer remembers by default: at about 75 bytes each, some 5 MB
#: (``benchmarks/run.py`` measures it). Each response adds one object and one per output item.
DEFAULT_MAX_OBJECTS: Final = 65_536
#: How long the state store keeps an owner: as long as Azure keeps a stored response.
DEFAULT_OWNER_TTL_S: Final = 30 * 86_400.0

# The collections whose members are stored objects, after /openai/ or /openai/v1/, and the object's id
# (the next path segment) if there is one. One anchored match: a path of another kind fails at once.
_PATH: Final = re.compile(
    r"(?:v1/)?(responses|conversations|files|uploads|batches|vector_stores|containers|assistants|threads"
    r"|fine_tuning/jobs|chat/completions)(?:/([^/]+))?(?=/|$)"
)
# Path segments in an object's place that name an operation, not an object.
_NOT_IDS: Final = frozenset({"input_tokens", "compact", "runs"})
_MAX_ID_LEN: Final = 256
_MAX_NAMES: Final = 64
# Body fields holding one stored object's id, and those holding a list of them (anywhere in the body).
_ID_FIELDS: Final = frozenset(
    {"file_id", "input_file_id", "assistant_id", "thread_id", "training_file", "validation_file"}
)
_ID_LIST_FIELDS: Final = frozenset({"file_ids", "vector_store_ids"})
# The most nodes of a body's JSON looked at for those fields.
_MAX_NODES: Final = 20_000
# How much of an answer's body is scanned for the ids of the objects it creates, at most.
SCAN_LIMIT: Final = 65_536
# Bytes of a chunk kept to find an id cut in two by the next chunk.
_CARRY: Final = _MAX_ID_LEN + 16
_ID_IN_BODY: Final = re.compile(rb'"id"\s*:\s*"([^"\\\s]{1,256})"')
# Error codes of a 400 that says the object named is not on this backend.
_NOT_HERE_CODES: Final = frozenset({"not_found", "invalid_encrypted_content", "object_not_found"})

HowKnown = Literal["known", "shared", "discovered"]


@dataclass(frozen=True, slots=True)
class Pinned:
    """Why a request went to the one backend it went to: it names a stored object (see ``Routing``)."""

    object_id: str
    """The stored object whose backend the request was sent to (an encrypted item: ``enc:<digest>``)."""
    named_by: str
    """Where the request names it: ``"path"`` or the body field (``"previous_response_id"``,
    ``"conversation"``, ``"input"``, ``"file_id"``, ...)."""
    owner: HowKnown
    """How its backend was known: remembered here (``"known"``), read from the state store
    (``"shared"``), or found by asking the backends in priority order (``"discovered"``)."""


class OwnerMap:
    """A bounded map of object id -> backend index that keeps the recently used ones (about LRU).

    Two generations of at most ``max_objects / 2`` entries each: a new entry goes into the young one,
    a hit in the old one moves the entry to the young one, and when the young one is full it becomes
    the old one (the old one is dropped). So an object used at least once per half-map of new objects
    stays, and the map never holds more than ``max_objects``. Keys are the ids' hashes (an int, not the
    string), which keeps an entry at about 75 bytes; two ids share a hash about once in 2**64.
    """

    __slots__ = ("_half", "_lock", "_old", "_young")

    def __init__(self, max_objects: int) -> None:
        self._half = max(1, max_objects // 2)
        self._young: dict[int, int] = {}
        self._old: dict[int, int] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._young) + len(self._old)

    def get(self, object_id: str) -> int | None:
        key = hash(object_id)
        owner = self._young.get(key)
        if owner is None:
            owner = self._old.get(key)
            if owner is not None:
                self._put(key, owner)
        return owner

    def put(self, object_id: str, owner: int) -> None:
        self._put(hash(object_id), owner)

    def _put(self, key: int, owner: int) -> None:
        with self._lock:
            young = self._young
            if key not in young and len(young) >= self._half:
                self._old, self._young = young, {key: owner}
            else:
                young[key] = owner


# ---------------------------------------------------------------------- recognising


def named_objects(method: str, path: str, content: bytes) -> tuple[list[tuple[str, str]], bool] | None:
    """The stored objects a request names, as ``(named_by, id)`` pairs (most specific first), and
    whether its answer creates objects; None when it names none and creates none.

    ``path`` is the URL's path (no query). Never raises: a body that is not JSON, or JSON of an
    unexpected shape, names nothing.
    """
    start = path.find("/openai/")
    if start < 0:
        return None
    match = _PATH.match(path, start + 8)
    if match is None:
        return None
    head, segment = match.groups()
    names: list[tuple[str, str]] = []
    if segment and segment not in _NOT_IDS and len(segment) <= _MAX_ID_LEN:
        names.append(("path", segment))
    elif head == "chat/completions":
        return None
    post = method == "POST"
    if post and content[:1] == b"{" and _may_name(head, not names, content):
        _body_names(content, head == "responses", names)
    creates = post and head != "chat/completions"
    if not names and not creates:
        return None
    return names, creates


def _may_name(head: str, collection: bool, content: bytes) -> bool:
    """Whether the body may name a stored object: a byte search for the fields' names, no parse."""
    if head == "chat/completions":
        return False  # a stored chat completion is named by its path only
    if head == "responses" and collection:
        return (
            b'id"' in content
            or b'ids"' in content
            or b'"conversation"' in content
            or b"encrypted_content" in content
        )
    return b"_id" in content or b'_file"' in content


def _body_names(content: bytes, responses: bool, names: list[tuple[str, str]]) -> None:
    try:
        body = json.loads(content)
    except (ValueError, RecursionError):
        return
    if not isinstance(body, dict):
        return
    _add(names, "previous_response_id", body.get("previous_response_id"))
    conversation = body.get("conversation")
    if isinstance(conversation, dict):
        conversation = conversation.get("id")
    _add(names, "conversation", conversation)
    items = body.get("input")
    if responses and isinstance(items, list):
        for item in items:
            if not isinstance(item, dict):
                continue
            item_id = item.get("id")
            if isinstance(item_id, str) and item_id:
                _add(names, "input", item_id)
            else:
                encrypted = item.get("encrypted_content")
                if isinstance(encrypted, str) and encrypted:
                    _add(names, "input", encrypted_key(encrypted))
    stack: list[Any] = [body]
    nodes = 0
    while stack and nodes < _MAX_NODES:
        node = stack.pop()
        nodes += 1
        if isinstance(node, dict):
            for key, value in node.items():
                if key in _ID_FIELDS:
                    _add(names, key, value)
                elif key in _ID_LIST_FIELDS:
                    if isinstance(value, list):
                        for one in value:
                            _add(names, key, one)
                elif isinstance(value, dict | list):
                    stack.append(value)
        elif isinstance(node, list):
            stack.extend(v for v in reversed(node) if isinstance(v, dict | list))


def _add(names: list[tuple[str, str]], field: str, value: object) -> None:
    if isinstance(value, str) and 0 < len(value) <= _MAX_ID_LEN and len(names) < _MAX_NAMES:
        names.append((field, value))


def encrypted_key(encrypted_content: str) -> str:
    """The name under which the owner of an encrypted item (which may carry no id) is remembered."""
    digest = hashlib.blake2b(encrypted_content.encode("utf-8", "replace"), digest_size=12).hexdigest()
    return "enc:" + digest


def is_not_here(response: Response) -> bool:
    """Whether an answer says the object named is not on this backend: a 404, or a 400 whose error
    code says so (its body read already)."""
    status = response.status_code
    if status == 404:
        return True
    if status != 400:
        return False
    try:
        error = json.loads(response.content).get("error")
        code = error.get("code") if isinstance(error, dict) else None
    except Exception:  # not read, not JSON, not an object: not an answer about the object
        return False
    return isinstance(code, str) and (code in _NOT_HERE_CODES or code.endswith("_not_found"))


# ---------------------------------------------------------------------- the flow's interface


class Pin:
    """What one request names, and where it may go. Made by :meth:`Affinity.examine`."""

    __slots__ = ("_affinity", "by", "candidates", "creates", "how", "names", "owner")

    def __init__(self, affinity: Affinity, names: list[tuple[str, str]], creates: bool) -> None:
        self._affinity = affinity
        self.names = names
        self.creates = creates
        #: The backend holding the objects named, None while unknown (or when none is named).
        self.owner: int | None = None
        self.how: HowKnown = "known"
        #: Which of ``names`` decided the owner.
        self.by = 0
        #: Where the request may go: the owner, or, while discovering, the backends not yet asked
        #: (in priority order); every backend when it names nothing.
        self.candidates: list[int] = []

    @property
    def ids(self) -> list[str]:
        return [object_id for _, object_id in self.names]

    @property
    def bound(self) -> bool:
        """Whether the request may go to its candidates only (it names an object)."""
        return bool(self.names)

    @property
    def why(self) -> Pinned | None:
        """What ``Routing.pinned`` says: the object that decided the backend, once it is known."""
        if self.owner is None or not self.names:
            return None
        named_by, object_id = self.names[self.by]
        return Pinned(object_id, named_by, self.how)

    @property
    def owner_known(self) -> bool:
        return self.owner is not None and self.how != "discovered"

    def excluded(self, count: int) -> set[int]:
        """The backends the request may not go to now (of ``count``)."""
        if not self.names:
            return set()
        allowed = set(self.candidates)
        return {i for i in range(count) if i not in allowed}

    def adopt(self, shared: Sequence[str | None] | None) -> None:
        """Take the owners the state store returned for :attr:`ids` (None: the store failed)."""
        found = self._affinity.owner_from_store(shared)
        if found is not None:
            self._set_owner(*found, "shared")

    def _set_owner(self, owner: int, by: int, how: HowKnown) -> None:
        self.owner, self.by, self.how, self.candidates = owner, by, how, [owner]

    def must_read(self, response: Response) -> bool:
        """Whether the flow must read ``response``'s body before :meth:`judge` can tell what it says."""
        return self.how == "discovered" and self.owner is None and response.status_code == 400

    def judge(self, state: BackendState, response: Response, keep: bool) -> bool:
        """Whether ``response`` (from ``state``'s backend; ``keep`` as the flow judged it) goes to the
        caller. While discovering, an answer that says "not here" moves on to the next backend unless
        this one was the last; the owner's failure goes to the caller."""
        if not self.names:
            return keep
        self._affinity.count(state)
        if self.owner_known:
            return keep or response.status_code != 429  # the owner's failure is the caller's answer
        if keep and is_not_here(response):
            self.candidates.remove(state.index)
            return not self.candidates  # the last "not here" goes back unchanged
        return keep

    def lookup(self) -> tuple[str, tuple[Any, ...]] | None:
        """The state-store call that finds the owner of the objects named, or None if none is needed."""
        return self._affinity.lookup(self)

    def among(self, states: Sequence[BackendState]) -> list[BackendState] | None:
        """Of ``states`` (one per backend), those of the backends the request may wait for (None: any)."""
        return [states[i] for i in self.candidates] if self.names else None

    def served(
        self, state: BackendState, response: Response, lib: HttpLib
    ) -> tuple[str, tuple[Any, ...]] | None:
        """Learn from a response that goes to the caller; returns the state-store call sharing it, if any."""
        return self._affinity.served(self, state, response, lib)

    def keep_error(self) -> bool:
        """Whether a connection error of the backend goes to the caller: it does when it is the owner."""
        return bool(self.names) and self.owner_known


class Affinity:
    """The owners of stored objects, for one balancer (see the module documentation).

    Args:
        backends: the balancer's backends, in configuration order.
        store: the balancer's state store; owners are shared through it if it is an ``OwnerStore``.
        shared_keys: each backend's name in the store (empty without a store).
        emit: the balancer's event callback, or None.
        max_objects: how many objects' owners are remembered in this process.
        ttl_s: how long the store keeps an owner.
    """

    def __init__(
        self,
        backends: Sequence[Backend],
        store: StateStore | None,
        shared_keys: Sequence[str],
        emit: Callable[[Event], None] | None,
        wall_clock: Callable[[], float],
        *,
        max_objects: int,
        ttl_s: float,
    ) -> None:
        self.map = OwnerMap(max_objects)
        self.store: OwnerStore | None = store if isinstance(store, OwnerStore) else None
        self._keys = list(shared_keys)
        self._index_of = {key: i for i, key in enumerate(shared_keys)}
        self._ids = [b.id for b in backends]
        self._order = sorted(range(len(backends)), key=lambda i: backends[i].priority)
        self._emit = emit
        self._wall_clock = wall_clock
        self.ttl_s = ttl_s
        self._lock = threading.Lock()

    @classmethod
    def build(
        cls,
        enabled: bool,
        backends: Sequence[Backend],
        store: StateStore | None,
        shared_keys: Sequence[str],
        emit: Callable[[Event], None] | None,
        wall_clock: Callable[[], float],
        max_objects: object,
        ttl_s: object,
    ) -> Affinity | None:
        """A balancer's affinity, or None when it is off (``affinity=False``); options validated."""
        objects, seconds = check_options(max_objects, ttl_s)
        if not enabled:
            return None
        return cls(backends, store, shared_keys, emit, wall_clock, max_objects=objects, ttl_s=seconds)

    # -- before choosing

    def examine(self, request: Request) -> Pin | None:
        """What ``request`` names (None: nothing, and its answer creates nothing)."""
        found = named_objects(request.method, request.url.path, request.content)
        if found is None:
            return None
        pin = Pin(self, *found)
        if pin.names:
            for by, (_, object_id) in enumerate(pin.names):
                owner = self.map.get(object_id)
                if owner is not None:
                    pin._set_owner(owner, by, "known")
                    break
            else:
                pin.how = "discovered"
                pin.candidates = list(self._order)
        return pin

    def lookup(self, pin: Pin) -> tuple[str, tuple[Any, ...]] | None:
        """The state-store call that finds the owner of ``pin``'s objects, or None if none is needed."""
        if self.store is None or not pin.names or pin.owner is not None:
            return None
        return ("owners", (pin.ids,))

    def owner_from_store(self, shared: Sequence[str | None] | None) -> tuple[int, int] | None:
        """The first owner the store knows (a backend of this balancer), and which name it is of."""
        if not shared:
            return None
        for by, key in enumerate(shared):
            index = self._index_of.get(key) if isinstance(key, str) else None
            if index is not None:
                return index, by
        return None

    # -- after an answer

    def count(self, state: BackendState) -> None:
        with self._lock:
            state.pinned += 1

    def served(
        self, pin: Pin, state: BackendState, response: Response, lib: HttpLib
    ) -> tuple[str, tuple[Any, ...]] | None:
        """Remember what a response going to the caller teaches; returns the state-store call that
        shares it, if any."""
        index = state.index
        share = None
        if pin.names and response.status_code < 400:
            for _, one in pin.names:
                self.map.put(one, index)
            if pin.owner is None:  # discovered just now
                pin.owner = index
                object_id = pin.names[0][1]
                logger.info("owner discovered backend=%s object=%s", self._ids[index], object_id)
                if self._emit is not None:
                    self._emit(OwnerDiscoveredEvent(self._wall_clock(), self._ids[index], object_id))
                if self.store is not None:
                    share = ("set_owners", (pin.ids, self._keys[index], self.ttl_s))
        if pin.creates and response.status_code < 300:
            found = _learn_as_read(self, lib, response, index)
            if found and self.store is not None:
                ids = [*share[1][0], *found] if share is not None else found
                share = ("set_owners", (ids, self._keys[index], self.ttl_s))
        return share

    def learned(self, ids: Sequence[str], index: int) -> None:
        for one in ids:
            self.map.put(one, index)

    def share_args(self, ids: Sequence[str], index: int) -> tuple[Sequence[str], str, float] | None:
        if self.store is None:
            return None
        return (ids, self._keys[index], self.ttl_s)


# ---------------------------------------------------------------------- learning as the caller reads


class _Scanner:
    """Finds the ids of the objects an answer creates in its first ``SCAN_LIMIT`` bytes, chunk by
    chunk: a search of each chunk (and the tail of the one before), nothing buffered."""

    __slots__ = ("_decoder", "_seen", "_tail", "done", "found", "scanned")

    def __init__(self, encoding: str) -> None:
        self._tail = b""
        self._seen: set[bytes] = set()
        self.found: list[str] = []
        self.scanned = 0
        self.done = False
        self._decoder: Any = None
        if encoding in ("gzip", "x-gzip"):
            self._decoder = zlib.decompressobj(zlib.MAX_WBITS | 16)
        elif encoding == "deflate":
            self._decoder = zlib.decompressobj()
        elif encoding not in ("", "identity"):
            self.done = True  # an encoding not read here (br, zstd): discovery finds these owners

    def feed(self, chunk: bytes) -> None:
        if self._decoder is not None:
            try:
                chunk = self._decoder.decompress(chunk, SCAN_LIMIT - self.scanned)
            except zlib.error:
                self.done = True
                return
        self.scanned += len(chunk)
        text = self._tail + chunk
        for match in _ID_IN_BODY.finditer(text):
            value = match.group(1)
            if value not in self._seen:
                self._seen.add(value)
                self.found.append(value.decode("utf-8", "replace"))
        self._tail = text[-_CARRY:]
        if self.scanned >= SCAN_LIMIT:
            self.done = True


def _learn_as_read(affinity: Affinity, lib: HttpLib, response: Response, index: int) -> list[str]:
    """Wrap ``response``'s body so that the ids it holds are learned as the caller reads it.

    Returns the ids learned at once, from a body read already, for the caller to share."""
    stream = response.stream
    if response.is_stream_consumed:  # read already (a body given whole, as a MockTransport does)
        scanner = _Scanner("")
        scanner.feed(response.content[:SCAN_LIMIT])
        affinity.learned(scanner.found, index)
        return scanner.found
    scanner = _Scanner(response.headers.get("content-encoding", "").strip().lower())
    if scanner.done:
        return []
    cls = _stream_classes.get(lib.name)
    if cls is None:
        module: Any = lib.module
        cls = type("LearningStream", (_LearningStream, module.SyncByteStream, module.AsyncByteStream), {})
        _stream_classes[lib.name] = cls
    response.stream = cls(stream, scanner, affinity, index)
    return []


_stream_classes: dict[str, type] = {}


class _LearningStream:
    """A response body passed on chunk by chunk as the inner stream gives it, learning ids on the way.

    A chunk is scanned before it is passed on (a search, microseconds), so that an id is known here
    before the caller can see it; what is found is shared with the state store after the chunk was
    passed on, never delaying it.
    """

    def __init__(self, inner: Any, scanner: _Scanner, affinity: Affinity, index: int) -> None:
        self._inner = inner
        self._scanner = scanner
        self._affinity = affinity
        self._index = index
        self._unshared: list[str] = []

    def _scan(self, chunk: bytes) -> None:
        scanner = self._scanner
        if scanner.done:
            return
        before = len(scanner.found)
        try:
            scanner.feed(chunk)
        except Exception:  # pragma: no cover - defensive: learning never breaks a response
            scanner.done = True
            logger.debug("scanning a response for object ids failed", exc_info=True)
            return
        new = scanner.found[before:]
        if new:
            self._affinity.learned(new, self._index)
            self._unshared.extend(new)

    def _take(self) -> tuple[Sequence[str], str, float] | None:
        if not self._unshared:
            return None
        ids, self._unshared = self._unshared, []
        return self._affinity.share_args(ids, self._index)

    def _share(self) -> None:
        args = self._take()
        if args is not None:
            try:
                self._affinity.store.set_owners(*args)  # type: ignore[union-attr]  # args: a store exists
            except Exception:
                logger.debug("state store set_owners failed; owners kept locally", exc_info=True)

    async def _ashare(self) -> None:
        args = self._take()
        if args is not None:
            try:
                await self._affinity.store.aset_owners(*args)  # type: ignore[union-attr]
            except Exception:
                logger.debug("state store set_owners failed; owners kept locally", exc_info=True)

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            self._scan(chunk)
            yield chunk
            self._share()
        self._share()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            self._scan(chunk)
            yield chunk
            await self._ashare()
        await self._ashare()

    def close(self) -> None:
        try:
            self._share()
        finally:
            self._inner.close()

    async def aclose(self) -> None:
        try:
            await self._ashare()
        finally:
            await self._inner.aclose()


# ---------------------------------------------------------------------- configuration


def unavailable(count: int, among: Sequence[BackendState] | None) -> str:
    """What the balancer's 429 says is unavailable: the backend of the object named, or all ``count``."""
    if among is not None and len(among) == 1:
        return "The backend holding the stored object this request names is rate limited or unavailable."
    return f"All {len(among or ()) or count} backends are rate limited or unavailable."


def check_options(max_objects: object, ttl_s: object) -> tuple[int, float]:
    """``affinity_max_objects`` and ``affinity_ttl_s``, validated."""
    if isinstance(max_objects, bool) or not isinstance(max_objects, int):
        raise TypeError(f"affinity_max_objects must be an int, got {type(max_objects).__name__}")
    if max_objects < 1:
        raise ValueError(f"affinity_max_objects must be >= 1, got {max_objects!r}")
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int | float):
        raise TypeError(f"affinity_ttl_s must be a number, got {type(ttl_s).__name__}")
    if not (math.isfinite(ttl_s) and ttl_s > 0):
        raise ValueError(f"affinity_ttl_s must be a finite number > 0, got {ttl_s!r}")
    return max_objects, float(ttl_s)
