"""marina.reductions adds in one fixed pairwise order (checked against a plain-Python tree), the
same bits whatever ATen's kernels (emulated), and spectral.snap_up rounds up to 32 bits."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from marina.problems.spectral import SNAP_BITS, snap_up
from marina.reductions import fixed_dot, fixed_mean, fixed_sum


def python_tree(values: list[float]) -> float:
    """The documented order, written independently: pad to 2^k with zeros, add halves."""
    if not values:
        return 0.0
    size = 1
    while size < len(values):
        size *= 2
    buf = values + [0.0] * (size - len(values))
    while len(buf) > 1:
        half = len(buf) // 2
        buf = [buf[i] + buf[i + half] for i in range(half)]
    return buf[0]


@pytest.mark.parametrize("n", [0, 1, 2, 3, 5, 8, 123, 1000, 4097])
def test_fixed_sum_is_the_pairwise_tree_bit_for_bit(n, seed):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, dtype=torch.float64, generator=g) * torch.exp(
        4 * torch.randn(n, dtype=torch.float64, generator=g)
    )
    assert float(fixed_sum(v)) == python_tree(v.tolist())
    X = v[: (n // 3) * 3].reshape(-1, 3)
    if X.shape[0]:
        cols = [python_tree(X[:, j].tolist()) for j in range(3)]
        assert fixed_sum(X).tolist() == cols
        assert fixed_mean(X).tolist() == [c / X.shape[0] for c in cols]


def test_fixed_dot_error_bound_and_exact_integers(seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(1000, dtype=torch.float64, generator=g)
    exact = math.fsum((a * a).tolist())
    # pairwise summation: |error| <= ceil(log2 n) eps sum|x_i| (Higham, Accuracy and Stability, 4.2)
    assert abs(float(fixed_dot(a, a)) - exact) <= 10 * 2.0**-53 * exact
    ints = torch.arange(1, 1001, dtype=torch.float64)
    assert float(fixed_dot(ints, ints)) == 1000 * 1001 * 2001 / 6  # sum of squares, all partial sums exact


def test_fixed_reductions_do_not_depend_on_atens_kernels():
    """The same bits with ATen's scalar kernels (a CPU without AVX2) as here."""
    script = (
        "import torch; from marina.reductions import fixed_dot, fixed_mean;"
        "g = torch.Generator().manual_seed(7); a = torch.randn(100003, dtype=torch.float64, generator=g);"
        "X = torch.randn(7, 1001, dtype=torch.float64, generator=g);"
        "print(float(fixed_dot(a, a)).hex(), float(fixed_dot(fixed_mean(X), fixed_mean(X))).hex())"
    )
    outs = {}
    for cap in ("default", None):
        env = dict(os.environ)
        env.pop("ATEN_CPU_CAPABILITY", None)
        if cap:
            env["ATEN_CPU_CAPABILITY"] = cap
        run = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
        )
        assert run.returncode == 0, run.stderr
        outs[cap] = run.stdout
    assert outs["default"] == outs[None]


def test_snap_up_by_hand():
    assert snap_up(1.0) == 1.0 and snap_up(0.0) == 0.0 and snap_up(np.inf) == np.inf
    assert snap_up(1.0 + 2.0**-52) == 1.0 + 2.0 ** -(SNAP_BITS - 1)  # the grid of [1, 2): 2^-31
    assert snap_up(3.0 * 2.0**-40 + 2.0**-80) == 3.0 * 2.0**-40 + 2.0 ** -(40 + SNAP_BITS - 2)
    assert math.isnan(float(snap_up(np.nan)))


def test_snap_up_rounds_up_to_32_significant_bits(seed):
    rng = np.random.default_rng(seed)
    v = np.exp(rng.uniform(-50, 50, size=1000))
    s = snap_up(v)
    assert (s >= v).all() and (s - v <= v * 2.0 ** (1 - SNAP_BITS)).all()
    mantissa, _ = np.frexp(s)
    assert (np.ldexp(mantissa, SNAP_BITS) == np.floor(np.ldexp(mantissa, SNAP_BITS))).all()
    assert (snap_up(s) == s).all()  # idempotent
