"""Time and bytes per round on real processes: MARINA randk:1 vs dense GD (issue 6 benchmark).

Launches ``marina run --backend torch-distributed`` on W local processes (gloo, 127.0.0.1; each
with torchrun's environment, one torch thread), n = W workers of a9a, once for
``marina --compressor randk:1`` and once for ``gd``, and reads rank 0's results: per round

- time: the runner's method time (``time_s``: local gradients, compression, the one
  all-gather of every aggregation, decompression; metric evaluation excluded) / rounds;
- CPU: the CPU seconds (user + system, gloo's threads included) of a rank per round: the
  job's CPU over all ranks minus that of the same job run for one round (set-up), over
  rounds and ranks. Unlike the time, it does not count waiting for a core, so it tells the
  work of a round apart from the scheduling noise of a shared machine;
- wire bytes: what all ranks put on links (``wire_bytes``: payloads, padding and, for
  compressors whose sizes vary, the size exchange, times W - 1 receivers; see
  :mod:`marina.network.torch_distributed`);
- payload bytes: the packed messages themselves (``payload_bytes``);
- accounted bits: the paper's #bits/n (``bits_up``) per round;
- wire / accounted: wire bytes per round / (W - 1) over the accounted bits of all n workers
  per round / 8: the bytes one copy of the round's messages takes on the wire per accounted
  byte (target <= 1.1; the two-collective exchange spent 8 bytes of size per message on top).

and the ratios GD / MARINA. MARINA's rounds include its dense rounds (probability p = 1/d).
Several ranks share the machine's cores, so times include scheduling noise: run on an idle
machine, and compare ratios rather than absolute figures.

With ``--baseline SRC`` (a source tree, e.g. ``git archive <commit> src | tar -x -C /tmp/old``),
every run is repeated with ``PYTHONPATH=SRC/src``, interleaved with the current code, and the
table shows both (``label @ baseline``): a before/after comparison under the same load.

Run: ``python benchmarks/distributed.py [--ranks 4] [--iterations 2000] [--problem a9a] [--repeats 3]
[--baseline DIR]``
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

from marina.testing import local_launch

METHODS = {
    "marina randk:1": ("marina", "randk:1"),
    "marina randk:1:seeded": ("marina", "randk:1:seeded"),
    "gd": ("gd", "identity"),
}


def _children_cpu_s() -> float:
    """CPU seconds (user + system) of every child process waited for so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_one(
    method: str,
    compressor: str,
    args: argparse.Namespace,
    out: Path,
    src: str | None = None,
    iterations: int | None = None,
) -> tuple[pd.Series, float]:
    """One job on ``args.ranks`` processes (with ``src/`` of ``src`` first on the path): rank 0's
    last history row and the CPU seconds of all ranks together (set-up included)."""
    iterations = args.iterations if iterations is None else iterations
    argv = [sys.executable, "-m", "marina", "run", "--backend", "torch-distributed"]
    argv += ["--problem", args.problem, "--workers", str(args.ranks), "--method", method]
    argv += ["--compressor", compressor, "--iterations", str(iterations), "--seed", "0"]
    argv += ["--log-every", str(iterations), "--checkpoint-every", "0", "--quiet", "--out", str(out)]
    cpu0 = _children_cpu_s()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(Path(src) / "src"), env.get("PYTHONPATH", "")])
    logs = [open(out.parent / f"{out.name}.rank{r}.log", "w") for r in range(args.ranks)]  # noqa: SIM115 - closed after the ranks exit
    procs = local_launch(argv, args.ranks, env=env, stdout=lambda r: logs[r], stderr=subprocess.STDOUT)
    codes = [p.wait(timeout=args.timeout) for p in procs]
    for log in logs:
        log.close()
    if any(codes):
        text = "\n".join(Path(log.name).read_text() for log in logs)
        raise SystemExit(f"{method} failed (exit codes {codes}):\n{text}")
    cpu = _children_cpu_s() - cpu0
    history = pd.read_parquet(out / "results.parquet")
    return history.iloc[-1], cpu


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.3g}x" if b else "n/a (nothing on a wire)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, default=4, help="processes = workers (default 4)")
    ap.add_argument("--iterations", type=int, default=2000, help="rounds per method (default 2000)")
    ap.add_argument("--problem", default="a9a")
    ap.add_argument("--timeout", type=float, default=900, help="seconds allowed per job")
    ap.add_argument("--repeats", type=int, default=3, help="runs per method; the median time is shown")
    ap.add_argument("--baseline", default=None, help="a source tree to time interleaved against")
    args = ap.parse_args()
    rows: dict[str, dict[str, float]] = {}
    trees = [("", None)] + ([(" @ baseline", args.baseline)] if args.baseline else [])
    runs = [(label + tag, m, c, src) for label, (m, c) in METHODS.items() for tag, src in trees]
    times: dict[str, list[float]] = {run[0]: [] for run in runs}
    cpus: dict[str, list[float]] = {run[0]: [] for run in runs}
    with tempfile.TemporaryDirectory() as tmp:
        # the CPU of a job's set-up (one round), subtracted from the full jobs' CPU
        setup_cpu = {}
        for i, (label, method, compressor, src) in enumerate(runs):
            setup_cpu[label] = run_one(method, compressor, args, Path(tmp) / f"setup-{i}", src, 1)[1]
        for rep in range(args.repeats):  # methods interleaved, so load changes hit them alike
            for i, (label, method, compressor, src) in enumerate(runs):
                last, cpu = run_one(method, compressor, args, Path(tmp) / f"{i}-{rep}", src)
                k = float(last["iteration"])
                times[label].append(1e3 * float(last["time_s"]) / k)
                cpus[label].append(1e3 * (cpu - setup_cpu[label]) / (k - 1) / args.ranks)
                rows[label] = {
                    "ms/round": statistics.median(times[label]),
                    "min ms/round": min(times[label]),
                    "CPU ms/round/rank": statistics.median(cpus[label]),
                    "wire B/round": float(last["wire_bytes"]) / k,
                    "payload B/round": float(last["payload_bytes"]) / k,
                    "bits/n/round": float(last["bits_up"]) / k,
                    "wire/accounted": float(last["wire_bytes"])  # nothing crosses a wire at W = 1
                    / (args.ranks - 1)
                    / (float(last["bits_up"]) * args.ranks / 8)
                    if args.ranks > 1
                    else math.nan,
                    "final |grad f|^2": float(last["grad_norm_sq"]),
                }
    table = pd.DataFrame(rows).T
    print(
        f"{args.problem}, {args.ranks} processes (gloo, loopback), n = {args.ranks} workers, "
        f"{args.iterations} rounds each, median of {args.repeats} interleaved runs, "
        f"{os.cpu_count()} CPU cores"
    )
    with pd.option_context(
        "display.float_format", "{:.4g}".format, "display.width", 160, "display.max_columns", None
    ):
        print(table)
    for tag, _ in trees:
        g = rows["gd" + tag]
        for label in ("marina randk:1" + tag, "marina randk:1:seeded" + tag):
            m = rows[label]
            print(
                f"ratio gd{tag} / {label}: "
                f"time per round {g['ms/round'] / m['ms/round']:.3g}x (target >= 1), "
                f"CPU per round {g['CPU ms/round/rank'] / m['CPU ms/round/rank']:.3g}x, "
                f"wire bytes per round {_ratio(g['wire B/round'], m['wire B/round'])}, "
                f"accounted bits per round {g['bits/n/round'] / m['bits/n/round']:.3g}x"
            )


if __name__ == "__main__":
    main()
