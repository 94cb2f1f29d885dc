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
from marina.testing import free_port, local_launch, rank_environ, run_ranks

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


# -- rendezvous failures ---------------------------------------------------------------------------
CLI_RUN = [sys.executable, "-m", "marina", "run", "--backend", "torch-distributed", "--problem", "synthetic"]
CLI_RUN += ["--iterations", "2", "--quiet"]


def _ranks(
    ranks: list[int], world: int, *extra: str, timeout: float = 1, **changes: str
) -> list[tuple[int, str]]:
    """Start one ``marina run`` per entry of ``ranks`` (RANK as given, duplicates allowed) of a
    job of ``world`` ranks on a free port; (exit status, stderr) of each."""
    port = free_port()
    procs = []
    for rank in ranks:
        env = {**rank_environ(rank, world, port), "OMP_NUM_THREADS": "1", **changes}
        argv = [*CLI_RUN, "--workers", str(world), "--timeout", str(timeout), *extra]
        procs.append(subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True))
    return [(p.wait(timeout=120), p.communicate()[1]) for p in procs]


@pytest.mark.parametrize("addr", ["no-such-host.invalid", "127.0.0.1"])  # bad address; rank 0 dead
def test_rendezvous_failure_is_one_line_with_torchs_log_kept(addr):
    """Rank 1 of 2 alone: one error line naming the log file that holds torch's C++ lines."""
    ((rc, err),) = _ranks([1], 2, MASTER_ADDR=addr)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, err
    assert f"rank 1 could not complete the rendezvous at {addr}:" in lines[0]
    log = Path(lines[0].split("(torch's log: ")[1].rstrip(")"))
    assert "c10d" in log.read_text()
    log.unlink()


def test_rendezvous_failure_verbose_shows_torchs_log():
    ((rc, err),) = _ranks([1], 2, "--verbose")
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) > 1 and "c10d" in err, err
    assert "rank 1 could not complete the rendezvous" in lines[-1] and "torch's log" not in err


def test_a_rank_started_twice_is_named():
    """RANKs 0, 1, 1 of a job of 3: every process says that RANK 1 came twice and 2 never."""
    reports = _ranks([0, 1, 1], 3, timeout=20)  # time for all three to start
    for rc, err in reports:
        line = err.strip().splitlines()[-1]
        want = "RANK 1 was started 2 times, rank(s) [2] never arrived (of all 3 ranks)"
        assert rc == 2 and want in line, err
        if "(torch's log: " in line:
            Path(line.split("(torch's log: ")[1].rstrip(")")).unlink()
