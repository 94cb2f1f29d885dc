"""Recorded histories of every method: refactors must reproduce them bit for bit.

``CASES`` covers all fourteen methods (the paper's seven, the EF21 and DASHA families) with several
compressors, on two bundled data sets and two seeds, n = 6 workers (so 3 gloo processes host
two each). ``python tests/golden.py`` records ``tests/data/golden_histories.json`` from the
code as it stands; ``python tests/golden.py --check [SEED ...]`` compares; the tests compare a
fresh computation against it (``test_golden.py``: simulated, under emulated kernels of other
CPUs, and on 3 gloo ranks). Record only on purpose: a change of any value is a change of
behaviour, and the commit that re-records must say why.

Values are stored as Python ``repr`` of float64 (exact round trip); the final iterate as the
SHA-256 of its float64 bytes and as its values.

Across machines. Every value is compared bit for bit where ATen runs its vectorised kernels
(CPU capability AVX2 or AVX512, any x86 CPU since 2013): the iterates and counters go through
element-wise operations and fixed-order sums only, the metrics through
:mod:`marina.reductions` (no BLAS), and the smoothness constants behind the stepsize are
rounded to 32 bits (:func:`marina.problems.spectral.snap_up`), so the kernels MKL and OpenBLAS
pick for the CPU do not reach them. ``tests/test_golden.py`` checks this by running the cases
under other kernels (``ATEN_CPU_CAPABILITY``, ``OPENBLAS_CORETYPE``). With ATen's scalar kernels
(``DEFAULT``: no AVX2), exp and log come from the C library instead of SLEEF and the last bits of
the metrics differ (measured: 4.4e-16 relative); there counters and the status are compared
exactly and float values to :data:`SCALAR_RTOL`.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path

PATH = Path(__file__).parent / "data" / "golden_histories.json"
WORKERS = 6
ITERATIONS = 40
DATASETS = ("mushrooms", "a9a")
SEEDS = (0, 1)
COLUMNS = ("iteration", "grad_norm_sq", "loss", "bits_up", "bits_down", "oracle_calls")
FLOAT_COLUMNS = ("grad_norm_sq", "loss")  # the others are counts: exact everywhere
SCALAR_RTOL = 1e-12
"""Relative tolerance of float values where ATen's kernels are scalar (module docstring)."""
VECTORISED = ("AVX2", "AVX512")
"""ATen CPU capabilities whose kernels give the recorded bits."""

# (method, compressor, overrides)
METHOD_CASES: tuple[tuple[str, str, dict], ...] = (
    ("gd", "identity", {}),
    ("qgd", "randk:5", {}),
    ("qgd", "qsgd:4", {"stepsize_multiplier": 4.0}),
    ("diana", "randk:3", {"stepsize_multiplier": 8.0}),
    ("diana", "natural", {}),
    ("vr-diana", "randk:5", {"stepsize_multiplier": 8.0}),
    ("marina", "randk:1", {}),
    ("marina", "permk", {"p": 0.2}),
    ("marina", "bernoulli:0.3", {"stepsize_multiplier": 2.0}),
    ("vr-marina", "randk:5", {}),
    ("vr-marina", "randk:2", {"online": True, "dense_batch_size": 50, "p": 0.3}),
    ("pp-marina", "randk:4", {"p": 0.25}),
    ("pp-marina", "natural-dithering:3", {"clients": 4}),
    ("ef21", "topk:5", {}),
    ("ef21-sgdm", "topk:5", {"momentum": 0.2, "batch_size": 4, "stepsize_multiplier": 4.0}),
    ("dasha", "randk:5", {}),
    ("ef21-pp", "topk:3", {"participation": 0.5}),
    ("ef21-sgd", "topk:5", {"batch_size": 8}),
    ("dasha-page", "randk:4", {"batch_size": 8}),
    ("dasha-mvr", "randk:4", {"batch_size": 8}),
)


def cases() -> list[dict]:
    """Every recorded case as a plain dict (its key names the case)."""
    out = []
    for problem in DATASETS:
        for method, compressor, params in METHOD_CASES:
            for seed in SEEDS:
                key = f"{problem}/{method}/{compressor}/{json.dumps(params, sort_keys=True)}/seed={seed}"
                out.append(
                    {
                        "key": key,
                        "problem": problem,
                        "method": method,
                        "compressor": compressor,
                        "params": dict(params),
                        "seed": seed,
                    }
                )
    return out


def summarize(result) -> dict:
    """The recorded part of a :class:`marina.Result`: history columns and a digest of x."""
    import torch

    history = {c: [float(v) for v in result.history[c].tolist()] for c in COLUMNS}
    x = result.x.detach().to(device="cpu", dtype=torch.float64).contiguous()
    digest = hashlib.sha256(x.numpy().tobytes()).hexdigest()
    return {
        "status": result.status,
        "stepsize": float(result.params["stepsize"]),
        "history": history,
        "x_sha256": digest,
        "x": [float(v) for v in x.tolist()],
    }


def compute(case: dict, problem=None, run=None, **run_kwargs) -> dict:
    """Run one case with :func:`marina.run` (or ``run``; ``problem``: a prebuilt problem)."""
    import marina

    result = (marina.run if run is None else run)(
        method=case["method"],
        compressor=case["compressor"],
        problem=case["problem"] if problem is None else problem,
        workers=WORKERS,
        iterations=ITERATIONS,
        seed=case["seed"],
        log_every=1,
        **case["params"],
        **run_kwargs,
    )
    return summarize(result)


def load() -> dict[str, dict]:
    return json.loads(PATH.read_text(encoding="utf-8"))


def exact_here() -> bool:
    """Whether this machine must reproduce the recording bit for bit (module docstring)."""
    import torch

    return torch.backends.cpu.get_cpu_capability() in VECTORISED


def _same(u: float, v: float, rtol: float) -> bool:
    if u == v or (math.isnan(u) and math.isnan(v)):
        return True
    return abs(u - v) <= rtol * max(abs(u), abs(v))


def differences(expected: dict, got: dict, rtol: float = 0.0) -> list[str]:
    """What differs between two summaries (empty: the same). ``rtol`` = 0: bit for bit;
    otherwise counters and the status exactly, float values to relative ``rtol``."""
    out = []
    exact_names = ("status", "x_sha256") if rtol == 0 else ("status",)
    for name in exact_names:
        if expected[name] != got[name]:
            out.append(f"{name}: recorded {expected[name]!r}, now {got[name]!r}")
    series = [
        ("stepsize", [expected["stepsize"]], [got["stepsize"]], rtol),
        ("x", expected["x"], got["x"], rtol),
    ]
    series += [
        (col, expected["history"][col], got["history"][col], rtol if col in FLOAT_COLUMNS else 0.0)
        for col in COLUMNS
    ]
    for name, a, b, tol in series:
        if len(a) != len(b):
            out.append(f"{name}: {len(a)} values recorded, {len(b)} now")
            continue
        for i, (u, v) in enumerate(zip(a, b)):
            if not _same(u, v, tol):
                out.append(f"{name}[{i}]: recorded {u!r}, now {v!r}")
                break
    return out


def check(seeds: tuple[int, ...] = SEEDS) -> int:
    """Compare every case of ``seeds`` with the recording, as this machine must (exactly or to
    :data:`SCALAR_RTOL`); print one line per differing case and a summary; the number differing."""
    from marina import problems

    recorded = load()
    rtol = 0.0 if exact_here() else SCALAR_RTOL
    built = {name: problems.libsvm(name, workers=WORKERS) for name in DATASETS}
    selected = [case for case in cases() if case["seed"] in seeds]
    bad = 0
    for case in selected:
        diff = differences(recorded[case["key"]], compute(case, problem=built[case["problem"]]), rtol)
        if diff:
            bad += 1
            print(f"{case['key']}: {'; '.join(diff[:3])}")
    print(f"golden: {bad} of {len(selected)} cases differ (rtol {rtol:g})")
    return bad


def record() -> None:
    import torch

    torch.set_num_threads(1)
    data = {case["key"]: compute(case) for case in cases()}
    PATH.parent.mkdir(parents=True, exist_ok=True)
    PATH.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"recorded {len(data)} cases into {PATH}", file=sys.stderr)


def distributed_main(out: str, seeds: tuple[int, ...] = (0,)) -> None:
    """One rank of a 3-process job (started by the test): every case of ``seeds`` through
    :func:`marina.distributed.run` on this rank's workers; rank 0 writes ``out``."""
    import torch

    from marina import distributed, problems

    torch.set_num_threads(1)
    got = {}
    with distributed.init("cpu", timeout_s=120) as session:
        hosted = session.hosted_workers(WORKERS)
        built = {name: problems.libsvm(name, workers=WORKERS, hosted_workers=hosted) for name in DATASETS}
        for case in cases():
            if case["seed"] in seeds:
                got[case["key"]] = compute(
                    case, problem=built[case["problem"]], run=distributed.run, timeout_s=120
                )
        if session.rank == 0:
            Path(out).write_text(json.dumps(got), encoding="utf-8")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--distributed"]:
        distributed_main(sys.argv[2])
    elif sys.argv[1:2] == ["--check"]:
        sys.exit(1 if check(tuple(int(s) for s in sys.argv[2:]) or SEEDS) else 0)
    else:
        record()
