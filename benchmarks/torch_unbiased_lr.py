"""The largest lr that still trains, plain SGD against QGD with RandK (unbiased, omega = d/K - 1).

A 738-parameter tanh MLP on 256 synthetic points (full batch, 200 steps); an lr counts when the
final loss is finite and below the first for 3 compressor seeds; lrs on a x2 grid. Prints, per K,
the ratio of QGD's largest lr to SGD's next to 1/(1 + omega) (docs/training.md, "Learning rate per
compressor"; the figures are in benchmarks/README.md).

Run: ``python benchmarks/torch_unbiased_lr.py``
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import marina.torch as mt


def _model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(20, 32), nn.Tanh(), nn.Linear(32, 2))


def largest_lr(make, X: torch.Tensor, Y: torch.Tensor, steps: int = 200) -> float | None:
    best = None
    for e in range(-8, 8):
        lr = 2.0**e
        for seed in range(3):
            model = _model()
            opt = make(model.parameters(), lr, seed)
            if hasattr(opt, "divergence_factor"):
                opt.divergence_factor = None

            def closure(model=model, opt=opt):
                opt.zero_grad()
                loss = F.cross_entropy(model(X), Y)
                loss.backward()
                return loss

            with torch.no_grad():
                first = float(F.cross_entropy(model(X), Y))
            for _ in range(steps):
                opt.step(closure)
            with torch.no_grad():
                last = float(F.cross_entropy(model(X), Y))
            if not (math.isfinite(last) and last < first):
                break
        else:
            best = lr
    return best


def main() -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(256, 20, generator=g)
    Y = (X[:, :3].sum(1) > 0).long()
    d = sum(p.numel() for p in _model().parameters())
    sgd = largest_lr(lambda ps, lr, s: torch.optim.SGD(ps, lr=lr), X, Y)
    print(f"d = {d}; SGD's largest lr {sgd}")
    for K in (d // 2, d // 4, d // 10):
        omega = d / K - 1
        q = largest_lr(lambda ps, lr, s, K=K: mt.QGD(ps, compressor=f"randk:{K}", lr=lr, seed=s), X, Y)
        ratio = q / sgd
        target = 1 / (1 + omega)
        print(
            f"randk:{K} (omega {omega:.2f}): largest lr {q}, {ratio:.3f} of SGD's; 1/(1+omega) {target:.3f}"
        )


if __name__ == "__main__":
    main()
