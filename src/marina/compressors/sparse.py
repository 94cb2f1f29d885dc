"""Sparsifiers that send K values with their indices: RandK (unbiased) and TopK (contractive).

``randk:K``: Q(x) = (d/K) sum_{j in S} x_j e_j, S a uniformly random K-subset of {0..d-1}, drawn
independently by every worker from its own keyed randomness (one
``rng.sample_without_replacement`` call per compress, O(n K log K) expected, never a
permutation of d). Unbiased with omega = d/K - 1 and density zeta_Q = K (Beznosikov, Horvath,
Richtarik, Safaryan 2020, "On biased compression for distributed learning", Table 1; MARINA
paper, Sec. 1): E||Q(x)||^2 = (d/K)^2 (K/d) ||x||^2 = (d/K) ||x||^2.

``topk:K``: keeps the K largest magnitudes, unscaled. Biased; contractive with
||C(x) - x||^2 <= (1 - K/d) ||x||^2, i.e. alpha = K/d (Beznosikov et al. 2020, Table 1; Stich,
Cordonnier, Jaggi 2018, "Sparsified SGD with memory", Lemma A.1): the dropped d - K
coordinates are the smallest, so they carry at most a (d - K)/d share of ||x||^2. For
error-feedback methods only; omega is undefined. Draws nothing; ties are broken by
``torch.topk`` (deterministic on a given device).

Wire encoding per worker (both): the K values at the wire precision (little-endian), then the K
indices, sorted ascending, at ceil(log2 d) bits each (0 bits when d = 1), LSB first:
``bits = K (wire_bits_per_value + ceil(log2 d))``. The bound of TopK holds up to the rounding of
the kept values to the wire precision.

``randk:K:seeded``: the same operator with the same draws (hence the same trajectory as
``randk:K``), but the indices do not travel: the receiver regenerates each sender's index set
from the keyed randomness (seed, stream, round, worker id; one ``sample_without_replacement``
call, the sender's first drawing call of that key), so a message is the K values only,
``bits = K wire_bits_per_value`` (K x 32 at float32), and ``unpack`` needs ``rng``. Both specs
are accounted honestly: ``randk:K`` counts its K ceil(log2 d) index bits, ``randk:K:seeded``
counts none because none are sent (the MARINA paper's experiments counted K values per RandK
message without saying that this presumes seeded indices).
"""

from __future__ import annotations

import threading

import numpy as np
import torch
from torch import Tensor

from marina.compressors.base import Compressor, Message, _parse_int, _parse_mode, register
from marina.compressors.wire import bytes_to_values, index_bits, pack_codes, unpack_codes, values_to_bytes
from marina.errors import ConfigError
from marina.lazy_rows import LazyRows
from marina.rng import Randomness

__all__ = ["RandK", "TopK", "sparse_rows", "sparse_sum"]


def sparse_rows(idx: Tensor, values: Tensor, d: int) -> Tensor:
    """(n, d) rows holding ``values`` (n, K) at columns ``idx`` (n, K), zeros elsewhere."""
    rows = torch.zeros((values.shape[0], d), dtype=values.dtype, device=values.device)
    return rows.scatter_(1, idx, values)


def sparse_sum(idx: Tensor, values: Tensor, d: int) -> Tensor:
    """(d,) sum of the sparse rows ``values`` (n, K) at columns ``idx`` (n, K).

    On the CPU: ``index_add_`` of the entries in row-major order into zeros, sequential, so
    every coordinate adds its terms in worker order; O(n K), the (n, d) rows are never built.
    Elsewhere (``index_add_`` uses atomics on GPUs, whose order varies from run to run): the
    rows scattered into zeros and summed by a fixed reduction.
    """
    if values.device.type == "cpu":
        out = torch.zeros(d, dtype=values.dtype)
        return out.index_add_(0, idx.reshape(-1), values.reshape(-1))
    return sparse_rows(idx, values, d).sum(dim=0)


class _Sparse(Compressor):
    """K values and their indices. Message fields: ``values`` (n, K) at the wire dtype,
    ``indices`` (n, K) int64, sorted ascending."""

    param = "K"
    example = "5"

    seeded = False

    def _parse(self, arg: str | None) -> None:
        self.K = _parse_int(self.name, "K", arg, 1)

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.K}"

    def _check_k(self, d: int) -> int:
        d = self._check_d(d)
        if self.K > d:
            raise ConfigError(f"{self.spec}: K == {self.K} exceeds the dimension d == {d}, must be <= d")
        return d

    density_formula = "K"
    wire_formula = "K values + K indices of ceil(log2 d) bits"

    def density(self, d: int) -> float:
        self._check_k(d)
        return float(self.K)

    fixed_size = True

    def wire_format(self, d: int) -> str:
        w, ib = self.wire_bits_per_value, index_bits(d)
        if self.seeded:
            return f"{self.K} values x {w} bits, no index bits (regenerated from the key) = {self.K * w} bits"
        return f"{self.K} values x {w} bits + {self.K} indices x {ib} bits = {self.bits_per_message(d)} bits"

    def bits_per_message(self, d: int) -> int:
        """K (wire bits + ceil(log2 d)); K wire bits when seeded (no indices travel)."""
        return self.K * (self.wire_bits_per_value + (0 if self.seeded else index_bits(d)))

    def _select(self, X: Tensor, rng: Randomness) -> tuple[Tensor, float]:
        """(indices (n, K) sorted, scale applied to the kept values)."""
        raise NotImplementedError

    def _kept(self, X: Tensor | LazyRows, rng: Randomness, amax: float | None) -> tuple[Tensor, Tensor]:
        """(indices (n, K) sorted, kept values scaled and rounded to the wire dtype).

        ``amax`` None (lazy rows): only the gathered entries are read, so only they are
        checked (finite, within the wire range once scaled)."""
        n, d = X.shape
        self._check_k(d)
        idx, scale = self._select(X, rng)
        kept = X.gather(1, idx)
        if amax is None:
            amax = self._finite_amax(kept) if kept.numel() else 0.0
        self._check_wire_range(amax, X.dtype, scale)
        return idx, (kept * scale if scale != 1.0 else kept).to(self.value_dtype)

    def _compress(self, X: Tensor, rng: Randomness, amax: float | None) -> Message:
        n, d = X.shape
        idx, values = self._kept(X, rng, amax)
        bits = self._bits_tensor(n, self.bits_per_message(d), X.device)
        return Message(self.spec, d, X.dtype, rng.worker_ids, bits, {"values": values, "indices": idx})

    def _compress_decompress(
        self, X: Tensor | LazyRows, rng: Randomness, amax: float | None
    ) -> tuple[Tensor, Tensor]:
        """Fused: the kept values, rounded to the wire dtype, scattered into zeros (no Message)."""
        n, d = X.shape
        idx, values = self._kept(X, rng, amax)
        return sparse_rows(idx, values.to(X.dtype), d), self._bits_tensor(
            n, self.bits_per_message(d), X.device
        )

    def compress_sum(
        self, X: Tensor | LazyRows, rng: Randomness, keep_local: bool = False
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """The n K kept values added into a (d,) vector (:func:`sparse_sum`); rows only if asked."""
        X, amax = self._check_input(X, rng)
        n, d = X.shape
        idx, values = self._kept(X, rng, amax)
        values = values.to(X.dtype)
        local = sparse_rows(idx, values, d) if keep_local else None
        return sparse_sum(idx, values, d), self._bits_tensor(n, self.bits_per_message(d), X.device), local

    def compress_entries(self, X: Tensor | LazyRows, rng: Randomness) -> tuple[Tensor, Tensor, Tensor]:
        """(indices (n, K) distinct and sorted per row, kept values (n, K) at X's dtype after the
        wire rounding, bits): the messages as entries, what :meth:`compress_sum` adds up."""
        X, amax = self._check_input(X, rng)
        n, d = X.shape
        idx, values = self._kept(X, rng, amax)
        return idx, values.to(X.dtype), self._bits_tensor(n, self.bits_per_message(d), X.device)

    def sum_decompressed(self, msg: Message) -> Tensor:
        return sparse_sum(msg.data["indices"], msg.data["values"].to(msg.dtype), msg.d)

    def _decompress(self, msg: Message) -> Tensor:
        return sparse_rows(msg.data["indices"], msg.data["values"].to(msg.dtype), msg.d)

    def _rows(self, idx: Tensor, values: Tensor, d: int) -> Tensor:
        """The packed messages, one row each: the K values, then (unless seeded) the K indices."""
        values = values_to_bytes(values)
        if self.seeded:
            return values
        return torch.cat([values, pack_codes(idx, index_bits(d))], dim=1)

    def _pack_rows(self, msg: Message) -> tuple[Tensor, Tensor]:
        return self._rows(msg.data["indices"], msg.data["values"], msg.d), (msg.bits + 7) // 8

    def pack_compressed(self, X: Tensor | LazyRows, rng: Randomness) -> tuple[Tensor, Tensor]:
        """The packed rows straight from the kept entries (no Message)."""
        X, amax = self._check_input(X, rng)
        n, d = X.shape
        idx, values = self._kept(X, rng, amax)
        return self._rows(idx, values, d), self._bits_tensor(n, self.bits_per_message(d), X.device)

    def _entries(
        self, rows: Tensor, d: int, worker_ids: Tensor, rng: Randomness | None
    ) -> tuple[Tensor, Tensor]:
        """(indices (n, K) int64, values (n, K) at the wire dtype) read from packed rows."""
        self._check_k(d)
        nv = self.K * self.wire_bits_per_value // 8
        if rows.shape[1] < nv:
            rows = torch.nn.functional.pad(rows, (0, nv - rows.shape[1]))
        values = bytes_to_values(rows, self.K, self.value_dtype)
        if self.seeded:
            return self._regenerate(rng, worker_ids, d), values
        return unpack_codes(rows[:, nv:], self.K, index_bits(d), torch.int64), values

    def _unpack_rows(self, rows, lengths, d, worker_ids, dtype, rng) -> Message:
        idx, values = self._entries(rows, d, worker_ids, rng)
        bits = self._bits_tensor(rows.shape[0], self.bits_per_message(d), rows.device)
        return Message(self.spec, d, dtype, worker_ids, bits, {"values": values, "indices": idx})

    def sum_packed(self, rows, lengths, d, worker_ids, dtype, rng) -> Tensor:
        """:func:`sparse_sum` of the entries read from the rows (no Message)."""
        idx, values = self.packed_entries(rows, lengths, d, worker_ids, dtype, rng)
        return sparse_sum(idx, values, d)

    def packed_entries(
        self,
        rows: Tensor,
        lengths: Tensor,
        d: int,
        worker_ids: Tensor,
        dtype: torch.dtype,
        rng: Randomness | None,
    ) -> tuple[Tensor, Tensor]:
        """The messages packed in ``rows`` (the arguments of :meth:`unpack_rows`) as entries:
        (indices (n, K) int64, values (n, K) at ``dtype``), what :meth:`sum_packed` adds up."""
        idx, values = self._entries(rows, d, worker_ids, rng)
        return idx, values.to(dtype)


@register
class RandK(_Sparse):
    """Random sparsification with K coordinates, unbiased (scaled by d/K). One drawing call.

    Args:
        arg: K, the kept coordinates (``"5"``), or ``"5:seeded"``: the receiver regenerates the
            indices from the key and none travel.
        value_dtype: wire precision of the values (see :class:`Compressor`).
        workers: total number of workers n (ignored).
    """

    name = "randk"
    omega_formula = "d/K - 1"
    gathers = True

    modes = ("seeded",)

    def _parse(self, arg: str | None) -> None:
        k, mode = _parse_mode(self.name, self.param, arg, self.modes)
        super()._parse(k)
        self.seeded = mode == "seeded"
        self.regenerates = self.seeded
        if self.seeded:
            self.wire_formula = "K values, no indices (regenerated from the key)"

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.K}" + (":seeded" if self.seeded else "")

    def omega(self, d: int) -> float:
        d = self._check_k(d)
        return d / self.K - 1.0

    def _select(self, X: Tensor, rng: Randomness) -> tuple[Tensor, float]:
        d = X.shape[1]
        return rng.sample_without_replacement(d, self.K), d / self.K

    def _regenerate(self, rng: Randomness | None, worker_ids: Tensor, d: int) -> Tensor:
        """The senders' index sets, drawn again from their keys (seeded mode's receiver)."""
        rng = self._check_receiver_rng(rng, worker_ids, "indices")
        return rng.sample_without_replacement(d, self.K).to(worker_ids.device)


@register
class TopK(_Sparse):
    """The K largest magnitudes, unscaled: biased, contractive with alpha = K/d. No draws.

    Args:
        arg: K, the kept coordinates (``"5"``).
        value_dtype: wire precision of the values (see :class:`Compressor`).
        workers: total number of workers n (ignored).
    """

    name = "topk"
    unbiased = False
    contractive = True
    keeps_non_finite = True  # inf is the largest |x|, NaN ranks above it (selection below)
    omega_formula = "undefined (biased); alpha = K/d"
    alpha_formula = "K/d"

    def omega(self, d: int) -> float:
        return self._no_omega("TopK")

    def alpha(self, d: int) -> float:
        d = self._check_k(d)
        return self.K / d

    def _by_threshold(self, X: Tensor | LazyRows) -> bool:
        """Whether the rows of X are selected by :func:`largest_by_threshold` (long CPU rows of a
        float dtype of ``_MAGNITUDE_BITS``, K <= d/16)."""
        d = X.shape[1]
        return (
            X.device.type == "cpu"
            and d >= FAST_TOPK_MIN_D
            and self.K * 16 <= d
            and X.dtype in _MAGNITUDE_BITS
        )

    def _reads_lazily(self, X: LazyRows) -> bool:
        """One lazy row selected by threshold: its magnitudes are written into this thread's
        scratch row and the kept entries gathered (a difference g_i - h_i is never stored)."""
        return X.shape[0] == 1 and self._by_threshold(X)

    def _select(self, X: Tensor | LazyRows, rng: Randomness) -> tuple[Tensor, float]:
        n, d = X.shape
        if not self._by_threshold(X):
            idx = torch.topk(X.abs(), self.K, dim=1, sorted=False).indices
            return torch.sort(idx, dim=1).values, 1.0
        if n == 0:
            return torch.empty((0, self.K), dtype=torch.int64), 1.0
        scratch = _scratch_row(d, X.dtype)
        rows = []
        for i in range(n):
            if isinstance(X, LazyRows):  # one row (_reads_lazily)
                a = X.magnitudes(scratch.view(1, d))[0]
            else:
                a = torch.abs(X[i], out=scratch)
            idx = largest_by_threshold(a, self.K)
            if idx is None:  # ties at the K-th largest, or too few candidates
                idx = torch.sort(torch.topk(a, self.K, sorted=False).indices).values
            rows.append(idx)
        return torch.stack(rows), 1.0


FAST_TOPK_MIN_D = 1 << 16
"""Rows of at least this length (and K <= d/16) try :func:`largest_by_threshold` on the CPU."""

_SCRATCH = threading.local()


def _scratch_row(d: int, dtype: torch.dtype) -> Tensor:
    """A (d,) CPU buffer of this thread, reused by every selection (one row at a time; it never
    leaves :meth:`TopK._select`), the longest asked for kept: no allocation of d entries per
    message (rows of other lengths, such as a DDP hook's buckets, share it), which above the C
    allocator's mmap threshold would fault in every page of it again."""
    size = d * dtype.itemsize
    buffer = getattr(_SCRATCH, "row", None)
    if buffer is None or buffer.numel() < size:
        buffer = _SCRATCH.row = torch.empty(size, dtype=torch.uint8)
    return buffer[:size].view(dtype)


def _scratch_mask(d: int) -> np.ndarray:
    """A (d,) boolean buffer of this thread for :func:`largest_integers`' comparison (the
    longest asked for kept)."""
    mask = getattr(_SCRATCH, "mask", None)
    if mask is None or mask.size < d:
        mask = _SCRATCH.mask = np.empty(d, dtype=bool)
    return mask[:d]


_MAGNITUDE_BITS = {
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
    torch.float32: torch.int32,
    torch.float64: torch.int64,
}
"""The integers whose order is that of the magnitudes of each float dtype (IEEE layouts): the
bits of |x| (abs clears the sign bit, a NaN's too: x86's default NaN has it set) read as an
integer order the magnitudes as their values (-0.0 as 0.0) and put NaN above inf, where
``torch.topk`` ranks it."""


def largest_by_threshold(a: Tensor, k: int) -> Tensor | None:
    """The indices, ascending, of the k largest entries of the 1-D CPU ``a`` of magnitudes (>= 0 or
    NaN, a dtype of ``_MAGNITUDE_BITS``), or None: :func:`largest_integers` of their bits."""
    return largest_integers(a.view(_MAGNITUDE_BITS[a.dtype]), k)


def largest_integers(a: Tensor, k: int) -> Tensor | None:
    """The indices, ascending, of the k largest entries of the 1-D CPU integer ``a``, or None.

    A threshold t from a subsample of 2^14 entries in 1024 evenly spaced blocks (one memory line
    each; its order statistic for about 1.5 k of the d) keeps the candidates >= t; if there are
    at least k, the k-th largest candidate v is the k-th largest of ``a`` (every other entry is
    < t <= v), and the candidates >= v are returned when they are exactly k: the unique k-set of
    largest values, the set ``torch.topk`` returns. Otherwise None (ties at v, or too few
    candidates: the caller takes ``torch.topk`` of the whole row). One pass to compare, selections
    among 2^14 and about 1.5 k values, instead of a selection over all d entries.
    """
    d = a.numel()
    blocks = max(1, min(1024, d // 16))  # of 16 consecutive entries: a 64-byte line of float32
    sub = a.unfold(0, 16, d // blocks).reshape(-1) if d >= 16 else a
    s = sub.numel()
    ks = min(s, int(s * k / d * 1.5) + 8)
    threshold = torch.kthvalue(sub, s - ks + 1).values.numpy()
    every = a.numpy()
    candidates = np.flatnonzero(np.greater_equal(every, threshold, out=_scratch_mask(d)))
    c = candidates.size
    if c < k:
        return None
    values = every[candidates]
    kth = torch.kthvalue(torch.from_numpy(values), c - k + 1).values.numpy()
    chosen = np.flatnonzero(values >= kth)
    if chosen.size != k:
        return None
    return torch.from_numpy(candidates[chosen])
