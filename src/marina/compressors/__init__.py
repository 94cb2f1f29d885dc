"""Compressors: unbiased (and two contractive) operators with exact omega, density and wire bits.

Build one with :func:`get` from a spec string (``"randk:5"``, ``"qsgd:4"``, ...); options
``value_dtype`` (wire precision of values, float32 by default) and ``workers`` (total n, needed
by PermK). The protocol (``compress``, ``decompress``, ``compress_decompress``, ``pack``,
``unpack``, ``roundtrip``, theory) is in :mod:`marina.compressors.base`; each family's module
documents its maths, sources and encoding. ``marina compress --list`` prints this table.

Theory (``c.unbiased``, ``c.omega(d)``, ``c.density(d)`` = expected non-zeros zeta_Q):

=======================  ========  ===============================================  =====================
spec                     unbiased  omega(d)                                         density(d)
=======================  ========  ===============================================  =====================
``identity``             yes       0                                                d
``randk:K``              yes       d/K - 1                                          K
``randk:K:seeded``       yes       d/K - 1 (same draws as ``randk:K``)              K
``bernoulli:q``          yes       1/q - 1                                          q d
``bernoulli:q:seeded``   yes       1/q - 1 (same draws as ``bernoulli:q``)          q d
``qsgd:s``               yes       min(d/s^2, sqrt(d)/s)                            min(d, s (s + sqrt d))
``natural``              yes       1/8                                              d
``natural-dithering:s``  yes       1/8 + sqrt(d) 2^(1-s) min(1, sqrt(d) 2^(1-s))    min(d, 2^(s-1) sqrt d)
``terngrad``             yes       (sqrt(d) - 1)/2                                  d
``permk``                yes [1]   n - 1 (d >= n); (n/d)(r/(q+1) + (d-r)/q) - 1     max(1, d/n)
``topk:K``               no        undefined; contractive with alpha(d) = K/d      K
``sign``                 no        undefined; contractive with alpha(d) = 1/d      d
``randk:K+Q``            yes [2]   (d/K)(1 + omega_Q(K)) - 1                        density_Q(K)
=======================  ========  ===============================================  =====================

[1] each worker's compressor is unbiased; the workers' draws are correlated (``correlated``):
the average of the n messages of one x is x exactly. For d < n, n = q d + r.
[2] Q one of ``natural``, ``qsgd:s``, ``natural-dithering:s``, ``terngrad`` (also after
``randk:K:seeded``), applied to the K kept values: RandK, then Q (:mod:`.composed`).

Wire bits of one worker message (``msg.bits``; the payload has ceil(bits/8) bytes). w = wire
bits per value (32 for float32), ib = ceil(log2 d) index bits, e = exponent bits of the wire
dtype (8 for float32), |B_i| = floor or ceil(d/n) (1 if d < n), worker i's PermK piece:

=======================  ===============================================================
spec                     bits
=======================  ===============================================================
``identity``             d w
``randk:K``              K (w + ib): values, then sorted indices
``randk:K:seeded``       K w: values only, the receiver regenerates the indices from the key
``bernoulli:q``          1 + d w when sent (probability q), else 1 (the flag)
``bernoulli:q:seeded``   d w when sent, else 0: no flag, the receiver regenerates the coin
``qsgd:s``               w + d (1 + ceil(log2(s + 1))): norm, then sign + level per entry
``natural``              d (1 + e): sign + exponent per entry, 9 d for float32
``natural-dithering:s``  w + d (1 + ceil(log2(s + 1))): norm, then sign + level per entry
``terngrad``             w + 2 d: scale ||x||_inf, then sign + level bit per entry
``permk``                |B_i| w: no index bits, the permutations are regenerated from the key
``topk:K``               K (w + ib): values, then sorted indices
``sign``                 w + d: scale ||x||_1/d, then one sign bit per entry
``randk:K+Q``            bits_Q(K) + K ib: Q's header, then K codes (Q's code + index bits)
=======================  ===============================================================

Sources: RandK, TopK: Beznosikov et al. 2020 (Table 1); Bernoulli: MARINA paper, App. A; QSGD:
Alistarh et al. 2017, Lemma 3.1; natural compression and dithering: Horvath et al. 2019
(arXiv:1905.10988), Theorems 1 and 7; PermK: Szlendak, Tyurin, Richtarik 2022, Defs. 2, 3;
TernGrad: Wen et al. 2017, Sec. 3; scaled sign: Karimireddy et al. 2019, Sec. 3;
compositions: Beznosikov et al. 2020, Lemma 1.
"""

from __future__ import annotations

from marina.compressors.base import WIRE_DTYPES, Compressor, CompressorSpec, Message, get, known, register
from marina.compressors.bernoulli import Bernoulli
from marina.compressors.composed import Composed
from marina.compressors.dithering import QSGD, NaturalDithering
from marina.compressors.identity import Identity
from marina.compressors.natural import Natural
from marina.compressors.permk import PermK
from marina.compressors.signs import Sign, TernGrad
from marina.compressors.sparse import RandK, TopK

__all__ = [
    "Compressor",
    "CompressorSpec",
    "Message",
    "WIRE_DTYPES",
    "get",
    "known",
    "register",
    "Identity",
    "RandK",
    "Bernoulli",
    "QSGD",
    "Natural",
    "NaturalDithering",
    "PermK",
    "TopK",
    "TernGrad",
    "Sign",
    "Composed",
]
