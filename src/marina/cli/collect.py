"""``marina collect DIR``: rebuild the combined files of a results directory from its runs."""

from __future__ import annotations

import argparse
import json
from collections import Counter

from marina.cli import COMMANDS, load_module


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "collect",
        help=COMMANDS["collect"],
        description="Rebuild DIR/results.parquet (every completed run's history) and DIR/runs.json "
        "(every run's record) from the per-run files DIR/runs/<id>/, e.g. after the shards of a "
        "sweep (marina sweep --shard I/N) have ended, or after a kill. Safe while runs are in flight.",
    )
    p.add_argument("dir", metavar="DIR", help="results directory")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    results = load_module("experiments").results

    df, records = results.collect(args.dir)
    statuses = dict(sorted(Counter(str(r.get("status")) for r in records).items()))
    if args.json:
        print(json.dumps({"dir": args.dir, "runs": len(records), "rows": len(df), "statuses": statuses}))
    else:
        counts = ", ".join(f"{n} {s}" for s, n in statuses.items()) or "no runs"
        print(f"{args.dir}: {len(records)} runs ({counts}), {len(df)} rows in {results.RESULTS_FILE}")
    return 0
