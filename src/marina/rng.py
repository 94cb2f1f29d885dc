"""Keyed, counter-based randomness: the same worker draws the same numbers in any process.

Every random number in marina is a pure function of a key

    (seed, stream, round, worker, call, element)

There is no global generator and no hidden state beyond the per-object call counter:

- ``seed``: the experiment seed, given by the user.
- ``stream``: what the numbers are for ("compress", "minibatch", "coin", "clients", ...), so
  that adding draws for one purpose never shifts another.
- ``round``: the iteration k.
- ``worker``: the *global* worker id of the row. A process that hosts workers [4, 5] draws for
  them exactly what a process hosting all workers draws in rows 4 and 5. The id ``SHARED``
  (-1) keys draws that every worker must agree on (the coin c_k, PermK's permutation).
- ``call``: a counter advanced by exactly one per drawing method call, so the sequence of calls
  made by identical code is identical in every process.
- ``element``: the column of the draw within the call.

Numbers therefore do not depend on the device (CPU and CUDA give bit-identical draws: only
wrap-around integer arithmetic, shifts and exact int -> float conversions are used), on how
workers are distributed among processes, nor on how a long row is cut into chunks.

How the bits are made (two levels):

1. **Call keys** (a handful of numbers per call): the SplitMix64 finaliser ``mix64`` (Steele,
   Lea & Flood 2014, "Fast splittable pseudorandom number generators") chains seed, stream,
   round, worker id and call counter into a 64-bit key per row, split into two 32-bit halves
   ``(k1, k2)``.
2. **Elements** (the hot path). 32-bit words (float32 uniforms, ``words32``, permutations):
   ``h(j) = H(j + k1)``, where ``H`` is
   the 32-bit integer hash "lowbias32" with the constants of Wellons' hash-prospector search
   (``x ^= x >>> 16; x *= 0x21f0aaad; x ^= k2; x ^= x >>> 15; x *= 0xd35a2d97; x ^= x >>> 15``,
   avalanche bias 0.107, among the best two-multiply 32-bit hashes known), with the second
   key half xored in between the two rounds.

Why this is adequate: within one call, ``j -> h(j)`` is a bijection of 32-bit words (every
step is invertible), so a row never repeats a word among its first 2^32 columns, and the
avalanche quality of lowbias32 makes consecutive counters look independent (its worst-case
bit bias is ~0.1%, far below what any Monte-Carlo test in this project can resolve); rows and
calls differ by a full 64-bit SplitMix64 key, and injecting ``k2`` *between* the rounds means
two keys never give shifted copies of the same sequence (which a purely additive key would).
It is not a cryptographic generator, nor meant to be. It takes 14 in-place int32 operations
per word on cache-sized chunks, against 12 int64 operations per SplitMix64 word (whose
multiply has no vector instruction on AVX2 machines); see ``benchmarks/README.md``.

64-bit words (float64 uniforms, ``bits``, index sampling) are SplitMix64 proper: the finaliser
``mix64`` of the Weyl sequence ``key + (j + 1) * 0x9E3779B97F4A7C15`` with the full 64-bit call
key (Steele et al. 2014; passes BigCrush), so 53-bit uniforms cost one hash, not two.

Uniform floats: float32 uses the top 24 bits of one 32-bit word w, read as a signed number s (an
arithmetic shift, one operation less than a logical one): u = s 2^-24 + 1/2, which equals
((w >>> 8) xor 2^23) 2^-24, exactly representable, in [0, 1). float64 uses the top 53 bits of
the 64-bit word: u = (z >>> 11) 2^-53. Lower precisions keep the top bits of the float32 draw.

One implementation of each distribution, two representations of its numbers. The distributions
(``Randomness``'s methods) are written once, on raw words, with element formulas (``_unit64``,
``_scaled``, ``_key63``) that take a Python number or a tensor alike, and a few array
operations (sort, smallest k, select rows) supplied by one of two array backends:
``_TensorArrays`` ((rows, cols) tensors, any device) and ``_IntArrays`` (lists of rows of Python
ints, the specification ``hash32_reference`` / ``_mix_int`` computed element by element). A
CPU object with few rows (at most ``_PY_KEY_ROWS``) is built with Python-int row keys and draws
a call on Python ints when it hashes at most ``_PY_ELEMENTS`` elements, since a dozen small
tensor operations cost far more than hashing that many words; this choice is made in one
place (``Randomness._call``). Either way the draws are the same bits.
"""

from __future__ import annotations

import heapq
import math
import operator
import zlib
from array import array

import torch
from torch import Tensor

__all__ = [
    "GENERATOR_VERSION",
    "SHARED",
    "Randomness",
    "ElementDraws",
    "mix64",
    "stream_id",
    "hash32_reference",
]

GENERATOR_VERSION = 1
"""Version of the generator: bump it whenever any draw changes (any method, key, shape or device).

It is hashed into run ids, so results of different generators never share a directory entry;
``tests/test_rng_golden.py`` pins the draws of the current version.
"""

SHARED = -1
"""Worker id that keys draws common to all workers."""

_CPU = torch.device("cpu")

_MASK64 = (1 << 64) - 1
_MASK32 = (1 << 32) - 1
_M53 = (1 << 53) - 1
_M63 = (1 << 63) - 1


def _signed(v: int, bits: int = 64) -> int:
    v &= (1 << bits) - 1
    return v - (1 << bits) if v >= (1 << (bits - 1)) else v


_GOLDEN_U = 0x9E3779B97F4A7C15  # SplitMix64's Weyl increment (2^64 / golden ratio)
_GOLDEN = _signed(_GOLDEN_U)
_M1 = _signed(0xBF58476D1CE4E5B9)
_M2 = _signed(0x94D049BB133111EB)
_H1 = 0x21F0AAAD  # lowbias32 multipliers (hash-prospector, bias 0.107)
_H2 = 0xD35A2D97
_H1S = _signed(_H1, 32)
_H2S = _signed(_H2, 32)

# Elements generated per in-cache chunk on CPU (int32: 512 KiB scratch, fits L2).
_CPU_CHUNK = 1 << 17
_CUDA_CHUNK = 1 << 26
# sample_without_replacement scans the whole population at or below this size
_DENSE_POPULATION = 4096
# Randomness objects with at most this many rows (on the CPU) derive their keys with Python
# ints: a handful of integer operations per row instead of two dozen small tensor operations
_PY_KEY_ROWS = 32
# ... and draw on Python ints the calls that hash at most this many elements in all (rows x
# columns; for sample_without_replacement k per sparse row, the population per dense row),
# making the result tensor with one call (the break-even point against the fixed cost of the
# tensor code's small operations: benchmarks/README.md)
_PY_ELEMENTS = 128
# Python draws scale by per-row highs / populations up to this size (beyond it: the tensor code)
_PY_HIGH = 2.0**62
_PY_FLOATS = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
_REDRAW = 0xD6E8FEB86659FD93  # attempt multiplier of the duplicate redraws

# Element counters (int32) and the SplitMix64 Weyl sequence (int64), shared by every call:
# (device, dtype) -> 1-D tensor, grown on demand, never written after creation
_ARANGE: dict[tuple[torch.device, torch.dtype], Tensor] = {}


def _shared_arange(width: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The first ``width`` element counters (int32) or Weyl increments (int64, (j + 1) golden)."""
    ar = _ARANGE.get((device, dtype))
    if ar is None or ar.numel() < width:
        size = max(width, 1024)
        ar = torch.arange(size, dtype=dtype, device=device)
        if dtype == torch.int64:
            ar = (ar + 1) * _GOLDEN  # the Weyl sequence of SplitMix64 (wraps mod 2^64)
        _ARANGE[(device, dtype)] = ar
    return ar[:width]


def _mix_int(z: int) -> int:
    """SplitMix64 finaliser on a Python int (mod 2^64)."""
    z &= _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _shr(z: Tensor, s: int) -> Tensor:
    """Logical right shift of int64 tensors (torch's >> is arithmetic)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def mix64(z: Tensor) -> Tensor:
    """SplitMix64 finaliser on an int64 tensor (returns a new tensor)."""
    z = z ^ _shr(z, 30)
    z = z * _M1
    z ^= _shr(z, 27)
    z *= _M2
    z ^= _shr(z, 31)
    return z


def hash32_reference(j: int, k1: int, k2: int) -> int:
    """The element hash on Python ints (the specification the tensor code must match)."""
    x = (j + k1) & _MASK32
    x ^= x >> 16
    x = (x * _H1) & _MASK32
    x ^= k2 & _MASK32
    x ^= x >> 15
    x = (x * _H2) & _MASK32
    x ^= x >> 15
    return x


def stream_id(stream: str | int) -> int:
    """A stable integer for a stream name (CRC32, identical in every process and run)."""
    if isinstance(stream, int):
        return stream
    return zlib.crc32(stream.encode("utf-8"))


def _split32(keys: Tensor) -> tuple[Tensor, Tensor]:
    """int64 keys (rows,) -> (low, high) 32-bit halves as int32 (rows, 1), two's complement."""
    lo = keys & _MASK32
    lo = torch.where(lo >= (1 << 31), lo - (1 << 32), lo)
    hi = keys >> 32  # arithmetic shift: already in [-2^31, 2^31)
    return lo.to(torch.int32).reshape(-1, 1), hi.to(torch.int32).reshape(-1, 1)


# -- element formulas: each takes a Python number or a tensor (modified in place) ----------------
_MANTISSA: dict[torch.dtype, int] = {}


def _mantissa_bits(dtype: torch.dtype) -> int:
    """Significand bits p of a floating dtype (implicit bit included): uniforms are k 2^-p."""
    p = _MANTISSA.get(dtype)
    if p is None:
        p = _MANTISSA[dtype] = round(-math.log2(torch.finfo(dtype).eps)) + 1
    return p


def _floor(x):  # noqa: ANN001, ANN202
    """floor of a Python float (an int) or of a float tensor (in place)."""
    return math.floor(x) if type(x) is float else x.floor_()


def _unit64(z, out: Tensor | None = None):  # noqa: ANN001, ANN202
    """The float64 uniform (z >>> 11) 2^-53 of a raw signed 64-bit word (exact).

    Takes a Python int or an int64 tensor, which is shifted in place and written to ``out``.
    """
    z >>= 11
    z &= _M53
    if out is not None:  # a tensor: into the float output (exact, < 2^53)
        z = out.copy_(z)
    z *= 2.0**-53  # a Python int becomes a float here (exact)
    return z


def _unit32(w, out: Tensor | None = None):  # noqa: ANN001, ANN202
    """The float32 uniform s 2^-24 + 1/2, s = w >> 8 (arithmetic), of a raw signed 32-bit word.

    Exact in float32 and float64 alike. Takes a Python int or an int32 tensor (shifted in place,
    written to ``out``).
    """
    w >>= 8  # s in [-2^23, 2^23)
    if out is not None:
        w = out.copy_(w)
    w *= 2.0**-24
    w += 0.5
    return w


def _unit_function(dtype: torch.dtype):  # noqa: ANN202
    """The formula f(word, out=None) of the uniforms of ``dtype``: float64 from a 64-bit word,
    float32 from a 32-bit word, lower precisions the float32 value rounded down to their p
    significand bits, floor(u 2^p) 2^-p < 1 (``out`` then float32)."""
    unit = _UNITS.get(dtype)
    if unit is None:
        unit = _UNITS[dtype] = _rounded_unit(_mantissa_bits(dtype))
    return unit


def _rounded_unit(p: int):  # noqa: ANN202

    def unit(w, out: Tensor | None = None):  # noqa: ANN001, ANN202
        u = _unit32(w, out)
        u *= 2.0**p
        u = _floor(u)
        u *= 2.0**-p
        return u

    return unit


_UNITS = {torch.float64: _unit64, torch.float32: _unit32}


def _scaled(u, high):  # noqa: ANN001, ANN202
    """floor(u high) of a float64 uniform, in float64 arithmetic (``integers``, index draws)."""
    x = u * high
    return math.floor(x) if type(x) is float else x.floor_().to(torch.int64)


def _key63(z):  # noqa: ANN001, ANN202
    """The 63-bit sort key z >>> 1 of a raw 64-bit word (the dense subset sampler)."""
    z >>= 1
    z &= _M63
    return z


def _swr_is_dense(pop, k: int):  # noqa: ANN001, ANN202
    """Whether a row of sample_without_replacement takes the k smallest of per-element keys
    (``pop`` an int or a tensor of per-row populations)."""
    return (k > 1) & ((pop <= _DENSE_POPULATION) | (2 * k > pop))


class ElementDraws:
    """The draws of one call, addressable by element (column) range.

    ``Randomness.elements()`` advances the call counter by one and returns this object;
    ``words(a, b)``, ``words64(a, b)`` and ``uniform(a, b)`` give columns ``[a, b)`` of that call,
    so a long row can be drawn piece by piece inside a fused loop and still equal the one-shot
    draw. 32-bit words (and float32 uniforms) come from the keyed lowbias32 hash of the element,
    64-bit words (and float64 uniforms) from SplitMix64 at state ``key + (j + 1) * golden``.
    """

    def __init__(self, keys: Tensor, device: torch.device) -> None:
        self.keys = keys.reshape(-1, 1)
        self._k12: tuple[Tensor, Tensor] | None = None
        self.device = device
        self.rows = int(self.keys.shape[0])
        self.chunk = _CUDA_CHUNK if device.type == "cuda" else _CPU_CHUNK

    def _arange(self, width: int, dtype: torch.dtype) -> Tensor:
        return _shared_arange(width, dtype, self.device)

    def _halves(self) -> tuple[Tensor, Tensor]:
        if self._k12 is None:  # only the 32-bit hash needs them
            self._k12 = _split32(self.keys.reshape(-1))
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
        torch.add(self.k1 + _signed(start, 32), self._arange(x.shape[1], torch.int32), out=x)
        torch.bitwise_right_shift(x, 16, out=t)
        t &= 0xFFFF
        x ^= t
        x *= _H1S
        x ^= self.k2
        torch.bitwise_right_shift(x, 15, out=t)
        t &= 0x1FFFF
        x ^= t
        x *= _H2S
        torch.bitwise_right_shift(x, 15, out=t)
        t &= 0x1FFFF
        x ^= t

    def _mix64_into(self, x: Tensor, t: Tensor, start: int) -> None:
        """x (rows, w) int64 <- SplitMix64 words of elements start .. start + w - 1."""
        torch.add(self.keys + _signed(start * _GOLDEN), self._arange(x.shape[1], torch.int64), out=x)
        for shift, mult in ((30, _M1), (27, _M2), (31, None)):
            torch.bitwise_right_shift(x, shift, out=t)
            t &= (1 << (64 - shift)) - 1
            x ^= t
            if mult is not None:
                x *= mult

    def _pieces(self, start: int, stop: int):
        step = max(1, self.chunk // max(1, self.rows))
        for a in range(start, stop, step):
            yield a, min(stop, a + step)

    def words(self, start: int, stop: int) -> Tensor:
        """(rows, stop - start) int32: the 32-bit words of elements [start, stop)."""
        return self._fill(start, stop, torch.int32, self._hash_into)

    def words64(self, start: int, stop: int) -> Tensor:
        """(rows, stop - start) int64: the 64-bit words of elements [start, stop)."""
        return self._fill(start, stop, torch.int64, self._mix64_into)

    def _fill(self, start: int, stop: int, dtype: torch.dtype, hash_into) -> Tensor:  # noqa: ANN001
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
        unit = _unit_function(out.dtype)
        shape = (self.rows, min(w, step))
        x = torch.empty(shape, dtype=torch.int64 if wide else torch.int32, device=self.device)
        t = torch.empty_like(x)
        # below float32 the value is made in float32, then rounded down to the output's bits
        low = None
        if not wide and out.dtype != torch.float32:
            low = torch.empty(shape, dtype=torch.float32, device=self.device)
        for a, b in self._pieces(start, stop):
            xa, ta, o = x[:, : b - a], t[:, : b - a], out[:, a - start : b - start]
            (self._mix64_into if wide else self._hash_into)(xa, ta, a)
            if low is None:
                unit(xa, o)
            else:
                o.copy_(unit(xa, low[:, : b - a]))
        return out


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


class _IntArrays:
    """Arrays of small CPU draws: row-major flat lists of Python numbers (rows of ``cols``
    elements); call keys are unsigned ints.

    Raw words are the specification computed element by element: ``hash32_reference`` (signed
    like the tensor code's int32 words) and ``_mix_int`` of the Weyl sequence (unsigned unless
    ``signed``: the formulas on them mask what they keep).
    """

    @staticmethod
    def words32(keys: list[int], cols: int) -> list[int]:
        return [
            (hash32_reference(j, key, key >> 32) ^ 1 << 31) - (1 << 31) for key in keys for j in range(cols)
        ]

    @staticmethod
    def words64(keys: list[int], cols: int | list[int], signed: bool = False) -> list[int]:
        """Columns 0 .. cols - 1 of each row (``cols`` one count, or one per row)."""
        widths = cols if isinstance(cols, list) else [cols] * len(keys)
        z = [_mix_int(key + j * _GOLDEN_U) for key, w in zip(keys, widths) for j in range(1, w + 1)]
        return [(v ^ 1 << 63) - (1 << 63) for v in z] if signed else z

    def uniform(self, keys: list[int], cols: int, dtype: torch.dtype, f=None, per_row=None) -> list:  # noqa: ANN001
        """Uniforms u, or f(u, per_row[r]) in row r (one pass over the elements)."""
        words = self.words64(keys, cols) if dtype == torch.float64 else self.words32(keys, cols)
        unit = _unit_function(dtype)
        if f is None:
            return list(map(unit, words))
        if cols != 1:
            per_row = [a for a in per_row for _ in range(cols)]
        return [f(unit(w), a) for w, a in zip(words, per_row)]

    @staticmethod
    def map(f, x: list) -> list:  # noqa: ANN001
        return list(map(f, x))

    @staticmethod
    def per_row(values: list, rows: int) -> list:
        return values

    @staticmethod
    def rowwise(f, values: list, *args) -> list:  # noqa: ANN001
        return [f(v, *args) for v in values]

    @staticmethod
    def width(pops: list[int]) -> list[int]:
        return pops

    @staticmethod
    def argsort(w: list[int], cols: int) -> list[int]:
        # Python's sort is stable, like the tensor code's
        return [j - r for r in range(0, len(w), cols) for j in sorted(range(r, r + cols), key=w.__getitem__)]

    @staticmethod
    def smallest(z: list[int], k: int, pops: list[int]) -> list[int]:
        # row r holds its population's columns; ties go to the smaller index
        out, r = [], 0
        for p in pops:
            out += sorted(j for _, j in heapq.nsmallest(k, zip(z[r : r + p], range(p))))
            r += p
        return out

    @staticmethod
    def sort(x: list, cols: int) -> list:
        return [v for r in range(0, len(x), cols) for v in sorted(x[r : r + cols])]

    @staticmethod
    def duplicates(x: list, cols: int) -> list[bool] | None:
        dup = [j % cols != 0 and x[j] == x[j - 1] for j in range(len(x))]
        return dup if any(dup) else None

    @staticmethod
    def where(mask: list[bool], a: list, b: list) -> list:
        return [u if m else v for m, u, v in zip(mask, a, b)]

    @staticmethod
    def rekey(keys: list[int], salt: int) -> list[int]:
        return [_mix_int(key ^ salt) for key in keys]

    @staticmethod
    def all(mask: list[bool] | bool) -> bool:
        return mask if mask is False else all(mask)

    @staticmethod
    def any(mask: list[bool] | bool) -> bool:
        return mask if mask is False else any(mask)

    @staticmethod
    def split(mask: list[bool]) -> tuple[list[int], list[int]]:
        return [r for r, m in enumerate(mask) if m], [r for r, m in enumerate(mask) if not m]

    @staticmethod
    def take(x: list, rows: list[int]) -> list:
        return [x[r] for r in rows]

    @staticmethod
    def merge(rows: int, k: int, parts: list[tuple[list[int], list]]) -> list:
        out = [0] * (rows * k)
        for index, values in parts:
            for i, r in enumerate(index):
                out[r * k : (r + 1) * k] = values[i * k : (i + 1) * k]
        return out

    @staticmethod
    def tensor(x: list, dtype: torch.dtype, rows: int, cols: int) -> Tensor:
        """The (rows, cols) CPU tensor; through an ``array`` buffer where one fits (about half
        the cost of ``torch.tensor(list)``)."""
        code = _TYPECODES.get(dtype)
        if code is None or not x:
            return torch.tensor(x, dtype=dtype).view(rows, cols)
        return torch.frombuffer(array(code, x), dtype=dtype).view(rows, cols)


_INTS = _IntArrays()


class _TensorArrays:
    """Arrays of draws as (rows, cols) tensors on one device; call keys (rows,) int64."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def words32(self, keys: Tensor, cols: int) -> Tensor:
        return ElementDraws(keys, self.device).words(0, cols)

    def words64(self, keys: Tensor, cols: int, signed: bool = True) -> Tensor:
        return ElementDraws(keys, self.device).words64(0, cols)

    def uniform(self, keys: Tensor, cols: int, dtype: torch.dtype, f=None, per_row=None) -> Tensor:  # noqa: ANN001
        u = ElementDraws(keys, self.device).uniform(0, cols, dtype)
        return u if f is None else f(u, per_row)

    @staticmethod
    def map(f, x: Tensor) -> Tensor:  # noqa: ANN001
        return f(x)

    def per_row(self, values: Tensor | float, rows: int) -> Tensor | float:
        """A per-row operand: (rows, 1) float64 (or (1, 1), broadcast) for a tensor, else a float."""
        if isinstance(values, Tensor):
            return values.to(device=self.device, dtype=torch.float64).reshape(-1, 1)
        return float(values)

    @staticmethod
    def rowwise(f, values: Tensor | int, *args):  # noqa: ANN001, ANN205
        return f(values, *args)

    @staticmethod
    def width(pops: Tensor | int) -> int:
        return int(pops.max()) if isinstance(pops, Tensor) else int(pops)

    @staticmethod
    def argsort(w: Tensor, cols: int) -> Tensor:
        if w.shape[0] == 1:  # torch's 1-D sort is several times faster than a sort along dim 1
            return torch.sort(w[0], stable=True).indices[None, :]
        return torch.sort(w, dim=1, stable=True).indices

    def smallest(self, z: Tensor, k: int, pops: Tensor | int) -> Tensor:
        if isinstance(pops, Tensor):  # columns at or beyond a row's population never win
            cols = _shared_arange(z.shape[1], torch.int32, self.device)
            z.masked_fill_(cols[None, :] >= pops[:, None], _M63)
        return torch.sort(torch.topk(z, k, dim=1, largest=False).indices, dim=1).values

    @staticmethod
    def sort(x: Tensor, cols: int) -> Tensor:
        return torch.sort(x, dim=1).values

    @staticmethod
    def duplicates(x: Tensor, cols: int) -> Tensor | None:
        dup = torch.zeros_like(x, dtype=torch.bool)
        dup[:, 1:] = x[:, 1:] == x[:, :-1]
        return dup if bool(dup.any()) else None

    @staticmethod
    def where(mask: Tensor, a: Tensor, b: Tensor) -> Tensor:
        return torch.where(mask, a, b)

    @staticmethod
    def rekey(keys: Tensor, salt: int) -> Tensor:
        return mix64(keys ^ _signed(salt))

    @staticmethod
    def all(mask: Tensor | bool) -> bool:
        return bool(mask.all()) if isinstance(mask, Tensor) else bool(mask)

    @staticmethod
    def any(mask: Tensor | bool) -> bool:
        return bool(mask.any()) if isinstance(mask, Tensor) else bool(mask)

    @staticmethod
    def split(mask: Tensor) -> tuple[Tensor, Tensor]:
        return torch.nonzero(mask).reshape(-1), torch.nonzero(~mask).reshape(-1)

    @staticmethod
    def take(x: Tensor, rows: Tensor) -> Tensor:
        return x[rows]

    def merge(self, rows: int, k: int, parts: list[tuple[Tensor, Tensor]]) -> Tensor:
        out = torch.empty((rows, k), dtype=torch.int64, device=self.device)
        for index, values in parts:
            out[index] = values
        return out

    @staticmethod
    def tensor(x: Tensor, dtype: torch.dtype, rows: int, cols: int) -> Tensor:
        return x


_TENSORS: dict[torch.device, _TensorArrays] = {}


class Randomness:
    """Random draws for the rows (workers) that one process hosts, in one round.

    Row ``r`` of every draw is keyed by ``worker_ids[r]``. Each drawing method advances the call
    counter by exactly one, so identical code makes identical calls everywhere.

    Args:
        seed: experiment seed (any Python int).
        stream: purpose of the draws (a name or an int).
        round: iteration number k.
        worker_ids: global ids of the hosted workers, an int sequence or 1-D tensor.
        device: where drawn tensors are created.
    """

    def __init__(
        self,
        seed: int,
        stream: str | int,
        round: int,
        worker_ids: Tensor | list[int] | range,
        device: torch.device | str | None = None,
    ) -> None:
        self.seed = int(seed)
        self.stream = stream
        self.round = int(round)
        if isinstance(device, torch.device):
            self.device = device
        else:
            self.device = torch.device(device) if device is not None else _CPU
        ids_list: list[int] | None = None
        if isinstance(worker_ids, Tensor):
            ids = worker_ids
            if ids.dtype != torch.int64 or ids.device != self.device:
                ids = ids.to(dtype=torch.int64, device=self.device)
            self.worker_ids = ids if ids.dim() == 1 else ids.reshape(-1)
        else:
            ids_list = [int(w) for w in worker_ids]
            self.worker_ids = torch.tensor(ids_list, dtype=torch.int64, device=self.device)
        base = _mix_int(self.seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019)
        base = _mix_int(base ^ (stream_id(stream) * 0xD1B54A32D192ED03))
        base = _mix_int(base ^ ((self.round + 1) * 0xAF251AF3B0F025B5))
        self._base = base
        tensors = _TENSORS.get(self.device)
        if tensors is None:
            tensors = _TENSORS[self.device] = _TensorArrays(self.device)
        self._tensors = tensors
        # the implementation choice: small CPU row sets keep their row keys as Python ints (the
        # same keys mod 2^64), and _call draws their small calls on Python ints
        self._row_ints: list[int] | None = None
        self._row_keys: Tensor | None = None
        if self.device.type == "cpu" and self.worker_ids.numel() <= _PY_KEY_ROWS:
            if ids_list is None:
                ids_list = self.worker_ids.tolist()
            self._row_ints = [_mix_int(w * 0x9E3779B97F4A7C15 + base) for w in ids_list]
        else:
            self._row_keys = mix64(self.worker_ids * _GOLDEN + _signed(base))
        self.calls = 0

    @property
    def n_rows(self) -> int:
        return int(self.worker_ids.numel())

    def shared(self) -> Randomness:
        """Draws that every worker agrees on: a one-row object keyed by ``SHARED``.

        Its call counter starts at this object's counter (0 for a fresh object), so it draws
        what ``Randomness(seed, stream, round, [SHARED])`` draws after that many calls.
        """
        out = Randomness(self.seed, self.stream, self.round, [SHARED], self.device)
        out.calls = self.calls
        return out

    def advance(self, calls: int = 1) -> None:
        """Skip ``calls`` drawing calls (for code that drew them from :meth:`shared` instead)."""
        self.calls += int(calls)

    # -- call keys ----------------------------------------------------------------------------
    def _call_key(self) -> int:
        return _mix_int((self.calls + 1) * 0x9E3779B97F4A7C15)

    def _next_keys(self) -> Tensor:
        """(rows,) int64 keys of the next call (the counter is not advanced)."""
        if self._row_ints is not None:
            call_key = self._call_key()
            return torch.tensor([_signed(_mix_int(v ^ call_key)) for v in self._row_ints], dtype=torch.int64)
        return mix64(self._row_keys ^ _signed(self._call_key()))

    def _call(self, elements: int | None):  # noqa: ANN202
        """(arrays, keys) of the next call, the counter advanced: Python ints when this object
        keeps Python row keys and the call hashes at most ``_PY_ELEMENTS`` elements in all
        (``elements``; None where the Python numbers cannot represent the call), else tensors."""
        self.calls += 1
        call_key = _mix_int(self.calls * 0x9E3779B97F4A7C15)  # (counter + 1) golden, as _call_key
        if self._row_ints is None:
            return self._tensors, mix64(self._row_keys ^ _signed(call_key))
        ints = [_mix_int(v ^ call_key) for v in self._row_ints]
        if elements is not None and 0 <= elements <= _PY_ELEMENTS:
            return _INTS, ints
        return self._tensors, torch.tensor([_signed(v) for v in ints], dtype=torch.int64)

    def elements(self) -> ElementDraws:
        """One drawing call whose columns can be generated piece by piece (fused loops).

        ``rng.elements().uniform(0, cols, dtype)`` equals ``rng.uniform(cols, dtype)`` made at
        the same call counter.
        """
        keys = self._next_keys()
        self.calls += 1
        return ElementDraws(keys, self.device)

    # -- raw bits -----------------------------------------------------------------------------
    def bits(self, cols: int) -> Tensor:
        """(rows, cols) int64 tensor of uniformly random 64-bit words."""
        arrays, keys = self._call(self.n_rows * cols)
        return arrays.tensor(arrays.words64(keys, cols, signed=True), torch.int64, self.n_rows, cols)

    def words32(self, cols: int) -> Tensor:
        """(rows, cols) int32 tensor of uniformly random 32-bit words (two's complement)."""
        arrays, keys = self._call(self.n_rows * cols)
        return arrays.tensor(arrays.words32(keys, cols), torch.int32, self.n_rows, cols)

    # -- distributions ------------------------------------------------------------------------
    def uniform(self, cols: int, dtype: torch.dtype = torch.float64) -> Tensor:
        """(rows, cols) uniform numbers in [0, 1) (53 random bits for float64, 24 otherwise)."""
        arrays, keys = self._call(self.n_rows * cols if dtype in _PY_FLOATS else None)
        return arrays.tensor(arrays.uniform(keys, cols, dtype), dtype, self.n_rows, cols)

    def integers(self, high: int | Tensor, cols: int) -> Tensor:
        """(rows, cols) int64 uniform on {0, ..., high-1}; ``high`` scalar or per row (rows,).

        floor(u high) of a float64 uniform u (in float64 arithmetic).
        """
        highs = self._py_highs(high)
        arrays, keys = self._call(self.n_rows * cols if highs is not None else None)
        h = highs if arrays is _INTS else arrays.per_row(high, self.n_rows)
        return arrays.tensor(
            arrays.uniform(keys, cols, torch.float64, _scaled, h), torch.int64, self.n_rows, cols
        )

    def _py_highs(self, high: int | Tensor) -> list[float] | None:
        """Per-row ``high`` as Python floats (the float64 values the tensor code multiplies by),
        for a small CPU row set; None where the tensor code must handle it (large or non-finite
        values, a tensor that is neither one entry nor one per row)."""
        rows = self.n_rows
        if self._row_ints is None:
            return None
        if isinstance(high, Tensor):
            if high.numel() not in (1, rows):
                return None
            hs = [float(h) for h in high.reshape(-1).tolist()]
            hs = hs * rows if len(hs) == 1 else hs
        else:
            hs = [float(high)] * rows
        return hs if all(abs(h) <= _PY_HIGH for h in hs) else None

    def bernoulli(self, p: float, cols: int = 1) -> Tensor:
        """(rows, cols) boolean, each True with probability p: u < p for a float64 uniform u."""
        arrays, keys = self._call(self.n_rows * cols if type(p) in (float, int) else None)
        ps = [p] * self.n_rows if arrays is _INTS else p
        return arrays.tensor(
            arrays.uniform(keys, cols, torch.float64, operator.lt, ps), torch.bool, self.n_rows, cols
        )

    def permutation(self, size: int) -> Tensor:
        """(rows, size) int64: a uniformly random permutation of {0, ..., size-1} per row.

        Stable argsort of one 32-bit word per element: exact ties (probability ~size^2/2^33 in
        all, each fixing the order of one pair) are broken by position. O(size log size).
        """
        arrays, keys = self._call(self.n_rows * size)
        return arrays.tensor(arrays.argsort(arrays.words32(keys, size), size), torch.int64, self.n_rows, size)

    def sample_without_replacement(self, population: int | Tensor, k: int) -> Tensor:
        """(rows, k) int64: row r is a uniformly random k-subset of {0, ..., population_r - 1}.

        Returned sorted within each row. Each row uses one of two methods, chosen from its own
        (population, k) only, so a row's draw never depends on the other hosted rows:

        - k >= 2 and (population up to 4096 or 2k > population): the k smallest of one random
          63-bit key per element, O(population) per row;
        - otherwise (always for k = 1): draw k with replacement, redraw the duplicates, repeat
          (every step is equivariant under permutations of the population, so the final k-set
          is uniform), O(k log k) expected per row -- never a pass over the population.
        """
        rows = self.n_rows
        pops: list[int] | None = None  # per-row populations as Python ints (small row sets)
        if isinstance(population, Tensor):
            pop = population.to(device=self.device, dtype=torch.int64).reshape(-1)
            if pop.numel() != rows:
                raise ValueError(f"population has {pop.numel()} entries, expected one per row ({rows})")
            if self._row_ints is not None:
                pops = pop.tolist()
                smallest = min(pops) if rows else 0
            else:
                smallest = int(pop.min()) if rows else 0
        else:
            pop = smallest = int(population)
            if self._row_ints is not None:
                pops = [pop] * rows
        if k < 0:
            raise ValueError(f"k == {k}, must be >= 0")
        if rows and k > smallest:
            raise ValueError(f"k == {k} exceeds the smallest population {smallest}")
        work = None
        if pops is not None and k > 0 and max(pops, default=0) <= _PY_HIGH:
            work = rows if k == 1 else sum(p if _swr_is_dense(p, k) else k for p in pops)
        arrays, keys = self._call(work)
        if k == 0 or rows == 0:
            return torch.empty((rows, k), dtype=torch.int64, device=self.device)
        if arrays is _INTS:
            pop = pops
        dense = k > 1 and arrays.rowwise(_swr_is_dense, pop, k)  # k = 1: never dense
        if arrays.all(dense):
            out = self._swr_dense(arrays, keys, pop, k)
        elif not arrays.any(dense):
            out = self._swr_sparse(arrays, keys, pop, k)
        else:
            di, si = arrays.split(dense)
            parts = [
                (di, self._swr_dense(arrays, arrays.take(keys, di), arrays.take(pop, di), k)),
                (si, self._swr_sparse(arrays, arrays.take(keys, si), arrays.take(pop, si), k)),
            ]
            out = arrays.merge(rows, k, parts)
        return arrays.tensor(out, torch.int64, rows, k)

    @staticmethod
    def _swr_dense(arrays, keys, pop, k: int):  # noqa: ANN001, ANN205
        """The k smallest of one random 63-bit key per element (ties: probability ~2^-63)."""
        z = arrays.map(_key63, arrays.words64(keys, arrays.width(pop)))
        return arrays.smallest(z, k, pop)

    @staticmethod
    def _swr_sparse(arrays, keys, pop, k: int):  # noqa: ANN001, ANN205
        """Draw with replacement, redraw duplicates until none is left (row-wise)."""
        popf = arrays.per_row(pop, len(keys))
        draw = lambda ks: arrays.uniform(ks, k, torch.float64, _scaled, popf)
        if k == 1:  # one draw per row: never a duplicate
            return draw(keys)
        idx = arrays.sort(draw(keys), k)
        attempt = 0
        while (dup := arrays.duplicates(idx, k)) is not None:
            attempt += 1
            fresh = draw(arrays.rekey(keys, _mix_int(attempt * _REDRAW)))
            # column j of the redraw replaces a duplicate in column j
            idx = arrays.sort(arrays.where(dup, fresh, idx), k)
        return idx
