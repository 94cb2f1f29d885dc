"""The package's layout: marina modules are imported at module level only (no import inside a
function to dodge a cycle), and the public surface exposes the documented entry points."""

from __future__ import annotations

import ast
from pathlib import Path

import marina

SRC = Path(marina.__file__).parent


def _function_level_marina_imports() -> list[str]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    names = [node.module or ""] if node.level == 0 else ["(relative)"]
                else:
                    continue
                for name in names:
                    if name == "marina" or name.startswith("marina.") or name == "(relative)":
                        found.append(f"{path.relative_to(SRC)}:{node.lineno} {func.name}: {name}")
    return found


def test_no_marina_import_inside_a_function():
    assert _function_level_marina_imports() == []


def test_public_entry_points():
    for name in ("run", "Result", "distributed", "experiments", "parameters", "methods", "network"):
        assert name in marina.__all__, name
        assert getattr(marina, name) is not None
    assert callable(marina.distributed.run) and callable(marina.experiments.run_sweep)
