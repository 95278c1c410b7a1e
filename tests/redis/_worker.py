"""One worker process: chat completions through the openai SDK and a balancer sharing state on Redis.

``_worker.py REDIS_URL|- MODE N NAME=URL:PRIORITY...`` sends N chat completions one after the other
through ``AzureOpenAI`` (MODE ``sync``) or ``AsyncAzureOpenAI`` (``async``) with the SDK's own HTTP
client over a balancer of the backends given; ``-`` runs it without a shared store. Prints one JSON
object: which backend served each request (by the simulator's ``x-simulator-instance`` header) and
the errors.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from _worker_support import send_each

from openai_priority_loadbalancer import Backend

MESSAGES: list[Any] = [{"role": "user", "content": "Hello"}]


def main() -> None:
    redis_url, mode, count, *specs = sys.argv[1:]
    backends = []
    for spec in specs:
        _, url_priority = spec.split("=", 1)
        url, priority = url_priority.rsplit(":", 1)
        backends.append(Backend(url, int(priority)))
    served: list[str] = []
    errors = send_each(
        redis_url,
        mode,
        backends,
        range(int(count)),
        lambda client, _: client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES),
        lambda _, raw: served.append(raw.headers["x-simulator-instance"]),
        azure_endpoint=backends[0].host,
        api_key="k",
        api_version="2024-06-01",
        max_retries=0,
    )
    print(json.dumps({"served": served, "errors": errors}))


if __name__ == "__main__":
    main()
