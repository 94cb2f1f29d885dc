"""The link model (``link_time_s``): arithmetic against hand computation, runs, the CLI and plots."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

import marina
from marina import compressors, plotting, problems
from marina.cli import main
from marina.errors import ConfigError
from marina.experiments import results
from marina.network import SimulatedNetwork
from marina.network.link import DIRECT_MAX_BYTES, Link, parse_link

PROB = {"workers": 4, "dim": 40, "samples": 30, "seed": 3}
W, D = 4, 40


def test_specs_parse_to_rates_and_latencies():
    assert parse_link("100mbit") == Link(1e8, 0.0, "100mbit")
    assert parse_link("1gbit:50us") == Link(1e9, 50e-6, "1gbit:50us")
    assert parse_link(" 10MBit:2ms ") == Link(1e7, 2e-3, "10mbit:2ms")
    assert parse_link("2.5kbit:0.1s").rate_bps == 2500.0 and parse_link("2.5kbit:0.1s").latency_s == 0.1
    assert parse_link(None) is None
    for bad in ("100", "fast", "0mbit", "100mbps", "10mbit:2", "10mbit:-1ms"):
        with pytest.raises(ConfigError, match=f"link == {bad!r}"):
            parse_link(bad)


def test_frames_and_all_gathers_by_hand():
    assert [Link.frame_bytes(b) for b in (0, 5, 1448, 1449, 400_000)] == [
        0,
        5 + 66,
        1448 + 66,
        1449 + 2 * 66,
        400_000 + 277 * 66,  # ceil(400000 / 1448) = 277 segments
    ]
    link = Link(1e7, 1e-3)
    # 4 ranks, 400 kB each (d = 10^5 float32): 3 steps of (400000 + 277 66) bytes at 10 Mbit/s
    assert link.all_gather_s(4, 400_000) == pytest.approx(3 * ((400_000 + 277 * 66) * 8 / 1e7 + 1e-3))
    assert link.all_gather_s(1, 400_000) == 0.0 and link.all_gather_s(4, 0) == 0.0
    # a size exchange of 2 slots first: 16 bytes in one segment to each of 3 ranks, at once
    # (direct exchange: one latency), then the 5-byte payloads likewise
    both = link.aggregation_s(4, 5, size_slots=2)
    assert both == pytest.approx(3 * (16 + 66) * 8 / 1e7 + 1e-3 + 3 * (5 + 66) * 8 / 1e7 + 1e-3)
    # the largest chunk still sent directly, and the smallest sent by the ring (3 latencies)
    at = DIRECT_MAX_BYTES
    assert link.all_gather_s(4, at) == pytest.approx(3 * (at + 46 * 66) * 8 / 1e7 + 1e-3)
    assert link.all_gather_s(4, at + 1) == pytest.approx(3 * ((at + 1 + 46 * 66) * 8 / 1e7 + 1e-3))


def _per_round(history) -> list[float]:
    return history["link_time_s"].diff().dropna().tolist()


def test_gd_rounds_cost_one_dense_all_gather():
    res = marina.run(
        method="gd", problem=problems.synthetic(**PROB), iterations=6, log_every=1, link="1mbit:1ms"
    )
    dense = 3 * (D * 4 + 66) * 8 / 1e6 + 1e-3  # 160 bytes a message to W - 1 = 3 ranks, one latency
    assert _per_round(res.history) == pytest.approx([dense] * 6)
    assert res.config["link"] == "1mbit:1ms"


def test_marina_rounds_are_compressed_or_dense_and_bernoulli_adds_a_size_exchange():
    prob = problems.synthetic(**PROB)
    dense = 3 * (226 * 8 / 1e6)
    randk = 3 * ((math.ceil(3 * (32 + 6) / 8) + 66) * 8 / 1e6)  # 114 bits -> 15 bytes
    res = marina.run(
        method="marina", problem=prob, compressor="randk:3", iterations=40, log_every=1, link="1mbit"
    )
    steps = _per_round(res.history)
    assert all(t == pytest.approx(randk) or t == pytest.approx(dense) for t in steps)
    assert any(t == pytest.approx(randk) for t in steps)
    # seeded RandK: 12-byte messages, the same rounds
    res2 = marina.run(
        method="marina", problem=prob, compressor="randk:3:seeded", iterations=40, log_every=1, link="1mbit"
    )
    seeded = 3 * ((12 + 66) * 8 / 1e6)
    for a, b in zip(steps, _per_round(res2.history)):
        assert b == pytest.approx(seeded if a == pytest.approx(randk) else dense)
    # Bernoulli: 8-byte sizes first; the payload is the largest message (1 + 1280 bits -> 161 bytes
    # if any worker sends its values, else the 1-byte flag)
    size = 3 * (74 * 8 / 1e6)
    res3 = marina.run(method="marina", problem=prob, compressor="bernoulli:0.5", iterations=20, link="1mbit")
    for t in _per_round(res3.history):
        options = (size + 3 * (227 * 8 / 1e6), size + 3 * (67 * 8 / 1e6), dense)
        assert any(t == pytest.approx(o) for o in options), t


def test_several_messages_of_a_worker_share_its_link():
    net = SimulatedNetwork(W, seed=0, link="1mbit")
    X = torch.randn(W, D, dtype=torch.float64)
    net.aggregate(compressors.get("randk:3"), X, 0, multiplicity=torch.tensor([2, 0, 1, 0]))
    # worker 0 sends two 15-byte messages: every rank's chunk is padded to 30 bytes
    assert net.link_time_s == pytest.approx(3 * ((30 + 66) * 8 / 1e6))
    assert net.counters()["link_time_ns"] == round(1e9 * net.link_time_s)


def test_without_a_link_nothing_changes():
    res = marina.run(method="marina", problem=problems.synthetic(**PROB), compressor="randk:3", iterations=5)
    assert "link_time_s" not in res.history.columns and "link" not in res.config


def test_cli_link_column_and_plot(tmp_path):
    out = tmp_path / "out"
    args = ["run", "--problem", "synthetic", "--workers", "4", "--method", "gd", "--iterations", "4"]
    assert main([*args, "--log-every", "1", "--link", "1mbit:1ms", "--out", str(out), "--quiet"]) == 0
    df = results.load_results(out)
    assert df["link"].unique().tolist() == ["1mbit:1ms"]
    d = int(problems.synthetic(workers=4).dim)
    per_round = 3 * (4 * d + math.ceil(4 * d / 1448) * 66) * 8 / 1e6 + 1e-3  # a direct exchange
    assert df["link_time_s"].tolist() == pytest.approx([per_round * k for k in range(5)])
    assert plotting.x_values(df, "link_time").tolist() == df["link_time_s"].tolist()
    assert main(["plot", str(out), "--x", "link_time", "-o", str(tmp_path / "f.png")]) == 0
    assert main([*args, "--link", "fast", "--quiet"]) == 2


def test_plotting_link_time_needs_the_column():
    df = results.history_frame(
        {"run_id": "r", "config": {"problem": "p", "workers": 2, "method": "gd"}, "m": 1.0},
        pd.DataFrame({"iteration": [0, 1], "grad_norm_sq": [1.0, 0.5]}),
    )
    with pytest.raises(ConfigError, match="link_time_s"):
        plotting.x_values(df, "link_time")
