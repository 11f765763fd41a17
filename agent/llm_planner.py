"""The LLM planner: a language model choosing experiments through the typed tools, and nothing else.

Each decision is stateless: a static system prompt (role, tools, rules, the trainer's knobs) and one user
message (the state digest, the research context, a compact journal of this planner's past decisions and
the last verdict). Within a decision the model may work in steps (view and grep the script, edit it,
query past findings) under a per-decision token budget; `launch_local_sweep` ends the decision with a
Proposal (the session runs the seeds and the judge decides), `finish` ends the session.

Everything a broken provider or a hostile model can do is bounded here. Transient failures (429 with
Retry-After, 5xx, timeouts, dropped connections) are retried by tenacity; a 400 is read for what it
says (token parameter, strict schemas, reasoning_effort...) and the request is adjusted once per cause;
a context-length error shrinks the prompt and retries. A decision that still fails falls back to the
playbook for that decision, so a provider outage slows research down instead of ending it. The API key
goes to the HTTP client only; text bound for the model is redacted; outside text is quoted as data.
"""

from __future__ import annotations

import difflib
import email.utils
import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Mapping
from typing import Any, Literal

import openai
import tenacity
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent import prompt as P
from agent.planner import ExperimentSpec, PlannerState, Proposal
from memory.knobs import (
    RUN_SHAPE,
    SAFE_RUNTIME_ENV,
    STEP_MATCHED_FIXED,
    TIER_FIXED,
    Knob,
    allowed_override_names,
    read_knobs,
)
from tools import registry
from tools.registry import format_validation_error
from tools.sweep import ENV_PAIRS_SCHEMA, env_from_pairs

log = logging.getLogger("pgolf.llm")

DEFAULT_MODEL = "gpt-5-mini"
PLACEHOLDER_KEY = "sk-no-key"  # local servers (llama.cpp, vLLM, Ollama) accept any key
SWEEP_TOOL = "launch_local_sweep"
FINISH_TOOL = "finish"
# offered to the model; the registry's own launch_local_sweep (seeds, several candidates) is not: the
# session chooses seeds, so the model's version of the tool takes one experiment and nothing it would ignore
OFFERED_TOOLS = [
    "view_script",
    "grep_script",
    "edit_train_script",
    SWEEP_TOOL,
    "query_findings",
    "read_logs",
    "record_finding",
    FINISH_TOOL,
]
MAX_KEPT_ARGUMENT_CHARS = 4000  # what an assistant tool call keeps of its arguments within a decision
MAX_KEPT_CONTENT_CHARS = 1000
MAX_TOOL_RESULT_CHARS = 5000
# What one decision's steps (the model's calls and the tools' answers) may add to a request, in characters
# (~3 a token): with the ~3.7K-token stateless prompt, every request of a decision stays within 4K tokens.
DEFAULT_WORK_CHARS = 800
JOURNAL_SHOWN = 3  # entries of the journal in the prompt; older ones are one query_findings away
DEFAULT_DIGEST_CHARS = 3000
DEFAULT_SESSION_TOKENS = (
    8_000_000  # 500 decisions at ~10K input tokens each (benchmarks/planner.py), with room
)
DEFAULT_DECISION_TOKENS = 40_000  # input tokens of all requests of one decision


class FinishArgs(BaseModel):
    reason: str = Field(min_length=1, max_length=1000, description="why the session should end now")


class FinishResult(BaseModel):
    acknowledged: bool = True


def _finish(
    args: FinishArgs, ctx: Any
) -> FinishResult:  # the planner intercepts it; this is for the registry
    return FinishResult()


if FINISH_TOOL not in registry.names():
    registry.tool(FINISH_TOOL, "End the session: nothing promising is left. Give the reason.", FinishArgs)(
        _finish
    )


class ExperimentArgs(BaseModel):
    """What the model gives to launch one experiment (the session supplies seeds, tier and script); an
    argument it would expect to matter (seeds, a second candidate) is refused, not silently dropped."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="lowercase slug, e.g. relu2_mlp")
    technique: str | None = Field(default=None, description="queue technique id; null for your own idea")
    hypothesis: str = Field(default="", max_length=2000, description="expected effect on val_bpb, and why")
    env: dict[str, str] = Field(default_factory=dict)


def experiment_schema(env_names: list[str]) -> dict[str, Any]:
    """The model's launch_local_sweep parameters; `env_names` (when given) become the enum of an override's
    name. The class docstring is for readers of this file, not a schema description the model pays for."""
    schema = ExperimentArgs.model_json_schema()
    schema.pop("description", None)
    schema["properties"]["env"] = ENV_PAIRS_SCHEMA | {
        "description": "overrides of the system prompt's knobs; [] for none"
    }
    return registry.with_env_names(registry.strict_schema(schema), env_names)


SWEEP_DESCRIPTION = (
    "Run ONE experiment: the working script (your edit, if any) with these knob overrides; ends the decision."
)


def load_tools() -> None:
    """Register every tool module of the project (the registry fills as modules are imported)."""
    from tools.toolbox import load_tools as _load

    _load()


# -- configuration ---------------------------------------------------------------------------------


class LLMConfig(BaseModel):
    model: str = DEFAULT_MODEL
    base_url: str | None = None
    max_turns_per_decision: int = Field(default=8, ge=1, le=64)
    max_tokens_per_session: int = Field(default=DEFAULT_SESSION_TOKENS, ge=1000)
    max_tokens_per_decision: int = Field(default=DEFAULT_DECISION_TOKENS, ge=1000)
    timeout_s: float = Field(default=120.0, gt=0)
    max_retries: int = Field(default=4, ge=0, le=10)
    strict_tools: bool | Literal["auto"] = "auto"
    max_completion_tokens: int | None = None
    token_param: Literal["auto", "max_completion_tokens", "max_tokens"] = "auto"
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LLMConfig:
        env = os.environ if env is None else env
        raw: dict[str, Any] = {
            "model": env.get("PGOLF_LLM_MODEL"),
            "base_url": env.get("OPENAI_BASE_URL"),
            "max_turns_per_decision": env.get("PGOLF_LLM_MAX_TURNS"),
            "max_tokens_per_session": env.get("PGOLF_LLM_MAX_TOKENS"),
            "max_tokens_per_decision": env.get("PGOLF_LLM_MAX_DECISION_TOKENS"),
            "timeout_s": env.get("PGOLF_LLM_TIMEOUT_S"),
            "max_retries": env.get("PGOLF_LLM_MAX_RETRIES"),
            "max_completion_tokens": env.get("PGOLF_LLM_MAX_COMPLETION_TOKENS"),
            "token_param": env.get("PGOLF_LLM_TOKEN_PARAM"),
            "reasoning_effort": env.get("PGOLF_LLM_REASONING_EFFORT"),
        }
        strict = (env.get("PGOLF_LLM_STRICT") or "").strip().lower()
        if strict:
            raw["strict_tools"] = "auto" if strict == "auto" else strict in ("1", "true", "yes", "on")
        return cls.model_validate({k: v for k, v in raw.items() if v not in (None, "")})


def choose_planner(kind: str = "auto", env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """Which planner `golf run --planner KIND` gets, and a sentence saying why."""
    env = os.environ if env is None else env
    if kind == "playbook":
        return "playbook", "the playbook planner was asked for"
    if kind == "llm":
        return "llm", f"the LLM planner was asked for (model {env.get('PGOLF_LLM_MODEL') or DEFAULT_MODEL})"
    if kind != "auto":
        raise ValueError(f"unknown planner {kind!r}: auto, llm or playbook")
    where = (
        "OPENAI_BASE_URL"
        if env.get("OPENAI_BASE_URL")
        else "OPENAI_API_KEY"
        if env.get("OPENAI_API_KEY")
        else ""
    )
    if where:
        return "llm", (
            f"auto: {where} is set, so the LLM planner drives the session "
            f"(model {env.get('PGOLF_LLM_MODEL') or DEFAULT_MODEL})"
        )
    return (
        "playbook",
        "auto: neither OPENAI_API_KEY nor OPENAI_BASE_URL is set, so the playbook planner drives",
    )


# -- provider errors -------------------------------------------------------------------------------


class DecisionFailed(Exception):
    """The provider could not give this decision an answer (after retries and adjustments)."""


class ContextTooLong(Exception):
    pass


_CONTEXT_MARKERS = (
    "context_length_exceeded",
    "maximum context length",
    "context length",
    "context window",
    "too many tokens",
    "reduce the length",
    "prompt is too long",
)


def _error_text(e: openai.APIStatusError) -> str:
    body = e.body if isinstance(e.body, dict) else {}
    err = body.get("error", body) if isinstance(body, dict) else {}
    code = err.get("code") if isinstance(err, dict) else None
    return f"{e.message} {code or ''}".lower()


def is_transient(e: BaseException) -> bool:
    """Worth retrying: rate limits, server errors, timeouts and dropped connections."""
    if isinstance(e, openai.APITimeoutError | openai.APIConnectionError):
        return True
    return isinstance(e, openai.APIStatusError) and (e.status_code in (408, 409, 429) or e.status_code >= 500)


def retry_after_s(e: BaseException | None) -> float | None:
    """The server's Retry-After (seconds or an HTTP date; retry-after-ms too), if it sent one."""
    response = getattr(e, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time()) if when else None


# -- the planner -----------------------------------------------------------------------------------


def _kept_arguments(arguments: str) -> str:
    """Arguments as kept within the decision: valid JSON, and never large (servers re-parse them)."""
    if len(arguments) <= MAX_KEPT_ARGUMENT_CHARS:
        try:
            json.loads(arguments)
            return arguments
        except ValueError:
            pass
        try:  # raw newlines inside strings: read leniently, kept as strict JSON
            return json.dumps(registry.parse_arguments(arguments))
        except ValueError:
            return json.dumps({"_invalid_arguments": arguments[:200]})
    return json.dumps({"_dropped_arguments_chars": len(arguments)})


def _canonical(arguments: str) -> str:
    try:
        return json.dumps(registry.parse_arguments(arguments), sort_keys=True)
    except (ValueError, TypeError):
        return arguments


def verdict_text(outcome: dict[str, Any], limit: int = 500) -> str:
    """The last verdict as one line: what the judge decided, the effect with its interval, the judge's
    reason and the last runs' ids (for read_logs). The hypothesis the model wrote itself is left out."""
    o = outcome

    def num(key: str, fmt: str) -> str:
        v = o.get(key)
        return format(v, fmt) if isinstance(v, int | float) and not isinstance(v, bool) else "-"

    parts = [
        f"{o.get('experiment') or o.get('candidate') or '?'}: {o.get('outcome', '?')}"
        + (" kept" if o.get("kept") else "")
    ]
    if o.get("delta") is not None:
        ci = f" [{num('ci_low', '+.3g')},{num('ci_high', '+.3g')}]" if o.get("ci_low") is not None else ""
        parts.append(f"delta {num('delta', '+.3g')}{ci}")
    if o.get("p_value") is not None:
        parts.append(f"p {num('p_value', '.2g')}")
    if o.get("n_candidate"):
        parts.append(f"n {o['n_candidate']}")
    if o.get("reason"):
        parts.append(P._clip(str(o["reason"]), 60))
    runs = o.get("candidate_runs")
    if isinstance(runs, list) and runs:
        parts.append(f"last run {runs[-1]}")  # for read_logs; the others differ in the seed suffix
    if o.get("error"):
        parts.append("error " + str(o["error"])[:200])
    return P.redact(P._clip("; ".join(parts), limit))


class JournalEntry(BaseModel):
    decision: int
    source: Literal["llm", "playbook"]
    name: str
    technique: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    edit: str = ""  # "+12/-3 lines: swap GELU for relu^2"
    outcome: str = "pending"

    def line(self) -> str:
        env = " ".join(f"{k}={v}" for k, v in self.env.items())
        parts = [
            f"d{self.decision}",
            # the technique in brackets when the name does not already start with it
            self.name
            + (f" ({self.technique})" if self.technique and not self.name.startswith(self.technique) else ""),
        ]
        if self.source == "playbook":
            parts.append("[playbook fallback]")
        if env:
            parts.append("env " + env)
        if self.edit:
            parts.append("edit " + self.edit)
        return P._clip(" ".join(parts) + " -> " + self.outcome, 200)


class LLMPlanner:
    name = "llm"

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        max_turns_per_decision: int = 8,
        max_tokens_per_session: int = DEFAULT_SESSION_TOKENS,
        max_tokens_per_decision: int = DEFAULT_DECISION_TOKENS,
        timeout_s: float = 120.0,
        max_retries: int = 4,
        strict_tools: bool | Literal["auto"] = "auto",
        max_completion_tokens: int | None = None,
        token_param: Literal["auto", "max_completion_tokens", "max_tokens"] = "auto",
        reasoning_effort: str | None = None,
        digest_chars: int = DEFAULT_DIGEST_CHARS,
        max_repeats: int = 3,
        tools: list[str] | None = None,
        tool_choice: str | dict[str, Any] = "auto",
        retry_base_s: float = 1.0,
        retry_max_s: float = 60.0,
        fallback: Any = None,
        failures_before_pause: int = 3,
        pause_decisions: int = 5,
        fidelity: Any = None,
        max_work_chars: int = DEFAULT_WORK_CHARS,
    ):
        load_tools()
        if api_key is None and base_url:
            api_key = PLACEHOLDER_KEY
        self.model = model
        self.base_url = base_url
        official = base_url is None or "api.openai.com" in base_url
        # the key lives in the client only: never in messages, logs or records; tenacity does the retrying
        self.client = openai.OpenAI(api_key=api_key, base_url=base_url, timeout=timeout_s, max_retries=0)
        self.max_turns = max_turns_per_decision
        self.max_tokens = max_tokens_per_session
        self.max_decision_tokens = max_tokens_per_decision
        self.max_retries = max_retries
        self.retry_base_s, self.retry_max_s = retry_base_s, retry_max_s
        self.max_completion_tokens = max_completion_tokens
        self.token_param = (
            ("max_completion_tokens" if official else "max_tokens") if token_param == "auto" else token_param
        )
        self.reasoning_effort = reasoning_effort
        self.digest_chars = digest_chars
        self.max_work_chars = max_work_chars
        self.max_repeats = max_repeats
        self.tool_choice = tool_choice  # "auto"; a named function forces a call (small local models)
        wanted = tools or OFFERED_TOOLS
        self.tool_names = [t for t in wanted if t in registry.names() or t == SWEEP_TOOL]
        if SWEEP_TOOL not in self.tool_names or FINISH_TOOL not in self.tool_names:
            raise ValueError(f"the LLM planner needs {SWEEP_TOOL} and {FINISH_TOOL}")
        # OpenAI takes strict schemas (and a 400 turns them off); other servers often reject the flag
        self.strict = official if strict_tools == "auto" else bool(strict_tools)
        self.send_parallel_flag = True
        self.fallback = fallback
        self.failures_before_pause, self.pause_decisions = failures_before_pause, pause_decisions
        self.fidelity = fidelity  # callable(ctx) -> lines: the tier's fidelity and projection, when wired
        self.messages: list[dict[str, Any]] = []  # the current (last) decision's conversation
        self.journal: list[JournalEntry] = []
        self.last_result = ""
        self.tokens_session = 0
        self.requests = 0
        self.consecutive_failures = 0
        self.paused_for = 0
        self.shrink = 0  # how many times the prompt had to be cut for the context window
        self.stopped_reason: str | None = None
        self.fallbacks: list[str] = []
        self._system: tuple[str, str] | None = None  # (script sha, system prompt)
        self._knob_names: list[str] = []
        self._knobs_by_sha: dict[str, tuple[list[Knob], list[str]]] = {}
        self.seen_frontier: set[str] = set()  # the frontier lines shown at earlier decisions
        self._edit_note = ""
        self._decision_no = 0
        self.repeat_count = 0
        self.last_call: tuple[str, str] | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> LLMPlanner:
        env = os.environ if env is None else env
        cfg = LLMConfig.from_env(env)
        key = env.get("OPENAI_API_KEY") or None
        if key is None and not cfg.base_url:
            raise ValueError("the LLM planner needs OPENAI_API_KEY, or OPENAI_BASE_URL for a local server")
        from agent.fidelity import context_lines  # the tier's measured fidelity and the projected score

        overrides.setdefault("fidelity", context_lines)
        return cls(
            cfg.model, cfg.base_url, key, **(cfg.model_dump(exclude={"model", "base_url"}) | overrides)
        )

    # -- Planner protocol -------------------------------------------------------------------------

    def observe(self, outcome: dict[str, Any]) -> None:
        if self.journal and self.journal[-1].outcome == "pending":
            o = outcome
            d = o.get("delta")
            self.journal[-1].outcome = (
                f"{o.get('outcome', '?')}{' kept' if o.get('kept') else ''}"
                + (f" d={d:+.3g}" if isinstance(d, int | float) else "")
                + (f" p={o['p_value']:.2g}" if isinstance(o.get("p_value"), int | float) else "")
                + (f" n={o['n_candidate']}" if o.get("n_candidate") else "")
            )
            if self.journal[-1].source == "playbook" and self.fallback is not None:
                self.fallback.observe(outcome)
        self.last_result = verdict_text(outcome)

    def propose(self, state: PlannerState, ctx: Any) -> Proposal:
        if self.paused_for > 0:
            self.paused_for -= 1
            return self._fall_back(
                state,
                ctx,
                "the LLM provider failed on recent decisions; the playbook decides while it recovers",
                0,
                count=False,
            )
        try:
            proposal = self._decide(state, ctx)
        except DecisionFailed as e:
            return self._fall_back(state, ctx, str(e), getattr(e, "tokens", 0))
        self.consecutive_failures = 0
        self._saw(state)
        return proposal

    # -- one decision -----------------------------------------------------------------------------

    def _refresh_static(self, ctx: Any) -> None:
        """The system prompt is static for a script version (a cached prefix at the provider); the knob
        enum follows the working script so that a knob the model just added can be set."""
        script = _read_script(ctx)
        step_matched = bool(getattr(getattr(ctx, "tier", None), "step_matched", False))
        key = _text_sha(script) + ("/steps" if step_matched else "")
        if key not in self._knobs_by_sha:  # parsing a 1,400-line script costs ~0.1 s: once per version
            knobs: list[Knob] = read_knobs(script) if script else []
            # the model sets the trainer's own knobs; the runtime names (threads, devices) are the harness's
            # and what the tier fixes (memory/knobs.py check_tier_fixed) would only be refused
            fixed = TIER_FIXED | RUN_SHAPE | (STEP_MATCHED_FIXED if step_matched else frozenset())
            names = sorted(allowed_override_names(script) - SAFE_RUNTIME_ENV - fixed) if script else []
            self._knobs_by_sha = {key: (knobs, names)}
        knobs, self._knob_names = self._knobs_by_sha[key]
        if self._system is None:  # the knob list of the system prompt is the incumbent's: stays put
            self._system = (key, P.system_prompt(knobs))

    def _tools(self) -> list[dict[str, Any]]:
        # The knob names as an enum only where the provider decodes against it (strict tools): elsewhere the
        # enum is ~650 tokens a request repeating the system prompt's knob list, and a wrong name is refused
        # here with the nearest knobs named (_intercept), which costs one step instead of every request.
        env_names = self._knob_names if self.strict else []
        out = []
        for name in self.tool_names:
            if name == SWEEP_TOOL:
                fn: dict[str, Any] = {
                    "name": SWEEP_TOOL,
                    "description": SWEEP_DESCRIPTION,
                    "parameters": experiment_schema(env_names),
                }
                if self.strict:
                    fn["strict"] = True
                out.append({"type": "function", "function": fn})
            else:
                out += registry.openai_schemas([name], strict=self.strict, env_names=env_names)
        return out

    def _user_prompt(self, state: PlannerState, ctx: Any) -> str:
        # cut for a context window that refused the prompt: the digest to a quarter, then less; the journal
        # and the research context's fidelity lines go too (the record rule and the tier line stay)
        digest_chars = (
            self.digest_chars if not self.shrink else max(600, self.digest_chars >> (self.shrink + 1))
        )
        shown = max(1, JOURNAL_SHOWN >> self.shrink)
        older = len(self.journal) - shown
        entries = self.journal[-shown:]
        if (
            entries and self.last_result and entries[-1].outcome != "pending"
        ):  # its verdict is the Last result
            entries = [*entries[:-1], entries[-1].model_copy(update={"outcome": "see Last result"})]
        journal = "\n".join(
            ([f"({older} earlier decisions: use query_findings)"] if older > 0 else [])
            + [j.line() for j in entries]
        )
        text = P.redact(
            P.decision_prompt(
                state,
                digest_chars,
                context=self._context(ctx, fidelity=not self.shrink),
                journal=journal,
                last=self.last_result,
                seen_frontier=self.seen_frontier,
            )
        )
        return text

    def _saw(self, state: PlannerState) -> None:
        self.seen_frontier = {ln for ln in state.frontier.splitlines() if ln.strip()}

    def _context(self, ctx: Any, fidelity: bool = True) -> str:
        tier = getattr(ctx, "tier", None)
        calibration: list[str] = []
        lines: list[str] = []
        try:
            calibration = calibration_lines(ctx)
        except Exception as e:  # advice only: a broken calibration must not cost the decision
            log.info("calibration unavailable: %s", e)
        if self.fidelity is not None and fidelity:
            try:
                lines = list(self.fidelity(ctx))
            except Exception as e:
                log.info("fidelity unavailable: %s", e)
        return P.research_context(tier, calibration, lines)

    def _decide(self, state: PlannerState, ctx: Any) -> Proposal:
        self._refresh_static(ctx)
        assert self._system is not None
        tools = self._tools()
        work: list[dict[str, Any]] = []  # this decision's assistant and tool messages
        tokens, input_tokens, nudged = 0, 0, False
        self._edit_note = ""
        self._decision_no = state.decisions_so_far + 1
        for _turn in range(self.max_turns):
            if self.tokens_session >= self.max_tokens:
                return self._stop(
                    f"token budget spent: {self.tokens_session} of {self.max_tokens} tokens "
                    "used this session",
                    tokens,
                )
            if input_tokens >= self.max_decision_tokens:
                raise _failed(
                    f"the decision's token budget ({self.max_decision_tokens} input tokens) is spent "
                    "without an experiment",
                    tokens,
                )
            self.messages = [
                {"role": "system", "content": self._system[1]},
                {"role": "user", "content": self._user_prompt(state, ctx)},
            ] + work
            try:
                response = self._complete(self.messages, tools)
            except ContextTooLong:
                if self.shrink >= 3:
                    raise _failed(
                        "the prompt does not fit the model's context even when cut", tokens
                    ) from None
                self.shrink += 1
                work = [_shrunk(m) for m in work]
                log.info(
                    "context too long: the prompt is cut (level %d) and the request retried", self.shrink
                )
                continue
            used, prompt_used = _usage(response, self.messages)
            tokens += used
            input_tokens += prompt_used
            self.tokens_session += used
            choices = getattr(response, "choices", None) or []
            if not choices or getattr(choices[0], "message", None) is None:
                raise _failed("the LLM server sent a reply with no message", tokens)
            finish = getattr(choices[0], "finish_reason", None)
            if finish == "content_filter":
                raise _failed("the provider's content filter stopped the reply", tokens)
            msg = choices[0].message
            calls = list(msg.tool_calls or [])
            content = P.redact(str(msg.content or ""))[:MAX_KEPT_CONTENT_CHARS]
            if not calls:
                if nudged:
                    raise _failed("the model answered twice without a tool call", tokens)
                nudged = True
                note = P.load_template("nudge.txt").strip()
                if finish == "length":
                    note = (
                        "Your reply was cut at the completion token limit before any tool call. "
                        + note
                        + " Keep it short."
                    )
                work += [{"role": "assistant", "content": content}, {"role": "user", "content": note}]
                continue
            proposal = self._handle_calls(calls, content, ctx, tokens, work, truncated=finish == "length")
            if proposal is not None:
                return proposal
            work = fit_work(work, self.max_work_chars)
        raise _failed(f"no experiment chosen within {self.max_turns} turns", tokens)

    def _fall_back(
        self, state: PlannerState, ctx: Any, why: str, tokens: int, count: bool = True
    ) -> Proposal:
        """This decision goes to the playbook; the session goes on, and the LLM is asked again later."""
        if count:
            self.consecutive_failures += 1
            if self.consecutive_failures >= self.failures_before_pause:
                self.paused_for = self.pause_decisions
                self.consecutive_failures = 0
        self.fallbacks.append(why)
        log.warning("LLM decision failed (%s); the playbook decides this one", why)
        self._event(ctx, "llm_fallback", {"why": P.redact(why)[:500], "paused_for": self.paused_for})
        if self.fallback is None:
            from agent.playbook import PlaybookPlanner

            self.fallback = PlaybookPlanner()
        p = self.fallback.propose(state, ctx)
        p = p.model_copy(
            update={
                "reason": P._clip(f"playbook fallback ({why}): {p.reason}", 600),
                "tokens_used": p.tokens_used + tokens,
            }
        )
        if p.action == "experiment" and p.experiment is not None:
            self.journal.append(
                JournalEntry(
                    decision=state.decisions_so_far + 1,
                    source="playbook",
                    name=p.experiment.name,
                    technique=p.experiment.technique,
                    env=p.experiment.env,
                )
            )
        return p

    # -- requests ---------------------------------------------------------------------------------

    def _request(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "tools": tools,
            "tool_choice": self.tool_choice,
        }
        if self.strict and self.send_parallel_flag:
            kwargs["parallel_tool_calls"] = False  # strict schemas hold only without parallel calls
        if self.max_completion_tokens:
            kwargs[self.token_param] = self.max_completion_tokens
        if self.reasoning_effort:
            kwargs["reasoning_effort"] = self.reasoning_effort
        return kwargs

    def _complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> Any:
        """One completion: transient errors retried, a 400 adjusted for (once per cause), or DecisionFailed."""
        adjusted: set[str] = set()
        while True:
            kwargs = self._request(messages, tools)
            try:
                return self._create(kwargs)
            except openai.BadRequestError as e:
                text = _error_text(e)
                if any(m in text for m in _CONTEXT_MARKERS):
                    raise ContextTooLong(text) from None
                cause = self._diagnose_400(text)
                if cause is None or cause in adjusted:
                    raise DecisionFailed(
                        f"the LLM server refused the request (HTTP 400): {P.redact(str(e.message))[:300]}"
                    ) from None
                adjusted.add(cause)
                log.info("HTTP 400 (%s): %s; retrying", cause, str(e.message)[:200])
                if cause == "strict":
                    tools = [_unstrict(t) for t in tools]
            except openai.APIStatusError as e:
                raise DecisionFailed(
                    f"the LLM server answered HTTP {e.status_code} after {self.max_retries} "
                    f"retries: {P.redact(str(e.message))[:300]}"
                ) from None
            except openai.APITimeoutError:
                raise DecisionFailed(f"the LLM server timed out after {self.max_retries} retries") from None
            except openai.APIConnectionError as e:
                raise DecisionFailed(
                    f"cannot reach the LLM server at {self.base_url or 'api.openai.com'}: "
                    f"{P.redact(str(e))[:200]}"
                ) from None

    def _diagnose_400(self, text: str) -> str | None:
        """Read a 400 for what it refuses and change that one thing; None when it is not ours to fix."""
        if (
            "max_tokens" in text
            and ("max_completion_tokens" in text or "not supported" in text)
            and self.token_param == "max_tokens"
        ):
            self.token_param = "max_completion_tokens"
            return "token parameter"
        if "max_completion_tokens" in text and self.token_param == "max_completion_tokens":
            self.token_param = "max_tokens"
            return "token parameter"
        if "reasoning_effort" in text or "reasoning.effort" in text:
            self.reasoning_effort = None
            return "reasoning_effort"
        if "parallel_tool_calls" in text:
            self.send_parallel_flag = False
            return "parallel_tool_calls"
        if self.strict and any(
            m in text
            for m in (
                "strict",
                "invalid schema",
                "json schema",
                "additionalproperties",
                "function parameters",
            )
        ):
            self.strict = False
            return "strict"
        if "tool_choice" in text and self.tool_choice != "auto":
            self.tool_choice = "auto"
            return "tool_choice"
        return None

    def _create(self, kwargs: dict[str, Any]) -> Any:
        def wait(state: tenacity.RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            told = retry_after_s(exc)
            if told is not None:
                return min(told, self.retry_max_s)
            backoff = self.retry_base_s * 2 ** (state.attempt_number - 1)
            return min(self.retry_max_s, backoff * (0.5 + random.random()))

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.info(
                "LLM request failed (%s); retry %d of %d",
                type(exc).__name__,
                state.attempt_number,
                self.max_retries,
            )

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.max_retries + 1),
            wait=wait,
            retry=tenacity.retry_if_exception(is_transient),
            before_sleep=before_sleep,
            reraise=True,
        )
        for attempt in retrying:
            with attempt:
                self.requests += 1
                return self.client.chat.completions.create(**kwargs)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- tool calls -------------------------------------------------------------------------------

    def _stop(self, reason: str, tokens: int) -> Proposal:
        self.stopped_reason = reason
        log.info("LLM planner stops: %s", reason)
        return Proposal(action="stop", reason=reason, tokens_used=tokens)

    def _event(self, ctx: Any, event: str, detail: dict[str, Any]) -> None:
        ledger = getattr(ctx, "ledger", None)
        if ledger is None:
            return
        from memory.records import EventRecord

        ledger.append(EventRecord(session=getattr(ctx, "session", "?"), event=event, detail=detail))

    def _record_refusal(self, ctx: Any, tool: str, error: str) -> None:
        log.info("tool call refused: %s: %s", tool[:80], P.redact(error)[:200])
        self._event(ctx, "llm_tool_refused", {"tool": tool[:80], "error": P.redact(error)[:500]})

    def _handle_calls(
        self,
        calls: list[Any],
        content: str,
        ctx: Any,
        tokens: int,
        work: list[dict[str, Any]],
        truncated: bool = False,
    ) -> Proposal | None:
        kept_calls: list[dict[str, Any]] = []
        answers: list[tuple[str, str]] = []
        proposal: Proposal | None = None
        for i, call in enumerate(calls):
            fn = getattr(call, "function", None)
            name = str(getattr(fn, "name", "") or "")[:64]
            arguments = getattr(fn, "arguments", "") or ""
            if not isinstance(arguments, str):  # some servers send an object
                arguments = json.dumps(arguments, default=str)
            call_id = str(getattr(call, "id", "") or f"call_{len(work)}_{i}")[:64]
            kept_calls.append(
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": P.redact(_kept_arguments(arguments))},
                }
            )
            if proposal is not None:
                answers.append((call_id, "not run: an earlier call in this reply ended the decision"))
                continue
            result, proposal = self._one_call(name, arguments, ctx, tokens)
            if truncated and result.startswith("ERROR: arguments are not valid JSON"):
                result += " (your reply was cut at the completion token limit: send a shorter call)"
            answers.append((call_id, result))
        # "" and not None: llama.cpp answers HTTP 500 to an assistant message with null content
        work.append({"role": "assistant", "content": content, "tool_calls": kept_calls})
        work += [{"role": "tool", "tool_call_id": cid, "content": res} for cid, res in answers]
        return proposal

    def _one_call(self, name: str, arguments: str, ctx: Any, tokens: int) -> tuple[str, Proposal | None]:
        """One tool call: (the tool message to send back, a proposal when the call ends the decision)."""
        key = (name, _canonical(arguments))
        self.repeat_count = self.repeat_count + 1 if key == self.last_call else 1
        self.last_call = key
        if self.repeat_count > self.max_repeats:
            reason = f"the model repeated the same {name} call {self.repeat_count} times"
            self._record_refusal(ctx, name, reason)
            raise _failed(reason, tokens)
        if self.repeat_count == self.max_repeats:
            error = (
                f"refused: this exact {name} call was already made {self.repeat_count - 1} times in a row and "
                "its answer will not change; do something different"
            )
            self._record_refusal(ctx, name, error)
            return error, None
        if name not in self.tool_names:
            error = f"unknown tool {name!r}; available: {', '.join(self.tool_names)}"
            self._record_refusal(ctx, name, error)
            return "ERROR: " + error, None
        if name in (SWEEP_TOOL, FINISH_TOOL):
            return self._intercept(name, arguments, ctx, tokens)
        try:
            outcome = registry.call(name, arguments, ctx)
        except Exception as e:  # a tool's own bug must not end the session the model is steering
            log.exception("tool %s failed", name)
            error = f"the tool failed: {type(e).__name__}: {P.redact(str(e))[:300]}"
            self._record_refusal(ctx, name, error)
            return "ERROR: " + error, None
        if not outcome.ok:
            self._record_refusal(ctx, name, outcome.error or "")
            return P.redact(outcome.text(MAX_TOOL_RESULT_CHARS)), None
        result = P.tidy(outcome.result)
        if name == "edit_train_script" and isinstance(result, dict):
            self._edit_note = _edit_note(registry.parse_arguments(arguments), result)
        if name == "read_logs" and isinstance(result, dict):  # log lines are the candidate's output: data
            result = quote_log_text(result)
        body = json.dumps(result, default=str, separators=(",", ":"), ensure_ascii=False)
        return P.redact(
            body
            if len(body) <= MAX_TOOL_RESULT_CHARS
            else body[: MAX_TOOL_RESULT_CHARS - 14] + "…[truncated]"
        ), None

    def _intercept(self, name: str, arguments: str, ctx: Any, tokens: int) -> tuple[str, Proposal | None]:
        """The two calls that end a decision: parsed like any tool call, then turned into a proposal."""
        if len(arguments) > registry.MAX_ARGUMENT_CHARS:
            error = f"arguments are {len(arguments)} characters; the limit is {registry.MAX_ARGUMENT_CHARS}"
            self._record_refusal(ctx, name, error)
            return "ERROR: " + error, None
        try:
            raw = registry.parse_arguments(arguments)
            if name == FINISH_TOOL:
                finish = FinishArgs.model_validate(raw)
                return "session ends", self._stop(
                    "the model finished: " + P.redact(finish.reason)[:500], tokens
                )
            if isinstance(raw, dict):
                raw = registry.drop_null_defaults(ExperimentArgs, raw)
                raw = raw | {"env": env_from_pairs(raw.get("env") or [])}
            args = ExperimentArgs.model_validate(raw)
            spec = ExperimentSpec(
                name=args.name,
                technique=args.technique or None,
                hypothesis=P.redact(args.hypothesis),
                env=args.env,
            )
            if args.env and self._knob_names:
                unknown = sorted(set(args.env) - set(self._knob_names))
                if unknown:
                    near = sorted(
                        {m for u in unknown for m in difflib.get_close_matches(u, self._knob_names, 3, 0.6)}
                    )
                    raise ValueError(
                        f"not a knob of trainer/train_gpt.py: {', '.join(unknown)}"
                        + (f" (nearest knobs: {', '.join(near)})" if near else "")
                    )
        except json.JSONDecodeError as e:
            error = f"arguments are not valid JSON: {e.msg} at char {e.pos}"
        except ValidationError as e:
            error = format_validation_error(e)
        except ValueError as e:
            error = f"invalid arguments: {e}"
        else:
            log.info("LLM proposes %s (%s) env=%s", spec.name, spec.technique, spec.env)
            self.journal.append(
                JournalEntry(
                    decision=self._decision_no,
                    source="llm",
                    name=spec.name,
                    technique=spec.technique,
                    env=spec.env,
                    edit=self._edit_note,
                )
            )
            return "launched", Proposal(
                action="experiment",
                experiment=spec,
                tokens_used=tokens,
                reason=P._clip(
                    f"chosen by {self.model}" + (f"; edit {self._edit_note}" if self._edit_note else ""), 200
                ),
            )
        self._record_refusal(ctx, name, error)
        return "ERROR: " + error, None


# -- helpers ---------------------------------------------------------------------------------------


def quote_log_text(digest: dict[str, Any]) -> dict[str, Any]:
    """A log digest with every line the run printed quoted as data (one field a line, capped)."""
    out = dict(digest)
    if isinstance(out.get("error_tail"), str):
        out["error_tail"] = [
            P.untrusted(ln, 300) for ln in out["error_tail"].splitlines()[-20:] if ln.strip()
        ]
    if isinstance(out.get("milestones"), list):
        out["milestones"] = [P.untrusted(m, 200) for m in out["milestones"]]
    if isinstance(out.get("status"), str):
        out["status"] = P.untrusted(out["status"], 80)
    return out


def _failed(why: str, tokens: int) -> DecisionFailed:
    e = DecisionFailed(why)
    e.tokens = tokens  # type: ignore[attr-defined]
    return e


def _read_script(ctx: Any) -> str:
    ws = getattr(ctx, "ws", None)
    try:
        return ws.script.read_text(encoding="utf-8") if ws is not None else ""
    except OSError:
        return ""


def _text_sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def _usage(response: Any, messages: list[dict[str, Any]]) -> tuple[int, int]:
    """(total, prompt) tokens from the server's usage, or an estimate (4 characters a token) without it."""
    usage = getattr(response, "usage", None)
    total = getattr(usage, "total_tokens", None) if usage is not None else None
    prompt = getattr(usage, "prompt_tokens", None) if usage is not None else None
    if isinstance(total, int) and total > 0:
        return total, prompt if isinstance(prompt, int) else total
    est = sum(len(str(m.get("content") or "")) for m in messages) // 4 + 1
    return est, est


DROPPED_NOTE = "(earlier steps of this decision were dropped for room) "
ELIDED_NOTE = "[answer elided for room; call again if you still need it]"
CUT_NOTE = " …[cut to fit the decision's budget: ask for less]"


def _size(m: dict[str, Any]) -> int:
    return len(str(m.get("content") or "")) + (len(json.dumps(m["tool_calls"])) if m.get("tool_calls") else 0)


def _applied(c: dict[str, Any]) -> dict[str, Any]:
    """An edit call whose diff came back, with its search/replace text replaced by a pointer to the diff."""
    fn = c.get("function") or {}
    if fn.get("name") != "edit_train_script":
        return c
    try:
        args = registry.parse_arguments(fn.get("arguments"))
    except ValueError:
        return c
    if not isinstance(args, dict):
        return c
    short = {"rationale": str(args.get("rationale", ""))[:200], "edits": "applied: the diff below shows them"}
    return c | {"function": fn | {"arguments": json.dumps(short)}}


def fit_work(work: list[dict[str, Any]], max_chars: int) -> list[dict[str, Any]]:
    """A decision's steps bounded for the next request. A step is an assistant message and the answers
    that follow it (a call is never separated from its answer). A successful edit makes the reads and
    failed edits before it stale (the script changed; the diff shows the region): they are dropped. Then,
    while the steps exceed `max_chars`, older answers are elided, then the oldest steps go, and the
    newest answers are cut to what is left."""
    steps: list[list[dict[str, Any]]] = []
    for m in work:
        if m.get("role") == "assistant" or not steps:
            steps.append([])
        steps[-1].append(m)
    names = {
        c.get("id"): c.get("function", {}).get("name")
        for st in steps
        for c in (st[0].get("tool_calls") or [])
    }

    def edited(st: list[dict[str, Any]]) -> bool:
        return any(
            m.get("role") == "tool"
            and names.get(m.get("tool_call_id")) == "edit_train_script"
            and str(m.get("content", "")).startswith('{"diff"')
            for m in st
        )

    last_edit = max((i for i, st in enumerate(steps) if edited(st)), default=-1)
    dropped = last_edit > 0
    steps = steps[max(0, last_edit) :]
    if last_edit >= 0:  # the diff shows what the edit did: its call keeps the rationale, not the text again
        call_msg = dict(steps[0][0])
        call_msg["tool_calls"] = [_applied(c) for c in call_msg.get("tool_calls") or []]
        steps[0] = [call_msg, *steps[0][1:]]

    def total() -> int:
        return sum(_size(m) for st in steps for m in st)

    # over the budget: first the answers of older steps give way (their calls stay, so the model still
    # knows what it did), then whole older steps, then the newest answers are cut
    for st in steps[:-1]:
        if total() <= max_chars:
            break
        for j, m in enumerate(st):
            if m.get("role") == "tool" and len(str(m.get("content") or "")) > len(ELIDED_NOTE):
                st[j] = m | {"content": ELIDED_NOTE}
    while len(steps) > 1 and total() > max_chars:
        steps.pop(0)
        dropped = True
    out = [dict(m) for st in steps for m in st]
    over = sum(_size(m) for m in out) - max_chars
    answers = [m for m in out if m.get("role") == "tool"]
    for m in reversed(answers):  # the newest answer is cut first: it is the one that made the steps too long
        if over <= 0:
            break
        text = str(m.get("content") or "")
        keep = max(200, len(text) - over - len(CUT_NOTE))
        if keep < len(text):
            m["content"] = text[:keep] + CUT_NOTE
            over -= len(text) - len(m["content"])
    if dropped and out and out[0].get("role") == "assistant":  # in the step's own text: answers stay as sent
        out[0]["content"] = (DROPPED_NOTE + str(out[0].get("content") or "")).strip()
    return out


def _shrunk(m: dict[str, Any]) -> dict[str, Any]:
    if m.get("role") == "tool" and len(str(m.get("content", ""))) > 600:
        return m | {"content": str(m["content"])[:600] + "…[cut to fit the context]"}
    return m


def _unstrict(t: dict[str, Any]) -> dict[str, Any]:
    fn = {k: v for k, v in t["function"].items() if k != "strict"}
    return t | {"function": fn}


def _edit_note(arguments: dict[str, Any], result: dict[str, Any]) -> str:
    diff = str(result.get("diff", ""))
    plus = sum(1 for ln in diff.splitlines() if ln.startswith("+") and not ln.startswith("+++"))
    minus = sum(1 for ln in diff.splitlines() if ln.startswith("-") and not ln.startswith("---"))
    why = str(arguments.get("rationale", "")) if isinstance(arguments, dict) else ""
    return P._clip(f"+{plus}/-{minus} lines: {why}", 50)


def calibration_lines(ctx: Any) -> list[str]:
    """The proxy-to-final calibration per technique kind, for this tier (agent.calibration)."""
    from agent.calibration import calibrations_from_ledger, slope_interval

    tier = getattr(ctx, "tier", None)
    ledger = getattr(ctx, "ledger", None)
    if tier is None or ledger is None:
        return []
    out = []
    for kind, c in calibrations_from_ledger(ledger.records(), tier.name).items():
        lo, hi = slope_interval(c)
        out.append(f"{kind} {c.slope:+.2f} [{lo:+.2f},{hi:+.2f}] ({c.n} pairs, {c.source})")
    return out
