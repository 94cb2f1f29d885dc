"""``marina run``: one experiment, written into a results directory."""

from __future__ import annotations

import argparse
import math
import shutil
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from marina import parameters, trackers
from marina.cli import COMMANDS, EXIT_DIVERGED, EXIT_FAILED, choices, load_module
from marina.cli.syntax import cli_syntax
from marina.errors import ConfigError
from marina.progress import ProgressDisplay, terminal_enabled

if TYPE_CHECKING:
    from marina.experiments import ProblemCache, RunConfig

# How each configuration key is spelled on this command line (for error messages).
OPTION_NAMES = {
    "problems": "--problem",
    "workers": "--workers",
    "split": "--split",
    "methods": "--method",
    "compressors": "--compressor",
    "seeds": "--seed",
    "iterations": "--iterations",
    "log_every": "--log-every",
    "links": "--link",
    **{p.name: p.flag for p in parameters.PARAMETERS},
}


PROBLEM_HELP = (
    f"a bundled LibSVM data set ({', '.join(choices.BUNDLED_DATA)}), a LibSVM file path, "
    "fashion-mnist[:DIR] (small CNN), cifar100[:DIR] (ResNet-18; DIR holds the python-version "
    "archive), or synthetic (default a9a)"
)


def _simulated(args: argparse.Namespace, config: RunConfig, cache: ProblemCache) -> dict[str, Any]:
    """All workers in this process (:class:`marina.network.simulated.SimulatedNetwork`)."""
    experiments_module = load_module("experiments")
    execute, results = experiments_module.execute, experiments_module.results

    display = ProgressDisplay(enabled=False if args.quiet else None)
    loggers = trackers.names(args.log, option="--log") if args.log else None
    display.add(config.run_id, config.describe(), config.iterations)
    try:
        problem = cache.get(config.problem, config.workers, config.split, config.device)
        record, _ = execute(
            config,
            args.out,
            checkpoint_every=args.checkpoint_every or None,
            progress=display.callback(config.run_id),
            problem=problem,
            loggers=loggers,
        )
    finally:
        display.close()
    if args.out is not None:
        results.rebuild(args.out)
    return record


def _torch_distributed(
    args: argparse.Namespace, config: RunConfig, cache: ProblemCache
) -> dict[str, Any] | None:
    """This process is one rank of a torchrun job (:func:`marina.experiments.execute_distributed`)."""
    execute_distributed = load_module("experiments").execute_distributed

    return execute_distributed(
        config,
        args.out,
        checkpoint_every=args.checkpoint_every,
        timeout_s=args.timeout,
        quiet=args.quiet,
        verbose=getattr(args, "verbose", False),
    )


BACKENDS: dict[str, Callable[[argparse.Namespace, RunConfig, ProblemCache], dict[str, Any] | None]] = {
    "simulated": _simulated,
    "torch-distributed": _torch_distributed,
}
"""``--backend`` name -> function running one validated configuration and returning its record
(writing results into ``args.out`` when set, see :func:`marina.experiments.execute`)."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help=COMMANDS["run"],
        description="Run one method on one problem split among n workers and, with --out, write "
        "its history into a results directory (results.parquet, runs.json; see `marina plot`). "
        "Parameters left out take their theory defaults (`marina theory` shows them). Run "
        "again with the same options, a run that DIR already holds is not repeated (--force "
        "does), and one cut short resumes from its checkpoint.",
    )
    g = p.add_argument_group("experiment")
    g.add_argument("--problem", default="a9a", help=PROBLEM_HELP)
    g.add_argument("--workers", type=int, default=5, help="number of workers n (default 5)")
    g.add_argument(
        "--split",
        default="contiguous",
        help="how rows are divided: contiguous (default), shuffled, dirichlet",
    )
    g.add_argument(
        "--method",
        default="marina",
        help="gd, qgd, diana, vr-diana, marina (default), vr-marina, pp-marina, ef21, ef21-pp, "
        "ef21-sgd, ef21-sgdm, dasha, dasha-page, dasha-mvr",
    )
    g.add_argument(
        "--compressor", default="randk:1", help="compressor spec, e.g. randk:5, identity (default randk:1)"
    )
    g.add_argument("--iterations", type=int, default=1000, help="communication rounds (default 1000)")
    g.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    g.add_argument(
        "--link",
        default=None,
        help="link model, e.g. 100mbit, 1gbit or 10mbit:1ms (rate[:latency]): adds link_time_s, the "
        "modelled seconds of the messages (plot it with marina plot --x link_time)",
    )
    g.add_argument(
        "--log-every", type=int, default=None, help="history row every N rounds (default iterations/200)"
    )
    o = p.add_argument_group("method parameters (default: the theory values)")
    for prm in parameters.PARAMETERS:
        if prm.kind is bool:
            o.add_argument(prm.flag, action="store_const", const=True, help=prm.help)
        else:
            o.add_argument(prm.flag, type=getattr(prm, "parse_arg", prm.kind), help=prm.help)
    e = p.add_argument_group("execution")
    e.add_argument("--out", default=None, help="results directory (default: print the result, write nothing)")
    e.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    e.add_argument(
        "--backend",
        default="simulated",
        choices=list(BACKENDS),
        help="simulated: all workers in this process (default); torch-distributed: this process is "
        "one rank of a torchrun job (docs/distributed.md: multi-process and multi-node runs)",
    )
    e.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="S",
        help="torch-distributed: seconds a rank waits for the others (rendezvous, each exchange) "
        "before stopping with an error (default 300)",
    )
    e.add_argument(
        "--verbose",
        action="store_true",
        help="torch-distributed: also show torch's own log lines of the rendezvous on stderr (by "
        "default a failed rendezvous keeps them in a log file named in the error)",
    )
    e.add_argument(
        "--checkpoint-every",
        type=int,
        default=choices.CHECKPOINT_EVERY,
        metavar="N",
        help=f"with --out, checkpoint every N rounds (0: never; default {choices.CHECKPOINT_EVERY})",
    )
    e.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch's choice; 1 suits small problems)",
    )
    e.add_argument("--force", action="store_true", help="run again even if DIR already holds this run")
    e.add_argument(
        "--log",
        default=None,
        metavar="TRACKERS",
        help="also log the history to trackers: tensorboard, mlflow, wandb, comma-separated "
        "(files under --out, else here; simulated backend)",
    )
    e.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (run_id, status, message, config, params, final) instead of text",
    )
    e.add_argument("--quiet", action="store_true", help="no progress display")
    p.set_defaults(func=main)


def config_from_args(args: argparse.Namespace, cache: ProblemCache | None = None) -> RunConfig:
    """The validated configuration the options describe (ConfigError names the option)."""
    experiments_module = load_module("experiments")
    PARAM_KEYS, Raw, validate = (
        experiments_module.PARAM_KEYS,
        experiments_module.Raw,
        experiments_module.validate,
    )

    values: dict[str, Any] = {
        "problems": args.problem,
        "workers": args.workers,
        "split": args.split,
        "methods": args.method,
        "compressors": args.compressor,
        "seeds": args.seed,
        "iterations": args.iterations,
    }
    if args.log_every is not None:
        values["log_every"] = args.log_every
    if args.link is not None:
        values["links"] = args.link
    for key in PARAM_KEYS:
        if getattr(args, key, None) is not None:
            values[key] = getattr(args, key)
    raw = Raw(values, "")
    (config,) = validate([raw], lambda k: OPTION_NAMES.get(k, k), device=args.device, cache=cache)
    return config


def _summary(record: dict[str, Any]) -> str:
    final = record.get("final") or {}
    lines = [f"{record['status']}: {record.get('message', '')}"]
    if final:
        num = {k: math.nan if v is None else float(v) for k, v in final.items() if k != "iteration"}
        lines.append(
            "round {it:d}: |grad f|^2 = {g:.4e}, f = {f:.6g}, #bits/n = {b:.4g}, oracle calls/worker = "
            "{o:.4g}, method time {t:.2f} s".format(
                it=int(final["iteration"]),
                g=num["grad_norm_sq"],
                f=num["loss"],
                b=num["bits_up"],
                o=num["oracle_calls"],
                t=num["time_s"],
            )
        )
    params = record.get("params") or {}
    keys = ("stepsize", "p", "alpha", "batch_size", "clients", "participation", "momentum", "mvr_momentum")
    shown = {k: v for k, v in params.items() if k in keys + ("omega", "contraction") and v is not None}
    if shown:
        lines.append(
            "parameters: "
            + ", ".join(f"{k} = {v:.6g}" if isinstance(v, float) else f"{k} = {v}" for k, v in shown.items())
        )
    return "\n".join(lines)


def _report(args: argparse.Namespace, record: dict[str, Any], skipped: bool = False) -> int:
    """Print the outcome of a run (text, or JSON with ``--json``) and return the exit status:
    0 finished, 3 diverged, 1 failed."""
    results = load_module("experiments").results

    record = {**record, "message": cli_syntax(str(record.get("message", "")))}
    status = record.get("status")
    code = EXIT_DIVERGED if status == "diverged" else EXIT_FAILED if status == "failed" else 0
    if args.json:
        keys = ("run_id", "status", "message", "config", "params", "final")
        obj = {k: record.get(k) for k in keys}
        obj.update(out=args.out, skipped=skipped, exit_code=code)
        print(results.dumps_json(obj, indent=None))
        return code
    if skipped:
        print(f"{args.out} already holds this run ({record['run_id']}); --force runs it again")
    print(_summary(record))
    if args.out is not None and not skipped:
        print(f"run {record['run_id']} written to {args.out} (results.parquet, runs.json)")
    if status == "failed":
        print(record.get("traceback", ""), file=sys.stderr)
    return code


def main(args: argparse.Namespace) -> int:
    if args.checkpoint_every < 0:
        raise ConfigError(f"--checkpoint-every {args.checkpoint_every}, must be >= 0 (0: never)")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads {args.threads}, must be >= 1")
    if args.log and args.backend != "simulated":
        raise ConfigError(f"--log {args.log}: trackers are for --backend simulated, not {args.backend}")
    if terminal_enabled(sys.stderr, args.quiet):  # on screen at once, before torch and the data load
        print(
            f"marina run: loading {args.problem} (n = {args.workers}, {args.method}, {args.compressor}) ...",
            file=sys.stderr,
            flush=True,
        )
    experiments_module = load_module("experiments")
    ProblemCache, results, torch_threads = (
        experiments_module.ProblemCache,
        experiments_module.results,
        experiments_module.torch_threads,
    )

    cache = ProblemCache()
    config = config_from_args(args, cache)
    if args.out is not None:
        existing = results.read_run_record(args.out, config.run_id)
        if existing and existing.get("status") in results.TERMINAL_STATUSES:
            if not args.force:
                results.rebuild(args.out)
                return _report(args, existing, skipped=True)
        if args.force:
            shutil.rmtree(results.run_dir(args.out, config.run_id), ignore_errors=True)
    with torch_threads(args.threads):
        record = BACKENDS[args.backend](args, config, cache)
    if record is None:  # a rank that does not report
        return 0
    return _report(args, record)
