"""The simulator's Responses API: stored per instance, streamed in Azure's event order, metered as Azure."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from _simulator_support import sdk

from openai_priority_loadbalancer.simulator import InstanceConfig, Simulator
from openai_priority_loadbalancer.simulator import _stored as stored_module
from openai_priority_loadbalancer.simulator._stored import DEFAULT_MAX_OUTPUT_TOKENS

if TYPE_CHECKING:
    from collections.abc import Iterator

AZURE = "/openai/responses"
V1 = "/openai/v1/responses"
QUERY = "?api-version=2025-04-01-preview"
STREAM_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.delta",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5) as http_client:
        yield http_client


def create(client: httpx.Client, base: str, path: str = AZURE, **body: Any) -> httpx.Response:
    return client.post(f"{base}{path}{QUERY}", json={"model": "gpt-4o", "input": "Hello there", **body})


def sse_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(event line, data) of each event of an SSE body."""
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append((lines["event"], json.loads(lines["data"])))
    return events


# -- create, retrieve, list, delete --------------------------------------------------------------


@pytest.mark.parametrize("path", [AZURE, V1])
def test_create_retrieve_input_items_and_delete(client: httpx.Client, path: str) -> None:
    with Simulator([InstanceConfig("eastus", requests_per_window=100, window_s=60)]) as sim:
        base = sim.url("eastus")
        response = create(client, base, path, instructions="Be brief", metadata={"k": "v"})
        assert response.status_code == 200
        assert response.headers["x-simulator-instance"] == "eastus"
        assert response.headers["x-ratelimit-remaining-requests"] == "99"
        created = response.json()
        assert created["object"] == "response"
        assert created["id"].startswith("resp_")
        assert created["status"] == "completed"
        assert created["metadata"] == {"k": "v"}
        [message] = created["output"]
        assert message["type"] == "message"
        assert message["content"][0]["text"] == "Simulated response from eastus."
        assert sim.instance("eastus").holds(created["id"])

        retrieved = client.get(f"{base}{path}/{created['id']}{QUERY}")
        assert retrieved.status_code == 200
        assert retrieved.json() == created

        items = client.get(f"{base}{path}/{created['id']}/input_items{QUERY}").json()
        assert items["object"] == "list"
        [item] = items["data"]
        assert item["role"] == "user"
        assert item["content"] == [{"type": "input_text", "text": "Hello there"}]
        assert (items["first_id"], items["last_id"], items["has_more"]) == (item["id"], item["id"], False)

        deleted = client.delete(f"{base}{path}/{created['id']}{QUERY}")
        assert deleted.json() == {"id": created["id"], "object": "response", "deleted": True}
        assert client.get(f"{base}{path}/{created['id']}{QUERY}").status_code == 404
        assert not sim.instance("eastus").holds(created["id"])
        stats = sim.stats("eastus")
        assert (stats.served, stats.not_found, stats.rejected) == (4, 1, 0)


def test_input_items_pages_in_either_order(client: httpx.Client) -> None:
    inputs = [{"role": "user", "content": f"turn {n}"} for n in range(5)]
    with Simulator([InstanceConfig("eastus")]) as sim:
        base = sim.url("eastus")
        response_id = create(client, base, input=inputs).json()["id"]
        url = f"{base}{AZURE}/{response_id}/input_items"

        def texts(**params: str) -> tuple[list[str], bool]:
            page = client.get(url, params=params).json()
            return [item["content"][0]["text"] for item in page["data"]], page["has_more"]

        assert texts() == (["turn 4", "turn 3", "turn 2", "turn 1", "turn 0"], False)
        assert texts(order="asc", limit="2") == (["turn 0", "turn 1"], True)
        first = client.get(url, params={"order": "asc", "limit": "2"}).json()["last_id"]
        assert texts(order="asc", after=first) == (["turn 2", "turn 3", "turn 4"], False)
        assert client.get(url, params={"limit": "0"}).status_code == 400
        assert client.get(url, params={"order": "up"}).status_code == 400


def test_store_false_keeps_nothing(client: httpx.Client) -> None:
    with Simulator([InstanceConfig("eastus")]) as sim:
        base = sim.url("eastus")
        response = create(client, base, store=False).json()
        assert response["store"] is False
        assert not sim.instance("eastus").holds(response["id"])
        assert client.get(f"{base}{AZURE}/{response['id']}").status_code == 404
        follow_up = create(client, base, previous_response_id=response["id"])
        assert follow_up.status_code == 400
        assert follow_up.json()["error"]["code"] == "previous_response_not_found"


def test_each_instance_keeps_its_own_objects(client: httpx.Client) -> None:
    with Simulator([InstanceConfig("eastus"), InstanceConfig("westus")]) as sim:
        east, west = sim.url("eastus"), sim.url("westus")
        first = create(client, east).json()
        follow_up = create(client, east, V1, previous_response_id=first["id"])
        assert follow_up.status_code == 200
        assert follow_up.json()["previous_response_id"] == first["id"]

        elsewhere = create(client, west, previous_response_id=first["id"])
        assert elsewhere.status_code == 400
        assert elsewhere.json() == {
            "error": {
                "message": f"Previous response with id '{first['id']}' not found.",
                "type": "invalid_request_error",
                "param": "previous_response_id",
                "code": "previous_response_not_found",
            }
        }
        for method, suffix in [("GET", ""), ("DELETE", ""), ("GET", "/input_items"), ("POST", "/cancel")]:
            answer = client.request(method, f"{west}{V1}/{first['id']}{suffix}")
            assert answer.status_code == 404, (method, suffix)
            assert answer.json()["error"]["message"] == f"Response with id '{first['id']}' not found."
        assert sim.instance("eastus").holds(first["id"])
        west_stats = sim.stats("westus")
        assert (west_stats.received, west_stats.served, west_stats.not_found) == (5, 0, 5)
        assert [record.outcome for record in west_stats.records] == ["not_found"] * 5


def test_bad_requests_are_rejected_before_admission(client: httpx.Client) -> None:
    with Simulator([InstanceConfig("eastus", requests_per_window=1, window_s=60)]) as sim:
        base = sim.url("eastus")
        assert client.post(f"{base}{AZURE}", content=b"not json").status_code == 400
        assert client.post(f"{base}{AZURE}", json={"input": "hi"}).status_code == 400  # no model
        assert create(client, base, input=42).status_code == 400
        assert create(client, base, max_output_tokens=4).json()["error"]["param"] == "max_output_tokens"
        assert create(client, base, background=True, store=False).status_code == 400
        assert client.get(f"{base}{AZURE}").status_code == 405
        assert client.put(f"{base}{AZURE}/resp_1").status_code == 405
        assert client.get(f"{base}{AZURE}/resp_1/other").status_code == 404
        assert client.get(f"{base}{AZURE}/").status_code == 404
        stats = sim.stats("eastus")
        assert (stats.rejected, stats.not_found, stats.served) == (9, 0, 0)
        assert create(client, base).status_code == 200  # the window's one request is still there


# -- streaming -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [AZURE, V1])
def test_stream_follows_azures_event_sequence(client: httpx.Client, path: str) -> None:
    with Simulator([InstanceConfig("eastus", stream_chunks=3)]) as sim:
        base = sim.url("eastus")
        answer = create(client, base, path, stream=True)
        assert answer.headers["content-type"].startswith("text/event-stream")
        events = sse_events(answer.text)
        assert [name for name, _ in events] == STREAM_EVENTS
        assert all(data["type"] == name for name, data in events)
        assert [data["sequence_number"] for _, data in events] == list(range(len(STREAM_EVENTS)))
        created = events[0][1]["response"]
        assert (created["status"], created["output"], created["usage"]) == ("in_progress", [], None)
        deltas = "".join(data["delta"] for name, data in events if name == "response.output_text.delta")
        assert deltas == "Simulated response from eastus. Chunk 2 of 3. Chunk 3 of 3."
        assert events[7][1]["text"] == deltas
        completed = events[-1][1]["response"]
        assert completed["status"] == "completed"
        assert completed["output"][0]["content"][0]["text"] == deltas
        assert completed["usage"]["output_tokens"] == 15  # 59 characters
        item_id = events[2][1]["item"]["id"]
        assert all(data["item_id"] == item_id for _, data in events[3:9])
        assert client.get(f"{base}{path}/{completed['id']}").json() == completed


def test_a_stream_is_stored_in_progress_until_it_completes() -> None:
    config = InstanceConfig("eastus", stream_chunks=3, stream_chunk_delay_s=0.2)
    with Simulator([config]) as sim, httpx.Client(timeout=5) as reader, httpx.Client(timeout=5) as other:
        url = sim.url("eastus") + V1
        body = {"model": "gpt-4o", "input": "hi", "stream": True}
        started = time.monotonic()
        with reader.stream("POST", url, json=body) as answer:
            lines = answer.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            first_at = time.monotonic() - started
            response_id = json.loads(first[6:])["response"]["id"]
            assert other.get(f"{url}/{response_id}").json()["status"] == "in_progress"
            rest = list(lines)
        assert first_at < 0.15
        assert time.monotonic() - started >= 0.35  # two delays between three chunks
        assert any('"response.completed"' in line for line in rest)
        assert other.get(f"{url}/{response_id}").json()["status"] == "completed"


def test_a_responses_stream_honours_start_latency_and_first_chunk_delay(client: httpx.Client) -> None:
    configs = [
        InstanceConfig("late", latency_s=0.3, stream_chunks=2),
        InstanceConfig("early", first_chunk_delay_s=0.3, stream_chunks=2),
    ]
    body = {"model": "gpt-4o", "input": "hi", "stream": True}
    with Simulator(configs) as sim:
        for name, headers_after in (("late", (0.3, 1.0)), ("early", (0.0, 0.2))):
            started = time.monotonic()
            with client.stream("POST", sim.url(name) + V1, json=body) as answer:
                headers_at = time.monotonic() - started
                first = next(line for line in answer.iter_lines() if line.startswith("data: "))
                first_at = time.monotonic() - started
            assert headers_after[0] <= headers_at < headers_after[1], name
            assert first_at >= 0.3, name
            assert json.loads(first[len("data: ") :])["type"] == "response.created"


def test_encrypted_reasoning_is_streamed_before_the_message(client: httpx.Client) -> None:
    with Simulator([InstanceConfig("eastus", stream_chunks=1)]) as sim:
        body = {"stream": True, "include": ["reasoning.encrypted_content"]}
        events = sse_events(create(client, sim.url("eastus"), V1, **body).text)
        assert [name for name, _ in events] == [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.output_item.done",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
        assert events[2][1]["item"]["type"] == "reasoning"
        assert [data["output_index"] for _, data in events[2:10]] == [0, 0, 1, 1, 1, 1, 1, 1]
        assert [item["type"] for item in events[-1][1]["response"]["output"]] == ["reasoning", "message"]


# -- background and cancel -----------------------------------------------------------------------


def test_background_response_completes_or_is_cancelled(client: httpx.Client) -> None:
    quick = InstanceConfig("quick", stream_chunks=2, stream_chunk_delay_s=0.05)
    slow = InstanceConfig("slow", stream_chunks=2, stream_chunk_delay_s=30)
    with Simulator([quick, slow]) as sim:
        done = create(client, sim.url("quick"), background=True).json()
        assert (done["status"], done["background"]) == ("queued", True)
        time.sleep(0.1)
        assert client.get(f"{sim.url('quick')}{AZURE}/{done['id']}").json()["status"] == "completed"
        assert client.post(f"{sim.url('quick')}{AZURE}/{done['id']}/cancel").json()["status"] == "completed"

        running = create(client, sim.url("slow"), background=True).json()
        cancelled = client.post(f"{sim.url('slow')}{AZURE}/{running['id']}/cancel").json()
        assert (cancelled["status"], cancelled["output"]) == ("cancelled", [])
        assert client.get(f"{sim.url('slow')}{AZURE}/{running['id']}").json()["status"] == "cancelled"

        synchronous = create(client, sim.url("slow")).json()
        refused = client.post(f"{sim.url('slow')}{AZURE}/{synchronous['id']}/cancel")
        assert refused.status_code == 400
        assert refused.json()["error"]["message"] == "Cannot cancel a synchronous response."


# -- tokens, rate limits, latency, failures ------------------------------------------------------


def test_tokens_charged_at_admission_and_usage_carries_the_chain(client: httpx.Client) -> None:
    # 60 tokens per window: "Hello there" costs 4 (3 + 1) plus max_output_tokens.
    config = InstanceConfig("eastus", tokens_per_minute=3600, window_s=1.0, header_style="reset-requests")
    with Simulator([config]) as sim:
        base = sim.url("eastus")
        first = create(client, base)
        assert first.headers["x-ratelimit-remaining-tokens"] == str(60 - 4 - DEFAULT_MAX_OUTPUT_TOKENS)
        usage = first.json()["usage"]
        assert usage["input_tokens"] == 4
        assert usage["output_tokens"] == 8  # "Simulated response from eastus." (31 characters)
        assert usage["total_tokens"] == 12

        second = create(client, base, previous_response_id=first.json()["id"], max_output_tokens=20)
        assert second.headers["x-ratelimit-remaining-tokens"] == str(60 - 20 - 24)
        assert second.json()["usage"]["input_tokens"] == 4 + 12  # this input plus the chain so far

        throttled = create(client, base, max_output_tokens=30)
        assert throttled.status_code == 429
        assert "x-ratelimit-reset-tokens" in throttled.headers
        assert "Responses_Create" in throttled.json()["error"]["message"]
        assert sim.stats("eastus").tokens == 44


def test_every_responses_endpoint_is_rate_limited(client: httpx.Client) -> None:
    config = InstanceConfig("eastus", requests_per_window=2, window_s=60)
    with Simulator([config]) as sim:
        base = sim.url("eastus")
        response_id = create(client, base).json()["id"]
        assert client.get(f"{base}{AZURE}/resp_unknown").status_code == 404  # uses the window's second
        throttled = client.get(f"{base}{AZURE}/{response_id}")
        assert throttled.status_code == 429
        assert throttled.headers["retry-after"].isdigit()
        assert "Responses_Get" in throttled.json()["error"]["message"]
        stats = sim.stats("eastus")
        assert (stats.served, stats.not_found, stats.throttled) == (1, 1, 1)


@pytest.mark.parametrize(("failure", "status"), [("500", 500), ("503", 503)])
def test_failing_instance_fails_the_responses_api(client: httpx.Client, failure: str, status: int) -> None:
    with Simulator([InstanceConfig("eastus", failure=failure)]) as sim:  # type: ignore[arg-type]
        assert create(client, sim.url("eastus")).status_code == status
        assert client.get(f"{sim.url('eastus')}{V1}/resp_1").status_code == status
        assert sim.stats("eastus").failed == 2


def test_latency_delays_answers_but_not_not_found(client: httpx.Client) -> None:
    with Simulator([InstanceConfig("eastus", latency_s=0.2)]) as sim:
        base = sim.url("eastus")
        started = time.monotonic()
        response_id = create(client, base).json()["id"]
        client.get(f"{base}{AZURE}/{response_id}")
        assert time.monotonic() - started >= 0.4
        started = time.monotonic()
        assert client.get(f"{base}{AZURE}/resp_unknown").status_code == 404
        assert time.monotonic() - started < 0.15


def test_azure_header_style_on_the_responses_api(client: httpx.Client) -> None:
    config = InstanceConfig("eastus", requests_per_window=1, window_s=60, header_style="azure")
    with Simulator([config]) as sim:
        served = create(client, sim.url("eastus"))
        assert served.headers["x-ratelimit-remaining-requests"] == "0"
        assert "x-ratelimit-limit-requests" not in served.headers
        assert "x-ratelimit-reset-requests" not in served.headers
        throttled = client.get(f"{sim.url('eastus')}{AZURE}/{served.json()['id']}")
        assert throttled.status_code == 429
        assert throttled.headers["retry-after"].isdigit()


def test_hanging_and_refusing_instances_hold_or_refuse_the_responses_api() -> None:
    with Simulator(
        [InstanceConfig("hang", failure="hang"), InstanceConfig("refuse", failure="refuse")]
    ) as sim:
        with httpx.Client(timeout=0.3) as short:
            with pytest.raises(httpx.ReadTimeout):
                create(short, sim.url("hang"))
            with pytest.raises(httpx.ConnectError):
                create(short, sim.url("refuse"))
        assert sim.stats("hang").in_flight == 1


def test_an_instance_keeps_a_bounded_number_of_objects(
    client: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stored_module, "MAX_STORED", 3)
    with Simulator([InstanceConfig("eastus")]) as sim:
        ids = [create(client, sim.url("eastus")).json()["id"] for _ in range(5)]
        assert [sim.instance("eastus").holds(response_id) for response_id in ids] == [
            False,
            False,
            True,
            True,
            True,
        ]
        assert client.get(f"{sim.url('eastus')}{AZURE}/{ids[0]}").status_code == 404


def test_api_key_is_required_when_set(client: httpx.Client) -> None:
    with Simulator([InstanceConfig("eastus", api_key="secret")]) as sim:
        base = sim.url("eastus")
        assert create(client, base).status_code == 401
        assert client.get(f"{base}{AZURE}/resp_1").status_code == 401
        ok = client.post(f"{base}{AZURE}", headers={"api-key": "secret"}, json={"model": "m", "input": "x"})
        assert ok.status_code == 200


def test_reset_stats_keeps_stored_objects(client: httpx.Client) -> None:
    with Simulator([InstanceConfig("eastus")]) as sim:
        response_id = create(client, sim.url("eastus")).json()["id"]
        sim.reset_stats()
        assert sim.stats("eastus").not_found == 0
        assert client.get(f"{sim.url('eastus')}{AZURE}/{response_id}").status_code == 200


# -- the real openai SDK -------------------------------------------------------------------------


SDK_INSTANCES = [
    InstanceConfig("eastus", stream_chunks=3),
    InstanceConfig("westus"),
    InstanceConfig("background", stream_chunks=2, stream_chunk_delay_s=30),
]


@pytest.mark.parametrize("form", ["azure", "v1"])
def test_openai_sdk_sync(form: str, http_lib: Any) -> None:
    openai = pytest.importorskip("openai")
    with Simulator(SDK_INSTANCES) as sim:
        east = sdk(openai, sim, "eastus", form, http_lib, is_async=False)
        west = sdk(openai, sim, "westus", form, http_lib, is_async=False)
        background = sdk(openai, sim, "background", form, http_lib, is_async=False)
        with east, west, background:
            first = east.responses.create(model="gpt-4o", input="Hello")
            assert first.output_text == "Simulated response from eastus."
            assert first.usage.total_tokens == first.usage.input_tokens + first.usage.output_tokens

            stream = east.responses.create(
                model="gpt-4o", input="More", previous_response_id=first.id, stream=True
            )
            events = list(stream)
            assert [event.type for event in events] == STREAM_EVENTS
            second = events[-1].response
            assert second.previous_response_id == first.id

            with east.responses.stream(
                model="gpt-4o", input="Again", previous_response_id=second.id
            ) as helper:
                for _ in helper:
                    pass
                third = helper.get_final_response()
            assert third.output_text.startswith("Simulated response from eastus.")

            assert east.responses.retrieve(second.id).status == "completed"
            [item] = east.responses.input_items.list(third.id)
            assert item.content[0].text == "Again"

            running = background.responses.create(model="gpt-4o", input="Later", background=True)
            assert background.responses.cancel(running.id).status == "cancelled"

            with pytest.raises(openai.BadRequestError) as refused:
                west.responses.create(model="gpt-4o", input="x", previous_response_id=first.id)
            assert refused.value.code == "previous_response_not_found"
            with pytest.raises(openai.NotFoundError):
                west.responses.retrieve(first.id)

            assert east.responses.delete(first.id) is None
            with pytest.raises(openai.NotFoundError):
                east.responses.retrieve(first.id)
        assert sim.stats("westus").not_found == 2


@pytest.mark.parametrize("form", ["azure", "v1"])
async def test_openai_sdk_async(form: str, http_lib: Any) -> None:
    openai = pytest.importorskip("openai")
    async with Simulator(SDK_INSTANCES) as sim:
        east = sdk(openai, sim, "eastus", form, http_lib, is_async=True)
        west = sdk(openai, sim, "westus", form, http_lib, is_async=True)
        background = sdk(openai, sim, "background", form, http_lib, is_async=True)
        async with east, west, background:
            first = await east.responses.create(model="gpt-4o", input="Hello")
            assert first.output_text == "Simulated response from eastus."

            stream = await east.responses.create(
                model="gpt-4o", input="More", previous_response_id=first.id, stream=True
            )
            events = [event async for event in stream]
            assert [event.type for event in events] == STREAM_EVENTS
            second = events[-1].response

            async with east.responses.stream(
                model="gpt-4o", input="Again", previous_response_id=second.id
            ) as helper:
                async for _ in helper:
                    pass
                third = await helper.get_final_response()
            assert third.previous_response_id == second.id

            assert (await east.responses.retrieve(second.id)).status == "completed"
            items = [item async for item in east.responses.input_items.list(third.id)]
            assert [item.content[0].text for item in items] == ["Again"]

            running = await background.responses.create(model="gpt-4o", input="Later", background=True)
            assert (await background.responses.cancel(running.id)).status == "cancelled"

            with pytest.raises(openai.BadRequestError) as refused:
                await west.responses.create(model="gpt-4o", input="x", previous_response_id=first.id)
            assert refused.value.code == "previous_response_not_found"
            with pytest.raises(openai.NotFoundError):
                await west.responses.input_items.list(first.id)

            assert await east.responses.delete(first.id) is None
        assert sim.stats("westus").not_found == 2
