"""Stored-object affinity (DESIGN 9): a request that names a stored object goes to the backend holding it.

The backends here are a small in-memory imitation of Azure resources (``Resources``): each host keeps
the responses, conversations and files it created, and answers a request naming an object it does
not have as Azure does (404, or 400 ``previous_response_not_found``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import zlib
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from _unit_support import A, B, C, FakeClock, routing

from openai_priority_loadbalancer import (
    AsyncLoadBalancer,
    Backend,
    LoadBalancer,
    MemoryStateStore,
    OwnerDiscoveredEvent,
    Pinned,
    shared_key,
)
from openai_priority_loadbalancer._affinity import SCAN_LIMIT, OwnerMap, encrypted_key, named_objects

if TYPE_CHECKING:
    from collections.abc import Callable

BASE = "https://caller.example/openai/v1"
SSE = "text/event-stream"


class Resources:
    """The MockTransport handler: three Azure resources, each holding the objects it created."""

    def __init__(self, lib: Any, *, chunk: int = 0, encoding: str | None = None) -> None:
        self.lib = lib
        self.objects: dict[str, str] = {}  # id -> host
        self.counter = itertools.count(1)
        self.requests: list[tuple[str, str, str]] = []  # (host, method, path)
        self.answers: dict[str, list[Any]] = {}  # host -> scripted answers taken before the defaults
        self.chunk = chunk  # > 0: bodies come in chunks of this size
        self.encoding = encoding
        self.lock = threading.Lock()
        self.transport = lib.MockTransport(self)

    def script(self, host: str, *answers: Any) -> None:
        self.answers.setdefault(host, []).extend(answers)

    def _body(self, status: int, payload: Any, *, sse: bool = False) -> Any:
        if sse:
            raw = b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in payload)
            headers = {"content-type": SSE}
        else:
            raw = json.dumps(payload).encode()
            headers = {"content-type": "application/json"}
        if self.encoding == "gzip":
            compressor = zlib.compressobj(wbits=zlib.MAX_WBITS | 16)
            raw = compressor.compress(raw) + compressor.flush()
            headers["content-encoding"] = "gzip"
        if self.chunk:
            parts = [raw[i : i + self.chunk] for i in range(0, len(raw), self.chunk)]
            return self.lib.Response(status, headers=headers, stream=_chunks(self.lib, parts))
        return self.lib.Response(status, headers=headers, content=raw)

    def _missing(self, code: str | None = None) -> Any:
        if code is None:
            return self._body(404, {"error": {"code": "404", "message": "not found"}})
        return self._body(400, {"error": {"code": code, "message": "not found", "param": None}})

    def __call__(self, request: Any) -> Any:
        host = request.url.host
        path = request.url.path.removeprefix("/openai/v1").removeprefix("/openai")
        self.requests.append((host, request.method, path))
        with self.lock:
            scripted = self.answers.get(host)
            if scripted:
                answer = scripted.pop(0)
                return answer(request) if callable(answer) else self.lib.Response(answer)
        parts = path.strip("/").split("/")
        body = json.loads(request.content) if request.content[:1] == b"{" else {}
        if request.method == "POST" and len(parts) == 1:  # create
            for field in ("previous_response_id", "conversation", "file_id"):
                named = body.get(field)
                if isinstance(named, dict):
                    named = named.get("id")
                if named is not None and self.objects.get(named) != host:
                    code = "previous_response_not_found" if field == "previous_response_id" else None
                    return self._missing(code)
            prefix = {"responses": "resp", "conversations": "conv", "files": "file"}[parts[0]]
            object_id = f"{prefix}_{next(self.counter)}{host[0]}"
            item_id = f"msg_{object_id}"
            self.objects[object_id] = host
            self.objects[item_id] = host
            payload = {"id": object_id, "object": parts[0], "output": [{"id": item_id, "type": "message"}]}
            if body.get("stream"):
                events = [
                    {"type": "response.created", "sequence_number": 0, "response": payload},
                    {"type": "response.output_text.delta", "delta": "hi"},
                    {"type": "response.completed", "response": payload},
                ]
                return self._body(200, events, sse=True)
            return self._body(200, payload)
        if len(parts) >= 2:  # a named object: retrieve, delete, items, content...
            if self.objects.get(parts[1]) != host:
                return self._missing()
            return self._body(200, {"id": parts[1], "object": parts[0]})
        return self._body(200, {"data": []})


def _chunks(lib: Any, parts: list[bytes]) -> Any:
    class Chunks(lib.SyncByteStream, lib.AsyncByteStream):  # type: ignore[misc,name-defined]
        def __iter__(self) -> Any:
            yield from parts

        async def __aiter__(self) -> Any:
            for part in parts:
                yield part

    return Chunks()


@pytest.fixture
def resources(lib: Any) -> Resources:
    return Resources(lib)


@pytest.fixture
def backends() -> list[Backend]:
    return [Backend(A, 1), Backend(B, 1), Backend(C, 1)]


@pytest.fixture
def make(lib: Any, resources: Resources, clock: FakeClock, wall: FakeClock) -> Callable[..., Any]:
    """A client over a balancer over ``resources``; closed at the end of the test."""
    clients: list[Any] = []

    def build(backends: list[Backend], **options: Any) -> Any:
        options.setdefault("transport", resources.transport)
        options.setdefault("clock", clock)
        options.setdefault("wall_clock", wall)
        options.setdefault("max_wait_s", 0)
        lb = LoadBalancer(backends, **options)
        client = lib.Client(transport=lb)
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.close()


def create(client: Any, **body: Any) -> Any:
    body.setdefault("model", "gpt")
    body.setdefault("input", "hi")
    return client.post(f"{BASE}/responses", json=body)


def path_of(path: str) -> str:
    """The URL's path as the balancer reads it (percent-decoded, without the query)."""
    return httpx.URL("https://caller.example" + path).path


def host_of(response: Any) -> str:
    return str(routing(response).backend).split("//")[-1].split(":")[0]


# ---------------------------------------------------------------------- recognising


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/openai/responses/resp_1?api-version=preview", [("path", "resp_1")]),
        ("GET", "/openai/v1/responses/resp_1", [("path", "resp_1")]),
        ("GET", "/openai/v1/responses/resp_1/input_items?limit=5", [("path", "resp_1")]),
        ("POST", "/openai/v1/responses/resp_1/cancel", [("path", "resp_1")]),
        ("DELETE", "/openai/responses/resp_1", [("path", "resp_1")]),
        ("GET", "/openai/v1/conversations/conv_1", [("path", "conv_1")]),
        ("POST", "/openai/v1/conversations/conv_1/items", [("path", "conv_1")]),
        ("GET", "/openai/files/file-1", [("path", "file-1")]),
        ("GET", "/openai/v1/files/file-1/content", [("path", "file-1")]),
        ("POST", "/openai/uploads/upload_1/parts", [("path", "upload_1")]),
        ("POST", "/openai/v1/uploads/upload_1/complete", [("path", "upload_1")]),
        ("GET", "/openai/batches/batch_1", [("path", "batch_1")]),
        ("POST", "/openai/v1/vector_stores/vs_1/files", [("path", "vs_1")]),
        ("GET", "/openai/v1/containers/cntr_1/files/cfile_1/content", [("path", "cntr_1")]),
        ("GET", "/openai/fine_tuning/jobs/ftjob-1/events", [("path", "ftjob-1")]),
        ("GET", "/openai/assistants/asst_1", [("path", "asst_1")]),
        ("POST", "/openai/threads/thread_1/runs", [("path", "thread_1")]),
        ("GET", "/openai/v1/chat/completions/chatcmpl-1", [("path", "chatcmpl-1")]),
        # behind a path prefix of the client's endpoint (an API gateway)
        ("GET", "/gateway/ai/openai/v1/responses/resp_1", [("path", "resp_1")]),
    ],
)
def test_every_path_form_names_its_object(method: str, path: str, expected: list[tuple[str, str]]) -> None:
    found = named_objects(method, path_of(path), b"")
    assert found is not None
    assert found[0] == expected


@pytest.mark.parametrize(
    ("method", "path", "creates"),
    [
        ("POST", "/openai/v1/responses", True),
        ("POST", "/openai/responses?api-version=preview", True),
        ("POST", "/openai/v1/conversations", True),
        ("POST", "/openai/files", True),
        ("POST", "/openai/v1/batches", True),
        ("POST", "/openai/v1/vector_stores", True),
        ("POST", "/openai/v1/fine_tuning/jobs", True),
        ("POST", "/openai/threads/runs", True),
        ("POST", "/openai/v1/responses/input_tokens", True),
        ("GET", "/openai/v1/files", None),
        ("GET", "/openai/v1/responses", None),
    ],
)
def test_collections_name_nothing_and_creating_posts_are_learned_from(
    method: str, path: str, creates: bool | None
) -> None:
    found = named_objects(method, path_of(path), b"")
    if creates is None:
        assert found is None
    else:
        assert found == ([], True)


@pytest.mark.parametrize(
    "path",
    [
        "/openai/deployments/gpt-4o/chat/completions?api-version=2024-06-01",
        "/openai/v1/chat/completions",
        "/openai/deployments/emb/embeddings?api-version=2024-06-01",
        "/openai/v1/embeddings",
        "/openai/v1/models",
        "/v1/responses/resp_1",  # not an Azure OpenAI path
        "/",
    ],
)
def test_requests_that_name_nothing(path: str) -> None:
    body = json.dumps({"messages": [{"role": "tool", "tool_call_id": "call_1", "content": "x"}]}).encode()
    assert named_objects("POST", path_of(path), body) is None


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        ("/openai/v1/responses", {"previous_response_id": "resp_1"}, [("previous_response_id", "resp_1")]),
        ("/openai/v1/responses", {"conversation": "conv_1"}, [("conversation", "conv_1")]),
        ("/openai/v1/responses", {"conversation": {"id": "conv_1"}}, [("conversation", "conv_1")]),
        (
            "/openai/v1/responses",
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}]},
            [("file_id", "file-1")],
        ),
        (
            "/openai/v1/responses",
            {"tools": [{"type": "file_search", "vector_store_ids": ["vs_1", "vs_2"]}]},
            [("vector_store_ids", "vs_1"), ("vector_store_ids", "vs_2")],
        ),
        (
            "/openai/v1/responses",
            {"input": [{"type": "item_reference", "id": "msg_1"}, {"role": "user", "content": "x"}]},
            [("input", "msg_1")],
        ),
        (
            "/openai/v1/responses",
            {"input": [{"type": "reasoning", "id": "rs_1", "encrypted_content": "gAAA"}]},
            [("input", "rs_1")],
        ),
        (
            "/openai/v1/responses",
            {"input": [{"type": "reasoning", "encrypted_content": "gAAAsecret"}]},
            [("input", encrypted_key("gAAAsecret"))],
        ),
        (
            "/openai/v1/batches",
            {"input_file_id": "file-1", "endpoint": "/v1/responses"},
            [("input_file_id", "file-1")],
        ),
        (
            "/openai/v1/vector_stores",
            {"name": "x", "file_ids": ["file-1", "file-2"]},
            [("file_ids", "file-1"), ("file_ids", "file-2")],
        ),
        (
            "/openai/assistants",
            {"tool_resources": {"code_interpreter": {"file_ids": ["file-1"]}}},
            [("file_ids", "file-1")],
        ),
        ("/openai/threads/runs", {"assistant_id": "asst_1"}, [("assistant_id", "asst_1")]),
        (
            "/openai/threads/thread_1/messages",
            {"role": "user", "content": "x", "attachments": [{"file_id": "file-1"}]},
            [("path", "thread_1"), ("file_id", "file-1")],
        ),
        ("/openai/v1/fine_tuning/jobs", {"training_file": "file-1"}, [("training_file", "file-1")]),
        (
            "/openai/v1/responses",
            {"previous_response_id": "resp_2", "input": [{"type": "item_reference", "id": "msg_2"}]},
            [("previous_response_id", "resp_2"), ("input", "msg_2")],
        ),
    ],
)
def test_every_body_form_names_its_objects(path: str, body: Any, expected: list[tuple[str, str]]) -> None:
    found = named_objects("POST", path_of(path), json.dumps(body).encode())
    assert found is not None
    assert found[0] == expected


@pytest.mark.parametrize(
    "content",
    [
        b'{"previous_response_id": "resp_1"',  # cut short
        b'{"previous_response_id": 12}',
        b'{"previous_response_id": ""}',
        b'{"previous_response_id": null, "conversation": {"id": 3}}',
        b'{"conversation": ["conv_1"]}',
        b'{"input": "previous_response_id"}',
        b'{"input": [1, "x", null, {"id": 5}]}',
        b'{"file_ids": "file-1", "vector_store_ids": [1, null]}',
        b'["previous_response_id"]',
        b"\xff\xfe{}",
        b'{"a": ' * 10_000 + b"1" + b"}" * 10_000,  # deeper than the JSON parser goes
        b"previous_response_id=resp_1",  # a form body
        b"",
    ],
)
def test_malformed_or_odd_bodies_name_nothing(content: bytes) -> None:
    assert named_objects("POST", "/openai/v1/responses", content) == ([], True)


def test_an_id_too_long_is_not_an_object() -> None:
    assert named_objects("GET", "/openai/v1/responses/" + "r" * 300, b"") is None


# ---------------------------------------------------------------------- the map's bound


def test_the_owner_map_holds_no_more_than_its_bound_and_keeps_what_is_used() -> None:
    owners = OwnerMap(100)
    owners.put("kept", 2)
    for i in range(10_000):
        owners.put(f"resp_{i}", i % 3)
        if i % 40 == 0:
            assert owners.get("kept") == 2  # used often: never dropped
        assert len(owners) <= 100
    assert owners.get("resp_9999") == 9999 % 3
    assert owners.get("resp_0") is None  # long unused: dropped
    assert owners.get("never") is None


def test_the_map_bound_is_configurable_and_validated(backends: list[Backend]) -> None:
    with pytest.raises(ValueError, match="affinity_max_objects"):
        LoadBalancer(backends, affinity_max_objects=0)
    with pytest.raises(TypeError, match="affinity_max_objects"):
        LoadBalancer(backends, affinity_max_objects=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="affinity_ttl_s"):
        LoadBalancer(backends, affinity_ttl_s=float("inf"))


# ---------------------------------------------------------------------- pinning


def test_chains_stay_on_their_backend_while_new_chains_spread(
    make: Callable[..., Any], backends: list[Backend], resources: Resources
) -> None:
    client = make(backends)
    first_hosts = set()
    for _ in range(12):
        response = create(client)
        assert response.status_code == 200
        owner = host_of(response)
        first_hosts.add(owner)
        assert routing(response).pinned is None
        for _ in range(3):
            response = create(client, previous_response_id=response.json()["id"])
            assert response.status_code == 200, response.text
            assert host_of(response) == owner
            assert routing(response).pinned == Pinned(
                response.request.content and json.loads(response.request.content)["previous_response_id"],
                "previous_response_id",
                "known",
            )
        retrieved = client.get(f"{BASE}/responses/{response.json()['id']}")
        assert retrieved.status_code == 200
        assert host_of(retrieved) == owner
    assert len(first_hosts) > 1  # new chains still spread
    assert all(len(r.attempts) == 1 for r in [routing(retrieved)])
    assert sum(s.pinned for s in client._transport.stats()) == 12 * 4
    assert client._transport.stats().total.pinned == 12 * 4
    assert "pinned" in str(client._transport.stats())


def test_a_chain_started_with_a_stream_continues_on_its_backend(
    lib: Any, clock: FakeClock, wall: FakeClock, backends: list[Backend]
) -> None:
    resources = Resources(lib, chunk=7)  # the response.created event arrives cut into small pieces
    lb = LoadBalancer(backends, transport=resources.transport, clock=clock, wall_clock=wall)
    with lib.Client(transport=lb) as client:
        for _ in range(6):
            with client.stream("POST", f"{BASE}/responses", json={"input": "x", "stream": True}) as streamed:
                owner = host_of(streamed)
                chunks = list(streamed.iter_raw())
            body = b"".join(chunks)
            assert body.startswith(b"event: response.created")
            assert max(map(len, chunks)) <= 7  # passed on as it came, not buffered
            created = json.loads(body.split(b"\n")[1].removeprefix(b"data: "))["response"]["id"]
            follow = create(client, previous_response_id=created)
            assert follow.status_code == 200
            assert host_of(follow) == owner
            # an output item of the stream is known too (manual context: the item passed back by id)
            item = create(client, input=[{"type": "item_reference", "id": f"msg_{created}"}])
            assert item.status_code == 200
            assert host_of(item) == owner


def test_owners_are_learned_from_a_gzipped_body(
    lib: Any, clock: FakeClock, wall: FakeClock, backends: list[Backend]
) -> None:
    resources = Resources(lib, chunk=5, encoding="gzip")
    lb = LoadBalancer(backends, transport=resources.transport, clock=clock, wall_clock=wall)
    with lib.Client(transport=lb) as client:
        for _ in range(5):
            first = create(client)
            follow = create(client, previous_response_id=first.json()["id"])
            assert follow.status_code == 200
            assert len(routing(follow).attempts) == 1


def test_scanning_stops_after_a_bounded_prefix(
    lib: Any, clock: FakeClock, wall: FakeClock, backends: list[Backend]
) -> None:
    padding = b" " * (SCAN_LIMIT + 10)
    lb = LoadBalancer(
        backends,
        transport=lib.MockTransport(lambda r: lib.Response(200, content=padding + b'{"id": "resp_late"}')),
        clock=clock,
        wall_clock=wall,
    )
    with lib.Client(transport=lb) as client:
        assert create(client).status_code == 200
    assert lb._affinity.map.get("resp_late") is None


def test_a_follow_up_whose_owner_is_throttled_waits_for_it(
    make: Callable[..., Any], backends: list[Backend], resources: Resources, fake_sleep: list[float]
) -> None:
    client = make(backends, max_wait_s=30)
    first = create(client)
    owner = host_of(first)
    resources.script(owner, lambda r: resources.lib.Response(429, headers={"retry-after": "4"}))
    follow = create(client, previous_response_id=first.json()["id"])
    assert follow.status_code == 200
    assert host_of(follow) == owner
    assert [a.status for a in routing(follow).attempts] == [429, 200]
    assert sum(fake_sleep) >= 4
    assert {h for h, _, _ in resources.requests} == {owner}  # never another backend


def test_a_follow_up_whose_owner_stays_throttled_gets_a_429_naming_its_reset(
    make: Callable[..., Any], backends: list[Backend], resources: Resources
) -> None:
    client = make(backends, max_wait_s=0)
    first = create(client)
    owner = host_of(first)
    resources.script(owner, lambda r: resources.lib.Response(429, headers={"retry-after": "7"}))
    follow = create(client, previous_response_id=first.json()["id"])
    assert follow.status_code == 429
    assert follow.headers["retry-after"] == "7"
    assert routing(follow).backend is None
    assert routing(follow).pinned == Pinned(first.json()["id"], "previous_response_id", "known")
    assert "stored object" in follow.json()["error"]["message"]
    assert [h for h, _, _ in resources.requests[1:]] == [owner]


@pytest.mark.parametrize("failure", [503, "connect"])
def test_the_owner_failing_is_the_callers_answer(
    make: Callable[..., Any], backends: list[Backend], resources: Resources, failure: Any
) -> None:
    client = make(backends)
    first = create(client)
    owner = host_of(first)
    lib = resources.lib
    if failure == "connect":

        def refuse(request: Any) -> Any:
            raise lib.ConnectError("refused", request=request)

        resources.script(owner, refuse)
        with pytest.raises(lib.ConnectError):
            create(client, previous_response_id=first.json()["id"])
    else:
        resources.script(owner, failure)
        assert create(client, previous_response_id=first.json()["id"]).status_code == 503
    assert [h for h, _, _ in resources.requests[1:]] == [owner]


# ---------------------------------------------------------------------- discovering


def test_an_unknown_owner_is_discovered_in_priority_order_and_remembered(
    make: Callable[..., Any], resources: Resources
) -> None:
    events: list[Any] = []
    backends = [Backend(A, 1), Backend(B, 2), Backend(C, 3)]
    resources.objects["resp_x"] = C
    client = make(backends, on_event=events.append)
    follow = create(client, previous_response_id="resp_x")
    assert follow.status_code == 200
    assert [a.backend.split("//")[-1].split(":")[0] for a in routing(follow).attempts] == [A, B, C]
    assert [a.status for a in routing(follow).attempts] == [400, 400, 200]
    assert routing(follow).pinned == Pinned("resp_x", "previous_response_id", "discovered")
    discovered = [e for e in events if isinstance(e, OwnerDiscoveredEvent)]
    assert [(e.backend.split("//")[-1].split(":")[0], e.object_id) for e in discovered] == [(C, "resp_x")]
    again = client.get(f"{BASE}/responses/resp_x")
    assert again.status_code == 200
    assert len(routing(again).attempts) == 1
    assert routing(again).pinned == Pinned("resp_x", "path", "known")


def test_an_object_nobody_has_gets_the_last_not_found_answer_unchanged(
    make: Callable[..., Any], backends: list[Backend], resources: Resources
) -> None:
    client = make(backends)
    missing = create(client, previous_response_id="resp_gone")
    assert missing.status_code == 400
    assert missing.json()["error"]["code"] == "previous_response_not_found"
    assert len(routing(missing).attempts) == 3
    retrieve = client.get(f"{BASE}/responses/resp_gone")
    assert retrieve.status_code == 404
    assert len(routing(retrieve).attempts) == 3


def test_a_400_that_is_not_about_the_object_goes_back_at_once(
    make: Callable[..., Any], backends: list[Backend], resources: Resources
) -> None:
    client = make(backends)
    lib = resources.lib
    bad = lib.Response(400, json={"error": {"code": "invalid_value", "message": "bad temperature"}})
    for host in (A, B, C):
        resources.script(host, lambda r, bad=bad: bad)
    answer = create(client, previous_response_id="resp_x")
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "invalid_value"
    assert len(routing(answer).attempts) == 1


def test_discovery_waits_out_a_throttled_candidate(
    make: Callable[..., Any], resources: Resources, fake_sleep: list[float]
) -> None:
    backends = [Backend(A, 1), Backend(B, 2)]
    resources.objects["resp_x"] = B
    client = make(backends, max_wait_s=30)
    resources.script(B, lambda r: resources.lib.Response(429, headers={"retry-after": "2"}))
    follow = create(client, previous_response_id="resp_x")
    assert follow.status_code == 200
    assert [a.status for a in routing(follow).attempts] == [400, 429, 200]


# ---------------------------------------------------------------------- sharing owners


def test_owners_are_shared_through_the_state_store(
    make: Callable[..., Any], backends: list[Backend], resources: Resources, clock: FakeClock
) -> None:
    store = MemoryStateStore(clock=clock)
    first = make(backends, state=store)
    second = make(backends, state=store)  # another worker
    chains = [create(first).json()["id"] for _ in range(6)]
    streamed = first.post(f"{BASE}/responses", json={"input": "x", "stream": True})
    chains.append(streamed.text.split('"id": "')[1].split('"')[0])
    for response_id in chains:
        follow = create(second, previous_response_id=response_id)
        assert follow.status_code == 200
        assert len(routing(follow).attempts) == 1
        assert routing(follow).pinned == Pinned(response_id, "previous_response_id", "shared")


def test_a_discovered_owner_is_shared(
    make: Callable[..., Any], backends: list[Backend], resources: Resources, clock: FakeClock
) -> None:
    store = MemoryStateStore(clock=clock)
    resources.objects["resp_x"] = C
    assert create(make(backends, state=store), previous_response_id="resp_x").status_code == 200
    again = create(make(backends, state=store), previous_response_id="resp_x")
    assert len(routing(again).attempts) == 1
    assert store.owners(["resp_x"]) == [shared_key(backends[2])]


def test_owners_in_the_store_expire(clock: FakeClock) -> None:
    store = MemoryStateStore(clock=clock)
    store.set_owners(["resp_1"], "key", 10.0)
    assert store.owners(["resp_1", "resp_2"]) == ["key", None]
    clock.advance(11)
    assert store.owners(["resp_1"]) == [None]


class BrokenStore(MemoryStateStore):
    def owners(self, ids: Any) -> Any:
        raise ConnectionError("down")

    def set_owners(self, ids: Any, owner: str, ttl_s: float) -> None:
        raise ConnectionError("down")


def test_a_failing_store_means_local_owners_and_discovery(
    make: Callable[..., Any], backends: list[Backend], resources: Resources
) -> None:
    store = BrokenStore()
    client = make(backends, state=store)
    first = create(client)
    assert create(client, previous_response_id=first.json()["id"]).status_code == 200
    other = make(backends, state=store)
    follow = create(other, previous_response_id=first.json()["id"])
    assert follow.status_code == 200
    assert routing(follow).pinned is not None
    assert routing(follow).pinned.owner == "discovered"


def test_affinity_off_balances_as_if_nothing_was_named(
    make: Callable[..., Any], backends: list[Backend], resources: Resources
) -> None:
    client = make(backends, affinity=False)
    resources.objects["resp_x"] = C
    answer = client.get(f"{BASE}/responses/resp_x")
    assert routing(answer).pinned is None
    assert len(routing(answer).attempts) == 1


# ---------------------------------------------------------------------- async


def test_async_chains_with_streams_stay_on_their_backend(
    lib: Any, clock: FakeClock, wall: FakeClock, backends: list[Backend]
) -> None:
    resources = Resources(lib, chunk=9)
    store = MemoryStateStore(clock=clock)

    async def main() -> None:
        lb = AsyncLoadBalancer(
            backends, transport=resources.transport, clock=clock, wall_clock=wall, state=store
        )
        async with lib.AsyncClient(transport=lb) as client:
            for _ in range(6):
                async with client.stream(
                    "POST", f"{BASE}/responses", json={"input": "x", "stream": True}
                ) as streamed:
                    owner = host_of(streamed)
                    body = b"".join([chunk async for chunk in streamed.aiter_raw()])
                created = json.loads(body.split(b"\n")[1].removeprefix(b"data: "))["response"]["id"]
                follow = await client.post(f"{BASE}/responses", json={"previous_response_id": created})
                assert follow.status_code == 200
                assert host_of(follow) == owner
                missing = await client.get(f"{BASE}/responses/resp_gone")
                assert missing.status_code == 404
                assert len(routing(missing).attempts) == 3
        assert store.owners([created])[0] is not None

    asyncio.run(main())


def test_a_not_found_body_that_cannot_be_read_is_closed_and_its_error_raised(
    make: Callable[..., Any], backends: list[Backend], resources: Resources
) -> None:
    lib = resources.lib
    closed: list[bool] = []

    class Broken(lib.SyncByteStream):  # type: ignore[misc,name-defined]
        def __iter__(self) -> Any:
            raise lib.ReadError("cut")
            yield b""

        def close(self) -> None:
            closed.append(True)

    resources.script(A, lambda r: lib.Response(400, stream=Broken()))
    client = make([Backend(A, 1), Backend(B, 2)])
    with pytest.raises(lib.ReadError):
        create(client, previous_response_id="resp_x")
    assert closed
    assert [h for h, _, _ in resources.requests] == [A]


def test_a_request_cancelled_while_a_not_found_body_is_read_closes_it(
    lib: Any, clock: FakeClock, wall: FakeClock
) -> None:
    closed: list[bool] = []
    started = asyncio.Event()

    class Slow(lib.AsyncByteStream):  # type: ignore[misc,name-defined]
        async def __aiter__(self) -> Any:
            started.set()
            await asyncio.sleep(30)
            yield b"{}"

        async def aclose(self) -> None:
            closed.append(True)

    async def answer(request: Any) -> Any:
        return lib.Response(400, stream=Slow())

    async def main() -> None:
        lb = AsyncLoadBalancer(
            [Backend(A, 1), Backend(B, 2)], transport=lib.MockTransport(answer), clock=clock, wall_clock=wall
        )
        async with lib.AsyncClient(transport=lb) as client:
            task = asyncio.create_task(client.post(f"{BASE}/responses", json={"previous_response_id": "r"}))
            await asyncio.wait_for(started.wait(), 5)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert closed

    asyncio.run(main())
