"""Composed compressors: RandK, then an unbiased quantiser of the K kept values.

``randk:K+natural``, ``randk:K+qsgd:s``, ``randk:K+natural-dithering:s``, ``randk:K+terngrad``
(and the same after ``randk:K:seeded``): Q(x) = Q_2(Q_1(x)) where Q_1 = RandK keeps a uniformly
random K-subset S scaled by d/K and Q_2 quantises the K kept values y = (d/K) x_S as a vector of
dimension K (the zeros of Q_1(x) stay zero under every listed Q_2, so this is Q_2 applied to
Q_1(x), with Q_2's constants at dimension K). Unbiased, and with independent draws (Beznosikov,
Horvath, Richtarik, Safaryan 2020, "On biased compression for distributed learning", Lemma 1
on compositions of unbiased compressors; directly: E||Q_2(y) - x||^2 = E||Q_2(y) - y||^2 +
E||y - x||^2 <= omega_2 (1 + omega_1) ||x||^2 + omega_1 ||x||^2)

    omega(d) = (1 + omega_1(d)) (1 + omega_2(K)) - 1 = (d/K) (1 + omega_2(K)) - 1,

density(d) = density_2(K) (at most K non-zeros).

One message format per worker (w = wire bits per value, ib = ceil(log2 d)): Q_2's header
values (QSGD's and natural dithering's norm, TernGrad's scale; none for natural), then K codes
of ``c_2 + ib`` bits, LSB first, code t = Q_2's code of the t-th kept value (c_2 bits: sign and
level, or sign and exponent) plus its index times 2^c_2; the indices are sorted ascending. So
``bits = bits_2(K) + K ib``; with ``randk:K:seeded`` no index travels (ib = 0; ``unpack`` needs
``rng`` to regenerate them). Draws: RandK's one call, then Q_2's one call, on the same ``rng``.
The composite gathers: lazy rows are read at the K kept entries only.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor

from marina.compressors.base import Compressor, Message, get, register_composition
from marina.compressors.sparse import RandK, sparse_rows, sparse_sum
from marina.compressors.wire import bytes_to_values, index_bits, pack_codes, unpack_codes, values_to_bytes
from marina.errors import ConfigError
from marina.lazy_rows import LazyRows
from marina.rng import Randomness

__all__ = ["Composed"]

INNER = ("natural", "qsgd", "natural-dithering", "terngrad")
"""Names of the quantisers that may follow RandK."""

TEMPLATES = ("randk:K+natural", "randk:K+qsgd:s", "randk:K+natural-dithering:s", "randk:K+terngrad")
"""Spec templates listed by :func:`marina.compressors.known`."""


def compose(spec: str, options: dict[str, Any]) -> Composed:
    """Build ``"randk:K[:seeded]+inner"`` (see the module docstring); ConfigError otherwise."""
    parts = [p.strip() for p in spec.split("+")]
    if len(parts) != 2 or not all(parts):
        raise ConfigError(
            f"compressor spec == {spec!r}: a composition is 'randk:K+Q' with one Q in {', '.join(INNER)}"
        )
    outer, inner = (get(p, **options) for p in parts)
    if not isinstance(outer, RandK):
        raise ConfigError(
            f"compressor spec == {spec!r}: the first compressor is {outer.spec!r}, must be randk:K "
            "or randk:K:seeded (a composition quantises the K values RandK keeps)"
        )
    if inner.name not in INNER:
        raise ConfigError(
            f"compressor spec == {spec!r}: the second compressor is {inner.spec!r}, must be one of "
            f"{', '.join(INNER)} (unbiased quantisers of the kept values)"
        )
    return Composed(outer=outer, inner=inner)


class Composed(Compressor):
    """RandK followed by a quantiser of the kept values (see the module docstring).

    Message fields: the quantiser's fields for the (n, K) kept values (``norm`` for the
    norm-scaled ones, ``codes``), then ``indices`` (n, K) int64 sorted.
    Built by :func:`marina.compressors.get` from ``"randk:K+Q"``.

    Args:
        outer: the RandK that keeps K coordinates (its value_dtype and workers are the composition's).
        inner: the unbiased quantiser of the K kept values (natural, qsgd:s, natural-dithering:s,
            terngrad).
    """

    name = "composed"
    gathers = True
    fixed_size = True
    omega_formula = "(d/K) (1 + omega_2(K)) - 1"
    density_formula = "density_2(K)"
    wire_formula = "header of Q_2 + K x (code of Q_2 + ceil(log2 d) index bits)"

    def __init__(self, *, outer: RandK, inner: Compressor) -> None:
        super().__init__(value_dtype=outer.value_dtype, workers=outer.workers)
        self.outer, self.inner = outer, inner
        self.K = outer.K
        self.regenerates = outer.seeded
        self._header = [] if inner.name == "natural" else ["norm"]
        at_k = lambda f: re.sub(r"\bd\b", "K", f)  # the quantiser's formula at dimension K
        self.omega_formula = f"(d/K) (1 + {at_k(inner.omega_formula)}) - 1"
        self.density_formula = at_k(inner.density_formula)
        index = "" if outer.seeded else " + ceil(log2 d) index bits"
        inner_name = inner.name + (f":{inner.param}" if inner.param else "")
        self.wire_formula = f"{inner_name} of the K kept values: {at_k(inner.wire_formula)}, each code{index}"

    @property
    def spec(self) -> str:
        return f"{self.outer.spec}+{self.inner.spec}"

    # -- theory -------------------------------------------------------------------------------
    def omega(self, d: int) -> float:
        return (1 + self.outer.omega(d)) * (1 + self.inner.omega(self.K)) - 1

    def density(self, d: int) -> float:
        self.outer._check_k(d)
        return self.inner.density(self.K)

    def _ib(self, d: int) -> int:
        return 0 if self.outer.seeded else index_bits(d)

    def bits_per_message(self, d: int) -> int:
        self.outer._check_k(d)
        return self.inner.bits_per_message(self.K) + self.K * self._ib(d)

    def wire_format(self, d: int) -> str:
        idx = f"{self.K} x {self._ib(d)} index bits"
        if self.outer.seeded:
            idx = "no index bits (regenerated from the key)"
        return (
            f"{self.inner.spec} of the {self.K} kept values ({self.inner.wire_format(self.K)}) "
            f"+ {idx} = {self.bits_per_message(d)} bits"
        )

    # -- the protocol -------------------------------------------------------------------------
    def _inner_message(self, msg: Message) -> Message:
        data = {k: v for k, v in msg.data.items() if k != "indices"}
        bits = msg.bits - self.K * self._ib(msg.d)
        return Message(self.inner.spec, self.K, msg.dtype, msg.worker_ids, bits, data)

    def _compress(self, X: Tensor | LazyRows, rng: Randomness, amax: float | None) -> Message:
        n, d = X.shape
        self.outer._check_k(d)
        idx, scale = self.outer._select(X, rng)  # step 1: RandK's draw, d/K
        kept = X.gather(1, idx)
        if amax is None:  # lazy rows: only the gathered entries are read, so only they are checked
            amax = self._finite_amax(kept) if kept.numel() else 0.0
        self._check_wire_range(amax, X.dtype, scale)
        Y = (kept * scale).contiguous()  # Q_1(x) on its support, in the input dtype
        part = self.inner._compress(Y, rng, self.inner._finite_amax(Y) if Y.numel() else 0.0)  # step 2
        bits = part.bits + self.K * self._ib(d)
        return Message(self.spec, d, X.dtype, rng.worker_ids, bits, {**part.data, "indices": idx})

    def _values(self, msg: Message) -> Tensor:
        """(n, K) decompressed kept values, in ``msg.dtype``."""
        return self.inner._decompress(self._inner_message(msg))

    def _decompress(self, msg: Message) -> Tensor:
        return sparse_rows(msg.data["indices"], self._values(msg), msg.d)

    def sum_decompressed(self, msg: Message) -> Tensor:
        return sparse_sum(msg.data["indices"], self._values(msg), msg.d)

    def compress_sum(
        self, X: Tensor | LazyRows, rng: Randomness, keep_local: bool = False
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """The n K decompressed values added into a (d,) vector; rows only if asked."""
        msg = self.compress(X, rng)
        values = self._values(msg)
        local = sparse_rows(msg.data["indices"], values, msg.d) if keep_local else None
        return sparse_sum(msg.data["indices"], values, msg.d), msg.bits, local

    # -- wire ---------------------------------------------------------------------------------
    def _pack_rows(self, msg: Message) -> tuple[Tensor, Tensor]:
        cw, ib = self.inner.code_width, self._ib(msg.d)
        codes = msg.data["codes"].to(torch.int64)
        if ib:
            codes = codes | (msg.data["indices"] << cw)
        parts = [values_to_bytes(msg.data[k].reshape(-1, 1)) for k in self._header]
        rows = torch.cat([*parts, pack_codes(codes, cw + ib)], dim=1)
        return rows, (msg.bits + 7) // 8

    def _unpack_rows(self, rows, lengths, d, worker_ids, dtype, rng) -> Message:
        self.outer._check_k(d)
        cw, ib = self.inner.code_width, self._ib(d)
        data: dict[str, Tensor] = {}
        offset = 0
        for k in self._header:
            data[k] = bytes_to_values(rows[:, offset:], 1, self.value_dtype).reshape(-1)
            offset += self.wire_bits_per_value // 8
        codes = unpack_codes(rows[:, offset:], self.K, cw + ib, torch.int64)
        if ib:
            idx = codes >> cw
        else:
            idx = self.outer._regenerate(rng, worker_ids, d)
        code_dtype = getattr(self.inner, "_code_dtype", None)
        inner_dtype = code_dtype() if code_dtype is not None else torch.int32
        data["codes"] = (codes & ((1 << cw) - 1)).to(inner_dtype)
        bits = self._bits_tensor(rows.shape[0], self.bits_per_message(d), rows.device)
        return Message(self.spec, d, dtype, worker_ids, bits, {**data, "indices": idx})


register_composition(compose, TEMPLATES)
