"""Issue 25, 1: several workers per rank with ``--out`` on ``--backend torch-distributed``
(checkpoints, resume), against the simulation. Real processes (gloo on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from marina.cli import main as cli_main
from marina.testing import local_launch, run_ranks

RANK_SCRIPT = str(Path(__file__).with_name("reliability_ranks.py"))
STOPPED = 17  # reliability_ranks.STOPPED


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_two_workers_a_rank_with_out_resume_and_equal_the_simulation(tmp_path, ranks):
    """2 workers a rank, checkpoints every 5 rounds: the job killed right after the checkpoint of
    round 10, then started again, resumes (every rank holds round 10) and writes the history of
    the simulated run (time aside), its checkpoints removed."""
    options = ["run", "--problem", "synthetic", "--workers", str(2 * ranks), "--method", "marina"]
    options += ["--compressor", "randk:2", "--iterations", "20", "--log-every", "1", "--quiet"]
    assert cli_main([*options, "--out", str(tmp_path / "sim")]) == 0
    argv = [*options, "--backend", "torch-distributed", "--checkpoint-every", "5"]
    argv += ["--out", str(tmp_path / "dist")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = local_launch([sys.executable, RANK_SCRIPT, "10", *argv], ranks, env=env, stderr=subprocess.PIPE)
    errs = [p.communicate(timeout=300)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [STOPPED] * ranks, "\n".join(errs)
    held = sorted(p.name for p in (tmp_path / "dist").glob("runs/*/checkpoint.rank*.pt"))
    assert held == [f"checkpoint.rank{r}-of-{ranks}.pt" for r in range(ranks)]
    run_ranks([sys.executable, RANK_SCRIPT, "0", *argv], ranks, env=env)
    sim = pd.read_parquet(tmp_path / "sim" / "results.parquet")
    dist = pd.read_parquet(tmp_path / "dist" / "results.parquet")
    assert dist["iteration"].tolist() == sim["iteration"].tolist() == list(range(21))
    rel = ((dist["grad_norm_sq"] - sim["grad_norm_sq"]).abs() / sim["grad_norm_sq"]).max()
    assert rel <= 1e-10
    assert dist["bits_up"].tolist() == sim["bits_up"].tolist()
    (record,) = json.loads((tmp_path / "dist" / "runs.json").read_text())
    assert record["status"] == "finished" and record["resumed"] is True
    assert not list((tmp_path / "dist").glob("runs/*/checkpoint*"))
