"""The README: short, its quick starts run verbatim with what they state, and CI's commands are
where .ci/run reads them.

The demo line (`marina demo`) is run by the install command itself (CI runs it); the DDP hook
lines run on 1 and 2 gloo ranks in tests/test_hooks.py."""

from __future__ import annotations

import math
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd

from doc_blocks import DOCS, README, ROOT, block_containing, blocks, run_python


def test_at_most_200_lines():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 200


def test_ci_reads_the_install_and_test_commands():
    """.ci/run takes the first two lines of the ```bash blocks: install (with the docs extra, so
    the strict site build runs in CI) and the tests."""
    lines = [line for b in blocks(README, "bash") for line in b.code.splitlines()]
    install, test = lines[0], lines[1]
    assert "pip install torch==2.13.0 -e '.[test,docs]'" in install and install.endswith("marina demo")
    assert test == ".venv/bin/python -m pytest -q"


def test_cli_quick_start_runs_verbatim(tmp_path):
    """Every line of the command-line quick start but the demo, as typed, in a fresh directory."""
    marina_cmd = str(Path(sys.executable).with_name("marina"))
    code = block_containing(README, "marina plot", "sh").code
    lines = [line for line in code.splitlines() if line.strip() and line.split() != ["marina", "demo"]]
    assert len(lines) == 2
    for line in lines:
        argv = shlex.split(line)
        assert argv[0] == "marina"
        done = subprocess.run([marina_cmd, *argv[1:]], cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 0, (line, done.stderr)
    df = pd.read_parquet(tmp_path / "results" / "results.parquet")
    assert df["iteration"].max() == 500 and set(df["method"]) == {"marina"}
    assert (tmp_path / "a9a-bits.png").stat().st_size > 0


def test_python_quick_start_runs_verbatim(capsys):
    scope = run_python(block_containing(README, "marina.run("), {})
    res = scope["res"]
    assert res.status == "finished"
    assert res.params["p"] == 5 / 112  # zeta_Q / d for randk:5 on mushrooms (d = 112; Corollary 2.1)
    assert res.history["iteration"].iloc[-1] == 300
    assert "finished" in capsys.readouterr().out


def test_torch_loop_quick_start_runs_verbatim():
    """The loop trains: below the loss of a uniform guess over 3 classes (log 3)."""
    scope = run_python(block_containing(README, "marina.torch.VRMARINA("), {"__name__": "__readme__"})
    assert scope["opt"].rounds == 100
    assert scope["loss"].item() < 0.8 * math.log(3)


def test_docs_copies_of_readme_examples_match():
    """The training page's loop and DDP hook lines are the README's (the page's loop adds a
    scheduler line); its copy of the hook lines is not run there, the README's is (test_hooks)."""
    hook = block_containing(README, "register_comm_hook").code
    assert block_containing(DOCS / "training.md", "register_comm_hook").code == hook
    readme_loop = block_containing(README, "marina.torch.VRMARINA(").code.splitlines()
    docs_loop = block_containing(DOCS / "training.md", "marina.torch.VRMARINA(model").code.splitlines()
    assert readme_loop[:10] == docs_loop[:10]


def test_links_point_to_files():
    text = README.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (ROOT / target).exists(), target
