"""The examples and the notebook run as a user would run them, against the simulator."""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


@pytest.mark.parametrize("script", ["sync_example.py", "async_example.py"])
def test_example_script_runs(script: str) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "served" in done.stdout


def test_langchain_example_runs() -> None:
    pytest.importorskip(
        "langchain_openai", reason="langchain-openai is not installed (it comes with the [dev] extra)"
    )
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "langchain_example.py")],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    # Priority 1 serves what its window holds (3), priority 2 the overflow.
    assert [line.split(": ", 1)[1] for line in lines[:4]] == ["Simulated response from primary."] * 3 + [
        "Simulated response from fallback."
    ]
    assert sum(line.startswith("ainvoke: Simulated response") for line in lines) == 4
    assert any(line.startswith("stream: 11 chunks") for line in lines)


def test_notebook_runs() -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    notebook = nbformat.read(EXAMPLES / "notebook.ipynb", as_version=4)
    nbclient.NotebookClient(
        notebook, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]


def test_demo_json_runs() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "aoai.py"), "--json", "-n", "24", "-c", "6"],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    for side in ("standard", "load_balanced"):
        assert {"ok", "failed", "wall_s", "per_backend"} <= result[side].keys()
    balanced = result["load_balanced"]
    assert balanced["ok"] == 24
    assert sum(balanced["per_backend"].values()) == 24
    # Priority 1 (12 a window) takes what it can; priority 2 (4 a window each) only the overflow.
    served = balanced["per_backend"]
    assert served["eastus"] > served["southcentralus"] + served["westus"]
    assert all(n <= 12 for n in balanced["served_per_window"]["eastus"])
    assert sum(balanced["served_per_window"]["eastus"]) == served["eastus"]


def _load_demo(monkeypatch: pytest.MonkeyPatch) -> Any:
    spec = importlib.util.spec_from_file_location("aoai", ROOT / "aoai.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "aoai", module)  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


class _Terminal(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize(
    ("tty", "enabled", "shown"), [(True, True, True), (True, False, False), (False, True, False)]
)
def test_demo_progress_bar_only_on_a_terminal_and_not_with_json(
    monkeypatch: pytest.MonkeyPatch, tty: bool, enabled: bool, shown: bool
) -> None:
    demo = _load_demo(monkeypatch)
    terminal = _Terminal(tty)
    monkeypatch.setattr(sys, "stderr", terminal)
    progress = demo.Progress("load-balanced", 4, enabled)  # enabled is `not args.json`
    for _ in range(4):
        progress.step()
    assert progress.done == 4
    if shown:
        assert terminal.getvalue().endswith("[" + "#" * 30 + "] 4/4\n")
    else:
        assert terminal.getvalue() == ""


def test_demo_responses_chains_stay_on_their_backend() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "aoai.py"), "--api", "responses", "--json", "-n", "6", "-c", "3"],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    balanced = json.loads(done.stdout)["load_balanced"]
    assert balanced["ok"] == balanced["turns"] == 18
    assert balanced["chains_kept_on_their_backend"] == 6
    assert len(balanced["chains_started_on"]) > 1  # new chains spread over the backends


def test_demo_bad_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"backends": []}')
    done = subprocess.run(
        [sys.executable, str(ROOT / "aoai.py"), "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert "error" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_demo_client_endpoint_has_a_backends_prefix_once(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    """Alone, the client keeps the configured URL; through the balancer, which adds the prefix, not."""
    pytest.importorskip("openai")
    from openai_priority_loadbalancer import AsyncLoadBalancer, LoadBalancer

    demo = _load_demo(monkeypatch)
    setup = demo.Setup([demo.Target("apim", "https://apim.example/team-a", 1, "k")], "gpt-4o", "2024-10-21")
    cls = LoadBalancer if mode == "sync" else AsyncLoadBalancer
    plain = demo.make_client(setup, mode, None)
    balanced = demo.make_client(setup, mode, cls(demo.make_backends(setup)))
    assert str(plain.base_url) == "https://apim.example/team-a/openai/"
    assert str(balanced.base_url) == "https://apim.example/openai/"
