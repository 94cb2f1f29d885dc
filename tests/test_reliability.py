"""Issue 17: no input crashes marina or exhausts the machine, no damaged file blocks a results
directory. One test per defect of the issue (each fails before its fix); the fuzz tests are in
tests/test_fuzz.py."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch

import marina
from marina import memory
from marina.cli import build_parser, main
from marina.cli.run import config_from_args
from marina.data import load
from marina.errors import ConfigError, DamagedFileWarning, MemoryBudgetError
from marina.experiments import results
from marina.experiments.execute import _execute

SRC = str(Path(__file__).resolve().parents[1] / "src")
AS_LIMIT = 3 * 2**30  # importing torch takes ~1 GiB of address space; a run gets ~2 GiB more


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def sweep_cli(capsys, tmp_path, grid: str, *extra: str, problem: str = "synthetic", top: str = ""):
    """``marina sweep`` of a one-grid file (n = 2, 5 rounds) into tmp_path/D."""
    cfg = tmp_path / "s.toml"
    cfg.write_text(f'{top}problems = "{problem}"\nworkers = 2\niterations = 5\n[[grid]]\n{grid}')
    return cli(capsys, "sweep", str(cfg), "--out", str(tmp_path / "D"), *extra)


def one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and lines[0].startswith("marina "), err
    return lines[0]


def limited(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m marina argv`` under a hard address-space limit: whatever it tries to allocate,
    it can never take more than AS_LIMIT of this machine."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))

    environ = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", **(env or {})}
    environ.pop(memory.ENV_VAR, None)
    return subprocess.run(
        [sys.executable, "-m", "marina", *argv],
        capture_output=True,
        text=True,
        preexec_fn=limit,
        env=environ,
        timeout=120,
    )


# -- 1. memory -------------------------------------------------------------------------------------
def test_huge_online_batch_refused_under_address_space_limit():
    """The issue's 23.5 GB run: refused up front with the estimate and the budget (which sees the
    address-space limit); the same run with a small batch fits under the same limit."""
    base = ["run", "--problem", "mushrooms", "--workers", "2", "--method", "vr-marina", "--online"]
    bad = limited(*base, "--dense-batch-size", "10000000", "--iterations", "5", "--quiet")
    assert bad.returncode == 2, bad.stderr
    line = bad.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert "dense_batch_size = 10000000" in line and "more than the memory budget of" in line
    # by hand: 2 workers x 10^7 samples x (densest row's nnz x 72 B + 64 B), at one point each
    densest = int(load("mushrooms").X.getnnz(axis=1).max())
    want = 2 * 10**7 * (densest * 72 + 64) / 2**30
    assert line.split("needs about ")[1].split()[:2] == [f"{want:.3g}", "GiB"]
    ok = limited(*base, "--dense-batch-size", "1000", "--iterations", "5", "--quiet")
    assert ok.returncode == 0, ok.stderr


def test_huge_synthetic_problem_refused_under_address_space_limit():
    """10^8 workers of 20 samples in d = 10: 2 x 10^10 entries, refused before drawing them."""
    r = limited("run", "--problem", "synthetic", "--workers", "100000000", "--iterations", "1", "--quiet")
    assert r.returncode == 2, r.stderr
    assert "synthetic with workers = 100000000, dim = 10, samples = 20 needs about" in r.stderr
    assert "memory budget" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_budget_is_overridable_and_named(monkeypatch):
    monkeypatch.setenv(memory.ENV_VAR, "1M")
    with pytest.raises(
        MemoryBudgetError, match=r"more than the memory budget of 1 MiB \(MARINA_MEMORY_BUDGET=1M\)"
    ):
        marina.run(method="gd", problem="a9a", workers=1000, iterations=1)
    monkeypatch.setenv(memory.ENV_VAR, "lots")
    with pytest.raises(ConfigError, match="MARINA_MEMORY_BUDGET == 'lots'"):
        memory.budget()


def test_parse_size():
    assert memory.parse_size("8G") == 8 * 2**30
    assert memory.parse_size("512MiB") == 512 * 2**20
    assert memory.parse_size("1000") == 1000
    assert memory.parse_size("50%", avail=1000) == 500
    for bad in ("", "-1G", "0", "1X", "G"):
        with pytest.raises(ConfigError):
            memory.parse_size(bad)


def test_estimate_counts_state_by_hand():
    """gd on a9a (d = 123) with n = 4: 6 float64 rows and one int64 index row per worker, plus the
    workspace; no minibatch."""
    prob = marina.problems.get("a9a", workers=4)
    parts = memory.run_estimate(prob, {"stepsize": 1.0})
    assert parts == {"method state": 4 * 123 * (6 * 8 + 8), "workspace": memory.WORKSPACE}


def test_estimate_bounds_measured_peak():
    """The minibatch estimate stays above the measured peak RSS growth of one oracle call
    (benchmarks/memory.py), and is not absurdly loose."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import memory as bench  # benchmarks/memory.py
    finally:
        sys.path.pop(0)
    measured, estimate = bench.measure(30_000)
    assert measured <= estimate and measured >= estimate / 8, (measured, estimate)


def test_absurd_dimension_refused_at_parse_time(tmp_path):
    f = tmp_path / "big.svm"
    f.write_text("1 1:0.1\n-1 1000000000:0.1\n")
    r = limited("theory", "--problem", str(f), "--workers", "1")
    assert r.returncode == 2, r.stderr
    assert f"{f}:2: feature index 1000000000 makes d = 1000000000" in r.stderr and "memory budget" in r.stderr


def test_compress_absurd_dimension(capsys):
    rc, _, err = cli(capsys, "compress", "randk:5", "--dim", "10000000000")
    assert rc == 2 and "--dim 10000000000" in one_line_error(err) and "memory budget" in err


def test_sweep_checks_memory_up_front(tmp_path, capsys):
    grid = (
        'methods = "vr-marina"\ncompressors = "randk:1"\nonline = true\ndense_batch_size = [100, 10000000]\n'
    )
    rc, _, err = sweep_cli(capsys, tmp_path, grid, "--quiet", problem="mushrooms")
    assert rc == 2 and "memory budget" in one_line_error(err)
    assert not (tmp_path / "D" / "runs").exists()  # no run started


# -- 2. non-finite data ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "line, why",
    [
        ("1 1:0.5 3:nan", "feature 3 is nan"),
        ("1 1:0.5 3:inf", "feature 3 is inf"),
        ("1 1:0.5 3:-inf", "feature 3 is -inf"),
        ("1 1:1e308", "feature 1 is 1e+308, must be at most 1e+30"),
        ("nan 1:0.5", "label is nan"),
    ],
)
def test_non_finite_values_named_with_file_and_line(tmp_path, capsys, line, why):
    f = tmp_path / "d.svm"
    f.write_text(f"-1 2:0.25\n{line}\n1 1:1\n")
    with pytest.raises(ConfigError, match=re.escape(f"{f}:2: {why}")):
        load(str(f))
    for argv in (["run", "--iterations", "2"], ["theory"]):
        rc, _, err = cli(capsys, *argv, "--problem", str(f), "--workers", "1")
        assert rc == 2 and f"{f}:2:" in one_line_error(err)


# -- 3. damaged per-run files ----------------------------------------------------------------------
SWEEP = """
problems = "synthetic"
workers = 2
iterations = 30
log_every = 10
checkpoint_every = 10
[[grid]]
methods = "marina"
compressors = "randk:1"
seeds = [0, 1, 2]
"""


def _sweep(capsys, tmp_path, *extra: str) -> tuple[int, str, str]:
    cfg = tmp_path / "s.toml"
    cfg.write_text(SWEEP)
    return cli(capsys, "sweep", str(cfg), "--out", str(tmp_path / "D"), "--quiet", *extra)


def _non_time(df: pd.DataFrame) -> pd.DataFrame:
    df = df.drop(columns=list(results.TIME_COLUMNS)).sort_values(["run_id", "iteration"])
    return df.reset_index(drop=True)


@pytest.mark.parametrize("victim", ["run.json", "history.parquet", "checkpoint.pt", "results.parquet"])
def test_damaged_file_never_blocks_the_directory(tmp_path, capsys, victim):
    """Truncate one file; dry-run, sweep and plot report it by path and carry on; the sweep
    redoes what was lost and ends with the uninterrupted results (time aside)."""
    assert _sweep(capsys, tmp_path)[0] == 0
    out = tmp_path / "D"
    want = _non_time(pd.read_parquet(out / "results.parquet"))
    run_id = sorted(p.name for p in (out / "runs").iterdir())[1]
    target = out / "runs" / run_id / victim if victim != "results.parquet" else out / victim
    if victim == "checkpoint.pt":
        # a run cut short, its checkpoint then damaged: the record says running
        record = json.loads((out / "runs" / run_id / "run.json").read_text())
        (out / "runs" / run_id / "run.json").write_text(json.dumps({**record, "status": "running"}))
        target.write_bytes(b"PK\x03\x04 not a checkpoint")
    else:
        data = target.read_bytes()
        target.write_bytes(data[: len(data) // 2])
    if victim != "results.parquet":
        rc, listing, err = _sweep(capsys, tmp_path, "--dry-run")
        assert rc == 0 and "Traceback" not in err
        assert f"{run_id}  missing" in listing and "2 done, 1 missing" in listing
    rc, _, err = _sweep(capsys, tmp_path)
    assert rc == 0, err
    if victim != "results.parquet":
        assert str(target) in err and "marina: warning:" in err and "Traceback" not in err
    if victim == "results.parquet":  # nothing to run: the reader rebuilds it, saying so
        with pytest.warns(DamagedFileWarning, match="results.parquet is damaged"):
            results.load_results(out)
    pd.testing.assert_frame_equal(_non_time(results.load_results(out)), want)
    # the combined file damaged after all: plot and load_results rebuild it from runs/
    data = (out / "results.parquet").read_bytes()
    (out / "results.parquet").write_bytes(data[:100])
    with pytest.warns(DamagedFileWarning, match="results.parquet"):
        pd.testing.assert_frame_equal(_non_time(results.load_results(out)), want)
    (out / "results.parquet").write_bytes(data[:100])
    rc, _, err = cli(capsys, "plot", str(out), "--out", str(tmp_path / "fig.png"))
    assert rc == 0 and "results.parquet" in err and (tmp_path / "fig.png").is_file()


def test_damaged_record_of_marina_run_is_redone(tmp_path, capsys):
    argv = ["run", "--problem", "synthetic", "--workers", "2", "--iterations", "20", "--out", str(tmp_path)]
    assert cli(capsys, *argv, "--quiet")[0] == 0
    (record,) = tmp_path.glob("runs/*/run.json")
    record.write_text('{"run_id": "')
    rc, out, err = cli(capsys, *argv, "--quiet")
    assert rc == 0 and str(record) in err and "written to" in out
    assert json.loads(record.read_text())["status"] == "finished"
    runs = tmp_path / "runs.json"
    runs.write_text("[{")
    with pytest.warns(DamagedFileWarning, match="runs.json"):
        assert [r["status"] for r in results.load_runs(tmp_path)] == ["finished"]


# -- 4. non-finite metrics -------------------------------------------------------------------------
def test_diverged_run_stores_numbers_and_reruns(tmp_path, capsys):
    argv = ["run", "--problem", "synthetic", "--workers", "2", "--method", "vr-marina", "--iterations", "200"]
    argv += ["--stepsize", "1e300", "--out", str(tmp_path), "--quiet"]
    rc, out, err = cli(capsys, *argv)
    assert rc == 3 and "diverged" in out and "|grad f|^2 = inf" in out, err  # 3: a diverged run
    rc, out, err = cli(capsys, *argv)  # the crash of the issue came here
    assert rc == 3 and "already holds this run" in out and "|grad f|^2 = inf" in out, err

    def refuse(token):
        raise AssertionError(f"non-standard JSON token {token}")

    for path in [tmp_path / "runs.json", *tmp_path.glob("runs/*/run.json")]:
        text = path.read_text()
        assert '"inf"' not in text
        data = json.loads(text, parse_constant=refuse)
        final = (data[0] if isinstance(data, list) else data)["final"]
        assert math.isinf(final["grad_norm_sq"]) and isinstance(final["grad_norm_sq"], float)


def test_old_records_with_inf_strings_are_read_as_floats(tmp_path, capsys):
    argv = ["run", "--problem", "synthetic", "--workers", "2", "--iterations", "5", "--out", str(tmp_path)]
    assert cli(capsys, *argv, "--quiet")[0] == 0
    (path,) = tmp_path.glob("runs/*/run.json")
    record = json.loads(path.read_text())
    record["final"].update(grad_norm_sq="inf", loss="-inf")
    path.write_text(json.dumps(record))
    got = results.read_run_record(tmp_path, record["run_id"])["final"]
    assert got["grad_norm_sq"] == math.inf and got["loss"] == -math.inf
    rc, out, _ = cli(capsys, *argv, "--quiet")
    assert rc == 0 and "|grad f|^2 = inf, f = -inf" in out


# -- 5. one canonical type per parameter -----------------------------------------------------------
def test_numeric_string_parameter_refused(tmp_path, capsys):
    grid = 'methods = "marina"\ncompressors = "randk:1"\np = [0.5, "0.5"]\n'
    rc, _, err = sweep_cli(capsys, tmp_path, grid, "--dry-run")
    assert rc == 2 and "p == '0.5', must be a number in (0, 1]" in one_line_error(err)


# -- 6. devices ------------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize(
    "device, why", [("cuda", "CUDA is not available"), ("cuda:7", "CUDA is not available")]
)
def test_missing_cuda(tmp_path, capsys, device, why):
    rc, _, err = cli(capsys, "run", "--problem", "synthetic", "--workers", "2", "--device", device)
    assert rc == 2 and why in one_line_error(err) and "this machine has: cpu" in err
    grid = 'methods = "marina"\ncompressors = "randk:1"\n'
    rc, _, err = sweep_cli(capsys, tmp_path, grid, top=f'device = "{device}"\n')
    assert rc == 2 and why in one_line_error(err)


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "", "cpu:0:1"])
def test_unknown_device(capsys, device):
    rc, _, err = cli(capsys, "run", "--problem", "synthetic", "--workers", "2", "--device", device)
    assert rc == 2 and f"device == {device!r}" in one_line_error(err)
    with pytest.raises(ConfigError, match="this machine has: cpu"):
        marina.run(method="gd", problem="synthetic", workers=2, iterations=1, device=device)


def test_cuda_index_beyond_count():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    with pytest.raises(ConfigError, match="does not exist"):
        marina.devices.check(f"cuda:{torch.cuda.device_count()}")


# -- 7. read-only or full disk ---------------------------------------------------------------------
def test_full_disk_one_line_and_resumable(tmp_path, capsys, monkeypatch):
    """torch.save failing as on a full disk ("basic_ios::clear: iostream error"): one line naming
    the checkpoint and ENOSPC, exit 2, no temporary file left, and the run resumes once fixed."""
    real_save = torch.save
    calls = [0]

    def failing_save(obj, f, *a, **k):
        calls[0] += 1
        if calls[0] == 2:  # the second checkpoint, mid-run
            Path(f).write_bytes(b"partial")
            raise RuntimeError("basic_ios::clear: iostream error")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", failing_save)
    monkeypatch.setattr(marina.files, "_disk_full", lambda directory: True)
    argv = ["run", "--problem", "synthetic", "--workers", "2", "--iterations", "30", "--log-every", "5"]
    argv += ["--checkpoint-every", "10", "--out", str(tmp_path / "D"), "--quiet"]
    rc, out, err = cli(capsys, *argv)
    line = one_line_error(err)
    assert (
        rc == 2 and "no space left on device" in line and "checkpoint.pt" in line and "written to" not in out
    )
    assert not list((tmp_path / "D").rglob("*.tmp")) and not list((tmp_path / "D").rglob(".checkpoint*"))
    monkeypatch.setattr(torch, "save", real_save)
    monkeypatch.setattr(marina.files, "_disk_full", lambda directory: False)
    rc, out, err = cli(capsys, *argv)
    assert rc == 0 and "finished" in out, err
    (record,) = (tmp_path / "D").glob("runs/*/run.json")
    assert json.loads(record.read_text())["resumed"] is True
    fresh = marina.run(
        method="marina", problem="synthetic", workers=2, iterations=30, log_every=5, compressor="randk:1"
    )
    got = pd.read_parquet(tmp_path / "D" / "results.parquet")
    assert got["grad_norm_sq"].tolist() == fresh.history["grad_norm_sq"].tolist()


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES, errno.ENOSPC])
def test_read_only_out_one_line(tmp_path, capsys, monkeypatch, code):
    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code), kwargs.get("dir", "?"))

    monkeypatch.setattr(marina.files.tempfile, "mkstemp", refuse)
    out = tmp_path / "D"
    rc, _, err = cli(
        capsys, "run", "--problem", "synthetic", "--workers", "2", "--iterations", "5", "--out", str(out)
    )
    line = one_line_error(err)
    assert rc == 2 and os.strerror(code).lower() in line and str(out / "runs") in line


# -- 8. smaller ------------------------------------------------------------------------------------
def test_directories_where_files_belong(tmp_path, capsys):
    rc, _, err = cli(capsys, "sweep", str(tmp_path), "--out", str(tmp_path / "D"))
    assert rc == 2 and "is a directory, must be a TOML file" in one_line_error(err)
    rc, _, err = cli(capsys, "run", "--problem", str(tmp_path), "--workers", "1")
    assert rc == 2 and "is a directory, must be a LibSVM file" in one_line_error(err)


def test_float16_refused():
    with pytest.raises(ConfigError, match="dtype == torch.float16, must be torch.float32 or torch.float64"):
        marina.run(method="gd", problem="synthetic", workers=2, iterations=1, dtype=torch.float16)


def test_gradient_underflow_flagged():
    """a9a with stepsize 1e8 (the issue's case): ||grad f||^2 is exactly 0 after round 0."""
    res = marina.run(method="gd", problem="a9a", workers=2, iterations=5, stepsize=1e8)
    assert res.history["grad_norm_sq"].iloc[1:].eq(0.0).all()
    assert res.status == "finished" and "exactly 0 from round 1 on: the gradient underflowed" in res.message
    ok = marina.run(method="gd", problem="a9a", workers=2, iterations=5)
    assert "underflow" not in ok.message


def test_warnings_outside_the_cli_stay_python_warnings(tmp_path):
    (tmp_path / "runs" / "abc").mkdir(parents=True)
    (tmp_path / "runs" / "abc" / "run.json").write_text("{")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert results.completed_run_ids(tmp_path) == set()
    assert [type(w.message) for w in caught] == [DamagedFileWarning]
    assert str(tmp_path / "runs" / "abc" / "run.json") in str(caught[0].message)


def test_atomic_write_names_the_file_of_a_failed_write(tmp_path, monkeypatch):
    """A writer's OSError without a file name (pyarrow's) gets the path; any error on a full disk
    becomes ENOSPC; other errors pass unchanged; no temporary file is left in any case."""
    target = tmp_path / "x.parquet"

    def arrow_like(tmp):
        raise OSError("IOError: write failed")

    with pytest.raises(OSError) as info:
        marina.files.atomic_write(target, arrow_like)
    assert info.value.filename == str(target) and "write failed" in info.value.strerror

    def bad(tmp):
        raise ValueError("not a disk problem")

    with pytest.raises(ValueError, match="not a disk problem"):
        marina.files.atomic_write(target, bad)
    monkeypatch.setattr(marina.files, "_disk_full", lambda directory: True)
    with pytest.raises(OSError) as info:
        marina.files.atomic_write(target, bad)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []


def test_concurrent_runs_of_one_configuration_compute_it_once(tmp_path):
    """While one process computes a run of DIR (here: this test, holding the run's lock), a
    second `marina run` of it waits, then reports the first one's record (same start time)
    instead of computing it again."""
    options = [
        "run",
        "--problem",
        "synthetic",
        "--workers",
        "2",
        "--iterations",
        "50",
        "--out",
        str(tmp_path),
    ]
    config = config_from_args(build_parser().parse_args(options))
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    with results.run_lock(tmp_path, config.run_id) as waited:
        assert not waited
        second = subprocess.Popen(
            [sys.executable, "-m", "marina", *options, "--quiet"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        os.set_blocking(second.stderr.fileno(), False)
        seen, deadline = b"", time.monotonic() + 60
        while b"being computed by another process" not in seen:
            assert time.monotonic() < deadline and second.poll() is None, seen
            with contextlib.suppress(BlockingIOError):
                seen += os.read(second.stderr.fileno(), 1 << 16)
            time.sleep(0.05)
        record, _ = _execute(config, tmp_path)  # the first process: computes it, lock held
    out, err = (b.decode() for b in second.communicate(timeout=60))
    assert second.returncode == 0, seen.decode() + err
    on_disk = json.loads((results.run_dir(tmp_path, config.run_id) / "run.json").read_text())
    assert on_disk["started_at"] == record["started_at"] and on_disk["status"] == "finished"
    assert f"round 50: |grad f|^2 = {record['final']['grad_norm_sq']:.4e}" in out
