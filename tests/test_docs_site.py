"""The documentation site builds offline with ``mkdocs build --strict`` (any warning fails it), and
its generated results-schema table is current."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from doc_blocks import DOCS, ROOT


def _results_schema():
    sys.path.insert(0, str(DOCS))
    try:
        import results_schema
    finally:
        sys.path.remove(str(DOCS))
    return results_schema


def test_results_schema_table_is_current():
    """docs/experiments.md holds exactly the table docs/results_schema.py derives from the code."""
    assert _results_schema().main(["--check"]) == 0, "python docs/results_schema.py"


def test_results_schema_lists_every_column():
    """Every column a results directory has, in order (the code's own tables, independently read)."""
    from marina.experiments.results import CONFIG_COLUMNS
    from marina.runner import HISTORY_COLUMNS

    rows = _results_schema().table().splitlines()[2:]
    assert [row.split("`")[1] for row in rows] == [*CONFIG_COLUMNS, *HISTORY_COLUMNS]


def test_strict_build(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    pytest.importorskip("material")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml")]
        + ["-d", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    warnings = [line for line in done.stderr.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert done.returncode == 0 and not warnings, done.stderr[-4000:]
    assert (tmp_path / "index.html").is_file()
    assert (tmp_path / "reference" / "torch" / "index.html").is_file()
    # Args appended at import (Method.__init_subclass__, marina.torch.optim.documented) are rendered
    shown = {
        ("methods", "marina.methods.MARINA"): ("problem", "network", "compressor", "params"),
        ("methods", "marina.methods.DASHAPAGE"): ("problem", "network", "compressor", "params"),
        ("torch", "marina.torch.MARINA"): ("params", "compressor", "lr", "p", "seed", "local_size"),
    }
    for (page, name), args in shown.items():
        html = (tmp_path / "reference" / page / "index.html").read_text(encoding="utf-8")
        start = html.index(f'id="{name}"')
        own = html[start : html.index("doc-heading", start + len(name) + 40)]  # up to its first member
        assert "Parameters:" in own, name
        table = own[own.index("Parameters:") :]
        assert [a for a in args if f"<code>{a}</code>" not in table] == [], name


def test_theory_page_names_real_functions_and_every_method():
    """The theory page's defaults cite functions marina.theory has, and it covers every method."""
    import re

    import marina.methods
    import marina.theory

    text = (DOCS / "theory.md").read_text(encoding="utf-8")
    cited = set(re.findall(r"`(?:theory\.)?([a-z0-9_]+_(?:stepsize|p|alpha|length|momentum|beta))`", text))
    assert len(cited) >= 20, sorted(cited)
    assert {name for name in cited if not hasattr(marina.theory, name)} == set()
    rows = set(re.findall(r"^\| `([a-z0-9-]+)`", text, re.M))
    assert set(marina.methods.METHODS) - rows == set()
