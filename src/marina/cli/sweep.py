"""``marina sweep CONFIG.toml --out DIR``: run a grid of experiments, resumably."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from marina.cli import COMMANDS, EXIT_DIVERGED, EXIT_FAILED, choices, load_module
from marina.errors import ConfigError
from marina.progress import terminal_enabled


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help=COMMANDS["sweep"],
        description="Run every configuration of the grid declared in CONFIG (problems x methods x "
        "compressors x parameters x seeds; schema in docs/experiments.md, section Grids, and in "
        "examples/*.toml) and write results.parquet and runs.json into DIR. Started again with "
        "the same command, a sweep runs only the configurations DIR does not hold yet; runs "
        "cut short resume from their checkpoints. Every value is checked before any run starts.",
    )
    p.add_argument("config", help="sweep file (TOML)")
    p.add_argument("--out", required=True, help="results directory (created if missing)")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs in parallel, each in its own process (0: one per CPU core; default 1)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        metavar="N",
        help="checkpoint each run every N rounds (0: never; default: the file's checkpoint_every, "
        f"else {choices.CHECKPOINT_EVERY})",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: the file's, else cpu)")
    p.add_argument(
        "--dry-run", action="store_true", help="list the runs and whether DIR holds them; run nothing"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per run (default: the CPU cores divided among the jobs; 1 suits small problems)",
    )
    p.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="run only shard I of N (1-based; e.g. $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT): every "
        "N-th configuration in run-id order; shards may run at once into one DIR",
    )
    p.add_argument(
        "--log",
        default=None,
        metavar="TRACKERS",
        help="also log every run to trackers: tensorboard, mlflow, wandb, comma-separated (files under DIR)",
    )
    p.add_argument("--json", action="store_true", help="with --dry-run: print one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress and no summary on stderr")
    p.set_defaults(func=main)


def _dry_run(args, name: str, configs, done: set[str], out: Path, shard) -> int:
    missing = sum(c.run_id not in done for c in configs)
    if args.json:
        runs = [
            {
                "run_id": c.run_id,
                "status": "done" if c.run_id in done else "missing",
                "description": c.describe(),
                "config": c.to_dict(),
            }
            for c in configs
        ]
        summary = {"sweep": name, "dir": str(out), "shard": list(shard) if shard else None}
        summary.update(total=len(configs), done=len(configs) - missing, missing=missing, runs=runs)
        print(json.dumps(summary))
        return 0
    for c in configs:
        state = "done   " if c.run_id in done else "missing"
        print(f"{c.run_id}  {state}  {c.describe()}  iterations={c.iterations}")
    print(f"{len(configs)} runs, {len(configs) - missing} done, {missing} missing in {out}")
    return 0


def main(args: argparse.Namespace) -> int:
    if terminal_enabled(sys.stderr, args.quiet or args.json):  # on screen at once, before torch loads
        print(f"marina sweep: reading {args.config} ...", file=sys.stderr, flush=True)
    experiments, trackers = load_module("experiments"), load_module("trackers")
    results = load_module("experiments").results

    if args.jobs < 0:
        raise ConfigError(f"--jobs {args.jobs}, must be >= 0 (0: one per CPU core)")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads {args.threads}, must be >= 1")
    if args.checkpoint_every is not None and args.checkpoint_every < 0:
        raise ConfigError(f"--checkpoint-every {args.checkpoint_every}, must be >= 0 (0: never)")
    if args.json and not args.dry_run:
        raise ConfigError("--json is for --dry-run (a sweep's results are DIR/runs.json)")
    shard = experiments.parse_shard(args.shard) if args.shard is not None else None
    loggers = trackers.names(args.log, option="--log") if args.log else None
    spec = experiments.load_sweep(args.config)
    device = args.device or spec.device or "cpu"
    configs = experiments.validate(experiments.expand(spec), device=device)
    if shard is not None:
        configs = experiments.shard(configs, *shard)
    checkpoint_every = args.checkpoint_every
    if checkpoint_every is None:
        checkpoint_every = (
            spec.checkpoint_every
            if spec.checkpoint_every is not None
            else experiments.DEFAULT_CHECKPOINT_EVERY
        )
    out = Path(args.out)
    for config in configs:  # a run's folder that is a link: refused before anything is read
        results.run_dir(out, config.run_id)
    done = results.completed_run_ids(out) if out.is_dir() else set()
    name = spec.name or Path(args.config).stem
    if shard is not None:
        name += f" shard {shard[0]}/{shard[1]}"
    if args.dry_run:
        return _dry_run(args, name, configs, done, out, shard)
    jobs = args.jobs or os.cpu_count() or 1
    missing = sum(c.run_id not in done for c in configs)
    if not args.quiet:
        print(
            f"sweep {name}: {len(configs)} runs, {len(configs) - missing} already in {out}, "
            f"{missing} to run ({min(jobs, max(1, missing))} at a time)",
            file=sys.stderr,
        )
    summary = experiments.run_sweep(
        configs,
        out,
        jobs=jobs,
        checkpoint_every=checkpoint_every or None,
        quiet=args.quiet,
        threads=args.threads,
        loggers=loggers,
    )
    parts = [f"{summary.complete} of {summary.total} runs complete"]
    if summary.diverged:
        parts.append(f"{len(summary.diverged)} diverged")
    if summary.failed:
        parts.append(f"{len(summary.failed)} failed (errors in {out / results.RUNS_FILE})")
    print(f"{', '.join(parts)}; results: {out / results.RESULTS_FILE}, runs: {out / results.RUNS_FILE}")
    by_id = {c.run_id: c for c in configs}
    for run_id, message in summary.failed.items():
        print(f"failed: {run_id} {by_id[run_id].describe()}: {message}", file=sys.stderr)
    for run_id in summary.diverged:
        print(f"diverged: {run_id} {by_id[run_id].describe()}", file=sys.stderr)
    if summary.failed:
        return EXIT_FAILED
    return EXIT_DIVERGED if summary.diverged else 0
