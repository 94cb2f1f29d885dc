"""Where every message of one aggregation sits on the torch-distributed wire (:class:`WirePlan`).

A plan is what every rank knows before (or, when sizes vary, right after the size exchange of)
an aggregation of :class:`marina.network.torch_distributed.TorchDistributedNetwork`: which
workers send copy j, in which slot of their rank's segment, how many bits and bytes each message
takes, how many bytes each rank contributes (its segment, zero-padded to the largest) and
whether messages travel back to back at bit level. Every rank builds the same plan from the
same inputs, so the segments line up without describing them on the wire.

Layout of a rank's segment: its messages j-major (copy 0 of its senders in worker order, then
copy 1, ...), each in ``ceil(bits / 8)`` bytes, then zeros up to ``width``; or, for a *uniform*
plan with bit-packing, its n/W messages of b bits back to back (:func:`marina.compressors.wire.
concat_bits`) in ``ceil(n/W b / 8)`` bytes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from marina.compressors.wire import concat_bits, split_bits

__all__ = ["BITPACK_MAX_BITS", "WirePlan"]

BITPACK_MAX_BITS = 4096
"""Uniform messages of at most this many bits whose size is not a whole number of bytes are
packed back to back at bit level within a rank's segment."""


def copy_slots(counts: Tensor, n_local: int, world: int) -> tuple[tuple[Tensor, Tensor, Tensor], ...]:
    """Per copy j: (senders, owner rank, slot in the owner's segment), CPU int64 tensors.

    ``counts``: (n,) messages each worker sends. The senders of copy j are the workers drawn more
    than j times, in worker order; blocks are contiguous, so each rank's senders are too, and
    they take the slots after the rank's copies 0 .. j-1. (numpy: these arrays are tiny.)
    """
    c = counts.numpy()
    filled = np.zeros(world, dtype=np.int64)
    out = []
    for j in range(int(c.max())):
        senders = np.flatnonzero(c > j)
        owner = senders // n_local
        per = np.bincount(owner, minlength=world)
        slot = np.arange(senders.size) - (np.cumsum(per) - per)[owner] + filled[owner]
        out.append(tuple(torch.from_numpy(a) for a in (senders, owner, slot)))
        filled += per
    return tuple(out)


@dataclass(frozen=True)
class WirePlan:
    """One aggregation's wire layout, identical on every rank.

    Attributes:
        world, n_local: ranks, and workers per rank.
        weighted: a multiplicity was given (the mean divides by the number of messages).
        messages: messages sent in all (sum of the multiplicities; n without them).
        slots: the most messages one rank sends (the size exchange's slots per rank).
        senders: per copy j, the global ids sending copy j (CPU int64, increasing).
        places: per copy j, each sender's (rank, slot in the rank's segment), CPU int64.
        local_rows: per copy j, the rows of this rank's ``X_local`` that send copy j (on the
            workers' device).
        known: sizes follow from (compressor, d, keys): no size exchange.
        drawn: sizes follow from the senders' keyed draws (a rank may fail with nothing to
            send, so every segment has at least one byte).
        bits: (W, slots) int64 bits of every slot (0: unused); None until sizes are exchanged.
        sent_bits: the bits of all messages (what ``bits_up`` accounts).
        rank_bytes: bytes rank r contributes before padding (B_r).
        width: bytes of every rank's padded segment.
        uniform_bits: b where every worker sends one message of b bits known in advance (the
            messages are then read in place), else None.
        bitpacked: uniform messages travel back to back at bit level.
        offsets, lengths: per copy j, the byte offset of each sender's message in the gathered
            buffer and its bytes (on the collectives' device).
        gather: per copy j, the (m_j, max bytes) buffer positions of its messages' bytes and the
            mask of real bytes (the rest is zero padding), for :meth:`rows`.
    """

    world: int
    n_local: int
    weighted: bool
    messages: int
    slots: int
    senders: tuple[Tensor, ...]
    places: tuple[tuple[Tensor, Tensor], ...]
    local_rows: tuple[Tensor, ...]
    known: bool
    drawn: bool
    bits: Tensor | None = None
    sent_bits: int = 0
    rank_bytes: tuple[int, ...] = ()
    width: int = 0
    uniform_bits: int | None = None
    bitpacked: bool = False
    offsets: tuple[Tensor, ...] = ()
    lengths: tuple[Tensor, ...] = ()
    gather: tuple[tuple[Tensor, Tensor], ...] = ()

    @property
    def copies(self) -> int:
        return len(self.senders)

    @classmethod
    def build(
        cls,
        counts: Tensor,
        world: int,
        rank: int,
        *,
        weighted: bool,
        drawn: bool,
        row_device: torch.device,
    ) -> WirePlan:
        """The plan for ``counts`` (n,) messages per worker, before any size is known (see
        :meth:`with_message_bits` and :meth:`with_sizes`); ``drawn``: as the attribute."""
        n_local = counts.numel() // world
        block = counts.numpy().reshape(world, n_local)
        slots_of = copy_slots(counts, n_local, world)
        return cls(
            world=world,
            n_local=n_local,
            weighted=weighted,
            messages=int(block.sum()),
            slots=int(block.sum(axis=1).max()),
            senders=tuple(s for s, _, _ in slots_of),
            places=tuple((o, s) for _, o, s in slots_of),
            local_rows=tuple(
                torch.from_numpy(np.flatnonzero(block[rank] > j)).to(row_device) for j in range(len(slots_of))
            ),
            known=False,
            drawn=drawn,
        )

    def with_message_bits(self, bits_of: list[Tensor], comm_device: torch.device) -> WirePlan:
        """This plan with sizes known in advance: ``bits_of[j]``, the bits of copy j's senders."""
        table = torch.zeros((self.world, self.slots), dtype=torch.int64)
        for (owner, slot), bits in zip(self.places, bits_of, strict=True):
            table[owner, slot] = bits.to("cpu", torch.int64)
        return dataclasses.replace(self, known=True).with_sizes(table, comm_device)

    def with_sizes(self, bits: Tensor, comm_device: torch.device) -> WirePlan:
        """This plan with every slot's ``bits`` (W, slots) known: the segments' layout."""
        table = bits.numpy()
        lengths = (table + 7) // 8
        b = int(table[0, 0]) if table.size else 0
        uniform = self.known and not self.weighted and not self.drawn and bool((table == b).all())
        packed = uniform and self.n_local > 1 and b % 8 != 0 and b <= BITPACK_MAX_BITS
        rank_bytes = [(self.n_local * b + 7) // 8] * self.world if packed else lengths.sum(axis=1).tolist()
        width = max(rank_bytes)
        if self.known and self.drawn:
            width = max(width, 1)
        excl = np.cumsum(lengths, axis=1) - lengths  # byte offset of each slot within its segment
        places = [(o.numpy(), s.numpy()) for o, s in self.places]
        offsets = [o * width + excl[o, s] for o, s in places]
        sizes = [lengths[o, s] for o, s in places]
        return dataclasses.replace(
            self,
            bits=bits,
            sent_bits=int(table.sum()),
            rank_bytes=tuple(int(r) for r in rank_bytes),
            width=int(width),
            uniform_bits=b if uniform else None,
            bitpacked=packed,
            offsets=tuple(torch.from_numpy(o).to(comm_device) for o in offsets),
            lengths=tuple(torch.from_numpy(n).to(comm_device) for n in sizes),
            gather=tuple(_gather(o, n, comm_device) for o, n in zip(offsets, sizes, strict=True)),
        )

    def segment(self, rows: Tensor, bits: Tensor) -> Tensor:
        """The bytes of messages packed in ``rows`` (one per row, ``bits`` each) in this plan's
        layout: back to back at bit level where :attr:`bitpacked`, else ``ceil(bits/8)`` each."""
        b = self.uniform_bits
        if self.bitpacked:
            return concat_bits(rows, b)  # type: ignore[arg-type] - bitpacked plans are uniform
        if b is not None:
            return rows[:, : (b + 7) // 8].reshape(-1)
        lengths = ((bits + 7) // 8).to(rows.device)
        return rows[torch.arange(rows.shape[1], device=rows.device) < lengths[:, None]]

    def poison_span(self) -> list[int]:
        """The bytes of each rank's segment that a rank failing to compress fills with the poison
        byte: its payload, or its whole segment where sizes follow from draws and it sends nothing."""
        return [r if r or not (self.known and self.drawn) else self.width for r in self.rank_bytes]

    def rows(self, buffer: Tensor, j: int) -> Tensor:
        """(m_j, max bytes) uint8 messages of copy j from the gathered ``buffer``, zero padded."""
        b = self.uniform_bits
        if b is not None:
            if self.bitpacked:
                return split_bits(buffer.view(self.world, self.width), self.n_local, b)
            return buffer.view(self.world * self.n_local, (b + 7) // 8)
        at, keep = self.gather[j]
        return torch.where(keep, buffer[at], 0).to(torch.uint8) if at.numel() else at.to(torch.uint8)


def _gather(offsets: np.ndarray, lengths: np.ndarray, device: torch.device) -> tuple[Tensor, Tensor]:
    """(m, max length) buffer positions of m messages' bytes and where they are bytes (not padding)."""
    cols = np.arange(int(lengths.max()) if lengths.size else 0)
    keep = cols < lengths[:, None]
    at = np.where(keep, offsets[:, None] + cols, 0)
    return torch.from_numpy(at).to(device), torch.from_numpy(keep).to(device)
