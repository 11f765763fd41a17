"""The metric fence, checked on the syntax tree and not only as text.

The protected region of trainer/train_gpt.py (between the METRIC BEGIN/END markers) defines the byte
accounting and the bpb formula. Keeping its text unchanged is not enough: code after the fence could
rebind `bits_per_byte`, wrap it, monkeypatch `math.log` that it calls, or reach the module's globals
through reflection. This module refuses, anywhere outside the region:

- any binding of a protected name: the region's own definitions and the global names its code reads
  (`math`, `np`, `torch`, builtins such as `int`), by def/class/assignment/parameter/import/for/with/
  except/walrus/global/nonlocal/`del` (top-level imports of one module only may bind the module names);
- attribute writes that name an attribute the region reads (`x.log = ...`), or any attribute write on an
  imported module other than torch's configuration flags (`torch.backends...`);
- reflection that reaches globals or code: exec/eval/compile/globals/locals/vars (except `vars(self)`)/
  setattr/delattr/__import__/breakpoint, `__builtins__`, dunder attributes such as `__dict__`, `__code__`
  and `__globals__`, frame internals, `sys` beyond a few plain attributes, and the modules builtins,
  importlib, ctypes, gc, inspect, pickle, marshal, runpy, __main__.

A syntax check cannot be complete in Python (a computed getattr name can still reach reflective objects);
it is a tripwire for the plain ways around the fence. The guarantee is the trusted re-score
(tools/rescore.py): what the candidate reports must match what trusted code measures.
"""

from __future__ import annotations

import ast

PROTECTED_BEGIN = "# === PROTECTED: METRIC BEGIN ==="
PROTECTED_END = "# === PROTECTED: METRIC END ==="

FORBIDDEN_CALLS = frozenset(
    {"exec", "eval", "compile", "globals", "locals", "setattr", "delattr", "__import__", "breakpoint"}
)
FORBIDDEN_MODULES = frozenset(
    {
        "builtins",
        "importlib",
        "ctypes",
        "gc",
        "inspect",
        "pickle",
        "marshal",
        "runpy",
        "__main__",
        "dill",
        "cloudpickle",
        "code",
        "codeop",
    }
)
ALLOWED_DUNDERS = frozenset(
    {
        "__init__",
        "__name__",
        "__version__",
        "__file__",
        "__doc__",
        "__qualname__",
        "__module__",
        "__enter__",
        "__exit__",
        "__len__",
        "__call__",
        "__repr__",
    }
)
FRAME_ATTRS = frozenset(
    {
        "f_globals",
        "f_locals",
        "f_builtins",
        "f_back",
        "f_code",
        "tb_frame",
        "gi_frame",
        "cr_frame",
        "ag_frame",
        "func_globals",
    }
)
SYS_ALLOWED = frozenset(
    {
        "argv",
        "version",
        "version_info",
        "exit",
        "stdout",
        "stderr",
        "executable",
        "platform",
        "maxsize",
        "float_info",
    }
)
# attribute writes on an imported module are monkeypatching, except torch's configuration flags
MODULE_CONFIG_PREFIXES = ("torch.backends.", "torch._dynamo.config.", "torch._inductor.config.")


def region_bounds(text: str) -> tuple[int, int] | None:
    """First and last line (1-based) of the fenced region, or None unless each marker appears once, in order."""
    if text.count(PROTECTED_BEGIN) != 1 or text.count(PROTECTED_END) != 1:
        return None
    a, b = text.index(PROTECTED_BEGIN), text.index(PROTECTED_END)
    if b < a:
        return None
    return text.count("\n", 0, a) + 1, text.count("\n", 0, b) + 1


def _bound_in(node: ast.AST) -> set[str]:
    """Names a region node binds (its defs, their parameters and locals)."""
    out: set[str] = set()
    for n in ast.walk(node):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(n.name)
        elif isinstance(n, ast.arg):
            out.add(n.arg)
        elif isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)):
            out.add(n.id)
        elif isinstance(n, ast.alias):
            out.add((n.asname or n.name).split(".")[0])
    return out


def protected_names(tree: ast.Module, lo: int, hi: int) -> tuple[set[str], set[str], set[str]]:
    """(the region's top-level definitions, the global names its code reads, the attributes it reads)."""
    inside = [n for n in tree.body if lo <= n.lineno <= hi]
    defined = {n.name for n in inside if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    defined |= {
        t.id
        for n in inside
        if isinstance(n, (ast.Assign, ast.AnnAssign))
        for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
        if isinstance(t, ast.Name)
    }
    local = set().union(*(_bound_in(n) for n in inside)) if inside else set()
    reads = {
        n.id
        for node in inside
        for n in ast.walk(node)
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
    }
    hints = {
        id(x)
        for node in inside
        for n in ast.walk(node)
        for h in (
            [n.annotation]
            if isinstance(n, ast.arg)
            else [n.returns]
            if isinstance(n, ast.FunctionDef)
            else []
        )
        if h is not None
        for x in ast.walk(h)
    }
    attrs = {
        n.attr
        for node in inside
        for n in ast.walk(node)
        if isinstance(n, ast.Attribute) and id(n) not in hints
    }
    return defined, (reads - local) | (reads & defined), attrs


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(parts)])
    return None


def _root(node: ast.AST) -> ast.AST:
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call, ast.Starred)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node


def _bindings(node: ast.AST) -> list[tuple[str, str]]:
    """(name, how) for every name this one node binds or unbinds."""
    out: list[tuple[str, str]] = []
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        out.append((node.name, "def" + (" (decorated)" if node.decorator_list else "")))
    elif isinstance(node, ast.ClassDef):
        out.append((node.name, "class"))
    elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
        out.append((node.id, "assignment"))
    elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Del):
        out.append((node.id, "del"))
    elif isinstance(node, ast.arg):
        out.append((node.arg, "parameter"))
    elif isinstance(node, (ast.Import, ast.ImportFrom)):
        out += [((a.asname or a.name).split(".")[0], "import") for a in node.names]
    elif isinstance(node, (ast.Global, ast.Nonlocal)):
        out += [(n, type(node).__name__.lower()) for n in node.names]
    elif isinstance(node, ast.ExceptHandler) and node.name:
        out.append((node.name, "except ... as"))
    elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
        out.append((node.name, "match"))
    return out


def violations(text: str, reference: str | None = None) -> list[str]:
    """Every way this script reaches around the metric fence (empty when it does not). With `reference`
    (the incumbent), the fenced text must also be identical to the reference's."""
    bounds = region_bounds(text)
    if bounds is None:
        return ["the protected metric markers must each appear exactly once, BEGIN before END"]
    lo, hi = bounds
    if reference is not None:
        ref = region_bounds(reference)
        if ref is None or text.splitlines()[lo - 1 : hi] != reference.splitlines()[ref[0] - 1 : ref[1]]:
            return ["the protected metric region differs from the incumbent's"]
    try:
        tree = ast.parse(text)
    except SyntaxError as e:
        return [f"the script does not parse: line {e.lineno}: {e.msg}"]
    defined, reads, region_attrs = protected_names(tree, lo, hi)
    if not defined:
        return ["the protected metric region defines nothing"]
    protected = defined | reads
    problems: list[str] = []

    def bad(node: ast.AST, what: str) -> None:
        problems.append(f"line {getattr(node, 'lineno', '?')}: {what}")

    in_region = {id(n) for top in tree.body if lo <= top.lineno <= hi for n in ast.walk(top)}
    module_aliases: dict[str, set[str]] = {}  # name -> module roots it is bound to by imports (anywhere)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                module_aliases.setdefault((a.asname or a.name).split(".")[0], set()).add(a.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:  # `from torch import nn`: nn may be a module
                module_aliases.setdefault(a.asname or a.name, set()).add(node.module.split(".")[0])
    top_imports = {id(n) for n in tree.body if isinstance(n, ast.Import)}
    for name in protected & set(module_aliases):
        if len(module_aliases[name]) > 1:
            problems.append(
                f"{name!r} is imported from more than one module ({', '.join(sorted(module_aliases[name]))})"
            )

    for node in ast.walk(tree):
        if id(node) in in_region:
            continue
        for name, how in _bindings(node):
            if name in protected and not (how == "import" and id(node) in top_imports):
                bad(node, f"{how} of {name!r}, a name the protected metric code uses")
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for m in mods:
                if m.split(".")[0] in FORBIDDEN_MODULES:
                    bad(node, f"import of {m!r} (reflection)")
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "sys":
                if any(a.name not in SYS_ALLOWED for a in node.names):
                    bad(node, "import of sys internals")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            f = node.func.id
            if f in FORBIDDEN_CALLS:
                bad(node, f"call of {f}() (reaches globals or code)")
            elif f == "vars" and not (
                len(node.args) == 1 and isinstance(node.args[0], ast.Name) and node.args[0].id == "self"
            ):
                bad(node, "vars() of anything but self")
            elif (
                f == "getattr"
                and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[1].value, str)
                and node.args[1].value.startswith("__")
                and node.args[1].value not in ALLOWED_DUNDERS
            ):
                bad(node, f"getattr of {node.args[1].value!r}")
        elif isinstance(node, ast.Name) and node.id == "__builtins__":
            bad(node, "use of __builtins__")
        elif isinstance(node, ast.Attribute):
            if node.attr.startswith("__") and node.attr not in ALLOWED_DUNDERS:
                bad(node, f"attribute {node.attr!r} (reflection)")
            elif node.attr in FRAME_ATTRS:
                bad(node, f"frame attribute {node.attr!r}")
            elif (
                isinstance(node.value, ast.Name)
                and node.value.id in module_aliases
                and "sys" in module_aliases[node.value.id]
                and node.attr not in SYS_ALLOWED
            ):
                bad(node, f"sys.{node.attr} (interpreter internals)")
            if isinstance(node.ctx, (ast.Store, ast.Del)):
                dotted = _dotted(node) or ""
                root = _root(node)
                on_self = isinstance(root, ast.Name) and root.id in ("self", "cls")
                if node.attr in protected or (node.attr in region_attrs and not on_self):
                    bad(node, f"writes attribute {node.attr!r}, which the protected metric code uses")
                elif (
                    isinstance(root, ast.Name)
                    and root.id in module_aliases
                    and not dotted.startswith(MODULE_CONFIG_PREFIXES)
                ):
                    bad(node, f"monkeypatches the imported module attribute {dotted or node.attr!r}")
    return sorted(set(problems), key=lambda p: (len(p.split(":")[0]), p))


def check_script(text: str, reference: str | None = None) -> None:
    """ValueError naming every violation (what an experiment refuses before its first run)."""
    problems = violations(text, reference)
    if problems:
        raise ValueError("the script reaches around the protected metric code: " + "; ".join(problems[:6]))
