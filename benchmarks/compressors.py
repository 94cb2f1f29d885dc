"""Time of every compressor against one copy of its input (issue 2 benchmark).

For each dimension d and number of workers n (rows of X, float32), prints the best-of-R time of

- copy: ``X.clone()``, one copy of the input, timed next to each compressor (the floor);
- compress+decompress: ``c.compress_decompress(X, rng)``, the simulation's path;
- pack+unpack: ``c.pack(msg)`` then ``c.unpack(...)`` (bytes per worker and back; the message
  is made once, untimed), what a torch.distributed backend adds on top of compress;

and the ratios to the copy. Target: randk and qsgd compress+decompress within 10x of the copy
at d = 10^7 (n = 1 and n = 16). RandK and TopK keep K = d/100 coordinates.

Configurations whose estimated peak memory exceeds ``--max-gb`` (default 6) are skipped and
listed as such.

The script sets ``OMP_WAIT_POLICY=PASSIVE`` unless the environment sets it: with libgomp's default
(idle OpenMP threads spin after every parallel op), the spinning threads take the cores from the
main thread on a busy machine and a compress of 10^7 entries took 16 s instead of 0.2 s on the
shared 2-core machine where this was written. ``--threads 1`` is the other way out.

Run: ``python benchmarks/compressors.py [--dims 10000 10000000] [--workers 1 16]
[--repeats 5] [--specs randk qsgd:4 ...] [--threads T]``
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its OpenMP threads

import torch

from marina.compressors import get
from marina.rng import Randomness

DEFAULT_SPECS = [
    "identity",
    "randk",
    "bernoulli:0.1",
    "qsgd:4",
    "natural",
    "natural-dithering:4",
    "permk",
    "topk",
    "terngrad",
    "sign",
    "randk+natural",
    "randk+qsgd:4",
]

# Rough peak bytes per input element (X itself included) of the heavier of the two timed paths.
BYTES_PER_ELEMENT = {
    "identity": 16,
    "randk": 12,
    "bernoulli": 16,
    "qsgd": 24,
    "natural": 28,
    "natural-dithering": 24,
    "permk": 16,
    "topk": 16,
    "terngrad": 24,
    "sign": 16,
    "composed": 12,
}


def best_of(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def build(spec: str, d: int, n: int):
    if spec in ("randk", "topk") or spec.startswith("randk+"):
        head, _, tail = spec.partition("+")
        spec = f"{head}:{max(1, d // 100)}" + (f"+{tail}" if tail else "")
    return get(spec, workers=n)


def measure(spec: str, X: torch.Tensor, repeats: int) -> tuple[str, float, float, float]:
    """(canonical spec, copy, compress+decompress and pack+unpack seconds) for X (n, d).

    The copy is timed right before the compressor, so both see the same machine load.
    """
    n, d = X.shape
    c = build(spec, d, n)

    def rng() -> Randomness:
        return Randomness(0, "compress", 0, range(n))

    copy = best_of(X.clone, repeats)
    cd = best_of(lambda: c.compress_decompress(X, rng()), repeats)
    msg = c.compress(X, rng())
    pu = best_of(
        lambda: c.unpack(c.pack(msg), d, worker_ids=msg.worker_ids, dtype=X.dtype, rng=rng()),
        max(1, repeats // 2),
    )
    return c.spec, copy, cd, pu


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", type=int, nargs="+", default=[10_000, 10_000_000])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--specs", nargs="+", default=DEFAULT_SPECS)
    ap.add_argument("--max-gb", type=float, default=6.0)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    wait = os.environ.get("OMP_WAIT_POLICY")
    print(f"torch {torch.__version__}, {threads} threads (OMP_WAIT_POLICY={wait}), float32 input")
    print(f"best of {args.repeats}; RandK, TopK and randk+Q keep K = d/100")
    cols = ["d", "n", "compressor", "copy s", "c+d s", "c+d/copy", "p+u s", "p+u/copy"]
    header = f"{cols[0]:>9} {cols[1]:>3} {cols[2]:<22}" + "".join(f" {h:>9}" for h in cols[3:])
    print(header)
    print("-" * len(header))
    skipped = []
    for d in args.dims:
        for n in args.workers:
            X = Randomness(0, "benchmark", 0, range(n)).uniform(d, torch.float32).sub_(0.5)
            for spec in args.specs:
                name = build(spec, d, n)
                need = n * d * BYTES_PER_ELEMENT.get(name.name, 32) / 1e9
                if need > args.max_gb:
                    skipped.append(f"{name.spec} at d={d}, n={n} (needs ~{need:.1f} GB > {args.max_gb:g} GB)")
                    print(f"{d:>9} {n:>3} {name.spec:<22} {'':>9}   skipped (~{need:.1f} GB)")
                    continue
                label, copy, cd, pu = measure(spec, X, args.repeats)
                row = f"{d:>9} {n:>3} {label:<22} {copy:>9.4f} {cd:>9.4f} {cd / copy:>9.2f}"
                print(row + f" {pu:>9.4f} {pu / copy:>9.2f}", flush=True)
            del X
    if skipped:
        print("\nskipped (estimated peak memory above --max-gb):")
        for line in skipped:
            print("  " + line)


if __name__ == "__main__":
    main()
