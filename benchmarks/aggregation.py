"""Time of one torch-distributed aggregation, per kind of plan, against a baseline source tree.

Runs :meth:`marina.network.TorchDistributedNetwork.aggregate` in a one-process gloo group (the
encoding, the collectives and the decoding of one rank; no peer to wait for) for the cases
below, each in a fresh process with one torch thread, and prints the median microseconds per
aggregation. With ``--baseline SRC`` (a source tree, e.g. ``git archive <commit> src | tar -x
-C /tmp/old``) every case also runs with ``PYTHONPATH=SRC/src``, interleaved with the current
code, and the table shows both and their ratio (current / baseline), so both see the same load.

Run: ``python benchmarks/aggregation.py [--baseline DIR] [--repeats 5] [--calls 300]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# name: (compressor, d, workers on the rank, multiplicity, with local rows, exchange sizes)
CASES = {
    "randk:1, 1 worker (uniform)": ("randk:1", 10**5, 1, None, False, False),
    "randk:3, 8 workers (bit-packed)": ("randk:3", 10**5, 8, None, False, False),
    "identity d=1000, 4 workers": ("identity", 1000, 4, None, False, False),
    "randk:3, 8 workers, local rows": ("randk:3", 10**5, 8, None, True, False),
    "randk:3, PP multiplicity": ("randk:3", 10**5, 8, [2, 0, 1, 0, 3, 1, 0, 1], False, False),
    "bernoulli:0.5 (sizes exchanged)": ("bernoulli:0.5", 1000, 4, None, False, False),
    "randk:3, exchange_sizes=True": ("randk:3", 10**5, 8, None, False, True),
}


def child(name: str, calls: int) -> None:
    """Time ``calls`` aggregations of case ``name``; print microseconds per call as JSON."""
    import torch
    import torch.distributed as dist

    from marina import compressors
    from marina.network.torch_distributed import TorchDistributedNetwork
    from marina.testing import free_port

    torch.set_num_threads(1)
    spec, d, n, mult, local, exchange = CASES[name]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    net = TorchDistributedNetwork(n, 0, exchange_sizes=exchange)
    Q = compressors.get(spec, workers=n)
    X = torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    m = None if mult is None else torch.tensor(mult)
    aggregate = net.aggregate_with_local if local else net.aggregate_mean
    for k in range(10):  # warm-up (plans cached, allocator warm)
        aggregate(Q, X, k, multiplicity=m)
    t0 = time.perf_counter()
    for k in range(calls):
        aggregate(Q, X, 10 + k, multiplicity=m)
    print(json.dumps((time.perf_counter() - t0) / calls * 1e6))
    dist.destroy_process_group()


def run(name: str, calls: int, src: str) -> float:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.path.join(src, "src"))
    out = subprocess.run(
        [sys.executable, __file__, "--child", name, "--calls", str(calls)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default=None, help="a source tree to time interleaved against")
    ap.add_argument("--repeats", type=int, default=5, help="runs per case; the median is shown")
    ap.add_argument("--calls", type=int, default=300, help="aggregations timed per run")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        child(args.child, args.calls)
        return
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    trees = {"current": here} if args.baseline is None else {"current": here, "baseline": args.baseline}
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeats):
        for name in CASES:
            for label, src in trees.items():
                times.setdefault((name, label), []).append(run(name, args.calls, src))
    print(
        f"{'case':34} "
        + " ".join(f"{label + ' us':>12}" for label in trees)
        + ("  ratio" if args.baseline else "")
    )
    for name in CASES:
        med = {label: statistics.median(times[name, label]) for label in trees}
        ratio = f"  {med['current'] / med['baseline']:.3f}" if args.baseline else ""
        print(f"{name:34} " + " ".join(f"{med[label]:12.1f}" for label in trees) + ratio)


if __name__ == "__main__":
    main()
