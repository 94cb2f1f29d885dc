"""One rank of the gloo parity job of tests/test_torch_successors.py (run under torchrun's environment).

Every rank computes marina.run's trajectory of each successor on the whole problem (simulated,
n = world size), then trains its own shard with the marina.torch optimizer and writes the
comparison to ``<out>/rank<r>.json``. Arguments: ``<out> [name ...]`` (names: only these successors).
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist

from marina.testing import close_group

sys.path.insert(0, os.path.dirname(__file__))
from test_torch_optim import _closure, _data, _flat, _mlp
from test_torch_successors import CASES, M, _simulation, feed

STEPS, SEED, LR = 10, 5, 0.2


def main(out: str, names: list[str]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    x, y = _data(M * world)
    xs, ys = x[rank * M : (rank + 1) * M], y[rank * M : (rank + 1) * M]
    report = {}
    for name, (cls, comp, kwargs, extra) in CASES.items():
        if names and name not in names:
            continue
        ref = _simulation(name, x, y, world, STEPS, SEED, LR)
        model = _mlp()
        opt = cls(model.parameters(), compressor=comp, lr=LR, seed=SEED, local_size=M, **kwargs, **extra)
        skipped = computed = 0
        for _ in range(STEPS):
            drawn = getattr(opt, "participates", True)
            idx = feed(opt, name, SEED, rank, M)
            before = opt.problem.evaluations
            opt.step(_closure(model, opt, xs[idx], ys[idx]))
            ran = opt.problem.evaluations > before
            skipped += not drawn and not ran
            computed += drawn and ran
        row = ref.history.iloc[-2]
        report[name] = {
            "max_diff": float((_flat(model) - ref.x).abs().max()),
            "bits_up": [opt.bits_up, float(row["bits_up"])],
            "bits_down": [opt.bits_down, float(row["bits_down"])],
            "oracle_calls": [opt.oracle_calls, float(row["oracle_calls"])],
            "wire_bytes": opt.wire_bytes,
            "skipped": skipped,
            "computed": computed,
        }
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(report, f)
    close_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
