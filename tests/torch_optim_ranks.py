"""One rank of the gloo parity job of tests/test_torch_optim.py (run under torchrun's environment).

Every rank computes marina.run's trajectory on the whole problem (simulated, n = world size),
then trains its own shard with the marina.torch optimizer and writes the comparison to
``<out>/rank<r>.json``. ``python torch_optim_ranks.py OUT cuda`` trains on ``cuda:LOCAL_RANK``
with NCCL instead (benchmarks/device_check.py); the reference stays on the CPU.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist

import marina
import marina.torch as mt
from marina.errors import ConfigError
from marina.problems.torch_model import TorchModelProblem
from marina.rng import Randomness
from marina.testing import close_group

sys.path.insert(0, os.path.dirname(__file__))
from test_torch_optim import _closure, _data, _flat, _mlp

M, STEPS, SEED, LR = 10, 10, 5, 0.2
CASES = {
    "marina": (mt.MARINA, {"p": 0.4}, {}),
    "vr-marina": (mt.VRMARINA, {"p": 0.4, "batch_size": 3}, {"online": False, "local_size": M}),
    "diana": (mt.DIANA, {}, {}),
    "pp-marina": (mt.PPMARINA, {"p": 0.3, "clients": 1}, {}),
}


def main(out: str, device: str = "cpu") -> None:
    torch.set_num_threads(1)
    dev = torch.device("cpu")
    if device == "cuda":
        dev = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(dev)
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    x, y = _data(M * world)
    report = {}
    for name, (cls, kwargs, extra) in CASES.items():
        prob = TorchModelProblem(_mlp(), (x, y), workers=world, init_seed=None, worker_batching="loop")
        ref = marina.run(
            method=name,
            problem=prob,
            compressor="randk:7",
            iterations=STEPS,
            seed=SEED,
            stepsize=LR,
            log_every=1,
            **kwargs,
        )
        model = _mlp().to(dev)
        opt = cls(model.parameters(), compressor="randk:7", lr=LR, seed=SEED, **kwargs, **extra)
        xs, ys = x[rank * M : (rank + 1) * M].to(dev), y[rank * M : (rank + 1) * M].to(dev)
        skipped = 0
        for _ in range(STEPS):
            if name == "pp-marina" and not opt.participates:
                before = opt.problem.evaluations
                opt.step(_closure(model, opt, xs, ys))
                skipped += opt.problem.evaluations == before  # no closure call on this rank
                continue
            if opt.coin is False and "batch_size" in kwargs:
                idx = Randomness(SEED, "minibatch", opt.method.k, [rank]).sample_without_replacement(M, 3)[0]
                idx = idx.to(dev)
                opt.step(_closure(model, opt, xs[idx], ys[idx]))
            else:
                opt.step(_closure(model, opt, xs, ys))
        row = ref.history.iloc[-2 if name != "diana" else -1]
        report[name] = {
            "max_diff": float((_flat(model).cpu() - ref.x).abs().max()),
            "bits_up": [opt.bits_up, float(row["bits_up"])],
            "bits_down": [opt.bits_down, float(row["bits_down"])],
            "wire_bytes": opt.wire_bytes,
            "skipped": skipped,
        }
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(report, f)
    close_group()


def disagree(out: str) -> None:
    """Each case: the ranks construct optimizers that differ in one respect and take a step; every
    rank records the error it raised. Then an agreeing pair steps (the group is still usable)."""
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    x, y = _data(10)
    wide = torch.nn.Sequential(torch.nn.Linear(7, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
    cases = {
        "d": lambda: (
            mt.MARINA((_mlp() if rank == 0 else wide).parameters(), compressor="randk:7"),
            rank == 0,
        ),
        "compressor": lambda: (mt.MARINA(_mlp().parameters(), compressor=f"randk:{7 + rank}"), True),
        "method": lambda: ((mt.MARINA if rank == 0 else mt.DASHA)(_mlp().parameters(), "randk:7"), True),
        "p": lambda: (mt.MARINA(_mlp().parameters(), "randk:7", p=0.4 + 0.1 * rank), True),
        "agreeing": lambda: (mt.MARINA(_mlp().parameters(), "randk:7", p=0.4), True),
    }
    report = {}
    for case, make in cases.items():
        opt, narrow = make()
        model_params = opt.param_groups[0]["params"]
        xs = x if narrow else torch.cat([x, x[:, :1]], dim=1)

        def closure(opt=opt, xs=xs, ps=model_params):
            opt.zero_grad()
            h = torch.tanh(xs @ ps[0].T + ps[1])
            loss = torch.nn.functional.cross_entropy(h @ ps[2].T + ps[3], y)
            loss.backward()
            return loss

        try:
            for _ in range(2):
                opt.step(closure)
            report[case] = "ok"
        except ConfigError as err:
            report[case] = str(err)
    with open(os.path.join(out, f"disagree{rank}.json"), "w") as f:
        json.dump(report, f)
    close_group()


if __name__ == "__main__":
    disagree(sys.argv[1]) if sys.argv[2:] == ["disagree"] else main(*sys.argv[1:3])
