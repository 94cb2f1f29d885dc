"""Continuous distributions drawn from :class:`marina.rng.Randomness` (no global generator).

Row ``r`` of every draw belongs to global worker ``rng.worker_ids[r]`` (or to ``SHARED``), so a
process hosting a subset of workers draws exactly the rows that the full simulation draws.
Used by the data splits (Dirichlet label skew) and the synthetic problem family.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from marina.rng import Randomness, stream_id

__all__ = ["dirichlet", "normal"]


def normal(rng: Randomness, cols: int) -> Tensor:
    """(rows, cols) float64 standard normal numbers (Box-Muller on two uniform draws)."""
    u1 = rng.uniform(cols)
    u2 = rng.uniform(cols)
    radius = torch.sqrt(-2.0 * torch.log1p(-u1))  # 1 - u1 in (0, 1]: finite radius
    return radius * torch.cos((2.0 * math.pi) * u2)


def log_gamma(rng: Randomness, shape: float | Tensor, cols: int) -> Tensor:
    """(rows, cols) float64 logarithms of Gamma(shape, 1) variates; ``shape`` a float or (cols,).

    Marsaglia & Tsang (2000), "A simple method for generating gamma variables": for shape a >= 1
    draw x ~ N(0, 1), v = (1 + c x)^3 with d = a - 1/3, c = 1/sqrt(9 d), accept d v when
    log U < x^2/2 + d - d v + d log v. For a < 1 use Gamma(a) = Gamma(a + 1) U^(1/a), kept in
    log space so tiny shapes (a = 0.01) do not underflow.

    Rejected entries are redrawn (acceptance > 95% per attempt). Attempt k draws from its own
    keyed object (stream derived from ``rng``'s stream and call counter, round k), and ``rng``
    itself advances by exactly one call, so every entry is a function of (seed, stream, call,
    worker, column) alone: how many attempts other rows needed never matters, and a process
    hosting a subset of the workers draws exactly their rows.
    """
    a = torch.as_tensor(shape, dtype=torch.float64, device=rng.device).expand(cols)
    if not bool((a > 0).all()):
        raise ValueError(f"gamma shape must be > 0, got min {float(a.min())}")
    small = a < 1.0
    d = torch.where(small, a + 1.0, a) - 1.0 / 3.0
    c = 1.0 / torch.sqrt(9.0 * d)
    stream = f"{stream_id(rng.stream)}/gamma/{rng.calls}"
    rng.advance(1)
    attempt = lambda k: Randomness(rng.seed, stream, k, rng.worker_ids, rng.device)
    out = torch.full((rng.n_rows, cols), float("nan"), dtype=torch.float64, device=rng.device)
    todo = torch.ones_like(out, dtype=torch.bool)
    k = 0
    while bool(todo.any()):
        sub = attempt(k)
        k += 1
        x = normal(sub, cols)
        u = sub.uniform(cols)
        v = (1.0 + c * x) ** 3
        ok = v > 0
        logv = torch.log(torch.where(ok, v, torch.ones_like(v)))
        ok &= torch.log1p(-u) < 0.5 * x * x + d - d * v + d * logv
        take = ok & todo
        out = torch.where(take, torch.log(d) + logv, out)
        todo &= ~take
    if bool(small.any()):
        boost = attempt(-2).uniform(cols)  # U for Gamma(a) = Gamma(a + 1) U^(1/a)
        out = out + torch.where(small, torch.log1p(-boost) / a, torch.zeros_like(a))
    return out


def dirichlet(rng: Randomness, concentration: Tensor) -> Tensor:
    """(rows, K) float64: each row an independent Dirichlet(concentration) vector.

    Normalised Gamma(concentration_k) variates, computed as a softmax of their logarithms
    (stable for concentrations far below 1).
    """
    conc = concentration.to(torch.float64).reshape(-1)
    return torch.softmax(log_gamma(rng, conc, conc.numel()), dim=1)
