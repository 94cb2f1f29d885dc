"""`marina sweep --shard I/N` into one directory, `marina collect`, --json outputs, exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from marina import experiments
from marina.cli import main
from marina.errors import ConfigError
from marina.experiments import results

SRC = str(Path(__file__).resolve().parents[1] / "src")

SWEEP = """
name = "shards"
problems = "synthetic"
workers = 3
iterations = 40
log_every = 5
seeds = [0, 1]
methods = ["marina", "diana"]
compressors = ["randk:1", "randk:2", "randk:3"]
"""

SLOW = """
problems = "synthetic"
workers = 3
iterations = 6000
log_every = 500
methods = ["marina"]
compressors = ["randk:1"]
seeds = [0, 1]
"""


def marina_cli(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.Popen(
        [sys.executable, "-m", "marina", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def comparable(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=list(results.TIME_COLUMNS)).sort_values(["run_id", "iteration"], ignore_index=True)


def test_shard_assignment_is_disjoint_stable_and_covers_the_grid(tmp_path):
    (tmp_path / "s.toml").write_text(SWEEP)
    configs = experiments.validate(experiments.expand(experiments.load_sweep(tmp_path / "s.toml")))
    parts = [experiments.shard(configs, i, 3) for i in (1, 2, 3)]
    ids = [c.run_id for part in parts for c in part]
    assert sorted(ids) == sorted(c.run_id for c in configs) and len(set(ids)) == len(ids) == 12
    assert [len(p) for p in parts] == [4, 4, 4]
    assert experiments.shard(list(reversed(configs)), 2, 3) == parts[1]  # independent of file order
    assert experiments.parse_shard("2/8") == (2, 8)
    for bad in ("0/4", "5/4", "1", "a/b", "1/0"):
        with pytest.raises(ConfigError, match=rf"--shard '{bad}', must be I/N with integers 1 <= I <= N"):
            experiments.parse_shard(bad)


def test_concurrent_shards_then_collect_equal_the_unsharded_sweep(tmp_path, capsys):
    (tmp_path / "s.toml").write_text(SWEEP)
    whole, shared = tmp_path / "whole", tmp_path / "shared"
    assert main(["sweep", str(tmp_path / "s.toml"), "--out", str(whole), "--quiet"]) == 0
    procs = [
        marina_cli("sweep", str(tmp_path / "s.toml"), "--out", str(shared), "--shard", f"{i}/2", "--quiet")
        for i in (1, 2)
    ]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        assert "6 of 6 runs complete" in out
    (shared / results.RESULTS_FILE).unlink()  # collect rebuilds from the per-run files alone
    (shared / results.RUNS_FILE).unlink()
    capsys.readouterr()
    assert main(["collect", str(shared), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary == {"dir": str(shared), "runs": 12, "rows": 12 * 9, "statuses": {"finished": 12}}
    a = comparable(pd.read_parquet(whole / results.RESULTS_FILE))
    b = comparable(pd.read_parquet(shared / results.RESULTS_FILE))
    pd.testing.assert_frame_equal(a, b)
    runs = json.loads((shared / results.RUNS_FILE).read_text())
    assert sorted(r["run_id"] for r in runs) == sorted(a["run_id"].unique())
    assert main(["collect", str(tmp_path / "nowhere")]) == 2
    assert "is not a results directory" in capsys.readouterr().err


@pytest.mark.slow
def test_a_shard_killed_with_sigkill_and_rerun_loses_nothing(tmp_path):
    (tmp_path / "slow.toml").write_text(SLOW)
    out, whole = tmp_path / "out", tmp_path / "whole"
    args = ["sweep", str(tmp_path / "slow.toml"), "--out", str(out), "--shard", "1/1", "--quiet"]
    p = marina_cli(*args, "--checkpoint-every", "500", start_new_session=True)
    deadline = time.monotonic() + 300
    while not list(out.glob("runs/*/checkpoint.pt")):  # kill it in the middle of a run
        assert p.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert len(results.completed_run_ids(out)) < 2
    assert main([*args, "--checkpoint-every", "500"]) == 0  # the same command again
    assert main(["sweep", str(tmp_path / "slow.toml"), "--out", str(whole), "--quiet"]) == 0
    a = comparable(pd.read_parquet(whole / results.RESULTS_FILE))
    b = comparable(pd.read_parquet(out / results.RESULTS_FILE))
    pd.testing.assert_frame_equal(a, b)
    assert a["run_id"].nunique() == 2 and a.groupby("run_id").size().eq(6000 // 500 + 1).all()
