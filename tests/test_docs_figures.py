"""docs/*.png are current: each was drawn by examples/make_docs_figures.py, and drawing it again
now (from stand-in histories of the same configurations) gives the panels and legend entries,
colors and styles recorded beside it in docs/figures.json. Pixels are not compared."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location(
        "make_docs_figures", ROOT / "examples" / "make_docs_figures.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def manifest() -> dict:
    path = ROOT / "docs" / "figures.json"
    return json.loads(path.read_text()) if path.exists() else {}


def test_every_docs_figure_is_made_by_the_script(script):
    assert sorted(p.name for p in (ROOT / "docs").glob("*.png")) == sorted(f.name for f in script.FIGURES)


@pytest.mark.parametrize("name", sorted(manifest()))
def test_recorded_figures_have_the_current_style(script, name):
    (figure,) = [f for f in script.FIGURES if f.name == name]
    recorded = manifest()[name]
    assert (recorded["source"], recorded["x"], recorded["y"]) == (figure.source, figure.x, figure.y)
    fig = script.draw(figure, script.stand_in_table(script.configurations(figure.source)))
    assert script.style(fig) == recorded["style"], (
        f"docs/{name} is stale: python examples/make_docs_figures.py --only {name}"
    )


def test_every_docs_figure_is_recorded(script):
    assert sorted(manifest()) == sorted(f.name for f in script.FIGURES)
