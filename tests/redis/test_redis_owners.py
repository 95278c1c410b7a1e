"""RedisStateStore as an OwnerStore: the backends of stored objects, shared by every balancer."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

import httpx
import openai
import pytest
from _redis_support import script_reports

from openai_priority_loadbalancer import AsyncLoadBalancer, Backend, LoadBalancer, OwnerStore, shared_key
from openai_priority_loadbalancer.redis import RedisStateStore
from openai_priority_loadbalancer.simulator import InstanceConfig, Simulator

if TYPE_CHECKING:
    from _redis_support import RedisServer

    import redis

pytestmark = pytest.mark.redis

BACKENDS = [Backend("a.example", 1), Backend("b.example", 1), Backend("c.example", 1)]
URL = "https://caller.example/openai/v1/responses"


def test_owners_round_trip_with_an_expiry(store: RedisStateStore, raw: redis.Redis) -> None:
    assert isinstance(store, OwnerStore)
    store.set_owners(["resp_1", "msg_1"], "https://a.example:443/", 3600.0)
    assert store.owners(["resp_1", "resp_2", "msg_1"]) == [
        "https://a.example:443/",
        None,
        "https://a.example:443/",
    ]
    assert raw.get("oplb:obj:resp_1") == b"https://a.example:443/"
    assert 3_590_000 < raw.pttl("oplb:obj:resp_1") <= 3_600_000
    assert store.owners([]) == []


def test_owners_round_trip_async(store: RedisStateStore) -> None:
    async def main() -> None:
        await store.aset_owners(["conv_1"], "https://b.example:443/", 60.0)
        assert await store.aowners(["conv_1", "conv_2"]) == ["https://b.example:443/", None]
        await store.aclose()

    asyncio.run(main())


def test_redis_down_means_no_owner_and_no_error(redis_server: RedisServer) -> None:
    store = RedisStateStore.from_url(redis_server.url)
    store.set_owners(["resp_1"], "k", 60.0)
    redis_server.kill()
    assert store.owners(["resp_1"]) == [None]
    store.set_owners(["resp_2"], "k", 60.0)  # no error
    store.close()


class Resources:
    """Three resources, each holding the responses it created (400 previous_response_not_found elsewhere)."""

    def __init__(self) -> None:
        self.objects: dict[str, str] = {}
        self.not_found = 0
        self.count = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        body = json.loads(request.content)
        previous = body.get("previous_response_id")
        if previous is not None and self.objects.get(previous) != host:
            self.not_found += 1
            return httpx.Response(400, json={"error": {"code": "previous_response_not_found"}})
        self.count += 1
        response_id = f"resp_{self.count}"
        self.objects[response_id] = host
        return httpx.Response(200, json={"id": response_id, "object": "response"})


def test_a_second_worker_continues_the_first_ones_chains(redis_server: RedisServer) -> None:
    resources = Resources()
    first_store = RedisStateStore.from_url(redis_server.url)
    second_store = RedisStateStore.from_url(redis_server.url)  # as another process would have
    first = httpx.Client(
        transport=LoadBalancer(BACKENDS, transport=httpx.MockTransport(resources), state=first_store)
    )
    ids = [first.post(URL, json={"input": "x"}).json()["id"] for _ in range(9)]
    assert len({resources.objects[i] for i in ids}) > 1

    async def second() -> None:
        lb = AsyncLoadBalancer(BACKENDS, transport=httpx.MockTransport(resources), state=second_store)
        async with httpx.AsyncClient(transport=lb) as client:
            for response_id in ids:
                follow = await client.post(URL, json={"previous_response_id": response_id})
                assert follow.status_code == 200
                pinned = follow.extensions["openai_priority_loadbalancer"].pinned
                assert pinned.owner == "shared"
                assert len(follow.extensions["openai_priority_loadbalancer"].attempts) == 1
        await second_store.aclose()

    asyncio.run(second())
    assert resources.not_found == 0
    assert second_store.owners([ids[0]]) == [
        shared_key(BACKENDS[["a.example", "b.example", "c.example"].index(resources.objects[ids[0]])])
    ]
    first.close()
    first_store.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_second_process_continues_the_first_ones_chains(
    redis_server: RedisServer, worker_env: dict[str, str], mode: str
) -> None:
    names = ("a", "b", "c")
    with Simulator([InstanceConfig(name) for name in names]) as sim:
        urls = [sim.url(name) for name in names]
        store = RedisStateStore.from_url(redis_server.url)
        lb = LoadBalancer([Backend(url, 1) for url in urls], state=store)
        owners: dict[str, str] = {}
        with openai.AzureOpenAI(
            azure_endpoint=urls[0],
            api_key="k",
            api_version="2025-04-01-preview",
            http_client=openai.DefaultHttpxClient(transport=lb),
        ) as client:
            for chain in range(9):
                if chain % 3:
                    raw = client.responses.with_raw_response.create(model="gpt-4o", input="Hi")
                    owners[raw.parse().id] = raw.headers["x-simulator-instance"]
                else:  # some chains start with a stream
                    with client.responses.with_streaming_response.create(
                        model="gpt-4o", input="Hi", stream=True
                    ) as raw:
                        owner = raw.headers["x-simulator-instance"]
                        text = raw.read().decode()
                    owners[_id(text)] = owner
        store.close()
        assert len(set(owners.values())) > 1

        def second(redis_url: str) -> dict[str, list[str | None]]:
            argv = [redis_url, mode, *urls]
            [report] = script_reports("_chains.py", [argv], worker_env, input="\n".join(owners))
            assert report["errors"] == []
            served: dict[str, list[str | None]] = report["served"]
            return served

        served = second(redis_server.url)
        assert {i: s for i, (s, _) in served.items()} == owners
        assert {how for _, how in served.values()} == {"shared"}
        assert sum(sim.stats(name).not_found for name in names) == 0  # not one wrong backend asked

        served = second("-")  # no store: found by discovery
        assert {i: s for i, (s, _) in served.items()} == owners
        assert {how for _, how in served.values()} == {"discovered"}


def _id(sse: str) -> str:
    created = next(line for line in sse.splitlines() if line.startswith("data: "))
    return str(json.loads(created.removeprefix("data: "))["response"]["id"])
