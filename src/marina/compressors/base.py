"""Compressor protocol: batched over workers, keyed randomness, exact wire bits.

Contract (relied on by methods, networks and tests):

- ``c.compress(X, rng) -> Message`` with ``X`` of shape (n, d), one row per worker, and ``rng``
  a :class:`marina.rng.Randomness` whose row r belongs to worker ``rng.worker_ids[r]``.
- ``c.decompress(msg) -> X_hat`` of shape (n, d), same dtype and device as the input.
- ``c.compress_decompress(X, rng) -> (X_hat, bits)``: the simulation's fast path. It returns
  exactly what ``decompress(unpack(pack(compress(X, rng))))`` returns, because every value is
  rounded to the wire precision (``value_dtype``) before it is cast back to the input dtype.
- ``msg.bits``: length-n int64 tensor, the exact size in bits of each worker's packed message
  (the packed payload has ``ceil(bits / 8)`` bytes).
- ``c.message_bits(d, worker_ids, rng=None)``: the (m,) int64 bits of the messages those workers
  send, when they follow from (compressor, d, worker id) alone (every compressor but
  Bernoulli), or, for compressors ``sized_by_draws`` (``bernoulli:q:seeded``), from the senders'
  keyed draws, regenerated from ``rng``; None when they depend on the values or on draws that
  are not given. A compressor that returns sizes also guarantees that no message it makes
  consists of 0xFF bytes only (its first field, a wire value or a sign + exponent code, would
  be NaN or infinite), so a receiver can tell a failed sender by that pattern without any size
  exchange (see :mod:`marina.network.torch_distributed`).
- ``c.regenerates``: the receiver regenerates the sender's draws from the keyed randomness
  (PermK's permutation, ``randk:K:seeded``'s indices, ``bernoulli:q:seeded``'s coins):
  ``unpack`` then needs ``rng``.
- ``c.pack(msg) -> list[Tensor]`` (one uint8 tensor per worker) and
  ``c.unpack(payloads, d, worker_ids=..., dtype=..., rng=...) -> Message`` invert each other
  exactly.
- Theory: ``c.unbiased``, ``c.omega(d)`` (E||Q(x) - x||^2 <= omega ||x||^2), ``c.density(d)``
  (expected non-zeros zeta_Q), ``c.alpha(d)`` for contractive (biased) compressors
  (||C(x) - x||^2 <= (1 - alpha) ||x||^2), ``c.correlated`` (draws shared across workers).
- ``c.roundtrip(x, seed=0) -> (x_hat, bits)`` for a (d,) or (n, d) tensor, through the wire.
- Aggregation: ``c.sum_decompressed(msg)`` is the (d,) sum of the decompressed rows in the
  compressor's canonical order (what a receiver averages), and ``c.compress_sum(X, rng)`` the
  simulation's fused ``(that sum, bits, decompressed rows or None)``, equal to it bit for bit.
  Sparse messages are summed entry by entry into a (d,) vector, never expanded to (n, d).
- Lazy input: ``X`` may be :class:`marina.lazy_rows.LazyRows`. Compressors that only gather
  entries chosen without looking at the values (``c.gathers``: RandK) read just those entries,
  and check only them (finite, within the wire range); every other compressor materialises X.
- Values out of range: a non-finite entry, or one whose message value would exceed the largest
  value of the wire (or input) dtype, raises :class:`marina.errors.ValueRangeError` (a
  ConfigError); callers decide by that type, never by the message.

Options accepted by :func:`marina.compressors.get` for every compressor:

- ``value_dtype``: the wire precision of values (``torch.float32`` by default, 32 bits a value;
  ``torch.float64``, ``torch.float16`` and ``torch.bfloat16`` are accepted).
- ``workers``: the total number of workers n of the run. Only PermK needs it (its blocks and
  its omega depend on n); the others ignore it, so a method may always pass it.

Random draws come only from the ``rng`` argument, and each compress call makes a fixed number of
drawing calls on it (documented per compressor), so identical code draws identically in every
process (see :mod:`marina.rng`).
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from marina.errors import ConfigError, ValueRangeError
from marina.lazy_rows import LazyRows
from marina.rng import Randomness

__all__ = [
    "Compressor",
    "CompressorSpec",
    "Message",
    "WIRE_DTYPES",
    "register",
    "get",
    "known",
    "column_chunks",
]

WIRE_DTYPES: dict[torch.dtype, str] = {
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
    torch.float32: "float32",
    torch.float64: "float64",
}
"""Value precisions a message may use on the wire."""

_REGISTRY: dict[str, type[Compressor]] = {}


@dataclass
class Message:
    """The compressed messages of the workers hosted here, one row per worker.

    Attributes:
        spec: canonical spec of the compressor that made it.
        d: dimension of the uncompressed vectors.
        dtype: dtype of the uncompressed vectors (what ``decompress`` returns).
        worker_ids: (n,) int64 global ids of the senders.
        bits: (n,) int64 exact bits of each worker's packed message.
        data: payload fields, each a tensor with leading axis n (values already rounded to the
            wire precision; integer codes such as indices or levels). Field names and meaning
            are documented by each compressor.
        meta: small per-message constants (e.g. the total number of workers for PermK).
    """

    spec: str
    d: int
    dtype: torch.dtype
    worker_ids: Tensor
    bits: Tensor
    data: dict[str, Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        """Number of worker messages."""
        return int(self.bits.numel())

    @property
    def device(self) -> torch.device:
        return self.bits.device


def register(cls: type[Compressor]) -> type[Compressor]:
    """Class decorator: make ``cls`` buildable by :func:`get` under ``cls.name``."""
    _REGISTRY[cls.name] = cls
    return cls


_ORDER = (
    "identity", "randk", "bernoulli", "qsgd", "natural", "natural-dithering", "terngrad", "permk", "topk",
    "sign",
)  # fmt: skip


_COMPOSITION: dict[str, Any] = {"build": None, "templates": ()}
"""How ``get`` builds specs with a ``+`` and what ``known`` lists for them: registered by
:mod:`marina.compressors.composed` (:func:`register_composition`), which builds on this module."""


def register_composition(build: Any, templates: tuple[str, ...]) -> None:
    """Let ``get("A+B", **options)`` return ``build("A+B", options)``; ``known()`` lists ``templates``."""
    _COMPOSITION.update(build=build, templates=tuple(templates))


def known() -> list[str]:
    """Spec templates of every registered compressor, e.g. ``["identity", "randk:K", ...]``,
    then the compositions (``"randk:K+natural"``, ...; :mod:`marina.compressors.composed`)."""
    rank = {name: i for i, name in enumerate(_ORDER)}
    classes = sorted(_REGISTRY.values(), key=lambda c: rank.get(c.name, len(rank)))
    out = []
    for c in classes:
        template = c.name + (f":{c.param}" if c.param else "")
        out += [template] + [f"{template}:{mode}" for mode in c.modes]
    return out + list(_COMPOSITION["templates"])


def get(spec: CompressorSpec, **options: Any) -> Compressor:
    """Build a compressor from a spec string ``"name"`` or ``"name:param"``.

    Args:
        spec: e.g. ``"identity"``, ``"randk:5"``, ``"bernoulli:0.1"``, ``"qsgd:4"``,
            ``"natural"``, ``"natural-dithering:8"``, ``"terngrad"``, ``"permk"``, ``"topk:10"``,
            ``"sign"``, compositions ``"randk:K+natural"``, ``"randk:K+qsgd:s"``. A
            :class:`Compressor` is returned unchanged (options must then be empty).
        **options: ``value_dtype`` (wire precision of values), ``workers`` (total n, PermK).

    Raises:
        ConfigError: unknown name (the message lists the known ones), missing or bad parameter,
            unknown option.
    """
    if isinstance(spec, Compressor):
        if options:
            raise ConfigError(f"options {sorted(options)} given with a built compressor {spec.spec!r}")
        return spec
    if not isinstance(spec, str):
        raise ConfigError(f"compressor spec == {spec!r}, must be a string such as 'randk:5'")
    if "+" in spec and _COMPOSITION["build"] is not None:  # a composition, "randk:K+natural"
        return _COMPOSITION["build"](spec, options)
    name, sep, arg = spec.strip().partition(":")
    name = name.strip().lower()
    cls = _REGISTRY.get(name)
    if cls is None:
        raise ConfigError(f"unknown compressor {spec!r}; known: {', '.join(known())}")
    if cls.param is None and sep:
        raise ConfigError(f"{name}: takes no parameter, got {spec!r}")
    if cls.param is not None and not arg.strip():
        raise ConfigError(f"{name}: missing parameter {cls.param}, write e.g. '{name}:{cls.example}'")
    bad = set(options) - {"value_dtype", "workers"}
    if bad:
        raise ConfigError(f"unknown compressor option(s) {sorted(bad)}; known: value_dtype, workers")
    return cls(arg=arg.strip() if cls.param is not None else None, **options)


def _parse_int(name: str, param: str, arg: str, low: int) -> int:
    try:
        v = int(arg)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: {param} == {arg!r}, must be an integer >= {low}") from None
    if v < low:
        raise ConfigError(f"{name}: {param} == {v}, must be >= {low}")
    return v


def _parse_mode(name: str, param: str, arg: str | None, modes: tuple[str, ...]) -> tuple[str, str | None]:
    """``"5:seeded"`` -> ``("5", "seeded")``, ``"5"`` -> ``("5", None)``; ConfigError naming a
    mode that is not one of ``modes`` and the allowed ones."""
    value, sep, mode = (arg or "").partition(":")
    mode = mode.strip().lower()
    if sep and mode not in modes:
        allowed = " or ".join(f"{m!r} ({name}:{param}:{m})" for m in modes)
        raise ConfigError(f"{name}: mode == {mode!r} in {arg!r}, must be {allowed} or absent")
    return value.strip(), mode if sep else None


def _parse_float(name: str, param: str, arg: str) -> float:
    try:
        return float(arg)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: {param} == {arg!r}, must be a number") from None


class Compressor(ABC):
    """Base class: validation, spec, wire precision, round trip. Subclasses implement the maths.

    Subclasses define ``name``, ``param`` (spec parameter name or None), ``_compress``,
    ``_decompress``, ``_pack_rows``/``_unpack_rows`` and the theory (``omega``, ``density``).
    Build compressors with :func:`get`, which passes the spec's parameter as ``arg``.

    Args:
        arg: the spec parameter after the name (``"5"`` of ``"randk:5"``, with its mode:
            ``"5:seeded"``), None for compressors without one.
        value_dtype: wire precision of message values (a key of :data:`WIRE_DTYPES`).
        workers: total number of workers n of the run (PermK needs it; the others ignore it).

    Raises:
        ConfigError: an unknown ``value_dtype``, ``workers`` < 1, or a bad parameter.
    """

    name: ClassVar[str]
    param: ClassVar[str | None] = None
    example: ClassVar[str] = ""
    unbiased: ClassVar[bool] = True
    correlated: ClassVar[bool] = False
    contractive: ClassVar[bool] = False
    gathers: ClassVar[bool] = False
    """Reads only entries chosen independently of the values (lazy rows are not materialised)."""
    keeps_non_finite: ClassVar[bool] = False
    """Every row holding a non-finite entry keeps one and its largest magnitude (TopK): on the
    CPU only the kept entries are checked for finiteness and the wire range (no pass over X)."""
    regenerates: ClassVar[bool] = False
    """The receiver regenerates the sender's draws from the key (``unpack`` needs ``rng``)."""
    fixed_size: ClassVar[bool] = False
    """Message bits follow from (d, worker id): :meth:`message_bits` gives them."""
    sized_by_draws: ClassVar[bool] = False
    """Message bits follow from (d, the senders' keyed draws): :meth:`message_bits` gives them
    when passed the senders' Randomness (``bernoulli:q:seeded``, whose coins decide)."""
    modes: ClassVar[tuple[str, ...]] = ()
    """Spec modes after the parameter, ``name:param:mode`` (``"seeded"``), listed by :func:`known`."""

    def __init__(
        self,
        *,
        arg: str | None = None,
        value_dtype: torch.dtype = torch.float32,
        workers: int | None = None,
    ) -> None:
        if value_dtype not in WIRE_DTYPES:
            raise ConfigError(
                f"{self.name}: value_dtype == {value_dtype}, must be one of "
                f"{', '.join('torch.' + v for v in WIRE_DTYPES.values())}"
            )
        if workers is not None:
            workers = _parse_int(self.name, "workers", workers, 1)  # type: ignore[arg-type]
        self.value_dtype = value_dtype
        self.workers = workers
        self._parse(arg)

    # -- spec ---------------------------------------------------------------------------------
    def _parse(self, arg: str | None) -> None:  # noqa: B027 (optional hook)
        """Read the spec parameter (subclasses with a parameter override this)."""

    @property
    def spec(self) -> str:
        """Canonical spec string, e.g. ``"randk:5"`` (options are not part of it)."""
        return self.name

    @property
    def wire_bits_per_value(self) -> int:
        """Bits of one value on the wire (32 for float32)."""
        return torch.finfo(self.value_dtype).bits

    def __repr__(self) -> str:
        opts = f"value_dtype={self.value_dtype}"
        if self.workers is not None:
            opts += f", workers={self.workers}"
        return f"marina.compressors.get({self.spec!r}, {opts})"

    # -- theory -------------------------------------------------------------------------------
    @abstractmethod
    def omega(self, d: int) -> float:
        """Variance parameter: E||Q(x) - x||^2 <= omega ||x||^2 (unbiased compressors)."""

    @abstractmethod
    def density(self, d: int) -> float:
        """zeta_Q: expected number of non-zeros of Q(x) (an upper bound where it depends on x)."""

    def alpha(self, d: int) -> float:
        """Contraction parameter: ||C(x) - x||^2 <= (1 - alpha) ||x||^2 (contractive compressors)."""
        raise ConfigError(
            f"{self.spec}: alpha is defined for contractive compressors (identity, topk:K); "
            f"{self.spec} is unbiased with omega(d) = {self.omega_formula}; "
            f"Q/(1 + omega) is contractive with alpha = 1/(1 + omega)"
        )

    def _no_omega(self, what: str) -> float:
        """omega of a biased contractive compressor: a ConfigError naming its alpha."""
        raise ConfigError(
            f"{self.spec}: {what} is biased, so omega is undefined; it is contractive with "
            f"alpha(d) = {self.alpha_formula} (use it with error feedback, not with MARINA/DIANA)"
        )

    def ab_constants(self, d: int, n: int) -> tuple[float, float]:
        """(A, B) of the AB inequality of Szlendak, Tyurin, Richtarik 2022 (ICLR, Definition 1;
        number unverified): E||(1/n) sum_i Q_i(a_i) - abar||^2 <= A (1/n) sum_i ||a_i||^2
        - B ||abar||^2 for any a_i.
        Independent unbiased compressors: A = omega/n, B = 0, since the errors of different
        workers are uncorrelated: E||(1/n) sum_i (Q_i(a_i) - a_i)||^2 = (1/n^2) sum_i
        E||Q_i(a_i) - a_i||^2 <= (omega/n) (1/n) sum_i ||a_i||^2, with equality for RandK (so
        no B > 0 holds for it in general). Correlated compressors override this (PermK: A = B = 1)."""
        return self.omega(d) / n, 0.0

    def expected_bits(self, d: int) -> float:
        """Expected size in bits of one worker's message of dimension d (``msg.bits``)."""
        exact = getattr(self, "bits_per_message", None)
        if exact is None:
            raise ConfigError(f"{self.spec}: no expected message size known (define expected_bits)")
        return float(exact(d))

    omega_formula: ClassVar[str] = ""
    alpha_formula: ClassVar[str] = ""
    density_formula: ClassVar[str] = ""
    wire_formula: ClassVar[str] = ""
    """Human-readable theory and encoding (``marina compress --list``); w = wire bits per value."""

    def wire_format(self, d: int) -> str:
        """The encoding of one worker message of dimension d, with its bit count."""
        return self.wire_formula

    def message_bits(self, d: int, worker_ids: Tensor, rng: Randomness | None = None) -> Tensor | None:
        """(m,) int64 exact bits of the messages of ``worker_ids`` in dimension ``d``, or None
        when sizes vary with the values or the draws (see the module docstring).

        ``rng``: the senders' Randomness (seed, stream, round, ``worker_ids``) at the call counter
        they compress with; only compressors :attr:`sized_by_draws` use it (None without it),
        the others ignore it."""
        if not self.fixed_size:
            return None
        bits = self.bits_per_message(d)  # type: ignore[attr-defined] - every fixed-size compressor has it
        return self._bits_tensor(int(worker_ids.numel()), bits, torch.device("cpu"))

    def _check_receiver_rng(self, rng: Randomness | None, worker_ids: Tensor, what: str) -> Randomness:
        """``rng`` of a receiver that regenerates the senders' ``what`` (ConfigError if missing,
        or hosting other workers than the senders ``worker_ids``)."""
        if rng is None:
            raise ConfigError(
                f"{self.spec}: unpack needs rng, a Randomness(seed, stream, round, sender ids) at the "
                f"senders' call counter, to regenerate the {what} (none travel)"
            )
        if rng.n_rows != worker_ids.numel() or not torch.equal(rng.worker_ids.cpu(), worker_ids.cpu()):
            raise ConfigError(
                f"{self.spec}: rng hosts workers {rng.worker_ids.tolist()}, the payloads come from "
                f"{worker_ids.tolist()}; they must be the same"
            )
        return rng

    def _check_d(self, d: int) -> int:
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise ConfigError(f"{self.spec}: d == {d!r}, must be an integer >= 1")
        return d

    # -- the protocol -------------------------------------------------------------------------
    def compress(self, X: Tensor, rng: Randomness) -> Message:
        """Compress each row of ``X`` (n, d) with the randomness of its worker."""
        X, amax = self._check_input(X, rng)
        return self._compress(X, rng, amax)

    def decompress(self, msg: Message) -> Tensor:
        """(n, d) tensor of the decompressed rows, in ``msg.dtype``."""
        if not isinstance(msg, Message):
            raise ConfigError(f"{self.spec}: decompress expects a Message, got {type(msg).__name__}")
        if msg.spec != self.spec:
            raise ConfigError(f"{self.spec}: cannot decompress a message made by {msg.spec!r}")
        return self._decompress(msg)

    def compress_decompress(self, X: Tensor, rng: Randomness) -> tuple[Tensor, Tensor]:
        """``(decompress(compress(X, rng)), bits)`` without building the wire form.

        Identical (bit for bit) to the decompressed message, hence to what the receiver of the
        packed bytes reconstructs; subclasses may override it with a fused, faster path.
        """
        X, amax = self._check_input(X, rng)
        return self._compress_decompress(X, rng, amax)

    def _compress_decompress(self, X: Tensor, rng: Randomness, amax: float) -> tuple[Tensor, Tensor]:
        msg = self._compress(X, rng, amax)
        return self._decompress(msg), msg.bits

    def compress_sum(
        self, X: Tensor | LazyRows, rng: Randomness, keep_local: bool = False
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(sum_decompressed(compress(X, rng)), bits, X_hat)``, fused for the simulation.

        ``X_hat`` (the decompressed rows) is returned when ``keep_local`` (it may also be
        returned otherwise, by compressors that build it anyway). The sum equals, bit for bit,
        what :meth:`sum_decompressed` gives on the packed, exchanged and unpacked messages.
        """
        X_hat, bits = self.compress_decompress(X, rng)
        return self.sum_rows(X_hat), bits, X_hat

    def sum_decompressed(self, msg: Message) -> Tensor:
        """(d,) sum over the rows of ``decompress(msg)``, in this compressor's canonical order."""
        return self.sum_rows(self.decompress(msg))

    # -- fused wire paths (the one-collective aggregation of marina.network.torch_distributed) --
    def pack_compressed(self, X: Tensor | LazyRows, rng: Randomness) -> tuple[Tensor, Tensor]:
        """``(rows, bits)``: the rows of ``_pack_rows(compress(X, rng))`` (message i in the first
        ceil(bits_i / 8) bytes of row i) and the messages' bits; subclasses may fuse."""
        msg = self.compress(X, rng)
        return self._pack_rows(msg)[0], msg.bits

    def sum_packed(
        self,
        rows: Tensor,
        lengths: Tensor,
        d: int,
        worker_ids: Tensor,
        dtype: torch.dtype,
        rng: Randomness | None,
    ) -> Tensor:
        """(d,) ``sum_decompressed`` of the messages packed in ``rows`` (the arguments of
        :meth:`unpack_rows`), bit for bit; subclasses may fuse."""
        return self.sum_decompressed(self._unpack_rows(rows, lengths, d, worker_ids, dtype, rng))

    def unpack_rows(
        self,
        rows: Tensor,
        lengths: Tensor,
        d: int,
        worker_ids: Tensor,
        dtype: torch.dtype,
        rng: Randomness | None,
    ) -> Message:
        """The messages packed in ``rows``, the batched inverse of :meth:`pack_compressed`.

        Args:
            rows: (m, width) uint8, message i in the first ``lengths[i]`` bytes of row i (zero
                padded), as :meth:`pack_compressed` writes them.
            lengths: (m,) int64 bytes of each message (``ceil(bits / 8)``).
            d: dimension of the vectors.
            worker_ids: (m,) int64 global ids of the senders, on the rows' device.
            dtype: dtype of the decompressed vectors.
            rng: as in :meth:`unpack` (the senders' Randomness where :attr:`regenerates`).
        """
        if rows.dtype != torch.uint8 or rows.dim() != 2 or lengths.shape != (rows.shape[0],):
            raise ConfigError(
                f"{self.spec}: rows must be (m, width) uint8 with (m,) lengths, got {rows.dtype} "
                f"{tuple(rows.shape)} and {tuple(lengths.shape)}"
            )
        return self._unpack_rows(rows, lengths, self._check_d(d), worker_ids, dtype, rng)

    @staticmethod
    def sum_rows(X_hat: Tensor) -> Tensor:
        """The canonical (d,) sum of dense decompressed rows (a fixed torch reduction)."""
        return X_hat.sum(dim=0)

    @abstractmethod
    def _compress(self, X: Tensor, rng: Randomness, amax: float) -> Message: ...

    @abstractmethod
    def _decompress(self, msg: Message) -> Tensor: ...

    # -- wire ---------------------------------------------------------------------------------
    def pack(self, msg: Message) -> list[Tensor]:
        """One uint8 tensor per worker: the bytes that cross the network (``ceil(bits/8)`` each)."""
        if msg.spec != self.spec:
            raise ConfigError(f"{self.spec}: cannot pack a message made by {msg.spec!r}")
        rows, lengths = self._pack_rows(msg)
        lengths = lengths.tolist()
        return [rows[i, : lengths[i]] for i in range(len(lengths))]

    def unpack(
        self,
        payloads: Sequence[Tensor],
        d: int,
        *,
        worker_ids: Tensor | Sequence[int] | None = None,
        dtype: torch.dtype | None = None,
        rng: Randomness | None = None,
    ) -> Message:
        """Inverse of :meth:`pack`.

        Args:
            payloads: one uint8 tensor per worker, as produced by :meth:`pack`.
            d: dimension of the vectors.
            worker_ids: global ids of the senders (default ``0 .. len(payloads) - 1``).
            dtype: dtype of the decompressed vectors (default: the wire ``value_dtype``).
            rng: only for compressors whose receiver regenerates indices from the shared key
                (PermK): a Randomness with the senders' seed, stream and round, at the call
                counter the senders had when they compressed.
        """
        d = self._check_d(d)
        n = len(payloads)
        if n == 0:
            device = rng.device if rng is not None else torch.device("cpu")
            payloads = [torch.zeros(0, dtype=torch.uint8, device=device)]  # shapes only, dropped below
        device = payloads[0].device
        ids = (
            torch.arange(n, dtype=torch.int64, device=device)
            if worker_ids is None
            else torch.as_tensor(worker_ids, dtype=torch.int64).to(device).reshape(-1)
        )
        if ids.numel() != n:
            raise ConfigError(f"{self.spec}: {ids.numel()} worker ids for {n} payloads")
        for p in payloads:
            if p.dtype != torch.uint8 or p.dim() != 1:
                raise ConfigError(
                    f"{self.spec}: payloads must be 1-D uint8 tensors, got {p.dtype} {p.dim()}-D"
                )
        rows = torch.nn.utils.rnn.pad_sequence(list(payloads), batch_first=True)[:n]
        lengths = torch.tensor([int(p.numel()) for p in payloads][:n], dtype=torch.int64, device=device)
        msg = self._unpack_rows(rows, lengths, d, ids, dtype or self.value_dtype, rng)
        if not torch.equal((msg.bits + 7) // 8, lengths):
            raise ConfigError(
                f"{self.spec}: payload lengths {lengths.tolist()} do not match the encoded sizes "
                f"{((msg.bits + 7) // 8).tolist()} bytes (wrong d, spec or value_dtype?)"
            )
        return msg

    @abstractmethod
    def _pack_rows(self, msg: Message) -> tuple[Tensor, Tensor]:
        """(n, width) uint8 rows (zero padded) and (n,) int64 byte lengths."""

    @abstractmethod
    def _unpack_rows(
        self,
        rows: Tensor,
        lengths: Tensor,
        d: int,
        worker_ids: Tensor,
        dtype: torch.dtype,
        rng: Randomness | None,
    ) -> Message:
        """:meth:`unpack_rows` after its checks (what each compressor implements)."""

    # -- convenience ----------------------------------------------------------------------------
    def roundtrip(
        self,
        x: Tensor,
        seed: int = 0,
        *,
        round: int = 0,
        worker_ids: Sequence[int] | Tensor | None = None,
    ) -> tuple[Tensor, Tensor | int]:
        """Compress, pack, unpack and decompress ``x`` of shape (d,) or (n, d).

        Row r is compressed as worker ``worker_ids[r]`` (default r) in round ``round`` of stream
        ``"compress"`` with seed ``seed``. Returns ``(x_hat, bits)``: for a (d,) input ``x_hat``
        is (d,) and ``bits`` an int; for an (n, d) input, (n, d) and an (n,) int64 tensor.
        """
        if not isinstance(x, Tensor) or x.dim() not in (1, 2):
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ConfigError(f"{self.spec}: x has shape {shape}, must be (d,) or (n, d)")
        X = x.reshape(1, -1) if x.dim() == 1 else x
        ids = range(X.shape[0]) if worker_ids is None else worker_ids
        rng = Randomness(seed, "compress", round, ids, device=X.device)
        rx = Randomness(seed, "compress", round, ids, device=X.device)
        msg = self.compress(X, rng)
        back = self.unpack(self.pack(msg), X.shape[1], worker_ids=msg.worker_ids, dtype=X.dtype, rng=rx)
        x_hat = self.decompress(back)
        if x.dim() == 1:
            return x_hat[0], int(msg.bits[0])
        return x_hat, msg.bits

    # -- helpers for subclasses ----------------------------------------------------------------
    def _check_input(self, X: Tensor | LazyRows, rng: Randomness) -> tuple[Tensor, float | None]:
        """Validate X (2-D, floating, finite, one row per rng row); return X and max |X|.

        Lazy rows are materialised unless this compressor reads them as they are
        (:meth:`_reads_lazily`); then they are returned with max |X| None (the entries it
        gathers are checked instead).
        """
        lazy = isinstance(X, LazyRows)
        if lazy and not self._reads_lazily(X):
            X, lazy = X.dense(), False
        if not isinstance(X, (Tensor, LazyRows)):
            raise ConfigError(
                f"{self.spec}: X must be a torch.Tensor of shape (n, d), got {type(X).__name__}"
            )
        if X.dim() != 2:
            raise ConfigError(
                f"{self.spec}: X has shape {tuple(X.shape)} ({X.dim()}-D), must be 2-D (n, d) with "
                f"one row per worker (use roundtrip() for a single (d,) vector)"
            )
        if not X.dtype.is_floating_point:
            raise ConfigError(f"{self.spec}: X has dtype {X.dtype}, must be a floating dtype")
        if not isinstance(rng, Randomness):
            raise ConfigError(f"{self.spec}: rng must be a marina.rng.Randomness, got {type(rng).__name__}")
        n, d = X.shape
        if d < 1:
            raise ConfigError(f"{self.spec}: d == {d}, must be >= 1")
        if rng.n_rows != n:
            raise ConfigError(f"{self.spec}: X has {n} rows but rng hosts {rng.n_rows} workers")
        if rng.device.type != X.device.type:
            raise ConfigError(f"{self.spec}: X is on {X.device} but rng draws on {rng.device}, must match")
        if lazy:
            return X, None
        if n == 0:
            return X, 0.0
        if self.keeps_non_finite and X.device.type == "cpu":  # checked where tested: the CPU
            return X.contiguous(), None
        return X.contiguous(), self._finite_amax(X)

    def _reads_lazily(self, X: LazyRows) -> bool:
        """Whether this compressor reads the lazy rows ``X`` without materialising them: those
        that gather (:attr:`gathers`)."""
        return self.gathers

    def _finite_amax(self, X: Tensor) -> float:
        """max |X| over a non-empty X; ValueRangeError naming a non-finite entry if there is one."""
        lo, hi = torch.aminmax(X)
        amax = max(-float(lo), float(hi))
        if not math.isfinite(amax):
            bad = X[~torch.isfinite(X)][0].item()
            raise ValueRangeError(
                f"{self.spec}: X contains a non-finite value ({bad}), must be finite", non_finite=True
            )
        return amax

    def _check_wire_range(
        self, amax: float, dtype: torch.dtype, scale: float = 1.0, what: str = "|x|"
    ) -> None:
        """ValueRangeError if values up to ``amax * scale`` overflow the wire dtype or the input ``dtype``."""
        top = wire_ceiling([self.value_dtype, dtype])
        if amax * scale > top:
            extra = f" times the scale {scale:g}" if scale != 1.0 else ""
            raise ValueRangeError(
                f"{self.spec}: {what} up to {amax:g}{extra} exceeds {top:g}, the largest value of the "
                f"{WIRE_DTYPES[self.value_dtype]} wire format and of the input dtype {dtype}"
                + ("; use value_dtype=torch.float64" if self.value_dtype != torch.float64 else "")
            )

    def _bits_tensor(self, n: int, bits_each: int, device: torch.device) -> Tensor:
        return torch.full((n,), int(bits_each), dtype=torch.int64, device=device)


CompressorSpec = str | Compressor
"""What a ``compressor`` argument takes: a spec string for :func:`get` (``"randk:5"``) or a
:class:`Compressor` object (used as it is)."""


def column_chunks(n: int, d: int, device: torch.device):
    """Column ranges [a, b) for fused loops: about 2^17 elements per chunk on CPU (stays in L2
    cache), the whole row on GPUs up to 2^26 elements. Results never depend on the chunking."""
    total = 1 << 26 if device.type == "cuda" else 1 << 17
    step = max(1, total // max(1, n))
    for a in range(0, d, step):
        yield a, min(d, a + step)


def wire_ceiling(dtypes: Sequence[torch.dtype]) -> float:
    """Largest finite value representable in every one of ``dtypes``."""
    return _ceiling(tuple(dtypes))


@functools.cache
def _ceiling(dtypes: tuple[torch.dtype, ...]) -> float:
    return min(torch.finfo(t).max for t in dtypes)
