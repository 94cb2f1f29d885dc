"""Which collective for an aggregation: all-gather of packed messages vs all-reduce of the mean,
and gloo's ring all-gather vs a direct exchange.

W local processes (gloo, loopback, one torch thread each) time, per call (median of --repeats):

- ``gather d*4 B``: all-gather of a dense float32 message per rank (what a dense round sends),
  with gloo's ring all-gather (W - 1 steps, each rank forwarding what it received);
- ``direct d*4 B``: the same result by a direct exchange (``all_to_all`` with the rank's chunk
  as every input: it goes to the W - 1 others at once, one step; the same bytes per link);
- ``reduce f64`` / ``reduce f32``: all-reduce of a d-vector of float64 / float32 (the
  alternative topology for dense rounds: one collective, W-independent bytes per rank);
- ``2 collectives``: an int64 size slot all-gathered, then a randk:1 message (5 bytes for
  d = 123, a9a); ``1 collective``: the message alone (ring); ``1 direct``: the message by a
  direct exchange (what :mod:`marina.network.torch_distributed` does on gloo).

Also printed: the bytes each rank sends in each case (ring algorithms: all-gather (W-1) m,
all-reduce 2 (W-1)/W m for a message of m bytes). Several ranks share the machine's cores, so
compare ratios, not absolute figures.

Run: ``python benchmarks/collectives.py [--ranks 2 4] [--dims 123 100000] [--repeats 200]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.distributed as dist

from marina.testing import local_launch


def _time(fn, repeats: int) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _measure(d: int, world: int, repeats: int) -> dict[str, float]:
    """Median seconds of each collective for dimension d (see the module docstring)."""
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    dense, dense_out = torch.zeros(d * 4, dtype=torch.uint8), torch.empty(world * d * 4, dtype=torch.uint8)
    f64, f32 = torch.ones(d, dtype=torch.float64), torch.ones(d, dtype=torch.float32)
    size, size_out = torch.zeros(1, dtype=torch.int64), torch.empty(world, dtype=torch.int64)
    msg_len = (32 + max(1, (d - 1).bit_length()) + 7) // 8  # randk:1: a value and an index
    msg, msg_out = torch.zeros(msg_len, dtype=torch.uint8), torch.empty(world * msg_len, dtype=torch.uint8)

    def two() -> None:
        gather(size_out, size)
        gather(msg_out, msg)

    def direct(out: torch.Tensor, chunk: torch.Tensor):
        outs = list(out.view(world, *chunk.shape).unbind(0))
        return lambda: dist.all_to_all(outs, [chunk] * world)

    return {
        "gather d*4 B": _time(lambda: gather(dense_out, dense), repeats),
        "direct d*4 B": _time(direct(dense_out, dense), repeats),
        "reduce f64": _time(lambda: dist.all_reduce(f64), repeats),
        "reduce f32": _time(lambda: dist.all_reduce(f32), repeats),
        "2 collectives": _time(two, repeats),
        "1 collective": _time(lambda: gather(msg_out, msg), repeats),
        "1 direct": _time(direct(msg_out, msg), repeats),
        "msg bytes": msg_len,
    }


def rank_main(dims: list[int], repeats: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    out = {d: _measure(d, dist.get_world_size(), repeats) for d in dims}
    if dist.get_rank() == 0:
        print("RESULT " + json.dumps(out), flush=True)
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--dims", type=int, nargs="+", default=[123, 100_000])
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args()
    argv = [sys.executable, __file__, "--rank-job", json.dumps([args.dims, args.repeats])]
    print(f"gloo on loopback, {os.cpu_count()} CPU cores; median seconds per call (ms shown)")
    for W in args.ranks:
        procs = local_launch(argv, W, env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.PIPE)
        outs = [p.communicate(timeout=600)[0].decode() for p in procs]
        if any(p.returncode for p in procs):
            raise SystemExit(f"W = {W} failed: {outs}")
        line = next(x for x in outs[0].splitlines() if x.startswith("RESULT "))
        res = json.loads(line[len("RESULT ") :])
        for d, r in res.items():
            d = int(d)
            m = r["msg bytes"]
            print(
                f"W={W} d={d}: gather {1e3 * r['gather d*4 B']:.3f} ms, direct "
                f"{1e3 * r['direct d*4 B']:.3f} ms ({(W - 1) * 4 * d} B sent/rank) | "
                f"all-reduce f64 {1e3 * r['reduce f64']:.3f} ms ({2 * (W - 1) * 8 * d // W} B) | "
                f"all-reduce f32 {1e3 * r['reduce f32']:.3f} ms ({2 * (W - 1) * 4 * d // W} B) | "
                f"randk:1 two collectives {1e3 * r['2 collectives']:.3f} ms ({(W - 1) * (8 + m)} B) vs "
                f"one {1e3 * r['1 collective']:.3f} ms, one direct {1e3 * r['1 direct']:.3f} ms "
                f"({(W - 1) * m} B)"
            )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--rank-job":
        dims, repeats = json.loads(sys.argv[2])
        rank_main(dims, repeats)
    else:
        main()
