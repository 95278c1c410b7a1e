"""The simulator's conversations, files and input items that name stored state: kept per instance."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from _simulator_support import sdk

from openai_priority_loadbalancer.simulator import InstanceConfig, Simulator
from openai_priority_loadbalancer.simulator._protocol import parse_multipart
from openai_priority_loadbalancer.simulator._stored import MAX_CONVERSATION_ITEMS

if TYPE_CHECKING:
    from collections.abc import Iterator

V1 = "/openai/v1"
AZURE = "/openai"
BINARY = b'{"custom_id": "1"}\r\n\x00\xff\n--not-a-boundary\n'


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5) as http_client:
        yield http_client


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator([InstanceConfig("eastus"), InstanceConfig("westus")]) as simulator:
        yield simulator


def message(text: str, role: str = "user") -> dict[str, Any]:
    return {"type": "message", "role": role, "content": [{"type": "input_text", "text": text}]}


def texts(items: list[dict[str, Any]]) -> list[str]:
    return [item["content"][0]["text"] for item in items]


# -- conversations -------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", [AZURE, V1])
def test_conversation_lifecycle(client: httpx.Client, sim: Simulator, prefix: str) -> None:
    base = sim.url("eastus") + prefix
    created = client.post(f"{base}/conversations", json={"items": [message("one")], "metadata": {"k": "v"}})
    assert created.status_code == 200
    conversation = created.json()
    assert conversation["object"] == "conversation"
    assert conversation["id"].startswith("conv_")
    assert conversation["metadata"] == {"k": "v"}
    url = f"{base}/conversations/{conversation['id']}"
    assert client.get(url).json() == conversation

    added = client.post(f"{url}/items", json={"items": [message("two"), message("three")]}).json()
    assert added["object"] == "list"
    assert texts(added["data"]) == ["two", "three"]
    listed = client.get(f"{url}/items").json()
    assert texts(listed["data"]) == ["three", "two", "one"]  # newest first by default
    assert texts(client.get(f"{url}/items", params={"order": "asc", "limit": "2"}).json()["data"]) == [
        "one",
        "two",
    ]

    two = added["data"][0]["id"]
    assert client.get(f"{url}/items/{two}").json()["content"][0]["text"] == "two"
    assert client.delete(f"{url}/items/{two}").json()["id"] == conversation["id"]
    assert client.get(f"{url}/items/{two}").status_code == 404
    assert texts(client.get(f"{url}/items", params={"order": "asc"}).json()["data"]) == ["one", "three"]

    updated = client.post(url, json={"metadata": {"k": "w"}}).json()
    assert updated["metadata"] == {"k": "w"}
    assert client.delete(url).json() == {
        "id": conversation["id"],
        "object": "conversation.deleted",
        "deleted": True,
    }
    assert client.get(url).status_code == 404
    stats = sim.stats("eastus")
    assert (stats.served, stats.not_found) == (10, 2)


def test_a_response_in_a_conversation_reads_and_extends_it(client: httpx.Client, sim: Simulator) -> None:
    base = sim.url("eastus") + V1
    conversation = client.post(f"{base}/conversations", json={"items": [message("one")]}).json()
    for reference in (conversation["id"], {"id": conversation["id"]}):
        response = client.post(
            f"{base}/responses", json={"model": "gpt-4o", "input": "next", "conversation": reference}
        ).json()
        assert response["conversation"] == {"id": conversation["id"]}
    items = client.get(f"{base}/conversations/{conversation['id']}/items", params={"order": "asc"}).json()
    assert [(item["role"], item["content"][0]["text"]) for item in items["data"]] == [
        ("user", "one"),
        ("user", "next"),
        ("assistant", "Simulated response from eastus."),
        ("user", "next"),
        ("assistant", "Simulated response from eastus."),
    ]
    # Its input is the conversation so far: "one" (2), "next" (2) and the answer (9), plus "next".
    assert response["usage"]["input_tokens"] == 2 + 2 + 9 + 2

    both = client.post(
        f"{base}/responses",
        json={
            "model": "gpt-4o",
            "input": "x",
            "conversation": conversation["id"],
            "previous_response_id": response["id"],
        },
    )
    assert both.status_code == 400
    assert "Mutually exclusive" in both.json()["error"]["message"]


def test_conversations_are_kept_per_instance(client: httpx.Client, sim: Simulator) -> None:
    conversation = client.post(f"{sim.url('eastus')}{V1}/conversations", json={}).json()
    west = sim.url("westus") + V1
    url = f"{west}/conversations/{conversation['id']}"
    answers = [
        client.get(url),
        client.post(url, json={"metadata": {}}),
        client.delete(url),
        client.get(f"{url}/items"),
        client.post(f"{url}/items", json={"items": [message("x")]}),
        client.get(f"{url}/items/msg_1"),
        client.delete(f"{url}/items/msg_1"),
        client.post(
            f"{west}/responses", json={"model": "m", "input": "x", "conversation": conversation["id"]}
        ),
    ]
    assert [answer.status_code for answer in answers] == [404] * 8
    assert answers[-1].json()["error"] == {
        "message": f"Conversation with id '{conversation['id']}' not found.",
        "type": "invalid_request_error",
        "param": "conversation",
        "code": None,
    }
    assert sim.instance("eastus").holds(conversation["id"])
    assert not sim.instance("westus").holds(conversation["id"])
    assert sim.stats("westus").not_found == 8


def test_conversation_requests_are_validated(client: httpx.Client, sim: Simulator) -> None:
    base = sim.url("eastus") + V1
    too_many = [message(str(n)) for n in range(MAX_CONVERSATION_ITEMS + 1)]
    assert client.post(f"{base}/conversations", json={"items": too_many}).status_code == 400
    assert client.post(f"{base}/conversations", json={"items": "x"}).status_code == 400
    assert client.post(f"{base}/conversations", json={"metadata": []}).status_code == 400
    conversation = client.post(f"{base}/conversations").json()  # no body at all is fine
    url = f"{base}/conversations/{conversation['id']}"
    assert client.post(f"{url}/items", json={"items": []}).status_code == 400
    assert client.post(f"{url}/items", content=b"{").status_code == 400
    assert client.post(url, json={}).status_code == 400
    assert client.put(url).status_code == 405
    answer = client.post(f"{base}/responses", json={"model": "m", "input": "x", "conversation": 3})
    assert answer.status_code == 400
    assert sim.stats("eastus").rejected == 8


# -- files ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", [AZURE, V1])
def test_file_upload_retrieve_content_list_delete(client: httpx.Client, sim: Simulator, prefix: str) -> None:
    base = sim.url("eastus") + prefix
    uploaded = client.post(
        f"{base}/files", data={"purpose": "batch"}, files={"file": ("batch.jsonl", BINARY)}
    )
    assert uploaded.status_code == 200
    file = uploaded.json()
    assert file["id"].startswith("file-")
    assert (file["object"], file["bytes"], file["filename"], file["purpose"], file["status"]) == (
        "file",
        len(BINARY),
        "batch.jsonl",
        "batch",
        "processed",
    )
    assert client.get(f"{base}/files/{file['id']}").json() == file
    content = client.get(f"{base}/files/{file['id']}/content")
    assert content.content == BINARY
    assert content.headers["content-type"] == "application/octet-stream"

    client.post(f"{base}/files", data={"purpose": "assistants"}, files={"file": ("a.txt", b"a")})
    assert [entry["purpose"] for entry in client.get(f"{base}/files").json()["data"]] == [
        "assistants",
        "batch",
    ]
    assert [
        entry["id"] for entry in client.get(f"{base}/files", params={"purpose": "batch"}).json()["data"]
    ] == [file["id"]]
    assert client.delete(f"{base}/files/{file['id']}").json() == {
        "id": file["id"],
        "object": "file",
        "deleted": True,
    }
    assert client.get(f"{base}/files/{file['id']}/content").status_code == 404


def test_files_are_kept_per_instance(client: httpx.Client, sim: Simulator) -> None:
    file = client.post(
        f"{sim.url('eastus')}{V1}/files", data={"purpose": "batch"}, files={"file": ("b.jsonl", b"{}")}
    ).json()
    west = sim.url("westus") + V1
    for method, suffix in [("GET", ""), ("GET", "/content"), ("DELETE", "")]:
        answer = client.request(method, f"{west}/files/{file['id']}{suffix}")
        assert answer.status_code == 404
        assert answer.json()["error"]["message"] == f"No such File object: {file['id']}"
    assert client.get(f"{west}/files").json()["data"] == []
    part = {"type": "input_file", "file_id": file["id"]}
    answer = client.post(
        f"{west}/responses", json={"model": "m", "input": [{"role": "user", "content": [part]}]}
    )
    assert answer.status_code == 404
    on_owner = client.post(
        f"{sim.url('eastus')}{V1}/responses",
        json={"model": "m", "input": [{"role": "user", "content": [part]}]},
    )
    assert on_owner.status_code == 200
    assert sim.stats("westus").not_found == 4


def test_uploads_are_validated(client: httpx.Client, sim: Simulator) -> None:
    url = sim.url("eastus") + V1 + "/files"
    assert client.post(url, json={"purpose": "batch"}).status_code == 400  # not multipart
    assert client.post(url, data={"purpose": "batch"}, files={"other": ("x", b"x")}).status_code == 400
    assert client.post(url, data={"purpose": "nope"}, files={"file": ("x", b"x")}).status_code == 400
    assert client.post(url, data={"purpose": "batch"}).status_code == 400  # no file
    garbled = client.post(url, content=b"garbage", headers={"content-type": "multipart/form-data"})
    assert garbled.status_code == 400
    assert sim.stats("eastus").rejected == 5


def test_parse_multipart() -> None:
    body = (
        b'--XX\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        b'--XX\r\nContent-Disposition: form-data; name="file"; filename="a.bin"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n" + BINARY + b"\r\n--XX--\r\n"
    )
    assert parse_multipart("multipart/form-data; boundary=XX", body) == {
        "purpose": (None, b"batch"),
        "file": ("a.bin", BINARY),
    }
    assert parse_multipart("application/json", body) is None
    assert parse_multipart("multipart/form-data", b"no boundary") is None
    assert parse_multipart("multipart/form-data; boundary=YY", body) is None


def test_uploads_are_rate_limited_like_other_requests(client: httpx.Client) -> None:
    with Simulator([InstanceConfig("eastus", requests_per_window=1, window_s=60)]) as sim:
        url = sim.url("eastus") + V1 + "/files"
        form = {"data": {"purpose": "batch"}, "files": {"file": ("x", b"x")}}
        assert client.post(url, **form).status_code == 200  # type: ignore[arg-type]
        throttled = client.post(url, **form)  # type: ignore[arg-type]
        assert throttled.status_code == 429
        assert "Files_Create" in throttled.json()["error"]["message"]


# -- input items naming stored state -------------------------------------------------------------


def test_item_references_and_encrypted_reasoning_need_their_instance(
    client: httpx.Client, sim: Simulator
) -> None:
    east, west = sim.url("eastus") + V1, sim.url("westus") + V1
    body = {"model": "m", "input": "think", "include": ["reasoning.encrypted_content"], "store": False}
    first = client.post(f"{east}/responses", json=body).json()
    reasoning, answer = first["output"]
    assert reasoning["type"] == "reasoning"
    assert isinstance(reasoning["encrypted_content"], str)
    assert not sim.instance("eastus").holds(reasoning["id"])  # store: false keeps nothing

    follow_up = {"model": "m", "input": [reasoning, answer, message("again")], "store": False}
    assert client.post(f"{east}/responses", json=follow_up).status_code == 200
    elsewhere = client.post(f"{west}/responses", json=follow_up)
    assert elsewhere.status_code == 400
    assert elsewhere.json()["error"]["code"] == "invalid_encrypted_content"
    forged = {**reasoning, "encrypted_content": "bm90IHNlYWxlZA=="}
    assert client.post(f"{east}/responses", json={**follow_up, "input": [forged]}).status_code == 400

    stored = client.post(f"{east}/responses", json={"model": "m", "input": "hi"}).json()
    reference = {"type": "item_reference", "id": stored["output"][0]["id"]}
    by_reference = client.post(f"{east}/responses", json={"model": "m", "input": [reference]}).json()
    items = client.get(f"{east}/responses/{by_reference['id']}/input_items").json()["data"]
    assert texts(items) == ["Simulated response from eastus."]  # the reference resolved
    missing = client.post(f"{west}/responses", json={"model": "m", "input": [reference]})
    assert missing.status_code == 404
    assert missing.json()["error"]["message"].startswith(f"Item with id '{reference['id']}' not found.")

    bare = {key: value for key, value in reasoning.items() if key != "encrypted_content"}
    assert client.post(f"{east}/responses", json={"model": "m", "input": [bare]}).status_code == 404
    assert sim.stats("eastus").not_found == 2  # the forged and the bare reasoning
    assert sim.stats("westus").not_found == 2


# -- the real openai SDK -------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["azure", "v1"])
def test_openai_sdk_sync(sim: Simulator, form: str, http_lib: Any) -> None:
    openai = pytest.importorskip("openai")
    with (
        sdk(openai, sim, "eastus", form, http_lib, is_async=False) as east,
        sdk(openai, sim, "westus", form, http_lib, is_async=False) as west,
    ):
        conversation = east.conversations.create(items=[message("one")], metadata={"k": "v"})
        added = east.conversations.items.create(conversation.id, items=[message("two")])
        assert [item.content[0].text for item in added.data] == ["two"]
        for _ in range(3):
            response = east.responses.create(model="gpt-4o", input="next", conversation=conversation.id)
            assert response.conversation.id == conversation.id
        items = list(east.conversations.items.list(conversation.id, order="asc"))
        assert len(items) == 2 + 3 * 2
        assert (
            east.conversations.items.retrieve(items[0].id, conversation_id=conversation.id).id == items[0].id
        )
        assert east.conversations.retrieve(conversation.id).metadata == {"k": "v"}
        with pytest.raises(openai.NotFoundError):
            west.responses.create(model="gpt-4o", input="x", conversation=conversation.id)
        with pytest.raises(openai.NotFoundError):
            west.conversations.items.list(conversation.id)

        file = east.files.create(file=("batch.jsonl", io.BytesIO(BINARY)), purpose="batch")
        assert east.files.retrieve(file.id).bytes == len(BINARY)
        assert east.files.content(file.id).content == BINARY
        assert [entry.id for entry in east.files.list()] == [file.id]
        with pytest.raises(openai.NotFoundError):
            west.files.retrieve(file.id)
        assert east.files.delete(file.id).deleted is True
        assert east.conversations.delete(conversation.id).deleted is True
    assert sim.stats("westus").not_found == 3


@pytest.mark.parametrize("form", ["azure", "v1"])
async def test_openai_sdk_async(form: str, http_lib: Any) -> None:
    openai = pytest.importorskip("openai")
    async with Simulator([InstanceConfig("eastus"), InstanceConfig("westus")]) as sim:
        east = sdk(openai, sim, "eastus", form, http_lib, is_async=True)
        west = sdk(openai, sim, "westus", form, http_lib, is_async=True)
        async with east, west:
            conversation = await east.conversations.create()
            await east.conversations.items.create(conversation.id, items=[message("one")])
            response = await east.responses.create(
                model="gpt-4o", input="next", conversation={"id": conversation.id}
            )
            assert response.conversation.id == conversation.id
            items = [item async for item in east.conversations.items.list(conversation.id)]
            assert len(items) == 3
            with pytest.raises(openai.NotFoundError):
                await west.conversations.retrieve(conversation.id)

            file = await east.files.create(file=("a.jsonl", BINARY), purpose="batch")
            assert (await east.files.retrieve(file.id)).filename == "a.jsonl"
            assert (await east.files.content(file.id)).content == BINARY
            with pytest.raises(openai.NotFoundError):
                await west.files.content(file.id)
        assert sim.stats("westus").not_found == 2
