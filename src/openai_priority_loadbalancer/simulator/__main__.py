"""``python -m openai_priority_loadbalancer.simulator``: run simulated Azure OpenAI instances."""

from ._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
