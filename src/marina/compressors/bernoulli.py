"""Bernoulli ("lazy") compression: send x/q with probability q, else nothing.

Q(x) = x/q with probability q, else 0, one coin per worker and round (MARINA paper, Appendix A
examples of unbiased compressors; Mishchenko, Khaled, Richtarik 2022 call it "lazy"
aggregation). Unbiased; E||Q(x)||^2 = ||x||^2/q, so omega = 1/q - 1; expected non-zeros
density = q d.

Wire encoding per worker: when sent, the d scaled values at the wire precision (little-endian),
followed by a 1-bit flag 1; otherwise only the flag 0. ``bits = 1 + d w`` when sent, ``1``
otherwise (the flag is bit 0 of the last byte). One drawing call on ``rng`` (one uniform per
row) per compress.

``bernoulli:q:seeded``: the same operator with the same draws (hence the same trajectory as
``bernoulli:q``), but the flag does not travel: the receiver regenerates each sender's coin from
the keyed randomness (seed, stream, round, worker id; one uniform, the sender's first drawing
call of that key), so a message is the d values when sent and nothing otherwise, ``bits = d w``
or ``0`` (expected q d w), and ``unpack`` needs ``rng``. The sizes follow from the coins
(``sized_by_draws``): ``message_bits(d, ids, rng)`` gives them to any process that holds the
key, so no size exchange is needed. Both specs are accounted honestly: ``bernoulli:q`` counts
its flag bit, ``bernoulli:q:seeded`` none because none is sent.
"""

from __future__ import annotations

import sys

import torch
from torch import Tensor

from marina.compressors.base import Compressor, Message, _parse_float, _parse_mode, register
from marina.compressors.wire import bytes_to_values, values_to_bytes
from marina.errors import ConfigError
from marina.rng import Randomness

__all__ = ["Bernoulli"]


@register
class Bernoulli(Compressor):
    """Lazy compression with probability q (see the module docstring).

    Message fields: ``sent`` (n,) bool, ``values`` (number sent, d) at the wire dtype.

    Args:
        arg: q in (0, 1], the probability of sending (``"0.1"``), or ``"0.1:seeded"``: the
            receiver regenerates the coins from the key and no flag travels.
        value_dtype: wire precision of the values (see :class:`Compressor`).
        workers: total number of workers n (ignored).
    """

    name = "bernoulli"
    param = "q"
    example = "0.1"
    omega_formula = "1/q - 1"
    density_formula = "q d"
    wire_formula = "1 flag bit + d values when sent"
    modes = ("seeded",)

    def wire_format(self, d: int) -> str:
        w = self.wire_bits_per_value
        if self.seeded:
            return (
                f"{d} values x {w} bits = {d * w} bits with probability {self.q!r}, else 0 bits "
                "(no flag: the coin is regenerated from the key)"
            )
        return (
            f"1 flag bit + {d} values x {w} bits = {1 + d * w} bits with probability {self.q!r}, else 1 bit"
        )

    def expected_bits(self, d: int) -> float:
        """1 + q d w: the flag, and the d values with probability q (q d w when seeded: no flag)."""
        return self.flag_bits + self.q * self._check_d(d) * self.wire_bits_per_value

    def _parse(self, arg: str | None) -> None:
        value, mode = _parse_mode(self.name, self.param, arg, self.modes)
        q = _parse_float(self.name, "q", value)
        if not (0.0 < q <= 1.0):
            raise ConfigError(f"{self.name}: q == {q:g}, must be in (0, 1]")
        if q < sys.float_info.min:  # subnormal: omega = 1/q - 1 overflows
            raise ConfigError(
                f"{self.name}: q == {value}, must be at least {sys.float_info.min:g} "
                "(omega = 1/q - 1 must be finite)"
            )
        self.q = q
        self.seeded = mode == "seeded"
        self.regenerates = self.sized_by_draws = self.seeded
        self.flag_bits = 0 if self.seeded else 1  # the flag travels unless the coin is regenerated
        if self.seeded:
            self.wire_formula = "d values when sent, nothing otherwise (the coin is regenerated from the key)"

    @property
    def spec(self) -> str:
        return f"bernoulli:{self.q!r}" + (":seeded" if self.seeded else "")

    def message_bits(self, d: int, worker_ids: Tensor, rng: Randomness | None = None) -> Tensor | None:
        """Seeded, with the senders' ``rng``: d w where their coin says sent, else 0 (one drawing
        call, the coin); None otherwise (the flag travels, and the sizes with it)."""
        if not self.seeded or rng is None:
            return None
        self._check_d(d)
        sent = self._coins(self._check_receiver_rng(rng, worker_ids, "coins"))
        return self._bits(sent.cpu(), d)

    def omega(self, d: int) -> float:
        self._check_d(d)
        return 1.0 / self.q - 1.0

    def density(self, d: int) -> float:
        return self.q * self._check_d(d)

    def _bits(self, sent: Tensor, d: int) -> Tensor:
        return self.flag_bits + sent.to(torch.int64) * (d * self.wire_bits_per_value)

    def _coins(self, rng: Randomness) -> Tensor:
        """(n,) bool: which rows send (the one drawing call)."""
        return (rng.uniform(1, torch.float64) < self.q).reshape(-1)

    def _draw(self, X: Tensor, rng: Randomness, amax: float) -> tuple[Tensor, Tensor]:
        self._check_wire_range(amax, X.dtype, 1.0 / self.q)
        sent = self._coins(rng)
        idx = torch.nonzero(sent).reshape(-1)
        return sent, idx

    def _scaled(self, X: Tensor, idx: Tensor) -> Tensor:
        rows = X.index_select(0, idx)
        return (rows / self.q if self.q != 1.0 else rows).to(self.value_dtype)

    def _compress(self, X: Tensor, rng: Randomness, amax: float) -> Message:
        sent, idx = self._draw(X, rng, amax)
        data = {"sent": sent, "values": self._scaled(X, idx)}
        return Message(self.spec, X.shape[1], X.dtype, rng.worker_ids, self._bits(sent, X.shape[1]), data)

    def _compress_decompress(self, X: Tensor, rng: Randomness, amax: float) -> tuple[Tensor, Tensor]:
        sent, idx = self._draw(X, rng, amax)
        out = torch.zeros_like(X)
        out.index_copy_(0, idx, self._scaled(X, idx).to(X.dtype))
        return out, self._bits(sent, X.shape[1])

    def _decompress(self, msg: Message) -> Tensor:
        sent = msg.data["sent"]
        out = torch.zeros((sent.numel(), msg.d), dtype=msg.dtype, device=sent.device)
        idx = torch.nonzero(sent).reshape(-1)
        return out.index_copy_(0, idx, msg.data["values"].to(msg.dtype))

    def _pack_rows(self, msg: Message) -> tuple[Tensor, Tensor]:
        sent = msg.data["sent"]
        n, d = sent.numel(), msg.d
        nv = d * self.wire_bits_per_value // 8
        flag = self.flag_bits  # one byte: the values before it are byte aligned
        rows = torch.zeros((n, nv + flag), dtype=torch.uint8, device=sent.device)
        idx = torch.nonzero(sent).reshape(-1)
        rows[idx, :nv] = values_to_bytes(msg.data["values"])
        if flag:
            rows[idx, nv] = 1  # flag of a sent message: bit 0 of its last byte; unsent: byte 0 is 0
        return rows, (msg.bits + 7) // 8

    def _unpack_rows(self, rows, lengths, d, worker_ids, dtype, rng) -> Message:
        nv = d * self.wire_bits_per_value // 8
        if self.seeded:  # the coins regenerated from the key; sent messages are the d values only
            sent = self._coins(self._check_receiver_rng(rng, worker_ids, "coins")).to(rows.device)
            if rows.shape[1] < nv:
                rows = torch.nn.functional.pad(rows, (0, nv - rows.shape[1]))
        else:
            last = rows.gather(1, (lengths - 1).clamp(min=0).reshape(-1, 1)).reshape(-1)
            sent = (last & 1).bool()
        flag = self.flag_bits  # bytes of the flag, as packed
        if bool((sent & (lengths != nv + flag)).any()) or bool((~sent & (lengths != flag)).any()):
            raise ConfigError(f"{self.spec}: payload lengths {lengths.tolist()} do not fit d == {d}")
        idx = torch.nonzero(sent).reshape(-1)
        values = bytes_to_values(rows.index_select(0, idx), d, self.value_dtype)
        return Message(self.spec, d, dtype, worker_ids, self._bits(sent, d), {"sent": sent, "values": values})
