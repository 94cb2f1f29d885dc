"""benchmarks/device_check.py: the command on a machine without CUDA, and its helpers against
hand-made inputs."""

from __future__ import annotations

import importlib.util
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from marina.compressors import wire
from marina.rng import Randomness

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "device_check.py"


@pytest.fixture(scope="module")
def dc():
    spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["device_check"] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules["device_check"]


def test_the_command_without_cuda_says_so_and_exits_0():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")  # a machine without CUDA, also on a GPU machine
    proc = subprocess.run(
        [sys.executable, "benchmarks/device_check.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("device_check: no CUDA device is present")
    summary = re.fullmatch(r"device_check: (\d+) passed, (\d+) failed, (\d+) skipped", lines[-1])
    assert summary, lines[-1]
    # the summary counts the check lines printed above it
    verdicts = [line.split()[0] for line in lines[1:-1] if not line.startswith((" ", "device_check:"))]
    assert [int(v) for v in summary.groups()] == [verdicts.count(v) for v in ("PASS", "FAIL", "SKIP")]
    # the CPU part ran: the wire path, the simulation repeated, round times at n = 5
    passed = [line.split(":")[0] for line in lines if line.startswith("PASS ")]
    assert passed == [
        "PASS wire cpu vs cpu",
        "PASS simulated cpu vs cpu",
        "PASS round-time a9a n=5",
        "PASS round-time w8a n=5",
    ]
    assert "SKIP optimizers ws=1: no CUDA device" in lines


# -- comparing two runs ----------------------------------------------------------------------------
def _run(dc, status="finished", x=(1.0, -2.0, 0.5), **columns):
    history = {
        "iteration": [0.0, 1.0, 2.0, 3.0],
        "bits_up": [3936.0, 3975.0, 4014.0, 4053.0],
        "bits_down": [0.0, 3936.0, 7872.0, 11808.0],
        "oracle_calls": [1628.0, 1628.0, 3256.0, 3256.0],
        "grad_norm_sq": [0.25, 0.125, 0.1, 0.0625],
        "loss": [0.693, 0.6, 0.55, 0.5],
    }
    for name, (row, value) in columns.items():
        history[name] = [value if i == row else v for i, v in enumerate(history[name])]
    return dc.Trajectory(status, history, list(x))


def test_identical_runs(dc):
    a = dc.compare(_run(dc), _run(dc))
    assert a.identical and a.counters_equal and a.worst == 0.0 and a.within(0.0)
    assert a.describe() == "bit-identical"
    nan = _run(dc, loss=(3, math.nan))  # a diverged run: NaN equals NaN
    assert dc.compare(nan, nan).identical


def test_one_ulp_of_a_metric(dc):
    up = math.nextafter(0.1, 1.0)
    a = dc.compare(_run(dc), _run(dc, grad_norm_sq=(2, up)))
    assert not a.identical and a.counters_equal
    assert a.first == "grad_norm_sq[2]"
    assert a.rel == {"grad_norm_sq": (up - 0.1) / up, "loss": 0.0, "x": 0.0}
    assert a.within(1e-15) and not a.within(0.0)
    assert "metrics only" in a.describe() and "grad_norm_sq[2]" in a.describe()


def test_first_difference_in_row_order(dc):
    a = dc.compare(_run(dc), _run(dc, grad_norm_sq=(3, 0.07), loss=(1, 0.61)))
    assert a.first == "loss[1]"
    assert a.rel["loss"] == pytest.approx(0.01 / 0.61) and a.rel["grad_norm_sq"] == pytest.approx(
        0.0075 / 0.07
    )
    b = dc.compare(_run(dc), _run(dc, grad_norm_sq=(1, 0.126), loss=(1, 0.61)))
    assert b.first == "grad_norm_sq[1]"  # same row: the columns in history order


def test_iterates_only(dc):
    a = dc.compare(_run(dc), _run(dc, x=(1.0, -2.0 + 1e-12, 0.5)))
    assert a.first == "x" and a.counters_equal
    assert a.rel["x"] == pytest.approx(1e-12 / 2.0, rel=1e-3)  # max |diff| over max |x|
    assert "iterates too" in a.describe()


def test_counters_and_status(dc):
    a = dc.compare(_run(dc), _run(dc, bits_up=(1, 3976.0)))
    assert not a.counters_equal and not a.within(math.inf) and a.first == "bits_up[1]"
    assert a.describe() == "counters differ (first at bits_up[1])"
    short = _run(dc)
    short.history["iteration"].pop()
    assert not dc.compare(_run(dc), short).counters_equal
    s = dc.compare(_run(dc), _run(dc, status="diverged"))
    assert (
        s.first == "status" and not s.within(math.inf) and s.describe() == "status finished against diverged"
    )


def test_relative_differences(dc):
    assert dc.rel_diff(2.0, 2.0) == 0.0 and dc.rel_diff(1.0, 1.5) == 0.5 / 1.5
    assert dc.rel_diff(math.nan, 1.0) == math.inf and dc.rel_diff(math.inf, math.inf) == 0.0
    assert dc.vector_rel_diff([1.0, 4.0], [1.0, 3.0]) == 0.25
    assert dc.vector_rel_diff([1.0], [1.0, 2.0]) == math.inf
    assert dc.vector_rel_diff([1.0, math.nan], [1.0, 0.0]) == math.inf


# -- the other helpers -----------------------------------------------------------------------------
def test_pytest_counts(dc):
    out = "....s.\n=========== 5 passed, 1 skipped, 12 deselected in 2.10s ===========\n"
    assert dc.pytest_counts(out) == {"passed": 5, "skipped": 1, "deselected": 12}
    assert dc.pytest_counts("FAILED tests/test_x.py::t\n1 failed, 2 passed, 3 errors in 1.0s") == {
        "failed": 1,
        "passed": 2,
        "error": 3,
    }
    assert dc.pytest_counts("no tests ran in 0.01s") == {}


def test_cuda_test_files(dc, tmp_path):
    # (the mark built from CUDA_MARK, so that this file is not one of those it finds)
    (tmp_path / "test_a.py").write_text(f"skipif(not {dc.CUDA_MARK}, reason='needs CUDA')\n")
    (tmp_path / "test_b.py").write_text("def test_b(): pass\n")
    (tmp_path / "helper.py").write_text(dc.CUDA_MARK + "\n")
    assert dc.cuda_test_files(tmp_path) == [tmp_path / "test_a.py"]
    names = {p.name for p in dc.cuda_test_files()}
    assert {"test_problems.py", "test_rng.py"} <= names  # test_cuda_problem_matches_cpu, test_cuda_draws_...
    assert "test_device_check.py" not in names


@pytest.mark.parametrize("shape", [(2, 5000), (1, 9001), (3, 17)])
def test_numpy_reference_packing_equals_pack_codes(dc, seed, shape):
    n, m = shape
    for w in (1, 3, 8, 13, 33, 56):
        codes = Randomness(seed, "test-wire", w, range(n)).bits(m) & ((1 << w) - 1)
        packed = dc.numpy_packed(codes, w)
        assert torch.equal(packed, wire.pack_codes(codes, w)), (w, seed)
        assert torch.equal(wire.unpack_codes(packed, m, w, torch.int64), codes)


def test_message_rows_have_zero_bits_after_the_last(dc):
    rows = dc.message_rows(7, 39)
    assert rows.shape == (7, 5) and rows.dtype == torch.uint8
    assert int(rows[:, -1].max()) < 2**7 and int(rows[:, -1].max()) > 0  # 39 = 4 bytes + 7 bits
    assert torch.equal(wire.split_bits(wire.concat_bits(rows, 39).reshape(1, -1), 7, 39), rows)


# -- launching ranks -------------------------------------------------------------------------------
def test_launch_returns_every_ranks_stdout(dc, tmp_path):
    code = "import os; print(os.environ['RANK'], os.environ['WORLD_SIZE'], os.environ['MASTER_ADDR'])"
    assert dc.launch([sys.executable, "-c", code], 2, 60, tmp_path) == ["0 2 127.0.0.1\n", "1 2 127.0.0.1\n"]


def test_launch_names_the_rank_that_failed_and_stops_the_others(dc, tmp_path, capsys):
    code = "import os, sys, time\nif os.environ['RANK'] == '1': sys.exit('no GPU for rank 1')\ntime.sleep(60)"
    with pytest.raises(dc.CheckFailed, match=r"^rank 1 exited with 1: no GPU for rank 1$"):
        dc.launch([sys.executable, "-c", code], 2, 60, tmp_path, grace_s=0.2)
    assert "no GPU for rank 1" in capsys.readouterr().err  # the rank's whole stderr


def test_launch_kills_ranks_past_the_limit(dc, tmp_path):
    with pytest.raises(dc.CheckFailed, match=r"rank\(s\) \[0, 1\] did not finish within 1 s"):
        dc.launch([sys.executable, "-c", "import time; time.sleep(60)"], 2, 1.0, tmp_path)
