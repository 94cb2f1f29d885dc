"""Every CUDA path of marina in one command: one line per check, then a summary (issue 22).

Run on a machine with one or more CUDA GPUs, from the repository root, with the project's venv:

    .venv/bin/python benchmarks/device_check.py [--budget 480] [--quick]

Each check prints ``PASS|FAIL|SKIP name: detail`` (indented lines after it give details); an
exception inside a check is a FAIL with its one-line reason (the traceback goes to stderr) and
the next check runs. Checks not started within ``--budget`` seconds are skipped. The last line
is ``device_check: N passed, N failed, N skipped``; the exit status is 1 when a check failed.

- ``cuda-tests``: the suite's CUDA test cases (``pytest -k cuda`` on the test files that ask
  ``torch.cuda.is_available()``), in a subprocess with a time limit.
- ``wire``: ``pack_codes`` / ``unpack_codes`` and ``concat_bits`` / ``split_bits`` on the device
  against the CPU's numpy bit packing, byte for byte, and every compressor's packed payload on
  the device against the CPU's.
- ``simulated``: tests/golden.py's cases with ``marina.run`` on the device against the CPU: per
  case bit identical, or the largest relative difference of ||grad f||^2, f and the final
  iterate (counters must be equal), and whether a second device run repeats the first.
- ``optimizers ws=W``: tests/torch_optim_ranks.py (the marina.torch optimizers against
  ``marina.run``) on W ranks with NCCL; W = 2 only with two GPUs.
- ``ddp-hook ws=W``: DDP with ``marina.torch.compression_hook`` registered as documented, QGD and
  DIANA on the device (NCCL) against the same on the CPU (a gloo group of the same ranks).
- ``cli ws=W``: ``marina run --backend torch-distributed --device cuda`` against the simulation.
- ``round-time DATA n=N``: benchmarks/simulation.py's per-round times against the floor (one
  sparse A x plus one A^T r), on the device and on the CPU, a9a and w8a at n = 5 and 10^4
  (figures only: it fails only when a run fails).

Without a CUDA device it says so, runs the CPU part (the simulation repeated on the CPU, the
wire path's tensor code on the CPU against numpy, round times at n = 5) and exits 0.
``--device cpu`` runs every check with the CPU (and gloo) standing in for the GPU (slow; for
working on this script).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STARTED = time.monotonic()  # the budget counts from here, imports included
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads libgomp (see tests/conftest.py)

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
sys.path.insert(0, str(TESTS))  # tests/golden.py: the simulated cases

import golden  # noqa: E402
import marina  # noqa: E402
from marina import compressors, problems  # noqa: E402
from marina.compressors import wire  # noqa: E402
from marina.network.torch_distributed import first_line  # noqa: E402
from marina.rng import Randomness  # noqa: E402
from marina.testing import local_launch  # noqa: E402

# benchmarks/simulation.py: the floor and the timed method rounds
_spec = importlib.util.spec_from_file_location("bench_simulation", Path(__file__).with_name("simulation.py"))
simulation = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(simulation)

DEVICE_RTOL = 1e-9
"""Largest relative difference accepted between a device run and the CPU run of a simulated
case (40 rounds in float64: the sums of another order differ by a few ulp a round)."""
OPTIM_ATOL = {"cpu": 1e-12, "cuda": 1e-10}
"""Largest |x - x_ref| of the optimizers' parameters (float64 MLP) against ``marina.run``."""
HOOK_RTOL = 1e-5
"""Largest difference of the DDP hook's float32 parameters, device against CPU, relative to
the largest parameter (cuBLAS and the CPU's BLAS round float32 products differently)."""
COUNTERS = ("iteration", "bits_up", "bits_down", "oracle_calls")
"""History columns that count (rounds, bits, oracle calls): equal on every device."""
METRICS = ("grad_norm_sq", "loss")
"""History columns computed by floating-point reductions of the data."""
WIRE_WIDTHS = (1, 2, 3, 4, 5, 7, 8, 9, 12, 13, 16, 17, 23, 24, 25, 31, 32, 33, 40, 47, 48, 55, 56)
WIRE_SHAPES = ((1, 1), (3, 7), (2, 4096), (5, 3001), (1, 70_001))
WIRE_SPECS = (
    "identity",
    "randk:3",
    "randk:3:seeded",
    "bernoulli:0.5",
    "permk",
    "natural",
    "topk:2",
    "terngrad",
    "randk:3+natural",
    "randk:3+terngrad",
    "qsgd:5",
    "natural-dithering:3",
    "sign",
    "randk:3+qsgd:2",
)
REDUCING = ("qsgd", "natural-dithering", "sign")
"""Compressors whose message holds a float reduction of the row (l2 norm, mean |x|): their
payloads may differ from the CPU's in the last bit of that value (and what follows from it)."""
ROUND_TIME_CASES = (("a9a", 5), ("a9a", 10_000), ("w8a", 5), ("w8a", 10_000))
TIMED_METHODS = ("gd", "marina", "diana", "qgd")


class CheckFailed(Exception):
    """A check's verdict FAIL: ``CheckFailed(reason, details)``, a one-line reason and optional
    lines printed under it."""


class OutOfTime(CheckFailed):
    """A subprocess stopped at its time limit (SKIP, not FAIL, when the limit was the budget's end)."""


def fail_with(found: list[str], what: str = "") -> CheckFailed:
    """The FAIL of a check that found the problems ``found``: the first in its line (with
    ``what``), the others under it."""
    head = found[0] + (f" ({what})" if what else "")
    more = f" and {len(found) - 1} more" if len(found) > 1 else ""
    return CheckFailed(head + more, found[1:])


# -- comparing two runs -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Trajectory:
    """What a simulated run is compared by: its status, history columns and final iterate."""

    status: str
    history: dict[str, list[float]]
    x: list[float]

    @classmethod
    def of(cls, result: Any) -> Trajectory:
        history = {c: [float(v) for v in result.history[c].tolist()] for c in COUNTERS + METRICS}
        x = [] if result.x is None else result.x.detach().to("cpu", torch.float64).tolist()
        return cls(result.status, history, x)


def rel_diff(a: float, b: float) -> float:
    """|a - b| / max(|a|, |b|): 0 for equal values (NaN equals NaN), inf when one is not finite."""
    if a == b or (math.isnan(a) and math.isnan(b)):
        return 0.0
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.inf
    return abs(a - b) / max(abs(a), abs(b))


def vector_rel_diff(a: Sequence[float], b: Sequence[float]) -> float:
    """max_j |a_j - b_j| / max_j max(|a_j|, |b_j|): 0 when equal entry for entry (NaN equal to
    NaN), inf for other lengths or a difference that is not finite."""
    if len(a) != len(b):
        return math.inf
    pairs = [(u, v) for u, v in zip(a, b) if rel_diff(u, v) != 0.0]
    if not pairs:
        return 0.0
    worst = max(abs(u - v) for u, v in pairs)
    if not math.isfinite(worst):  # inf or NaN against a number
        return math.inf
    return worst / max(max(abs(u), abs(v)) for u, v in zip(a, b))


@dataclass(frozen=True)
class Agreement:
    """How two trajectories agree. ``rel``: the largest relative difference of each metric
    column and of the final iterate ``x``; ``first``: the first difference in row order
    (``"loss[3]"``; ``"x"`` when only the iterate differs; None when identical)."""

    statuses: tuple[str, str]
    counters_equal: bool
    rel: dict[str, float]
    first: str | None

    @property
    def identical(self) -> bool:
        return self.first is None

    @property
    def worst(self) -> float:
        return max(self.rel.values(), default=0.0)

    def within(self, rtol: float) -> bool:
        """Same status, equal counters, every relative difference <= rtol."""
        return self.statuses[0] == self.statuses[1] and self.counters_equal and self.worst <= rtol

    def describe(self) -> str:
        if self.identical:
            return "bit-identical"
        if self.statuses[0] != self.statuses[1]:
            return f"status {self.statuses[0]} against {self.statuses[1]}"
        if not self.counters_equal:
            return f"counters differ (first at {self.first})"
        parts = ", ".join(f"{k} {v:.1e}" for k, v in self.rel.items())
        where = "metrics only" if self.rel.get("x", 0.0) == 0.0 else "iterates too"
        return f"max rel {self.worst:.1e} ({parts}), first at {self.first}: {where}"


def compare(ref: Trajectory, got: Trajectory) -> Agreement:
    """The :class:`Agreement` of ``got`` with ``ref`` (floats equal as ``==`` says, NaN equal to NaN)."""
    columns = COUNTERS + METRICS
    differences = []  # (row, column order, name) of every differing entry
    counters_equal = all(len(ref.history[c]) == len(got.history[c]) for c in columns)
    for k, c in enumerate(columns):
        a, b = ref.history[c], got.history[c]
        if len(a) != len(b):
            differences.append((min(len(a), len(b)), k, f"{c}: {len(a)} rows against {len(b)}"))
        for i, (u, v) in enumerate(zip(a, b)):
            if rel_diff(u, v) != 0.0:
                differences.append((i, k, f"{c}[{i}]"))
                counters_equal = counters_equal and c not in COUNTERS
    rel = {
        c: max((rel_diff(u, v) for u, v in zip(ref.history[c], got.history[c])), default=0.0) for c in METRICS
    }
    rel["x"] = vector_rel_diff(ref.x, got.x)
    first = min(differences)[2] if differences else None
    if ref.status != got.status:
        first = "status"
    elif first is None and rel["x"] != 0.0:
        first = "x"
    return Agreement((ref.status, got.status), counters_equal, rel, first)


# -- running the checks -----------------------------------------------------------------------------
@dataclass
class Context:
    """What every check gets: the device under test, sizes, and the clock of the budget."""

    device: torch.device
    quick: bool
    budget_s: float
    world_sizes: tuple[int, ...]
    full: bool = True
    """False without a CUDA device: the CPU part only."""
    start: float = STARTED

    def remaining(self) -> float:
        return self.budget_s - (time.monotonic() - self.start)

    def limit(self, seconds: float) -> float:
        """A subprocess time limit: ``seconds``, at most what is left of the budget (>= 1 s)."""
        return max(1.0, min(seconds, self.remaining()))

    @property
    def cpu_only(self) -> bool:
        return self.device.type == "cpu"


@dataclass
class Tally:
    passed: int = 0
    failed: int = 0
    skipped: int = 0

    def line(self) -> str:
        return f"device_check: {self.passed} passed, {self.failed} failed, {self.skipped} skipped"


def run_check(
    name: str, fn: Callable[[Context], str | tuple[str, list[str]]], ctx: Context, tally: Tally
) -> None:
    """Run one check and print its line (and detail lines): PASS with what it returned, FAIL
    with the one-line reason of its exception, SKIP when the budget is spent."""
    if ctx.remaining() <= 0:
        tally.skipped += 1
        print(f"SKIP {name}: the budget of {ctx.budget_s:g} s is spent", flush=True)
        return
    t0 = time.monotonic()
    details: list[str] = []
    try:
        out = fn(ctx)
        detail, details = out if isinstance(out, tuple) else (out, [])
        verdict = "PASS"
        tally.passed += 1
    except OutOfTime as err:
        detail, verdict = str(err), "FAIL"
        if ctx.remaining() <= 1:  # the budget's end cut it short
            detail, verdict = f"stopped at the end of the budget of {ctx.budget_s:g} s ({err})", "SKIP"
        tally.failed += verdict == "FAIL"
        tally.skipped += verdict == "SKIP"
    except CheckFailed as err:
        detail, details = str(err.args[0]), list(err.args[1]) if len(err.args) > 1 else []
        verdict = "FAIL"
        tally.failed += 1
    except Exception as err:  # noqa: BLE001 - every error is this check's FAIL line
        traceback.print_exc(file=sys.stderr)
        detail = f"{type(err).__name__}: {first_line(err)}"
        verdict = "FAIL"
        tally.failed += 1
    print(f"{verdict} {name}: {detail} [{time.monotonic() - t0:.1f} s]", flush=True)
    for line in details:
        print(f"    {line}", flush=True)


def skip(name: str, why: str, tally: Tally) -> None:
    tally.skipped += 1
    print(f"SKIP {name}: {why}", flush=True)


# -- 1. the suite's CUDA tests ----------------------------------------------------------------------
CUDA_MARK = "torch.cuda.is_available()"


def cuda_test_files(tests: Path = TESTS) -> list[Path]:
    """The test files that ask whether CUDA is there (their CUDA cases are skipped without it)."""
    return sorted(p for p in tests.glob("test_*.py") if CUDA_MARK in p.read_text(encoding="utf-8"))


def pytest_counts(output: str) -> dict[str, int]:
    """The counts of pytest's last summary line (``3 passed, 1 skipped in 2.1s``)."""
    counts: dict[str, int] = {}
    for line in reversed(output.strip().splitlines()):
        found = re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)", line)
        if found:
            for number, what in found:
                counts["error" if what.startswith("error") else what] = int(number)
            break
    return counts


def check_cuda_tests(ctx: Context) -> tuple[str, list[str]]:
    files = cuda_test_files()
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-k", "cuda"]
    cmd += [str(p.relative_to(ROOT)) for p in files]
    limit = ctx.limit(240)
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        raise OutOfTime(f"pytest did not finish within {limit:.0f} s") from None
    counts = pytest_counts(proc.stdout)
    shown = ", ".join(f"{v} {k}" for k, v in counts.items()) or "no summary"
    details = [line for line in proc.stdout.splitlines() if line.startswith(("FAILED", "ERROR", "SKIPPED"))]
    what = f"{shown} (-k cuda in {', '.join(p.name for p in files)})"
    if proc.returncode != 0 or counts.get("failed") or counts.get("error") or not counts.get("passed"):
        sys.stderr.write(proc.stdout[-8000:] + proc.stderr[-4000:])
        raise CheckFailed(f"pytest exit {proc.returncode}: {what}", details)
    return what, details


# -- 2. the wire path -------------------------------------------------------------------------------
def numpy_packed(codes: torch.Tensor, w: int) -> torch.Tensor:
    """:func:`wire.pack_codes` of CPU ``codes`` through numpy's bit packing: in column chunks
    small enough for its numpy path, a multiple of 8 codes each (whole bytes, so the chunks'
    bytes concatenate to the row's)."""
    n, m = codes.shape
    step = 8 * max(1, wire._NUMPY_CODES // (8 * max(1, n)))
    parts = [wire.pack_codes(codes[:, j : j + step], w) for j in range(0, m, step)]
    return torch.cat(parts, dim=1) if parts else wire.pack_codes(codes, w)


def message_rows(m: int, bits: int) -> torch.Tensor:
    """(m, ceil(bits / 8)) uint8 messages of ``bits`` random bits each, zero bits after the last."""
    nb = (bits + 7) // 8
    rows = Randomness(1, "device-check-wire", bits, range(m)).bits(nb).to(torch.uint8)
    rows[:, -1] &= (1 << (bits - 8 * (nb - 1))) - 1
    return rows


def check_wire(ctx: Context) -> tuple[str, list[str]]:
    dev = ctx.device
    bad: list[str] = []
    cases = 0
    for n, m in WIRE_SHAPES:
        for w in WIRE_WIDTHS:
            codes = Randomness(0, "device-check-wire", w, range(n)).bits(m) & ((1 << w) - 1)
            want = numpy_packed(codes, w)
            got = wire.pack_codes(codes.to(dev), w)
            cases += 1
            if not torch.equal(got.cpu(), want):
                bad.append(f"pack_codes w={w} ({n}, {m}): bytes differ from numpy's")
                continue
            for dtype in (None, torch.int64):
                back = wire.unpack_codes(got, m, w, dtype).cpu()
                if not torch.equal(back.to(torch.int64), codes):
                    bad.append(f"unpack_codes w={w} ({n}, {m}) dtype={dtype}: codes differ")
    for m, bits in ((7, 39), (5, 8), (3, 1), (64, 131)):
        rows = message_rows(m, bits)
        want = wire.concat_bits(rows, bits)
        got = wire.concat_bits(rows.to(dev), bits)
        cases += 1
        if not torch.equal(got.cpu(), want):
            bad.append(f"concat_bits m={m} bits={bits}: bytes differ from the CPU's")
        elif not torch.equal(wire.split_bits(got.reshape(1, -1), m, bits).cpu(), rows):
            bad.append(f"split_bits m={m} bits={bits}: messages differ")
    payloads, notes = wire_payloads(dev)
    bad += payloads
    summary = f"{cases} code layouts byte for byte; {len(WIRE_SPECS)} compressors' payloads: " + "; ".join(
        notes
    )
    if bad:
        raise fail_with(bad)
    return summary, []


def wire_payloads(dev: torch.device) -> tuple[list[str], list[str]]:
    """Every compressor of :data:`WIRE_SPECS`: its packed rows on ``dev`` against the CPU's, and
    the device's own round trip (pack, unpack, decompress) against decompress(compress).
    Returns (failures, notes)."""
    n, d = 4, 1000
    X = Randomness(2, "device-check-x", 0, range(n)).uniform(d) * 2 - 1
    bad, same, differ = [], [], []
    for spec in WIRE_SPECS:
        Q = compressors.get(spec, workers=n)
        rows = {}
        for where in (torch.device("cpu"), dev):
            rng = Randomness(3, "compress", 0, range(n), device=where)
            rows[where.type] = Q.pack_compressed(X.to(where), rng)
        (cpu_rows, cpu_bits), (dev_rows, dev_bits) = rows["cpu"], rows[dev.type]
        if not torch.equal(cpu_bits.cpu(), dev_bits.cpu()):
            bad.append(f"{spec}: bits {dev_bits.tolist()} on {dev.type}, {cpu_bits.tolist()} on cpu")
            continue
        (same if torch.equal(cpu_rows, dev_rows.cpu()) else differ).append(spec)
        x_hat, _ = Q.roundtrip(X.to(dev), seed=3)
        direct = Q.decompress(Q.compress(X.to(dev), Randomness(3, "compress", 0, range(n), device=dev)))
        if not torch.equal(x_hat, direct):
            bad.append(f"{spec}: round trip through the wire on {dev.type} differs from decompress(compress)")
    unexpected = [s for s in differ if not any(r in s for r in REDUCING)]
    bad += [
        f"{s}: payload on {dev.type} differs from the CPU's (no float reduction in its message)"
        for s in unexpected
    ]
    notes = [f"{len(same)} byte-identical to the CPU's"]
    if differ:
        notes.append(f"differ: {', '.join(differ)}")
    return bad, notes


# -- 3. simulated runs: device against CPU ----------------------------------------------------------
def simulated_cases(quick: bool) -> list[dict]:
    """tests/golden.py's cases (quick: one data set, one seed)."""
    cases = golden.cases()
    if quick:
        cases = [c for c in cases if c["problem"] == golden.DATASETS[0] and c["seed"] == golden.SEEDS[0]]
    return cases


def run_case(case: dict, problem: problems.Problem) -> Trajectory:
    """One golden case with :func:`marina.run` on ``problem`` (its device)."""
    kept = []

    def keep(**kwargs: Any) -> Any:
        kept.append(marina.run(**kwargs))
        return kept[-1]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        golden.compute(case, problem=problem, run=keep)
    return Trajectory.of(kept[0])


WHY = {
    "cpu": "the CPU path is deterministic (sequential scipy kernels, fixed-order reductions)",
    "cuda": "on cuda the local gradients and losses come from cuSPARSE CSR products and index_add_ "
    "(atomic adds), which sum in another order than the CPU's sequential scipy kernels",
}


def check_simulated(ctx: Context) -> tuple[str, list[str]]:
    dev = ctx.device
    cases = simulated_cases(ctx.quick)
    built: dict[str, tuple[problems.Problem, problems.Problem]] = {}
    lines, bad = [], []
    identical = repeatable = done = 0
    worst = (0.0, "")
    rtol = 0.0 if ctx.cpu_only else DEVICE_RTOL
    for case in cases:
        if ctx.remaining() <= 0:
            lines.append(f"budget spent after {done} of {len(cases)} cases")
            break
        if case["problem"] not in built:
            cpu = problems.libsvm(case["problem"], workers=golden.WORKERS)
            built[case["problem"]] = (cpu, cpu.to(dev))
        on_cpu, on_dev = built[case["problem"]]
        ref = run_case(case, on_cpu)
        got = run_case(case, on_dev)
        agreement = compare(ref, got)
        again = agreement if on_dev is on_cpu else compare(got, run_case(case, on_dev))  # a repeat already
        done += 1
        identical += agreement.identical
        repeatable += again.identical
        if agreement.worst > worst[0]:
            worst = (agreement.worst, case["key"])
        if not agreement.within(rtol):
            bad.append(case["key"])
        rerun = "repeats itself" if again.identical else f"second run: {again.describe()}"
        lines.append(f"{case['key']}: {agreement.describe()}; {dev.type} {rerun}")
    largest = f", {worst[1]}" if worst[1] else ""
    summary = (
        f"{done} cases {dev.type} against cpu: {identical} bit-identical, "
        f"{done - identical - len(bad)} within rel {rtol:g} (largest {worst[0]:.1e}{largest}); "
        f"{repeatable} of {done} repeat bit for bit on {dev.type}"
    )
    lines.append(f"why: {WHY.get(dev.type, WHY['cuda'])}")
    if bad:
        raise CheckFailed(
            f"{len(bad)} beyond rel {rtol:g} or with other counters (e.g. {bad[0]}); {summary}", lines
        )
    return summary, lines


# -- ranks: launching processes -------------------------------------------------------------------
def launch(argv: list[str], world: int, limit: float, workdir: Path, grace_s: float = 10.0) -> list[str]:
    """Run ``argv`` on ``world`` local ranks (torchrun's environment, MASTER_ADDR 127.0.0.1, one
    thread each) within ``limit`` seconds; returns each rank's stdout. A rank that fails gives
    the others ``grace_s`` seconds before they are killed. CheckFailed with the last line of the stderr of the
    first rank that failed (the whole of it goes to our stderr)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    outs = [open(workdir / f"rank{r}.out", "w+") for r in range(world)]  # noqa: SIM115 - closed after the ranks exit
    errs = [open(workdir / f"rank{r}.err", "w+") for r in range(world)]  # noqa: SIM115 - closed after the ranks exit
    procs = local_launch(argv, world, env=env, stdout=lambda r: outs[r], stderr=lambda r: errs[r])
    deadline, failed = time.monotonic() + limit, None
    try:
        while None in (codes := [p.poll() for p in procs]):
            if failed is None:
                failed = next((r for r, c in enumerate(codes) if c not in (None, 0)), None)
                if failed is not None:
                    deadline = min(deadline, time.monotonic() + grace_s)
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        timed_out = [r for r, p in enumerate(procs) if p.poll() is None]
        for r in timed_out:
            procs[r].kill()
            procs[r].wait()
        texts = []
        for f in outs + errs:
            f.seek(0)
            texts.append(f.read())
            f.close()
    stdout, stderr = texts[:world], texts[world:]
    if failed is None:
        failed = next((r for r, p in enumerate(procs) if p.returncode != 0 and r not in timed_out), None)
    if failed is not None:
        code = procs[failed].returncode
        sys.stderr.write(f"--- rank {failed} of {world} (exit {code}):\n{stderr[failed][-6000:]}\n")
        last = [line for line in stderr[failed].splitlines() if line.strip()]
        raise CheckFailed(f"rank {failed} exited with {code}: {last[-1] if last else 'no stderr'}")
    if timed_out:
        raise OutOfTime(f"rank(s) {timed_out} did not finish within {limit:.0f} s")
    return stdout


# -- 4. marina.torch optimizers on NCCL -----------------------------------------------------------
def check_optimizers(ctx: Context, world: int) -> str:
    dev = ctx.device.type
    with tempfile.TemporaryDirectory() as tmp:
        argv = [sys.executable, str(TESTS / "torch_optim_ranks.py"), tmp, dev]
        launch(argv, world, ctx.limit(150), Path(tmp))
        reports = [json.loads((Path(tmp) / f"rank{r}.json").read_text()) for r in range(world)]
    bad, diffs = [], []
    for name in reports[0]:
        for r, rep in enumerate(reports):
            case = rep[name]
            diffs.append(case["max_diff"])
            if not case["max_diff"] <= OPTIM_ATOL[dev]:
                bad.append(f"{name} rank {r}: max |x - x_ref| {case['max_diff']:.1e} > {OPTIM_ATOL[dev]:g}")
            if case["bits_up"][0] != case["bits_up"][1] or case["bits_down"][0] != case["bits_down"][1]:
                bad.append(f"{name} rank {r}: bits {case['bits_up']} / {case['bits_down']} (optimizer / run)")
            if world > 1 and not case["wire_bytes"] > 0:
                bad.append(f"{name} rank {r}: no wire bytes counted")
    if bad:
        raise fail_with(bad)
    return (
        f"{', '.join(reports[0])} on {world} {dev} rank(s) ({'nccl' if dev == 'cuda' else 'gloo'}) "
        f"follow marina.run: max |x - x_ref| {max(diffs):.1e}, bits equal"
    )


# -- 5. the DDP hook on NCCL ----------------------------------------------------------------------
def _hook_model(dev: torch.device) -> torch.nn.Module:
    model = torch.nn.Linear(12, 3)
    with torch.no_grad():  # the same start on every rank and device, no global generator
        model.weight.copy_(torch.linspace(-1, 1, 36).reshape(3, 12))
        model.bias.copy_(torch.tensor([0.2, 0.0, -0.2]))
    return model.to(dev)


def _hook_train(
    dev: torch.device, group: Any, state: Any, hook: Callable, steps: int = 3
) -> list[torch.Tensor]:
    """``steps`` SGD steps of DDP with ``hook`` on ``dev`` over ``group``; the parameters after."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    rank = dist.get_rank()
    ddp = DDP(_hook_model(dev), device_ids=[dev.index] if dev.type == "cuda" else None, process_group=group)
    ddp.register_comm_hook(state, hook)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    t = torch.arange(96, dtype=torch.float32)
    X, y = (
        torch.sin(t * (0.7 + rank)).reshape(8, 12).to(dev),
        torch.cos(t[:24] * (1.3 + rank)).reshape(8, 3).to(dev),
    )
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(ddp(X), y).backward()
        opt.step()
    params = [p.detach().cpu().clone() for p in ddp.parameters()]
    del ddp, opt
    return params


def ddp_hook_rank(out: str, device: str) -> None:
    """One rank of ``ddp-hook``: QGD and DIANA through the hook on ``device`` (NCCL for cuda)
    against the same on the CPU over a gloo group of the same ranks; rank r writes rank<r>.json."""
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    from torch.nn.parallel import DistributedDataParallel as DDP

    import marina.torch as mt
    from marina.testing import close_group

    torch.set_num_threads(1)
    dev, cpu = torch.device("cpu"), torch.device("cpu")
    if device == "cuda":
        dev = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(dev)
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    gloo = dist.new_group(backend="gloo")
    report: dict[str, Any] = {"registration": None}
    hook = mt.compression_hook
    probe = DDP(_hook_model(dev), device_ids=[dev.index] if dev.type == "cuda" else None)
    try:  # the documented registration
        probe.register_comm_hook(mt.CompressionHookState("identity", "qgd"), mt.compression_hook)
    except Exception as err:  # noqa: BLE001 - reported as the check's FAIL line
        report["registration"] = f"{type(err).__name__}: {first_line(err)}"

        def hook(state, bucket):  # unannotated, so DDP accepts it
            return mt.compression_hook(state, bucket)

    del probe

    ref = _hook_train(dev, None, None, default_hooks.allreduce_hook)
    mine = _hook_train(dev, None, mt.CompressionHookState("identity", "qgd"), hook)
    report["identity_equal"] = all(torch.equal(a, b) for a, b in zip(ref, mine))
    for method in ("qgd", "diana"):
        states = {
            name: mt.CompressionHookState("randk:3", method, seed=5, group=g)
            for name, g in (("dev", None), ("cpu", gloo))
        }
        on_dev = _hook_train(dev, None, states["dev"], hook)
        on_cpu = _hook_train(cpu, gloo, states["cpu"], hook)
        scale = max(float(p.abs().max()) for p in on_cpu)
        report[method] = {
            "rel": max(float((a - b).abs().max()) for a, b in zip(on_dev, on_cpu)) / scale,
            "bits_up": [states["dev"].bits_up, states["cpu"].bits_up],
            "rounds": [states["dev"].rounds, states["cpu"].rounds],
        }
    Path(out, f"rank{dist.get_rank()}.json").write_text(json.dumps(report))
    dist.destroy_process_group(gloo)
    close_group()


def check_ddp_hook(ctx: Context, world: int) -> str:
    dev = ctx.device.type
    with tempfile.TemporaryDirectory() as tmp:
        launch(
            [sys.executable, __file__, "--rank-job", "ddp-hook", tmp, dev], world, ctx.limit(120), Path(tmp)
        )
        reports = [json.loads((Path(tmp) / f"rank{r}.json").read_text()) for r in range(world)]
    bad = []
    rtol = 0.0 if dev == "cpu" else HOOK_RTOL
    for r, rep in enumerate(reports):
        if not rep["identity_equal"]:
            bad.append(f"rank {r}: identity QGD differs from DDP's allreduce_hook")
        for method in ("qgd", "diana"):
            m = rep[method]
            if not m["rel"] <= rtol:
                bad.append(
                    f"rank {r}: {method} on {dev} differs from the CPU by rel {m['rel']:.1e} > {rtol:g}"
                )
            if m["bits_up"][0] != m["bits_up"][1] or m["rounds"][0] != m["rounds"][1] or not m["rounds"][0]:
                bad.append(
                    f"rank {r}: {method} counters {m['bits_up']} bits, {m['rounds']} rounds ({dev}, cpu)"
                )
    rel = max(rep[m]["rel"] for rep in reports for m in ("qgd", "diana"))
    backend = "nccl" if dev == "cuda" else "gloo"
    ran = (
        f"identity = allreduce_hook; randk:3 qgd, diana on {world} {dev} rank(s) ({backend}) "
        f"against gloo cpu: rel {rel:.1e}, bits equal"
    )
    refused = reports[0]["registration"]
    if refused:
        bad.insert(0, f"register_comm_hook(state, marina.torch.compression_hook) refused: {refused}")
        ran = "through an unannotated wrapper: " + ran
    if bad:
        raise fail_with(bad, ran if refused else "")
    return ran


# -- 6. the command line on torch-distributed -----------------------------------------------------
def check_cli(ctx: Context, world: int) -> str:
    dev = ctx.device.type
    workers, iterations = 2 * world, 50 if ctx.quick else 200
    argv = [sys.executable, "-m", "marina", "run", "--backend", "torch-distributed", "--device", dev]
    argv += ["--problem", "a9a", "--workers", str(workers), "--method", "marina", "--compressor", "randk:1"]
    argv += [
        "--iterations",
        str(iterations),
        "--log-every",
        str(iterations),
        "--seed",
        "0",
        "--timeout",
        "60",
    ]
    argv += ["--checkpoint-every", "0", "--quiet", "--json"]
    with tempfile.TemporaryDirectory() as tmp:
        stdout = launch(argv, world, ctx.limit(120), Path(tmp))
    record = json.loads(stdout[0].strip().splitlines()[-1])
    if record["status"] != "finished":
        raise CheckFailed(f"status {record['status']}: {record['message']}")
    final = record["final"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = marina.run(
            method="marina",
            compressor="randk:1",
            problem="a9a",
            workers=workers,
            iterations=iterations,
            seed=0,
            log_every=iterations,
        ).history.iloc[-1]
    counters = {c: (final[c], float(ref[c])) for c in COUNTERS}
    rel = rel_diff(float(final["grad_norm_sq"]), float(ref["grad_norm_sq"]))
    rtol = 0.0 if dev == "cpu" else DEVICE_RTOL
    backend = "nccl" if dev == "cuda" else "gloo"
    what = (
        f"marina randk:1, a9a, {workers} workers on {world} {dev} rank(s) ({backend}), {iterations} rounds: "
        f"||grad f||^2 {final['grad_norm_sq']:.6e}, rel {rel:.1e} from the simulation; "
        f"wire {final.get('wire_bytes', 0):.0f} B"
    )
    if any(a != b for a, b in counters.values()):
        raise CheckFailed(f"counters differ from the simulation {counters}; {what}")
    if not rel <= rtol:
        raise CheckFailed(f"beyond rel {rtol:g}: {what}")
    return what


# -- 7. round time against the floor --------------------------------------------------------------
def round_times(
    ctx: Context, prob: problems.Problem, name: str, rounds: int, methods: Sequence[str]
) -> tuple[str, dict[str, float]]:
    """``method median ms (x floor)`` of each method on ``prob``'s device, next to the floor
    (timed after every round, benchmarks/simulation.py), and the medians in seconds; stops when
    the budget is spent."""
    floor = simulation.floor_fn(name, prob.device)
    parts, floor_ms, medians = [], [], {}
    for method in methods:
        if ctx.remaining() <= 0:
            parts.append("budget spent")
            break
        spec = simulation.COMPRESSOR.get(method, "randk:1")
        med, fmed, _, _ = simulation.method_time(prob, floor, method, rounds, spec)
        parts.append(f"{method} {med * 1e3:.3g} ms ({med / fmed:.2f}x)")
        floor_ms.append(fmed * 1e3)
        medians[method] = med
    shown = f"{statistics.median(floor_ms):.3g} ms" if floor_ms else "not timed"
    return f"{prob.device.type} floor {shown}: " + ", ".join(parts), medians


def check_round_time(ctx: Context, name: str, n: int) -> str:
    """Median round times and their ratios to the floor, on the device and on the CPU, and the
    device's time over the CPU's (figures only: the check fails only when a run fails)."""
    rounds = 20 if ctx.quick else 100
    methods = TIMED_METHODS[:2] if ctx.quick else TIMED_METHODS
    cpu = problems.libsvm(name, workers=n)
    devices = [ctx.device] if ctx.cpu_only else [ctx.device, torch.device("cpu")]
    measured = [round_times(ctx, cpu.to(d), name, rounds, methods) for d in devices]
    text = " | ".join(line for line, _ in measured)
    if len(measured) == 2:
        (_, on_dev), (_, on_cpu) = measured
        ratios = ", ".join(f"{m} {on_dev[m] / on_cpu[m]:.2f}" for m in on_dev if m in on_cpu)
        text += f" | {ctx.device.type}/cpu time: {ratios}"
    return text


# -- the plan -----------------------------------------------------------------------------------
def header(device: torch.device | None) -> str:
    parts = [
        f"torch {torch.__version__}",
        f"python {sys.version.split()[0]}",
        f"{torch.get_num_threads()} CPU thread(s)",
    ]
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        parts.append(f"CUDA {torch.version.cuda}, {len(names)} device(s): {', '.join(names)}")
        try:
            version = torch.cuda.nccl.version()
            parts.append(
                "NCCL " + (".".join(map(str, version)) if isinstance(version, tuple) else str(version))
            )
        except Exception as err:  # noqa: BLE001 - the header only reports it
            parts.append(f"NCCL: {first_line(err)}")
    return (
        "device_check: " + "; ".join(parts) + f"; checking {device.type if device else 'the CPU part only'}"
    )


def checks(ctx: Context) -> list[tuple[str, Callable[[Context], Any] | str]]:
    """The checks in order, each (name, function) or (name, why it is skipped)."""
    dev = ctx.device.type
    plan: list[tuple[str, Callable[[Context], Any] | str]] = []
    plan.append(("cuda-tests", check_cuda_tests if dev == "cuda" else "needs CUDA"))
    plan.append((f"wire {dev} vs cpu", check_wire))
    plan.append((f"simulated {dev} vs cpu", check_simulated))
    for world in (1, 2):
        why = "no CUDA device" if not ctx.full else f"{world} ranks need {world} CUDA devices"
        for label, fn in (("optimizers", check_optimizers), ("ddp-hook", check_ddp_hook), ("cli", check_cli)):
            usable = ctx.full and world in ctx.world_sizes
            plan.append((f"{label} ws={world}", (lambda c, f=fn, w=world: f(c, w)) if usable else why))
    for name, n in ROUND_TIME_CASES:
        usable = ctx.full or n <= 5
        fn = (lambda c, a=name, b=n: check_round_time(c, a, b)) if usable else "no CUDA device (n = 5 only)"
        plan.append((f"round-time {name} n={n}", fn))
    return plan


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--budget", type=float, default=480.0, help="seconds; checks not started by then are skipped"
    )
    ap.add_argument("--quick", action="store_true", help="small sizes (fewer cases, rounds and methods)")
    ap.add_argument(
        "--device", choices=("cuda", "cpu"), default=None, help="device under test (default: cuda if present)"
    )
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1, as the benchmarks)")
    ap.add_argument("--rank-job", nargs=3, metavar=("JOB", "OUT", "DEVICE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rank_job:
        job, out, device = args.rank_job
        {"ddp-hook": ddp_hook_rank}[job](out, device)
        return 0
    torch.set_num_threads(args.threads)
    has_cuda = torch.cuda.is_available()
    tally = Tally()
    if args.device == "cpu" or has_cuda:
        device = torch.device(args.device or "cuda")
        worlds = (1, 2) if device.type == "cpu" or torch.cuda.device_count() >= 2 else (1,)
        ctx = Context(device, args.quick, args.budget, worlds)
        print(header(device), flush=True)
    else:
        print(
            "device_check: no CUDA device is present (torch.cuda.is_available() is False); the CPU part only",
            flush=True,
        )
        print(header(None), flush=True)
        ctx = Context(torch.device("cpu"), True, args.budget, (), full=False)
    for name, fn in checks(ctx):
        if isinstance(fn, str):
            skip(name, fn, tally)
        else:
            run_check(name, fn, ctx, tally)
    print(tally.line(), flush=True)
    return 1 if tally.failed else 0


if __name__ == "__main__":
    sys.exit(main())
