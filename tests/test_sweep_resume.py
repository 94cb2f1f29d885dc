"""Nothing lost: a sweep killed (SIGKILL, Ctrl-C) and started again ends with the results of an
uninterrupted sweep; runs cut short resume from their checkpoints with identical histories."""

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
from marina.cli import build_parser, main
from marina.cli.run import config_from_args
from marina.experiments import results

# Two short runs, then a long one that checkpoints every 50 rounds: with two workers the short
# ones finish first and the long one is certainly in flight (with a checkpoint) when killed.
CONFIG = """
problems = "synthetic"
workers = 3
seeds = 0
log_every = 10
checkpoint_every = 50

[[grid]]
methods = "marina"
compressors = "randk:1"
iterations = 150

[[grid]]
methods = "diana"
compressors = "randk:1"
iterations = 150

[[grid]]
methods = "marina"
compressors = "randk:2"
iterations = 1500
"""


ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}
NON_TIME = [c for c in [*results.CONFIG_COLUMNS, *results.HISTORY_COLUMNS] if c not in results.TIME_COLUMNS]


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_for(predicate, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"sweep exited early ({proc.returncode}): {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the sweep")
        time.sleep(0.02)


def _start_sweep(config: Path, out: Path) -> subprocess.Popen:
    """`marina sweep CONFIG --out OUT --jobs 2` as a real process."""
    cmd = [sys.executable, "-m", "marina", "sweep", str(config), "--out", str(out), "--jobs", "2"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ONE_THREAD)


def _table(out: Path) -> pd.DataFrame:
    df = pd.read_parquet(out / "results.parquet")
    return df[NON_TIME].sort_values(["run_id", "iteration"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same sweep, never interrupted."""
    root = tmp_path_factory.mktemp("reference")
    (root / "sweep.toml").write_text(CONFIG)
    assert (
        main(["sweep", str(root / "sweep.toml"), "--out", str(root / "out"), "--quiet", "--threads", "1"])
        == 0
    )
    return root / "out"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to watch processes")
def test_sigkill_mid_sweep_then_rerun_equals_uninterrupted(tmp_path, reference):
    (tmp_path / "sweep.toml").write_text(CONFIG)
    out = tmp_path / "out"
    cfgs = experiments.validate(experiments.expand(experiments.load_sweep(tmp_path / "sweep.toml")))
    long_run = cfgs[2]
    proc = _start_sweep(tmp_path / "sweep.toml", out)
    ckpt = results.checkpoint_path(out, long_run.run_id)
    _wait_for(lambda: len(results.completed_run_ids(out)) >= 1 and ckpt.exists(), 120, proc)
    workers = _children(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()
    # the worker processes notice and exit on their own
    deadline = time.monotonic() + 10
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(w) for w in workers), "orphaned sweep workers kept running"

    done_before = results.completed_run_ids(out)
    assert long_run.run_id not in done_before and ckpt.exists()
    records_before = {r: results.read_run_record(out, r) for r in done_before}
    assert main(["sweep", str(tmp_path / "sweep.toml"), "--out", str(out), "--quiet", "--threads", "1"]) == 0
    # completed runs were not run again; the long one resumed from its checkpoint
    for run_id, rec in records_before.items():
        assert results.read_run_record(out, run_id) == rec
    resumed = results.read_run_record(out, long_run.run_id)
    assert resumed["status"] == "finished" and resumed.get("resumed") is True
    assert not ckpt.exists()
    pd.testing.assert_frame_equal(_table(out), _table(reference))
    runs = json.loads((out / "runs.json").read_text())
    assert sorted(r["run_id"] for r in runs) == sorted(c.run_id for c in cfgs)
    assert not list(out.rglob("*.tmp")) and not list(out.rglob("*.tmp-*"))  # no temporary file left


def test_ctrl_c_stops_cleanly_and_rerun_finishes(tmp_path, reference):
    (tmp_path / "sweep.toml").write_text(CONFIG)
    out = tmp_path / "out"
    proc = _start_sweep(tmp_path / "sweep.toml", out)
    _wait_for(lambda: len(results.completed_run_ids(out)) >= 1, 120, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "marina sweep: interrupted" in err and "Traceback" not in err
    # the combined files were rebuilt on the way out and hold the completed runs
    assert set(pd.read_parquet(out / "results.parquet").run_id) == results.completed_run_ids(out)
    assert main(["sweep", str(tmp_path / "sweep.toml"), "--out", str(out), "--quiet", "--threads", "1"]) == 0
    pd.testing.assert_frame_equal(_table(out), _table(reference))


def test_interrupted_marina_run_resumes_from_checkpoint_with_identical_history(tmp_path):
    """`marina run` stopped after a checkpoint, started again: the history of one whole run."""
    args = [
        "run",
        "--problem",
        "synthetic",
        "--workers",
        "3",
        "--method",
        "vr-marina",
        "--compressor",
        "randk:3",
    ]
    args += [
        "--iterations",
        "600",
        "--log-every",
        "20",
        "--seed",
        "5",
        "--checkpoint-every",
        "100",
        "--quiet",
        "--threads",
        "1",
    ]
    out = tmp_path / "out"
    config = config_from_args(build_parser().parse_args([*args, "--out", str(out)]))

    def interrupt(row, total):  # stands in for Ctrl-C / a kill between two checkpoints
        if row["iteration"] == 460:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), experiments.torch_threads(1):
        experiments.execute(config, out, checkpoint_every=100, progress=interrupt)
    assert results.read_run_record(out, config.run_id)["status"] == "running"
    assert results.checkpoint_path(out, config.run_id).exists()
    assert main([*args, "--out", str(out)]) == 0
    assert main([*args, "--out", str(tmp_path / "ref")]) == 0
    assert results.read_run_record(out, config.run_id).get("resumed") is True
    resumed = pd.read_parquet(out / "results.parquet")
    whole = pd.read_parquet(tmp_path / "ref" / "results.parquet")
    assert len(whole) == 600 // 20 + 1
    pd.testing.assert_frame_equal(resumed[NON_TIME], whole[NON_TIME])
