"""``marina datasets``: the bundled LibSVM data sets, and how a split divides one among workers.

marina datasets                                  # table of every bundled data set
marina datasets a9a ./my.svm.bz2                 # the same columns for chosen names / files
marina datasets a9a --workers 10 --split dirichlet --alpha 0.1   # per-worker split report
"""

from __future__ import annotations

import argparse
import json
import os
from typing import TYPE_CHECKING

from marina.cli import COMMANDS, choices, load_module
from marina.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "datasets",
        help=COMMANDS["datasets"],
        description="Without --workers: one line per data set (bundled ones by default) with rows, "
        "features, label counts, density and file bytes. With --workers: rows and label balance "
        "of every worker under the chosen split (one data set).",
    )
    p.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"bundled names ({', '.join(choices.BUNDLED_DATA)}) or LibSVM file paths; default all bundled",
    )
    p.add_argument("--workers", type=int, default=None, help="report how the rows split among N workers")
    p.add_argument(
        "--split", default="contiguous", choices=list(choices.SPLIT_KINDS), help="default contiguous"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of random splits (default 0)")
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration (default 0.5)")
    p.add_argument(
        "--unbalanced",
        action="store_true",
        help="dirichlet: per-label Dirichlet cuts (unequal shard sizes) instead of equal shards",
    )
    p.add_argument("--drop-remainder", action="store_true", help="drop the N mod n extra rows")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=main)


def summary(names: list[str]) -> pd.DataFrame:
    """One row per data set: name, rows, features, labels (file values: count), density (the
    fraction of non-zero entries), bytes."""
    import pandas as pd

    data = load_module("data")

    rows = []
    for name in names:
        ds = data.load(name)
        counts = ", ".join(f"{value:g}:{count}" for value, count in ds.label_counts.items())
        rows.append(
            {
                "name": ds.name,
                "rows": ds.n_rows,
                "features": ds.n_features,
                "labels": counts,
                "density": float(ds.density),
                "bytes": os.path.getsize(ds.path),
            }
        )
    return pd.DataFrame(rows)


def main(args: argparse.Namespace) -> int:
    data = load_module("data")
    splits_module = load_module("data.splits")
    make_split, split_report = splits_module.make_split, splits_module.split_report

    names = args.names or data.bundled_names()
    if args.workers is None:
        table = summary(names)
        if args.json:
            print(json.dumps(table.to_dict(orient="records")))
            return 0
        table["density"] = [f"{100 * v:.2f}%" for v in table["density"]]
        print(table.to_string(index=False))
        if not args.names:
            print(f"\n(files in {data.bundled_dir()}; bytes are of the stored .gz files; see SOURCES.md)")
        return 0
    if len(names) != 1:
        raise ConfigError(f"--workers reports one data set at a time, got {len(names)}: {' '.join(names)}")
    ds = data.load(names[0])
    split = make_split(
        ds.y,
        args.workers,
        args.split,
        seed=args.seed,
        alpha=args.alpha,
        balanced=not args.unbalanced,
        drop_remainder=args.drop_remainder,
    )
    table = split_report(split, ds.y)
    if args.json:
        head = {"name": ds.name, "rows": ds.n_rows, "kept": int(split.order.size), "split": args.split}
        head.update(workers=args.workers, shards=json.loads(table.to_json(orient="records")))
        print(json.dumps(head))
        return 0
    print(f"{ds.name}: {ds.n_rows} rows, {split.order.size} kept, {args.split} split among {args.workers}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0
