"""Worker-side (n, d) matrices whose entries are computed only where they are read.

A sparsifying compressor (RandK) sends K of the d entries of each worker's row, so in MARINA's
compressed rounds, QGD and DIANA only n K entries of the local gradients (or of their
differences) are ever read. For linear models such an entry is one sparse dot product (a row of
the lifted transpose, see :mod:`marina.problems.linear`), so evaluating just those entries
skips the whole A^T w product, half the cost of a round.

:class:`LazyRows` is that matrix: ``dense()`` materialises it, ``gather(1, idx)`` reads the
entries ``idx`` (n, K) of every row and equals ``dense().gather(1, idx)`` bit for bit (every
implementation must guarantee it, so a method's trajectory does not depend on whether its
compressor reads lazily). Differences ``a - b`` (with a lazy ``a``) stay lazy: their gathered
entries are ``a.gather(1, idx) - b.gather(1, idx)``, the same floating-point subtraction the
dense difference makes entry by entry.

Compressors that only gather (``Compressor.gathers``) read lazy rows as they are; every other
consumer calls :func:`materialize` first. Lazy rows support nothing else: arithmetic other
than ``-``, indexing, torch functions and tensor methods (``rows.mean(0)``) raise a
``TypeError`` / ``AttributeError`` that names the operation and says how to materialise them,
rather than computing something else.

Names say which kind a gradient is: ``Problem.local_grads(x)`` is a dense tensor,
``Problem.lazy_local_grads(x)`` lazy rows.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["LazyRows", "DenseRows", "materialize"]

MATERIALISE = "materialise them first with marina.lazy_rows.materialize(rows) or rows.dense()"


def _refusal(cls: type, operation: str) -> str:
    return (
        f"{cls.__name__} (lazy rows, entries evaluated where read) does not support {operation}; "
        + MATERIALISE
    )


def _refused(operation: str):  # an operator slot of LazyRows
    def refuse(self: LazyRows, *args: object) -> None:
        raise TypeError(_refusal(type(self), operation))

    return refuse


class LazyRows(ABC):
    """An (n, d) matrix, one row per hosted worker, evaluated on demand.

    Attributes: ``shape`` (n, d), ``dtype``, ``device`` (those of the materialised matrix).
    """

    shape: torch.Size
    dtype: torch.dtype
    device: torch.device

    def dim(self) -> int:
        return 2

    @abstractmethod
    def dense(self) -> Tensor:
        """The whole (n, d) matrix (computed once and kept by implementations that compute)."""

    @abstractmethod
    def _gather(self, idx: Tensor) -> Tensor:
        """Entries idx (n, K) int64 of every row, equal to ``dense().gather(1, idx)``."""

    def gather(self, dim: int, index: Tensor) -> Tensor:
        """``dense().gather(dim, index)`` for dim == 1, evaluating only those entries."""
        if dim != 1:
            raise ValueError(f"LazyRows.gather reads entries of rows: dim == {dim}, must be 1")
        if index.dim() != 2 or index.shape[0] != self.shape[0]:
            raise ValueError(f"index has shape {tuple(index.shape)}, must be ({self.shape[0]}, K)")
        return self._gather(index)

    def index_select(self, dim: int, rows: Tensor) -> LazyRows:
        """The rows ``rows`` (int64, positions among the hosted workers), still lazy where the
        implementation can (``Tensor.index_select`` for dim == 0)."""
        if dim != 0:
            raise ValueError(f"LazyRows.index_select selects rows: dim == {dim}, must be 0")
        return self._select_rows(rows)

    def _select_rows(self, rows: Tensor) -> LazyRows:
        return DenseRows(self.dense().index_select(0, rows))

    def _gather_minus(self, other: LazyRows | Tensor, idx: Tensor) -> Tensor:
        """``self.gather(1, idx) - other.gather(1, idx)``; implementations may evaluate both at
        once (same bits)."""
        return torch.sub(self.gather(1, idx), other.gather(1, idx))

    def minus_dense(self, other: LazyRows | Tensor, out: Tensor | None = None) -> Tensor:
        """``self.dense() - materialize(other)``, as a new tensor or into ``out``; implementations
        may skip materialising ``self`` (same bits: one subtraction per entry)."""
        return torch.sub(self.dense(), materialize(other), out=out)

    def magnitudes(self, out: Tensor) -> Tensor:
        """``|dense()|`` written into ``out`` (n, d) (a selection by magnitude, such as TopK's,
        then gathers the signed entries it keeps); implementations may skip materialising."""
        return torch.abs(self.dense(), out=out)

    def __sub__(self, other: LazyRows | Tensor) -> RowDifference:
        return RowDifference(self, other)

    # -- everything else is refused, with the way out --------------------------------------------
    def __getattr__(self, name: str):  # only reached for unknown attributes
        if name.startswith("__") or name in ("shape", "dtype", "device"):
            raise AttributeError(name)  # protocols probed by copy, pickle, ...; unset attributes
        raise AttributeError(_refusal(type(self), f"the tensor attribute .{name}"))

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        raise TypeError(_refusal(cls, torch.overrides.resolve_name(func) or repr(func)))

    __add__ = __radd__ = __iadd__ = _refused("the operator +")
    __rsub__ = _refused("the operator - with lazy rows on the right")
    __mul__ = __rmul__ = __imul__ = _refused("the operator *")
    __truediv__ = __rtruediv__ = _refused("the operator /")
    __matmul__ = __rmatmul__ = _refused("the operator @")
    __pow__ = _refused("the operator **")
    __neg__ = _refused("negation")
    __abs__ = _refused("abs()")
    __getitem__ = __setitem__ = _refused("indexing (use index_select(0, rows) for a row subset)")
    __iter__ = _refused("iteration")
    __array__ = _refused("conversion to a NumPy array")


class DenseRows(LazyRows):
    """An already computed matrix behind the lazy interface."""

    def __init__(self, values: Tensor) -> None:
        self.values = values
        self.shape, self.dtype, self.device = values.shape, values.dtype, values.device

    def dense(self) -> Tensor:
        return self.values

    def _gather(self, idx: Tensor) -> Tensor:
        return self.values.gather(1, idx)


class RowDifference(LazyRows):
    """a - b, entry by entry, for a lazy ``a`` and a lazy or dense ``b`` of the same shape."""

    def __init__(self, a: LazyRows, b: LazyRows | Tensor) -> None:
        if tuple(a.shape) != tuple(b.shape):
            raise ValueError(f"cannot subtract rows of shape {tuple(b.shape)} from {tuple(a.shape)}")
        self.a, self.b = a, b
        self.shape, self.dtype, self.device = a.shape, a.dtype, a.device

    def dense(self) -> Tensor:
        return self.a.minus_dense(self.b)

    def magnitudes(self, out: Tensor) -> Tensor:
        return self.a.minus_dense(self.b, out=out).abs_()

    def _select_rows(self, rows: Tensor) -> LazyRows:
        return RowDifference(self.a.index_select(0, rows), self.b.index_select(0, rows))

    def _gather(self, idx: Tensor) -> Tensor:
        return self.a._gather_minus(self.b, idx)


class Elementwise(LazyRows):
    """``fn(*operands)`` for an ``fn`` made of entry-by-entry torch operations (``+``, ``-``,
    ``*`` by scalars, ...) on (n, d) operands, lazy or dense: gathered entries are ``fn`` of the
    operands' gathered entries, the same floating-point operations on the same values as the
    dense result (computed once and kept)."""

    def __init__(self, fn: Callable[..., Tensor], *operands: LazyRows | Tensor) -> None:
        shapes = {tuple(o.shape) for o in operands}
        if len(shapes) != 1:
            raise ValueError(f"operands of one shape are needed, got {sorted(shapes)}")
        self.fn, self.operands = fn, operands
        self.shape, self.dtype, self.device = operands[0].shape, operands[0].dtype, operands[0].device
        self.values: Tensor | None = None

    def dense(self) -> Tensor:
        if self.values is None:
            self.values = self.fn(*(materialize(o) for o in self.operands))
        return self.values

    def _gather(self, idx: Tensor) -> Tensor:
        if self.values is not None:
            return self.values.gather(1, idx)
        return self.fn(*(o.gather(1, idx) for o in self.operands))


PIECES_MIN_D = 1 << 16
"""Rows at least this long are read in pieces (:func:`piecewise`, the parameters' gradients'
sorted gathers); shorter ones are concatenated, which costs less than a call per piece."""


def piecewise(fn: Callable[..., Tensor], *operands: LazyRows | Tensor, out: Tensor | None = None) -> Tensor:
    """A new (n, d) tensor (or ``out``) holding ``fn(*pieces, out=piece)`` of every column block in which
    each operand is one tensor (rows that keep their entries in pieces, such as the parameters'
    gradients, are read where they are; other lazy rows are materialised): for an ``fn`` made of
    entry-by-entry torch operations, the values of ``fn`` on the whole rows, with no
    concatenation."""
    in_pieces = operands[0].shape[1] >= PIECES_MIN_D
    dense = [
        o if isinstance(o, Tensor) or (in_pieces and hasattr(o, "piece")) else materialize(o)
        for o in operands
    ]
    shape = dense[0].shape
    bounds = sorted({0, shape[1]}.union(*(getattr(o, "offsets", ()) for o in dense)))
    if out is None:
        out = torch.empty(shape, dtype=dense[0].dtype, device=dense[0].device)
    for s, e in zip(bounds, bounds[1:]):
        parts = [o[:, s:e] if isinstance(o, Tensor) else o.piece(s, e) for o in dense]
        fn(*parts, out=out[:, s:e])
    return out


def materialize(X: LazyRows | Tensor) -> Tensor:
    """The dense (n, d) tensor of ``X`` (``X`` itself when it is a tensor)."""
    return X.dense() if isinstance(X, LazyRows) else X
