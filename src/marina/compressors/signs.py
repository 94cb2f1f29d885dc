"""Sign-based compressors: TernGrad (unbiased, ternary levels) and scaled sign (biased, contractive).

``terngrad`` (Wen, Xu, Yan, Wu, Wang, Chen, Li 2017, "TernGrad: ternary gradients to reduce
communication in distributed deep learning", Sec. 3, ternarize with s = ||x||_inf and no
clipping): Q(x)_j = s sign(x_j) b_j with b_j ~ Bernoulli(|x_j| / s), independently. Unbiased;
E||Q(x) - x||^2 = sum_j (s |x_j| - x_j^2) = ||x||_inf ||x||_1 - ||x||^2. Over x != 0 the ratio
||x||_inf ||x||_1 / ||x||^2 is largest for x = (1, t, ..., t) with t = 1/(sqrt d + 1) (for a
fixed largest entry and a fixed l1 mass, equal other entries minimise ||x||^2; then
d/dt = 0 gives (d - 1) t^2 + 2 t - 1 = 0), where it equals (sqrt d + 1)/2, so
omega = (sqrt d - 1)/2, attained. E||Q(x)||_0 = ||x||_1 / ||x||_inf <= d: ``density(d)`` = d.
It is QSGD's rounding with one level and the l_inf norm in place of the l2 norm: the same
message (the scale s rounded up to a number exact on the wire and in the input dtype, then a
sign + level code of 2 bits per coordinate), ``bits = w + 2 d``, one drawing call.

``sign`` (scaled sign; Karimireddy, Rebjock, Stich, Jaggi 2019, "Error feedback fixes SignSGD
and other gradient compression schemes", Sec. 3, a delta-approximate compressor with
delta = ||x||_1^2 / (d ||x||^2)): C(x) = (||x||_1 / d) sign(x), sign(0) = +1. Biased;
||C(x) - x||^2 = ||x||^2 - 2 a ||x||_1 + d a^2 with a = ||x||_1/d, = (1 - ||x||_1^2 / (d ||x||^2))
||x||^2 (whatever sign(0) is, since sum_j sign(x_j) x_j = ||x||_1), and ||x||_1^2 >= ||x||^2, so
it is contractive with alpha(d) = 1/d (attained at x = e_1). For the error-feedback methods
(EF21 family); omega is undefined. No draws. Message: the scale a at the wire precision (w bits,
rounded to nearest: the bound holds up to d (a - a_wire)^2, a relative 2^-48 of ||x||^2 at
float32), then one sign bit per coordinate (1 for negative), ``bits = w + d``; density d.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from marina.compressors.base import Compressor, Message, register
from marina.compressors.dithering import QSGD, round_up_representable
from marina.compressors.wire import bytes_to_values, pack_codes, unpack_codes, values_to_bytes
from marina.rng import Randomness

__all__ = ["TernGrad", "Sign"]


def _row_amax(X: Tensor) -> Tensor:
    """(n,) float64 max |x_j| of each row."""
    if X.shape[1] == 0:
        return torch.zeros(X.shape[0], dtype=torch.float64, device=X.device)
    return X.abs().amax(dim=1).to(torch.float64)


@register
class TernGrad(QSGD):
    """TernGrad: s sign(x_j) Bernoulli(|x_j|/s), s = ||x||_inf (see the module docstring).

    Message fields: ``norm`` (n,) the scale s at the wire dtype, ``codes`` (n, d) = 2 b + sign bit.

    Args:
        arg: None (``"terngrad"`` takes no parameter).
        value_dtype: wire precision of the values (see :class:`Compressor`).
        workers: total number of workers n (ignored).
    """

    name = "terngrad"
    param = None
    example = ""
    omega_formula = "(sqrt(d) - 1)/2"
    density_formula = "d"
    wire_formula = "scale + d x (1 sign bit + 1 level bit)"

    def _parse(self, arg: str | None) -> None:
        self.s = 1

    @property
    def spec(self) -> str:
        return self.name

    def wire_format(self, d: int) -> str:
        w = self.wire_bits_per_value
        return f"scale ||x||_inf {w} bits + {d} x (1 sign + 1 level bit) = {self.bits_per_message(d)} bits"

    def omega(self, d: int) -> float:
        d = self._check_d(d)
        return (math.sqrt(d) - 1) / 2

    def density(self, d: int) -> float:
        return float(self._check_d(d))

    def _norms(self, X: Tensor) -> Tensor:
        amax = _row_amax(X)
        if X.shape[0]:
            self._check_wire_range(float(amax.max()), X.dtype, what="||x||_inf")
        return round_up_representable(amax, [self.value_dtype, X.dtype])


@register
class Sign(Compressor):
    """Scaled sign (||x||_1/d) sign(x): biased, contractive with alpha(d) = 1/d. No draws.

    Message fields: ``scale`` (n,) at the wire dtype, ``signs`` (n, d) uint8 (1 for negative).

    Args:
        arg: None (``"sign"`` takes no parameter).
        value_dtype: wire precision of the values (see :class:`Compressor`).
        workers: total number of workers n (ignored).
    """

    name = "sign"
    unbiased = False
    contractive = True
    fixed_size = True
    omega_formula = "undefined (biased); alpha = 1/d"
    alpha_formula = "1/d"
    density_formula = "d"
    wire_formula = "scale + d sign bits"

    def omega(self, d: int) -> float:
        return self._no_omega("the scaled sign")

    def alpha(self, d: int) -> float:
        return 1.0 / self._check_d(d)

    def density(self, d: int) -> float:
        return float(self._check_d(d))

    def bits_per_message(self, d: int) -> int:
        return self.wire_bits_per_value + d

    def wire_format(self, d: int) -> str:
        w = self.wire_bits_per_value
        return f"scale ||x||_1/d {w} bits + {d} sign bits = {self.bits_per_message(d)} bits"

    def _compress(self, X: Tensor, rng: Randomness, amax: float) -> Message:
        n, d = X.shape
        self._check_wire_range(amax, X.dtype)  # the scale ||x||_1/d never exceeds max |x_j|
        if amax * d < 1e300:  # ||x||_1 fits in float64 (always for float32 input)
            scale = X.abs().sum(dim=1, dtype=torch.float64) / d
        else:  # huge float64 entries: scaled by the row's max |x_j|, no overflow
            top = _row_amax(X)
            safe = torch.where(top > 0, top, torch.ones_like(top))
            scale = (X.abs() / safe[:, None]).mean(dim=1) * top
        data = {"scale": scale.to(self.value_dtype), "signs": torch.signbit(X).to(torch.uint8)}
        bits = self._bits_tensor(n, self.bits_per_message(d), X.device)
        return Message(self.spec, d, X.dtype, rng.worker_ids, bits, data)

    def _decompress(self, msg: Message) -> Tensor:
        a = msg.data["scale"].to(msg.dtype).reshape(-1, 1)
        return torch.where(msg.data["signs"].bool(), -a, a)

    def _pack_rows(self, msg: Message) -> tuple[Tensor, Tensor]:
        rows = torch.cat(
            [values_to_bytes(msg.data["scale"].reshape(-1, 1)), pack_codes(msg.data["signs"], 1)], dim=1
        )
        return rows, (msg.bits + 7) // 8

    def _unpack_rows(self, rows, lengths, d, worker_ids, dtype, rng) -> Message:
        nb = self.wire_bits_per_value // 8
        scale = bytes_to_values(rows, 1, self.value_dtype).reshape(-1)
        signs = unpack_codes(rows[:, nb:], d, 1, torch.uint8)
        bits = self._bits_tensor(rows.shape[0], self.bits_per_message(d), rows.device)
        return Message(self.spec, d, dtype, worker_ids, bits, {"scale": scale, "signs": signs})
