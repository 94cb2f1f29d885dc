"""The Python blocks of docs/*.md run as a reader types them (one scope per page, in a fresh
directory), with the values their comments state; blocks marked not run say why."""

from __future__ import annotations

import math

import pytest

from doc_blocks import DOCS, blocks, run_python

PAGES = sorted(p for p in DOCS.glob("*.md"))


def _runnable(page):
    return [b for b in blocks(page, "python") if b.skip_reason is None]


def _page(name: str, tmp_path, monkeypatch) -> dict:
    monkeypatch.chdir(tmp_path)
    scope: dict = {"__name__": "__docs__"}
    for block in _runnable(DOCS / name):
        run_python(block, scope)
    return scope


def test_blocks_not_run_say_why():
    for page in PAGES:
        for block in blocks(page, "python"):
            assert block.skip_reason != "", f"{block.where}: '<!-- not run: -->' without a reason"


def test_every_page_with_python_is_checked_here():
    """A page whose Python blocks run must have its test below (so none is silently skipped)."""
    checked = {"getting-started.md", "python.md", "training.md", "experiments.md"}
    assert {p.name for p in PAGES if _runnable(p)} == checked


def test_getting_started_page(tmp_path, monkeypatch):
    res = _page("getting-started.md", tmp_path, monkeypatch)["res"]
    assert res.status == "finished" and res.history["iteration"].iloc[-1] == 500
    assert res.config["method"] == "marina" and res.config["workers"] == 5


def test_python_page(tmp_path, monkeypatch):
    scope = _page("python.md", tmp_path, monkeypatch)
    c, p, res = scope["c"], scope["p"], scope["res"]
    assert (c.omega(100), c.density(100)) == (19.0, 5.0)  # as the comment says: d/K - 1, K
    assert res.status == "finished"
    assert list(res.history.columns[:7]) == [
        "iteration",
        "grad_norm_sq",
        "loss",
        "bits_up",
        "bits_down",
        "oracle_calls",
        "time_s",
    ]
    assert res.history["iteration"].tolist() == [0, 100, 200, 300]
    assert res.params["p"] == 5 / p.dim  # zeta_Q / d (Corollary 2.1)


def test_training_page(tmp_path, monkeypatch):
    """The loop trains (below the loss of a uniform guess over 3 classes, log 3) and the
    checkpoint block's own assertions hold."""
    scope = _page("training.md", tmp_path, monkeypatch)
    opt, loss = scope["opt"], scope["loss"]
    assert opt.rounds == 100
    assert loss.item() < 0.8 * math.log(3)
    assert scope["opt2"].rounds == opt.rounds


def test_experiments_page(tmp_path, monkeypatch):
    scope = _page("experiments.md", tmp_path, monkeypatch)
    df, runs = scope["df"], scope["runs"]
    assert sorted(df["method"].unique()) == ["diana", "marina"]
    assert df.groupby("method")["iteration"].max().tolist() == [100, 100]
    assert sorted(runs["status"]) == ["finished", "finished"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_python_blocks_compile(page):
    """Every block, run or not, is valid Python."""
    for block in blocks(page, "python"):
        compile(block.code, block.where, "exec")
