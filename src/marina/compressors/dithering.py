"""Norm-scaled random dithering: QSGD (uniform levels) and natural dithering (power-of-two levels).

Both send, per worker, the l2 norm of the row and, per coordinate, a sign bit and a level code;
both round |x_j| / ||x|| randomly to one of the two neighbouring levels, with the probability
that makes the result unbiased.

``qsgd:s`` (Alistarh, Grubic, Li, Tomioka, Vojnovic 2017, "QSGD", Sec. 3.1; l2 random
dithering with s levels): Q(x)_j = ||x|| sign(x_j) xi_j / s with xi_j = l + 1 with probability
s|x_j|/||x|| - l, else l, where l = floor(s|x_j|/||x||). Unbiased with (their Lemma 3.1)
omega = min(d/s^2, sqrt(d)/s) and E||Q(x)||_0 <= s(s + sqrt d), so ``density(d)`` =
min(d, s(s + sqrt d)). (P(xi_j > 0) = min(1, s|x_j|/||x||) also gives the tighter
min(d, s sqrt d); the library reports the paper's value, as the MARINA paper does.)

``natural-dithering:s`` (Horvath, Ho, Horvath, Sahu, Canini, Richtarik 2019, "Natural
compression for distributed deep learning", arXiv:1905.10988, natural dithering D_nat^{p,s}
with p = 2): the levels are 0, 2^{1-s}, ..., 1/2, 1; t_j = |x_j|/||x|| in [2^{-k-1}, 2^{-k}]
rounds up with probability (t_j - 2^{-k-1}) / 2^{-k-1}, and t_j < 2^{1-s} rounds to 2^{1-s} with
probability t_j 2^{s-1}, else to 0. Unbiased with (their natural dithering theorem, Theorem 7;
r = min(p, 2) = 2) omega = 1/8 + d^{1/2} 2^{1-s} min(1, d^{1/2} 2^{1-s}). Direct check: each
coordinate in the power-of-two range contributes at most t_j^2/8 (natural compression), each
below 2^{1-s} at most t_j (2^{1-s} - t_j) <= min(2^{1-s} t_j, 2^{2-2s}/4), and sum t_j <= sqrt d.
Density: P(code_j > 0) = min(1, 2^{s-1} t_j), so E nnz <= min(d, 2^{s-1} sqrt d).

Wire encoding per worker (w = wire bits per value, 32 for float32):

- the norm nu at the wire precision (w bits). nu is ||x|| rounded *up* to a number exactly
  representable both on the wire and in the input dtype, so every t_j <= 1 and sender and
  receiver use the same nu;
- per coordinate one code of ``1 + ceil(log2(s + 1))`` bits, LSB first: bit 0 is the sign
  (1 for negative, also sent for level 0), the next bits the level l in {0..s} (QSGD: value
  nu l / s; natural dithering: value 0 for l = 0, else nu 2^{l - s}).

``bits = w + d (1 + ceil(log2(s + 1)))``. Each compress makes one drawing call on ``rng``
(d uniforms per row; 53-bit ones for float64 input, 24-bit ones otherwise). With 24-bit uniforms a
rounding probability is exact to 2^-24, so a float32 coordinate is unbiased up to 2^-24 of one
level (nu/s for QSGD, nu 2^{1-s} below natural dithering's smallest level; between powers of
two its probabilities are multiples of 2^-23, hence exact).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from marina.compressors.base import (
    Compressor,
    Message,
    _parse_int,
    column_chunks,
    register,
)
from marina.compressors.wire import bytes_to_values, code_bits, pack_codes, unpack_codes, values_to_bytes
from marina.errors import ConfigError, ValueRangeError
from marina.rng import Randomness

__all__ = ["QSGD", "NaturalDithering", "round_up_representable"]

# dtype -> (integer view, mantissa bits, exponent bias, exponent field mask)
_IEEE = {
    torch.float32: (torch.int32, 23, 127, 0x7F800000),
    torch.float64: (torch.int64, 52, 1023, 0x7FF0000000000000),
}


def row_norms(X: Tensor) -> Tensor:
    """(n,) float64 l2 norms of the rows of X, free of overflow and underflow.

    The fast path is torch's norm in the input precision; rows whose norm falls outside the
    range where squares neither overflow nor underflow are recomputed in float64 after
    scaling by their largest magnitude.
    """
    if X.dtype == torch.float64:
        lo, hi = 1e-140, 1e140
    elif X.dtype == torch.float32:
        lo, hi = 1e-15, 1e15
    else:
        lo, hi = math.inf, -math.inf  # always the careful path
    norms = torch.linalg.vector_norm(X, dim=1).to(torch.float64)
    bad = ~((norms >= lo) & (norms <= hi))
    if bool(bad.any()):
        idx = torch.nonzero(bad).reshape(-1)
        rows = X.index_select(0, idx).to(torch.float64)
        m = rows.abs().amax(dim=1, keepdim=True)
        safe = torch.where(m > 0, m, torch.ones_like(m))
        exact = (m * torch.linalg.vector_norm(rows / safe, dim=1, keepdim=True)).reshape(-1)
        norms = norms.index_copy(0, idx, exact)
    return norms


def round_up_representable(v: Tensor, dtypes: list[torch.dtype]) -> Tensor:
    """Float64 values >= v, within a few ulps, exactly representable in every one of ``dtypes``.

    Each dtype's conversion is corrected upwards by one ulp of that dtype where it rounded down;
    two sweeps make the result representable in all of them (nested precisions converge in one).
    """
    order = sorted(set(dtypes), key=lambda t: torch.finfo(t).eps, reverse=True)  # narrowest first
    if len(order) == 2 and (torch.float64 in order or torch.float32 in order):
        order = order[:1]  # float16, bfloat16 and float32 values are all exact in the wider dtype
    sweeps = 1 if len(order) == 1 else 2
    for _ in range(sweeps):
        for dt in order:
            w = v.to(dt).to(torch.float64)
            low = w < v
            if bool(low.any()):
                fi = torch.finfo(dt)
                _, e = torch.frexp(w)
                ulp = torch.ldexp(torch.full_like(w, fi.eps), e - 1)  # eps = 2^-(mantissa bits)
                ulp = torch.clamp(ulp, min=fi.tiny * fi.eps)
                w = torch.where(low, w + ulp, w)
            v = w
    return v


class _Dithering(Compressor):
    """Shared machinery: norm, per-coordinate sign + level codes, fused chunked loop."""

    param = "s"
    example = "4"
    max_s: int = 1 << 20

    def _parse(self, arg: str | None) -> None:
        self.s = _parse_int(self.name, "s", arg, 1)
        if self.s > self.max_s:
            raise ConfigError(f"{self.name}: s == {self.s}, must be <= {self.max_s}")

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.s}"

    @property
    def code_width(self) -> int:
        """Bits per coordinate: sign + ceil(log2(s + 1))."""
        return 1 + code_bits(self.s + 1)

    fixed_size = True

    def bits_per_message(self, d: int) -> int:
        return self.wire_bits_per_value + d * self.code_width

    wire_formula = "norm + d x (1 sign bit + ceil(log2(s+1)) level bits)"

    def wire_format(self, d: int) -> str:
        w, lb = self.wire_bits_per_value, self.code_width - 1
        return f"norm {w} bits + {d} x (1 sign + {lb} level bits) = {self.bits_per_message(d)} bits"

    # -- per-subclass maths --------------------------------------------------------------------
    def _consts(self, nu: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """(inv, scale) per row, (n, 1) in ``dtype``: t = |x| inv, value = f(code) scale."""
        raise NotImplementedError

    def _levels(self, t: Tensor, u: Tensor, values: bool) -> Tensor:
        """Random rounding of t (a chunk, may be overwritten) with uniforms u: the magnitudes
        before ``scale`` if ``values``, else the level codes."""
        raise NotImplementedError

    def _magnitudes(self, codes: Tensor, dtype: torch.dtype) -> Tensor:
        """Decode level codes (int) into magnitudes before ``scale``, in ``dtype``."""
        raise NotImplementedError

    # -- protocol ------------------------------------------------------------------------------
    def _norms(self, X: Tensor) -> Tensor:
        norms = row_norms(X)
        nu = round_up_representable(norms, [self.value_dtype, X.dtype])
        if not bool(torch.isfinite(nu).all()):
            big = float(norms.max())
            self._check_wire_range(big, X.dtype, what="||x||")
            raise ValueRangeError(f"{self.spec}: ||x|| == {big:g} overflows")  # pragma: no cover
        return nu

    def _run(self, X: Tensor, rng: Randomness, values: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """One pass over column chunks: (nu, codes or None, decompressed or None)."""
        n, d = X.shape
        cdt = torch.float64 if X.dtype == torch.float64 else torch.float32
        nu = self._norms(X)
        inv, scale = self._consts(nu, cdt)
        draws = rng.elements()
        out = torch.empty((n, d), dtype=X.dtype, device=X.device) if values else None
        codes = None if values else torch.empty((n, d), dtype=self._code_dtype(), device=X.device)
        ubuf = None
        for a, b in column_chunks(n, d, X.device):
            xa = X[:, a:b].to(cdt)
            if ubuf is None:
                ubuf = torch.empty((n, b - a), dtype=cdt, device=X.device)
            u = draws.uniform(a, b, cdt, out=ubuf[:, : b - a])
            t = torch.abs(xa).mul_(inv)
            if out is not None:
                mag = self._levels(t, u, True)
                if cdt == X.dtype:
                    torch.copysign(mag.mul_(scale), xa, out=out[:, a:b])
                else:
                    out[:, a:b] = torch.copysign(mag.mul_(scale), xa)
            else:  # code = 2 level + sign bit
                lev = self._levels(t, u, False)
                codes[:, a:b] = lev.to(codes.dtype).mul_(2).add_(torch.signbit(xa).to(codes.dtype))
        return nu, codes, out

    def _code_dtype(self) -> torch.dtype:
        return torch.uint8 if self.code_width <= 8 else torch.int32

    def _compress(self, X: Tensor, rng: Randomness, amax: float) -> Message:
        n, d = X.shape
        nu, codes, _ = self._run(X, rng, values=False)
        bits = self._bits_tensor(n, self.bits_per_message(d), X.device)
        data = {"norm": nu.to(self.value_dtype), "codes": codes}
        return Message(self.spec, d, X.dtype, rng.worker_ids, bits, data)

    def _compress_decompress(self, X: Tensor, rng: Randomness, amax: float) -> tuple[Tensor, Tensor]:
        n, d = X.shape
        _, _, out = self._run(X, rng, values=True)
        return out, self._bits_tensor(n, self.bits_per_message(d), X.device)

    def _decompress(self, msg: Message) -> Tensor:
        codes = msg.data["codes"]
        cdt = torch.float64 if msg.dtype == torch.float64 else torch.float32
        nu = msg.data["norm"].to(torch.float64)
        _, scale = self._consts(nu, cdt)
        c = codes.to(torch.int32)
        mag = self._magnitudes(c >> 1, cdt).mul_(scale)
        out = torch.where((c & 1).bool(), -mag, mag)
        return out.to(msg.dtype)

    def _pack_rows(self, msg: Message) -> tuple[Tensor, Tensor]:
        rows = torch.cat(
            [
                values_to_bytes(msg.data["norm"].reshape(-1, 1)),
                pack_codes(msg.data["codes"], self.code_width),
            ],
            dim=1,
        )
        return rows, (msg.bits + 7) // 8

    def _unpack_rows(self, rows, lengths, d, worker_ids, dtype, rng) -> Message:
        nbytes = self.wire_bits_per_value // 8
        norm = bytes_to_values(rows, 1, self.value_dtype).reshape(-1)
        codes = unpack_codes(rows[:, nbytes:], d, self.code_width, self._code_dtype())
        bits = self._bits_tensor(rows.shape[0], self.bits_per_message(d), rows.device)
        return Message(self.spec, d, dtype, worker_ids, bits, {"norm": norm, "codes": codes})


@register
class QSGD(_Dithering):
    """QSGD / l2 random dithering with s uniform levels (see the module docstring).

    Message fields: ``norm`` (n,) at the wire dtype, ``codes`` (n, d) = 2 level + sign bit.

    Args:
        arg: s >= 1, the number of levels (``"4"``).
        value_dtype: wire precision of the values (see :class:`Compressor`).
        workers: total number of workers n (ignored).
    """

    name = "qsgd"
    omega_formula = "min(d/s^2, sqrt(d)/s)"
    density_formula = "min(d, s (s + sqrt(d)))"

    def omega(self, d: int) -> float:
        d = self._check_d(d)
        return min(d / self.s**2, math.sqrt(d) / self.s)

    def density(self, d: int) -> float:
        d = self._check_d(d)
        return float(min(d, self.s * (self.s + math.sqrt(d))))

    def _consts(self, nu: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        pos = nu > 0
        inv = torch.where(pos, self.s / torch.where(pos, nu, 1.0), 0.0)
        return inv.to(dtype).reshape(-1, 1), (nu / self.s).to(dtype).reshape(-1, 1)

    def _levels(self, t: Tensor, u: Tensor, values: bool) -> Tensor:
        lev = torch.floor(t)
        t.sub_(lev)  # fractional part: probability of rounding up
        return lev.add_(u < t).clamp_(max=self.s)  # magnitudes before scale are the levels

    def _magnitudes(self, codes: Tensor, dtype: torch.dtype) -> Tensor:
        return codes.to(dtype)


@register
class NaturalDithering(_Dithering):
    """Natural dithering with levels 0, 2^{1-s}, ..., 1 (see the module docstring).

    Message fields: ``norm`` (n,) at the wire dtype, ``codes`` (n, d) = 2 level + sign bit.

    Args:
        arg: s >= 1, the number of levels 2^{1-s}, ..., 1 besides 0 (``"8"``).
        value_dtype: wire precision of the values (see :class:`Compressor`).
        workers: total number of workers n (ignored).
    """

    name = "natural-dithering"
    omega_formula = "1/8 + sqrt(d) 2^(1-s) min(1, sqrt(d) 2^(1-s))"
    density_formula = "min(d, 2^(s-1) sqrt(d))"
    max_s = 64

    def omega(self, d: int) -> float:
        d = self._check_d(d)
        a = math.sqrt(d) * 2.0 ** (1 - self.s)
        return 1 / 8 + a * min(1.0, a)

    def density(self, d: int) -> float:
        d = self._check_d(d)
        return float(min(d, 2.0 ** (self.s - 1) * math.sqrt(d)))

    def _consts(self, nu: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        pos = nu > 0
        inv = torch.where(pos, 1.0 / torch.where(pos, nu, 1.0), 0.0)
        return inv.to(dtype).reshape(-1, 1), nu.to(dtype).reshape(-1, 1)

    def _levels(self, t: Tensor, u: Tensor, values: bool) -> Tensor:
        s, thr = self.s, 2.0 ** (1 - self.s)
        ity, shift, bias, emask = _IEEE[t.dtype]
        t.clamp_(max=1.0)
        small = t < thr
        # the power of two 2^k <= t < 2^(k+1) is t's exponent field alone; t / 2^k - 1 is exact
        lowbits = t.view(ity) & emask
        lower = lowbits.view(t.dtype)
        frac = torch.where(small, t * 2.0 ** (s - 1), t / lower - 1)  # probability of rounding up
        up = u < frac
        if not values:  # level code: 0 for zero, k + s for 2^k
            return torch.where(small, 0, (lowbits >> shift) - (bias - s)).add_(up)
        upf = up.to(t.dtype)
        return torch.where(small, upf * thr, lower.mul_(upf.add_(1)))

    def _magnitudes(self, codes: Tensor, dtype: torch.dtype) -> Tensor:
        table = torch.tensor([0.0] + [2.0 ** (c - self.s) for c in range(1, self.s + 1)], dtype=dtype)
        return table.to(codes.device)[codes.long()]
