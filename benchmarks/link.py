"""Wall-clock on real shaped links: W ranks in network namespaces, every link under ``tc tbf``.

Topology: one namespace holding a Linux bridge, and one namespace per rank, joined to the bridge
by a veth pair (10.77.0.(r+1)/24). Both ends of every veth are shaped with
``tc qdisc replace dev ... root tbf rate R`` (the rank's upload and its download), for each rate
of ``--rates`` in turn, ``--repeats`` times, each shaped stage right after an unshaped one (the
compute and loopback-like latency floor, measured beside every rate since the load drifts).
The script creates and removes every namespace itself (also on errors, Ctrl-C and SIGTERM) and
touches no interface outside them; it needs root (``ip netns``) and says so otherwise.

Problem: a generated sparse LibSVM file (``--dim`` features, default 10^5, ``--nnz`` non-zeros a
sample, labels of a planted model; drawn from :class:`marina.rng.Randomness`), logistic
regression, n = W workers (one a rank).

For GD, DIANA, MARINA and PP-MARINA (RandK for the compressed ones), each with the theory
stepsize and the multipliers of ``--multipliers``:

1. Measured (shaped links): ``marina run --backend torch-distributed`` for ``--rounds`` rounds
   with ``log_every = 1``; the runner's ``time_s`` times the method's rounds apart from the
   metric evaluation, so each round's seconds are exact; rounds are told apart by their bits
   (MARINA's dense rounds vs its compressed ones) and the median of each kind is kept. The
   wall-clock of the whole job is reported too: the difference is what logging ||grad f||^2
   (a dense gather of the workers' gradients per log point) costs on that link.
2. Rounds to target: the same configuration in the simulation, which follows the same trajectory
   bit for bit (tests/test_distributed.py), up to ``--max-rounds``: the first round k_eps with
   ||grad f(x^k)||^2 <= eps ||grad f(x^0)||^2, for every eps of ``--eps``.
3. Seconds to target = the sum over rounds 1..k_eps of the measured seconds of each round's kind.
4. The link model (``marina.run(link=...)``, :mod:`marina.network.link`) on the same rounds:
   modelled seconds per round plus the floor measured beside that rate, compared with the
   measured seconds per round (medians over the repeats).

Run (as root): ``python benchmarks/link.py [--ranks 4] [--rates 1gbit 100mbit 10mbit] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from netns import Namespaces, exit_on_signals, rank_command, rank_environ, require_root, wait_ranks

import marina
from marina.experiments.loading import load_problem
from marina.network.link import parse_link
from marina.rng import Randomness

PORT = 29555
METHODS = ("gd", "diana", "marina", "pp-marina")


def write_problem(path: Path, workers: int, samples: int, dim: int, nnz: int, seed: int) -> None:
    """A sparse LibSVM file: ``samples`` rows per worker, ``nnz`` uniform(-1, 1) features each,
    labels sign(a^T x*) of a planted x* (every draw keyed by the sample's id)."""
    rows = workers * samples
    ids = list(range(rows))
    cols = Randomness(seed, "link-data-cols", 0, ids).sample_without_replacement(dim, nnz)
    vals = Randomness(seed, "link-data-vals", 0, ids).uniform(nnz) * 2 - 1
    planted = Randomness(seed, "link-data-x", 0, [0]).uniform(dim)[0] * 2 - 1
    labels = torch.where((vals * planted[cols]).sum(dim=1) >= 0, 1, -1)
    with open(path, "w") as f:
        for i in range(rows):
            feats = " ".join(f"{int(c) + 1}:{float(v):.6g}" for c, v in zip(cols[i], vals[i]))
            last = f" {dim}:0" if i == 0 and int(cols[i].max()) != dim - 1 else ""  # fixes d
            f.write(f"{int(labels[i])} {feats}{last}\n")


def configs(args: argparse.Namespace) -> list[tuple[str, str, float]]:
    out = []
    for method in METHODS:
        comp = "identity" if method == "gd" else f"randk:{args.k}"
        for mult in args.multipliers:
            out.append((method, comp, float(mult)))
    return out


def rank_job(spec: str) -> None:
    """Inside a rank's namespace: every configuration in turn on the shaped links, one process
    start for all; rank 0 writes ``{config: [rounds_s, wall_s]}`` to the given file."""
    from marina import distributed

    job = json.loads(spec)
    torch.set_num_threads(1)
    out = {}
    for method, comp, mult, rounds in job["configs"]:
        t0 = time.perf_counter()
        res = distributed.run(
            method=method,
            problem=job["data"],
            workers=job["workers"],
            compressor=comp,
            iterations=rounds,
            seed=0,
            log_every=rounds,  # logged at 0 and at the end only: two dense metric gathers
            stepsize_multiplier=mult,
            timeout_s=60,  # a failed set-up is retried on another port (measure)
        )
        h = res.history
        out[f"{method} {comp} {mult}"] = [
            float(h["time_s"].iloc[-1] - h["time_s"].iloc[0]),
            time.perf_counter() - t0,
        ]
    if int(os.environ["RANK"]) == 0:
        Path(job["out"]).write_text(json.dumps(out))


def measure(args, data: Path, jobs: list[tuple[str, str, float, int]], tmp: Path, port: int) -> dict:
    """One shaped stage (:func:`_measure_once`), started again on another port when its ranks
    fail (gloo's connection set-up through a freshly shaped link is occasionally refused)."""
    for attempt in range(3):
        try:
            return _measure_once(args, data, jobs, tmp, port + 1000 * attempt)
        except RuntimeError as err:
            print(f"stage on port {port + 1000 * attempt} failed, starting it again: {err}", file=sys.stderr)
    raise RuntimeError(f"stage {[job[0] for job in jobs]} failed three times")


def _measure_once(args, data: Path, jobs: list[tuple[str, str, float, int]], tmp: Path, port: int) -> dict:
    """Every job on W ranks (one process each, in its namespace): per job the method's seconds
    for rounds 1..R (``time_s``: metrics excluded) and the wall-clock of the job (its two metric
    logs and set-up included)."""
    result = tmp / f"stage-{port}.json"
    spec = json.dumps({"configs": jobs, "data": str(data), "workers": args.ranks, "out": str(result)})
    commands = [
        (
            rank_command(r, [sys.executable, __file__, "--rank-job", spec]),
            {**os.environ, **rank_environ(r, args.ranks, port)},
        )
        for r in range(args.ranks)
    ]
    codes = wait_ranks(commands, [tmp / f"rank{r}.log" for r in range(args.ranks)], args.job_timeout)
    if any(codes):
        logs = "\n".join((tmp / f"rank{r}.log").read_text()[-3000:] for r in range(args.ranks))
        raise RuntimeError(f"stage failed ({codes}):\n{logs}")
    return json.loads(result.read_text())


def simulate(prob, method: str, comp: str, mult: float, rounds: int, link: str | None) -> pd.DataFrame:
    """The same configuration in the simulation (the same trajectory), every round logged."""
    return marina.run(
        method=method,
        problem=prob,
        compressor=comp,
        iterations=rounds,
        seed=0,
        log_every=1,
        stepsize_multiplier=mult,
        link=link,
    ).history


def dense_rounds(history: pd.DataFrame, dense_bits: float) -> pd.Series:
    """Whether each round 1..K sent dense messages (its bits per worker are d x 32)."""
    return history["bits_up"].diff().iloc[1:].round() >= dense_bits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--rates", nargs="+", default=["1gbit", "100mbit", "10mbit"])
    ap.add_argument("--dim", type=int, default=100_000)
    ap.add_argument("--samples", type=int, default=250, help="samples per worker (default 250)")
    ap.add_argument("--nnz", type=int, default=20)
    ap.add_argument("--k", type=int, default=1000, help="RandK's K (default 1000)")
    ap.add_argument("--multipliers", type=float, nargs="+", default=[1.0, 8.0])
    ap.add_argument("--eps", type=float, nargs="+", default=[0.1, 0.01])
    ap.add_argument("--rounds", type=int, default=40, help="measured rounds per shaped job (GD: fewer)")
    ap.add_argument("--budget-s", type=float, default=4.0, help="GD's measured seconds per shaped job")
    ap.add_argument("--max-rounds", type=int, default=3000, help="simulated rounds to find k_eps")
    ap.add_argument("--job-timeout", type=float, default=600, help="seconds allowed per shaped stage")
    ap.add_argument(
        "--repeats", type=int, default=3, help="shaped stages per rate (each beside an unshaped one)"
    )
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args()
    require_root("benchmarks/link.py")
    exit_on_signals()
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="marina-link-"))
    data = tmp / "sparse.libsvm"
    write_problem(data, args.ranks, args.samples, args.dim, args.nnz, seed=0)
    prob = load_problem(str(data), args.ranks, "contiguous", device="cpu")
    cfgs = configs(args)
    dense_bits = 32.0 * prob.dim
    # rounds to target from the simulation (same trajectory as the distributed runs)
    sims = {c: simulate(prob, *c, args.max_rounds, None) for c in cfgs}
    rows = []
    port = PORT

    def jobs_at(link) -> list[tuple[str, str, float, int]]:
        jobs = []
        for method, comp, mult in cfgs:
            if mult != args.multipliers[0]:
                continue  # the seconds of a round do not depend on the stepsize
            rounds = args.rounds
            if method == "gd" and link is not None:  # keep the slow dense jobs short
                est = link.all_gather_s(args.ranks, 4 * prob.dim)
                rounds = max(3, min(args.rounds, int(args.budget_s / est)))
            jobs.append((method, comp, mult, rounds))
        return jobs

    def median_stage(stages: list[dict]) -> dict:
        return {key: [statistics.median(s[key][i] for s in stages) for i in range(2)] for key in stages[0]}

    # each shaped stage is repeated, each time right after an unshaped one; the floor of a rate is
    # the median of the unshaped stages measured beside it (the machine's load drifts between rates)
    stages: dict[str | None, list[dict]] = {None: []}
    floors: dict[str, dict] = {}
    try:
        with Namespaces(args.ranks) as spaces:
            for rate in args.rates:
                stages[rate], beside = [], []
                for _ in range(args.repeats):
                    for shaped in (None, rate):
                        spaces.shape(shaped)
                        port += 1
                        jobs = jobs_at(parse_link(shaped) if shaped else None)
                        stage = measure(args, data, jobs, tmp, port)
                        print(f"{shaped or 'unshaped'} (beside {rate}): {json.dumps(stage)}", file=sys.stderr)
                        (stages[rate] if shaped else beside).append(stage)
                stages[None] += beside
                floors[rate] = median_stage(beside)
        for rate in [None, *args.rates]:
            link = parse_link(rate) if rate else None
            jobs, stage = jobs_at(link), median_stage(stages[rate])
            t_dense = math.nan
            for method, comp, mult, rounds in jobs:
                rounds_s, wall = stage[f"{method} {comp} {mult}"]
                schedule = dense_rounds(sims[(method, comp, mult)].iloc[: rounds + 1], dense_bits)
                n_dense, n_comp = int(schedule.sum()), int((~schedule).sum())
                if method == "gd":
                    t_dense, t_comp = rounds_s / rounds, math.nan
                else:  # the measured job's dense rounds at GD's measured cost, the rest compressed
                    t_comp = max(1e-6, (rounds_s - n_dense * t_dense) / max(1, n_comp))
                model = simulate(prob, method, comp, mult, rounds, rate) if rate else None
                for mult2 in args.multipliers:
                    h = sims[(method, comp, mult2)]
                    g0 = float(h["grad_norm_sq"].iloc[0])
                    kinds = dense_rounds(h, dense_bits).to_numpy()
                    row = {
                        "rate": rate or "unshaped",
                        "method": method,
                        "compressor": comp,
                        "mult": mult2,
                        "s/round": rounds_s / rounds,
                        "dense s": t_dense,
                        "compressed s": t_comp,
                        "wall s/round": wall / rounds,
                        "measured rounds": rounds,
                    }
                    if model is not None:
                        # rounds 1..R only, as measured (the start's dense g^0 excluded)
                        modelled = model["link_time_s"].iloc[-1] - model["link_time_s"].iloc[0]
                        row["model s/round"] = float(modelled) / rounds
                        floor_s, _ = floors[rate][f"{method} {comp} {mult}"]
                        row["floor s/round"] = floor_s / args.rounds
                    for eps in args.eps:
                        hit = h.index[h["grad_norm_sq"] <= eps * g0]
                        if len(hit) == 0:
                            row[f"rounds to {eps:g}"] = math.inf
                            row[f"s to {eps:g}"] = math.inf
                            continue
                        k = int(h["iteration"].iloc[hit[0]])
                        nd = int(kinds[:k].sum())
                        row[f"rounds to {eps:g}"] = k
                        t_rest = t_dense if method == "gd" else t_comp
                        row[f"s to {eps:g}"] = nd * t_dense + (k - nd) * t_rest
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    df = pd.DataFrame(rows)
    df["model+floor s/round"] = df["model s/round"] + df["floor s/round"]
    df["model error"] = df["model+floor s/round"] / df["s/round"] - 1
    with pd.option_context(
        "display.width", 200, "display.max_columns", None, "display.float_format", "{:.4g}".format
    ):
        print(f"{args.ranks} ranks, d = {args.dim}, randk:{args.k}, {os.cpu_count()} CPU cores")
        print(df.to_string(index=False))
    if args.json:
        Path(args.json).write_text(df.to_json(orient="records"))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--rank-job":
        rank_job(sys.argv[2])
    else:
        main()
