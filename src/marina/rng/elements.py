"""The words of one call as tensors, by column range and in cache-sized chunks (the hot path)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import Tensor

from .bits import GOLDEN, MASK64, lowbias32_into, mix64_into, mix64_numpy, signed, split32, unit_function

__all__ = ["ElementDraws", "shared_arange"]

# Elements generated per in-cache chunk on CPU (int32: 512 KiB scratch, fits L2).
CPU_CHUNK = 1 << 17
CUDA_CHUNK = 1 << 26

# Element counters (int32) and the SplitMix64 Weyl sequence (int64), shared by every call:
# (device, dtype) -> 1-D tensor, grown on demand, never written after creation
_ARANGE: dict[tuple[torch.device, torch.dtype], Tensor] = {}


def shared_arange(width: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The first ``width`` element counters (int32) or Weyl increments (int64, (j + 1) golden)."""
    ar = _ARANGE.get((device, dtype))
    if ar is None or ar.numel() < width:
        size = max(width, 1024)
        ar = torch.arange(size, dtype=dtype, device=device)
        if dtype == torch.int64:
            ar = (ar + 1) * GOLDEN  # the Weyl sequence of SplitMix64 (wraps mod 2^64)
        _ARANGE[(device, dtype)] = ar
    return ar[:width]


class ElementDraws:
    """The draws of one call, addressable by element (column) range.

    ``Randomness.elements()`` advances the call counter by one and returns this object;
    ``words(a, b)``, ``words64(a, b)`` and ``uniform(a, b)`` give columns ``[a, b)`` of that call,
    so a long row can be drawn piece by piece inside a fused loop and still equal the one-shot
    draw. 32-bit words (and float32 uniforms) come from the keyed lowbias32 hash of the element,
    64-bit words (and float64 uniforms) from SplitMix64 at state ``key + (j + 1) * golden``.

    Args:
        keys: the call's key of each row, int64 (rows,).
        device: where the draws are made.
    """

    def __init__(self, keys: Tensor, device: torch.device) -> None:
        self.keys = keys.reshape(-1, 1)
        self._k12: tuple[Tensor, Tensor] | None = None
        self.device = device
        self.rows = int(self.keys.shape[0])
        self.chunk = CUDA_CHUNK if device.type == "cuda" else CPU_CHUNK

    def _halves(self) -> tuple[Tensor, Tensor]:
        if self._k12 is None:  # only the 32-bit hash needs them
            self._k12 = split32(self.keys.reshape(-1))
        return self._k12

    @property
    def k1(self) -> Tensor:
        """Low 32 bits of the call key, (rows, 1) int32 (added to the element counter)."""
        return self._halves()[0]

    @property
    def k2(self) -> Tensor:
        """High 32 bits of the call key, (rows, 1) int32 (xored between the hash rounds)."""
        return self._halves()[1]

    def _hash_into(self, x: Tensor, t: Tensor, start: int) -> None:
        """x (rows, w) int32 <- lowbias32 words of elements start .. start + w - 1; t is scratch."""
        counters = shared_arange(x.shape[1], torch.int32, self.device)
        torch.add(self.k1 + signed(start, 32), counters, out=x)
        lowbias32_into(x, t, self.k2)

    def _mix64_into(self, x: Tensor, t: Tensor, start: int) -> None:
        """x (rows, w) int64 <- SplitMix64 words of elements start .. start + w - 1."""
        weyl = shared_arange(x.shape[1], torch.int64, self.device)
        if self.device.type == "cpu":  # NumPy's uint64 (wrapping) arithmetic: fewer operations
            xn = x.numpy().view(np.uint64)
            keys = self.keys.numpy().view(np.uint64) + np.uint64((start * GOLDEN) & MASK64)
            np.add(weyl.numpy().view(np.uint64), keys, out=xn)
            mix64_numpy(xn, t.numpy().view(np.uint64))
            return
        torch.add(self.keys + signed(start * GOLDEN), weyl, out=x)
        mix64_into(x, t)

    def uniform64_at(self, rows: Tensor, cols: Tensor) -> Tensor:
        """(m,) float64: entry i is ``uniform(0, c)[rows[i], cols[i]]`` (any c > cols[i]), computed
        for those m elements only (the words are per element)."""
        if rows.numel() == 0:
            return torch.empty(0, dtype=torch.float64, device=self.device)
        weyl = shared_arange(int(cols.max()) + 1, torch.int64, self.device)
        x = self.keys.reshape(-1)[rows] + weyl[cols]
        mix64_into(x, torch.empty_like(x))
        return unit_function(torch.float64)(x, torch.empty(x.shape, dtype=torch.float64, device=self.device))

    def _pieces(self, start: int, stop: int) -> Iterator[tuple[int, int]]:
        step = max(1, self.chunk // max(1, self.rows))
        for a in range(start, stop, step):
            yield a, min(stop, a + step)

    def words(self, start: int, stop: int) -> Tensor:
        """(rows, stop - start) int32: the 32-bit words of elements [start, stop)."""
        return self._fill(start, stop, torch.int32, self._hash_into)

    def words64(self, start: int, stop: int) -> Tensor:
        """(rows, stop - start) int64: the 64-bit words of elements [start, stop)."""
        return self._fill(start, stop, torch.int64, self._mix64_into)

    def _fill(
        self, start: int, stop: int, dtype: torch.dtype, hash_into: Callable[[Tensor, Tensor, int], None]
    ) -> Tensor:
        out = torch.empty((self.rows, stop - start), dtype=dtype, device=self.device)
        t = torch.empty((self.rows, min(stop - start, self.chunk)), dtype=dtype, device=self.device)
        for a, b in self._pieces(start, stop):
            hash_into(out[:, a - start : b - start], t[:, : b - a], a)
        return out

    def uniform(
        self, start: int, stop: int, dtype: torch.dtype = torch.float64, out: Tensor | None = None
    ) -> Tensor:
        """(rows, stop - start) uniforms in [0, 1) of elements [start, stop) of this call.

        float64: the top 53 bits of the 64-bit word; float32 (and lower precisions): the top 24
        bits of the 32-bit word.
        """
        w = stop - start
        if out is None:
            out = torch.empty((self.rows, w), dtype=dtype, device=self.device)
        step = max(1, self.chunk // max(1, self.rows))
        wide = out.dtype == torch.float64
        unit = unit_function(out.dtype)
        shape = (self.rows, min(w, step))
        x = torch.empty(shape, dtype=torch.int64 if wide else torch.int32, device=self.device)
        t = torch.empty_like(x)
        # below float32 the value is made in float32, then rounded down to the output's bits
        low = None
        if not wide and out.dtype != torch.float32:
            low = torch.empty(shape, dtype=torch.float32, device=self.device)
        numpy_unit = wide and self.device.type == "cpu" and not out.requires_grad
        for a, b in self._pieces(start, stop):
            xa, ta, o = x[:, : b - a], t[:, : b - a], out[:, a - start : b - start]
            (self._mix64_into if wide else self._hash_into)(xa, ta, a)
            if numpy_unit:  # unit64 in NumPy: (z >>> 11) 2^-53, the same value
                xn, on = xa.numpy().view(np.uint64), o.numpy()
                xn >>= np.uint64(11)
                on[...] = xn.view(np.int64)  # < 2^53: exact (int64 converts faster)
                on *= 2.0**-53
            elif low is None:
                unit(xa, o)
            else:
                o.copy_(unit(xa, low[:, : b - a]))
        return out
