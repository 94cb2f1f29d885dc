"""Regenerate the figures in ``docs/`` (the README and the pages show them) with the current plotting.

Each figure comes from a sweep file of ``examples/`` (or the grid of ``marina demo``): the
script runs the sweep into ``--results/NAME`` (resumable: finished runs are kept, so a second
call only redraws), draws the figure with :func:`marina.plotting.plot` as ``marina plot`` does,
saves it into ``docs/`` and records in ``docs/figures.json`` how it was made and its style: the
panels (titles, axis labels, scales) and the legend entries (label, color, line style, marker).
``tests/test_docs_figures.py`` draws each figure again from stand-in histories of the same
configurations (:func:`stand_in_table`) and compares that style record, so a change of labels,
colors or order shows up as a stale figure without comparing pixels.

    python examples/make_docs_figures.py [--jobs N] [--results DIR] [--only demo-bits.png ...]

Runs every sweep in full (``figure1_vr`` and ``figure1`` take CPU hours; ``--only`` redraws a
few figures).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from marina import experiments, plotting
from marina.cli import demo
from marina.experiments import results

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MANIFEST = DOCS / "figures.json"
DEMO = "demo"
"""The source name of ``marina demo``'s grid (its figure against #bits/n)."""


@dataclass(frozen=True)
class DocFigure:
    """``docs/<name>``: ``y`` against ``x`` of the runs of ``source`` (a sweep file or :data:`DEMO`)."""

    name: str
    source: str
    x: str
    y: str = "grad_norm_sq"


FIGURES = (
    DocFigure("demo-bits.png", DEMO, "bits"),
    DocFigure("figure1-bits.png", "examples/figure1.toml", "bits"),
    DocFigure("figure1-rounds.png", "examples/figure1.toml", "rounds"),
    DocFigure("figure1_vr-bits.png", "examples/figure1_vr.toml", "bits"),
    DocFigure("figure1_vr-epochs.png", "examples/figure1_vr.toml", "epochs"),
    DocFigure("beyond-bits.png", "examples/beyond_docs.toml", "bits"),
    DocFigure("beyond-rounds.png", "examples/beyond_docs.toml", "rounds"),
)


def source_name(source: str) -> str:
    return DEMO if source == DEMO else Path(source).stem


def configurations(source: str) -> list[dict[str, Any]]:
    """The run configurations of ``source`` (unvalidated: problem, workers, method, compressor,
    seed, iterations, log_every and the parameter overrides)."""
    if source == DEMO:
        raws = [
            {"problems": "a9a", "workers": 5, "methods": m, "compressors": c, "seeds": s}
            for m in demo.METHODS
            for c in demo.COMPRESSORS
            for s in range(demo.DEFAULT_SEEDS)
        ]
        raws = [{**r, "iterations": demo.DEFAULT_ITERATIONS} for r in raws]
    else:
        raws = [raw.values for raw in experiments.expand(experiments.load_sweep(ROOT / source))]
    names = {"problems": "problem", "methods": "method", "compressors": "compressor", "seeds": "seed"}
    configs = []
    for raw in raws:
        config = {names.get(k, k): v for k, v in raw.items() if k in names or k in ("workers", "iterations")}
        config["log_every"] = raw.get("log_every", experiments.default_log_every(int(raw["iterations"])))
        config["params"] = {k: v for k, v in raw.items() if k in experiments.PARAM_KEYS}
        configs.append(config)
    return configs


def stand_in_table(configs: list[dict[str, Any]]) -> pd.DataFrame:
    """A results table with one short decreasing history per configuration: enough to draw the
    panels and legend of the real figure (the style does not depend on the values)."""
    frames = []
    for i, config in enumerate(configs):
        it = np.linspace(0, int(config["iterations"]), 5).round()
        h = pd.DataFrame({"iteration": it, "grad_norm_sq": (2.0 + i % 7) / (1.0 + it), "loss": 1 / (1 + it)})
        h = h.assign(bits_up=it * 32.0 * (1 + i % 3), bits_down=it * 64.0, oracle_calls=it * 10.0, time_s=it)
        record = {"run_id": f"stand-in-{i}", "config": {"split": "contiguous", **config}, "m": 100.0}
        frames.append(results.history_frame(record, h))
    return pd.concat(frames, ignore_index=True)


def style(fig: Figure) -> dict[str, Any]:
    """What a figure shows besides its data: panels (title, axis labels and scales) and the
    legend entries (label, color, line style, marker), in order."""
    panels = [
        {"title": ax.get_title(), "x": ax.get_xlabel(), "y": ax.get_ylabel(), "yscale": ax.get_yscale()}
        for ax in fig.axes
        if ax.get_visible()
    ]
    (legend,) = fig.legends
    entries = [
        [text.get_text(), to_hex(line.get_color()), line.get_linestyle(), str(line.get_marker())]
        for text, line in zip(legend.get_texts(), legend.legend_handles)
    ]
    return {"panels": panels, "legend": entries}


def draw(figure: DocFigure, df: pd.DataFrame) -> Figure:
    return plotting.plot(df, figure.x, figure.y)


def run_source(source: str, out: Path, jobs: int) -> None:
    """Run the sweep of ``source`` into ``out`` (finished runs are kept)."""
    if source == DEMO:
        cmd = ["demo", "--out", str(out), "--jobs", str(jobs), "--quiet"]
    else:
        cmd = ["sweep", str(ROOT / source), "--out", str(out), "--jobs", str(jobs), "--quiet"]
    subprocess.run([sys.executable, "-m", "marina", *cmd], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(ROOT / "results"), help="where the sweeps' results go")
    parser.add_argument("--jobs", type=int, default=0, help="parallel runs (0: one per CPU core)")
    parser.add_argument("--only", nargs="+", default=None, metavar="NAME", help="only these figures")
    args = parser.parse_args(argv)
    chosen = [f for f in FIGURES if args.only is None or f.name in args.only]
    manifest = json.loads(MANIFEST.read_text()) if MANIFEST.exists() else {}
    for source in dict.fromkeys(f.source for f in chosen):
        out = Path(args.results) / source_name(source)
        run_source(source, out, args.jobs)
        df = results.load_results(out)
        for figure in (f for f in chosen if f.source == source):
            fig = draw(figure, df)
            plotting.save(fig, DOCS / figure.name)
            manifest[figure.name] = {
                "source": figure.source,
                "x": figure.x,
                "y": figure.y,
                "style": style(fig),
            }
            print(DOCS / figure.name)
    MANIFEST.write_text(json.dumps(dict(sorted(manifest.items())), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
