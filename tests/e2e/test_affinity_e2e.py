"""Stored-object affinity end to end (DESIGN 9): the openai SDK's Responses API through the balancer,
against simulated instances that each keep their own responses, as Azure resources do.

Every test runs with httpx and httpx2, sync and async clients (the ``make_api`` fixture).
"""

from __future__ import annotations

from typing import Any

import pytest
from _e2e_support import MODEL, Api, MakeApi

from openai_priority_loadbalancer import Backend
from openai_priority_loadbalancer.simulator import InstanceConfig, Simulator

pytestmark = pytest.mark.e2e

INSTANCE = "x-simulator-instance"
NAMES = ("a", "b", "c")


def backends(sim: Simulator, names: tuple[str, ...] = NAMES) -> list[Backend]:
    return [Backend(sim.url(name), 1) for name in names]


async def turn(api: Api, *, stream: bool = False, **kwargs: Any) -> tuple[str, str]:
    """One ``responses.create``: the new response's id and the instance that served it."""
    kwargs = {"model": MODEL, "input": "Go on", **kwargs}
    if not stream:
        raw = await api._call(api.client.responses.with_raw_response.create, **kwargs)
        return raw.parse().id, str(raw.headers[INSTANCE])
    raw = await api._call(api.client.responses.with_raw_response.create, stream=True, **kwargs)
    served_by = str(raw.headers[INSTANCE])
    events = raw.parse()
    created: str | None = None
    if api.is_async:
        async with events:
            async for event in events:
                if event.type == "response.created":
                    created = created or event.response.id
    else:
        with events:
            for event in events:
                if event.type == "response.created":
                    created = created or event.response.id
    assert created is not None
    return created, served_by


async def retrieve(api: Api, response_id: str) -> str:
    raw = await api._call(api.client.responses.with_raw_response.retrieve, response_id=response_id)
    assert raw.parse().id == response_id
    return str(raw.headers[INSTANCE])


async def test_chains_with_retrieves_all_succeed_and_new_chains_spread(make_api: MakeApi) -> None:
    with Simulator([InstanceConfig(name) for name in NAMES]) as sim:
        api = make_api(backends(sim))
        first_instances = []
        for chain in range(9):
            response_id, owner = await turn(api, stream=chain % 3 == 0)
            first_instances.append(owner)
            for _ in range(2):
                response_id, served_by = await turn(api, previous_response_id=response_id)
                assert served_by == owner
            assert await retrieve(api, response_id) == owner
            items = await api._call(api.client.responses.input_items.list, response_id=response_id)
            assert items.data
        assert len(set(first_instances)) > 1  # new chains still spread over the backends
        assert sum(sim.stats(name).not_found for name in NAMES) == 0
        assert api.lb.stats().total.pinned == 9 * 4


async def test_follow_ups_whose_owner_is_throttled_succeed_by_waiting(make_api: MakeApi) -> None:
    configs = [InstanceConfig(name, requests_per_window=2, window_s=0.5) for name in NAMES[:2]]
    with Simulator(configs) as sim:
        api = make_api(backends(sim, NAMES[:2]), max_wait_s=5)
        for _ in range(3):
            response_id, owner = await turn(api)
            for _ in range(3):  # more than the owner's window holds: it is throttled, and waited for
                response_id, served_by = await turn(api, previous_response_id=response_id)
                assert served_by == owner
        assert sum(sim.stats(name).not_found for name in NAMES[:2]) == 0


async def test_an_unknown_chain_is_found_by_discovery(make_api: MakeApi) -> None:
    with Simulator([InstanceConfig(name) for name in NAMES]) as sim:
        elsewhere = make_api(backends(sim))  # another worker, sharing nothing
        made = [await turn(elsewhere) for _ in range(6)]
        api = make_api(backends(sim))
        for response_id, owner in made:
            next_id, served_by = await turn(api, previous_response_id=response_id)
            assert served_by == owner
            assert await retrieve(api, next_id) == owner


async def test_conversations_stay_on_their_backend(make_api: MakeApi) -> None:
    with Simulator([InstanceConfig(name) for name in NAMES]) as sim:
        api = make_api(backends(sim))
        for _ in range(3):
            raw = await api._call(api.client.conversations.with_raw_response.create)
            conversation, owner = raw.parse().id, str(raw.headers[INSTANCE])
            for _ in range(3):
                _, served_by = await turn(api, conversation=conversation)
                assert served_by == owner
            items = await api._call(api.client.conversations.items.list, conversation_id=conversation)
            assert len(items.data) == 6  # three inputs, three outputs
        assert sum(sim.stats(name).not_found for name in NAMES) == 0


async def test_files_retrieve_content_and_input_files_succeed(make_api: MakeApi) -> None:
    with Simulator([InstanceConfig(name) for name in NAMES]) as sim:
        api = make_api(backends(sim))
        for i in range(4):
            content = f"file {i}".encode()
            raw = await api._call(
                api.client.files.with_raw_response.create, file=(f"f{i}.txt", content), purpose="assistants"
            )
            file_id, owner = raw.parse().id, str(raw.headers[INSTANCE])
            retrieved = await api._call(api.client.files.with_raw_response.retrieve, file_id=file_id)
            assert str(retrieved.headers[INSTANCE]) == owner
            body = await api._call(api.client.files.content, file_id=file_id)
            assert body.content == content
            part = {"type": "input_file", "file_id": file_id}
            _, served_by = await turn(api, input=[{"role": "user", "content": [part]}])
            assert served_by == owner
        assert sum(sim.stats(name).not_found for name in NAMES) == 0


async def test_items_passed_back_by_hand_go_where_they_were_made(make_api: MakeApi) -> None:
    with Simulator([InstanceConfig(name) for name in NAMES]) as sim:
        api = make_api(backends(sim))
        for _ in range(3):
            # Stateless: the reasoning comes back encrypted, readable only by the instance that sealed it.
            kwargs: dict[str, Any] = {"store": False, "include": ["reasoning.encrypted_content"]}
            raw = await api._call(
                api.client.responses.with_raw_response.create, model=MODEL, input="Hi", **kwargs
            )
            first, owner = raw.parse(), str(raw.headers[INSTANCE])
            context = [item.model_dump(exclude_none=True) for item in first.output]
            assert any("encrypted_content" in item for item in context)
            context.append({"role": "user", "content": "Go on"})
            _, served_by = await turn(api, input=context, **kwargs)
            assert served_by == owner
            # Stored: an earlier output item named by reference.
            stored_id, owner = await turn(api)
            stored = await api._call(api.client.responses.retrieve, response_id=stored_id)
            reference = {"type": "item_reference", "id": stored.output[0].id}
            _, served_by = await turn(api, input=[reference, {"role": "user", "content": "And?"}])
            assert served_by == owner
        assert sum(sim.stats(name).not_found for name in NAMES) == 0
