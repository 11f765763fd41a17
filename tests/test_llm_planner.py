"""The LLM planner, driven by the real openai client against a scripted server on 127.0.0.1.

Each test reads as a rule: what the planner sends, what it turns a model reply into, and how it
contains a model that misbehaves.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agent import prompt as P
from agent.llm_planner import LLMConfig, LLMPlanner, choose_planner
from agent.planner import Budget, PlannerState
from memory.ledger import Ledger
from memory.records import DecisionRecord, EventRecord, RunRecord, RunResult
from memory.tiers import Tier
from memory.workspace import Workspace
from testing.fakes.fake_openai import FakeOpenAI, call, http_error, text_reply, tool_reply
from tools.context import ToolContext

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = """import os


def get(name, default, cast=str):
    return cast(os.environ.get(name, default))


class Hyperparameters:
    matrix_lr = get("MATRIX_LR", 0.04, float)  # learning rate of the matrix parameters
    smear_gate = get("SMEAR_GATE", 0, int)  # 1: mix the previous token into the current one
    mlp_act_slope = get("MLP_ACT_SLOPE", 0.0, float)  # negative slope of the MLP activation


# === PROTECTED: METRIC BEGIN ===
def bpb(nats, tokens, nbytes):
    return nats / 0.6931471805599453 * tokens / nbytes
# === PROTECTED: METRIC END ===


def activation(x):
    return max(x, 0.0) ** 2


print("val_bpb", bpb(1.0, 10, 20))
"""

SWEEP = {
    "name": "smear_gate",
    "technique": "smear_gate",
    "env": [{"name": "SMEAR_GATE", "value": "1"}],
    "hypothesis": "smearing the previous token helps early layers",
}
FINISH = {"reason": "queue exhausted"}


def make_ctx(tmp_path: Path) -> ToolContext:
    ws = Workspace.at(tmp_path)
    ws.script.parent.mkdir(parents=True)
    ws.script.write_text(SCRIPT)
    tier = Tier(name="cpu-tiny", hardware="cpu")
    return ToolContext(ws=ws, ledger=Ledger(ws.ledger), session="s1", tier=tier, tiers={"cpu-tiny": tier})


@pytest.fixture
def ctx(tmp_path: Path) -> ToolContext:
    return make_ctx(tmp_path)


def state(**kw) -> PlannerState:
    base = dict(
        session="s1",
        tier="cpu-tiny",
        hardware="cpu",
        budget_left=Budget(experiments=3),
        queue=[
            {
                "technique": "smear_gate",
                "env": {"SMEAR_GATE": "1"},
                "state": "todo",
                "priority": 1,
                "decided": None,
                "tries": 0,
                "notes": "",
            }
        ],
        incumbent={"script_sha": "abc123", "mean_bpb": 2.41, "n": 3, "env": {}},
        noise={"std": 0.004, "n": 3, "source": "measured"},
    )
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
    assert not open_ids


def tool_messages(body: dict) -> list[str]:
    return [m["content"] for m in body["messages"] if m["role"] == "tool"]


def user_prompt(body: dict) -> str:
    return [m["content"] for m in body["messages"] if m["role"] == "user"][0]


# -- the happy path ----------------------------------------------------------------------------------


def test_a_sweep_call_becomes_the_proposal_and_ends_the_decision(ctx):
    edit = {"rationale": "higher LR", "edits": [{"search": "0.04", "replace": "0.05"}]}
    with FakeOpenAI(
        [tool_reply(call("edit_train_script", edit)), tool_reply(call("launch_local_sweep", SWEEP))]
    ) as fake:
        p = planner(fake).propose(state(), ctx)
    assert p.action == "experiment"
    assert p.experiment.name == "smear_gate" and p.experiment.technique == "smear_gate"
    assert p.experiment.env == {"SMEAR_GATE": "1"}
    assert p.experiment.hypothesis.startswith("smearing")
    assert "0.05" in ctx.ws.script.read_text()  # the edit ran through the real tool
    bodies = fake.chat_requests()
    assert len(bodies) == 2  # the sweep ended the decision: no third request
    offered = {t["function"]["name"] for t in bodies[0]["tools"]}
    assert {
        "view_script",
        "grep_script",
        "edit_train_script",
        "launch_local_sweep",
        "query_findings",
        "read_logs",
        "finish",
    } <= offered
    assert "launch_runpod_final" not in offered
    assert "+" in tool_messages(bodies[1])[0] and "0.05" in tool_messages(bodies[1])[0]  # the diff came back
    assert_well_formed(bodies[1]["messages"])


def test_each_decision_is_one_stateless_prompt_with_the_journal_and_the_last_verdict(ctx):
    ema = SWEEP | {"name": "ema", "technique": "ema", "env": [{"name": "MATRIX_LR", "value": "0.05"}]}
    with FakeOpenAI(
        [
            tool_reply(call("launch_local_sweep", SWEEP)),
            tool_reply(call("launch_local_sweep", ema)),
            tool_reply(call("finish", FINISH)),
        ]
    ) as fake:
        pl = planner(fake)
        assert pl.propose(state(), ctx).action == "experiment"
        pl.observe(
            {
                "outcome": "confirmed",
                "kept": True,
                "delta": -0.012345678912,
                "p_value": 0.0021234,
                "n_candidate": 3,
                "candidate_runs": ["smear-s1", "smear-s2"],
                "script_sha": "f" * 64,
            }
        )
        assert pl.propose(state(decisions_so_far=1), ctx).action == "experiment"
        pl.observe({"outcome": "rejected", "delta": 0.002, "p_value": 0.4, "n_candidate": 2})
        p = pl.propose(state(decisions_so_far=2), ctx)
    assert p.action == "stop" and "queue exhausted" in p.reason
    second = fake.chat_requests()[1]["messages"]
    assert [m["role"] for m in second] == ["system", "user"]  # no growing chat
    prompt = second[1]["content"]
    assert "Decision 2" in prompt
    journal = prompt[prompt.index("## Your journal") : prompt.index("## Last result")]
    # the newest entry's verdict is the Last result, in full; the entry says so instead of repeating it
    assert "d1 smear_gate env SMEAR_GATE=1 -> see Last result" in journal
    last = prompt[prompt.index("## Last result") :]
    assert "confirmed kept" in last and "-0.0123" in last and "smear-s2" in last and "p 0.0021" in last
    assert "0.012345678912" not in prompt and "f" * 64 not in prompt  # rounded, no long shas
    third = user_prompt(fake.chat_requests()[2])
    journal = third[third.index("## Your journal") : third.index("## Last result")]
    assert "d1 smear_gate env SMEAR_GATE=1 -> confirmed kept d=-0.0123 p=0.0021 n=3" in journal
    assert (
        "d2 ema env MATRIX_LR=0.05 -> see Last result" in journal
        and "rejected" in third[third.index("## Last") :]
    )


def test_tokens_used_per_decision_come_from_the_servers_usage(ctx):
    u1, u2 = (
        {"prompt_tokens": 900, "completion_tokens": 100, "total_tokens": 1000},
        {"prompt_tokens": 1200, "completion_tokens": 34, "total_tokens": 1234},
    )
    script = [
        tool_reply(call("read_logs", {"run_id": "nope"}), usage=u1),
        tool_reply(call("launch_local_sweep", SWEEP), usage=u2),
        tool_reply(call("finish", FINISH), usage=u1),
    ]
    with FakeOpenAI(script) as fake:
        pl = planner(fake)
        first = pl.propose(state(), ctx)
        second = pl.propose(state(), ctx)
    assert first.tokens_used == 2234 and second.tokens_used == 1000
    assert pl.tokens_session == 3234


def test_the_token_budget_stops_the_session_before_the_next_request(ctx):
    big = {"prompt_tokens": 5000, "completion_tokens": 10, "total_tokens": 5010}
    with FakeOpenAI(
        [
            tool_reply(call("read_logs", {"run_id": "a"}), usage=big),
            tool_reply(call("read_logs", {"run_id": "b"}), usage=big),
        ]
    ) as fake:
        p = planner(fake, max_tokens_per_session=5000).propose(state(), ctx)
    assert p.action == "stop" and "token budget" in p.reason and p.tokens_used == 5010
    assert len(fake.chat_requests()) == 1


def test_a_decision_over_its_own_token_budget_goes_to_the_playbook(ctx):
    big = {"prompt_tokens": 3000, "completion_tokens": 10, "total_tokens": 3010}
    with FakeOpenAI(
        [
            tool_reply(call("read_logs", {"run_id": "a"}), usage=big),
            tool_reply(call("read_logs", {"run_id": "b"}), usage=big),
        ]
    ) as fake:
        p = planner(fake, max_tokens_per_decision=5000).propose(state(), ctx)
    assert p.action == "experiment" and p.reason.startswith("playbook fallback (the decision's token budget")
    assert p.experiment.technique == "smear_gate" and len(fake.chat_requests()) == 2


# -- steering and the digest -------------------------------------------------------------------------


def test_a_human_directive_is_the_first_thing_in_the_decision_prompt(ctx):
    s = state(
        directives=["Test BigramHash before anything else"],
        frontier="PR #999 new record 1.0500",
        findings=[
            {"technique": "ema", "outcome": "rejected", "delta": 0.01, "ci": [0.0, 0.02], "p": 0.4, "n": 3}
        ],
        plan_changed=True,
    )
    with FakeOpenAI([tool_reply(call("finish", FINISH))]) as fake:
        planner(fake).propose(s, ctx)
    user = fake.chat_requests()[0]["messages"][1]["content"]
    at = user.index("Test BigramHash before anything else")
    assert at < user.index("PR #999") < user.index("## Incumbent") < user.index("ema rejected +0.01")
    assert at < user.index("## Queue") < user.index("## Budget left")
    assert "battle_plan.md was edited" in user
    assert fake.chat_requests()[0]["messages"][0]["role"] == "system"


def test_a_directive_edited_between_decisions_is_read_at_the_next_one(ctx):
    with FakeOpenAI(
        [tool_reply(call("launch_local_sweep", SWEEP)), tool_reply(call("finish", FINISH))]
    ) as fake:
        pl = planner(fake)
        pl.propose(state(directives=["old directive"]), ctx)
        pl.observe({"outcome": "inconclusive"})
        pl.propose(state(directives=["stop testing EMA"], plan_changed=True), ctx)
    last_user = user_prompt(fake.chat_requests()[1])
    assert "stop testing EMA" in last_user and "old directive" not in last_user


def test_the_research_context_gives_the_tier_cost_calibration_and_record_rule(ctx):
    ctx.tier = Tier(
        name="cpu-tiny",
        hardware="cpu",
        env={"NUM_LAYERS": "2", "MODEL_DIM": "64", "MAX_WALLCLOCK_SECONDS": "20"},
        notional_price_per_hour=0.36,
    )
    frontier = "Best legal record: 1.0611\nObsolete in the queue: smear_gate (superseded by PR #1855)."
    with FakeOpenAI([tool_reply(call("finish", FINISH))]) as fake:
        planner(fake).propose(state(frontier=frontier), ctx)
    prompt = user_prompt(fake.chat_requests()[0])
    ctx_part = prompt[prompt.index("## Research context") : prompt.index("## Your journal")]
    assert "layers=2 dim=64" in ctx_part and "~20s/run" in ctx_part and "$0.002/run" in ctx_part
    assert (
        "calibration, full-scale delta ~ slope x this tier's: architecture " in ctx_part
        and "0.005 nats" in ctx_part
    )
    assert "smear_gate [p1, todo, OBSOLETE per frontier]" in prompt
    assert "OBSOLETE" in fake.chat_requests()[0]["messages"][0]["content"]  # and the rules say what it means


# -- containment of hostile or broken replies ----------------------------------------------------------


def test_malformed_json_arguments_are_answered_with_the_parse_error_and_the_decision_goes_on(ctx):
    with FakeOpenAI(
        [tool_reply(call("launch_local_sweep", '{"name": ')), tool_reply(call("launch_local_sweep", SWEEP))]
    ) as fake:
        p = planner(fake).propose(state(), ctx)
    assert p.action == "experiment"
    second = fake.chat_requests()[1]["messages"]
    assert_well_formed(second)
    assert "not valid JSON" in tool_messages(fake.chat_requests()[1])[0]
    kept = next(m for m in second if m["role"] == "assistant")["tool_calls"][0]["function"]["arguments"]
    json.loads(kept)  # the decision's history keeps valid JSON: servers re-parse it


def test_raw_newlines_inside_argument_strings_are_read_and_kept_as_strict_json(ctx):
    # small local models write multi-line hypotheses with literal newlines, which JSON forbids
    raw = (
        json.dumps(SWEEP | {"hypothesis": "line one\tLINE two"})
        .replace("\\t", "\t")
        .replace("LINE", "\nline")
    )
    with pytest.raises(json.JSONDecodeError):
        json.loads(raw)
    with FakeOpenAI(
        [tool_reply(call("read_logs", '{"run_id": "r\n1"}')), tool_reply(call("launch_local_sweep", raw))]
    ) as fake:
        p = planner(fake).propose(state(), ctx)
    assert p.action == "experiment" and p.experiment.hypothesis == "line one\t\nline two"
    kept = next(m for m in fake.chat_requests()[1]["messages"] if m["role"] == "assistant")
    assert json.loads(kept["tool_calls"][0]["function"]["arguments"]) == {"run_id": "r\n1"}


def test_a_validation_error_comes_back_verbatim_enough_to_fix(ctx):
    bad = SWEEP | {"name": "Not A Slug!"}
    harness = SWEEP | {"env": [{"name": "DATA_PATH", "value": "/etc"}]}
    with FakeOpenAI(
        [
            tool_reply(call("launch_local_sweep", bad)),
            tool_reply(call("launch_local_sweep", harness)),
            tool_reply(call("finish", FINISH)),
        ]
    ) as fake:
        planner(fake).propose(state(), ctx)
    first, second = tool_messages(fake.chat_requests()[2])
    assert "name" in first and "slug" in first
    assert "DATA_PATH" in second and "not a knob" in second


def test_an_unknown_tool_is_refused_logged_and_answered(ctx):
    with FakeOpenAI(
        [tool_reply(call("run_shell", {"cmd": "rm -rf /"})), tool_reply(call("finish", FINISH))]
    ) as fake:
        p = planner(fake).propose(state(), ctx)
    assert p.action == "stop"
    answer = tool_messages(fake.chat_requests()[1])[0]
    assert "unknown tool 'run_shell'" in answer and "launch_local_sweep" in answer
    events = [e for e in ctx.ledger.records(EventRecord) if e.event == "llm_tool_refused"]
    assert events and events[0].detail["tool"] == "run_shell"


def test_a_registered_tool_that_is_not_offered_cannot_be_called(ctx):
    offered = ["launch_local_sweep", "finish"]  # read_logs is registered, but not offered here
    with FakeOpenAI(
        [tool_reply(call("read_logs", {"run_id": "r1"})), tool_reply(call("finish", FINISH))]
    ) as fake:
        planner(fake, tools=offered).propose(state(), ctx)
    assert {t["function"]["name"] for t in fake.chat_requests()[0]["tools"]} == set(offered)
    assert "unknown tool 'read_logs'" in tool_messages(fake.chat_requests()[1])[0]


def test_a_one_megabyte_argument_is_refused_and_not_carried_in_the_history(ctx):
    huge = {"rationale": "x" * 1_000_000, "edits": [{"search": "a", "replace": "b"}]}
    before = ctx.ws.script.read_text()
    small = {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}  # here the size is the attack
    with FakeOpenAI(
        [
            tool_reply(call("edit_train_script", huge), usage=small),
            tool_reply(call("launch_local_sweep", huge), usage=small),
            tool_reply(call("finish", FINISH)),
        ]
    ) as fake:
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
    with FakeOpenAI(
        [
            tool_reply(call("edit_train_script", edit), call("edit_train_script", rel)),
            tool_reply(call("finish", FINISH)),
        ]
    ) as fake:
        planner(fake).propose(state(), ctx)
    assert outside.read_text() == "x = 1\n" and ctx.ws.script.read_text() == SCRIPT
    answers = tool_messages(fake.chat_requests()[1])
    assert len(answers) == 2 and all("only trainer/train_gpt.py may be edited" in a for a in answers)


def test_an_endless_loop_of_the_same_call_is_answered_then_handed_to_the_playbook(ctx):
    same = tool_reply(call("read_logs", {"run_id": "r1"}))
    with FakeOpenAI([same] * 6) as fake:
        p = planner(fake, max_turns_per_decision=10).propose(state(), ctx)
    assert p.action == "experiment" and "repeated the same read_logs call 4 times" in p.reason
    assert p.reason.startswith("playbook fallback")
    bodies = fake.chat_requests()
    assert len(bodies) == 4
    assert "no run 'r1'" in tool_messages(bodies[1])[-1]
    assert "already made 2 times in a row" in tool_messages(bodies[3])[-1]


def test_a_reply_without_a_tool_call_is_nudged_once_then_the_playbook_decides(ctx):
    with FakeOpenAI([text_reply("I think we should try EMA."), text_reply("Really, EMA.")]) as fake:
        p = planner(fake).propose(state(), ctx)
    assert p.action == "experiment" and "without a tool call" in p.reason and p.reason.startswith("playbook")
    second = fake.chat_requests()[1]["messages"]
    assert second[-2] == {"role": "assistant", "content": "I think we should try EMA."}
    assert second[-1]["role"] == "user" and "without a tool call" in second[-1]["content"]


def test_a_nudged_model_that_recovers_goes_on(ctx):
    with FakeOpenAI([text_reply("hmm"), tool_reply(call("launch_local_sweep", SWEEP))]) as fake:
        assert planner(fake).propose(state(), ctx).action == "experiment"


def test_a_reply_cut_at_the_token_limit_is_answered_with_what_happened(ctx):
    with FakeOpenAI(
        [
            text_reply("Let me think step by step about", finish_reason="length"),
            tool_reply(call("launch_local_sweep", SWEEP)),
        ]
    ) as fake:
        p = planner(fake, max_completion_tokens=64).propose(state(), ctx)
    assert p.action == "experiment"
    assert "cut at the completion token limit" in fake.chat_requests()[1]["messages"][-1]["content"]


def test_the_turn_cap_ends_a_decision_that_never_chooses(ctx):
    script = [tool_reply(call("read_logs", {"run_id": f"r{i}"})) for i in range(5)]
    with FakeOpenAI(script) as fake:
        p = planner(fake, max_turns_per_decision=3).propose(state(), ctx)
    assert p.reason.startswith("playbook fallback") and "within 3 turns" in p.reason
    assert len(fake.chat_requests()) == 3


def test_calls_after_the_sweep_in_the_same_reply_are_answered_not_run(ctx):
    edit = {"rationale": "late edit", "edits": [{"search": "0.04", "replace": "0.09"}]}
    with FakeOpenAI([tool_reply(call("launch_local_sweep", SWEEP), call("edit_train_script", edit))]) as fake:
        pl = planner(fake)
        assert pl.propose(state(), ctx).action == "experiment"
    assert ctx.ws.script.read_text() == SCRIPT  # the edit after the sweep did not run
    assert len(fake.chat_requests()) == 1


def test_prompts_stay_bounded_over_many_decisions(ctx):
    n = 30
    with FakeOpenAI(
        [
            tool_reply(
                call("launch_local_sweep", SWEEP | {"name": f"idea_{i}", "hypothesis": f"h{i} " + "y" * 900})
            )
            for i in range(n)
        ]
    ) as fake:
        pl = planner(fake, max_repeats=99)
        for i in range(n):
            assert pl.propose(state(directives=["d" * 3000], decisions_so_far=i), ctx).action == "experiment"
            pl.observe({"outcome": "inconclusive", "delta": 0.001, "reason": "r" * 5000})
    sizes = [len(json.dumps(b["messages"])) for b in fake.chat_requests()]
    assert max(sizes) < 12_000 and sizes[-1] <= sizes[12] + 200  # flat once the journal is full
    last = user_prompt(fake.chat_requests()[-1])
    assert (
        "earlier decisions: use query_findings" in last and "d29 idea_28" in last and "d1 idea_0 " not in last
    )


def test_the_api_key_never_reaches_the_model_or_the_ledger(ctx, monkeypatch):
    key = "sk-test-Zq8PlanNerSecretKey0123456789"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    run_dir = ctx.ws.runs_dir / "s1" / "r1"
    run_dir.mkdir(parents=True)
    (run_dir / "stdout.log").write_text(f"step 1 loss 7.0\nOPENAI_API_KEY={key}\n")
    ctx.ledger.append(
        RunRecord(
            session="s1",
            run_id="r1",
            experiment="e",
            candidate="c",
            tier="cpu-tiny",
            hardware="cpu",
            seed=1,
            script_sha="x",
            run_dir=str(run_dir),
            result=RunResult(status="crashed", error="exit code 1"),
        )
    )
    with FakeOpenAI(
        [
            tool_reply(call("read_logs", {"run_id": "r1"})),
            tool_reply(call("run_shell", {"key": key})),
            tool_reply(call("finish", {"reason": f"done {key}"})),
        ]
    ) as fake:
        env = {"OPENAI_API_KEY": key, "OPENAI_BASE_URL": fake.base_url}
        pl = LLMPlanner.from_env(env, max_retries=0)
        p = pl.propose(state(directives=[f"my key is {key}, do not share"]), ctx)
    assert {k.lower(): v for k, v in fake.requests[0]["headers"].items()}[
        "authorization"
    ] == f"Bearer {key}"  # the client did use it
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
    cfg = LLMConfig.from_env(
        {
            "PGOLF_LLM_MODEL": "qwen",
            "OPENAI_BASE_URL": "http://h/v1",
            "PGOLF_LLM_MAX_TURNS": "5",
            "PGOLF_LLM_MAX_TOKENS": "9000",
            "PGOLF_LLM_STRICT": "false",
            "PGOLF_LLM_REASONING_EFFORT": "minimal",
            "PGOLF_LLM_TOKEN_PARAM": "max_completion_tokens",
            "PGOLF_LLM_MAX_COMPLETION_TOKENS": "800",
        }
    )
    assert (
        cfg.model,
        cfg.base_url,
        cfg.max_turns_per_decision,
        cfg.max_tokens_per_session,
        cfg.strict_tools,
    ) == ("qwen", "http://h/v1", 5, 9000, False)
    assert (cfg.reasoning_effort, cfg.token_param, cfg.max_completion_tokens) == (
        "minimal",
        "max_completion_tokens",
        800,
    )
    default = LLMConfig.from_env({})
    assert default.model == "gpt-5-mini"
    # a 500-experiment session fits the default caps at the measured ~4K tokens a request
    assert default.max_tokens_per_session >= 500 * 4 * 4000
    official = LLMPlanner.from_env({"OPENAI_API_KEY": "sk-x"})
    assert official.strict is True and official.token_param == "max_completion_tokens"
    pl = LLMPlanner.from_env({"OPENAI_BASE_URL": "http://127.0.0.1:9/v1"})
    assert pl.client.api_key == "sk-no-key" and pl.strict is False
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        LLMPlanner.from_env({})


def test_against_openai_the_schemas_are_strict_and_parallel_calls_off(ctx):
    with FakeOpenAI([tool_reply(call("finish", FINISH))]) as fake:
        planner(fake, strict_tools=True, reasoning_effort="low", max_completion_tokens=500).propose(
            state(), ctx
        )
    body = fake.chat_requests()[0]
    assert all(t["function"]["strict"] is True for t in body["tools"])
    assert body["parallel_tool_calls"] is False and body["reasoning_effort"] == "low"
    assert body["max_tokens"] == 500  # a local server's name for it; OpenAI's is max_completion_tokens
    sweep = next(t for t in body["tools"] if t["function"]["name"] == "launch_local_sweep")["function"][
        "parameters"
    ]
    pairs = next(a for a in sweep["properties"]["env"]["anyOf"] if a.get("type") == "array")  # or null
    names = pairs["items"]["properties"]["name"]["enum"]
    assert {"MATRIX_LR", "SMEAR_GATE", "MLP_ACT_SLOPE"} <= set(names) and "PYTHONPATH" not in names


def test_a_strict_schema_refusal_is_read_from_the_400_and_retried_plain_in_the_same_decision(ctx):
    with FakeOpenAI(
        [
            http_error(400, "Invalid schema for function 'finish': strict mode is not supported"),
            tool_reply(call("finish", FINISH)),
            tool_reply(call("finish", FINISH)),
        ]
    ) as fake:
        pl = planner(fake, strict_tools=True)
        assert pl.propose(state(), ctx).action == "stop"
        pl.propose(state(), ctx)
    first, second, third = fake.chat_requests()
    assert first["tools"][0]["function"].get("strict") is True
    assert "strict" not in second["tools"][0]["function"] and "strict" not in third["tools"][0]["function"]
    assert "parallel_tool_calls" not in third


def test_a_decision_record_can_hold_the_tokens_used():
    # the loop copies Proposal.tokens_used here; the field must exist for the ledger to keep it
    assert "tokens_used" in DecisionRecord.model_fields


def test_render_state_is_bounded_and_keeps_directives_and_budget():
    s = state(
        directives=["D" * 5000] * 10,
        frontier="F\n" * 5000,
        findings=[{"technique": f"t{i}", "outcome": "rejected", "delta": 0.01} for i in range(500)],
        recent=[{"experiment": f"e{i}", "outcome": "rejected"} for i in range(500)],
        queue=[{"technique": f"q{i}", "state": "todo"} for i in range(500)],
    )
    for budget in (1500, 3000, 6000):
        text = P.render_state(s, max_chars=budget)
        assert len(text) <= budget
        assert text.index("## Human directives") < 80 and "## Budget left" in text


# -- the digest as the ledger grows ----------------------------------------------------------------------


def ledger_records(n: int) -> list:
    """A session's ledger after n experiments: 3 runs and a decision each, findings for a few techniques."""
    from memory.records import FindingRecord, NoiseRecord

    techs = [
        "smear_gate",
        "ema",
        "xsa",
        "bigram_hash",
        "value_residual",
        "gated_attention",
        "partial_rope",
        "leaky_relu2",
        "mlp3x",
        "layers10",
        "qat_int6",
        "zstd",
    ]
    out: list = [
        NoiseRecord(
            session="s1",
            tier="cpu-tiny",
            hardware="cpu",
            script_sha="abc",
            values=[2.41, 2.42, 2.40],
            std=0.004,
            mean=2.41,
        )
    ]
    for i in range(n):
        tech = f"{techs[i % len(techs)]}" if i < 40 else f"idea_{i:03d}"
        runs = [f"e{i}-{tech}-s{s}-{10**7 + i:08d}" for s in range(3)]
        for s, run in enumerate(runs):
            out.append(
                RunRecord(
                    session="s1",
                    run_id=run,
                    experiment=f"e{i}",
                    candidate=tech,
                    technique=tech,
                    tier="cpu-tiny",
                    hardware="cpu",
                    seed=s,
                    script_sha="abc",
                    env={"X": str(i)},
                    hypothesis="h" * 300,
                    result=RunResult(status="ok", val_bpb=2.4 + 0.001 * s),
                )
            )
        outcome = ["rejected", "inconclusive", "confirmed"][i % 3]
        out.append(
            DecisionRecord(
                session="s1",
                experiment=f"e{i}",
                candidate=tech,
                technique=tech,
                hypothesis="h" * 300,
                tier="cpu-tiny",
                hardware="cpu",
                outcome=outcome,
                kept=outcome == "confirmed",
                delta=-0.003 + 0.0001 * i,
                ci_low=-0.01,
                ci_high=0.004,
                p_value=0.03,
                n_candidate=3,
                n_incumbent=3,
                env={"X": str(i)},
                candidate_runs=runs,
                reason="judge: " + "r" * 150,
            )
        )
        if outcome != "inconclusive":
            out.append(
                FindingRecord(session="s1", technique=tech, status=outcome, tier="cpu-tiny", note="n" * 200)
            )
    return out


def digest_for(n: int) -> str:
    from agent.state import build_state
    from memory.battle_plan import parse_plan
    from testing.shipped import shipped_text

    plan = parse_plan(shipped_text("battle_plan.md"))  # not the checkout's: a session fills in its blocks
    s = build_state(
        records=ledger_records(n),
        plan=plan,
        session="s1",
        tier="cpu-tiny",
        hardware="cpu",
        script_sha="abc",
        budget_left=Budget(experiments=10, minutes=30.0),
        frontier="2026-04-29 1.0611 PR #1855 merged: phased LoRA TTT, GPTQ, MLP 4x",
    )
    return P.decision_prompt(s)


@pytest.mark.parametrize("n", [10, 500])
def test_the_digest_stays_under_its_budget_as_the_ledger_grows(n):
    text = digest_for(n)
    print(f"\ndecision prompt with {n} experiments in the ledger: {len(text)} characters")
    assert len(text) <= P.DEFAULT_MAX_CHARS + 600  # the digest's budget plus the template's fixed text
    assert "## Human directives" in text and "## Budget left" in text and "## Techniques judged" in text
    if n == 500:  # the table was cut by count, not by the budget, and says where the rest is
        assert re.search(
            r"\n\+\d+ more \(\d+ confirmed, \d+ inconclusive, \d+ rejected\): query_findings", text
        )


# -- a whole session --------------------------------------------------------------------------------------

ACT_OLD = "    return (F.leaky_relu(x, slope) if slope else F.relu(x)).square()"
ACT_NEW = "    return F.silu(x).square()"


def _verdict(text: str) -> tuple[str | None, str | None]:
    """(outcome, last run id) from the prompt's Last result line: "e1: rejected; delta ...; last run ID"."""
    outcome = re.search(r"^[^\n:]+: (confirmed|rejected|inconclusive)", text, re.M)
    run = re.search(r"last run (\S+)", text)
    return (outcome.group(1) if outcome else None), (run.group(1) if run else None)


def scientist(body: dict, n: int):
    """A scripted model that reads what it is sent: decision 1 greps, views and rewrites the MLP activation
    (a code change, not a flag) and runs it; decision 2 reads the verdict's log, records the finding and
    runs a flag; decision 3 records that finding and finishes."""
    msgs = body["messages"]
    prompt = msgs[1]["content"]
    decision = int(prompt.split()[1])
    done = [
        c["function"]["name"] for m in msgs[2:] if m["role"] == "assistant" for c in m.get("tool_calls", [])
    ]
    last_tool = next((m["content"] for m in reversed(msgs) if m["role"] == "tool"), "")
    verdict = prompt[prompt.index("## Last result") + len("## Last result\n") :]
    outcome, last_run = _verdict(verdict)
    if decision == 1:
        if not done:
            return tool_reply(call("grep_script", {"pattern": "def mlp_activation", "ignore_case": None}))
        if done[-1] == "grep_script":
            line = int(json.loads(last_tool)["text"].split("|")[0])
            return tool_reply(call("view_script", {"start_line": line, "end_line": line + 3}))
        if done[-1] == "view_script":
            rows = [r.split("| ", 1)[1] for r in json.loads(last_tool)["text"].splitlines()]
            seen = next(r for r in rows if r.startswith("    return "))
            return tool_reply(
                call(
                    "edit_train_script",
                    {
                        "rationale": "SiLU squared: a smooth relu^2",
                        "path": None,
                        "edits": [{"search": seen, "replace": ACT_NEW}],
                    },
                )
            )
        return tool_reply(
            call(
                "launch_local_sweep",
                {
                    "name": "silu2",
                    "technique": "silu2",
                    "env": [],
                    "hypothesis": "a smooth squared activation trains faster",
                },
            )
        )
    if decision == 2:
        if "read_logs" not in done:
            return tool_reply(call("read_logs", {"run_id": last_run, "tail_lines": 5}))
        if "record_finding" not in done:
            return tool_reply(
                call(
                    "record_finding",
                    {
                        "technique": "silu2",
                        "status": outcome,
                        "experiment": None,
                        "note": "from the model: SiLU^2 MLP on cpu-tiny",
                    },
                )
            )
        return tool_reply(
            call(
                "launch_local_sweep",
                {
                    "name": "leaky_relu2",
                    "env": [{"name": "MLP_ACT_SLOPE", "value": "0.5"}],
                    "technique": "leaky_relu2",
                    "hypothesis": "the directive says cheap flags first",
                },
            )
        )
    if "record_finding" not in done:
        return tool_reply(
            call(
                "record_finding",
                {
                    "technique": "leaky_relu2",
                    "status": outcome,
                    "experiment": None,
                    "note": "from the model: leaky slope 0.5",
                },
            )
        )
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
        summary = run_session(
            ws,
            planner=pl,
            tier="cpu-tiny",
            budget=Budget(experiments=3),
            session="llm1",
            progress=Progress.quiet(),
        )
    assert summary.decisions == 2 and "the model finished" in summary.stopped_because
    ledger = check_consistent(ws, "llm1")
    decisions = ledger.records(DecisionRecord)
    assert [d.technique for d in decisions] == ["silu2", "leaky_relu2"]
    assert all(d.planner == "llm" and d.tokens_used and d.tokens_used > 0 for d in decisions)
    assert not [e for e in ledger.records(EventRecord) if e.event in ("llm_tool_refused", "proposal_refused")]
    # the model's edit is the first experiment's commit; the branch has it only if the judge kept it
    first = decisions[0]
    assert ACT_NEW in git(ws, "show", f"{first.git_commit}:trainer/train_gpt.py")
    assert (ACT_NEW in (ws / "trainer/train_gpt.py").read_text()) == first.kept
    # the model's findings repeat the judge's outcome, with the judge's statistics and the model's note
    mine = [f for f in ledger.records(FindingRecord) if f.note.startswith("from the model")]
    assert [(f.technique, f.status) for f in mine] == [(d.technique, d.outcome) for d in decisions]
    assert mine[0].delta == first.delta
    plan = (ws / "battle_plan.md").read_text()
    assert "- test the cheap flags first" in plan and "silu2" in plan and "leaky_relu2" in plan
    # each decision: one stateless prompt led by the directive; each verdict came back as the Last result
    bodies = fake.chat_requests()
    prompts = {user_prompt(b) for b in bodies}
    assert all(p.index("test the cheap flags first") < p.index("## Incumbent") for p in prompts)
    last = user_prompt(bodies[-1])
    assert decisions[1].experiment in last and "d1 silu2 edit +1/-1 lines" in last
    assert key not in ledger.path.read_text() and key not in git(ws, "log", "-p", "--all")
    assert all(key not in json.dumps(b["messages"]) for b in bodies)


def test_the_planner_benchmark_runs_the_researcher_on_the_real_trainer():
    # run as a user runs it: the benchmark is a script, not a module the tests import
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "planner.py"),
            "--decisions",
            "6",
            "--tokenizer",
            "chars",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        check=True,
    ).stdout
    report = json.loads(out[out.index("{\n") :])
    assert report["decisions_run"] == 6 and not report["stopped"]
    first = report["first_10"]
    assert first["fallbacks"] == 0 and first["requests_per_decision"] > 1  # code decisions take several steps
    assert (
        0 < first["code_edit_share"] < 1
        and first["input_tokens_per_edit_decision"] > first["first_request_tokens"]
    )


def test_frontier_lines_new_since_the_last_decision_are_marked_first(ctx):
    old = "Best legal record: 1.0611 (PR #1855, alice, 2026-04-27)"
    new = "New: 1.0570 (PR #1901, bob, 2026-05-02) [open-claim]: xsa, ttt"
    with FakeOpenAI(
        [tool_reply(call("launch_local_sweep", SWEEP)), tool_reply(call("finish", FINISH))]
    ) as fake:
        pl = planner(fake)
        pl.propose(state(frontier=old), ctx)
        pl.observe({"outcome": "rejected"})
        pl.propose(state(frontier=old + "\n" + new, decisions_so_far=1), ctx)
    first, second = (user_prompt(b) for b in fake.chat_requests())
    assert "NEW" not in first
    assert "1 line(s) NEW since your last decision" in second
    assert second.index("NEW «New: 1.0570") < second.index("«Best legal record")
    assert "» (claims -0.0041 vs best)" in second  # the claimed delta against the best record, in our words


def test_the_tiers_fidelity_and_projection_have_their_place_in_the_research_context(ctx):
    lines = [
        "fidelity cpu-tiny: rank correlation 0.71 with 8xH100 over 9 pairs",
        "projection: incumbent -> 1.0592 at 8xH100 (95% 1.0571..1.0613)",
    ]
    with FakeOpenAI([tool_reply(call("finish", FINISH))]) as fake:
        planner(fake, fidelity=lambda c: lines).propose(state(), ctx)
    prompt = user_prompt(fake.chat_requests()[0])
    context = prompt[prompt.index("## Research context") : prompt.index("## Your journal")]
    assert all(ln in context for ln in lines)


def test_arguments_the_session_would_ignore_are_refused_not_dropped(ctx):
    with FakeOpenAI(
        [
            tool_reply(call("launch_local_sweep", SWEEP | {"seeds": [1, 2]})),
            tool_reply(call("launch_local_sweep", SWEEP)),
        ]
    ) as fake:
        p = planner(fake).propose(state(), ctx)
    assert p.action == "experiment"
    error = tool_messages(fake.chat_requests()[1])[0]
    assert "seeds" in error and "Extra inputs are not permitted" in error


def test_the_research_context_carries_the_tiers_projection_against_the_frontier(ctx):
    planner = LLMPlanner.from_env({"OPENAI_BASE_URL": "http://127.0.0.1:9/v1"})
    text = planner._context(ctx)
    assert "projected 8xH100 val_bpb: 1.2244" in text  # the baseline's published score, nothing kept yet
