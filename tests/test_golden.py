"""Every method's history equals the one recorded in tests/data/golden_histories.json: simulated
(all cases) and on 3 gloo processes (seed 0); bit for bit where ATen's kernels are vectorised,
and under other BLAS/LAPACK and ATen kernels too (emulated here). See tests/golden.py."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import golden
from marina import problems
from marina.methods.gd import GD
from marina.testing import local_launch

RECORDED = golden.load()
CASES = golden.cases()
RTOL = 0.0 if golden.exact_here() else golden.SCALAR_RTOL


@pytest.fixture(scope="module")
def built():
    return {name: problems.libsvm(name, workers=golden.WORKERS) for name in golden.DATASETS}


def test_every_case_is_recorded():
    assert sorted(RECORDED) == sorted(c["key"] for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=[c["key"] for c in CASES])
def test_simulated_history_equals_recording(case, built):
    got = golden.compute(case, problem=built[case["problem"]])
    assert golden.differences(RECORDED[case["key"]], got, RTOL) == []


@pytest.mark.skipif(not golden.exact_here(), reason="bit-for-bit comparison needs ATen's vectorised kernels")
def test_one_ulp_change_of_an_iterate_is_caught(built, monkeypatch):
    """x^20 moved by one ulp in one coordinate: the comparison must fail (it would pass a
    tolerance of a few ulps on the iterate, so this is what bit-for-bit comparison buys)."""
    case = next(c for c in CASES if c["key"] == "a9a/gd/identity/{}/seed=0")
    step = GD.step

    def nudged(self):
        step(self)
        if self.k == 20:
            x = self.state.x
            j = int(torch.argmax(x.abs()))  # a non-zero coordinate: its ulp is a real change
            x[j] = torch.nextafter(x[j], torch.tensor(math.inf, dtype=x.dtype))

    monkeypatch.setattr(GD, "step", nudged)
    diff = golden.differences(RECORDED[case["key"]], golden.compute(case, problem=built[case["problem"]]))
    assert any(d.startswith("x_sha256") for d in diff), diff


def test_differences_compare_counters_exactly_and_floats_to_rtol():
    rec = RECORDED[CASES[0]["key"]]
    near = json.loads(json.dumps(rec))
    near["history"]["loss"][3] *= 1 + 1e-15
    near["x"][0] = math.nextafter(near["x"][0], math.inf)
    near["x_sha256"] = "other"
    assert golden.differences(rec, near, 1e-12) == []
    assert {d.split("[")[0].split(":")[0] for d in golden.differences(rec, near)} == {"x_sha256", "x", "loss"}
    counted = json.loads(json.dumps(rec))
    counted["history"]["bits_up"][5] += 1e-9 * max(1.0, counted["history"]["bits_up"][5])
    assert [d.split("[")[0] for d in golden.differences(rec, counted, 1e-6)] == ["bits_up"]


# Kernels of other CPUs, chosen by the environment variables torch (ATen) and OpenBLAS (numpy,
# scipy: LAPACK behind the smoothness constants) read at start-up. Each needs the instructions
# its kernels use, so only those this CPU has are run. MKL (torch's BLAS) picks its kernel from
# the CPU's maker too, which cannot be emulated; no recorded value goes through it.
EMULATED = {
    "AVX2 CPU": ({"ATEN_CPU_CAPABILITY": "avx2", "OPENBLAS_CORETYPE": "Haswell"}, {"avx2", "fma"}),
    "first AMD Zen": ({"OPENBLAS_CORETYPE": "Zen"}, {"avx2", "fma"}),
    "no AVX2": ({"ATEN_CPU_CAPABILITY": "default", "OPENBLAS_CORETYPE": "Sandybridge"}, {"avx"}),
}


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EMULATED))
def test_recording_holds_under_other_cpus_kernels(name):
    env_vars, needs = EMULATED[name]
    if platform.machine() not in ("x86_64", "AMD64") or not needs <= _cpu_flags():
        pytest.skip(f"this CPU cannot run the kernels of '{name}' (needs {sorted(needs)})")
    env = dict(os.environ, **env_vars)
    out = subprocess.run(
        [sys.executable, golden.__file__, "--check", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    seed0 = sum(1 for c in CASES if c["seed"] == 0)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"golden: 0 of {seed0} cases differ" in out.stdout


@pytest.mark.slow
def test_three_gloo_processes_equal_recording(tmp_path):
    out = tmp_path / "golden.json"
    procs = local_launch([sys.executable, golden.__file__, "--distributed", str(out)], 3)
    codes = [p.wait(timeout=600) for p in procs]
    assert codes == [0, 0, 0]
    got = json.loads(out.read_text())
    assert sorted(got) == sorted(c["key"] for c in CASES if c["seed"] == 0)
    for key, summary in got.items():
        assert golden.differences(RECORDED[key], summary, RTOL) == [], key
