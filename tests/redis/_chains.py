"""A second worker process continuing Responses chains another process started.

``_chains.py REDIS_URL|- MODE URL... < ids`` reads one response id per line from stdin and, for
each, sends one ``responses.create(previous_response_id=id)`` through ``AzureOpenAI`` (MODE ``sync``)
or ``AsyncAzureOpenAI`` (``async``) over a balancer of the backends given (priority 1 each), with a
``RedisStateStore`` on REDIS_URL or, for ``-``, no store. Prints one JSON object: per id, the
instance that served the follow-up and how the balancer knew where to send it; and the errors.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from _worker_support import send_each

from openai_priority_loadbalancer import Backend


def main() -> None:
    redis_url, mode, *urls = sys.argv[1:]
    ids = sys.stdin.read().split()
    served: dict[str, list[str | None]] = {}

    def note(response_id: str, raw: Any) -> None:
        pinned = raw.http_response.extensions["openai_priority_loadbalancer"].pinned
        served[response_id] = [raw.headers["x-simulator-instance"], pinned.owner if pinned else None]

    errors = send_each(
        redis_url,
        mode,
        [Backend(url, 1) for url in urls],
        ids,
        lambda client, response_id: client.responses.with_raw_response.create(
            model="gpt-4o", input="Go on", previous_response_id=response_id
        ),
        note,
        azure_endpoint=urls[0],
        api_key="k",
        api_version="2025-04-01-preview",
    )
    print(json.dumps({"served": served, "errors": errors}))


if __name__ == "__main__":
    main()
