"""Every method's history equals the one recorded in tests/data/golden_histories.json, bit for bit:
simulated (all cases) and on 3 gloo processes (seed 0). See tests/golden.py."""

from __future__ import annotations

import json
import sys

import pytest

import golden
from marina import problems
from marina.testing import local_launch

RECORDED = golden.load()
CASES = golden.cases()


@pytest.fixture(scope="module")
def built():
    return {name: problems.libsvm(name, workers=golden.WORKERS) for name in golden.DATASETS}


def test_every_case_is_recorded():
    assert sorted(RECORDED) == sorted(c["key"] for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=[c["key"] for c in CASES])
def test_simulated_history_equals_recording(case, built):
    got = golden.compute(case, problem=built[case["problem"]])
    assert golden.differences(RECORDED[case["key"]], got) == []


@pytest.mark.slow
def test_three_gloo_processes_equal_recording(tmp_path):
    out = tmp_path / "golden.json"
    procs = local_launch([sys.executable, golden.__file__, "--distributed", str(out)], 3)
    codes = [p.wait(timeout=600) for p in procs]
    assert codes == [0, 0, 0]
    got = json.loads(out.read_text())
    assert sorted(got) == sorted(c["key"] for c in CASES if c["seed"] == 0)
    for key, summary in got.items():
        assert golden.differences(RECORDED[key], summary) == [], key
