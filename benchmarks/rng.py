"""Per-call times of the keyed generator's main draws (``marina.rng``), small and large.

- small: 5 rows on the CPU, a handful of elements per call: what a simulated round draws (the
  coin, RandK's indices, Bernoulli masks); these calls are dominated by fixed per-call costs,
  which the simulation's speed targets (``benchmarks/simulation.py``) depend on;
- large: 1000 rows, or 10^6 elements per call: dominated by the cost per element.

Each line is the best, over several repetitions, of the mean time of a loop of calls on one
``Randomness`` object (each call advances its counter, as in a run). One intra-op thread.

Run: ``python benchmarks/rng.py [--repeats R] [--only small|large]``
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from marina.rng import SHARED, Randomness


def per_call(fn: Callable[[], object], repeats: int, budget: float = 0.05) -> float:
    """Seconds per call: best over ``repeats`` of the mean over a loop of ~``budget`` seconds."""
    fn()
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-7)
    loops = max(1, min(10_000, int(budget / once)))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(loops):
            fn()
        best = min(best, (time.perf_counter() - t0) / loops)
    return best


def small_cases() -> dict[str, Callable[[], object]]:
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


def large_cases() -> dict[str, Callable[[], object]]:
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--only", choices=("small", "large"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    groups = {"small": small_cases, "large": large_cases}
    for group, make in groups.items():
        if args.only not in (None, group):
            continue
        print(f"-- {group}")
        for name, fn in make().items():
            t = per_call(fn, args.repeats)
            print(f"{name:36s} {t * 1e6:12.1f} us")


if __name__ == "__main__":
    main()
