"""benchmarks/step_floors.py: each floor's step computes what its method's update computes, against
the update written densely from the method's algorithm lines (RandK as a mask times d/K, TopK from
a sort of the magnitudes), bit for bit; and the TopK selections keep K largest magnitudes.

The coefficients the floors may apply with a fused multiply-add (DASHA-MVR's (1 - b), EF21-SGDM's
eta) are powers of two, so the product is exact and fused or not gives the same bits; gamma and
d/K are not (the move's two roundings are the same ops on both sides)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import step_floors as sf  # noqa: E402

SHAPES = [(3, 4), (5,), (2, 3, 2)]
D, K = 29, 5
COEF = sf.Coefficients(gamma=0.1, scale=D / K, alpha=0.25, a=0.25, eta=0.5, b=0.5)


def _setup(name: str, gen: torch.Generator):
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in SHAPES]
    idx = torch.randperm(D, generator=gen)[:K].sort().values
    floor = sf.FLOORS[name](sf.Layout(params), idx, COEF)
    prev = torch.randn(D, generator=gen)
    floor.prev = list(prev.split([p.numel() for p in params]))
    for t in (floor.g, floor.h, floor.x_prev):
        t.copy_(torch.randn(D, generator=gen))
    state = {"x": floor.x.clone(), "g": floor.g.clone(), "h": floor.h.clone(), "x_prev": floor.x_prev.clone()}
    return params, idx, floor, prev, state


def _closure(params, grads: list[torch.Tensor], seen: list[torch.Tensor]):
    """Each call sets fresh per-parameter gradients (as backward after zero_grad(set_to_none))
    and records the parameters it was evaluated at."""
    calls = iter(grads)

    def closure():
        seen.append(torch.cat([p.detach().reshape(-1) for p in params]))
        for p, g in zip(params, next(calls).split([p.numel() for p in params])):
            p.grad = g.reshape(p.shape).clone()

    return closure


def _reference(
    name: str, idx: torch.Tensor, s: dict, prev: torch.Tensor, new: torch.Tensor, old: torch.Tensor
):
    """The method's update densely: (x after the step, g, h or None, x the closures saw)."""
    c, zero = COEF, torch.zeros(())
    mask = torch.zeros(D, dtype=torch.bool).index_fill_(0, idx, True)

    def randk(v):  # Q(v) = (d/K) sum_{j in S} v_j e_j
        return torch.where(mask, v * c.scale, zero)

    def topk(v):  # the K largest |v|, unscaled
        keep = torch.zeros(D, dtype=torch.bool)
        keep[v.abs().argsort(descending=True)[:K]] = True
        return torch.where(keep, v, zero)

    x, g, h = s["x"], s["g"], None  # h: DIANA's shift, EF21-SGDM's momentum, DASHA-MVR's h
    if name == "QGD":  # x^{k+1} = x^k - gamma Q(grad f(x^k))
        return x - randk(new) * c.gamma, None, None, [x]
    if name == "DIANA":  # Delta = Q(grad - h), g = h + Delta, x - gamma g, h + alpha Delta
        delta = randk(new - s["h"])
        return x - (s["h"] + delta) * c.gamma, None, s["h"] + c.alpha * delta, [x]
    if name in ("MARINA", "PPMARINA"):  # g^{k+1} = g^k + Q(grad f(x^{k+1}) - grad f(x^k))
        g = g + randk(new - prev)
    elif name == "VRMARINA":  # the same on one batch at both points
        g = g + randk(new - old)
    elif name in ("EF21", "EF21SGD"):  # g + C(grad - g)
        g = g + topk(new - g)
    elif name == "EF21SGDM":  # v = (1 - eta) v + eta grad, g + C(v - g)
        h = (1 - c.eta) * s["h"] + c.eta * new
        g = g + topk(h - g)
    elif name == "DASHA":  # h^{k+1} = grad; g + Q(h^{k+1} - h^k - a (g - h^k))
        g = g + randk(new - prev - c.a * (g - prev))
    elif name == "DASHAMVR":  # h^{k+1} = new + (1 - b)(h^k - old)
        h = new + (1 - c.b) * (s["h"] - old)
        g = g + randk(h - s["h"] - c.a * (g - s["h"]))
    seen = [x, s["x_prev"]] if name in ("VRMARINA", "DASHAMVR") else [x]
    return x - g * c.gamma, g, h, seen


@pytest.mark.parametrize("name", list(sf.FLOORS))
def test_floor_step_is_the_method_update(name: str, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    params, idx, floor, prev, state = _setup(name, gen)
    new, old = torch.randn(D, generator=gen), torch.randn(D, generator=gen)
    seen: list[torch.Tensor] = []
    floor.step(_closure(params, [new, old][: floor.evaluations], seen))
    x, g, h, points = _reference(name, idx, state, prev, new, old)
    assert len(seen) == floor.evaluations == len(points)
    for got, want in zip(seen, points):
        assert torch.equal(got, want)
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    assert torch.equal(flat, x) and torch.equal(floor.x, x)  # the parameters hold the next point
    if g is not None:  # the estimator, and x^{k+1} kept (x^k of the next step)
        assert torch.equal(floor.g, g)
        assert torch.equal(floor.x_prev if floor.evaluations == 2 else floor.keep, state["x"])
    if h is not None:
        assert torch.equal(floor.h, h)
    if name in ("MARINA", "PPMARINA", "DASHA"):  # this step's gradients kept for the next
        assert torch.equal(torch.cat(floor.prev), new)


def test_floors_cover_every_own_optimizer() -> None:
    import torch_optim

    assert set(sf.FLOORS) == set(torch_optim.OWN) - {"sgd-momentum"}
    assert all(sf.FLOORS[name].ops for name in sf.FLOORS)


@pytest.mark.parametrize("selector", list(sf.SELECTORS))
@pytest.mark.parametrize("ties", [False, True])
def test_selectors_keep_k_largest(selector: str, ties: bool, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    d, k = 40_000, 400
    a = torch.randint(0, 50, (d,), generator=gen).float() if ties else torch.rand(d, generator=gen)
    got = sf.SELECTORS[selector](a, k)
    assert got.numel() == k == got.unique().numel()
    assert torch.equal(a[got].sort().values, a.sort().values[-k:])
