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


def test_net_specs_resolve_in_a_fresh_process_that_imports_only_problems():
    """``import marina`` loads nothing eagerly, so the image specs must not rely on
    ``marina.nets`` having been imported by someone else."""
    import subprocess
    import sys

    data = Path(marina.__file__).parent / "data" / "fashion_mnist"
    code = (
        "import marina.problems as P, sys; "
        f"p = P.get('fashion-mnist', data_dir={str(data)!r}, workers=2, train_samples=40); "
        "print(type(p).__name__, 'marina.nets' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "TorchModelProblem True"  # nets loaded by the spec itself
