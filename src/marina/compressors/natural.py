"""Natural compression: random rounding of every coordinate to a neighbouring power of two.

C_nat(t) for 2^k <= |t| < 2^{k+1}: sign(t) 2^k with probability (2^{k+1} - |t|) / 2^k, else
sign(t) 2^{k+1}; C_nat(0) = 0 (Horvath, Ho, Horvath, Sahu, Canini, Richtarik 2019, "Natural
compression for distributed deep learning", arXiv:1905.10988, Sec. 3, Theorem 1): unbiased with
omega = 1/8. Directly: the variance is (|t| - 2^k)(2^{k+1} - |t|) <= t^2/8, with equality at
|t| = (4/3) 2^k. Density d (a nonzero entry never becomes zero).

Wire encoding per worker: per coordinate ``1 + e`` bits, where e is the exponent width of the
wire dtype (8 for float32, so 9 bits a value; 11 for float64, 5 for float16, 8 for bfloat16):
bit 0 the sign, then the biased exponent of the power of two as the wire dtype stores it
(code 0 means the value 0). ``bits = d (1 + e)``.

Edge cases: magnitudes below the smallest normal power of two 2^emin (of the wire and input
dtypes, 2^-126 for float32) round to 0 or 2^emin with the unbiased probabilities (the 1/8
bound then holds up to an additive 2^{2 emin}/4 per coordinate); inputs above 2^emax (2^127 for
float32) could round up past the largest power of two and raise ValueRangeError.

One drawing call on ``rng`` per compress (d uniforms per row). For float32 input and float32
wire a bit-manipulation path computes exactly the same result as the general one.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from marina.compressors.base import Compressor, Message, column_chunks, register
from marina.compressors.wire import pack_codes, unpack_codes
from marina.errors import ValueRangeError
from marina.rng import ElementDraws, Randomness

__all__ = ["Natural"]


def _mantissa_bits(dtype: torch.dtype) -> int:
    return round(-math.log2(torch.finfo(dtype).eps))


def _exponent_bits(dtype: torch.dtype) -> int:
    return torch.finfo(dtype).bits - _mantissa_bits(dtype) - 1


@register
class Natural(Compressor):
    """Natural compression (see the module docstring).

    Message fields: ``codes`` (n, d) int32 = 2 * biased exponent + sign bit.

    Args:
        arg: None (``"natural"`` takes no parameter).
        value_dtype: wire precision of the values (see :class:`Compressor`).
        workers: total number of workers n (ignored).
    """

    name = "natural"
    omega_formula = "1/8"
    density_formula = "d"
    wire_formula = "d x (1 sign + exponent bits): 9 bits a value for float32"

    def wire_format(self, d: int) -> str:
        e = self.exponent_bits
        return f"{d} x (1 sign + {e} exponent bits) = {self.bits_per_message(d)} bits"

    def omega(self, d: int) -> float:
        self._check_d(d)
        return 1 / 8

    def density(self, d: int) -> float:
        return float(self._check_d(d))

    @property
    def exponent_bits(self) -> int:
        return _exponent_bits(self.value_dtype)

    @property
    def code_width(self) -> int:
        """Bits per coordinate: sign + exponent."""
        return 1 + self.exponent_bits

    @property
    def bias(self) -> int:
        return (1 << (self.exponent_bits - 1)) - 1

    fixed_size = True

    def bits_per_message(self, d: int) -> int:
        return d * (1 + self.exponent_bits)

    def _range(self, dtype: torch.dtype) -> tuple[int, int]:
        """(emin, emax): powers of two 2^k with emin <= k <= emax are normal in wire and input."""
        emins = [1 - ((1 << (_exponent_bits(t) - 1)) - 1) for t in (self.value_dtype, dtype)]
        emaxs = [(1 << (_exponent_bits(t) - 1)) - 1 for t in (self.value_dtype, dtype)]
        return max(emins), min(emaxs)

    def _check(self, amax: float, dtype: torch.dtype) -> None:
        _, emax = self._range(dtype)
        if amax > 2.0**emax:
            raise ValueRangeError(
                f"{self.spec}: |x| up to {amax:g} exceeds 2^{emax}, the largest power of two of the "
                f"wire dtype {self.value_dtype} and input dtype {dtype} (it could round up to "
                f"2^{emax + 1}); use value_dtype=torch.float64 or scale x"
            )

    # -- the rounding, two equivalent implementations ------------------------------------------
    def _chunk_general(
        self, xa: Tensor, draws: ElementDraws, a: int, b: int, emin: int
    ) -> tuple[Tensor, Tensor]:
        """(codes int32, decompressed values) of one chunk via frexp, any dtypes."""
        cdt = xa.dtype
        u = draws.uniform(a, b, cdt)
        t = xa.abs()
        m, e = torch.frexp(t)  # t = m 2^e, m in [1/2, 1): lower power 2^(e-1), p_up = 2m - 1
        small = t < 2.0**emin
        frac = torch.where(small, t * 2.0**-emin, 2 * m - 1)
        up = u < frac
        upf = up.to(cdt)
        expo = torch.where(small, up.to(torch.int32) * (emin + self.bias), e - 1 + self.bias + up)
        mag = torch.where(small, upf * 2.0**emin, t / (2 * m) * (1 + upf))
        codes = expo.mul_(2).add_(torch.signbit(xa).to(torch.int32))
        return codes, torch.copysign(mag, xa)

    @staticmethod
    def _chunk_bits32(xa: Tensor, draws: ElementDraws, a: int, b: int) -> tuple[Tensor, Tensor]:
        """Same as the general path for float32 input and wire, on the IEEE bit fields.

        The general path rounds up iff u < mantissa / 2^23 with u = ((w >>> 8) xor 2^23) 2^-24,
        i.e. iff ((w >>> 9) xor 2^22) < mantissa; subnormals (exponent field 0) round to 0 or
        2^-126 with the same rule, which is exactly ``exponent field + up``.
        """
        bits = xa.contiguous().view(torch.int32)
        w = draws.words(a, b)
        r = (w >> 9).bitwise_and_(0x7FFFFF).bitwise_xor_(0x400000)
        expo = (bits >> 23).bitwise_and_(0xFF)
        expo += r < (bits & 0x7FFFFF)
        sign = bits < 0
        vals = (expo << 23).bitwise_or_(bits & -0x80000000).view(torch.float32)
        codes = (expo << 1).add_(sign)
        return codes, vals

    def _run(self, X: Tensor, rng: Randomness, amax: float, values: bool, fast: bool = True):
        self._check(amax, X.dtype)
        n, d = X.shape
        emin, _ = self._range(X.dtype)
        draws = rng.elements()
        bits32 = fast and X.dtype == torch.float32 and self.value_dtype == torch.float32
        cdt = torch.float64 if X.dtype == torch.float64 else torch.float32
        out = torch.empty((n, d), dtype=X.dtype if values else torch.int32, device=X.device)
        for a, b in column_chunks(n, d, X.device):
            xa = X[:, a:b]
            if bits32:
                codes, vals = self._chunk_bits32(xa, draws, a, b)
            else:
                codes, vals = self._chunk_general(xa.to(cdt), draws, a, b, emin)
            out[:, a:b] = vals if values else codes
        return out

    def _compress(self, X: Tensor, rng: Randomness, amax: float) -> Message:
        n, d = X.shape
        codes = self._run(X, rng, amax, values=False)
        bits = self._bits_tensor(n, self.bits_per_message(d), X.device)
        return Message(self.spec, d, X.dtype, rng.worker_ids, bits, {"codes": codes})

    def _compress_decompress(self, X: Tensor, rng: Randomness, amax: float) -> tuple[Tensor, Tensor]:
        n, d = X.shape
        out = self._run(X, rng, amax, values=True)
        return out, self._bits_tensor(n, self.bits_per_message(d), X.device)

    def _decompress(self, msg: Message) -> Tensor:
        cdt = torch.float64 if msg.dtype == torch.float64 else torch.float32
        emin, emax = self._range(msg.dtype)
        size = 1 << self.exponent_bits
        table = [0.0] * size
        for c in range(1, size):
            k = c - self.bias
            if emin <= k <= emax:
                table[c] = 2.0**k
        tab = torch.tensor(table, dtype=cdt, device=msg.bits.device)
        c = msg.data["codes"].to(torch.int64)
        mag = tab[c >> 1]
        return torch.where((c & 1).bool(), -mag, mag).to(msg.dtype)

    def _pack_rows(self, msg: Message) -> tuple[Tensor, Tensor]:
        return pack_codes(msg.data["codes"], 1 + self.exponent_bits), (msg.bits + 7) // 8

    def _unpack_rows(self, rows, lengths, d, worker_ids, dtype, rng) -> Message:
        codes = unpack_codes(rows, d, 1 + self.exponent_bits, torch.int32)
        bits = self._bits_tensor(rows.shape[0], self.bits_per_message(d), rows.device)
        return Message(self.spec, d, dtype, worker_ids, bits, {"codes": codes})
