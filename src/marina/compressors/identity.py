"""The identity "compressor": every worker sends its vector uncompressed.

Wire encoding: the d values at the wire precision, ``d * wire_bits_per_value`` bits (32 d for
float32). Theory: unbiased with omega = 0, density d; also contractive with alpha = 1.
"""

from __future__ import annotations

import torch
from torch import Tensor

from marina.compressors.base import Compressor, Message, register
from marina.compressors.wire import bytes_to_values, values_to_bytes
from marina.rng import Randomness

__all__ = ["Identity"]


@register
class Identity(Compressor):
    """Q(x) = x (rounded to the wire precision). Makes no random draws.

    Message fields: ``values`` (n, d) at the wire dtype.

    Args:
        arg: None (``"identity"`` takes no parameter).
        value_dtype: wire precision of the values (see :class:`Compressor`).
        workers: total number of workers n (ignored).
    """

    name = "identity"
    contractive = True
    omega_formula = "0"
    density_formula = "d"
    wire_formula = "d values"

    def wire_format(self, d: int) -> str:
        w = self.wire_bits_per_value
        return f"{d} values x {w} bits = {d * w} bits"

    fixed_size = True

    def bits_per_message(self, d: int) -> int:
        return d * self.wire_bits_per_value

    def omega(self, d: int) -> float:
        self._check_d(d)
        return 0.0

    def density(self, d: int) -> float:
        return float(self._check_d(d))

    def alpha(self, d: int) -> float:
        self._check_d(d)
        return 1.0

    def expected_bits(self, d: int) -> float:
        return float(self._check_d(d) * self.wire_bits_per_value)

    def _compress(self, X: Tensor, rng: Randomness, amax: float) -> Message:
        self._check_wire_range(amax, X.dtype)
        n, d = X.shape
        return Message(
            self.spec,
            d,
            X.dtype,
            rng.worker_ids,
            self._bits_tensor(n, self.bits_per_message(d), X.device),
            {"values": X.to(self.value_dtype)},
        )

    def _decompress(self, msg: Message) -> Tensor:
        return msg.data["values"].to(msg.dtype)

    def _compress_decompress(self, X: Tensor, rng: Randomness, amax: float) -> tuple[Tensor, Tensor]:
        self._check_wire_range(amax, X.dtype)
        n, d = X.shape
        out = X.clone() if X.dtype == self.value_dtype else X.to(self.value_dtype).to(X.dtype)
        return out, self._bits_tensor(n, self.bits_per_message(d), X.device)

    def _pack_rows(self, msg: Message) -> tuple[Tensor, Tensor]:
        rows = values_to_bytes(msg.data["values"])
        return rows, (msg.bits + 7) // 8

    def _unpack_rows(self, rows, lengths, d, worker_ids, dtype, rng) -> Message:
        n = rows.shape[0]
        values = bytes_to_values(rows, d, self.value_dtype)
        bits = self._bits_tensor(n, self.bits_per_message(d), rows.device)
        return Message(self.spec, d, dtype, worker_ids, bits, {"values": values})


_ = torch  # torch is used in type positions only
