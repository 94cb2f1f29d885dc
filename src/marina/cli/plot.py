"""``marina plot DIR --x rounds --y grad_norm_sq -o FIG.png``: paper-style curves from results."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from marina.cli import COMMANDS, choices, load_module
from marina.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plot",
        help=COMMANDS["plot"],
        description="Draw y against x for every configuration in the results directories (one "
        "panel per problem, log-scale y, mean over seeds with a band, one legend naming method and "
        "compressor below the panels).",
    )
    p.add_argument("dirs", nargs="+", metavar="DIR", help="results directories (marina run / sweep --out)")
    p.add_argument(
        "--x",
        default="rounds",
        choices=list(choices.X_AXES),
        help="rounds (communication rounds), bits (#bits/n sent per worker), epochs (oracle calls / m) "
        "or time (seconds); default rounds",
    )
    p.add_argument(
        "--y",
        default="grad_norm_sq",
        help="a numeric history column: grad_norm_sq (default), loss, train_acc, ...",
    )
    p.add_argument(
        "-o",
        "--output",
        default=None,
        help="figure file: .png, .pdf or .svg (default DIR/Y-vs-X.png)",
    )
    p.add_argument("--problem", action="append", default=None, help="only this problem (repeatable)")
    p.add_argument("--method", action="append", default=None, help="only this method (repeatable)")
    p.add_argument("--compressor", action="append", default=None, help="only this compressor (repeatable)")
    p.add_argument("--yscale", default="auto", choices=["auto", "log", "linear"], help="default auto (log)")
    p.add_argument("--xscale", default="linear", choices=["linear", "log"], help="default linear")
    p.add_argument(
        "--band",
        default="minmax",
        choices=list(choices.BANDS),
        help="band over seeds: minmax (default), std (mean +- one standard deviation), ci95 "
        "(95%% confidence interval of the mean)",
    )
    p.add_argument(
        "--best",
        default=None,
        metavar="COLUMN",
        help="per curve, keep only the value of COLUMN (e.g. stepsize_multiplier) with the best "
        "final y: the lowest, the highest for an accuracy (diverged runs count as the worst) "
        "and say which was kept",
    )
    p.add_argument(
        "--color-by",
        default="auto",
        choices=list(choices.COLOR_BY),
        help="one color per method, or per compressor (and varying parameters), the other told apart by "
        "line style and marker; auto (default): by method when each method comes with one compressor, "
        "else by compressor",
    )
    p.add_argument("--title", default=None, help="figure title")
    p.add_argument("--dpi", type=int, default=150, help="resolution of PNG files (default 150)")
    p.set_defaults(func=main)


def load(dirs: list[str]) -> pd.DataFrame:
    """The results of every directory, concatenated (a run in several directories counts once)."""
    import pandas as pd

    results = load_module("experiments").results

    frames = [results.load_results(d) for d in dirs]
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if len(frames) > 1:
        df = df.drop_duplicates(subset=["run_id", "iteration"], keep="first", ignore_index=True)
    return df


def select(df: pd.DataFrame, column: str, wanted: list[str] | None) -> pd.DataFrame:
    if not wanted:
        return df
    have = sorted(df[column].dropna().unique().tolist())
    unknown = [w for w in wanted if w not in have]
    if unknown:
        raise ConfigError(f"--{column} {unknown[0]!r} is not in these results; available: {', '.join(have)}")
    return df[df[column].isin(wanted)]


def _value(v: object) -> str:
    return "theory" if v is None else f"{v:g}" if isinstance(v, float) else str(v)


def main(args: argparse.Namespace) -> int:
    plotting = load_module("plotting")

    df = load(args.dirs)
    for column in ("problem", "method", "compressor"):
        df = select(df, column, getattr(args, column))
    output = plotting.figure_path(args.output or Path(args.dirs[0]) / f"{args.y}-vs-{args.x}.png")
    if args.best:
        df, choices = plotting.best(df, args.best, args.y)
        for c in choices:
            tried = ", ".join(f"{_value(v)}: {f:.4g}" for v, f in c["tried"].items())
            print(
                f"{c['problem']}, {c['label']}: kept {args.best} = {_value(c['kept'])} "
                f"(final {args.y} {c['final']:.4g}; tried {tried})",
                file=sys.stderr,
            )
    fig = plotting.plot(
        df,
        args.x,
        args.y,
        yscale=args.yscale,
        xscale=args.xscale,
        title=args.title,
        band=args.band,
        color_by=args.color_by,
    )
    try:
        plotting.save(fig, output, dpi=args.dpi)
    except ConfigError as err:  # named as typed
        raise type(err)(f"--dpi {args.dpi}: {err}") from None
    print(output)
    return 0
