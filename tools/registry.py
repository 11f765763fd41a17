"""One registry of typed tools: each is a plain function `fn(args: ArgsModel, ctx) -> ResultModel`.

The OpenAI tool schemas are generated from the argument models (in OpenAI's strict subset), so the LLM
planner, the playbook planner and the tests all call tools the same way: `call(name, arguments)` with a dict or JSON text.
Invalid arguments and tool failures come back as a `ToolOutcome` with a readable error, never a raise.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, get_args

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


# The exported schemas keep to a conservative part of the subset OpenAI documents for strict function
# calling (Structured Outputs, "Supported schemas"): every object lists all its properties as required and
# sets additionalProperties false; an optional field is a required one that may be null; no default,
# minLength, maxLength, pattern, numeric or item-count limits, no $ref, allOf or title. Those limits stay in
# the pydantic models, which validate every call. The same schemas go to servers without strict mode.
STRICT_KEYWORDS = frozenset(
    {"type", "properties", "required", "additionalProperties", "items", "enum", "anyOf", "description"}
)
STRICT_TYPES = frozenset({"string", "number", "integer", "boolean", "object", "array", "null"})


def _inline_refs(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:
            target = _inline_refs(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
            return target | {k: v for k, v in node.items() if k == "description"}
        return {k: _inline_refs(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline_refs(v, defs) for v in node]
    return node


def _nullable(node: dict[str, Any]) -> dict[str, Any]:
    if "anyOf" in node:
        if any(alt.get("type") == "null" for alt in node["anyOf"]):
            return node
        return node | {"anyOf": [*node["anyOf"], {"type": "null"}]}
    if node.get("type") == "null":
        return node
    if "enum" in node:
        inner = {k: v for k, v in node.items() if k != "description"}
        out: dict[str, Any] = {"anyOf": [inner, {"type": "null"}]}
        if "description" in node:
            out["description"] = node["description"]
        return out
    kind = node.get("type")
    if kind in ("array", "object"):
        # a union with null, not a type list: grammar builders (llama.cpp's) read ["array", "null"] as
        # "any array" and drop the items' shape, so a model could send [1, 2] for the env pairs
        inner = {k: v for k, v in node.items() if k != "description"}
        out = {"anyOf": [inner, {"type": "null"}]}
        return out | ({"description": node["description"]} if "description" in node else {})
    if isinstance(kind, str):
        return node | {"type": [kind, "null"]}
    return node


def _subset(node: Any) -> Any:
    """One node in the strict subset: unknown keywords dropped, objects closed, optional fields nullable."""
    if isinstance(node, list):
        return [_subset(v) for v in node]
    if not isinstance(node, dict):
        return node
    if "anyOf" in node:  # pydantic's Optional[X]: anyOf [X, null]; flatten a single simple alternative
        alts = [_subset(a) for a in node["anyOf"]]
        simple = [a for a in alts if a.get("type") != "null"]
        if (
            len(simple) == 1
            and len(alts) == 2
            and isinstance(simple[0].get("type"), str)
            and "enum" not in simple[0]
            and simple[0]["type"] not in ("object", "array")
        ):
            alt: dict[str, Any] = {"type": [simple[0]["type"], "null"]}
        else:
            alt = {"anyOf": alts}
        if "description" in node:
            alt["description"] = node["description"]
        return alt
    out: dict[str, Any] = {k: v for k, v in node.items() if k in STRICT_KEYWORDS}
    if "items" in out:
        out["items"] = _subset(out["items"])
    if out.get("type") == "object" or "properties" in out:
        props: dict[str, Any] = out.get("properties", {})
        required = set(node.get("required", []))
        out["type"] = "object"
        out["properties"] = {
            name: (_subset(sub) if name in required else _nullable(_subset(sub)))
            for name, sub in props.items()
        }
        out["required"] = list(props)
        out["additionalProperties"] = False
    return out


def strict_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic model's JSON schema, rewritten into the strict subset (see STRICT_KEYWORDS)."""
    return _subset(_inline_refs(json.loads(json.dumps(schema)), schema.get("$defs", {})))


def strict_subset_problems(schema: Any, where: str = "$") -> list[str]:
    """Everything in a schema outside the strict subset, as readable paths (empty when it conforms)."""
    problems: list[str] = []
    if isinstance(schema, list):
        for i, v in enumerate(schema):
            problems += strict_subset_problems(v, f"{where}[{i}]")
        return problems
    if not isinstance(schema, dict):
        return [f"{where}: not a schema object"]
    for key in schema:
        if key not in STRICT_KEYWORDS:
            problems.append(f"{where}: keyword {key!r} is outside the strict subset")
    kinds = schema.get("type")
    for kind in kinds if isinstance(kinds, list) else [kinds] if kinds is not None else []:
        if kind not in STRICT_TYPES:
            problems.append(f"{where}: type {kind!r} is not supported")
    if "type" not in schema and "anyOf" not in schema and "enum" not in schema:
        problems.append(f"{where}: no type")
    if kinds == "object" or (isinstance(kinds, list) and "object" in kinds):
        props = schema.get("properties")
        if not isinstance(props, dict):
            problems.append(f"{where}: an object without properties")
            props = {}
        if schema.get("additionalProperties") is not False:
            problems.append(f"{where}: additionalProperties must be false")
        if sorted(schema.get("required", [])) != sorted(props):
            problems.append(f"{where}: every property must be required")
        for name, sub in props.items():
            problems += strict_subset_problems(sub, f"{where}.{name}")
    elif "additionalProperties" in schema or "properties" in schema:
        problems.append(f"{where}: properties on a non-object")
    if "items" in schema:
        problems += strict_subset_problems(schema["items"], f"{where}[]")
    for i, alt in enumerate(schema.get("anyOf", [])):
        problems += strict_subset_problems(alt, f"{where}|{i}")
    return problems


def with_env_names(schema: dict[str, Any], allowed: list[str]) -> dict[str, Any]:
    """The schema with every env override's `name` limited to an enum: the trainer's knobs of the script."""
    schema = json.loads(json.dumps(schema))

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            env = node.get("properties", {}).get("env")
            env = env if isinstance(env, dict) else {}
            for alt in [env, *env.get("anyOf", [])]:  # the array itself, or inside its nullable union
                kind = alt.get("type")
                if kind == "array" or (isinstance(kind, list) and "array" in kind):
                    name = alt.get("items", {}).get("properties", {}).get("name")
                    if isinstance(name, dict) and allowed:
                        name.pop("pattern", None)
                        name["enum"] = list(allowed)
            for v in node.values():
                visit(v)
        elif isinstance(node, list):
            for v in node:
                visit(v)

    visit(schema)
    return schema


def nullable_defaults(model: type[BaseModel]) -> set[str]:
    """Fields a strict caller sends as null to mean "the default" (optional in the model, not nullable)."""
    return {name for name, f in model.model_fields.items() if not f.is_required()}


def openai_schemas(
    only: list[str] | None = None, strict: bool = False, env_names: list[str] | None = None
) -> list[dict[str, Any]]:
    """Chat Completions `tools=` entries for the registered tools (optionally a subset). The parameters are
    always in the strict subset (local servers take them too); `strict` adds the flag OpenAI reads."""
    out = []
    for name in only or names():
        t = _TOOLS[name]
        params = strict_schema(t.args_model.model_json_schema())
        if env_names:
            params = with_env_names(params, env_names)
        fn: dict[str, Any] = {"name": t.name, "description": t.description, "parameters": params}
        if strict:
            fn["strict"] = True
        out.append({"type": "function", "function": fn})
    return out


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in get_args(annotation) for m in _models_in(a)]


def drop_null_defaults(model: type[BaseModel], arguments: Any) -> Any:
    """A strict caller must send every field; null for an optional one means "use the default" (nested
    models included)."""
    if not isinstance(arguments, dict):
        return arguments
    optional = nullable_defaults(model)
    out = {}
    for k, v in arguments.items():
        if v is None and k in optional:
            continue
        field = model.model_fields.get(k)
        inner = _models_in(field.annotation) if field is not None else []
        if len(inner) == 1:
            v = (
                [drop_null_defaults(inner[0], x) for x in v]
                if isinstance(v, list)
                else drop_null_defaults(inner[0], v)
            )
        out[k] = v
    return out


def format_validation_error(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:10]:
        loc = ".".join(str(x) for x in err["loc"]) or "(arguments)"
        parts.append(f"{loc}: {err['msg']}")
    return "invalid arguments: " + "; ".join(parts)


def parse_arguments(text: str | None) -> Any:
    """A tool call's JSON arguments. Raw newlines and tabs inside strings (which models write in code and
    hypotheses, and JSON forbids) are read as the characters they are; anything else malformed raises."""
    return json.loads(text or "{}", strict=False)


def call(name: str, arguments: str | dict[str, Any] | None, ctx: Any) -> ToolOutcome:
    """Validate and run one tool call. Never raises for bad input or a tool's refusal."""
    if name not in _TOOLS:
        return ToolOutcome(
            tool=name[:80], ok=False, error=f"unknown tool {name[:80]!r}; known: {', '.join(names())}"
        )
    t = _TOOLS[name]
    if isinstance(arguments, str):
        if len(arguments) > MAX_ARGUMENT_CHARS:
            return ToolOutcome(
                tool=name,
                ok=False,
                error=f"arguments are {len(arguments)} characters; the limit is {MAX_ARGUMENT_CHARS}",
            )
        try:
            arguments = parse_arguments(arguments)
        except json.JSONDecodeError as e:
            return ToolOutcome(
                tool=name, ok=False, error=f"arguments are not valid JSON: {e.msg} at char {e.pos}"
            )
    if not isinstance(arguments, dict):
        return ToolOutcome(tool=name, ok=False, error="arguments must be a JSON object")
    try:
        args = t.args_model.model_validate(drop_null_defaults(t.args_model, arguments))
    except ValidationError as e:
        return ToolOutcome(tool=name, ok=False, error=format_validation_error(e))
    try:
        result = t.fn(args, ctx)
    except ToolError as e:
        return ToolOutcome(tool=name, ok=False, error=str(e))
    return ToolOutcome(tool=name, ok=True, result=result.model_dump(mode="json"))
