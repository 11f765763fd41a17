"""Import every tool module once so that the registry holds them all."""

from __future__ import annotations

import importlib

TOOL_MODULES = [
    "tools.edit_script",
    "tools.sweep",
    "tools.logs",
    "tools.findings",
    "tools.frontier_sync",
    "tools.code_view",
]


def load_tools() -> list[str]:
    loaded = []
    for name in TOOL_MODULES:
        try:
            importlib.import_module(name)
            loaded.append(name)
        except ModuleNotFoundError as e:
            if e.name != name:  # a real missing dependency inside the module is an error
                raise
    return loaded
