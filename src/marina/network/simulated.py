"""All n workers in one process, batched over the worker axis (CPU or CUDA).

Aggregation calls ``compressor.compress_sum`` on the (n, d) matrix of all workers at once
(no packing; the compressor guarantees that its sum equals ``sum_decompressed`` of the packed
and unpacked messages, including the rounding of values to the wire precision), and divides
by the number of messages, as the torch.distributed backend does; one round costs a handful
of (n, d) tensor operations (O(n K) for RandK) and no Python loop over workers. Bits are
accumulated on the device and read only when the counters are asked for (no synchronisation
per round on CUDA).
"""

from __future__ import annotations

import torch
from torch import Tensor

from marina.compressors.base import Compressor
from marina.errors import ConfigError
from marina.lazy_rows import LazyRows
from marina.network.base import Network, copy_stream
from marina.network.link import Link, parse_link
from marina.rng import Randomness

__all__ = ["SimulatedNetwork"]


class SimulatedNetwork(Network):
    """Hosts workers 0..n-1 in this process.

    Args:
        n: number of workers.
        seed: experiment seed.
        device: where worker-side tensors live (the problem's device).
        link: a link model (:func:`marina.network.link.parse_link` spec or Link): adds
            ``link_time_s``, every worker modelled as a rank with its own link (W = n).
    """

    def __init__(
        self, n: int, seed: int = 0, device: torch.device | str | None = None, link: str | Link | None = None
    ) -> None:
        super().__init__()
        self.link = parse_link(link)
        if int(n) < 1:
            raise ConfigError(f"workers == {n}, must be >= 1")
        self.n = int(n)
        self.seed = int(seed)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.worker_ids = torch.arange(self.n, dtype=torch.int64, device=self.device)
        self._bits_up_dev = torch.zeros((), dtype=torch.int64, device=self.device)
        self._dense_rng: Randomness | None = None

    @property
    def bits_up(self) -> int:
        return int(self._bits_up) + int(self._bits_up_dev)

    def load_counters(self, state: dict[str, int]) -> None:
        super().load_counters(state)
        self._bits_up_dev.zero_()

    def aggregate_mean(
        self,
        compressor: Compressor,
        X_local: Tensor | LazyRows,
        round: int,
        *,
        stream: str | int = "compress",
        multiplicity: Tensor | None = None,
    ) -> Tensor:
        return self._aggregate(compressor, X_local, round, stream, multiplicity, keep_local=False)[0]

    def aggregate_with_local(
        self,
        compressor: Compressor,
        X_local: Tensor | LazyRows,
        round: int,
        *,
        stream: str | int = "compress",
        multiplicity: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        mean, local = self._aggregate(compressor, X_local, round, stream, multiplicity, keep_local=True)
        return mean, local  # type: ignore[return-value] - keep_local gives the rows

    def _aggregate(
        self,
        compressor: Compressor,
        X_local: Tensor | LazyRows,
        round: int,
        stream: str | int,
        multiplicity: Tensor | None,
        keep_local: bool,
    ) -> tuple[Tensor, Tensor | None]:
        """The mean and, with ``keep_local``, the hosted rows' own messages (copy 0)."""
        if multiplicity is None:
            return self._reduce(compressor, X_local, self.rng(stream, round), keep_local)
        counts = multiplicity.to(device="cpu", dtype=torch.int64).reshape(-1)
        if counts.numel() != self.n:
            raise ValueError(f"multiplicity has {counts.numel()} entries, expected n = {self.n}")
        total = int(counts.sum())
        if total < 1:
            raise ValueError("multiplicity sums to 0: nobody would send anything")
        d = X_local.shape[1]
        acc = torch.zeros(d, dtype=X_local.dtype, device=X_local.device)
        local = torch.zeros(X_local.shape, dtype=X_local.dtype, device=X_local.device) if keep_local else None
        local_counts = counts[self.worker_ids.cpu()]
        sent = torch.zeros(self.n, dtype=torch.int64, device=self.device) if self.link is not None else None
        # One batched compression per copy index j (the j-th message of every worker drawn more
        # than j times); there are max(multiplicity) of them, never one per worker.
        for j in range(int(local_counts.max()) if local_counts.numel() else 0):
            rows = torch.nonzero(local_counts > j).reshape(-1).to(X_local.device)
            rng = Randomness(self.seed, copy_stream(stream, j), round, self.worker_ids[rows], self.device)
            keep = local is not None and j == 0
            part, bits, X_hat = compressor.compress_sum(X_local.index_select(0, rows), rng, keep_local=keep)
            self._bits_up_dev += bits.sum()
            if sent is not None:
                sent.index_add_(0, rows, (bits + 7) // 8)
            acc += part
            if keep:
                local.index_copy_(0, rows, X_hat)
        if sent is not None:
            self._model(compressor, X_local.shape[1], sent, int(counts.max()))
        return acc / total, local

    def _model(self, compressor: Compressor, d: int, sent_bytes: Tensor, slots: int) -> None:
        """Link model, one worker per rank: chunks padded to the largest worker's bytes, and a
        size exchange of ``slots`` int64 per rank only where sizes vary."""
        known = getattr(compressor, "message_bits", None)
        # sizes from the keyed draws are regenerated by every rank: no exchange, but one byte
        # per rank even when nobody sends (as the torch.distributed backend, for its failure check)
        drawn = getattr(compressor, "sized_by_draws", False)
        varies = not drawn and (known is None or known(d, self.worker_ids[:1].cpu()) is None)
        chunk = int(sent_bytes.max())
        self._model_link(self.n, max(chunk, 1) if drawn else chunk, slots if varies else 0)

    def _reduce(
        self, compressor: Compressor, X_local: Tensor | LazyRows, rng: Randomness, keep_local: bool
    ) -> tuple[Tensor, Tensor | None]:
        """Every hosted worker sends one message: the mean (sum / n) and the rows (None unless
        ``keep_local``)."""
        total, bits, X_hat = compressor.compress_sum(X_local, rng, keep_local=keep_local)
        self._bits_up_dev += bits.sum()
        if self.link is not None:
            self._model(compressor, X_local.shape[1], (bits + 7) // 8, 1)
        mean = total if self.n == 1 else total / self.n  # x / 1 == x: no pass over d alone
        return mean, (X_hat if keep_local else None)

    def _entries_apply(self, compressor: Compressor, X_local: Tensor | LazyRows) -> bool:
        """One worker (one message, its entries distinct), a compressor that gives its entries
        (RandK, TopK), no link model: the in-place paths of :class:`Network` apply."""
        return self.n == 1 and self.link is None and hasattr(compressor, "compress_entries")

    def _round_entries(
        self, compressor: Compressor, X_local: Tensor | LazyRows, round: int, stream: str | int
    ) -> tuple[Tensor, Tensor, list[tuple[Tensor, Tensor]]]:
        """The one worker's message: its K entries, the mean there (0 + v, as a sum of one
        message), and the message itself."""
        idx, values, bits = compressor.compress_entries(X_local, self.rng(stream, round))
        if bits.device.type == "cpu":  # one message's count: a Python int (no tensor operations)
            self._bits_up += int(bits[0])
        else:
            self._bits_up_dev += bits.sum()
        return idx[0], torch.add(values[0], 0.0), [(idx[0], values[0])]

    def aggregate_dense(
        self,
        X_local: Tensor | LazyRows,
        round: int,
        dense_compressor: Compressor,
        *,
        multiplicity: Tensor | None = None,
    ) -> Tensor:
        if multiplicity is not None:
            return super().aggregate_dense(X_local, round, dense_compressor, multiplicity=multiplicity)
        # the identity makes no draws: one Randomness object serves every dense round
        if self._dense_rng is None:
            self._dense_rng = Randomness(self.seed, "dense", 0, self.worker_ids, self.device)
        self._dense_rng.calls = 0
        return self._reduce(dense_compressor, X_local, self._dense_rng, False)[0]

    def gather(self, values_local: Tensor) -> Tensor:
        return values_local
