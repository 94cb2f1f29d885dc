"""Bit formulas of the generator, each Python-int form beside its tensor form.

The Python forms are the specification, computed element by element; the tensor forms work on
int32 / int64 tensors in two's complement (wrap-around arithmetic, shifts and exact int -> float
conversions only, so every device gives the same bits) and equal them mod 2^32 or 2^64. Element
formulas (``unit64`` ... ``key63``) take a Python number or a tensor alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "MASK64",
    "GOLDEN_U",
    "GOLDEN",
    "signed",
    "mix_int",
    "mix64",
    "mix64_into",
    "mix64_numpy",
    "hash32_reference",
    "lowbias32_into",
    "split32",
    "unit_function",
    "scaled",
    "key63",
]

MASK64 = (1 << 64) - 1
MASK32 = (1 << 32) - 1
_M53 = (1 << 53) - 1
_M63 = (1 << 63) - 1


def signed(v: int, bits: int = 64) -> int:
    """The two's complement value of the low ``bits`` bits of ``v`` (a tensor's int32 / int64)."""
    v &= (1 << bits) - 1
    return v - (1 << bits) if v >= (1 << (bits - 1)) else v


GOLDEN_U = 0x9E3779B97F4A7C15  # SplitMix64's Weyl increment (2^64 / golden ratio)
GOLDEN = signed(GOLDEN_U)
_M1U, _M2U = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB  # SplitMix64 finaliser multipliers
_M1, _M2 = signed(_M1U), signed(_M2U)
_H1, _H2 = 0x21F0AAAD, 0xD35A2D97  # lowbias32 multipliers (hash-prospector, bias 0.107)
_H1S, _H2S = signed(_H1, 32), signed(_H2, 32)


# -- SplitMix64 finaliser (Steele, Lea & Flood 2014): call keys and 64-bit words ----------------
def mix_int(z: int) -> int:
    """SplitMix64 finaliser on a Python int (mod 2^64, unsigned result)."""
    z &= MASK64
    z = ((z ^ (z >> 30)) * _M1U) & MASK64
    z = ((z ^ (z >> 27)) * _M2U) & MASK64
    return z ^ (z >> 31)


def _shr(z: Tensor, s: int) -> Tensor:
    """Logical right shift of int64 tensors (torch's >> is arithmetic)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def mix64(z: Tensor) -> Tensor:
    """SplitMix64 finaliser on an int64 tensor (returns a new tensor).

    Args:
        z: int64 tensor of 64-bit words (two's complement).
    """
    if z.device.type == "cpu":
        x = z.clone()
        mix64_into(x, torch.empty_like(x))
        return x
    z = z ^ _shr(z, 30)
    z = z * _M1
    z ^= _shr(z, 27)
    z *= _M2
    z ^= _shr(z, 31)
    return z


_M1N, _M2N = np.uint64(_M1U), np.uint64(_M2U)


def mix64_numpy(x: np.ndarray, t: np.ndarray) -> None:
    """``mix64`` of the uint64 array x in place (t: scratch of x's shape): NumPy's uint64 shifts
    are logical, so no masks (the CPU form of :func:`mix64_into`, the same bits)."""
    for shift, mult in ((30, _M1N), (27, _M2N), (31, None)):
        np.right_shift(x, shift, out=t)
        x ^= t
        if mult is not None:
            x *= mult


def mix64_into(x: Tensor, t: Tensor) -> None:
    """``mix64`` of the int64 tensor x in place (t: scratch of x's shape)."""
    if x.device.type == "cpu":  # the same words in NumPy, on views of the same memory
        mix64_numpy(x.numpy().view(np.uint64), t.numpy().view(np.uint64))
        return
    for shift, mult in ((30, _M1), (27, _M2), (31, None)):
        torch.bitwise_right_shift(x, shift, out=t)
        t &= (1 << (64 - shift)) - 1
        x ^= t
        if mult is not None:
            x *= mult


# -- lowbias32 with the key's high half between the rounds: 32-bit words -------------------------
def hash32_reference(j: int, k1: int, k2: int) -> int:
    """The element hash on Python ints (the specification the tensor code must match).

    Args:
        j: the element's index.
        k1: the key's low 32 bits, added to the index.
        k2: the key's high 32 bits, mixed in between the two rounds.
    """
    x = (j + k1) & MASK32
    x ^= x >> 16
    x = (x * _H1) & MASK32
    x ^= k2 & MASK32
    x ^= x >> 15
    x = (x * _H2) & MASK32
    x ^= x >> 15
    return x


def lowbias32_into(x: Tensor, t: Tensor, k2: Tensor) -> None:
    """x <- the element hash of x = j + k1 (int32, in place; t: scratch of x's shape)."""
    torch.bitwise_right_shift(x, 16, out=t)
    t &= 0xFFFF
    x ^= t
    x *= _H1S
    x ^= k2
    torch.bitwise_right_shift(x, 15, out=t)
    t &= 0x1FFFF
    x ^= t
    x *= _H2S
    torch.bitwise_right_shift(x, 15, out=t)
    t &= 0x1FFFF
    x ^= t


def split32(keys: Tensor) -> tuple[Tensor, Tensor]:
    """int64 keys (rows,) -> (k1, k2): the low and high 32-bit halves, int32 (rows, 1).

    The Python form is ``key & MASK32, key >> 32`` of the unsigned key.
    """
    lo = keys & MASK32
    lo = torch.where(lo >= (1 << 31), lo - (1 << 32), lo)
    hi = keys >> 32  # arithmetic shift: already in [-2^31, 2^31)
    return lo.to(torch.int32).reshape(-1, 1), hi.to(torch.int32).reshape(-1, 1)


# -- element formulas: a Python number, or a tensor (modified in place) --------------------------
def _floor(x: float | Tensor) -> int | Tensor:
    """floor of a Python float (an int) or of a float tensor (in place)."""
    return math.floor(x) if type(x) is float else x.floor_()


def unit64(z: int | Tensor, out: Tensor | None = None) -> float | Tensor:
    """The float64 uniform (z >>> 11) 2^-53 of a raw 64-bit word, signed or not (exact).

    Takes a Python int or an int64 tensor, which is shifted in place and written to ``out``.
    """
    z >>= 11
    z &= _M53
    if out is not None:  # a tensor: into the float output (exact, < 2^53)
        z = out.copy_(z)
    z *= 2.0**-53  # a Python int becomes a float here (exact)
    return z


def unit32(w: int | Tensor, out: Tensor | None = None) -> float | Tensor:
    """The float32 uniform s 2^-24 + 1/2, s = w >> 8 (arithmetic), of a raw signed 32-bit word.

    Equals ((w >>> 8) xor 2^23) 2^-24; exact in float32 and float64 alike. Takes a Python int
    or an int32 tensor (shifted in place, written to ``out``).
    """
    w >>= 8  # s in [-2^23, 2^23)
    if out is not None:
        w = out.copy_(w)
    w *= 2.0**-24
    w += 0.5
    return w


def _rounded_unit(p: int) -> Callable[..., float | Tensor]:
    def unit(w: int | Tensor, out: Tensor | None = None) -> float | Tensor:
        u = unit32(w, out)
        u *= 2.0**p
        u = _floor(u)
        u *= 2.0**-p
        return u

    return unit


_UNITS = {torch.float64: unit64, torch.float32: unit32}


def unit_function(dtype: torch.dtype) -> Callable[..., float | Tensor]:
    """The formula f(word, out=None) of the uniforms of ``dtype``: float64 from a 64-bit word,
    float32 from a 32-bit word, lower precisions (p significand bits) the float32 value rounded
    down, floor(u 2^p) 2^-p < 1 (``out`` then float32)."""
    unit = _UNITS.get(dtype)
    if unit is None:
        p = round(-math.log2(torch.finfo(dtype).eps)) + 1
        unit = _UNITS[dtype] = _rounded_unit(p)
    return unit


def scaled(u: float | Tensor, high: float | Tensor) -> int | Tensor:
    """floor(u high) of a float64 uniform, in float64 arithmetic (``integers``, index draws)."""
    x = u * high
    return math.floor(x) if type(x) is float else x.floor_().to(torch.int64)


def key63(z: int | Tensor) -> int | Tensor:
    """The 63-bit sort key z >>> 1 of a raw 64-bit word, signed or not (the dense subset sampler)."""
    z >>= 1
    z &= _M63
    return z
