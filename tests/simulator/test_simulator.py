"""The Azure OpenAI simulator: HTTP behaviour, rate limits, failure modes, counters, CLI."""

from __future__ import annotations

import base64
import http.client
import json
import math
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx
import pytest

import openai_priority_loadbalancer.simulator as simulator_package
from openai_priority_loadbalancer.simulator import InstanceConfig, InstanceStats, Simulator
from openai_priority_loadbalancer.simulator._cli import main, parse_instance
from openai_priority_loadbalancer.simulator._instance import format_duration

CHAT = "/openai/deployments/gpt-4o/chat/completions?api-version=2024-06-01"
EMBEDDINGS = "/openai/deployments/embed/embeddings?api-version=2024-06-01"
MESSAGES = [{"role": "user", "content": "Hello there"}]
PACKAGE_DIR = Path(simulator_package.__file__).resolve().parents[1]
SRC_DIR = PACKAGE_DIR.parent


@pytest.fixture
def client():
    with httpx.Client(timeout=5) as http_client:
        yield http_client


def chat(client: httpx.Client, sim: Simulator, name: str, **body) -> httpx.Response:
    return client.post(sim.url(name) + CHAT, json={"messages": MESSAGES, **body})


def simulator_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "openai-simulator"]


def parse_duration(text: str) -> float:
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m(?!s))?(?:([\d.]+)s)?(?:(\d+)ms)?", text)
    assert match, text
    hours, minutes, seconds, ms = match.groups()
    return int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds or 0) + int(ms or 0) / 1000


# -- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"name": ""}, ValueError),
        ({"name": "a,b"}, ValueError),
        ({"name": 3}, TypeError),
        ({"requests_per_window": -1}, ValueError),
        ({"requests_per_window": 1.5}, TypeError),
        ({"window_s": 0}, ValueError),
        ({"window_s": float("inf")}, ValueError),
        ({"tokens_per_minute": 0}, ValueError),
        ({"latency_s": -0.1}, ValueError),
        ({"first_chunk_delay_s": -1}, ValueError),
        ({"first_chunk_delay_s": "1"}, TypeError),
        ({"stream_chunks": 0}, ValueError),
        ({"failure": "404"}, ValueError),
        ({"header_style": "retry-after-seconds"}, ValueError),
        ({"api_key": ""}, ValueError),
        ({"port": 70000}, ValueError),
        ({"ratelimit_headers": "yes"}, TypeError),
    ],
)
def test_invalid_config_is_rejected(changes, error):
    values = {"name": "eastus", **changes}
    with pytest.raises(error):
        InstanceConfig(**values)


def test_simulator_rejects_duplicates_and_empty():
    with pytest.raises(ValueError, match="twice"):
        Simulator([InstanceConfig("a"), InstanceConfig("a")])
    with pytest.raises(ValueError, match="twice"):
        Simulator([InstanceConfig("a", port=8999), InstanceConfig("b", port=8999)])
    with pytest.raises(ValueError, match="at least one"):
        Simulator([])
    with pytest.raises(RuntimeError, match="not been started"):
        _ = Simulator([InstanceConfig("a")]).url("a")


def test_tokens_per_window_is_pro_rata():
    assert InstanceConfig("a", tokens_per_minute=6000, window_s=1).tokens_per_window == 100
    assert InstanceConfig("a", tokens_per_minute=6000, window_s=60).tokens_per_window == 6000
    assert InstanceConfig("a").tokens_per_window is None


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.25, "250ms"), (0.0001, "1ms"), (1.0, "1s"), (1.2504, "1.251s"), (360, "6m0s"), (3723.5, "1h2m3.5s")],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


# -- requests and answers -----------------------------------------------------------------------


def test_chat_completion_like_azure(client):
    with Simulator([InstanceConfig("eastus", requests_per_window=5)]) as sim:
        response = chat(client, sim, "eastus", max_tokens=20)
        assert response.status_code == 200
        body = response.json()
        assert body["object"] == "chat.completion"
        assert body["id"].startswith("chatcmpl-eastus-")
        assert body["model"] == "gpt-4o"
        assert isinstance(body["created"], int)
        choice = body["choices"][0]
        assert choice["message"]["role"] == "assistant"
        assert "eastus" in choice["message"]["content"]
        assert choice["finish_reason"] == "stop"
        usage = body["usage"]
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
        headers = response.headers
        assert headers["x-simulator-instance"] == "eastus"
        assert headers["x-request-id"] == headers["apim-request-id"]
        assert headers["x-ratelimit-limit-requests"] == "5"
        assert headers["x-ratelimit-remaining-requests"] == "4"
        assert 0.9 <= parse_duration(headers["x-ratelimit-reset-requests"]) <= 1.0
        assert "x-ratelimit-limit-tokens" not in headers
        assert int(headers["content-length"]) == len(response.content)


def test_unlimited_instance_sends_no_budget_headers(client):
    with Simulator(
        [InstanceConfig("eastus"), InstanceConfig("quiet", requests_per_window=2, ratelimit_headers=False)]
    ) as sim:
        assert not any(name.startswith("x-ratelimit") for name in chat(client, sim, "eastus").headers)
        assert not any(name.startswith("x-ratelimit") for name in chat(client, sim, "quiet").headers)
        chat(client, sim, "quiet")
        throttled = chat(client, sim, "quiet")
        assert throttled.status_code == 429
        assert not any(name.startswith("x-ratelimit") for name in throttled.headers)
        assert throttled.headers["retry-after"] == "1"


def test_v1_form_takes_the_model_from_the_body(client):
    with Simulator([InstanceConfig("eastus")]) as sim:
        response = client.post(
            sim.url("eastus") + "/openai/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": MESSAGES},
        )
        assert response.status_code == 200
        assert response.json()["model"] == "gpt-4o-mini"
        embeddings = client.post(
            sim.url("eastus") + "/openai/v1/embeddings", json={"model": "emb", "input": "x"}
        )
        assert embeddings.status_code == 200
        assert embeddings.json()["model"] == "emb"
        missing = client.post(sim.url("eastus") + "/openai/v1/chat/completions", json={"messages": MESSAGES})
        assert missing.status_code == 400
        assert sim.stats("eastus").rejected == 1


def test_embeddings_as_floats_and_base64(client):
    with Simulator([InstanceConfig("eastus")]) as sim:
        response = client.post(sim.url("eastus") + EMBEDDINGS, json={"input": ["one", "two", "three"]})
        assert response.status_code == 200
        body = response.json()
        assert body["object"] == "list"
        assert [item["index"] for item in body["data"]] == [0, 1, 2]
        assert all(len(item["embedding"]) == 8 for item in body["data"])
        assert body["data"][0]["embedding"] != body["data"][1]["embedding"]
        assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] == 4  # "three" is 2 tokens
        packed = client.post(
            sim.url("eastus") + EMBEDDINGS,
            json={"input": "one", "encoding_format": "base64", "dimensions": 4},
        ).json()["data"][0]["embedding"]
        assert len(struct.unpack("<4f", base64.b64decode(packed))) == 4
        assert client.post(sim.url("eastus") + EMBEDDINGS, json={"input": [1, 2, 3]}).status_code == 200
        assert client.post(sim.url("eastus") + EMBEDDINGS, json={"input": {}}).status_code == 400


def test_unknown_path_bad_json_and_wrong_method(client):
    with Simulator([InstanceConfig("eastus", requests_per_window=10)]) as sim:
        url = sim.url("eastus")
        not_found = client.post(url + "/openai/deployments/gpt-4o/completions", json={})
        assert not_found.status_code == 404
        assert not_found.json()["error"]["code"] == "404"
        assert client.post(url + "/nowhere", json={}).status_code == 404
        bad = client.post(url + CHAT, content=b"{not json", headers={"content-type": "application/json"})
        assert bad.status_code == 400
        assert "error" in bad.json()
        assert client.post(url + CHAT, json=[1, 2]).status_code == 400
        assert client.post(url + CHAT, json={"messages": []}).status_code == 400
        assert client.get(url + CHAT).status_code == 405
        stats = sim.stats("eastus")
        assert (stats.received, stats.rejected, stats.served, stats.throttled) == (6, 6, 0, 0)
        assert stats.window_start is None  # rejected requests do not open a window


def test_api_key_is_required_when_set(client):
    with Simulator([InstanceConfig("eastus", api_key="secret")]) as sim:
        denied = chat(client, sim, "eastus")
        assert denied.status_code == 401
        assert denied.json()["error"]["code"] == "401"
        assert "Access denied" in denied.json()["error"]["message"]
        wrong = client.post(
            sim.url("eastus") + CHAT, json={"messages": MESSAGES}, headers={"api-key": "nope"}
        )
        assert wrong.status_code == 401
        with_key = client.post(
            sim.url("eastus") + CHAT, json={"messages": MESSAGES}, headers={"api-key": "secret"}
        )
        assert with_key.status_code == 200
        bearer = client.post(
            sim.url("eastus") + CHAT, json={"messages": MESSAGES}, headers={"authorization": "Bearer secret"}
        )
        assert bearer.status_code == 200
        stats = sim.stats("eastus")
        assert (stats.received, stats.unauthorized, stats.served) == (4, 2, 2)


def test_keep_alive_reuses_one_connection_and_accepts_chunked_bodies():
    with Simulator([InstanceConfig("eastus")]) as sim:
        connection = http.client.HTTPConnection("127.0.0.1", sim.instance("eastus").port, timeout=5)
        try:
            body = json.dumps({"messages": MESSAGES}).encode()
            sockets = set()
            for _ in range(3):
                connection.request("POST", CHAT, body=body, headers={"content-type": "application/json"})
                response = connection.getresponse()
                assert response.status == 200
                response.read()
                sockets.add(id(connection.sock))
            assert len(sockets) == 1
            pieces = iter([body[:10], body[10:]])
            connection.request(
                "POST", CHAT, body=pieces, encode_chunked=True, headers={"expect": "100-continue"}
            )
            response = connection.getresponse()
            assert response.status == 200
            assert json.loads(response.read())["object"] == "chat.completion"
        finally:
            connection.close()
        assert sim.stats("eastus").served == 4


def test_pipelined_requests_are_answered_in_order():
    with Simulator([InstanceConfig("eastus", latency_s=0.02)]) as sim:
        body = json.dumps({"messages": MESSAGES}).encode()
        one = b"POST %s HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (
            CHAT.encode(),
            len(body),
            body,
        )
        with socket.create_connection(("127.0.0.1", sim.instance("eastus").port), timeout=5) as sock:
            sock.sendall(one * 2 + b"GET /nowhere HTTP/1.0\r\n\r\n")
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
        statuses = re.findall(rb"HTTP/1.1 (\d+)", received)
        assert statuses == [b"200", b"200", b"404"]
        assert b"chatcmpl-eastus-1" in received.split(b"chatcmpl-eastus-2")[0]


# -- rate limits --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "style",
    [
        "retry-after",
        "retry-after-float",
        "http-date",
        "retry-after-ms",
        "reset-requests",
        "azure",
        "retry-after-0",
    ],
)
def test_capacity_then_429_with_each_header_style(client, style):
    config = InstanceConfig("eastus", requests_per_window=3, window_s=1.5, header_style=style)
    with Simulator([config]) as sim:
        assert [chat(client, sim, "eastus").status_code for _ in range(3)] == [200, 200, 200]
        time.sleep(0.2)
        throttled = chat(client, sim, "eastus")
        now, wall = time.monotonic(), time.time()
        assert throttled.status_code == 429
        stats = sim.stats("eastus")
        assert stats.window_start is not None
        expected = stats.window_start + 1.5 - now  # about 1.3 s
        headers = throttled.headers
        error = throttled.json()["error"]
        assert error["code"] == "429"
        assert (
            "ChatCompletions_Create Operation under Azure OpenAI API version 2024-06-01" in error["message"]
        )
        assert f"Please retry after {math.ceil(expected)} seconds" in error["message"]
        assert headers["x-simulator-instance"] == "eastus"
        assert headers["x-ratelimit-remaining-requests"] == "0"
        if style in ("retry-after", "azure"):
            assert headers["retry-after"] == str(math.ceil(expected))
            assert "retry-after-ms" not in headers
        elif style == "retry-after-float":
            assert abs(float(headers["retry-after"]) - expected) < 0.05
        elif style == "http-date":
            at = parsedate_to_datetime(headers["retry-after"]).timestamp()
            assert wall + expected - 0.05 <= at <= wall + expected + 1.05
        elif style == "retry-after-ms":
            assert abs(int(headers["retry-after-ms"]) / 1000 - expected) < 0.05
            assert headers["retry-after"] == str(math.ceil(expected))
        elif style == "retry-after-0":
            assert headers["retry-after"] == "0"
            assert "retry-after-ms" not in headers
        else:
            assert "retry-after" not in headers
            assert abs(parse_duration(headers["x-ratelimit-reset-requests"]) - expected) < 0.05
        assert (stats.received, stats.served, stats.throttled) == (4, 3, 1)


def test_azure_style_reports_only_what_remains(client):
    """Like Azure OpenAI: the remaining counts on every answer, never the limit or the reset."""
    config = InstanceConfig("eastus", requests_per_window=2, tokens_per_minute=6000, header_style="azure")
    with Simulator([config]) as sim:
        answers = [chat(client, sim, "eastus") for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert [a.headers["x-ratelimit-remaining-requests"] for a in answers] == ["1", "0", "0"]
    for answer in answers:
        assert "x-ratelimit-remaining-tokens" in answer.headers
        assert not [n for n in answer.headers if n.startswith(("x-ratelimit-limit", "x-ratelimit-reset"))]
        assert "retry-after-ms" not in answer.headers
    assert answers[2].headers["retry-after"] == "1"


def test_window_resets_and_served_per_window(client):
    with Simulator(
        [InstanceConfig("eastus", requests_per_window=2, window_s=0.3, header_style="retry-after-ms")]
    ) as sim:
        statuses = [chat(client, sim, "eastus").status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        time.sleep(sim.stats("eastus").window_start + 0.31 - time.monotonic())
        assert [chat(client, sim, "eastus").status_code for _ in range(3)] == [200, 200, 429]
        stats = sim.stats("eastus")
        assert stats.served_per_window == (2, 2)
        assert [record.outcome for record in stats.records] == ["served", "served", "throttled"] * 2
        arrivals = [record.arrival for record in stats.records]
        assert arrivals == sorted(arrivals)
        assert arrivals[0] == stats.window_start

        sim.reset_stats("eastus")
        fresh = sim.stats("eastus")
        assert (fresh.received, fresh.served, fresh.records, fresh.window_start) == (0, 0, (), None)
        assert [chat(client, sim, "eastus").status_code for _ in range(2)] == [200, 200]


def test_token_budget_counts_max_tokens_up_front(client):
    # 6000 tokens per minute in 1 s windows: 100 tokens per window; each request costs 4 + 40.
    config = InstanceConfig("eastus", tokens_per_minute=6000, window_s=1, header_style="reset-requests")
    with Simulator([config]) as sim:
        first = chat(client, sim, "eastus", max_tokens=40)
        assert first.status_code == 200
        assert first.headers["x-ratelimit-limit-tokens"] == "100"
        assert first.headers["x-ratelimit-remaining-tokens"] == "56"
        assert chat(client, sim, "eastus", max_tokens=40).status_code == 200
        throttled = chat(client, sim, "eastus", max_tokens=40)
        assert throttled.status_code == 429
        assert "token rate limit" in throttled.json()["error"]["message"]
        assert 0 < parse_duration(throttled.headers["x-ratelimit-reset-tokens"]) <= 1
        assert "x-ratelimit-reset-requests" not in throttled.headers
        assert chat(client, sim, "eastus", max_tokens=5).status_code == 200  # 9 tokens still fit
        stats = sim.stats("eastus")
        assert (stats.served, stats.throttled, stats.tokens) == (3, 1, 44 + 44 + 9)


def test_counters_are_exact_under_concurrency():
    config = InstanceConfig("eastus", requests_per_window=25, window_s=10)
    with Simulator([config]) as sim:
        url = sim.url("eastus") + CHAT

        def burst(_: int) -> list[int]:
            with httpx.Client(timeout=5) as http_client:
                return [http_client.post(url, json={"messages": MESSAGES}).status_code for _ in range(20)]

        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = [status for result in pool.map(burst, range(8)) for status in result]
        assert statuses.count(200) == 25
        assert statuses.count(429) == 135
        stats = sim.stats("eastus")
        assert (stats.received, stats.served, stats.throttled, stats.in_flight) == (160, 25, 135, 0)
        assert stats.served_per_window == (25,)


# -- failure modes ------------------------------------------------------------------------------


@pytest.mark.parametrize(("failure", "status"), [("500", 500), ("503", 503)])
def test_failing_instance_answers_5xx(client, failure, status):
    with Simulator([InstanceConfig("eastus", failure=failure)]) as sim:
        response = chat(client, sim, "eastus")
        assert response.status_code == status
        assert response.headers["x-simulator-instance"] == "eastus"
        assert "error" in response.json()
        stats = sim.stats("eastus")
        assert (stats.received, stats.failed, stats.served) == (1, 1, 0)


def test_refusing_instance_and_switching_at_runtime(client):
    with Simulator([InstanceConfig("eastus", failure="refuse")]) as sim:
        port = sim.instance("eastus").port
        with pytest.raises(httpx.ConnectError):
            chat(client, sim, "eastus")
        assert sim.stats("eastus").received == 0

        sim.update("eastus", failure=None)
        assert sim.instance("eastus").port == port
        assert chat(client, sim, "eastus").status_code == 200
        sim.update("eastus", failure="503")
        assert chat(client, sim, "eastus").status_code == 503
        sim.update("eastus", failure="refuse")
        with pytest.raises(httpx.ConnectError):
            chat(client, sim, "eastus")
        sim.update("eastus", failure=None, requests_per_window=0)
        assert chat(client, sim, "eastus").status_code == 429
        stats = sim.stats("eastus")
        assert (stats.received, stats.served, stats.failed, stats.throttled) == (3, 1, 1, 1)
        with pytest.raises(ValueError, match="name or port"):
            sim.update("eastus", port=1)


def test_hanging_instance_holds_requests_and_stops_promptly():
    sim = Simulator(
        [InstanceConfig("eastus", failure="hang"), InstanceConfig("slow", stream_chunk_delay_s=5)]
    )
    with sim, httpx.Client(timeout=httpx.Timeout(5, read=0.2)) as http_client:
        with pytest.raises(httpx.ReadTimeout):
            chat(http_client, sim, "eastus")
        stats = sim.stats("eastus")
        assert (stats.received, stats.in_flight, stats.served) == (1, 1, 0)
        assert stats.records[0].outcome == "hung"
        # Leave a hung request, a slow stream and an idle keep-alive connection open while stopping.
        hung = socket.create_connection(("127.0.0.1", sim.instance("eastus").port))
        hung.sendall(b"POST /x HTTP/1.1\r\ncontent-length: 0\r\n\r\n")
        streaming = socket.create_connection(("127.0.0.1", sim.instance("slow").port))
        body = json.dumps({"messages": MESSAGES, "stream": True}).encode()
        streaming.sendall(
            b"POST %s HTTP/1.1\r\ncontent-length: %d\r\n\r\n%s" % (CHAT.encode(), len(body), body)
        )
        assert streaming.recv(65536).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        sim.stop()
        assert time.monotonic() - started < 1
        assert hung.recv(100) == b""
        hung.close()
        streaming.close()
    assert not simulator_threads()


def test_latency_delays_the_answer_and_counts_in_flight(client):
    with Simulator([InstanceConfig("eastus", latency_s=0.3)]) as sim, ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        pending = pool.submit(chat, client, sim, "eastus")
        time.sleep(0.1)
        assert sim.stats("eastus").in_flight == 1
        assert pending.result().status_code == 200
        assert time.monotonic() - started >= 0.3
        assert sim.stats("eastus").in_flight == 0


# -- streaming and the openai SDK ---------------------------------------------------------------


def test_stream_is_delivered_incrementally(client):
    config = InstanceConfig("eastus", stream_chunks=4, stream_chunk_delay_s=0.15)
    with Simulator([config]) as sim:
        started = time.monotonic()
        body = {"messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
        with client.stream("POST", sim.url("eastus") + CHAT, json=body) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["transfer-encoding"] == "chunked"
            events = []
            first_at = None
            for line in response.iter_lines():
                if line.startswith("data: "):
                    first_at = first_at or time.monotonic() - started
                    events.append(line[len("data: ") :])
        total = time.monotonic() - started
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert [chunk["object"] for chunk in chunks] == ["chat.completion.chunk"] * 5
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[3]["choices"][0]["finish_reason"] == "stop"
    assert chunks[4]["choices"] == []
    assert chunks[4]["usage"]["total_tokens"] > 0
    assert first_at is not None
    assert first_at < 0.1
    assert total >= 0.45


def test_stream_start_latency_and_first_chunk_delay(client):
    """``latency_s`` holds back a stream's headers; ``first_chunk_delay_s`` only its first chunk."""
    configs = [
        InstanceConfig("late", latency_s=0.3, stream_chunks=2),
        InstanceConfig("early", first_chunk_delay_s=0.3, stream_chunks=2),
    ]
    body = {"messages": MESSAGES, "stream": True}
    with Simulator(configs) as sim:
        for name, headers_after in (("late", (0.3, 1.0)), ("early", (0.0, 0.2))):
            started = time.monotonic()
            with client.stream("POST", sim.url(name) + CHAT, json=body) as response:
                headers_at = time.monotonic() - started
                assert response.status_code == 200
                lines = response.iter_lines()
                first = next(line for line in lines if line.startswith("data: "))
                first_at = time.monotonic() - started
                rest = [line for line in lines if line.startswith("data: ")]
            assert headers_after[0] <= headers_at < headers_after[1], name
            assert first_at >= 0.3, name
            assert json.loads(first[len("data: ") :])["choices"][0]["delta"]["role"] == "assistant"
            assert rest[-1] == "data: [DONE]"
        # A non-streamed answer is not held back by first_chunk_delay_s.
        started = time.monotonic()
        assert chat(client, sim, "early").status_code == 200
        assert time.monotonic() - started < 0.2


def test_openai_sdk_plain_stream_and_embeddings():
    openai = pytest.importorskip("openai")
    config = InstanceConfig(
        "eastus", stream_chunks=5, stream_chunk_delay_s=0.1, requests_per_window=10, window_s=30
    )
    with Simulator([config]) as sim:
        with openai.AzureOpenAI(
            azure_endpoint=sim.url("eastus"), api_key="k", api_version="2024-06-01", max_retries=0
        ) as sdk:
            completion = sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES)
            assert completion.id.startswith("chatcmpl-eastus-")
            assert "eastus" in completion.choices[0].message.content
            assert completion.usage.total_tokens > 0

            started = time.monotonic()
            stream = sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
            arrivals = []
            text = ""
            for chunk in stream:
                arrivals.append(time.monotonic() - started)
                if chunk.choices and chunk.choices[0].delta.content:
                    text += chunk.choices[0].delta.content
            assert len(arrivals) == 5
            assert "eastus" in text
            assert arrivals[0] < arrivals[-1] - 0.3  # the first chunk came long before the last

            embedding = sdk.embeddings.create(model="embed", input="hello")  # the SDK asks for base64
            assert len(embedding.data[0].embedding) == 8

            for _ in range(7):
                sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES)
            with pytest.raises(openai.RateLimitError):
                sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        stats = sim.stats("eastus")
        assert (stats.served, stats.throttled) == (10, 1)


async def test_async_context_manager():
    async with (
        Simulator([InstanceConfig("eastus", latency_s=0.05)]) as sim,
        httpx.AsyncClient() as http_client,
    ):
        response = await http_client.post(sim.url("eastus") + CHAT, json={"messages": MESSAGES})
        assert response.status_code == 200
        assert sim.stats("eastus").served == 1
    assert not simulator_threads()


# -- lifecycle, packaging, speed ----------------------------------------------------------------


def test_lifecycle_leaves_no_thread_and_cannot_restart():
    sim = Simulator([InstanceConfig("eastus")])
    with pytest.raises(RuntimeError, match="not been started"):
        _ = sim.instances[0].url
    with sim:
        assert sim.running
        assert len(simulator_threads()) == 1
        assert isinstance(sim.instances[0].stats, InstanceStats)
    assert not sim.running
    assert not simulator_threads()
    sim.stop()  # idempotent
    with pytest.raises(RuntimeError, match="only once"):
        sim.start()


def test_port_in_use_raises_and_releases_the_others():
    with Simulator([InstanceConfig("eastus")]) as running:
        taken = running.instance("eastus").port
        sim = Simulator([InstanceConfig("free"), InstanceConfig("clash", port=taken)])
        with pytest.raises(OSError, match="in use"):
            sim.start()
    assert not simulator_threads()


def test_simulator_needs_only_the_standard_library():
    code = textwrap.dedent(
        f"""
        import json, sys, types, urllib.request
        for blocked in ("httpx", "httpx2", "h11", "httpcore", "anyio"):
            sys.modules[blocked] = None
        # Import the simulator without the balancer's own __init__ (which needs httpx or httpx2).
        package = types.ModuleType("openai_priority_loadbalancer")
        package.__path__ = [{str(PACKAGE_DIR)!r}]
        sys.modules["openai_priority_loadbalancer"] = package
        from openai_priority_loadbalancer.simulator import InstanceConfig, Simulator

        with Simulator([InstanceConfig("eastus")]) as sim:
            request = urllib.request.Request(
                sim.url("eastus") + {CHAT!r},
                data=json.dumps({{"messages": [{{"role": "user", "content": "hi"}}]}}).encode(),
                headers={{"content-type": "application/json"}},
            )
            with urllib.request.urlopen(request, timeout=5) as response:
                assert response.status == 200
                assert response.headers["x-simulator-instance"] == "eastus"
        foreign = {{
            name.partition(".")[0] for name in sys.modules
            if sys.modules[name] is not None and not name.startswith("openai_priority_loadbalancer")
        }} - set(sys.stdlib_module_names) - {{"__main__", "_distutils_hack"}}
        assert not foreign, foreign
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=20
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_package_path_imports_without_httpx():
    code = textwrap.dedent(
        """
        import sys
        for blocked in ("httpx", "httpx2"):
            sys.modules[blocked] = None
        import openai_priority_loadbalancer.simulator
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), timeout=20
    )
    assert result.returncode == 0, result.stderr


def test_one_keep_alive_connection_serves_a_thousand_requests():
    # How fast it serves them is the benchmarks' business (about 6,000/s on an idle 2-core machine):
    # a timed bound here failed whenever the machine was busy.
    with Simulator([InstanceConfig("eastus", requests_per_window=1_000_000)]) as sim:
        connection = http.client.HTTPConnection("127.0.0.1", sim.instance("eastus").port, timeout=5)
        body = json.dumps({"messages": MESSAGES}).encode()
        count = 1000
        try:
            for _ in range(count):
                connection.request("POST", CHAT, body=body, headers={"content-type": "application/json"})
                response = connection.getresponse()
                response.read()
                assert response.status == 200
        finally:
            connection.close()
        assert sim.stats("eastus").served == count


# -- command line -------------------------------------------------------------------------------


def test_parse_instance_spec():
    config = parse_instance("eastus,rpw=4,window=0.5,latency=0.05,style=retry-after-ms,port=8081,tpm=none")
    assert config == InstanceConfig(
        "eastus",
        requests_per_window=4,
        window_s=0.5,
        latency_s=0.05,
        header_style="retry-after-ms",
        port=8081,
    )
    long_form = parse_instance(
        "name=b,requests_per_window=unlimited,failure=hang,key=k,headers=false,chunks=3,first_chunk=2.5"
    )
    assert long_form == InstanceConfig(
        "b", failure="hang", api_key="k", ratelimit_headers=False, stream_chunks=3, first_chunk_delay_s=2.5
    )
    for bad in ("rpw=4", "a,bogus=1", "a,rpw=x", "a,rpw", "a,style=nope", "a,rpw=1,rpw=2"):
        with pytest.raises(ValueError, match="--instance"):
            parse_instance(bad)


def test_cli_config_file_and_duration(tmp_path, capsys):
    path = tmp_path / "sim.json"
    path.write_text(json.dumps({"instances": [{"name": "one", "rpw": 2}, {"name": "two", "window_s": 2}]}))
    assert main(["--config", str(path), "--instance", "three", "--duration", "0"]) == 0
    out = capsys.readouterr().out
    assert re.findall(r"^(\w+) http://127\.0\.0\.1:\d+", out, re.MULTILINE) == ["three", "one", "two"]
    assert "received" in out
    path.write_text("[{}]")
    with pytest.raises(SystemExit):
        main(["--config", str(path)])


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC_DIR), env.get("PYTHONPATH")]))
    return env


def test_cli_help():
    result = subprocess.run(
        [sys.executable, "-m", "openai_priority_loadbalancer.simulator", "--help"],
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=20,
    )
    assert result.returncode == 0
    assert "--instance" in result.stdout
    assert "--config" in result.stdout
    assert "retry-after-ms" in result.stdout


def test_cli_runs_until_sigint_and_prints_counters(client):
    command = [
        sys.executable,
        "-m",
        "openai_priority_loadbalancer.simulator",
        "--instance",
        "eastus,rpw=1,window=30",
        "--instance",
        "name=westus,style=retry-after-ms",
    ]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env()
    ) as process:
        try:
            assert process.stdout is not None
            urls = {}
            for _ in range(2):
                name, url = process.stdout.readline().split()[:2]
                urls[name] = url
            assert set(urls) == {"eastus", "westus"}
            assert client.post(urls["eastus"] + CHAT, json={"messages": MESSAGES}).status_code == 200
            assert client.post(urls["eastus"] + CHAT, json={"messages": MESSAGES}).status_code == 429
            assert client.post(urls["westus"] + CHAT, json={"messages": MESSAGES}).status_code == 200
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    assert process.returncode == 0, err
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.split()}
    assert rows["instance"][:3] == ["received", "served", "throttled"]
    assert rows["eastus"][:3] == ["2", "1", "1"]
    assert rows["westus"][:3] == ["1", "1", "0"]


def test_listening_sockets_are_tcp_so_connections_get_tcp_nodelay() -> None:
    """asyncio sets TCP_NODELAY only on sockets made with IPPROTO_TCP; without it, a streamed answer's
    first chunk on a kept-alive connection waits ~40 ms for the client's delayed ACK."""
    with Simulator([InstanceConfig("a")]) as sim:
        sock = sim.instance("a")._runtime._sock
        assert sock.proto == socket.IPPROTO_TCP
