"""``marina compress``: the command-line round trip and the compressor list."""

from __future__ import annotations

import math
import re

import pytest
import torch

from marina.cli import main
from marina.compressors import get, known
from test_compressors_common import one_intra_op_thread  # noqa: F401 (autouse fixture)


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["compress", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_list_names_every_compressor(capsys):
    code, out, _ = _run(capsys, "--list")
    assert code == 0
    for template in known():
        assert template in out
    assert "correlated across workers" in out
    assert _run(capsys)[1] == out  # no SPEC lists too


def test_randk_report(capsys):
    code, out, _ = _run(capsys, "randk:5", "--dim", "1000", "--workers", "4", "--seed", "0")
    assert code == 0
    bits = 5 * (32 + 10)
    rows = re.findall(r"^\s+(\d+)\s+(\d+)\s+(\d+)\s+\S+\s+(\d+)\s+(\S+)$", out, flags=re.M)
    assert [int(r[0]) for r in rows] == [0, 1, 2, 3]
    assert all(int(r[1]) == bits and int(r[2]) == math.ceil(bits / 8) and int(r[3]) == 5 for r in rows)
    assert "omega(d) = d/K - 1 = 199" in out
    assert f"5 values x 32 bits + 5 indices x 10 bits = {bits} bits" in out
    # the relative errors printed are those of a RandK round trip: d/K |x_S|^2/|x|^2 - 1 >= -1
    assert all(float(r[4]) >= -1 for r in rows)


@pytest.mark.parametrize(
    "spec",
    [
        "qsgd:4",
        "natural",
        "natural-dithering:3",
        "bernoulli:0.5",
        "permk",
        "topk:3",
        "terngrad",
        "sign",
        "randk:5+natural",
        "randk:5+qsgd:2",
    ],
)
def test_every_compressor_runs(capsys, spec):
    code, out, _ = _run(capsys, spec, "-d", "64", "-n", "3", "--wire", "float64", "--dtype", "float32")
    assert code == 0
    c = get(spec, workers=3, value_dtype=torch.float64)
    assert c.wire_format(64) in out
    assert ("biased (contractive), alpha(d) = " in out) == (not c.unbiased)
    if not c.unbiased:
        assert f"alpha(d) = {c.alpha_formula} = {c.alpha(64):.6g}" in out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["qsgd:0"], "qsgd: s == 0, must be >= 1"),
        (["randk:20", "-d", "10"], "K == 20 exceeds the dimension d == 10"),
        (["randk:2", "-n", "0"], "--workers == 0, must be >= 1"),
        (["randk:2", "-d", "0"], "--dim == 0, must be >= 1"),
        (["nope"], "unknown compressor 'nope'; known: identity, randk:K"),
    ],
)
def test_errors_are_one_line(capsys, argv, message):
    code, _, err = _run(capsys, *argv)
    assert code == 2
    assert message in err and err.count("\n") == 1
