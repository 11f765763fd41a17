"""The LLM planner: a language model choosing experiments through the typed tools, and nothing else.

One decision is a short tool loop on the Chat Completions API. The model may edit the script, read a
log, record a finding or look at the frontier; those calls run through tools.registry and their result
(or the validation error) goes back as a tool message. `launch_local_sweep` is intercepted: its first
candidate becomes the Proposal and the turn ends, because running seeds and judging belong to the
session loop. The verdict comes back through `observe()` and is sent to the model as that call's
result at the next decision, so the model sees its experiment answered in the same conversation.

Everything a broken or hostile model can do is bounded here: turns per decision, tokens per session,
the size of arguments kept in the history, identical calls repeated, replies with no tool call,
unknown tools, and server errors (after the SDK's own retries) all end in a tool error or a clean stop
with a reason. The API key goes to the HTTP client only; text bound for the model is redacted.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any, Literal

import openai
from pydantic import BaseModel, Field, ValidationError

from agent import prompt as P
from agent.planner import ExperimentSpec, PlannerState, Proposal
from tools import registry
from tools.registry import format_validation_error
from tools.sweep import SweepArgs

log = logging.getLogger("pgolf.llm")

DEFAULT_MODEL = "gpt-5-mini"
PLACEHOLDER_KEY = "sk-no-key"  # local servers (llama.cpp, vLLM, Ollama) accept any key
SWEEP_TOOL = "launch_local_sweep"
FINISH_TOOL = "finish"
# offered to the model when registered; anything else in the registry (pod finals, spending) is not
OFFERED_TOOLS = ["edit_train_script", SWEEP_TOOL, "read_logs", "record_finding", "frontier_diff", FINISH_TOOL]
MAX_KEPT_ARGUMENT_CHARS = 4000  # what an assistant tool call keeps of its arguments in the history
MAX_KEPT_CONTENT_CHARS = 2000
MAX_TOOL_RESULT_CHARS = 6000


class FinishArgs(BaseModel):
    reason: str = Field(min_length=1, max_length=1000, description="why the session should end now")


class FinishResult(BaseModel):
    acknowledged: bool = True


def _finish(args: FinishArgs, ctx: Any) -> FinishResult:  # the planner intercepts it; this is for the registry
    return FinishResult()


if FINISH_TOOL not in registry.names():
    registry.tool(FINISH_TOOL, "End the session: the budget is spent, the queue is exhausted or nothing "
                  "promising is left. Give the reason.", FinishArgs)(_finish)


def load_tools() -> None:
    """Register every tool module of the project (the registry fills as modules are imported)."""
    from tools.toolbox import load_tools as _load

    _load()


# -- configuration ---------------------------------------------------------------------------------

class LLMConfig(BaseModel):
    model: str = DEFAULT_MODEL
    base_url: str | None = None
    max_turns_per_decision: int = Field(default=8, ge=1, le=64)
    max_tokens_per_session: int = Field(default=400_000, ge=1000)
    timeout_s: float = Field(default=120.0, gt=0)
    max_retries: int = Field(default=2, ge=0, le=10)
    strict_tools: bool | Literal["auto"] = "auto"
    max_completion_tokens: int | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LLMConfig:
        env = os.environ if env is None else env
        raw: dict[str, Any] = {
            "model": env.get("PGOLF_LLM_MODEL"),
            "base_url": env.get("OPENAI_BASE_URL"),
            "max_turns_per_decision": env.get("PGOLF_LLM_MAX_TURNS"),
            "max_tokens_per_session": env.get("PGOLF_LLM_MAX_TOKENS"),
            "timeout_s": env.get("PGOLF_LLM_TIMEOUT_S"),
            "max_retries": env.get("PGOLF_LLM_MAX_RETRIES"),
            "max_completion_tokens": env.get("PGOLF_LLM_MAX_COMPLETION_TOKENS"),
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
    where = "OPENAI_BASE_URL" if env.get("OPENAI_BASE_URL") else "OPENAI_API_KEY" if env.get("OPENAI_API_KEY") else ""
    if where:
        return "llm", (f"auto: {where} is set, so the LLM planner drives the session "
                       f"(model {env.get('PGOLF_LLM_MODEL') or DEFAULT_MODEL})")
    return "playbook", "auto: neither OPENAI_API_KEY nor OPENAI_BASE_URL is set, so the playbook planner drives"


# -- the planner -----------------------------------------------------------------------------------

def _canonical(arguments: str) -> str:
    try:
        return json.dumps(json.loads(arguments), sort_keys=True)
    except (ValueError, TypeError):
        return arguments


def _kept_arguments(arguments: str) -> str:
    """Arguments as kept in the history: valid JSON, and never large (servers re-parse them)."""
    if len(arguments) <= MAX_KEPT_ARGUMENT_CHARS:
        try:
            json.loads(arguments)
            return arguments
        except ValueError:
            return json.dumps({"_invalid_arguments": arguments[:200]})
    return json.dumps({"_dropped_arguments_chars": len(arguments)})


# what the model needs first from a verdict (the rest follows if there is room); the hypothesis it wrote
_VERDICT_FIRST = ("experiment", "candidate", "technique", "outcome", "kept", "delta", "ci_low", "ci_high", "p_value",
                  "n_candidate", "n_incumbent", "noise_std", "reason", "candidate_runs")


def _verdict(outcome: dict[str, Any]) -> dict[str, Any]:
    first = {k: outcome[k] for k in _VERDICT_FIRST if k in outcome}
    rest = {k: v for k, v in outcome.items() if k not in first and k not in ("hypothesis", "kind", "at", "session")}
    return first | rest


class LLMPlanner:
    name = "llm"

    def __init__(self, model: str = DEFAULT_MODEL, base_url: str | None = None, api_key: str | None = None, *,
                 max_turns_per_decision: int = 8, max_tokens_per_session: int = 400_000,
                 timeout_s: float = 120.0, max_retries: int = 2, strict_tools: bool | Literal["auto"] = "auto",
                 max_completion_tokens: int | None = None, digest_chars: int = P.DEFAULT_MAX_CHARS,
                 max_history_chars: int = 24_000, max_repeats: int = 3, tools: list[str] | None = None,
                 tool_choice: str | dict[str, Any] = "auto"):
        load_tools()
        if api_key is None and base_url:
            api_key = PLACEHOLDER_KEY
        self.model = model
        self.base_url = base_url
        # the key lives in the client only: never in messages, logs or records
        self.client = openai.OpenAI(api_key=api_key, base_url=base_url, timeout=timeout_s, max_retries=max_retries)
        self.max_turns = max_turns_per_decision
        self.max_tokens = max_tokens_per_session
        self.max_retries = max_retries
        self.max_completion_tokens = max_completion_tokens
        self.digest_chars = digest_chars
        self.max_history_chars = max_history_chars
        self.max_repeats = max_repeats
        self.tool_choice = tool_choice  # "auto"; a named function forces a call (small local models)
        wanted = tools or OFFERED_TOOLS
        self.tool_names = [t for t in wanted if t in registry.names()]
        if SWEEP_TOOL not in self.tool_names or FINISH_TOOL not in self.tool_names:
            raise ValueError(f"the LLM planner needs {SWEEP_TOOL} and {FINISH_TOOL} registered")
        if strict_tools == "auto":  # OpenAI itself takes strict schemas; other servers often reject them
            self.strict: bool | None = None if base_url is None or "api.openai.com" in base_url else False
        else:
            self.strict = bool(strict_tools)
        self.messages: list[dict[str, Any]] = []
        self.pending: list[dict[str, Any]] = []  # tool answers owed at the next decision
        self.verdict: dict[str, Any] | None = None
        self.tokens_session = 0
        self.last_call: tuple[str, str] | None = None
        self.repeat_count = 0
        self.stopped_reason: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> LLMPlanner:
        env = os.environ if env is None else env
        cfg = LLMConfig.from_env(env)
        key = env.get("OPENAI_API_KEY") or None
        if key is None and not cfg.base_url:
            raise ValueError("the LLM planner needs OPENAI_API_KEY, or OPENAI_BASE_URL for a local server")
        return cls(cfg.model, cfg.base_url, key, **(cfg.model_dump(exclude={"model", "base_url"}) | overrides))

    # -- Planner protocol -------------------------------------------------------------------------

    def observe(self, outcome: dict[str, Any]) -> None:
        self.verdict = dict(outcome)

    def propose(self, state: PlannerState, ctx: Any) -> Proposal:
        tokens = 0
        if not self.messages:
            self.messages.append({"role": "system", "content": P.system_prompt()})
        self._settle_pending()
        self.messages.append({"role": "user", "content": P.redact(P.decision_prompt(state, self.digest_chars))})
        self._trim_history()
        nudged = False
        for _turn in range(self.max_turns):
            if self.tokens_session >= self.max_tokens:
                return self._stop(f"token budget spent: {self.tokens_session} of {self.max_tokens} tokens "
                                  "used this session", tokens)
            try:
                response = self._complete()
            except openai.APIStatusError as e:
                return self._stop(f"the LLM server answered HTTP {e.status_code} after {self.max_retries} "
                                  f"retries: {P.redact(str(e.message))[:300]}", tokens)
            except openai.APITimeoutError:
                return self._stop(f"the LLM server timed out after {self.max_retries} retries", tokens)
            except openai.APIConnectionError as e:
                return self._stop(f"cannot reach the LLM server at {self.base_url or 'api.openai.com'}: "
                                  f"{P.redact(str(e))[:200]}", tokens)
            used = self._tokens(response)
            tokens += used
            self.tokens_session += used
            choices = getattr(response, "choices", None) or []
            if not choices or getattr(choices[0], "message", None) is None:
                return self._stop("the LLM server sent a reply with no message", tokens)
            msg = choices[0].message
            calls = list(msg.tool_calls or [])
            content = P.redact(str(msg.content or ""))[:MAX_KEPT_CONTENT_CHARS]
            if not calls:
                if nudged:
                    return self._stop("the model answered twice without a tool call", tokens)
                nudged = True
                self.messages.append({"role": "assistant", "content": content})
                self.messages.append({"role": "user", "content": P.load_template("nudge.txt").strip()})
                continue
            proposal = self._handle_calls(calls, content, ctx, tokens)
            if proposal is not None:
                return proposal
        return self._stop(f"no experiment chosen within {self.max_turns} turns", tokens)

    # -- internals --------------------------------------------------------------------------------

    def _complete(self) -> Any:
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": self.messages,
            "tools": registry.openai_schemas(self.tool_names, strict=bool(self.strict)),
            "tool_choice": self.tool_choice,
        }
        if self.max_completion_tokens:
            kwargs["max_completion_tokens" if self.base_url is None else "max_tokens"] = self.max_completion_tokens
        if self.strict is None:  # auto against OpenAI: strict first, plain schemas if refused
            try:
                kwargs["tools"] = registry.openai_schemas(self.tool_names, strict=True)
                response = self.client.chat.completions.create(**kwargs)
                self.strict = True
                return response
            except openai.BadRequestError as e:
                log.info("strict tool schemas refused (%s); using plain schemas", str(e.message)[:200])
                self.strict = False
                kwargs["tools"] = registry.openai_schemas(self.tool_names, strict=False)
        return self.client.chat.completions.create(**kwargs)

    def _tokens(self, response: Any) -> int:
        usage = getattr(response, "usage", None)
        total = getattr(usage, "total_tokens", None) if usage is not None else None
        if isinstance(total, int) and total > 0:
            return total
        # a server without usage: estimate (4 characters a token) rather than count nothing
        return sum(len(str(m.get("content") or "")) for m in self.messages) // 4 + 1

    def _settle_pending(self) -> None:
        """Answer the tool calls left open by the last decision: the sweep gets the judge's verdict."""
        for item in self.pending:
            content = item["content"]
            if content is None:
                if self.verdict is not None:
                    content = "the session ran this experiment; the judge's verdict: " + P.compact(_verdict(self.verdict))
                else:
                    content = "this experiment was not run (no verdict was reported)"
            self.messages.append({"role": "tool", "tool_call_id": item["id"], "content": content})
        self.pending = []
        self.verdict = None

    def _trim_history(self) -> None:
        """Drop the oldest whole decisions (user message up to the next one) beyond the size bound."""
        def size() -> int:
            return sum(len(json.dumps(m, default=str)) for m in self.messages)

        while size() > self.max_history_chars:
            starts = [i for i, m in enumerate(self.messages) if m["role"] == "user" and i > 0]
            if len(starts) < 2:
                break
            del self.messages[starts[0]:starts[1]]

    def _stop(self, reason: str, tokens: int) -> Proposal:
        self.stopped_reason = reason
        log.info("LLM planner stops: %s", reason)
        return Proposal(action="stop", reason=reason, tokens_used=tokens)

    def _record_refusal(self, ctx: Any, tool: str, error: str) -> None:
        log.info("tool call refused: %s: %s", tool[:80], P.redact(error)[:200])
        ledger = getattr(ctx, "ledger", None)
        if ledger is None:
            return
        from memory.records import EventRecord

        ledger.append(EventRecord(session=getattr(ctx, "session", "?"), event="llm_tool_refused",
                                  detail={"tool": tool[:80], "error": P.redact(error)[:500]}))

    def _handle_calls(self, calls: list[Any], content: str, ctx: Any, tokens: int) -> Proposal | None:
        kept_calls: list[dict[str, Any]] = []
        answers: list[tuple[str, str | None]] = []
        proposal: Proposal | None = None
        for call in calls:
            fn = getattr(call, "function", None)
            name = str(getattr(fn, "name", "") or "")[:64]
            arguments = getattr(fn, "arguments", "") or ""
            if not isinstance(arguments, str):  # some servers send an object
                arguments = json.dumps(arguments, default=str)
            call_id = str(getattr(call, "id", "") or f"call_{len(self.messages)}_{len(kept_calls)}")[:64]
            kept_calls.append({"id": call_id, "type": "function",
                               "function": {"name": name, "arguments": P.redact(_kept_arguments(arguments))}})
            if proposal is not None:
                answers.append((call_id, "not run: an earlier call in this reply ended the turn"))
                continue
            result, proposal = self._one_call(name, arguments, ctx, tokens)
            answers.append((call_id, result))
        # "" and not None: llama.cpp answers HTTP 500 to an assistant message with null content
        self.messages.append({"role": "assistant", "content": content, "tool_calls": kept_calls})
        if proposal is not None and proposal.action == "experiment":
            self.pending = [{"id": cid, "content": res} for cid, res in answers]
        else:
            for cid, res in answers:
                self.messages.append({"role": "tool", "tool_call_id": cid, "content": res or ""})
        if proposal is not None and proposal.action == "stop":
            self.pending = []
        return proposal

    def _one_call(self, name: str, arguments: str, ctx: Any, tokens: int) -> tuple[str | None, Proposal | None]:
        """One tool call: (the tool message to send back, or None for the awaited verdict; a proposal)."""
        key = (name, _canonical(arguments))
        self.repeat_count = self.repeat_count + 1 if key == self.last_call else 1
        self.last_call = key
        if self.repeat_count > self.max_repeats:
            reason = f"the model repeated the same {name} call {self.repeat_count} times"
            self._record_refusal(ctx, name, reason)
            return "refused: " + reason + "; the session stops", self._stop(reason, tokens)
        if self.repeat_count == self.max_repeats:
            error = (f"refused: this exact {name} call was already made {self.repeat_count - 1} times in a row and "
                     "its answer will not change; do something different")
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

    def _intercept(self, name: str, arguments: str, ctx: Any, tokens: int) -> tuple[str | None, Proposal | None]:
        """The two calls that end a decision: parsed like any tool call, then turned into a proposal."""
        if len(arguments) > registry.MAX_ARGUMENT_CHARS:
            error = f"arguments are {len(arguments)} characters; the limit is {registry.MAX_ARGUMENT_CHARS}"
            self._record_refusal(ctx, name, error)
            return "ERROR: " + error, None
        try:
            raw = json.loads(arguments or "{}")
            args = (FinishArgs if name == FINISH_TOOL else SweepArgs).model_validate(raw)
        except json.JSONDecodeError as e:
            error = f"arguments are not valid JSON: {e.msg} at char {e.pos}"
            self._record_refusal(ctx, name, error)
            return "ERROR: " + error, None
        except ValidationError as e:
            error = format_validation_error(e)
            self._record_refusal(ctx, name, error)
            return "ERROR: " + error, None
        if isinstance(args, FinishArgs):
            return "session ends: " + P.redact(args.reason)[:300], self._stop(
                "the model finished: " + P.redact(args.reason)[:500], tokens)
        first = args.candidates[0]
        try:
            spec = ExperimentSpec(name=first.name, technique=args.technique or None,
                                  hypothesis=P.redact(args.hypothesis), env=first.env)
        except ValidationError as e:
            error = format_validation_error(e)
            self._record_refusal(ctx, name, error)
            return "ERROR: " + error, None
        notes = []
        if len(args.candidates) > 1:
            notes.append(f"only the first candidate ({first.name}) runs; propose the others one at a time")
        notes.append("seeds are chosen by the session's noise model")
        if first.script_revision == "incumbent":
            notes.append("the working script is used; to test the incumbent script, revert your edit first")
        reason = "; ".join(notes)
        log.info("LLM proposes %s (%s) env=%s", spec.name, spec.technique, spec.env)
        return None, Proposal(action="experiment", experiment=spec, reason=reason, tokens_used=tokens)
