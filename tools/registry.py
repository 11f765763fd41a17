"""One registry of typed tools: each is a plain function `fn(args: ArgsModel, ctx) -> ResultModel`.

The OpenAI tool schemas are generated from the argument models, so the LLM planner, the playbook
planner and the tests all call tools the same way: `call(name, arguments)` with a dict or JSON text.
Invalid arguments and tool failures come back as a `ToolOutcome` with a readable error, never a raise.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

MAX_ARGUMENT_CHARS = 64_000  # a tool call larger than this is refused before parsing


class ToolError(Exception):
    """Raised by a tool for a refusal the caller should read (a bad edit, a budget refusal)."""


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    args_model: type[BaseModel]
    fn: Callable[[Any, Any], BaseModel]


class ToolOutcome(BaseModel):
    tool: str
    ok: bool
    result: dict[str, Any] | None = None
    error: str | None = None

    def text(self, limit: int = 8000) -> str:
        """The message a model reads back: the result as JSON, or the error, bounded."""
        body = json.dumps(self.result, default=str) if self.ok else f"ERROR: {self.error}"
        return body if len(body) <= limit else body[: limit - 20] + " ...[truncated]"


_TOOLS: dict[str, Tool] = {}


def tool(name: str, description: str, args_model: type[BaseModel]):
    def register(fn: Callable[[Any, Any], BaseModel]):
        if name in _TOOLS:
            raise ValueError(f"tool {name!r} registered twice")
        _TOOLS[name] = Tool(name, description, args_model, fn)
        return fn

    return register


def get(name: str) -> Tool:
    return _TOOLS[name]


def names() -> list[str]:
    return sorted(_TOOLS)


def _strict_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """OpenAI strict mode wants every property required and no extra properties, at every level."""
    schema = json.loads(json.dumps(schema))

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                node["additionalProperties"] = False
                node["required"] = list(node["properties"])
            for v in node.values():
                visit(v)
        elif isinstance(node, list):
            for v in node:
                visit(v)

    visit(schema)
    return schema


def _drop_long_limits(node: Any) -> Any:
    """Long string limits stay in the pydantic models (validated on every call) but leave the exported
    schema: grammar-constrained servers (llama.cpp) expand maxLength=2000 into a grammar they cannot parse."""
    if isinstance(node, dict):
        return {k: _drop_long_limits(v) for k, v in node.items()
                if not (k == "maxLength" and isinstance(v, int) and v > MAX_SCHEMA_STRING)}
    if isinstance(node, list):
        return [_drop_long_limits(v) for v in node]
    return node


MAX_SCHEMA_STRING = 64


def openai_schemas(only: list[str] | None = None, strict: bool = False) -> list[dict[str, Any]]:
    """Chat Completions `tools=` entries for the registered tools (optionally a subset)."""
    out = []
    for name in only or names():
        t = _TOOLS[name]
        params = _drop_long_limits(t.args_model.model_json_schema())
        if strict:
            params = _strict_schema(params)
        fn: dict[str, Any] = {"name": t.name, "description": t.description, "parameters": params}
        if strict:
            fn["strict"] = True
        out.append({"type": "function", "function": fn})
    return out


def format_validation_error(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:10]:
        loc = ".".join(str(x) for x in err["loc"]) or "(arguments)"
        parts.append(f"{loc}: {err['msg']}")
    return "invalid arguments: " + "; ".join(parts)


def call(name: str, arguments: str | dict[str, Any] | None, ctx: Any) -> ToolOutcome:
    """Validate and run one tool call. Never raises for bad input or a tool's refusal."""
    if name not in _TOOLS:
        return ToolOutcome(tool=name[:80], ok=False, error=f"unknown tool {name[:80]!r}; known: {', '.join(names())}")
    t = _TOOLS[name]
    if isinstance(arguments, str):
        if len(arguments) > MAX_ARGUMENT_CHARS:
            return ToolOutcome(tool=name, ok=False,
                               error=f"arguments are {len(arguments)} characters; the limit is {MAX_ARGUMENT_CHARS}")
        try:
            arguments = json.loads(arguments or "{}")
        except json.JSONDecodeError as e:
            return ToolOutcome(tool=name, ok=False, error=f"arguments are not valid JSON: {e.msg} at char {e.pos}")
    if not isinstance(arguments, dict):
        return ToolOutcome(tool=name, ok=False, error="arguments must be a JSON object")
    try:
        args = t.args_model.model_validate(arguments)
    except ValidationError as e:
        return ToolOutcome(tool=name, ok=False, error=format_validation_error(e))
    try:
        result = t.fn(args, ctx)
    except ToolError as e:
        return ToolOutcome(tool=name, ok=False, error=str(e))
    return ToolOutcome(tool=name, ok=True, result=result.model_dump(mode="json"))
