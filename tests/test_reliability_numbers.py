"""Issue 25, 4: numbers out of range are refused naming the value and the constraint (links,
timeouts, Bernoulli's q, DASHA-PAGE's p), and the documented sweep keys are the code's."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

import marina
from marina import compressors, distributed
from marina.errors import ConfigError
from marina.experiments import grid
from marina.network.launch import MAX_TIMEOUT_S
from marina.network.link import MAX_LATENCY_S, MAX_RATE_BPS, MIN_RATE_BPS, parse_link
from test_reliability import cli, one_line_error, sweep_cli

EXPERIMENTS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "experiments.md"
RUN = ["run", "--problem", "synthetic", "--workers", "2", "--iterations", "3"]


@pytest.mark.parametrize(
    "spec, why",
    [
        ("1e400mbit", "rate inf bit/s, must be in [1, 1e+15] bit/s"),
        ("1e-320bit", "rate 9.99989e-321 bit/s, must be in [1, 1e+15] bit/s"),
        ("0.5bit", "rate 0.5 bit/s, must be in [1, 1e+15] bit/s"),
        ("10mbit:1e400s", "latency inf s, must be in [0, 3600] s"),
        ("10mbit:2h", "latency '2h'"),
    ],
)
def test_link_out_of_range(tmp_path, capsys, spec, why):
    with pytest.raises(ConfigError, match=re.escape(f"link == {spec!r}: {why}")):
        parse_link(spec)
    rc, _, err = cli(capsys, *RUN, "--link", spec)
    assert rc == 2 and why in one_line_error(err)
    rc, _, err = sweep_cli(capsys, tmp_path, f'methods = "gd"\ncompressors = "identity"\nlinks = "{spec}"\n')
    assert rc == 2 and why in one_line_error(err)


def test_link_bounds_give_finite_times():
    """At the bounds the modelled time of the largest all-gather stays finite and positive."""
    slowest = parse_link(f"{MIN_RATE_BPS:g}bit:{MAX_LATENCY_S:g}s")
    fastest = parse_link(f"{MAX_RATE_BPS:g}bit")
    for link in (slowest, fastest):
        t = link.aggregation_s(1024, 2**40, size_slots=1024)
        assert math.isfinite(t) and t > 0


@pytest.mark.parametrize("value", ["inf", "1e30", "nan", "-1", "0"])
def test_timeout_out_of_range(capsys, value):
    why = f"timeout == {float(value)!r}, must be a number of seconds in (0, {MAX_TIMEOUT_S:g}]"
    with pytest.raises(ConfigError, match=re.escape(why)):
        distributed.init("cpu", timeout_s=float(value), environ={})
    rc, _, err = cli(capsys, *RUN, "--backend", "torch-distributed", "--timeout", value)
    assert rc == 2 and why in one_line_error(err)


def test_bernoulli_subnormal_q_names_q(capsys):
    with pytest.raises(ConfigError, match=r"bernoulli: q == 1e-320, must be at least 2\.22507e-308"):
        compressors.get("bernoulli:1e-320")
    rc, _, err = cli(capsys, *RUN, "--compressor", "bernoulli:1e-320")
    assert rc == 2 and "q == 1e-320" in one_line_error(err) and "omega" in err
    assert compressors.get("bernoulli:1e-300").omega(10) == pytest.approx(1e300)


def test_a_theory_stepsize_that_underflows_is_refused(capsys):
    """bernoulli:1e-300 has omega = 1e300: MARINA's theory stepsize 1/(L (1 + sqrt((1-p) omega/(p n))))
    underflows to 0 and the run would never move; it is refused naming omega, and a given stepsize
    (or a compressor of smaller variance) runs."""
    with pytest.raises(ConfigError, match=r"theory stepsize is 0\.0 with omega == 1e\+300, must be > 0"):
        marina.run(
            problem="synthetic", workers=2, method="marina", compressor="bernoulli:1e-300", iterations=2
        )
    rc, _, err = cli(capsys, *RUN, "--compressor", "bernoulli:1e-300")
    assert rc == 2 and "theory stepsize is 0.0" in one_line_error(err)
    res = marina.run(
        problem="synthetic",
        workers=2,
        method="marina",
        compressor="bernoulli:1e-300",
        iterations=2,
        stepsize=0.01,
    )
    assert res.params["stepsize"] == 0.01 and res.params["stepsize_theory"] == 0.0


def test_dasha_page_p_bits_refused_clearly(tmp_path, capsys):
    rc, _, err = cli(capsys, *RUN, "--method", "dasha-page", "--p", "bits")
    line = one_line_error(err)
    assert rc == 2 and "p == 'bits'" in line and "must be a number in (0, 1]" in line
    rc, _, err = sweep_cli(capsys, tmp_path, 'methods = "dasha-page"\ncompressors = "randk:1"\np = "bits"\n')
    assert rc == 2 and "p == 'bits'" in one_line_error(err)
    with pytest.raises(ConfigError, match="p == 'bits'"):
        marina.run(method="dasha-page", problem="synthetic", workers=2, iterations=1, p="bits")
    rc, _, err = cli(capsys, *RUN, "--method", "dasha-page", "--p", "0.5")
    assert rc == 0, err


def test_documented_sweep_keys_are_the_codes():
    """Every key the sweep-file table of docs/experiments.md lists is one the parser accepts, and
    every key the parser accepts is listed."""
    text = EXPERIMENTS_PAGE.read_text(encoding="utf-8")
    head = text.index("| key | values |")
    table = text[head : text.index("\n\n", head)]
    listed = set(re.findall(r"`([a-z_]+)`", table))
    accepted = {*grid.GRID_KEYS, *grid.TOP_ONLY_KEYS}
    assert listed - accepted == set()
    assert accepted - listed == set()
