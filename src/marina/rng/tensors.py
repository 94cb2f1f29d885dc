"""The tensor backend: a call's numbers as (rows, cols) tensors on one device."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .backend import Backend
from .bits import GOLDEN_U, MASK64, mix64_numpy, mix_int, scaled
from .elements import CPU_CHUNK, ElementDraws, shared_arange
from .keys import call_keys

__all__ = ["tensor_backend"]


class TensorBackend(Backend[Tensor, Tensor]):
    """:class:`.backend.Backend` on tensors; keys are int64 (rows,), per-row operands a number or
    a tensor with one entry (or one per row).

    Args:
        device: where the draws are made.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def words32(self, keys: Tensor, cols: int) -> Tensor:
        return ElementDraws(keys, self.device).words(0, cols)

    def words64(self, keys: Tensor, cols: int | Tensor, f: Callable | None = None) -> Tensor:
        width = int(cols.max()) if isinstance(cols, Tensor) else int(cols)
        z = ElementDraws(keys, self.device).words64(0, width)
        return z if f is None else f(z)

    def uniform(
        self, keys: Tensor, cols: int, dtype: torch.dtype, f: Callable | None = None, operand: Any = None
    ) -> Tensor:
        u = ElementDraws(keys, self.device).uniform(0, cols, dtype)
        if f is scaled and u.device.type == "cpu" and type(operand) is float and math.isfinite(operand):
            un = u.numpy()  # floor(u high) in place, in NumPy
            un *= operand
            return torch.from_numpy(np.floor(un, out=un).astype(np.int64))
        return u if f is None else f(u, operand)

    def rekey(self, keys: Tensor, salt: int) -> Tensor:
        return call_keys(keys, salt)

    def each(self, f: Callable, x: Tensor | int, *args: Any) -> Tensor:
        return f(x, *args)

    def column(self, values: Tensor | float) -> Tensor | float:
        """(rows, 1) float64 (or (1, 1), broadcast) for a tensor, else a float."""
        if isinstance(values, Tensor):
            return values.to(device=self.device, dtype=torch.float64).reshape(-1, 1)
        return float(values)

    def argsort(self, x: Tensor, cols: int) -> Tensor:
        if x.shape[0] == 1:  # torch's 1-D sort is several times faster than a sort along dim 1
            return torch.sort(x[0], stable=True).indices[None, :]
        return torch.sort(x, dim=1, stable=True).indices

    def sort(self, x: Tensor, cols: int, nearly_sorted: bool = False) -> Tensor:
        # random rows on the CPU: NumPy's sort is faster (sorted values are unique), and faster
        # again on int32 (indices below 2^31 are exact there); torch's is faster on rows that
        # are nearly sorted already (a redraw of a few entries)
        if x.device.type == "cpu" and not nearly_sorted:
            if x.dtype == torch.int64 and x.shape[0] == 1 and x.numel():
                return torch.from_numpy(_radix_sorted(x.numpy()[0]))[None, :]
            if x.dtype == torch.int64 and x.numel() and _fits_int32(x):
                return torch.from_numpy(np.sort(x.numpy().astype(np.int32), axis=1).astype(np.int64))
            return torch.from_numpy(np.sort(x.numpy(), axis=1))
        return torch.sort(x, dim=1).values

    def smallest(self, z: Tensor, k: int, cols: int | Tensor) -> Tensor:
        if isinstance(cols, Tensor):  # columns at or beyond a row's count never win
            counters = shared_arange(z.shape[1], torch.int32, self.device)
            z.masked_fill_(counters[None, :] >= cols[:, None], MASK64 >> 1)
        return torch.sort(torch.topk(z, k, dim=1, largest=False).indices, dim=1).values

    def duplicates(self, x: Tensor, cols: int) -> Tensor | None:
        if x.device.type == "cpu":  # NumPy: a few microseconds less per operation on a row
            a = x.numpy()
            same = a[:, 1:] == a[:, :-1]
            if not same.any():
                return None
            out = np.zeros(a.shape, dtype=bool)
            out[:, 1:] = same
            return torch.from_numpy(out)
        dup = torch.zeros_like(x, dtype=torch.bool)
        dup[:, 1:] = x[:, 1:] == x[:, :-1]
        return dup if bool(dup.any()) else None

    def where(self, mask: Tensor, a: Tensor, b: Tensor) -> Tensor:
        return torch.where(mask, a, b)

    def redrawn(self, x: Tensor, mask: Tensor, keys: Tensor, cols: int, operand: Tensor | float) -> Tensor:
        """As :meth:`.backend.Backend.redrawn`, hashing only the masked entries."""
        rows_at, cols_at = torch.nonzero(mask, as_tuple=True)
        u = ElementDraws(keys, self.device).uniform64_at(rows_at, cols_at)
        high = operand
        if isinstance(operand, Tensor):  # one entry per row, or one for all
            high = operand.reshape(-1)
            high = high[rows_at] if high.numel() > 1 else high
        out = x.clone()
        out[rows_at, cols_at] = scaled(u, high)
        return out

    def redrawn_sorted(
        self, x: Tensor, mask: Tensor, keys: Tensor, cols: int, operand: Tensor | float
    ) -> Tensor:
        """As :meth:`.backend.Backend.redrawn_sorted`; on the CPU, for a few rows with redraws, the
        redrawn entries are sorted alone and merged into the row's other (sorted) entries: O(K)
        per row instead of a sort of the row."""
        if x.device.type != "cpu":
            return self.sort(self.redrawn(x, mask, keys, cols, operand), cols, nearly_sorted=True)
        m = mask.numpy()
        touched = np.flatnonzero(m.any(axis=1))
        if len(touched) > MERGE_ROWS:
            return self.sort(self.redrawn(x, mask, keys, cols, operand), cols, nearly_sorted=True)
        # row-major (each row's redraws consecutive); a 1-D nonzero is several times faster
        rows_at, cols_at = np.divmod(np.flatnonzero(m), m.shape[1])
        fresh = _redraws_numpy(keys.numpy(), rows_at, cols_at, operand)
        out = x.clone()
        rows = out.numpy()
        ends = np.searchsorted(rows_at, touched, side="right")
        for r, a, b in zip(touched.tolist(), [0, *ends[:-1].tolist()], ends.tolist()):
            _merge_into(rows[r], rows[r][~m[r]], np.sort(fresh[a:b]))
        return out

    def sparse_sample(
        self, keys: Tensor, population: Any, k: int, redraw_salt: Callable[[int], int]
    ) -> Tensor | None:
        """One CPU row with a float population (RandK's draw on one worker): every step of the
        sparse method in NumPy on the row (:func:`sparse_row`); None otherwise."""
        if (
            not FUSED_SPARSE
            or self.device.type != "cpu"
            or keys.numel() != 1
            or type(population) is not float
        ):
            return None
        if not 0.0 < population <= 2.0**62:
            return None
        key = int(keys.reshape(-1)[0]) & MASK64
        return torch.from_numpy(sparse_row(key, population, k, redraw_salt))[None, :]

    def which(self, mask: Tensor | bool) -> bool | None:
        if not isinstance(mask, Tensor):
            return bool(mask)
        return True if bool(mask.all()) else False if not bool(mask.any()) else None

    def partition(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        return x[mask], x[~mask]

    def merge(self, mask: Tensor, a: Tensor, b: Tensor, cols: int) -> Tensor:
        out = torch.empty((mask.shape[0], cols), dtype=a.dtype, device=self.device)
        out[mask] = a
        out[~mask] = b
        return out

    def tensor(self, x: Tensor, dtype: torch.dtype, rows: int, cols: int) -> Tensor:
        return x


FUSED_SPARSE = True
"""Whether :meth:`TensorBackend.sparse_sample` draws one CPU row in one fused pass (the tests
compare it with the generic steps)."""

_WEYL_U64: list[np.ndarray] = [np.empty(0, dtype=np.uint64)]
_WEYL_KEPT = 1 << 20
"""Weyl increments kept for elements below this (8 MiB at most); later ones are computed."""


def _weyl_u64(start: int, stop: int) -> np.ndarray:
    """(j + 1) golden mod 2^64 for start <= j < stop, uint64 (shared below :data:`_WEYL_KEPT`:
    never write to it)."""
    if stop > _WEYL_KEPT:
        return _weyl_at(np.arange(start, stop, dtype=np.uint64))
    w = _WEYL_U64[0]
    if w.size < stop:
        w = _WEYL_U64[0] = _weyl_at(np.arange(min(_WEYL_KEPT, max(stop, 1024)), dtype=np.uint64))
    return w[start:stop]


def _weyl_at(cols: np.ndarray) -> np.ndarray:
    """(cols + 1) golden mod 2^64, uint64: the SplitMix64 increments of elements ``cols``."""
    return (cols.astype(np.uint64) + np.uint64(1)) * np.uint64(GOLDEN_U)


def _scaled_words(z: np.ndarray, c: float) -> np.ndarray:
    """floor(u high) of the float64 uniforms u of the uint64 SplitMix64 states z (mixed in
    place), c = high 2^-53: u high = (w >>> 11) 2^-53 high is one rounding either way."""
    mix64_numpy(z, np.empty_like(z))
    z >>= np.uint64(11)
    u = z.view(np.int64).astype(np.float64)  # < 2^53: exact
    u *= c
    return u.astype(np.int64)  # truncation: floor of u >= 0


def sparse_row(key: int, population: float, k: int, redraw_salt: Callable[[int], int]) -> np.ndarray:
    """``distributions._sparse`` of one row with call key ``key`` (unsigned): the k draws with
    replacement sorted, then each redraw of the duplicates' columns merged into the rest."""
    c = population * 2.0**-53  # exact (a power of two)
    if k <= CPU_CHUNK:
        draws = _scaled_words(_weyl_u64(0, k) + np.uint64(key), c)
    else:  # in cache-sized chunks: the temporaries stay O(chunk)
        draws = np.empty(k, dtype=np.int64)
        for a in range(0, k, CPU_CHUNK):
            b = min(k, a + CPU_CHUNK)
            draws[a:b] = _scaled_words(_weyl_u64(a, b) + np.uint64(key), c)
    idx = _radix_sorted(draws)
    attempt = 0
    while True:
        same = idx[1:] == idx[:-1]
        if not same.any():
            return idx
        cols = np.flatnonzero(same)
        cols += 1
        attempt += 1
        rekeyed = mix_int(key ^ redraw_salt(attempt))
        fresh = np.sort(_scaled_words(_weyl_at(cols) + np.uint64(rekeyed), c))
        keep = np.ones(k, dtype=bool)
        keep[cols] = False
        _merge_into(idx, idx[keep], fresh)


MERGE_ROWS = 16
"""Redraws merge into at most this many rows (:meth:`TensorBackend.redrawn_sorted`); more: a sort."""


def _merge_into(out: np.ndarray, kept: np.ndarray, new: np.ndarray) -> None:
    """out <- the sorted arrays kept and new merged (new before equal kept entries, as
    ``np.insert`` at ``searchsorted``)."""
    at = np.searchsorted(kept, new)
    at += np.arange(len(new))
    fresh = np.zeros(len(out), dtype=bool)
    fresh[at] = True
    out[at] = new
    out[~fresh] = kept


def _redraws_numpy(keys: np.ndarray, rows_at: np.ndarray, cols_at: np.ndarray, high: Any) -> np.ndarray:
    """The redrawn indices of :meth:`TensorBackend.redrawn` at (rows_at, cols_at), in NumPy on
    the CPU: floor(u high) of the float64 uniform of each element (the same bits)."""
    z = keys.view(np.uint64)[rows_at] + _weyl_at(cols_at)
    if isinstance(high, Tensor):  # one entry per row, or one for all
        h = high.reshape(-1).numpy()
        high = h[rows_at] if h.size > 1 else h
    return _scaled_words(z, high * 2.0**-53)


def _radix_sorted(v: np.ndarray) -> np.ndarray:
    """v (1-D int64) sorted: grouped by its top 16 bits (NumPy's radix sort of 16-bit values),
    then NumPy's stable sort (a merge sort of runs), which orders the nearly sorted groups in
    about one pass; NumPy's sort for negative values."""
    if int(v.min()) < 0:
        return np.sort(v)
    shift = max(0, int(v.max()).bit_length() - 16)
    if shift == 0:
        return np.sort(v.astype(np.uint16), kind="stable").astype(np.int64)
    w = v[np.argsort((v >> shift).astype(np.uint16), kind="stable")]
    return np.sort(w, kind="stable")


def _fits_int32(x: Tensor) -> bool:
    low, high = torch.aminmax(x)
    return int(low) >= -(1 << 31) and int(high) < (1 << 31)


_BACKENDS: dict[torch.device, TensorBackend] = {}


def tensor_backend(device: torch.device) -> TensorBackend:
    """The (shared) tensor backend of ``device``."""
    backend = _BACKENDS.get(device)
    if backend is None:
        backend = _BACKENDS[device] = TensorBackend(device)
    return backend
