"""A process racing others for one backend's budget: ``_reserver.py URL KEY GO_AT COUNT``.

Waits until wall time ``GO_AT`` (so every racer starts at once, imports done and connected), then
makes COUNT reservations of KEY as fast as it can. Prints {"granted": n, "refused": m}.
"""

from __future__ import annotations

import json
import sys
import time

from openai_priority_loadbalancer.redis import RedisStateStore

PROBE_TTL_S = 10.0


def main() -> None:
    url, key, go_at, count = sys.argv[1:5]
    store = RedisStateStore.from_url(url, socket_timeout=1.0)
    store.load([key])  # connect before the start
    time.sleep(max(0.0, float(go_at) - time.time()))
    granted = refused = 0
    for _ in range(int(count)):
        if store.reserve([key], 0, [], PROBE_TTL_S).granted:
            granted += 1
        else:
            refused += 1
    store.close()
    print(json.dumps({"granted": granted, "refused": refused}))


if __name__ == "__main__":
    main()
