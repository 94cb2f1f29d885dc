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

Numbers therefore do not depend on the device (CPU and CUDA give bit-identical draws), on how
workers are distributed among processes, nor on how a long row is cut into chunks.

How the bits are made (two levels):

1. **Call keys** (:mod:`.keys`, a handful of numbers per call): the SplitMix64 finaliser
   ``mix64`` (Steele, Lea & Flood 2014, "Fast splittable pseudorandom number generators")
   chains seed, stream, round, worker id and call counter into a 64-bit key per row, split into
   two 32-bit halves ``(k1, k2)``.
2. **Elements** (:mod:`.bits`, :mod:`.elements`: the hot path). 32-bit words (float32
   uniforms, ``words32``, permutations): ``h(j) = H(j + k1)``, where ``H`` is the 32-bit integer
   hash "lowbias32" with the constants of Wellons' hash-prospector search (``x ^= x >>> 16;
   x *= 0x21f0aaad; x ^= k2; x ^= x >>> 15; x *= 0xd35a2d97; x ^= x >>> 15``, avalanche bias
   0.107, among the best two-multiply 32-bit hashes known), with the second key half xored in
   between the two rounds. 64-bit words (float64 uniforms, ``bits``, index sampling) are
   SplitMix64 proper: ``mix64`` of the Weyl sequence ``key + (j + 1) * 0x9E3779B97F4A7C15``
   with the full 64-bit call key (Steele et al. 2014; passes BigCrush).

Why this is adequate: within one call, ``j -> h(j)`` is a bijection of 32-bit words (every
step is invertible), so a row never repeats a word among its first 2^32 columns, and the
avalanche quality of lowbias32 makes consecutive counters look independent (its worst-case
bit bias is ~0.1%, far below what any Monte-Carlo test in this project can resolve); rows and
calls differ by a full 64-bit SplitMix64 key, and injecting ``k2`` *between* the rounds means
two keys never give shifted copies of the same sequence (which a purely additive key would).
It is not a cryptographic generator, nor meant to be. It takes 14 in-place int32 operations
per word on cache-sized chunks, against 12 int64 operations per SplitMix64 word (8 on the
CPU, made in NumPy's uint64 arithmetic, whose right shifts are logical; the 64-bit multiply has
no vector instruction on AVX2 machines); see ``benchmarks/README.md``.

Uniform floats: float32 uses the top 24 bits of one 32-bit word w, read as a signed number s (an
arithmetic shift, one operation less than a logical one): u = s 2^-24 + 1/2, which equals
((w >>> 8) xor 2^23) 2^-24, exactly representable, in [0, 1). float64 uses the top 53 bits of
the 64-bit word: u = (z >>> 11) 2^-53. Lower precisions keep the top bits of the float32 draw.

The modules: :mod:`.keys` (key derivation), :mod:`.bits` (the formulas, Python-int and tensor
forms side by side), :mod:`.elements` (a call's words as tensors, chunked), :mod:`.backend`
(the array interface of one call) with its two implementations :mod:`.tensors` and
:mod:`.small` (Python numbers, for CPU calls of few rows and elements, where a dozen small tensor
operations cost more than hashing the words one by one), :mod:`.distributions` (each written
once against that interface) and :mod:`.randomness` (:class:`Randomness`, which picks the
backend of each call). Either backend gives the same bits.
"""

from __future__ import annotations

from .bits import hash32_reference, mix64
from .elements import ElementDraws
from .keys import SHARED, stream_id
from .randomness import Randomness

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
