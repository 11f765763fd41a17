"""A provider that fails: the LLM planner retries what is transient, adjusts what a 400 names, shrinks what
does not fit, and otherwise hands the decision to the playbook so that the session goes on.

The real openai client talks over HTTP to the scripted server in testing/fakes/fake_openai.py.
"""

from __future__ import annotations

import time

import pytest

from agent.llm_planner import LLMPlanner
from memory.records import EventRecord
from testing.fakes.fake_openai import (
    FakeOpenAI,
    call,
    context_length_error,
    http_error,
    slow_reply,
    text_reply,
    tool_reply,
)
from tests.test_llm_planner import SWEEP, make_ctx, state, user_prompt


@pytest.fixture
def ctx(tmp_path):
    return make_ctx(tmp_path)


def planner(fake: FakeOpenAI, **kw) -> LLMPlanner:
    return LLMPlanner(
        "fake-model",
        base_url=fake.base_url,
        **({"max_retries": 3, "timeout_s": 10, "retry_base_s": 0.01, "retry_max_s": 2.0} | kw),
    )


def test_a_429_is_retried_after_the_servers_retry_after(ctx):
    with FakeOpenAI(
        [
            http_error(429, "rate limited", headers={"Retry-After": "0.3"}),
            tool_reply(call("launch_local_sweep", SWEEP)),
        ]
    ) as fake:
        t0 = time.monotonic()
        p = planner(fake).propose(state(), ctx)
        waited = time.monotonic() - t0
    assert p.action == "experiment" and p.experiment.name == "smear_gate"
    assert len(fake.chat_requests()) == 2
    assert waited >= 0.3  # the server's word, not the 0.01 s backoff


def test_a_500_and_a_timeout_are_retried_and_the_decision_is_the_models(ctx):
    with FakeOpenAI(
        [
            http_error(500, "model crashed"),
            slow_reply(3.0, tool_reply(call("finish", {"reason": "x"}))),
            tool_reply(call("launch_local_sweep", SWEEP)),
        ]
    ) as fake:
        p = planner(fake, timeout_s=0.5).propose(state(), ctx)
    assert p.action == "experiment" and not p.reason.startswith("playbook")
    assert len(fake.chat_requests()) == 3


def test_retries_are_bounded_and_then_the_playbook_decides(ctx):
    with FakeOpenAI([http_error(503, "overloaded")] * 10) as fake:
        p = planner(fake, max_retries=2).propose(state(), ctx)
    assert len(fake.chat_requests()) == 3
    assert p.action == "experiment" and p.experiment.technique == "smear_gate"
    assert (
        p.reason.startswith("playbook fallback (the LLM server answered HTTP 503 after 2 retries")
        and "overloaded" in p.reason
    )
    events = [e for e in ctx.ledger.records(EventRecord) if e.event == "llm_fallback"]
    assert len(events) == 1 and "503" in events[0].detail["why"]


def test_a_context_length_error_shrinks_the_prompt_and_retries(ctx):
    with FakeOpenAI([context_length_error(), tool_reply(call("launch_local_sweep", SWEEP))]) as fake:
        pl = planner(fake)
        p = pl.propose(
            state(
                directives=["d" * 2000],
                findings=[{"technique": f"t{i}", "outcome": "rejected", "delta": 0.01} for i in range(80)],
            ),
            ctx,
        )
    assert p.action == "experiment" and not p.reason.startswith("playbook")
    first, second = fake.chat_requests()
    assert len(user_prompt(second)) < len(user_prompt(first)) * 0.8
    assert pl.shrink == 1


def test_a_400_is_read_for_its_cause_not_taken_for_a_schema_refusal(ctx):
    refusal = "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead."
    with FakeOpenAI([http_error(400, refusal), tool_reply(call("launch_local_sweep", SWEEP))]) as fake:
        pl = planner(fake, strict_tools=True, max_completion_tokens=300)
        assert pl.propose(state(), ctx).action == "experiment"
    first, second = fake.chat_requests()
    assert first["max_tokens"] == 300 and "max_completion_tokens" not in first
    assert second["max_completion_tokens"] == 300 and "max_tokens" not in second
    assert pl.strict is True  # the schemas were never the problem
    assert all(t["function"].get("strict") is True for t in second["tools"])


def test_reasoning_effort_is_dropped_when_the_model_does_not_take_it(ctx):
    with FakeOpenAI(
        [
            http_error(400, "Unrecognized request argument supplied: reasoning_effort"),
            tool_reply(call("launch_local_sweep", SWEEP)),
        ]
    ) as fake:
        assert planner(fake, reasoning_effort="high").propose(state(), ctx).action == "experiment"
    first, second = fake.chat_requests()
    assert first["reasoning_effort"] == "high" and "reasoning_effort" not in second


def test_an_unexplained_400_goes_to_the_playbook_for_that_decision_only(ctx):
    with FakeOpenAI(
        [
            http_error(400, "Invalid value for 'model': no such model"),
            tool_reply(call("launch_local_sweep", SWEEP)),
        ]
    ) as fake:
        pl = planner(fake)
        first = pl.propose(state(), ctx)
        pl.observe({"outcome": "rejected", "kept": False, "delta": 0.002})
        second = pl.propose(state(decisions_so_far=1), ctx)
    assert first.reason.startswith("playbook fallback (the LLM server refused the request (HTTP 400)")
    assert second.action == "experiment" and not second.reason.startswith("playbook")
    assert len(fake.chat_requests()) == 2  # the 400 was not retried blindly
    assert "[playbook fallback]" in user_prompt(fake.chat_requests()[1])  # the journal says who decided


def test_a_dead_provider_hands_decisions_to_the_playbook_and_the_session_goes_on(ctx):
    pl = LLMPlanner(
        "m",
        base_url="http://127.0.0.1:9/v1",
        max_retries=1,
        timeout_s=2,
        retry_base_s=0.01,
        failures_before_pause=2,
        pause_decisions=3,
    )
    queue = [
        {
            "technique": t,
            "env": {"SMEAR_GATE": str(i + 1)},
            "state": "todo",
            "priority": i,
            "decided": None,
            "tries": 0,
            "notes": "",
        }
        for i, t in enumerate(["smear_gate", "smear_gate2", "smear_gate3"])
    ]
    s = state(queue=queue)
    proposals = []
    for i in range(5):
        p = pl.propose(s.model_copy(update={"decisions_so_far": i}), ctx)
        proposals.append(p)
        pl.observe({"outcome": "rejected", "kept": False})
    assert [p.action for p in proposals] == ["experiment"] * 5
    assert all(p.reason.startswith("playbook fallback") for p in proposals)
    assert "cannot reach the LLM server" in proposals[0].reason
    assert "recovers" in proposals[2].reason  # after two failures the LLM is left alone for a while
    assert pl.requests == 4  # two decisions x (one try + one retry); none while paused


def test_a_content_filter_stop_goes_to_the_playbook(ctx):
    with FakeOpenAI([text_reply("", finish_reason="content_filter")]) as fake:
        p = planner(fake).propose(state(), ctx)
    assert p.reason.startswith("playbook fallback (the provider's content filter")
    assert len(fake.chat_requests()) == 1
