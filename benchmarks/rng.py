"""Per-call times of the keyed generator's main draws (``marina.rng``), small and large.

- small: 5 rows on the CPU, a handful of elements per call: what a simulated round draws (the
  coin, RandK's indices, Bernoulli masks); these calls are dominated by fixed per-call costs,
  which the simulation's speed targets (``benchmarks/simulation.py``) depend on;
- large: 1000 rows, or 10^6 elements per call: dominated by the cost per element.

Each line is the best, over several repetitions, of the mean time of a loop of calls on one
``Randomness`` object (each call advances its counter, as in a run). One intra-op thread.
``--against PATH`` also times another version of ``marina.rng``: a copy of the package
directory (e.g. ``git archive REV src/marina/rng | tar -x -C /tmp/old``) or the single file
``marina/rng.py`` of earlier versions, its repetitions interleaved with this version's so that
load from other processes hits both alike, and prints the ratio.

Run: ``python benchmarks/rng.py [--repeats R] [--only small|large] [--against PATH]``
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch

import marina.rng


def per_call(fns: list[Callable[[], object]], repeats: int, budget: float = 0.05) -> list[float]:
    """Seconds per call of each fn: best over ``repeats`` (interleaved, in alternating order, as
    the one timed first tends to be slower) of the mean over a loop of ~``budget`` seconds."""
    loops = []
    for fn in fns:
        fn()
        t0 = time.perf_counter()
        fn()
        loops.append(max(1, min(10_000, int(budget / max(time.perf_counter() - t0, 1e-7)))))
    best = [float("inf")] * len(fns)
    for rep in range(repeats):
        for i in range(len(fns)) if rep % 2 == 0 else reversed(range(len(fns))):
            fn = fns[i]
            t0 = time.perf_counter()
            for _ in range(loops[i]):
                fn()
            best[i] = min(best[i], (time.perf_counter() - t0) / loops[i])
    return best


def small_cases(R: ModuleType) -> dict[str, Callable[[], object]]:
    Randomness = R.Randomness
    rng = Randomness(3, "compress", 7, range(5))
    pops = torch.tensor([123, 5000, 10**6, 30, 9000])
    return {
        "Randomness(5 rows)": lambda: Randomness(3, "compress", 7, range(5)),
        "uniform(1)": lambda: rng.uniform(1),
        "uniform(1, float32)": lambda: rng.uniform(1, torch.float32),
        "uniform(16, float32)": lambda: rng.uniform(16, torch.float32),
        "bits(4)": lambda: rng.bits(4),
        "words32(8)": lambda: rng.words32(8),
        "integers(1000, 4)": lambda: rng.integers(1000, 4),
        "bernoulli(0.3)": lambda: rng.bernoulli(0.3),
        "permutation(20)": lambda: rng.permutation(20),
        "swr(123, 1)": lambda: rng.sample_without_replacement(123, 1),
        "swr(10^6, 1)": lambda: rng.sample_without_replacement(10**6, 1),
        "swr(10^6, 8)": lambda: rng.sample_without_replacement(10**6, 8),
        "swr(20, 4)": lambda: rng.sample_without_replacement(20, 4),
        "swr(per-row pops, 2)": lambda: rng.sample_without_replacement(pops, 2),
        "elements().uniform(0, 16)": lambda: rng.elements().uniform(0, 16, torch.float32),
        "shared().uniform(1)": lambda: rng.shared().uniform(1),
        "shared().permutation(123)": lambda: rng.shared().permutation(123),
    }


def large_cases(R: ModuleType) -> dict[str, Callable[[], object]]:
    Randomness, SHARED = R.Randomness, R.SHARED
    big = Randomness(3, "compress", 7, range(1000))
    one = Randomness(3, "compress", 7, [SHARED])
    return {
        "Randomness(1000 rows)": lambda: Randomness(3, "compress", 7, range(1000)),
        "1000 rows: uniform(1)": lambda: big.uniform(1),
        "1000 rows: bernoulli(0.3)": lambda: big.bernoulli(0.3),
        "1000 rows: swr(123, 1)": lambda: big.sample_without_replacement(123, 1),
        "1000 rows: swr(10^6, 8)": lambda: big.sample_without_replacement(10**6, 8),
        "1000 rows: swr(300, 20)": lambda: big.sample_without_replacement(300, 20),
        "1000 rows: permutation(20)": lambda: big.permutation(20),
        "1000 rows: uniform(1000, float32)": lambda: big.uniform(1000, torch.float32),
        "1000 rows: uniform(1000)": lambda: big.uniform(1000),
        "1 row: uniform(10^6, float32)": lambda: one.uniform(10**6, torch.float32),
        "1 row: uniform(10^6)": lambda: one.uniform(10**6),
        "1 row: words32(10^6)": lambda: one.words32(10**6),
        "1 row: bits(10^6)": lambda: one.bits(10**6),
        "1 row: permutation(10^6)": lambda: one.permutation(10**6),
        "1 row: swr(10^6, 10^4)": lambda: one.sample_without_replacement(10**6, 10**4),
    }


def load(path: str) -> ModuleType:
    """The module file, or the package directory (its modules import each other relatively)."""
    where = Path(path)
    package = where.is_dir()
    spec = importlib.util.spec_from_file_location(
        "rng_against",
        where / "__init__.py" if package else where,
        submodule_search_locations=[str(where)] if package else None,
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--only", choices=("small", "large"))
    ap.add_argument("--against", metavar="PATH", help="another marina/rng (a directory or rng.py)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    mods = [marina.rng] + ([load(args.against)] if args.against else [])
    for group, make in {"small": small_cases, "large": large_cases}.items():
        if args.only not in (None, group):
            continue
        print(f"-- {group}" + ("  (this version | --against | ratio)" if args.against else ""))
        cases = [make(m) for m in mods]
        for name in cases[0]:
            times = per_call([c[name] for c in cases], args.repeats)
            cols = "".join(f"{t * 1e6:12.1f} us" for t in times)
            ratio = f"{times[0] / times[1]:8.2f}" if len(times) > 1 else ""
            print(f"{name:36s}{cols}{ratio}")


if __name__ == "__main__":
    main()
