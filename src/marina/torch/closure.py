"""A user's parameters and ``step(closure)`` seen through marina's Problem protocol.

:class:`ClosureProblem` is one worker (this rank): its oracles write the requested point into
the parameters, set every ``p.grad`` to None, call the closure of the current step (which
computes the loss of the current batch and calls backward) and read the gradients where
autograd left them (:class:`ParamGrads`: no copy until a consumer needs the concatenated row).
So a gradient kept from an earlier evaluation (MARINA's grad f_i(x^k)) never changes, whether
the closure zeroes the grads with ``set_to_none`` or in place. Which samples the
closure uses is the training loop's business: the index draws of the methods (``idx``) are
ignored, and the loop reads the coin (``optimizer.coin``) to feed the large batch or the full
local pass on dense rounds.

Several evaluations in one step (VR-MARINA's difference at x^{k+1} and x^k on the same batch,
PP-MARINA's client recomputing grad f_i(x^k)) see the same randomness and leave the buffers as
after ONE evaluation: before the first, the torch RNG states (CPU, and the parameters' CUDA
device) and, with ``module``, the module's buffers are saved; every later evaluation starts
from that saved state and, when it returns, RNG and buffers are put back to what the FIRST
evaluation left. So dropout masks agree between the two points, and batch-norm running
statistics (and ``num_batches_tracked``) advance once per step, with the statistics of the first
evaluation (at the current parameters).
"""

from __future__ import annotations

import bisect
import weakref
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from marina.errors import ConfigError
from marina.lazy_rows import PIECES_MIN_D, DenseRows, LazyRows, RowDifference, materialize, piecewise
from marina.problems.base import Problem

__all__ = ["ClosureProblem", "ClosureRows", "ParamGrads"]


_LAST_SEGMENTS: list[tuple | None] = [None]
"""(weak reference to idx, its version, offsets, :meth:`ParamGrads._segments`) of the last read."""


class ParamGrads(LazyRows):
    """One evaluation's gradient as the (1, d) row of the parameters' ``p.grad`` tensors, read
    without concatenating them: a sorted gather (RandK's indices) reads each parameter's entries
    where they are, a difference with a dense row subtracts parameter by parameter into one
    output; :meth:`dense` concatenates once (kept).

    The tensors must not change while the row is used: :class:`ClosureProblem` sets every
    ``p.grad`` to None before it calls the closure, so the autograd engine allocates the next
    gradients and these stay as they were.

    Args:
        grads: the flat (numel,) gradient of every parameter, in order.
        dtype: the parameters' dtype.
        device: the parameters' device.
    """

    def __init__(self, grads: Sequence[Tensor], dtype: torch.dtype, device: torch.device) -> None:
        self.grads = list(grads)
        self.numels = [g.numel() for g in self.grads]
        self.offsets = [0]
        for numel in self.numels:
            self.offsets.append(self.offsets[-1] + numel)
        self.shape = torch.Size((1, self.offsets[-1]))
        self.dtype, self.device = dtype, device
        self.values: Tensor | None = None

    def dense(self) -> Tensor:
        if self.values is None:
            self.values = torch.cat(self.grads).reshape(1, -1)
        return self.values

    def _gather(self, idx: Tensor) -> Tensor:
        if self.values is not None or self.device.type != "cpu" or self.shape[1] < PIECES_MIN_D:
            return self.dense().gather(1, idx)
        segments = self._segments(idx)
        if segments is None:
            return self.dense().gather(1, idx)
        out = torch.empty(idx.shape, dtype=self.dtype)
        row = out[0]
        for j, s, e, local in segments:
            torch.index_select(self.grads[j], 0, local, out=row[s:e])
        return out

    def _segments(self, idx: Tensor) -> list[tuple[int, int, int, Tensor]] | None:
        """(parameter j, columns [s, e) of idx, the entries' offsets in parameter j) of the one
        sorted row ``idx``; None when it is not sorted. Kept for the last ``idx`` and offsets: a
        step gathers the same entries of its gradients at two points (MARINA's difference)."""
        last = _LAST_SEGMENTS[0]
        if last is not None and last[0]() is idx and last[1] == idx._version and last[2] == self.offsets:
            return last[3]
        at = idx[0].numpy()
        segments = None
        if at.size <= 1 or bool((at[1:] >= at[:-1]).all()):
            cuts = np.searchsorted(at, self.offsets).tolist()
            local = at.copy()
            segments = []
            for j, (start, s, e) in enumerate(zip(self.offsets, cuts, cuts[1:])):
                if e > s:
                    local[s:e] -= start
                    segments.append((j, s, e, torch.from_numpy(local[s:e])))
        _LAST_SEGMENTS[0] = (weakref.ref(idx), idx._version, self.offsets, segments)
        return segments

    def piece(self, start: int, end: int) -> Tensor:
        """Columns [start, end) as a (1, end - start) view of one parameter's gradient (the
        block must lie within one parameter: :func:`marina.lazy_rows.piecewise`)."""
        if not self.grads:  # concatenated already
            return self.dense()[:, start:end]
        j = bisect.bisect_right(self.offsets, start) - 1
        return self.grads[j][start - self.offsets[j] : end - self.offsets[j]].view(1, -1)

    def minus_dense(self, other: LazyRows | Tensor, out: Tensor | None = None) -> Tensor:
        """``self.dense() - other`` entry by entry, written parameter by parameter."""
        if self.values is not None:
            return torch.sub(self.values, materialize(other), out=out)
        return piecewise(torch.sub, self, other, out=out)


def _flat_view(g: Tensor) -> Tensor:
    """A gradient as a flat tensor sharing its memory (detached only when it carries a graph:
    ``backward(create_graph=True)``)."""
    g = g.detach() if g.requires_grad else g
    return g.view(-1) if g.is_contiguous() else g.reshape(-1)


class ClosureRows(LazyRows):
    """grad f_i(x) of this worker as one lazy row: the closure runs only when the row is read.

    PP-MARINA's ranks not drawn in a round never read their row, so they never evaluate.
    """

    def __init__(self, problem: ClosureProblem, x: Tensor) -> None:
        self.problem, self.x = problem, x
        self.shape = torch.Size((1, problem.dim))
        self.dtype, self.device = problem.dtype, problem.device
        self.values: ParamGrads | None = None

    @property
    def evaluated(self) -> bool:
        return self.values is not None

    def rows(self) -> ParamGrads:
        """The evaluated gradient (the closure runs at the first read)."""
        if self.values is None:
            self.values = self.problem.evaluate_rows(self.x)
        return self.values

    def dense(self) -> Tensor:
        return self.rows().dense()

    def _gather(self, idx: Tensor) -> Tensor:
        return self.rows()._gather(idx)

    def minus_dense(self, other: LazyRows | Tensor, out: Tensor | None = None) -> Tensor:
        return self.rows().minus_dense(other, out=out)

    @property
    def offsets(self) -> list[int]:
        return self.rows().offsets

    def piece(self, start: int, end: int) -> Tensor:
        return self.rows().piece(start, end)

    def _select_rows(self, rows: Tensor) -> LazyRows:
        if rows.numel() == 0:  # not drawn: nothing is evaluated
            return DenseRows(torch.zeros((0, self.problem.dim), dtype=self.dtype, device=self.device))
        return self if rows.numel() == 1 else DenseRows(self.dense().index_select(0, rows))


class ClosureProblem(Problem):
    """One worker whose f_i is whatever the current closure computes.

    Args:
        params: the optimizer's parameters (one dtype, one device), in group order: x is their
            concatenation, flattened (``d = sum numel``).
        local_size: m_i, the samples this worker declares (theory defaults, oracle counts).
        total_workers: n (the world size).
        worker_ids: this worker's global id, as a one-element tensor.
        module: the module whose buffers must advance once per step (None: not protected).
    """

    def __init__(
        self,
        params: Sequence[Tensor],
        *,
        local_size: int,
        total_workers: int,
        worker_ids: Tensor,
        module: nn.Module | None = None,
    ) -> None:
        self.params = list(params)
        dtypes = {p.dtype for p in self.params}
        devices = {p.device for p in self.params}
        if len(dtypes) != 1 or len(devices) != 1:
            raise ConfigError(
                f"parameters have dtypes {sorted(map(str, dtypes))} on devices {sorted(map(str, devices))}; "
                "marina.torch optimizers need one dtype and one device for all parameters"
            )
        if not next(iter(dtypes)).is_floating_point:
            raise ConfigError(f"parameters have dtype {next(iter(dtypes))}, must be floating point")
        self.dtype, self.device = next(iter(dtypes)), next(iter(devices))
        self.numels = [p.numel() for p in self.params]
        self.dim = int(sum(self.numels))
        self.n_workers = 1
        self.worker_ids = worker_ids
        self.total_workers = int(total_workers)
        self.sizes = torch.tensor([int(local_size)], dtype=torch.int64, device=self.device)
        self.module = module
        self.name = "closure"
        self.closure: Callable[[], Tensor] | None = None
        self.loss_value: Tensor | None = None
        self.evaluations = 0
        self._first: tuple | None = None
        self._given_read = False
        self.flat: Tensor | None = None
        self._ptrs: list[int] = []
        self.at_first_point = False
        """Set by the caller before a step: the parameters already hold the point of the step's first
        evaluation (its write is skipped)."""

    # -- the parameters as one vector ------------------------------------------------------------
    def adopt_flat_storage(self) -> None:
        """Make the parameters views of one flat buffer (:attr:`flat`): :meth:`flat_params` is then
        that buffer and :meth:`write` one copy. Done again by :meth:`_flat_view` if a parameter's
        ``.data`` was replaced since."""
        with torch.no_grad():
            self._view(torch.cat([p.detach().reshape(-1) for p in self.params]))

    def _view(self, flat: Tensor) -> None:
        """The parameters become views of the (d,) buffer ``flat``, which becomes :attr:`flat`."""
        for p, chunk in zip(self.params, flat.split(self.numels)):
            p.data = chunk.view_as(p)
        self.flat = flat
        item = flat.element_size()
        offsets = torch.tensor([0, *self.numels[:-1]]).cumsum(0).tolist()
        self._ptrs = [flat.data_ptr() + item * o for o in offsets]

    def _flat_view(self) -> Tensor | None:
        """:attr:`flat` while every parameter is still its view (else adopted again); None when
        the parameters were never flattened."""
        if self.flat is None:
            return None
        if any(p.data_ptr() != ptr for p, ptr in zip(self.params, self._ptrs)):
            self.adopt_flat_storage()
        return self.flat

    def flat_params(self) -> Tensor:
        """x, the current parameters as one (d,) vector (the flat buffer itself when adopted)."""
        flat = self._flat_view()
        if flat is not None:
            return flat
        return torch.cat([p.detach().reshape(-1) for p in self.params])

    def write(self, x: Tensor) -> None:
        """Parameters <- x (in place, so the user's module and any reference to them see it)."""
        flat = self._flat_view()
        with torch.no_grad():
            if flat is not None:
                if x.data_ptr() != flat.data_ptr():
                    flat.copy_(x.reshape(-1))
                return
            for p, chunk in zip(self.params, x.split(self.numels)):
                p.copy_(chunk.view_as(p))

    def show(self, x: Tensor) -> None:
        """Parameters <- x without a copy: they become views of x when it is a (d,) contiguous
        buffer of their dtype and device (the caller then writes into x only what the parameters
        should hold: the two-point optimizers' spare buffers); otherwise :meth:`write`."""
        flat = self._flat_view()
        fits = x.dim() == 1 and x.numel() == self.dim and x.is_contiguous()
        if flat is None or not fits or x.dtype != self.dtype or x.device != self.device:
            self.write(x)
        elif x.data_ptr() != flat.data_ptr():
            with torch.no_grad():
                self._view(x)

    def grad_rows(self) -> ParamGrads:
        """The parameters' ``p.grad`` as one (1, d) row (None: zeros, a parameter the loss does
        not use); ConfigError when every grad is None or one is sparse."""
        grads = [p.grad for p in self.params]
        if all(g is None for g in grads):
            raise ConfigError(
                "no parameter has a gradient (every p.grad is None): "
                + (
                    "the closure must call loss.backward() after zeroing the grads"
                    if self.closure is not None
                    else "without a closure, call loss.backward() before step()"
                )
            )
        for i, g in enumerate(grads):
            if g is not None and g.layout != torch.strided:
                raise ConfigError(
                    f"parameter {i} (shape {tuple(self.params[i].shape)}) has a {g.layout} gradient; "
                    "marina.torch optimizers need dense gradients (e.g. nn.Embedding(sparse=False))"
                )
        flat = [p.new_zeros(p.numel()) if g is None else _flat_view(g) for p, g in zip(self.params, grads)]
        return ParamGrads(flat, self.dtype, self.device)

    def flat_grads(self) -> Tensor:
        """The parameters' ``p.grad`` as one (d,) vector (a new tensor)."""
        return self.grad_rows().dense().reshape(-1)

    # -- one step's evaluations --------------------------------------------------------------------
    def begin_step(self, closure: Callable[[], Tensor] | None) -> None:
        """Start a step; ``closure`` None: the gradient of the one evaluation is ``p.grad`` as the
        caller left it (at the current parameters)."""
        self.closure, self.loss_value, self._first, self._given_read = closure, None, None, False

    def end_step(self) -> None:
        self.closure, self._first = None, None

    def _rng_devices(self) -> list[int]:
        return [self.device.index or 0] if self.device.type == "cuda" else []

    def _rng_state(self) -> tuple[Tensor, list[Tensor]]:
        cuda = [torch.cuda.get_rng_state(i) for i in self._rng_devices()]
        return torch.get_rng_state(), cuda

    def _set_rng_state(self, state: tuple[Tensor, list[Tensor]]) -> None:
        torch.set_rng_state(state[0])
        for i, s in zip(self._rng_devices(), state[1]):
            torch.cuda.set_rng_state(s, i)

    def _buffers(self) -> list[Tensor]:
        return [] if self.module is None else [b for b in self.module.buffers()]

    def _load_buffers(self, saved: list[Tensor]) -> None:
        with torch.no_grad():
            for b, s in zip(self._buffers(), saved):
                b.copy_(s)

    def _call(self, x: Tensor) -> Tensor | None:
        if self.closure is None:  # step() without a closure: p.grad is the caller's, at x
            if self._given_read:
                raise ConfigError(
                    "this step needs the gradient at a second point, but step() was called without a "
                    "closure; pass step(closure) with a closure that zeroes the grads, computes the loss "
                    "and calls backward"
                )
            self._given_read = True
            self.evaluations += 1
            return None
        if not (self.at_first_point and self._first is None):
            self.show(x)
        for p in self.params:  # the closure's backward allocates new gradients: rows read before stay
            p.grad = None
        with torch.enable_grad():
            loss = self.closure()
        self.evaluations += 1
        return loss

    def evaluate(self, x: Tensor) -> Tensor:
        """(1, d): the closure's gradient at x, a new tensor (see :meth:`evaluate_rows`)."""
        return self.evaluate_rows(x).dense()

    def evaluate_rows(self, x: Tensor) -> ParamGrads:
        """The closure's gradient at x as the parameters' grads (see the module doc for RNG and
        buffers). Without a closure (``p.grad`` the caller's, which they may zero in place later)
        the row is concatenated at once."""
        if self._first is None:
            rng, bufs = self._rng_state(), [b.clone() for b in self._buffers()]
            self.loss_value = self._call(x)
            self._first = (rng, bufs, self._rng_state(), [b.clone() for b in self._buffers()])
        else:
            rng, bufs, rng_after, bufs_after = self._first
            self._set_rng_state(rng)
            self._load_buffers(bufs)
            try:
                self._call(x)
            finally:
                self._set_rng_state(rng_after)
                self._load_buffers(bufs_after)
        rows = self.grad_rows()
        if self.closure is None:
            rows.dense()
            rows.grads = []
        return rows

    # -- the Problem protocol ------------------------------------------------------------------------
    def local_grads(self, x: Tensor) -> Tensor:
        return self.evaluate(x)

    def lazy_local_grads(self, x: Tensor) -> LazyRows:
        return ClosureRows(self, x)

    def minibatch_grads(self, x: Tensor, idx: Tensor) -> Tensor:
        return self.evaluate(x)

    def lazy_minibatch_grads(self, x: Tensor, idx: Tensor) -> LazyRows:
        """The closure's gradient at x where autograd left it (:class:`ParamGrads`)."""
        return self.evaluate_rows(x)

    def minibatch_grad_diffs(self, x_new: Tensor, x_old: Tensor, idx: Tensor) -> Tensor:
        g_new = self.evaluate(x_new)
        return g_new.sub_(self.evaluate(x_old))

    def lazy_minibatch_grad_diffs(self, x_new: Tensor, x_old: Tensor, idx: Tensor) -> LazyRows:
        """Both gradients evaluated, their difference left lazy: a sparsifier subtracts only its
        K entries (no pass over d)."""
        g_new = self.evaluate_rows(x_new)
        return RowDifference(g_new, self.evaluate_rows(x_old))

    def local_losses(self, x: Tensor) -> Tensor:
        value = float("nan") if self.loss_value is None else float(self.loss_value)
        return torch.tensor([value], dtype=self.dtype, device=self.device)

    @property
    def L_i(self) -> Tensor:
        raise ConfigError("the smoothness of a user's model is unknown: the optimizer's lr is the stepsize")

    @property
    def L_avg(self) -> float:
        return float(self.L_i.max())

    @property
    def L_f(self) -> float:
        return float(self.L_i.max())
