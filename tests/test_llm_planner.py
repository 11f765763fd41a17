"""The LLM planner, driven by the real openai client against a scripted server on 127.0.0.1.

Each test reads as a rule: what the planner sends, what it turns a model reply into, and how it
contains a model that misbehaves.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent import prompt as P
from agent.llm_planner import LLMConfig, LLMPlanner, choose_planner
from agent.planner import Budget, PlannerState
from memory.ledger import Ledger
from memory.records import DecisionRecord, EventRecord, RunRecord, RunResult
from memory.tiers import Tier
from memory.workspace import Workspace
from testing.fakes.fake_openai import FakeOpenAI, call, http_error, slow_reply, text_reply, tool_reply
from tools.context import ToolContext

SCRIPT = '''import os
LR = float(os.environ.get("MATRIX_LR", "0.04"))
# === PROTECTED: METRIC BEGIN ===
def bpb(nats, tokens, nbytes):
    return nats / 0.6931471805599453 * tokens / nbytes
# === PROTECTED: METRIC END ===
print("val_bpb", bpb(1.0, 10, 20))
'''

SWEEP = {"candidates": [{"name": "smear_gate", "env": {"SMEAR_GATE": "1"}}], "seeds": [1, 2],
         "technique": "smear_gate", "hypothesis": "smearing the previous token helps early layers"}
FINISH = {"reason": "queue exhausted"}


@pytest.fixture
def ctx(tmp_path: Path) -> ToolContext:
    ws = Workspace.at(tmp_path)
    ws.script.parent.mkdir(parents=True)
    ws.script.write_text(SCRIPT)
    tier = Tier(name="cpu-tiny", hardware="cpu")
    return ToolContext(ws=ws, ledger=Ledger(ws.ledger), session="s1", tier=tier, tiers={"cpu-tiny": tier})


def state(**kw) -> PlannerState:
    base = dict(session="s1", tier="cpu-tiny", hardware="cpu", budget_left=Budget(experiments=3),
                queue=[{"technique": "smear_gate", "env": {"SMEAR_GATE": "1"}, "state": "todo", "priority": 1}],
                incumbent={"script_sha": "abc123", "mean_bpb": 2.41, "n": 3, "env": {}},
                noise={"std": 0.004, "n": 3, "source": "measured"})
    return PlannerState(**(base | kw))


def planner(fake: FakeOpenAI, **kw) -> LLMPlanner:
    return LLMPlanner("fake-model", base_url=fake.base_url, **({"max_retries": 0, "timeout_s": 10} | kw))


def assert_well_formed(messages: list[dict]) -> None:
    """What every OpenAI-compatible server requires: each tool call answered, in order, right after it;
    assistant content a string (llama.cpp answers HTTP 500 to null)."""
    open_ids: list[str] = []
    for m in messages:
        if m["role"] == "assistant":
            assert not open_ids, f"tool calls {open_ids} left unanswered"
            assert isinstance(m["content"], str)
            open_ids = [c["id"] for c in m.get("tool_calls", [])]
        elif m["role"] == "tool":
            assert open_ids and m["tool_call_id"] == open_ids.pop(0)
        else:
            assert not open_ids, f"tool calls {open_ids} left unanswered before a {m['role']} message"


def tool_messages(body: dict) -> list[str]:
    return [m["content"] for m in body["messages"] if m["role"] == "tool"]


# -- the happy path ----------------------------------------------------------------------------------

def test_a_sweep_call_becomes_the_proposal_and_ends_the_turn(ctx):
    edit = {"rationale": "higher LR", "edits": [{"search": '"0.04"', "replace": '"0.05"'}]}
    with FakeOpenAI([tool_reply(call("edit_train_script", edit)), tool_reply(call("launch_local_sweep", SWEEP))]) as fake:
        p = planner(fake).propose(state(), ctx)
    assert p.action == "experiment"
    assert p.experiment.name == "smear_gate" and p.experiment.technique == "smear_gate"
    assert p.experiment.env == {"SMEAR_GATE": "1"}
    assert p.experiment.hypothesis.startswith("smearing")
    assert '"0.05"' in ctx.ws.script.read_text()  # the edit ran through the real tool
    bodies = fake.chat_requests()
    assert len(bodies) == 2  # the sweep ended the turn: no third request
    offered = {t["function"]["name"] for t in bodies[0]["tools"]}
    assert {"edit_train_script", "launch_local_sweep", "read_logs", "finish"} <= offered
    assert "launch_runpod_final" not in offered
    assert "+" in tool_messages(bodies[1])[0] and "0.05" in tool_messages(bodies[1])[0]  # the diff came back
    assert_well_formed(bodies[1]["messages"])


def test_the_judges_verdict_is_the_sweeps_tool_result_at_the_next_decision(ctx):
    with FakeOpenAI([tool_reply(call("launch_local_sweep", SWEEP)), tool_reply(call("finish", FINISH))]) as fake:
        pl = planner(fake)
        assert pl.propose(state(), ctx).action == "experiment"
        pl.observe({"outcome": "confirmed", "kept": True, "delta": -0.0123, "p_value": 0.002,
                    "candidate_runs": ["smear-s1", "smear-s2"]})
        p = pl.propose(state(decisions_so_far=1), ctx)
    assert p.action == "stop" and "queue exhausted" in p.reason
    second = fake.chat_requests()[1]["messages"]
    assert_well_formed(second)
    sweep_id = next(m for m in second if m["role"] == "assistant")["tool_calls"][0]["id"]
    answer = next(m for m in second if m["role"] == "tool" and m["tool_call_id"] == sweep_id)["content"]
    assert "confirmed" in answer and "-0.0123" in answer and "smear-s2" in answer
    assert second[-1]["role"] == "user" and "Decision 2" in second[-1]["content"]


def test_only_the_first_candidate_runs_and_the_model_is_told(ctx):
    two = SWEEP | {"candidates": SWEEP["candidates"] + [{"name": "other", "env": {"X": "1"}}]}
    with FakeOpenAI([tool_reply(call("launch_local_sweep", two)), tool_reply(call("finish", FINISH))]) as fake:
        pl = planner(fake)
        p = pl.propose(state(), ctx)
        pl.observe({"outcome": "rejected", "kept": False})
        pl.propose(state(), ctx)
    assert p.experiment.name == "smear_gate" and "only the first candidate" in p.reason


def test_tokens_used_per_decision_come_from_the_servers_usage(ctx):
    u1, u2 = {"prompt_tokens": 900, "completion_tokens": 100, "total_tokens": 1000}, \
        {"prompt_tokens": 1200, "completion_tokens": 34, "total_tokens": 1234}
    script = [tool_reply(call("read_logs", {"run_id": "nope"}), usage=u1),
              tool_reply(call("launch_local_sweep", SWEEP), usage=u2),
              tool_reply(call("finish", FINISH), usage=u1)]
    with FakeOpenAI(script) as fake:
        pl = planner(fake)
        first = pl.propose(state(), ctx)
        second = pl.propose(state(), ctx)
    assert first.tokens_used == 2234 and second.tokens_used == 1000
    assert pl.tokens_session == 3234


def test_the_token_budget_stops_the_session_before_the_next_request(ctx):
    big = {"prompt_tokens": 5000, "completion_tokens": 10, "total_tokens": 5010}
    with FakeOpenAI([tool_reply(call("read_logs", {"run_id": "a"}), usage=big),
                     tool_reply(call("read_logs", {"run_id": "b"}), usage=big)]) as fake:
        p = planner(fake, max_tokens_per_session=5000).propose(state(), ctx)
    assert p.action == "stop" and "token budget" in p.reason and p.tokens_used == 5010
    assert len(fake.chat_requests()) == 1


# -- steering and the digest -------------------------------------------------------------------------

def test_a_human_directive_is_the_first_thing_in_the_decision_prompt(ctx):
    s = state(directives=["Test BigramHash before anything else"], frontier="PR #999 new record 1.0500",
              findings=[{"technique": "ema", "outcome": "rejected", "delta": 0.01, "ci": [0.0, 0.02], "p": 0.4, "n": 3}],
              plan_changed=True)
    with FakeOpenAI([tool_reply(call("finish", FINISH))]) as fake:
        planner(fake).propose(s, ctx)
    user = fake.chat_requests()[0]["messages"][1]["content"]
    at = user.index("Test BigramHash before anything else")
    assert at < user.index("PR #999") < user.index("## Incumbent") < user.index("| ema | rejected")
    assert at < user.index("## Queue") < user.index("## Budget left")
    assert "battle_plan.md was edited" in user
    assert fake.chat_requests()[0]["messages"][0]["role"] == "system"


def test_a_directive_edited_between_decisions_is_read_at_the_next_one(ctx):
    with FakeOpenAI([tool_reply(call("launch_local_sweep", SWEEP)), tool_reply(call("finish", FINISH))]) as fake:
        pl = planner(fake)
        pl.propose(state(directives=["old directive"]), ctx)
        pl.observe({"outcome": "inconclusive"})
        pl.propose(state(directives=["stop testing EMA"], plan_changed=True), ctx)
    last_user = [m for m in fake.chat_requests()[1]["messages"] if m["role"] == "user"][-1]["content"]
    assert "stop testing EMA" in last_user and "old directive" not in last_user


# -- containment of hostile or broken replies ----------------------------------------------------------

def test_malformed_json_arguments_are_answered_with_the_parse_error_and_the_session_goes_on(ctx):
    with FakeOpenAI([tool_reply(call("launch_local_sweep", '{"candidates": [{"name": ')),
                     tool_reply(call("launch_local_sweep", SWEEP))]) as fake:
        p = planner(fake).propose(state(), ctx)
    assert p.action == "experiment"
    second = fake.chat_requests()[1]["messages"]
    assert_well_formed(second)
    assert "not valid JSON" in tool_messages(fake.chat_requests()[1])[0]
    kept = next(m for m in second if m["role"] == "assistant")["tool_calls"][0]["function"]["arguments"]
    json.loads(kept)  # the history keeps valid JSON: servers re-parse it


def test_a_validation_error_comes_back_verbatim_enough_to_fix(ctx):
    bad = SWEEP | {"candidates": [{"name": "Not A Slug!", "env": {"DATA_PATH": "/etc"}}]}
    with FakeOpenAI([tool_reply(call("launch_local_sweep", bad)), tool_reply(call("finish", FINISH))]) as fake:
        planner(fake).propose(state(), ctx)
    error = tool_messages(fake.chat_requests()[1])[0]
    assert "candidates.0.name" in error and "slug" in error and "DATA_PATH" in error


def test_an_unknown_tool_is_refused_logged_and_answered(ctx):
    with FakeOpenAI([tool_reply(call("run_shell", {"cmd": "rm -rf /"})), tool_reply(call("finish", FINISH))]) as fake:
        p = planner(fake).propose(state(), ctx)
    assert p.action == "stop"
    answer = tool_messages(fake.chat_requests()[1])[0]
    assert "unknown tool 'run_shell'" in answer and "launch_local_sweep" in answer
    events = [e for e in ctx.ledger.records(EventRecord) if e.event == "llm_tool_refused"]
    assert events and events[0].detail["tool"] == "run_shell"


def test_a_registered_tool_that_is_not_offered_cannot_be_called(ctx):
    offered = ["launch_local_sweep", "finish"]  # read_logs is registered, but not offered here
    with FakeOpenAI([tool_reply(call("read_logs", {"run_id": "r1"})), tool_reply(call("finish", FINISH))]) as fake:
        planner(fake, tools=offered).propose(state(), ctx)
    assert {t["function"]["name"] for t in fake.chat_requests()[0]["tools"]} == set(offered)
    assert "unknown tool 'read_logs'" in tool_messages(fake.chat_requests()[1])[0]


def test_a_one_megabyte_argument_is_refused_and_not_carried_in_the_history(ctx):
    huge = {"rationale": "x" * 1_000_000, "edits": [{"search": "a", "replace": "b"}]}
    before = ctx.ws.script.read_text()
    small = {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}  # here the size is the attack
    with FakeOpenAI([tool_reply(call("edit_train_script", huge), usage=small),
                     tool_reply(call("launch_local_sweep", huge), usage=small),
                     tool_reply(call("finish", FINISH))]) as fake:
        p = planner(fake).propose(state(), ctx)
    assert p.action == "stop" and ctx.ws.script.read_text() == before
    answers = tool_messages(fake.chat_requests()[2])
    assert all("the limit is" in a for a in answers)
    assert len(fake.requests[-1]["raw"]) < 60_000  # the megabyte was not sent back to the server


def test_a_path_outside_the_workspace_is_refused_by_the_edit_tool(ctx, tmp_path):
    outside = tmp_path.parent / "victim.py"
    outside.write_text("x = 1\n")
    edit = {"rationale": "escape", "path": str(outside), "edits": [{"search": "x = 1", "replace": "x = 2"}]}
    rel = edit | {"path": "../victim.py"}
    with FakeOpenAI([tool_reply(call("edit_train_script", edit), call("edit_train_script", rel)),
                     tool_reply(call("finish", FINISH))]) as fake:
        planner(fake).propose(state(), ctx)
    assert outside.read_text() == "x = 1\n" and ctx.ws.script.read_text() == SCRIPT
    answers = tool_messages(fake.chat_requests()[1])
    assert len(answers) == 2 and all("only trainer/train_gpt.py may be edited" in a for a in answers)


def test_an_endless_loop_of_the_same_call_is_answered_then_stopped(ctx):
    same = tool_reply(call("read_logs", {"run_id": "r1"}))
    with FakeOpenAI([same] * 6) as fake:
        p = planner(fake, max_turns_per_decision=10).propose(state(), ctx)
    assert p.action == "stop" and "repeated the same read_logs call 4 times" in p.reason
    bodies = fake.chat_requests()
    assert len(bodies) == 4
    assert "no run 'r1'" in tool_messages(bodies[1])[-1]
    assert "already made 2 times in a row" in tool_messages(bodies[3])[-1]


def test_a_reply_without_a_tool_call_is_nudged_once_then_the_session_stops(ctx):
    with FakeOpenAI([text_reply("I think we should try EMA."), text_reply("Really, EMA.")]) as fake:
        p = planner(fake).propose(state(), ctx)
    assert p.action == "stop" and "without a tool call" in p.reason
    second = fake.chat_requests()[1]["messages"]
    assert second[-2] == {"role": "assistant", "content": "I think we should try EMA."}
    assert second[-1]["role"] == "user" and "without a tool call" in second[-1]["content"]


def test_a_nudged_model_that_recovers_goes_on(ctx):
    with FakeOpenAI([text_reply("hmm"), tool_reply(call("launch_local_sweep", SWEEP))]) as fake:
        assert planner(fake).propose(state(), ctx).action == "experiment"


def test_http_500_is_retried_by_the_sdk_then_the_session_stops_with_a_clear_message(ctx):
    with FakeOpenAI([http_error(500, "model crashed")] * 3) as fake:
        p = planner(fake, max_retries=2).propose(state(), ctx)
    assert p.action == "stop" and "HTTP 500 after 2 retries" in p.reason and "model crashed" in p.reason
    assert len(fake.chat_requests()) == 3


def test_a_server_that_hangs_times_out_and_the_session_stops(ctx):
    with FakeOpenAI([slow_reply(3.0, tool_reply(call("finish", FINISH)))]) as fake:
        p = planner(fake, timeout_s=0.5).propose(state(), ctx)
    assert p.action == "stop" and "timed out" in p.reason


def test_an_unreachable_server_stops_cleanly(ctx):
    pl = LLMPlanner("m", base_url="http://127.0.0.1:9/v1", max_retries=0, timeout_s=2)
    p = pl.propose(state(), ctx)
    assert p.action == "stop" and "cannot reach the LLM server" in p.reason


def test_the_turn_cap_ends_a_decision_that_never_chooses(ctx):
    script = [tool_reply(call("read_logs", {"run_id": f"r{i}"})) for i in range(5)]
    with FakeOpenAI(script) as fake:
        p = planner(fake, max_turns_per_decision=3).propose(state(), ctx)
    assert p.action == "stop" and "within 3 turns" in p.reason and len(fake.chat_requests()) == 3


def test_calls_after_the_sweep_in_the_same_reply_are_answered_not_run(ctx):
    edit = {"rationale": "late edit", "edits": [{"search": '"0.04"', "replace": '"0.09"'}]}
    with FakeOpenAI([tool_reply(call("launch_local_sweep", SWEEP), call("edit_train_script", edit)),
                     tool_reply(call("finish", FINISH))]) as fake:
        pl = planner(fake)
        pl.propose(state(), ctx)
        pl.observe({"outcome": "rejected"})
        pl.propose(state(), ctx)
    assert ctx.ws.script.read_text() == SCRIPT
    second = fake.chat_requests()[1]
    assert_well_formed(second["messages"])
    assert "rejected" in tool_messages(second)[0] and "not run" in tool_messages(second)[1]


def test_the_conversation_stays_bounded_over_many_decisions(ctx):
    n = 30
    with FakeOpenAI([tool_reply(call("launch_local_sweep", SWEEP | {"hypothesis": f"h{i} " + "y" * 900}))
                     for i in range(n)]) as fake:
        pl = planner(fake, max_history_chars=20_000, max_repeats=99)
        for _ in range(n):
            assert pl.propose(state(directives=["d" * 3000]), ctx).action == "experiment"
            pl.observe({"outcome": "inconclusive", "delta": 0.001})
    sizes = [len(json.dumps(b["messages"])) for b in fake.chat_requests()]
    assert max(sizes) < 30_000 and sizes[-1] < 30_000
    assert_well_formed(fake.chat_requests()[-1]["messages"])
    assert fake.chat_requests()[-1]["messages"][0]["role"] == "system"


def test_the_api_key_never_reaches_the_model_or_the_ledger(ctx, monkeypatch):
    key = "sk-test-Zq8PlanNerSecretKey0123456789"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    run_dir = ctx.ws.runs_dir / "s1" / "r1"
    run_dir.mkdir(parents=True)
    (run_dir / "stdout.log").write_text(f"step 1 loss 7.0\nOPENAI_API_KEY={key}\n")
    ctx.ledger.append(RunRecord(session="s1", run_id="r1", experiment="e", candidate="c", tier="cpu-tiny",
                                hardware="cpu", seed=1, script_sha="x", run_dir=str(run_dir),
                                result=RunResult(status="crashed", error="exit code 1")))
    with FakeOpenAI([tool_reply(call("read_logs", {"run_id": "r1"})),
                     tool_reply(call("run_shell", {"key": key})),
                     tool_reply(call("finish", {"reason": f"done {key}"}))]) as fake:
        env = {"OPENAI_API_KEY": key, "OPENAI_BASE_URL": fake.base_url}
        pl = LLMPlanner.from_env(env, max_retries=0)
        p = pl.propose(state(directives=[f"my key is {key}, do not share"]), ctx)
    assert {k.lower(): v for k, v in fake.requests[0]["headers"].items()}["authorization"] == f"Bearer {key}"  # the client did use it
    for r in fake.requests:
        assert key not in json.dumps(r["body"]["messages"])
    assert "redacted" in tool_messages(fake.chat_requests()[1])[0]
    assert key not in ctx.ledger.path.read_text()
    assert key not in p.reason


# -- configuration -----------------------------------------------------------------------------------

def test_auto_picks_the_llm_when_an_endpoint_or_key_is_configured():
    assert choose_planner("auto", {})[0] == "playbook"
    kind, why = choose_planner("auto", {"OPENAI_BASE_URL": "http://127.0.0.1:8080/v1"})
    assert kind == "llm" and "OPENAI_BASE_URL" in why
    assert choose_planner("auto", {"OPENAI_API_KEY": "sk-x"})[0] == "llm"
    assert choose_planner("playbook", {"OPENAI_API_KEY": "sk-x"})[0] == "playbook"
    assert choose_planner("llm", {})[0] == "llm"
    with pytest.raises(ValueError):
        choose_planner("oracle", {})


def test_model_and_limits_come_from_the_environment():
    cfg = LLMConfig.from_env({"PGOLF_LLM_MODEL": "qwen", "OPENAI_BASE_URL": "http://h/v1", "PGOLF_LLM_MAX_TURNS": "5",
                              "PGOLF_LLM_MAX_TOKENS": "9000", "PGOLF_LLM_STRICT": "false"})
    assert (cfg.model, cfg.base_url, cfg.max_turns_per_decision, cfg.max_tokens_per_session, cfg.strict_tools) == \
        ("qwen", "http://h/v1", 5, 9000, False)
    assert LLMConfig.from_env({}).model == "gpt-5-mini"
    pl = LLMPlanner.from_env({"OPENAI_BASE_URL": "http://127.0.0.1:9/v1"})
    assert pl.client.api_key == "sk-no-key" and pl.strict is False
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        LLMPlanner.from_env({})


def test_strict_auto_falls_back_to_plain_schemas_when_the_server_refuses(ctx):
    with FakeOpenAI([http_error(400, "strict schemas unsupported"), tool_reply(call("finish", FINISH)),
                     tool_reply(call("finish", FINISH))]) as fake:
        pl = planner(fake)
        pl.strict = None  # as when talking to api.openai.com
        pl.propose(state(), ctx)
        pl.propose(state(), ctx)
    first, second, third = fake.chat_requests()
    assert first["tools"][0]["function"].get("strict") is True
    assert "strict" not in second["tools"][0]["function"] and "strict" not in third["tools"][0]["function"]


def test_a_decision_record_can_hold_the_tokens_used():
    # the loop copies Proposal.tokens_used here; the field must exist for the ledger to keep it
    assert "tokens_used" in DecisionRecord.model_fields


def test_render_state_is_bounded_and_keeps_directives_and_budget():
    s = state(directives=["D" * 5000] * 10, frontier="F\n" * 5000,
              findings=[{"technique": f"t{i}", "outcome": "rejected", "delta": 0.01} for i in range(500)],
              recent=[{"experiment": f"e{i}", "outcome": "rejected"} for i in range(500)],
              queue=[{"technique": f"q{i}", "state": "todo"} for i in range(500)])
    for budget in (1500, 3000, 6000):
        text = P.render_state(s, max_chars=budget)
        assert len(text) <= budget
        assert text.index("## Human directives") < 80 and "## Budget left" in text


# -- the digest as the ledger grows ----------------------------------------------------------------------

def ledger_records(n: int) -> list:
    """A session's ledger after n experiments: 3 runs and a decision each, findings for a few techniques."""
    from memory.records import FindingRecord, NoiseRecord

    techs = ["smear_gate", "ema", "xsa", "bigram_hash", "value_residual", "gated_attention", "partial_rope",
             "leaky_relu2", "mlp3x", "layers10", "qat_int6", "zstd"]
    out: list = [NoiseRecord(session="s1", tier="cpu-tiny", hardware="cpu", script_sha="abc", values=[2.41, 2.42, 2.40],
                             std=0.004, mean=2.41)]
    for i in range(n):
        tech = f"{techs[i % len(techs)]}" if i < 40 else f"idea_{i:03d}"
        runs = [f"e{i}-{tech}-s{s}-{10**7 + i:08d}" for s in range(3)]
        for s, run in enumerate(runs):
            out.append(RunRecord(session="s1", run_id=run, experiment=f"e{i}", candidate=tech, technique=tech,
                                 tier="cpu-tiny", hardware="cpu", seed=s, script_sha="abc", env={"X": str(i)},
                                 hypothesis="h" * 300, result=RunResult(status="ok", val_bpb=2.4 + 0.001 * s)))
        outcome = ["rejected", "inconclusive", "confirmed"][i % 3]
        out.append(DecisionRecord(session="s1", experiment=f"e{i}", candidate=tech, technique=tech,
                                  hypothesis="h" * 300, tier="cpu-tiny", hardware="cpu", outcome=outcome,
                                  kept=outcome == "confirmed", delta=-0.003 + 0.0001 * i, ci_low=-0.01, ci_high=0.004,
                                  p_value=0.03, n_candidate=3, n_incumbent=3, env={"X": str(i)}, candidate_runs=runs,
                                  reason="judge: " + "r" * 150))
        if outcome != "inconclusive":
            out.append(FindingRecord(session="s1", technique=tech, status=outcome, tier="cpu-tiny", note="n" * 200))
    return out


def digest_for(n: int) -> str:
    from agent.state import build_state
    from memory.battle_plan import parse_plan
    from testing.shipped import shipped_text

    plan = parse_plan(shipped_text("battle_plan.md"))  # not the checkout's: a session fills in its blocks
    s = build_state(records=ledger_records(n), plan=plan, session="s1", tier="cpu-tiny", hardware="cpu",
                    script_sha="abc", budget_left=Budget(experiments=10, minutes=30.0),
                    frontier="2026-04-29 1.0611 PR #1855 merged: phased LoRA TTT, GPTQ, MLP 4x")
    return P.decision_prompt(s)


@pytest.mark.parametrize("n", [10, 500])
def test_the_digest_stays_under_its_budget_as_the_ledger_grows(n):
    text = digest_for(n)
    print(f"\ndecision prompt with {n} experiments in the ledger: {len(text)} characters")
    assert len(text) <= P.DEFAULT_MAX_CHARS + 400  # the digest's 6000 plus the template's two sentences
    assert "## Human directives" in text and "## Budget left" in text and "## Techniques judged" in text
    if n == 500:
        assert "more not shown" in text  # the table was cut, not the budget


# -- a whole session --------------------------------------------------------------------------------------

QK_EDIT = {"rationale": "a larger initial q gain sharpens attention early in a short run",
           "edits": [{"search": 'get("QK_GAIN_INIT", 1.5, float)', "replace": 'get("QK_GAIN_INIT", 2.0, float)'}]}


def _field(text: str, name: str) -> str | None:
    import re

    m = re.search(rf'"{name}":\[?"([^"]+)"', text)
    return m.group(1) if m else None


def scientist(body: dict, n: int):
    """A scripted model that reads what it is sent: edit + sweep, then logs + finding + sweep, then finish."""
    msgs = body["messages"]
    starts = [i for i, m in enumerate(msgs) if m["role"] == "user" and m["content"].startswith("Decision ")]
    decision = int(msgs[starts[-1]]["content"].split()[1])
    done = [c["function"]["name"] for m in msgs[starts[-1]:] if m["role"] == "assistant"
            for c in m.get("tool_calls", [])]
    verdict = next((m["content"] for m in reversed(msgs[:starts[-1]]) if m["role"] == "tool"
                    and "verdict" in m["content"]), "")
    outcome = _field(verdict, "outcome")
    if decision == 1:
        if not done:
            return tool_reply(call("edit_train_script", QK_EDIT))
        return tool_reply(call("launch_local_sweep", {
            "candidates": [{"name": "qk_gain_2", "env": {}}], "seeds": [1, 2], "technique": "qk_gain",
            "hypothesis": "QK_GAIN_INIT 2.0 trains faster in a short run"}))
    if decision == 2:
        if "read_logs" not in done:
            return tool_reply(call("read_logs", {"run_id": _field(verdict, "candidate_runs"), "tail_lines": 5}))
        if "record_finding" not in done:
            return tool_reply(call("record_finding", {"technique": "qk_gain", "status": outcome,
                                                      "note": "from the model: QK gain 2.0 on cpu-tiny"}))
        return tool_reply(call("launch_local_sweep", {
            "candidates": [{"name": "leaky_relu2", "env": {"MLP_ACT_SLOPE": "0.5"}}], "seeds": [1, 2],
            "technique": "leaky_relu2", "hypothesis": "the directive says cheap flags first"}))
    if "record_finding" not in done:
        return tool_reply(call("record_finding", {"technique": "leaky_relu2", "status": outcome,
                                                  "note": "from the model: leaky slope 0.5"}))
    return tool_reply(call("finish", {"reason": "both ideas judged; nothing cheap left worth the budget"}))


@pytest.mark.slow
def test_a_whole_session_driven_by_a_scripted_model(tmp_path, tiny_dataset, monkeypatch):
    from agent.progress import Progress
    from agent.session import run_session
    from memory.records import FindingRecord
    from testing.invariants import check_consistent
    from testing.workspace import git, make_workspace

    key = "sk-test-WholeSessionSecret0123456789abcd"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    ws = make_workspace(tmp_path, tiny_dataset)
    with FakeOpenAI(scientist) as fake:
        pl = LLMPlanner.from_env({"OPENAI_API_KEY": key, "OPENAI_BASE_URL": fake.base_url}, max_retries=0)
        summary = run_session(ws, planner=pl, tier="cpu-tiny", budget=Budget(experiments=3), session="llm1",
                              progress=Progress.quiet())
    assert summary.decisions == 2 and "the model finished" in summary.stopped_because
    ledger = check_consistent(ws, "llm1")
    decisions = ledger.records(DecisionRecord)
    assert [d.technique for d in decisions] == ["qk_gain", "leaky_relu2"]
    assert all(d.planner == "llm" and d.tokens_used and d.tokens_used > 0 for d in decisions)
    assert not [e for e in ledger.records(EventRecord) if e.event in ("llm_tool_refused", "proposal_refused")]
    # the model's edit is the first experiment's commit; the branch has it only if the judge kept it
    first = decisions[0]
    assert 'get("QK_GAIN_INIT", 2.0, float)' in git(ws, "show", f"{first.git_commit}:trainer/train_gpt.py")
    assert ('QK_GAIN_INIT", 2.0' in (ws / "trainer/train_gpt.py").read_text()) == first.kept
    # the model's findings repeat the judge's outcome, with the judge's statistics and the model's note
    mine = [f for f in ledger.records(FindingRecord) if f.note.startswith("from the model")]
    assert [(f.technique, f.status) for f in mine] == [(d.technique, d.outcome) for d in decisions]
    assert mine[0].delta == first.delta
    plan = (ws / "battle_plan.md").read_text()
    assert "- test the cheap flags first" in plan and "qk_gain" in plan and "leaky_relu2" in plan
    # the conversation: the directive led every decision; each sweep was answered with its verdict
    bodies = fake.chat_requests()
    decision_prompts = [m["content"] for b in bodies for m in b["messages"] if m["role"] == "user"]
    assert all(p.index("test the cheap flags first") < p.index("## Incumbent") for p in set(decision_prompts))
    final = bodies[-1]["messages"]
    assert_well_formed(final)
    verdicts = [m["content"] for m in final if m["role"] == "tool" and "verdict" in m["content"]]
    assert len(verdicts) == 2 and first.experiment in verdicts[0]
    assert key not in ledger.path.read_text() and key not in git(ws, "log", "-p", "--all")
    assert all(key not in json.dumps(b["messages"]) for b in bodies)


def test_the_planner_benchmark_runs_both_scripted_models_through_the_loop(capsys):
    from benchmarks.planner import main

    report = main(["--reps", "1", "--ideas", "5", "--budget", "40", "--run-s", "0", "--json"])
    oracle, naive = report["oracle"], report["naive"]
    assert naive["decisions"] == 5 and naive["stopped"] == ["the model finished: queue exhausted"]
    assert oracle["kept"] == oracle["kept_real"]  # the oracle proposes only true wins
    assert oracle["decisions"] <= naive["decisions"]
    for r in (oracle, naive):
        assert r["tokens_per_decision"] > 0 and r["requests_per_decision"] >= 1
        assert 0 < r["busy_share_h100x8_600s_latency3s"] < 1
