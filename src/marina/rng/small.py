"""The small-call backend: a call's numbers as flat row-major lists of Python ints and floats.

For CPU calls of a few rows and elements, where a dozen small tensor operations cost far more
than hashing the words one by one. Call keys are unsigned Python ints; words are computed by the
specification (:func:`.bits.hash32_reference`, :func:`.bits.mix_int`).
"""

from __future__ import annotations

import heapq
from array import array
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .backend import Backend
from .bits import GOLDEN_U, hash32_reference, mix_int, scaled, unit_function
from .keys import call_keys_int

__all__ = ["SMALL"]

# array typecodes of the dtypes that small draws build from a buffer (same item size only)
_TYPECODES = {
    dt: code
    for dt, code in (
        (torch.float64, "d"),
        (torch.float32, "f"),
        (torch.int64, "q"),
        (torch.int32, "i"),
        (torch.bool, "B"),
    )
    if array(code).itemsize == dt.itemsize
}


def _unsigned64(keys: list[int], cols: int | list[int]) -> list[int]:
    """SplitMix64 words of columns 0 .. cols - 1 (``cols`` one count or one per row), unsigned."""
    widths = cols if isinstance(cols, list) else [cols] * len(keys)
    return [mix_int(key + j * GOLDEN_U) for key, w in zip(keys, widths) for j in range(1, w + 1)]


class SmallBackend(Backend[list[int], list]):
    """:class:`.backend.Backend` on Python numbers; per-row operands are lists, one per row."""

    def words32(self, keys: list[int], cols: int) -> list[int]:
        return [
            (hash32_reference(j, key, key >> 32) ^ 1 << 31) - (1 << 31) for key in keys for j in range(cols)
        ]

    def words64(self, keys: list[int], cols: int | list[int], f: Callable | None = None) -> list[int]:
        if f is not None:  # on the unsigned words
            return list(map(f, _unsigned64(keys, cols)))
        return [(v ^ 1 << 63) - (1 << 63) for v in _unsigned64(keys, cols)]

    def uniform(
        self, keys: list[int], cols: int, dtype: torch.dtype, f: Callable | None = None, operand: Any = None
    ) -> list:
        # the unit formulas keep the bits they use, so the unsigned words do
        words = _unsigned64(keys, cols) if dtype == torch.float64 else self.words32(keys, cols)
        unit = unit_function(dtype)
        if f is None:
            return list(map(unit, words))
        if cols != 1:
            operand = [a for a in operand for _ in range(cols)]
        return [f(unit(w), a) for w, a in zip(words, operand)]

    def sparse_sample(
        self, keys: list[int], population: Any, k: int, redraw_salt: Callable[[int], int]
    ) -> None:
        return None  # the generic steps, on Python numbers already

    def rekey(self, keys: list[int], salt: int) -> list[int]:
        return call_keys_int(keys, salt)

    def each(self, f: Callable, x: list, *args: Any) -> list:
        return [f(v, *args) for v in x]

    def column(self, values: list) -> list:
        return values  # Python numbers already: float64 when multiplied by a uniform

    def argsort(self, x: list[int], cols: int) -> list[int]:
        # Python's sort is stable, like the tensor code's
        return [j - r for r in range(0, len(x), cols) for j in sorted(range(r, r + cols), key=x.__getitem__)]

    def sort(self, x: list, cols: int, nearly_sorted: bool = False) -> list:
        return [v for r in range(0, len(x), cols) for v in sorted(x[r : r + cols])]

    def smallest(self, z: list[int], k: int, cols: list[int]) -> list[int]:
        # row r holds exactly its cols[r] entries (words64 of per-row widths)
        out, r = [], 0
        for p in cols:
            out += sorted(j for _, j in heapq.nsmallest(k, zip(z[r : r + p], range(p))))
            r += p
        return out

    def duplicates(self, x: list, cols: int) -> list[bool] | None:
        dup = [j % cols != 0 and x[j] == x[j - 1] for j in range(len(x))]
        return dup if any(dup) else None

    def where(self, mask: list[bool], a: list, b: list) -> list:
        return [u if m else v for m, u, v in zip(mask, a, b)]

    def redrawn(self, x: list, mask: list[bool], keys: list[int], cols: int, operand: Any) -> list:
        return self.where(mask, self.uniform(keys, cols, torch.float64, scaled, operand), x)

    def redrawn_sorted(self, x: list, mask: list[bool], keys: list[int], cols: int, operand: Any) -> list:
        return self.sort(self.redrawn(x, mask, keys, cols, operand), cols, nearly_sorted=True)

    def which(self, mask: list[bool] | bool) -> bool | None:
        if mask is False or mask is True:
            return mask
        n = sum(mask)
        return True if n == len(mask) else False if n == 0 else None

    def partition(self, x: list, mask: list[bool]) -> tuple[list, list]:
        return [v for v, m in zip(x, mask) if m], [v for v, m in zip(x, mask) if not m]

    def merge(self, mask: list[bool], a: list, b: list, cols: int) -> list:
        out, ia, ib = [], 0, 0
        for m in mask:
            if m:
                out += a[ia : ia + cols]
                ia += cols
            else:
                out += b[ib : ib + cols]
                ib += cols
        return out

    def tensor(self, x: list, dtype: torch.dtype, rows: int, cols: int) -> Tensor:
        """The (rows, cols) CPU tensor; through an ``array`` buffer where one fits (about half
        the cost of ``torch.tensor(list)``)."""
        code = _TYPECODES.get(dtype)
        if code is None or not x:
            return torch.tensor(x, dtype=dtype).view(rows, cols)
        return torch.frombuffer(array(code, x), dtype=dtype).view(rows, cols)


SMALL = SmallBackend()
