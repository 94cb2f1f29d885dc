"""Results directories: atomic writes, per-run files, the combined table and runs.json."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pytest
import torch

from marina.errors import ConfigError, LockTimeoutError, MarinaWarning
from marina.experiments import results
from marina.files import atomic_write


def fake_history(iterations: int = 100, log_every: int = 10, scale: float = 1.0) -> pd.DataFrame:
    it = np.arange(0, iterations + 1, log_every)
    return pd.DataFrame(
        {
            "iteration": it,
            "grad_norm_sq": scale / (1.0 + it),
            "loss": 0.5 + scale / (1.0 + it),
            "bits_up": it * 64.0,
            "bits_down": it * 128.0,
            "oracle_calls": it * 20,
            "time_s": it * 1e-3,
        }
    )


def fake_record(run_id: str, status: str = "finished", **config) -> dict:
    cfg = {
        "problem": "a9a",
        "workers": 5,
        "split": "contiguous",
        "method": "marina",
        "compressor": "randk:1",
        "seed": 0,
        "iterations": 100,
        "log_every": 10,
        "params": {},
    }
    cfg.update(config)
    return {"run_id": run_id, "status": status, "config": cfg, "m": 20.0, "params": {"stepsize": 0.1}}


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "f.json"
    results.atomic_write_json(path, {"a": 1})
    results.atomic_write_json(path, {"a": 2, "b": [1, 2]})
    assert json.loads(path.read_text()) == {"a": 2, "b": [1, 2]}
    assert sorted(p.name for p in path.parent.iterdir()) == ["f.json"]
    # permissions as a plain open() would give (not the temporary file's 0600)
    plain = tmp_path / "plain"
    plain.write_text("x")
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


def test_atomic_write_failure_keeps_old_file(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("old")

    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        atomic_write(path, broken)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_sigkill_during_writes_never_leaves_a_partial_file(tmp_path, seed):
    """A writer killed at a random moment leaves either no file or one complete version."""
    target = tmp_path / "t.parquet"
    script = textwrap.dedent(
        f"""
        import numpy as np, pandas as pd, sys
        from marina.experiments import results
        print("ready", flush=True)
        i = 0
        while True:
            df = pd.DataFrame({{"k": np.full(200_000, i, dtype=np.int64), "v": np.arange(200_000.0)}})
            results.atomic_write_parquet({str(target)!r}, df)
            i += 1
        """
    )
    rng = np.random.default_rng(seed)
    for _ in range(2):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(float(rng.uniform(0.05, 0.6)))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if target.exists():
            df = pd.read_parquet(target)
            assert len(df) == 200_000
            assert df["k"].nunique() == 1
            np.testing.assert_array_equal(df["v"].to_numpy(), np.arange(200_000.0))


def test_jsonable():
    value = {
        "a": float("nan"),
        "b": float("inf"),
        "c": -float("inf"),
        "t": torch.tensor(2.5),
        "n": np.int64(3),
    }
    inf = float("inf")
    assert results.jsonable(value) == {"a": None, "b": inf, "c": -inf, "t": 2.5, "n": 3}
    assert results.jsonable((1, [np.float64(0.5)])) == [1, [0.5]]


def test_dumps_json_numbers_or_null():
    """NaN -> null, +-inf -> the JSON numbers +-1e999 (strict JSON: no NaN/Infinity tokens), and
    a string that spells Infinity is left alone."""
    value = {"a": float("nan"), "b": float("inf"), "c": [-float("inf")], "s": "x: Infinity, -Infinity"}
    text = results.dumps_json(value)

    def refuse(token):
        raise AssertionError(f"non-standard JSON token {token}")

    back = json.loads(text, parse_constant=refuse)
    assert back == {"a": None, "b": float("inf"), "c": [-float("inf")], "s": "x: Infinity, -Infinity"}
    assert text.count("1e999") == 2


def test_rebuild_combines_completed_runs(tmp_path):
    h1, h2 = fake_history(100, 10), fake_history(50, 5, scale=2.0)
    results.write_run(tmp_path, fake_record("r1"), h1)
    results.write_run(tmp_path, fake_record("r2", seed=1, params={"p": 0.5, "batch_size": 7}), h2)
    results.write_run(tmp_path, fake_record("r3", status="running", seed=2))  # in flight: no rows
    results.write_run(tmp_path, fake_record("r4", status="diverged", seed=3), h1.iloc[:3])
    assert results.completed_run_ids(tmp_path) == {"r1", "r2", "r4"}
    df, records = results.rebuild(tmp_path)
    assert len(df) == len(h1) + len(h2) + 3
    # plain pandas reads both files
    disk = pd.read_parquet(tmp_path / "results.parquet")
    pd.testing.assert_frame_equal(disk, df)
    runs = json.loads((tmp_path / "runs.json").read_text())
    # sorted by configuration, seeds of one configuration next to each other
    assert [r["run_id"] for r in runs] == ["r2", "r1", "r3", "r4"]
    assert {r["run_id"]: r["status"] for r in runs} == {
        "r1": "finished",
        "r2": "finished",
        "r3": "running",
        "r4": "diverged",
    }
    assert list(df.columns) == [*results.CONFIG_COLUMNS, *results.HISTORY_COLUMNS]
    r2 = df[df.run_id == "r2"]
    assert (r2.seed == 1).all() and (r2.p == 0.5).all() and (r2.batch_size == 7).all()
    np.testing.assert_array_equal(r2.grad_norm_sq.to_numpy(), h2.grad_norm_sq.to_numpy())
    r1 = df[df.run_id == "r1"]
    assert r1.p.isna().all() and r1.batch_size.isna().all() and (r1.m == 20.0).all()
    assert str(df.batch_size.dtype) == "Int64" and df.workers.dtype == np.int64


def test_load_results_rebuilds_when_stale(tmp_path):
    results.write_run(tmp_path, fake_record("r1"), fake_history())
    assert not (tmp_path / "results.parquet").exists()
    df = results.load_results(tmp_path)  # no combined file yet, e.g. after a killed sweep
    assert set(df.run_id) == {"r1"}
    time.sleep(0.02)
    results.write_run(tmp_path, fake_record("r2", seed=1), fake_history())
    assert set(results.load_results(tmp_path).run_id) == {"r1", "r2"}


def test_load_results_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        results.load_results(tmp_path / "nope")
    with pytest.raises(ConfigError, match="not a results directory"):
        results.load_results(tmp_path)


def test_history_frame_keeps_extra_columns():
    h = fake_history().assign(train_acc=0.9)
    df = results.history_frame(fake_record("x", params={"stepsize_multiplier": 2.0}), h)
    assert df["train_acc"].eq(0.9).all() and df["stepsize_multiplier"].eq(2.0).all()
    assert math.isnan(df["stepsize"].iloc[0])


def test_rebuild_removes_temporaries_of_a_killed_rebuild(tmp_path):
    results.write_run(tmp_path, fake_record("r1"), fake_history())
    junk = [tmp_path / ".results.parquet.abc123.tmp", tmp_path / ".runs.json.x_y.tmp"]
    for path in junk:
        path.write_bytes(b"half")
    keep = tmp_path / ".figure.png.abc.tmp"  # not the rebuild's: left alone
    keep.write_bytes(b"other")
    results.rebuild(tmp_path)
    assert not any(p.exists() for p in junk) and keep.exists()


def test_lock_timeout_names_the_lock_and_a_dead_holder_releases_it(tmp_path):
    """While another process holds the directory lock and a run's lock, waiting with a timeout
    ends in a LockTimeoutError naming the lock file; once that process is killed (SIGKILL, no
    clean-up) both locks are free again (flock locks die with their holder)."""
    holder = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from marina.experiments import results
        with results._locked(Path({str(tmp_path)!r})), results.run_lock({str(tmp_path)!r}, "r1"):
            print("held", flush=True)
            time.sleep(120)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(LockTimeoutError) as info, results._locked(tmp_path, timeout=0.2):
            pass
        assert str(info.value) == (
            f"the lock of the results directory {str(tmp_path)!r} is still held by another process after "
            f"0.2 s (lock file {str(tmp_path / '.lock')!r}): another marina run or sweep is writing there; "
            "wait for it to finish or stop it"
        )
        lock_file = results.run_dir(tmp_path, "r1") / ".lock"
        with pytest.warns(MarinaWarning, match="run r1 is being computed by another process"):
            with pytest.raises(LockTimeoutError, match=f"the lock of run r1 .* {str(lock_file)!r}"):
                with results.run_lock(tmp_path, "r1", timeout=0.2):
                    pass
    finally:
        proc.kill()
        proc.wait()
    with results._locked(tmp_path, timeout=10), results.run_lock(tmp_path, "r1", timeout=10) as waited:
        assert not waited
    assert not lock_file.exists()  # removed on release, as before
