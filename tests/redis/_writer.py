"""A process racing others on one key: ``_writer.py URL KEY INDEX LONGEST GO_AT``.

Waits until wall time ``GO_AT`` (so every racer starts at once, imports done), then writes 200 short
cooldowns (0.5-5 s) to KEY as fast as it can; with LONGEST "True", its 100th write is a 30 s failure
(failures=99) instead. Prints {"writes": n}.
"""

from __future__ import annotations

import json
import random
import sys
import time

from openai_priority_loadbalancer import SharedState
from openai_priority_loadbalancer.redis import RedisStateStore


def main() -> None:
    url, key, index, longest, go_at = sys.argv[1:6]
    store = RedisStateStore.from_url(url, socket_timeout=1.0)
    store.load([key])  # connect and load the scripts before the start
    time.sleep(max(0.0, float(go_at) - time.time()))
    writes = 0
    for j in range(200):
        if longest == "True" and j == 100:
            store.set_aside(key, SharedState(30.0, "failed", 99))
        else:
            store.set_aside(key, SharedState(random.uniform(0.5, 5.0), "throttled", 0, int(index)))
        writes += 1
    store.close()
    print(json.dumps({"writes": writes}))


if __name__ == "__main__":
    main()
