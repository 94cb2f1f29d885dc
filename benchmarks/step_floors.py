"""Algorithmic floors of the ``marina.torch`` optimizers' steps, in plain torch.

A floor is the fewest torch ops over d-sized tensors that one step of a method needs for one
worker (one process, no communication), written by hand from the algorithm lines of the method's
class (:mod:`marina.methods`: dcgd, diana, marina, ef21, dasha) and the step-to-round map of
:mod:`marina.torch.optim`; no marina code runs. ``benchmarks/torch_optim.py --floors`` times them
after real closures, next to ``torch.optim.SGD(momentum=0.9).step()``.

What every floor assumes (the work any implementation must do, and no more):

- the parameters are views of one flat float32 buffer ``x``, written in place;
- the gradients arrive per parameter (``p.grad``); the closure zeroes them with torch's default
  ``set_to_none``, so a gradient needed at the next step is kept by reference, never copied; they
  become one flat vector only where a method reads them densely (the EF21 family's difference,
  the momenta of EF21-SGDM and DASHA-MVR); RandK's K entries are gathered per parameter;
- RandK's index set is a fixed sorted index, split by parameter once (the draw is not counted);
  the TopK selection is counted (:data:`SELECTORS`);
- n = 1: the server's g^k and the worker's g_i^k (DIANA's h^k and h_i^k) are one vector (the same
  operations on the same values);
- a step whose closure runs at x^{k+1} and that then moves keeps x^{k+1} (a copy: restoring a
  failed step and checkpoints need it) and writes x^{k+2} = x^{k+1} - gamma g into the parameters
  with marina's two roundings (``torch.mul(g, gamma)``, then the difference);
- the MARINA family's compressed steps (c_k = 0); its dense rounds (probability p = K/d) are not
  counted; buffers are allocated once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from marina.compressors.sparse import largest_by_threshold

Closure = Callable[[], object]


class Layout:
    """The parameters made views of one flat buffer :attr:`x` (their ``.data`` replaced), with the
    slice of x each one occupies."""

    def __init__(self, params: Sequence[Tensor]) -> None:
        self.params = list(params)
        numels = [p.numel() for p in self.params]
        with torch.no_grad():
            self.x = torch.cat([p.detach().reshape(-1) for p in self.params])
            for p, chunk in zip(self.params, self.x.split(numels)):
                p.data = chunk.view_as(p)
        ends = torch.tensor(numels).cumsum(0).tolist()
        self.bounds = [(end - n, end) for n, end in zip(numels, ends)]
        self.d = self.x.numel()

    def grads(self) -> list[Tensor]:
        """The gradients of the last closure, flat views (no copy)."""
        return [p.grad.reshape(-1) for p in self.params]

    def split(self, idx: Tensor) -> list[tuple[int, Tensor, slice]]:
        """The sorted flat index ``idx`` by parameter: (parameter, its local indices, the slice of
        ``idx`` they fill); part of the index draw, done once."""
        starts = torch.tensor([a for a, _ in self.bounds])
        cuts = torch.searchsorted(idx, starts).tolist() + [idx.numel()]
        return [
            (i, idx[lo:hi] - self.bounds[i][0], slice(lo, hi))
            for i, (lo, hi) in enumerate(zip(cuts[:-1], cuts[1:]))
            if hi > lo
        ]

    def each(self, op: Callable[..., object], grads: list[Tensor], *flat: Tensor) -> None:
        """``op(grad_p, *slices)`` for every parameter p, the slices of the flat buffers at p."""
        for (a, b), grad in zip(self.bounds, grads):
            op(grad, *(t[a:b] for t in flat))


@dataclass(frozen=True)
class Coefficients:
    """The methods' constants: gamma (lr), RandK's d/K, DIANA's alpha, DASHA's a, EF21-SGDM's
    eta, DASHA-MVR's b. Their values do not change the work."""

    gamma: float
    scale: float
    alpha: float = 0.5
    a: float = 0.5
    eta: float = 0.5
    b: float = 0.5


# -- TopK by magnitude: exact selections of the K largest |v| (indices in any order) -----------------
def _topk(a: Tensor, k: int) -> Tensor:
    return torch.topk(a, k, sorted=False).indices


def _kthvalue_nonzero(a: Tensor, k: int) -> Tensor:
    threshold = torch.kthvalue(a, a.numel() - k + 1).values
    idx = torch.nonzero(a >= threshold).reshape(-1)
    return idx if idx.numel() == k else _topk(a, k)  # ties at the threshold


def _sampled(at_least: Callable[[Tensor, float], Tensor]) -> Callable[[Tensor, int], Tensor]:
    """A threshold from a strided subsample of about 2^14 entries (its order statistic for about
    1.25 k of the d), the candidates a >= t, a topk of the candidates: every other entry is
    < t <= the k-th largest, so it is a topk of a (a full topk when fewer than k pass)."""

    def select(a: Tensor, k: int) -> Tensor:
        d = a.numel()
        sub = a[:: max(1, d // 16384)]
        s = sub.numel()
        threshold = float(torch.kthvalue(sub, s - min(s, int(s * k / d * 1.25) + 8) + 1).values)
        candidates = at_least(a, threshold)
        if candidates.numel() < k:
            return _topk(a, k)
        return candidates[_topk(a.index_select(0, candidates), k)]

    return select


def _bits_or_topk(a: Tensor, k: int) -> Tensor:
    """TopK's own selection (:func:`marina.compressors.sparse.largest_by_threshold`: the bits of
    the magnitudes compared as integers), ``torch.topk`` where it declines."""
    idx = largest_by_threshold(a, k)
    return _topk(a, k) if idx is None else idx


SELECTORS: dict[str, Callable[[Tensor, int], Tensor]] = {
    "torch.topk": _topk,
    "kthvalue + nonzero": _kthvalue_nonzero,
    "sampled threshold + nonzero": _sampled(lambda a, t: torch.nonzero(a >= t).reshape(-1)),
    "sampled threshold + numpy flatnonzero": _sampled(
        lambda a, t: torch.from_numpy(np.flatnonzero(a.numpy() >= np.float32(t)))
    ),
    "sampled threshold on the bits (marina's)": _bits_or_topk,
}
"""Exact selections of the k largest entries of a non-negative 1-D CPU float32 tensor: the EF21
floors take the cheapest measured (``torch_optim.py --floors`` times each)."""


class Floor:
    """One method's step for one worker: :meth:`start` (the dense start, not a floor), then
    :meth:`step`. ``idx`` is RandK's fixed sorted index (K entries), ``select`` the TopK selection.

    State tensors (public, the tests set them): ``g`` the estimator g^k (= g_i^k), ``prev`` the
    gradients kept from the last step, ``h`` a shift or momentum, ``x_prev`` x^k."""

    ops = ""
    """The work counted, one line."""
    evaluations = 1
    """Closure calls per step."""

    def __init__(
        self,
        layout: Layout,
        idx: Tensor,
        coef: Coefficients,
        select: Callable[[Tensor, int], Tensor] = _topk,
    ) -> None:
        self.layout, self.x, self.coef, self.select = layout, layout.x, coef, select
        self.idx, self.pieces, self.k = idx, layout.split(idx), idx.numel()
        d = layout.d
        self.g, self.keep, self.t, self.h, self.x_prev = (torch.zeros(d) for _ in range(5))
        self.kbuf = [torch.empty(self.k) for _ in range(3)]
        self.prev: list[Tensor] = []

    def start(self, closure: Closure) -> None:
        """Step 0: every state vector from the gradient at x^0, then x^1 = x^0 - gamma g^0."""
        closure()
        self.prev = self.layout.grads()
        self.layout.each(lambda grad, g, h: (g.copy_(grad), h.copy_(grad)), self.prev, self.g, self.h)
        self.x_prev.copy_(self.x)
        self._write_next(self.x_prev)

    def step(self, closure: Closure) -> None:
        raise NotImplementedError

    # -- the shared pieces ---------------------------------------------------------------------------
    def _gather(self, grads: list[Tensor], out: Tensor) -> Tensor:
        """out <- the flat gradient at idx, read from the per-parameter gradients."""
        for i, local, where in self.pieces:
            torch.index_select(grads[i], 0, local, out=out[where])
        return out

    def _write_next(self, point: Tensor) -> None:
        """Parameters <- point - gamma g (marina's two roundings)."""
        torch.mul(self.g, self.coef.gamma, out=self.t)
        torch.sub(point, self.t, out=self.x)

    def _keep_and_move(self) -> None:
        """Keep x^{k+1} (the parameters), write x^{k+2} = x^{k+1} - gamma g^{k+1}."""
        self.keep.copy_(self.x)
        self._write_next(self.keep)

    def _two_points(self, closure: Closure) -> tuple[list[Tensor], list[Tensor]]:
        """VR steps: the gradients at x^{k+1} (the parameters), then x^{k+1} kept, x^k written into
        the parameters and the gradients there (one batch: the closure's)."""
        closure()
        new = self.layout.grads()
        self.keep.copy_(self.x)
        self.x.copy_(self.x_prev)
        closure()
        return new, self.layout.grads()

    def _move_from_kept(self) -> None:
        """VR steps: x^{k+2} = x^{k+1} - gamma g^{k+1}; x^{k+1} becomes x^k (buffers swapped)."""
        self._write_next(self.keep)
        self.x_prev, self.keep = self.keep, self.x_prev

    def _randk_add(self, new: Tensor, old: Tensor, estimate: Tensor | None = None) -> None:
        """g += RandK(new - old - a (g - old)) at the K entries (``estimate`` None: no a-term);
        ``new`` and ``old`` hold the K gathered values, ``new`` and ``estimate`` are overwritten."""
        if estimate is not None:
            gi = torch.index_select(self.g, 0, self.idx, out=estimate)
            torch.mul(torch.sub(gi, old, out=gi), self.coef.a, out=gi)
        torch.sub(new, old, out=new)
        if estimate is not None:
            torch.sub(new, estimate, out=new)
        self.g.index_add_(0, self.idx, torch.mul(new, self.coef.scale, out=new))

    def _feedback(self, diff: Tensor) -> None:
        """The EF21 family's steps 4-6 for one worker: g += TopK(diff), then the move."""
        top = self.select(torch.abs(diff, out=self.t), self.k)
        self.g.index_add_(0, top, diff.index_select(0, top))
        self._keep_and_move()


class QGDFloor(Floor):
    ops = "gather K, mul K (d/K), mul K (-gamma), index_add K into x (x^k is the state: no copy)"

    def step(self, closure: Closure) -> None:
        closure()
        v = self._gather(self.layout.grads(), self.kbuf[0])
        torch.mul(torch.mul(v, self.coef.scale, out=v), -self.coef.gamma, out=v)
        self.x.index_add_(0, self.idx, v)  # x + -(gamma v) = x - gamma v; 0 elsewhere


class DianaFloor(Floor):
    ops = "gather 2xK, 5 ops on K, mul d (gamma h), index_copy K (gamma g), sub d, index_add K (h)"

    def step(self, closure: Closure) -> None:
        closure()
        delta, at = self._gather(self.layout.grads(), self.kbuf[0]), self.kbuf[1]
        torch.index_select(self.h, 0, self.idx, out=at)
        torch.mul(torch.sub(delta, at, out=delta), self.coef.scale, out=delta)  # Q(grad - h)
        torch.mul(self.h, self.coef.gamma, out=self.t)  # gamma g off the K entries (g = h there)
        self.t.index_copy_(0, self.idx, torch.mul(torch.add(at, delta, out=at), self.coef.gamma, out=at))
        torch.sub(self.x, self.t, out=self.x)
        self.h.index_add_(0, self.idx, torch.mul(delta, self.coef.alpha, out=delta))


class MarinaFloor(Floor):
    ops = "gather 2xK, sub K, mul K, index_add K, copy d (x^{k+1}), mul d, sub d"
    a_term = False
    """DASHA's message (its h^k is the kept gradient, as MARINA's grad f_i(x^k))."""

    def step(self, closure: Closure) -> None:
        closure()
        grads = self.layout.grads()
        new, old, gi = self.kbuf
        self._randk_add(self._gather(grads, new), self._gather(self.prev, old), gi if self.a_term else None)
        self.prev = grads
        self._keep_and_move()


class VRMarinaFloor(Floor):
    ops = "copy d (x^{k+1}), copy d (x^k in), gather 2xK, sub K, mul K, index_add K, mul d, sub d"
    evaluations = 2

    def step(self, closure: Closure) -> None:
        new, old = self._two_points(closure)
        self._randk_add(self._gather(new, self.kbuf[0]), self._gather(old, self.kbuf[1]))
        self._move_from_kept()


class EF21Floor(Floor):
    ops = "sub d (grads - g, per parameter), abs d, TopK, gather K, index_add K, copy d, mul d, sub d"

    def step(self, closure: Closure) -> None:
        closure()
        diff = self.h  # EF21 has no h: its buffer holds grad - g
        self.layout.each(lambda grad, g, out: torch.sub(grad, g, out=out), self.layout.grads(), self.g, diff)
        self._feedback(diff)


class EF21SGDMFloor(Floor):
    ops = "mul d, add d (v, per parameter), sub d, abs d, TopK, gather K, index_add K, copy d, mul d, sub d"

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.diff = torch.empty_like(self.x)

    def step(self, closure: Closure) -> None:
        closure()
        v, eta = self.h, self.coef.eta
        v.mul_(1.0 - eta)  # v = (1 - eta) v + eta grad, as marina.methods.EF21SGDM
        self.layout.each(lambda grad, vs: vs.add_(grad, alpha=eta), self.layout.grads(), v)
        self._feedback(torch.sub(v, self.g, out=self.diff))


class DashaFloor(MarinaFloor):
    ops = "gather 3xK, 5 ops on K, index_add K, copy d, mul d, sub d (h = the kept grads)"
    a_term = True


class DashaMVRFloor(Floor):
    ops = "copy d, copy d, sub d, add d (h, per parameter), gather 3xK, 5 ops on K, index_add K, mul d, sub d"
    evaluations = 2

    def step(self, closure: Closure) -> None:
        new_grads, old_grads = self._two_points(closure)
        new, old, gi = self.kbuf
        h, beta = self.h, 1.0 - self.coef.b
        torch.index_select(h, 0, self.idx, out=old)  # h^k at the K entries
        # h^{k+1} = new + (1 - b)(h^k - old grad), as marina.methods.DASHAMVR
        self.layout.each(lambda grad, hs: torch.sub(hs, grad, out=hs), old_grads, h)
        self.layout.each(lambda grad, hs: torch.add(grad, hs, alpha=beta, out=hs), new_grads, h)
        self._randk_add(torch.index_select(h, 0, self.idx, out=new), old, gi)
        self._move_from_kept()


FLOORS: dict[str, type[Floor]] = {
    "QGD": QGDFloor,
    "DIANA": DianaFloor,
    "MARINA": MarinaFloor,
    "VRMARINA": VRMarinaFloor,
    "PPMARINA": MarinaFloor,  # n = 1: r = 1 client drawn, always this one: MARINA's step
    "EF21": EF21Floor,
    "EF21SGD": EF21Floor,  # the closure's minibatch changes no op
    "EF21SGDM": EF21SGDMFloor,
    "DASHA": DashaFloor,
    "DASHAMVR": DashaMVRFloor,
}
"""The floor of each optimizer of ``torch_optim.OWN``."""
