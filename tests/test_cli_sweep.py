"""`marina sweep` then `marina plot`, end to end on a tiny problem."""

from __future__ import annotations

import json

import matplotlib.image
import pandas as pd
import pytest

from marina import plotting
from marina.cli import main
from marina.cli.plot import load, select
from marina.experiments import results

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

SWEEP = """
name = "tiny"
problems = "synthetic"
workers = 3
iterations = 60
log_every = 5
seeds = [0, 1]
methods = ["marina", "diana"]
compressors = ["randk:1", "randk:3"]
"""


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    (root / "tiny.toml").write_text(SWEEP)
    out = root / "out"
    code = main(["sweep", str(root / "tiny.toml"), "--out", str(out), "--jobs", "2", "--quiet"])
    return root, out, code


def test_sweep_writes_every_run(swept, capsys):
    root, out, code = swept
    assert code == 0
    df = pd.read_parquet(out / "results.parquet")
    assert df.groupby(["method", "compressor", "seed"]).ngroups == 8
    assert df.groupby("run_id").size().eq(60 // 5 + 1).all()
    runs = json.loads((out / "runs.json").read_text())
    assert len(runs) == 8 and {r["status"] for r in runs} == {"finished"}
    assert {r["config"]["seed"] for r in runs} == {0, 1}
    # a second identical command finds everything done
    assert main(["sweep", str(root / "tiny.toml"), "--out", str(out), "--dry-run"]) == 0
    listing = capsys.readouterr().out
    assert listing.count(" done ") == 8 and "8 runs, 8 done, 0 missing" in listing
    assert main(["sweep", str(root / "tiny.toml"), "--out", str(out), "--quiet"]) == 0
    assert "8 of 8 runs complete" in capsys.readouterr().out


def test_plot_png_with_one_curve_per_configuration(swept, tmp_path, capsys):
    _, out, _ = swept
    fig_path = tmp_path / "fig.png"
    assert main(["plot", str(out), "--x", "bits", "--y", "grad_norm_sq", "-o", str(fig_path)]) == 0
    assert capsys.readouterr().out.strip() == str(fig_path)
    data = fig_path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert matplotlib.image.imread(fig_path).shape[2] in (3, 4)
    # the figure the command drew: one panel, 4 configurations (2 methods x 2 compressors), bands over 2 seeds
    fig = plotting.plot(results.load_results(out), "bits", "grad_norm_sq")
    (ax,) = [a for a in fig.axes if a.get_visible()]
    lines = [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]
    assert sorted(ln.get_label() for ln in lines) == [
        "DIANA, randk:1",
        "DIANA, randk:3",
        "MARINA, randk:1",
        "MARINA, randk:3",
    ]
    assert len(ax.collections) == 4 and ax.get_yscale() == "log"


@pytest.mark.parametrize(
    "x,y,suffix",
    [("rounds", "loss", ".svg"), ("epochs", "grad_norm_sq", ".pdf"), ("time", "grad_norm_sq", ".png")],
)
def test_plot_axes_and_formats(swept, tmp_path, x, y, suffix):
    _, out, _ = swept
    path = tmp_path / f"f{suffix}"
    assert main(["plot", str(out), "--x", x, "--y", y, "-o", str(path)]) == 0
    assert path.stat().st_size > 1000


def test_plot_filters_and_default_output(swept, capsys):
    _, out, _ = swept
    assert main(["plot", str(out), "--method", "marina", "--compressor", "randk:3"]) == 0
    assert (out / "grad_norm_sq-vs-rounds.png").read_bytes().startswith(PNG_SIGNATURE)
    df = select(select(load([str(out)]), "method", ["marina"]), "compressor", ["randk:3"])
    (curve,) = plotting.curves(df, "rounds", "grad_norm_sq")
    assert curve.label == "MARINA, randk:3" and curve.seeds == [0, 1]
