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
It is not a cryptographic generator, nor meant to be. It costs about 14 in-place int32
operations per word on cache-sized chunks (in L2), about 3x cheaper per element than SplitMix64
on int64 tensors (whose multiply has no vector instruction on AVX2 machines); 16 x 10^6 float32
uniforms take about 2-3 copies of the tensor, against ~40 for the original one-shot int64 code.

64-bit words (float64 uniforms, ``bits``, index sampling) are SplitMix64 proper: the finaliser
``mix64`` of the Weyl sequence ``key + (j + 1) * 0x9E3779B97F4A7C15`` with the full 64-bit call
key (Steele et al. 2014; passes BigCrush). On int64 tensors it takes 12 operations per word
against 2 x 13 for two 32-bit words, so 53-bit uniforms cost one hash, not two.

Uniform floats: float32 uses the top 24 bits of one 32-bit word w, read as a signed number s (an
arithmetic shift, one operation less than a logical one): u = s 2^-24 + 1/2, which equals
((w >>> 8) xor 2^23) 2^-24, exactly representable, in [0, 1). float64 uses the top 53 bits of
the 64-bit word: u = (z >>> 11) 2^-53. Lower precisions keep the top bits of the float32 draw.

Small draws: a CPU object with few rows (at most 32) computes the keys of every call, and the
whole of any call that hashes at most ~128 elements, element by element on Python ints (the
formulas above; ``hash32_reference`` is the 32-bit hash), and makes the result tensor in one
call, since a dozen small tensor operations cost far more than the hashing. This is an
implementation detail: the draws are still a pure function of the key, bit for bit the same
as the tensor code gives (which larger calls and other devices use).
"""

from __future__ import annotations

import heapq
import math
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
# ... and their drawing calls that hash at most this many elements in all (rows x columns; for
# sample_without_replacement k per sparse row, the population per dense row) are drawn on
# Python ints too, then made into a tensor with one call: ~0.5-0.7 us per element against a
# fixed ~150-250 us for the two to three dozen small tensor operations of the tensor code (the
# two break even near 150-200 elements)
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


def _py_words64(keys: list[int], cols: int) -> list[int]:
    """Unsigned SplitMix64 words of elements 0 .. cols - 1 of each (unsigned) call key, row-major."""
    return [_mix_int(key + j * _GOLDEN_U) for key in keys for j in range(1, cols + 1)]


def _py_words32(keys: list[int], cols: int) -> list[int]:
    """Unsigned lowbias32 words of elements 0 .. cols - 1 of each (unsigned) call key, row-major
    (k1 = key mod 2^32 is added to the counter mod 2^32, k2 = key >> 32)."""
    return [hash32_reference(j, key, key >> 32) for key in keys for j in range(cols)]


def _mantissa_bits(dtype: torch.dtype) -> int:
    """Significand bits p of a floating dtype (implicit bit included): uniforms are k 2^-p."""
    return round(-math.log2(torch.finfo(dtype).eps)) + 1


def _py_uniform(keys: list[int], cols: int, dtype: torch.dtype) -> list[float]:
    """Row-major uniforms of elements 0 .. cols - 1 as Python floats: exactly the values of
    :meth:`ElementDraws.uniform` (every step is exact in float64)."""
    if dtype == torch.float64:
        return [(z >> 11) * 2.0**-53 for z in _py_words64(keys, cols)]
    u = [((w >> 8) ^ 0x800000) * 2.0**-24 for w in _py_words32(keys, cols)]
    if dtype != torch.float32:
        p = _mantissa_bits(dtype)
        u = [math.floor(x * 2.0**p) * 2.0**-p for x in u]
    return u


def _py_scaled(keys: list[int], cols: int, highs: list[float]) -> list[int]:
    """Row-major floor(u high_r) of the float64 uniforms of each key (``integers``, and the
    with-replacement draws of ``sample_without_replacement``), in float64 arithmetic."""
    u = _py_uniform(keys, cols, torch.float64)
    return [math.floor(u[i] * highs[i // cols]) for i in range(len(u))]


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


def _py_tensor(flat: list, dtype: torch.dtype, rows: int, cols: int) -> Tensor:
    """(rows, cols) CPU tensor of the row-major values ``flat`` (each exact in ``dtype``).

    Through an ``array`` buffer where one fits: about half the cost of ``torch.tensor(list)``.
    """
    code = _TYPECODES.get(dtype)
    if code is None or not flat:
        return torch.tensor(flat, dtype=dtype).view(rows, cols)
    return torch.frombuffer(array(code, flat), dtype=dtype).view(rows, cols)


def _swr_is_dense(pop: int, k: int) -> bool:
    """Whether a row of sample_without_replacement takes the k smallest of per-element keys."""
    return k > 1 and (pop <= _DENSE_POPULATION or 2 * k > pop)


def _py_swr(key: int, pop: int, k: int) -> list[int]:
    """One row of :meth:`Randomness.sample_without_replacement` on Python ints (same indices)."""
    if _swr_is_dense(pop, k):
        # the k smallest 63-bit keys; exact ties (probability ~2^-63) go to the smaller index
        z = [(w >> 1, j) for j, w in enumerate(_py_words64([key], pop))]
        return sorted(j for _, j in heapq.nsmallest(k, z))
    popf = float(pop)
    idx = sorted(_py_scaled([key], k, [popf]))
    attempt = 0
    while True:
        dup = [j for j in range(1, k) if idx[j] == idx[j - 1]]
        if not dup:
            return idx
        attempt += 1
        fresh = _py_scaled([_mix_int(key ^ _mix_int(attempt * _REDRAW))], k, [popf])
        for j in dup:  # column j of the redraw replaces a duplicate in column j
            idx[j] = fresh[j]
        idx.sort()


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
        x = torch.empty(
            (self.rows, min(w, step)), dtype=torch.int64 if wide else torch.int32, device=self.device
        )
        t = torch.empty_like(x)
        for a, b in self._pieces(start, stop):
            xa, ta, o = x[:, : b - a], t[:, : b - a], out[:, a - start : b - start]
            if wide:
                self._mix64_into(xa, ta, a)
                torch.bitwise_right_shift(xa, 11, out=ta)
                ta &= (1 << 53) - 1
                o.copy_(ta)  # exact: < 2^53
                o.mul_(2.0**-53)
                continue
            self._hash_into(xa, ta, a)
            # top 24 bits, signed: s in [-2^23, 2^23), u = s 2^-24 + 1/2 in [0, 1), exact
            torch.bitwise_right_shift(xa, 8, out=ta)
            if o.dtype == torch.float32:
                torch.mul(ta, 2.0**-24, out=o)
                o.add_(0.5)
            else:  # fewer mantissa bits: keep the top ones, so that u < 1 still holds
                p = _mantissa_bits(o.dtype)
                o.copy_(ta.to(torch.float32).mul_(2.0**-24).add_(0.5).mul_(2.0**p).floor_().mul_(2.0**-p))
        return out


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
        # small CPU row sets: the same keys from Python ints (identical bits, mod 2^64), and
        # small drawing calls drawn on Python ints (see _py_keys); no row-key tensor at all
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

    # -- raw bits -------------------------------------------------------------------------
    def _next_keys(self, sub: int = 0) -> Tensor:
        """(rows,) int64 keys of the next call (the counter is not advanced)."""
        if self._row_ints is not None:
            return torch.tensor([_signed(v) for v in self._next_key_ints(sub)], dtype=torch.int64)
        call_key = _mix_int((self.calls + 1) * 0x9E3779B97F4A7C15 + sub)
        return mix64(self._row_keys ^ _signed(call_key))

    def _next_key_ints(self, sub: int = 0) -> list[int]:
        """The keys of :meth:`_next_keys` as unsigned Python ints (small CPU row sets only)."""
        call_key = _mix_int((self.calls + 1) * 0x9E3779B97F4A7C15 + sub)
        return [_mix_int(v ^ call_key) for v in self._row_ints]

    def _py_keys(self, elements: int) -> list[int] | None:
        """Unsigned call keys, the counter advanced, when this call hashes few enough elements
        (``elements`` in all rows) to be drawn on Python ints; None (nothing advanced) otherwise.

        The Python draws equal the tensor code's bit for bit (tests/test_rng.py compares them).
        """
        if self._row_ints is None or not 0 <= elements <= _PY_ELEMENTS:
            return None
        keys = self._next_key_ints()
        self.calls += 1
        return keys

    def _draws(self, keys: Tensor) -> ElementDraws:
        return ElementDraws(keys, self.device)

    def elements(self) -> ElementDraws:
        """One drawing call whose columns can be generated piece by piece (fused loops).

        ``rng.elements().uniform(0, cols, dtype)`` equals ``rng.uniform(cols, dtype)`` made at
        the same call counter.
        """
        keys = self._next_keys()
        self.calls += 1
        return self._draws(keys)

    def _words64(self, keys: Tensor, cols: int) -> Tensor:
        """(rows, cols) int64 of 64 random bits each."""
        return self._draws(keys).words64(0, cols)

    def bits(self, cols: int) -> Tensor:
        """(rows, cols) int64 tensor of uniformly random 64-bit words."""
        small = self._py_keys(self.n_rows * cols)
        if small is not None:
            flat = [_signed(z) for z in _py_words64(small, cols)]
            return _py_tensor(flat, torch.int64, len(small), cols)
        keys = self._next_keys()
        self.calls += 1
        return self._words64(keys, cols)

    def words32(self, cols: int) -> Tensor:
        """(rows, cols) int32 tensor of uniformly random 32-bit words (two's complement)."""
        small = self._py_keys(self.n_rows * cols)
        if small is not None:
            flat = [_signed(w, 32) for w in _py_words32(small, cols)]
            return _py_tensor(flat, torch.int32, len(small), cols)
        return self.elements().words(0, cols)

    # -- distributions --------------------------------------------------------------------
    def uniform(self, cols: int, dtype: torch.dtype = torch.float64) -> Tensor:
        """(rows, cols) uniform numbers in [0, 1) (53 random bits for float64, 24 otherwise)."""
        small = self._py_keys(self.n_rows * cols) if dtype in _PY_FLOATS else None
        if small is not None:
            return _py_tensor(_py_uniform(small, cols, dtype), dtype, len(small), cols)
        return self.elements().uniform(0, cols, dtype)

    def integers(self, high: int | Tensor, cols: int) -> Tensor:
        """(rows, cols) int64 uniform on {0, ..., high-1}; ``high`` scalar or per row (rows,).

        floor(u high) of a float64 uniform u (in float64 arithmetic).
        """
        rows = self.n_rows
        highs = self._py_highs(high) if 0 <= rows * cols <= _PY_ELEMENTS else None
        keys = self._py_keys(rows * cols) if highs is not None else None
        if keys is not None:
            return _py_tensor(_py_scaled(keys, cols, highs), torch.int64, rows, cols)
        u = self.uniform(cols)
        if isinstance(high, Tensor):
            h = high.to(device=self.device, dtype=torch.float64).reshape(-1, 1)
        else:
            h = float(high)
        return torch.floor(u * h).to(torch.int64)

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
        small = self._py_keys(self.n_rows * cols) if type(p) in (float, int) else None
        if small is not None:
            flat = [u < p for u in _py_uniform(small, cols, torch.float64)]
            return _py_tensor(flat, torch.bool, len(small), cols)
        return self.uniform(cols) < p

    def permutation(self, size: int) -> Tensor:
        """(rows, size) int64: a uniformly random permutation of {0, ..., size-1} per row.

        Stable argsort of one 32-bit word per element: exact ties (probability ~size^2/2^33 in
        all, each fixing the order of one pair) are broken by position. O(size log size).
        """
        small = self._py_keys(self.n_rows * size)
        if small is not None:  # Python's sort is stable too
            w = [_signed(x, 32) for x in _py_words32(small, size)]
            flat = [
                j - r for r in range(0, len(w), size) for j in sorted(range(r, r + size), key=w.__getitem__)
            ]
            return _py_tensor(flat, torch.int64, len(small), size)
        w = self.words32(size)
        if w.shape[0] == 1:  # torch's 1-D sort is several times faster than a sort along dim 1
            return torch.sort(w[0], stable=True).indices[None, :]
        return torch.sort(w, dim=1, stable=True).indices

    def sample_without_replacement(self, population: int | Tensor, k: int) -> Tensor:
        """(rows, k) int64: row r is a uniformly random k-subset of {0, ..., population_r - 1}.

        Returned sorted within each row. Each row uses one of two methods, chosen from its own
        (population, k) only, so a row's draw never depends on the other hosted rows:

        - k >= 2 and (population up to 4096 or 2k > population): the k smallest of one random
          63-bit key per element, O(population) per row;
        - otherwise (always for k = 1): draw k with replacement, redraw the duplicates, repeat (every step is
          equivariant under permutations of the population, so the final k-set is uniform),
          O(k log k) expected per row -- never a pass over the population.
        """
        rows = self.n_rows
        scalar = not isinstance(population, Tensor)
        pops: list[int] | None = None  # per-row populations as Python ints (small row sets)
        if scalar:
            pop_int = int(population)
            pop = None
        else:
            pop = population.to(device=self.device, dtype=torch.int64).reshape(-1)
            if pop.numel() != rows:
                raise ValueError(f"population has {pop.numel()} entries, expected one per row ({rows})")
        if k < 0:
            raise ValueError(f"k == {k}, must be >= 0")
        if scalar:
            smallest = pop_int
        elif self._row_ints is not None:
            pops = pop.tolist()
            smallest = min(pops) if rows else 0
        else:
            smallest = int(pop.min()) if rows else 0
        if rows and k > smallest:
            raise ValueError(f"k == {k} exceeds the smallest population {smallest}")
        if self._row_ints is not None and k > 0:
            pops = [pop_int] * rows if pops is None else pops
            work = sum(p if _swr_is_dense(p, k) else k for p in pops)
            small = self._py_keys(work) if max(pops, default=0) <= _PY_HIGH else None
            if small is not None:
                if k == 1:  # one draw per row, never a duplicate: floor(u population)
                    flat = _py_scaled(small, 1, [float(p) for p in pops])
                else:
                    flat = [j for key, p in zip(small, pops) for j in _py_swr(key, p, k)]
                return _py_tensor(flat, torch.int64, rows, k)
        keys = self._next_keys()
        self.calls += 1
        if k == 0 or rows == 0:
            return torch.empty((rows, k), dtype=torch.int64, device=self.device)
        if scalar:
            if _swr_is_dense(pop_int, k):
                return self._swr_dense(keys, pop_int, None, k)
            return self._swr_sparse(keys, float(pop_int), k)
        dense = ((pop <= _DENSE_POPULATION) | (2 * k > pop)) & (k > 1)
        if bool(dense.all()):
            return self._swr_dense(keys, int(pop.max()), pop, k)
        if not bool(dense.any()):
            return self._swr_sparse(keys, pop.to(torch.float64)[:, None], k)
        out = torch.empty((rows, k), dtype=torch.int64, device=self.device)
        di, si = torch.nonzero(dense).reshape(-1), torch.nonzero(~dense).reshape(-1)
        out[di] = self._swr_dense(keys[di], int(pop[di].max()), pop[di], k)
        out[si] = self._swr_sparse(keys[si], pop[si].to(torch.float64)[:, None], k)
        return out

    def _swr_dense(self, keys: Tensor, width: int, pop: Tensor | None, k: int) -> Tensor:
        """The k smallest of one random 63-bit key per element (ties: probability ~2^-63)."""
        z = self._words64(keys, width)  # a fresh tensor: shifted in place (logical >> 1)
        z.bitwise_right_shift_(1).bitwise_and_((1 << 63) - 1)
        if pop is not None:
            cols = _shared_arange(width, torch.int32, self.device)
            z.masked_fill_(cols[None, :] >= pop[:, None], (1 << 63) - 1)
        return torch.sort(torch.topk(z, k, dim=1, largest=False).indices, dim=1).values

    def _swr_sparse(self, keys: Tensor, popf: Tensor | float, k: int) -> Tensor:
        """Draw with replacement, redraw duplicates until none is left (row-wise)."""
        draw = lambda ks: torch.floor(  # noqa: E731
            self._draws(ks).uniform(0, k, torch.float64).mul_(popf)
        ).to(torch.int64)
        if k == 1:  # one draw per row: never a duplicate
            return draw(keys)
        idx = torch.sort(draw(keys), dim=1).values
        attempt = 0
        while True:
            dup = torch.zeros_like(idx, dtype=torch.bool)
            dup[:, 1:] = idx[:, 1:] == idx[:, :-1]
            if not bool(dup.any()):
                return idx
            attempt += 1
            fresh = draw(mix64(keys ^ _signed(_mix_int(attempt * _REDRAW))))
            idx = torch.sort(torch.where(dup, fresh, idx), dim=1).values
