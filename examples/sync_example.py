"""Sync: two priorities of simulated Azure OpenAI backends behind one AzureOpenAI client.

python examples/sync_example.py
"""

from __future__ import annotations

import openai

from openai_priority_loadbalancer import Backend, LoadBalancer
from openai_priority_loadbalancer.simulator import InstanceConfig, Simulator


def main() -> None:
    instances = [
        InstanceConfig("primary", requests_per_window=3, window_s=1.0),  # small, to show the overflow
        InstanceConfig("fallback-1"),
        InstanceConfig("fallback-2"),
    ]
    with Simulator(instances) as sim:
        backends = [
            Backend(sim.url("primary"), 1),
            Backend(sim.url("fallback-1"), 2),
            Backend(sim.url("fallback-2"), 2),
        ]
        lb = LoadBalancer(backends)
        client = openai.AzureOpenAI(
            azure_endpoint=backends[0].endpoint,
            api_key="any-key",  # the simulator takes any key unless configured with one
            api_version="2024-10-21",
            http_client=openai.DefaultHttpxClient(transport=lb),
        )
        with client:
            for i in range(8):
                raw = client.chat.completions.with_raw_response.create(
                    model="gpt-4o", messages=[{"role": "user", "content": f"Hello #{i}"}]
                )
                answer = raw.parse().choices[0].message.content
                print(f"{i}: served by {raw.headers['x-simulator-instance']:<10} {answer}")
        print()
        for s in lb.stats():
            print(f"{s.backend:<28} priority {s.priority}  served {s.successes}  429s {s.throttled}")


if __name__ == "__main__":
    main()
