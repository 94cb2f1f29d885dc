"""Issue 25, 2-3: no small input exhausts memory or time (grid sizes, compressed data, image
size, per-run files that are not regular files), and one damaged or foreign per-run file never
blocks a results directory nor is merged as another run."""

from __future__ import annotations

import bz2
import gzip
import json
import os
import re
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest

from marina import data, memory
from marina.cli import main
from marina.errors import ConfigError
from marina.experiments import grid, results
from test_reliability import SWEEP, _non_time, cli, one_line_error

# -- grid sizes ----------------------------------------------------------------------------------
AXES = 'problems = "synthetic"\nmethods = "marina"\ncompressors = "randk:1"\n'


@pytest.mark.parametrize("dry", [False, True])
def test_grid_size_refused_before_expansion(tmp_path, capsys, dry):
    """Three axes of 1000 values: 10^9 runs, refused at once (the product is never built),
    naming the count, the axes and the limit's variable."""
    values = ", ".join(str(i) for i in range(1000))
    f = tmp_path / "s.toml"
    counts = ", ".join(str(i + 1) for i in range(1000))
    f.write_text(AXES + f"seeds = [{values}]\nworkers = [{counts}]\niterations = [{counts}]\n")
    t0 = time.process_time()
    rc, _, err = cli(capsys, "sweep", str(f), "--out", str(tmp_path / "D"), *(["--dry-run"] if dry else []))
    line = one_line_error(err)
    assert (
        rc == 2 and "1000000000 runs" in line and "seeds (1000) x workers (1000) x iterations (1000)" in line
    )
    assert f"more than the limit of {grid.MAX_RUNS}" in line and grid.MAX_RUNS_ENV in line
    assert time.process_time() - t0 < 5  # it never built 10^9 configurations
    assert not (tmp_path / "D").exists()


def test_grid_limit_counts_every_grid_and_is_raisable(tmp_path, capsys, monkeypatch):
    f = tmp_path / "s.toml"
    f.write_text(
        AXES + "iterations = 5\n[[grid]]\nseeds = [0, 1, 2]\n[[grid]]\nseeds = [3, 4]\nworkers = [1, 2]\n"
    )
    monkeypatch.setenv(grid.MAX_RUNS_ENV, "6")
    rc, _, err = cli(capsys, "sweep", str(f), "--out", str(tmp_path / "D"), "--dry-run")
    assert rc == 2 and "7 runs" in one_line_error(err) and f"{grid.MAX_RUNS_ENV}=6" in err
    monkeypatch.setenv(grid.MAX_RUNS_ENV, "7")
    rc, out, _ = cli(capsys, "sweep", str(f), "--out", str(tmp_path / "D"), "--dry-run")
    assert rc == 0 and "7 runs, 0 done, 7 missing" in out
    monkeypatch.setenv(grid.MAX_RUNS_ENV, "many")
    rc, _, err = cli(capsys, "sweep", str(f), "--out", str(tmp_path / "D"), "--dry-run")
    assert rc == 2 and f"{grid.MAX_RUNS_ENV} == 'many', must be an integer >= 1" in one_line_error(err)


def test_huge_seeds_list_refused_quickly(tmp_path, capsys, monkeypatch):
    """A long seeds list (here 200,000 seeds, 1.3 MB) is refused by its count, before any
    configuration is validated; a sweep file beyond the file-size cap is refused unread."""
    f = tmp_path / "s.toml"
    f.write_text(AXES + "iterations = 5\nseeds = [" + ", ".join(map(str, range(200_000))) + "]\n")
    rc, _, err = cli(capsys, "sweep", str(f), "--out", str(tmp_path / "D"), "--dry-run")
    assert rc == 2 and "200000 runs" in one_line_error(err) and "seeds (200000)" in err
    monkeypatch.setattr(grid, "MAX_SWEEP_BYTES", 1000)
    rc, _, err = cli(capsys, "sweep", str(f), "--out", str(tmp_path / "D"), "--dry-run")
    assert rc == 2 and f"{f}" in err and "must be at most 1000 bytes" in one_line_error(err)


def test_deeply_nested_toml_refused(tmp_path, capsys):
    f = tmp_path / "s.toml"
    f.write_text(AXES + "iterations = 5\nseeds = " + "[" * 50_000 + "]" * 50_000 + "\n")
    rc, _, err = cli(capsys, "sweep", str(f), "--out", str(tmp_path / "D"), "--dry-run")
    assert rc == 2 and "nested too deeply" in one_line_error(err) and str(f) in err


# -- compressed and large data files --------------------------------------------------------------
BUDGET = "16M"  # the memory budget of these tests: a text of 4 MiB at most (4 bytes of arrays per byte)


def _bomb(path: Path, chunk: bytes, total: int) -> Path:
    opener = gzip.open if path.suffix == ".gz" else bz2.open
    with opener(path, "wb") as fh:
        for _ in range(total // len(chunk)):
            fh.write(chunk)
    return path


@pytest.mark.parametrize(
    "name, chunk, total",
    [
        ("rows.svm.gz", b"1 1:0.5 2:0.25\n-1 3:1\n" * 2**15, 64 * 2**20),  # valid rows
        ("rows.svm.bz2", b"1 1:0.5 2:0.25\n-1 3:1\n" * 2**15, 6 * 2**20),  # (bz2 writes slowly)
    ],
)
def test_compression_bomb_refused_quickly(tmp_path, capsys, monkeypatch, name, chunk, total):
    path = _bomb(tmp_path / name, chunk, total)  # MiBs of text in a few hundred KB on disk
    assert path.stat().st_size < 2**20
    monkeypatch.setenv(memory.ENV_VAR, BUDGET)
    data.clear_cache()
    t0 = time.process_time()
    with pytest.raises(ConfigError, match=re.escape(f"{path}: decompresses to more than 4 MiB")) as info:
        data.load(str(path))
    assert "memory budget of 16 MiB (MARINA_MEMORY_BUDGET=16M)" in str(info.value)
    for argv in (["datasets", str(path)], ["run", "--problem", str(path), "--workers", "1"]):
        rc, _, err = cli(capsys, *argv)
        assert rc == 2 and "decompresses to more than 4 MiB" in one_line_error(err)
    assert time.process_time() - t0 < 10  # read 4 MiB of each, not 64


def test_bomb_of_nul_bytes_refused_at_its_first_piece(tmp_path, capsys):
    """The issue's 12 GiB of NUL bytes (here 128 MiB in 130 KB): binary, refused whatever the budget."""
    path = _bomb(tmp_path / "nul.svm.gz", b"\0" * 2**20, 2**27)
    data.clear_cache()
    t0 = time.process_time()
    with pytest.raises(ConfigError, match=re.escape(f"{path}: not a LibSVM text file (a NUL byte at byte 0")):
        data.load(str(path))
    assert time.process_time() - t0 < 2  # one piece read, not 128 MiB
    rc, _, err = cli(capsys, "datasets", str(path))
    assert rc == 2 and "NUL byte" in one_line_error(err)


def test_plain_file_beyond_budget_refused_unread(tmp_path, monkeypatch):
    path = tmp_path / "big.svm"
    with open(path, "wb") as fh:
        fh.truncate(64 * 2**20)  # sparse: 64 MiB that take no disk
    monkeypatch.setenv(memory.ENV_VAR, BUDGET)
    data.clear_cache()
    with pytest.raises(ConfigError, match=re.escape(f"{path}: 64 MiB of text needs about 256 MiB")):
        data.load(str(path))


def test_compressed_file_within_budget_loads_as_plain(tmp_path, monkeypatch):
    text = b"1 1:0.5 2:0.25\n-1 3:1\n" * 1000
    plain, packed = tmp_path / "d.svm", tmp_path / "d.svm.gz"
    plain.write_bytes(text)
    packed.write_bytes(gzip.compress(text))
    monkeypatch.setenv(memory.ENV_VAR, BUDGET)
    data.clear_cache()
    a, b = data.load(str(plain)), data.load(str(packed))
    assert (a.X != b.X).nnz == 0 and a.y.tolist() == b.y.tolist() and a.n_rows == 2000


def test_feature_index_beyond_int32_names_the_line(tmp_path, capsys):
    f = tmp_path / "d.svm"
    f.write_text("1 1:0.1\n-1 1000000000000:0.1\n")
    data.clear_cache()
    with pytest.raises(
        ConfigError, match=re.escape(f"{f}:2: malformed LibSVM line (feature index 1000000000000")
    ):
        data.load(str(f))
    rc, _, err = cli(capsys, "run", "--problem", str(f), "--workers", "1")
    assert rc == 2 and f"{f}:2:" in one_line_error(err) and "must be at most 2147483646" in err


# -- figure size -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("res")
    argv = ["run", "--problem", "synthetic", "--workers", "2", "--iterations", "10", "--quiet"]
    assert main([*argv, "--out", str(out)]) == 0
    return out


def test_plot_dpi_bounded(small_results, tmp_path, capsys):
    fig = tmp_path / "f.png"
    rc, _, err = cli(capsys, "plot", str(small_results), "--out", str(fig), "--dpi", "100000")
    line = one_line_error(err)
    assert rc == 2 and "--dpi 100000" in line and "pixels" in line and "must be at most" in line
    assert not fig.exists()
    rc, _, err = cli(capsys, "plot", str(small_results), "--out", str(fig), "--dpi", "50")
    assert rc == 0 and fig.is_file(), err


# -- per-run files that are not regular files ------------------------------------------------------
def _copy_results(src: Path, dst: Path) -> tuple[Path, str]:
    import shutil

    shutil.copytree(src, dst)
    (run_id,) = [p.name for p in (dst / "runs").iterdir()]
    return dst, run_id


@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "huge"])
def test_per_run_file_that_is_not_a_small_regular_file_is_skipped(small_results, tmp_path, capsys, kind):
    out, run_id = _copy_results(small_results, tmp_path / "D")
    for name in ("run.json", "history.parquet"):
        target = out / "runs" / run_id / name
        target.unlink()
        if kind == "dev-zero":
            target.symlink_to("/dev/zero")
        elif kind == "fifo":
            os.mkfifo(target)
        else:
            cap = results.MAX_RECORD_BYTES if name == "run.json" else results.MAX_HISTORY_BYTES
            with open(target, "wb") as fh:
                fh.truncate(cap + 1)  # sparse: takes no disk
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert results.completed_run_ids(out) == set()  # returns: no read of /dev/zero or the pipe
        assert any(str(target) in str(w.message) for w in caught), [str(w.message) for w in caught]
        rc, _, err = cli(capsys, "collect", str(out))
        assert rc == 0 and str(target) in err and "Traceback" not in err
        _copy_results(small_results, tmp_path / name)  # restore for the next file
        out = tmp_path / name


# -- damaged and foreign per-run files -------------------------------------------------------------
@pytest.fixture(scope="module")
def three_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("three")
    (root / "s.toml").write_text(SWEEP)
    assert main(["sweep", str(root / "s.toml"), "--out", str(root / "D"), "--quiet"]) == 0
    return root


def _fresh(three_runs: Path, tmp_path: Path) -> tuple[Path, list[str], pd.DataFrame]:
    import shutil

    out = tmp_path / "D"
    shutil.copytree(three_runs / "D", out)
    ids = sorted(p.name for p in (out / "runs").iterdir())
    return out, ids, pd.read_parquet(out / "results.parquet")


RECORD_DAMAGE = {
    "workers 1e400": lambda r: r["config"].update(workers="__1e400__"),
    "workers abc": lambda r: r["config"].update(workers="abc"),
    "workers a list": lambda r: r["config"].update(workers=[2]),
    "seed a dict": lambda r: r["config"].update(seed={"a": 1}),
    "params a list": lambda r: r["config"].update(params=[1]),
    "deeply nested": lambda r: r.update(extra="__deep__"),
}


@pytest.mark.parametrize("case", list(RECORD_DAMAGE))
def test_damaged_record_skips_its_run_and_is_redone(three_runs, tmp_path, capsys, case):
    out, ids, want = _fresh(three_runs, tmp_path)
    path = out / "runs" / ids[1] / "run.json"
    record = json.loads(path.read_text())
    RECORD_DAMAGE[case](record)
    text = json.dumps(record).replace('"__1e400__"', "1e400")
    text = text.replace('"__deep__"', "[" * 100_000 + "]" * 100_000)
    path.write_text(text)
    rc, _, err = cli(capsys, "collect", str(out))
    assert rc == 0 and str(path) in err and "Traceback" not in err
    assert sorted(set(pd.read_parquet(out / "results.parquet")["run_id"])) == [ids[0], ids[2]]
    rc, _, err = cli(capsys, "plot", str(out), "--out", str(tmp_path / "f.png"))
    assert rc == 0 and (tmp_path / "f.png").is_file(), err
    rc, _, err = cli(capsys, "sweep", str(three_runs / "s.toml"), "--out", str(out), "--quiet")
    assert rc == 0 and str(path) in err, err
    pd.testing.assert_frame_equal(_non_time(results.load_results(out)), _non_time(want))


def test_history_with_strings_in_a_float_column_is_skipped(three_runs, tmp_path, capsys):
    out, ids, want = _fresh(three_runs, tmp_path)
    path = out / "runs" / ids[0] / "history.parquet"
    frame = pd.read_parquet(path)
    frame["grad_norm_sq"] = frame["grad_norm_sq"].astype(str)
    frame.to_parquet(path, index=False)
    rc, _, err = cli(capsys, "collect", str(out))
    assert rc == 0 and str(path) in err and "grad_norm_sq" in err and "Traceback" not in err
    assert sorted(set(pd.read_parquet(out / "results.parquet")["run_id"])) == ids[1:]
    rc, _, err = cli(capsys, "sweep", str(three_runs / "s.toml"), "--out", str(out), "--quiet")
    assert rc == 0 and str(path) in err, err
    pd.testing.assert_frame_equal(_non_time(results.load_results(out)), _non_time(want))


def test_history_of_another_run_is_not_merged(three_runs, tmp_path, capsys):
    """runs/A/history.parquet replaced by run B's: A is reported and redone, B appears once."""
    out, ids, want = _fresh(three_runs, tmp_path)
    a, b = out / "runs" / ids[0], out / "runs" / ids[1]
    (a / "history.parquet").write_bytes((b / "history.parquet").read_bytes())
    rc, _, err = cli(capsys, "collect", str(out))
    assert rc == 0 and str(a / "history.parquet") in err and f"run_id {ids[1]!r}" in err
    df = pd.read_parquet(out / "results.parquet")
    assert df.groupby("run_id").size().to_dict() == {ids[1]: 4, ids[2]: 4}
    rc, _, err = cli(capsys, "sweep", str(three_runs / "s.toml"), "--out", str(out), "--quiet")
    assert rc == 0, err
    pd.testing.assert_frame_equal(_non_time(results.load_results(out)), _non_time(want))


def test_run_folder_symlinked_outside_out_is_refused(three_runs, tmp_path, capsys):
    """runs/<id> a link to a folder elsewhere (its run cut short): collect reports it and reads
    on; sweep and run refuse to write through it, naming it."""
    out, ids, _ = _fresh(three_runs, tmp_path)
    seed0 = next(
        i for i in ids if json.loads((out / "runs" / i / "run.json").read_text())["config"]["seed"] == 0
    )
    outside = tmp_path / "outside"
    (out / "runs" / seed0).rename(outside)
    (out / "runs" / seed0).symlink_to(outside)
    record = json.loads((outside / "run.json").read_text())
    (outside / "run.json").write_text(json.dumps({**record, "status": "running"}))
    before = {p.name: p.stat().st_mtime_ns for p in outside.iterdir()}
    rc, _, err = cli(capsys, "collect", str(out))
    assert rc == 0 and str(out / "runs" / seed0) in err and "outside" in err
    assert sorted(set(pd.read_parquet(out / "results.parquet")["run_id"])) == sorted(set(ids) - {seed0})
    rc, _, err = cli(capsys, "sweep", str(three_runs / "s.toml"), "--out", str(out), "--quiet")
    line = one_line_error(err)
    assert rc == 2 and str(out / "runs" / seed0) in line and "outside" in line
    argv = "run --problem synthetic --workers 2 --iterations 30 --log-every 10 --compressor randk:1".split()
    rc, _, err = cli(capsys, *argv, "--out", str(out), "--quiet")
    assert rc == 2 and str(out / "runs" / seed0) in err.strip().splitlines()[-1] and "Traceback" not in err
    assert {p.name: p.stat().st_mtime_ns for p in outside.iterdir()} == before  # nothing written there


def test_runs_folder_linked_outside_out_is_refused(three_runs, tmp_path, capsys):
    out, ids, _ = _fresh(three_runs, tmp_path)
    (out / "runs").rename(tmp_path / "elsewhere")
    (out / "runs").symlink_to(tmp_path / "elsewhere")
    rc, _, err = cli(capsys, "collect", str(out))
    assert rc == 0 and err.count("leads outside") == 3 and "Traceback" not in err
    assert len(pd.read_parquet(out / "results.parquet")) == 0
    rc, _, err = cli(capsys, "sweep", str(three_runs / "s.toml"), "--out", str(out), "--quiet")
    assert rc == 2 and "leads outside" in one_line_error(err)
