"""``marina demo``: the paper's headline comparison in about a minute.

MARINA and DIANA with RandK (K = 1, 5, 10) on the bundled a9a data set split among n = 5
workers, theory stepsizes, two seeds; then the paper-style figures ||grad f(x^k)||^2 against
communication rounds, against bits sent per worker (#bits/n) and against epochs. It is an
ordinary sweep into the output directory: running the demo again reuses the finished runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from marina.cli import COMMANDS, load_module
from marina.errors import ConfigError
from marina.progress import terminal_enabled

if TYPE_CHECKING:
    import pandas as pd

METHODS = ("marina", "diana")
COMPRESSORS = ("randk:1", "randk:5", "randk:10")
FIGURES = ("rounds", "bits", "epochs")
"""x axes of the demo's figures (||grad f||^2 on y): the paper's rounds and #bits/n, and epochs."""
DEFAULT_ITERATIONS = 2000
DEFAULT_SEEDS = 2


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help=COMMANDS["demo"],
        description="Run MARINA and DIANA with randk:1, randk:5 and randk:10 on the bundled a9a "
        "data set (n = 5 workers, theory stepsizes) and draw ||grad f||^2 against rounds, "
        "#bits/n and epochs. Results and figures go to --out.",
    )
    p.add_argument("--out", default="marina-demo", help="output directory (default ./marina-demo)")
    p.add_argument(
        "--iterations",
        type=int,
        default=DEFAULT_ITERATIONS,
        help=f"rounds per run (default {DEFAULT_ITERATIONS})",
    )
    p.add_argument(
        "--seeds", type=int, default=DEFAULT_SEEDS, help=f"seeds per configuration (default {DEFAULT_SEEDS})"
    )
    p.add_argument("--problem", default="a9a", help="data set (default a9a)")
    p.add_argument("--workers", type=int, default=5, help="number of workers n (default 5)")
    p.add_argument("--jobs", type=int, default=0, help="parallel runs (default 0: one per CPU core)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=main)


def summary_table(df: pd.DataFrame) -> str:
    """Final ||grad f||^2 (mean over seeds) and #bits/n spent, per method and compressor."""
    plotting = load_module("plotting")

    last = df.sort_values("iteration").groupby("run_id").tail(1)
    agg = last.groupby(["method", "compressor"], sort=False).agg(
        rounds=("iteration", "max"), grad_norm_sq=("grad_norm_sq", "mean"), bits_up=("bits_up", "mean")
    )
    order = sorted(
        agg.index,
        key=lambda mc: (
            METHODS.index(mc[0]) if mc[0] in METHODS else 9,
            int(mc[1].split(":")[1]) if ":" in mc[1] else 0,
        ),
    )
    lines = [f"{'method':<8}{'compressor':<11}{'rounds':>8}{'final |grad f|^2':>18}{'#bits/n':>12}"]
    for method, comp in order:
        r = agg.loc[(method, comp)]
        lines.append(
            f"{plotting.method_label(method):<8}{comp:<11}{int(r.rounds):>8}{r.grad_norm_sq:>18.3e}{r.bits_up:>12.3e}"
        )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    if terminal_enabled(sys.stderr, args.quiet):  # on screen at once, before torch and the data load
        print(f"marina demo: loading {args.problem} ...", file=sys.stderr, flush=True)
    experiments, plotting = load_module("experiments"), load_module("plotting")
    results = load_module("experiments").results

    if args.seeds < 1:
        raise ConfigError(f"--seeds {args.seeds}, must be >= 1")
    if args.jobs < 0:
        raise ConfigError(f"--jobs {args.jobs}, must be >= 0 (0: one per CPU core)")
    raws = [
        experiments.Raw(
            {
                "problems": args.problem,
                "workers": args.workers,
                "methods": method,
                "compressors": comp,
                "seeds": seed,
                "iterations": args.iterations,
            },
            "",
        )
        for method in METHODS
        for comp in COMPRESSORS
        for seed in range(args.seeds)
    ]
    names = {"problems": "--problem", "seeds": "--seeds"}
    cache = experiments.ProblemCache()
    configs = experiments.validate(raws, lambda k: names.get(k, f"--{k.replace('_', '-')}"), cache=cache)
    out = Path(args.out)
    jobs = args.jobs or os.cpu_count() or 1
    if not args.quiet:
        print(
            f"marina demo: MARINA vs DIANA with {', '.join(COMPRESSORS)} on {args.problem}, "
            f"n = {args.workers}, theory stepsizes, {args.iterations} rounds, {args.seeds} seed(s): "
            f"{len(configs)} runs",
            file=sys.stderr,
        )
    summary = experiments.run_sweep(configs, out, jobs=jobs, quiet=args.quiet, cache=cache)
    if summary.failed:
        raise ConfigError(f"{len(summary.failed)} demo run(s) failed; see {out / results.RUNS_FILE}")
    df = results.load_results(out)
    df = df[df.run_id.isin({c.run_id for c in configs})]
    paths = []
    for x in FIGURES:
        fig = plotting.plot(df, x, "grad_norm_sq")
        paths.append(plotting.save(fig, out / f"grad_norm_sq-vs-{x}.png"))
    print(summary_table(df))
    print()
    print(f"results: {out / results.RESULTS_FILE} (one row per logged round), {out / results.RUNS_FILE}")
    print("figures: " + "\n         ".join(str(p) for p in paths))
    print(f"replot:  marina plot {out} --x bits --y grad_norm_sq -o FIG.png")
    return 0
