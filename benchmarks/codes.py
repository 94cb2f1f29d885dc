"""Time of packing and unpacking w-bit codes on the CPU: numpy against the byte plan.

:func:`marina.compressors.wire.pack_codes` takes numpy's ``unpackbits``/``packbits`` path on the
CPU up to about ``_NUMPY_CODES`` codes, more of wide codes (``wire._numpy_codes``),
:func:`~marina.compressors.wire.unpack_codes` numpy's reads (one unaligned word per code, shifted
and masked) up to 128 times as many (``wire._numpy_unpack``); rows of at most 56 bits go as one
64-bit word each, and the byte plan of tensor operations (the path of other devices) above.
For each (rows n, codes per row m, width w) this prints the best-of-R time of both paths (calls
interleaved, so load changes hit both alike) and their ratio, for RandK's index codes (17 bits
for d = 10^5) and a low-bit quantiser's (3 bits).

Run: ``python benchmarks/codes.py [--repeats R]``
"""

from __future__ import annotations

import argparse
import time

import torch

from marina.compressors import wire

CASES = [
    (1, 1, 7),
    (2, 1, 17),
    (1, 1000, 17),
    (4, 1000, 17),
    (1, 10_000, 17),
    (8, 1_000, 3),  # about the default limit (_NUMPY_CODES)
    (1, 30_000, 17),
    (2, 11_850, 21),  # RandK 1% of d = 1.2e6 on two ranks
    (1, 100_000, 17),
    (8, 30_000, 3),
]


def best_of(fn, paths: dict[str, int], repeats: int, inner: int) -> dict[str, float]:
    """Best time per call of ``fn`` on each path (a ``_NUMPY_CODES`` limit), the paths interleaved."""
    default, best = wire._NUMPY_CODES, dict.fromkeys(paths, float("inf"))
    try:
        for _ in range(repeats):
            for path, limit in paths.items():
                wire._NUMPY_CODES = limit
                t = time.perf_counter()
                for _ in range(inner):
                    fn()
                best[path] = min(best[path], (time.perf_counter() - t) / inner)
    finally:
        wire._NUMPY_CODES = default
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"{'n':>3} {'m':>7} {'w':>3}  {'op':6} {'numpy us':>10} {'byte plan us':>13} {'plan / numpy':>13}")
    print(f"default limit: {wire._NUMPY_CODES} codes (all rows) on numpy")
    for n, m, w in CASES:
        codes = torch.randint(0, 1 << w, (n, m), generator=torch.Generator().manual_seed(n * m + w))
        raw = wire.pack_codes(codes, w)
        inner = max(1, 20_000 // max(1, n * m))
        ops = (
            ("pack", lambda c=codes, w=w: wire.pack_codes(c, w)),
            ("unpack", lambda r=raw, m=m, w=w: wire.unpack_codes(r, m, w)),
        )
        for op, fn in ops:
            t = best_of(fn, {"numpy": 1 << 40, "plan": -1}, args.repeats, inner)
            print(
                f"{n:>3} {m:>7} {w:>3}  {op:6} {1e6 * t['numpy']:>10.1f} {1e6 * t['plan']:>13.1f} "
                f"{t['plan'] / t['numpy']:>12.2f}x"
            )


if __name__ == "__main__":
    main()
