"""The network interface: everything a method may ask of the workers, and nothing else.

A method (``marina.methods``) is written once against :class:`Network` and runs unchanged on
every backend: the simulation (:class:`marina.network.SimulatedNetwork`, all n workers in one
process) and torch.distributed (ranks hosting blocks of workers). The contract below is what a
backend must honour so that, for the same seed, every backend produces the same trajectory.

Rows are workers
    Worker-side tensors have a leading axis of the workers *this process hosts*, in increasing
    global id order: ``X_local`` is (n_local, d), row r belongs to worker ``worker_ids[r]``.
    Server-side quantities (x^k, g^k, the DIANA shift h) are plain (d,) tensors replicated on
    every process; every process computes them from the same aggregated values, so they stay
    bitwise identical without a broadcast.

Randomness
    :meth:`rng` gives per-worker keyed draws for the hosted rows (stream, round), so a worker
    draws the same numbers whichever process hosts it; :meth:`shared_rng` gives the draws every
    worker must agree on (the coin c_k, PP-MARINA's clients), identical in every process and
    computed locally: they cost no communication and no bits. Both are keyed by their
    ``round`` argument; methods draw shared values by blocks of rounds (one
    ``shared_rng(stream, k // B)`` call per B rounds, see ``Method._shared_uniforms``), which a
    backend needs to know nothing about.

Aggregation (counted in ``bits_up``)
    :meth:`aggregate_mean` compresses each participating hosted row with the compressor and the
    worker's own randomness (stream, round), sends the messages, and returns on every process
    the mean of the decompressed messages in global worker order (:meth:`aggregate_with_local`
    also returns the hosted workers' own decompressed messages). With ``multiplicity`` (a
    length-n int tensor over ALL workers, equal on every process, e.g. PP-MARINA's counts of
    i.i.d. client draws), worker i sends ``multiplicity[i]`` independent messages (copy j uses
    the stream ``copy_stream(stream, j)``; copy 0 is ``stream`` itself) and the result is
    sum_i sum_j Q_i^{(j)}(X_i) / sum_i multiplicity[i]; workers with multiplicity 0 send nothing.
    ``bits_up`` grows by the exact bits of the messages really sent (``Message.bits``).
    :meth:`aggregate_dense` is the same with the identity compressor at the compressor's wire
    precision (the c_k = 1 rounds and g^0; stream "dense", although the identity draws
    nothing), counted as d values at that precision per worker.

    A distributed backend packs the messages (``compressor.pack``), exchanges variable-length
    uint8 payloads (sizes first; a rank whose workers all have multiplicity 0 sends an empty
    payload and must not hang), unpacks, sums the decompressed messages in global worker order
    (``compressor.sum_decompressed``) and divides by the number of messages. The simulation
    calls ``compressor.compress_sum`` once per copy index on the rows of all workers (no packing,
    no per-worker message), whose (d,) sum equals ``sum_decompressed`` of the packed and
    unpacked messages bit for bit.

Broadcast (counted in ``bits_down``)
    The server's broadcast (g^k in MARINA's line 5, x^{k+1} for GD/DIANA) is *accounted* with
    :meth:`count_broadcast`: ``bits_down`` grows by values x bits per value once per round (the
    size of the broadcast message every worker receives, not multiplied by n). Control
    information drawn from the shared stream (coins, client sets) is free.

Metrics (never counted)
    :meth:`gather` (per-worker values of all n workers, in global order) and :meth:`global_mean`
    (mean over all n workers of per-worker values), replicated on every process.

Counters
    ``bits_up`` is the total over all workers (the runner divides by n to report the paper's
    #bits/n), ``bits_down`` the cumulative broadcast; both Python ints, equal on every process.

Link model
    With ``link`` set (a :class:`marina.network.link.Link`, e.g. ``parse_link("100mbit")``),
    every aggregation adds the time its collectives take on that link to ``link_time_s`` (a
    history column; the model and its topology are in :mod:`marina.network.link`).
"""

from __future__ import annotations

import weakref
from abc import ABC, abstractmethod

import torch
from torch import Tensor

from marina.compressors.base import Compressor
from marina.lazy_rows import LazyRows
from marina.network.link import Link
from marina.reductions import fixed_mean
from marina.rng import SHARED, Randomness, stream_id

__all__ = ["Network", "copy_stream"]


def copy_stream(stream: str | int, copy: int) -> str | int:
    """Stream of the ``copy``-th independent message of a worker drawn several times.

    Args:
        stream: the stream of copy 0.
        copy: j >= 0, the index of the copy (copy 0 is ``stream`` itself).
    """
    if copy == 0:
        return stream
    return f"{stream}#{copy}" if isinstance(stream, str) else stream_id(f"{stream}#{copy}")


class Network(ABC):
    """Workers as seen by a method: hosted rows, keyed randomness, aggregation, counters.

    Attributes:
        n: total number of workers (over all processes).
        worker_ids: int64 tensor (n_local,) of the global ids hosted here, increasing.
        seed: experiment seed keying every random draw.
        device: where worker-side tensors live.
    """

    n: int
    worker_ids: Tensor
    seed: int
    device: torch.device

    link: Link | None = None
    """The modelled link of every rank (None: no ``link_time_s``)."""

    def __init__(self) -> None:
        self._bits_up: int = 0
        self._bits_down: int = 0
        self._link_ns: int = 0
        self._owned: dict[str, tuple[weakref.ref, int, bool]] = {}  # role -> tensor, version, clean
        self._sum_change: tuple[weakref.ref, int, int, Tensor, Tensor] | None = None  # see entries_changed
        self._scaled_shift: tuple[Tensor, weakref.ref, int, float, Tensor, Tensor] | None = None

    # -- counters -----------------------------------------------------------------------------
    @property
    def bits_up(self) -> int:
        """Cumulative bits sent by all n workers together (uplink)."""
        return int(self._bits_up)

    @property
    def bits_down(self) -> int:
        """Cumulative bits of the server's broadcasts (each counted once)."""
        return int(self._bits_down)

    def count_broadcast(self, values: int, bits_per_value: int) -> None:
        """Account one broadcast of ``values`` numbers at ``bits_per_value`` bits each."""
        self._bits_down += int(values) * int(bits_per_value)

    def counters(self) -> dict[str, int]:
        """The counters as plain ints (checkpoints); ``link_time_ns`` with a link model."""
        out = {"bits_up": self.bits_up, "bits_down": self.bits_down}
        if self.link is not None:
            out["link_time_ns"] = int(self._link_ns)
        return out

    def load_counters(self, state: dict[str, int]) -> None:
        self._bits_up = int(state["bits_up"])
        self._bits_down = int(state["bits_down"])
        self._link_ns = int(state.get("link_time_ns", 0))

    @property
    def link_time_s(self) -> float:
        """Modelled seconds of all aggregations so far on :attr:`link` (0 without one)."""
        return self._link_ns * 1e-9

    def log_columns(self) -> dict[str, float]:
        """Extra history columns: ``link_time_s`` with a link model."""
        return {} if self.link is None else {"link_time_s": self.link_time_s}

    def _model_link(self, world: int, chunk_bytes: int, size_slots: int) -> None:
        """Add one aggregation on ``world`` ranks to the modelled link time (see link.py)."""
        if self.link is not None:
            self._link_ns += round(1e9 * self.link.aggregation_s(world, chunk_bytes, size_slots))

    # -- randomness ---------------------------------------------------------------------------
    @property
    def n_local(self) -> int:
        return int(self.worker_ids.numel())

    def rng(self, stream: str | int, round: int) -> Randomness:
        """Per-worker draws for the hosted rows, keyed by (seed, stream, round, worker id)."""
        return Randomness(self.seed, stream, round, self.worker_ids, self.device)

    def shared_rng(self, stream: str | int, round: int) -> Randomness:
        """Draws every worker agrees on (one row keyed by ``SHARED``), on the CPU."""
        return Randomness(self.seed, stream, round, [SHARED], "cpu")

    # -- aggregation --------------------------------------------------------------------------
    @abstractmethod
    def aggregate_mean(
        self,
        compressor: Compressor,
        X_local: Tensor,
        round: int,
        *,
        stream: str | int = "compress",
        multiplicity: Tensor | None = None,
    ) -> Tensor:
        """Mean of the decompressed messages of all (participating) workers, on every process.

        Args:
            compressor: a ``marina.compressors`` compressor.
            X_local: (n_local, d) values to send, one row per hosted worker (rows of workers with
                multiplicity 0 are ignored).
            round: the round k keying the compression randomness.
            stream: randomness stream of the compression (default "compress").
            multiplicity: None (every worker sends one message; the mean is over n) or a
                length-n int64 tensor over all workers (see the module docstring).
        """

    @abstractmethod
    def aggregate_with_local(
        self,
        compressor: Compressor,
        X_local: Tensor,
        round: int,
        *,
        stream: str | int = "compress",
        multiplicity: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """:meth:`aggregate_mean` and the hosted workers' own decompressed messages (n_local, d)
        (copy 0; zero rows for workers that sent nothing), e.g. for DIANA's h_i update; the same
        messages, bits and randomness as :meth:`aggregate_mean`."""

    def aggregate_added(
        self,
        base: Tensor,
        compressor: Compressor,
        X_local: Tensor,
        round: int,
        *,
        stream: str | int = "compress",
    ) -> Tensor:
        """``base`` + :meth:`aggregate_mean` (g^k + the round's mean message), bit for bit. The
        caller gives ``base`` up: where the backend reads the round as entries
        (:meth:`_entries_apply`), they are added into ``base`` itself when it is the sum this
        method returned last, unchanged since (such a sum holds no -0.0, so ``base + 0``
        elsewhere leaves it as it is)."""
        entries = self._entries_apply(compressor, X_local)
        if entries and self._writable(base, clean=True, role="sum"):
            at, mean, _ = self._round_entries(compressor, X_local, round, stream)
            base = self._added_at(base, at, mean)
        else:
            mean = self.aggregate_mean(compressor, X_local, round, stream=stream)
            base = torch.add(base, mean, out=mean)  # the mean is this call's own tensor
        return self._own(base, clean=True, role="sum") if entries else base  # + a sparse sum: no -0.0

    def aggregate_moved(
        self,
        x: Tensor,
        gamma: float | Tensor,
        compressor: Compressor,
        X_local: Tensor,
        round: int,
        *,
        stream: str | int = "compress",
    ) -> Tensor:
        """x - gamma (the round's mean message), bit for bit ``moved(x, mean, gamma)`` (QGD's
        step). The caller gives ``x`` up: where the backend reads the round as entries, only
        those are written, over ``x`` itself when it is the point this method returned last (or
        :meth:`entrust`-ed), unchanged since (x - gamma 0 = x for every x, gamma >= 0)."""
        entries = self._entries_apply(compressor, X_local)
        if entries and self._writable(x, clean=False, role="point"):
            at, mean, _ = self._round_entries(compressor, X_local, round, stream)
            step = torch.mul(mean, gamma[at] if isinstance(gamma, Tensor) else gamma)
            x.index_copy_(0, at, torch.sub(x.index_select(0, at), step))
        else:
            mean = self.aggregate_mean(compressor, X_local, round, stream=stream)
            t = torch.mul(mean, gamma, out=mean)
            x = torch.sub(x, t, out=t)
        return self._own(x, clean=False, role="point") if entries else x

    def aggregate_shifted(
        self,
        x: Tensor,
        gamma: float | Tensor,
        shifts: Tensor,
        shift_mean: Tensor,
        compressor: Compressor,
        X_local: Tensor,
        round: int,
        alpha: float,
        *,
        stream: str | int = "compress",
    ) -> tuple[Tensor, Tensor]:
        """DIANA's steps 3-7: the messages Delta_i = Q_i(X_i) sent, ``shifts`` (the hosted h_i) +=
        alpha Delta_i in place, and (x - gamma (h + Delta), h + alpha Delta) returned, with h =
        ``shift_mean`` and Delta the mean message, bit for bit those expressions. The caller gives
        ``x`` and ``shift_mean`` up: where the backend reads the round as entries and h_i, h are
        what this method left last, unchanged since, with no -0.0, they change at the entries in
        place (:meth:`_shifted_at`)."""
        entries = self._entries_apply(compressor, X_local)
        clean = self._writable(shifts, True, "shifts") and self._writable(shift_mean, True, "shift mean")
        if entries and clean:
            at, delta, own = self._round_entries(compressor, X_local, round, stream)
            return self._shifted_at(x, gamma, shifts, shift_mean, alpha, at, delta, own)
        mean, local = self.aggregate_with_local(compressor, X_local, round, stream=stream)
        shifts.add_(local, alpha=alpha)
        g = shift_mean + mean
        t = torch.mul(g, gamma, out=g)
        x_new, mean_new = torch.sub(x, t, out=t), shift_mean + alpha * mean
        if entries:  # owned for the next round's entry path (clean if they hold no -0.0)
            self._own(shifts, clean=not has_negative_zero(shifts), role="shifts")
            self._own(mean_new, clean=not has_negative_zero(mean_new), role="shift mean")
        return x_new, mean_new

    def aggregate_feedback(
        self,
        g: Tensor,
        estimates: Tensor,
        compressor: Compressor,
        X_local: Tensor,
        round: int,
        scale: float,
        weight: float,
        *,
        multiplicity: Tensor | None = None,
        stream: str | int = "compress",
    ) -> Tensor:
        """EF21's steps 4-6: the messages c_i = C(X_i) sent, ``estimates`` (the hosted g_i) +=
        ``scale`` c_i in place, and g + ``weight`` (the mean message) returned. The caller gives
        ``g`` up: where the backend reads the round as entries (every worker sending, scale =
        weight = 1), they are added into ``estimates`` and ``g`` themselves when both are what this
        method left last, unchanged since and hold no -0.0 (adding 0 elsewhere leaves them as they
        are; g gains sums of messages, never -0.0; g_i is checked where it changed)."""
        fast = multiplicity is None and scale == 1.0 == weight and self._entries_apply(compressor, X_local)
        if fast and self._writable(g, True, "sum") and self._writable(estimates, True, "estimates"):
            at, mean, own = self._round_entries(compressor, X_local, round, stream)
            clean = True
            for row, (own_at, v) in zip(estimates, own):  # g_i += c_i at its (distinct) entries
                changed = torch.add(row.index_select(0, own_at), v)
                row.index_copy_(0, own_at, changed)
                clean = clean and not has_negative_zero(changed)
            g = self._added_at(g, at, mean)
        else:
            mean, local = self.aggregate_with_local(
                compressor, X_local, round, stream=stream, multiplicity=multiplicity
            )
            estimates.add_(local, alpha=scale)
            step = weight * mean
            g = torch.add(g, step, out=step)
            clean = fast and not has_negative_zero(estimates)
        if not fast:
            return g
        self._own(estimates, clean=clean, role="estimates")
        return self._own(g, clean=True, role="sum")

    # -- a round read as entries (backends that can: one worker, or sparsifiers on the CPU) ------
    def _entries_apply(self, compressor: Compressor, X_local: Tensor | LazyRows) -> bool:
        """Whether this backend can read the round's messages of ``compressor`` as entries
        (:meth:`_round_entries`); never here."""
        return False

    def _round_entries(
        self, compressor: Compressor, X_local: Tensor | LazyRows, round: int, stream: str | int
    ) -> tuple[Tensor, Tensor, list[tuple[Tensor, Tensor]]]:
        """The round's messages sent and counted, as (the entries the messages hold, repeated
        where messages share one; the mean message there, bit for bit :meth:`aggregate_mean`'s,
        which is 0 elsewhere; per hosted worker, its own message's (distinct entries, values))."""
        raise NotImplementedError(f"{type(self).__name__} reads no round as entries")

    def _added_at(self, g: Tensor, at: Tensor, values: Tensor) -> Tensor:
        """g <- g + values at the entries ``at`` in place (repeated entries write the same value
        twice), remembered for :meth:`entries_changed`."""
        before = g._version
        new = torch.add(g.index_select(0, at), values)
        g.index_copy_(0, at, new)
        self._sum_change = (weakref.ref(g), before, g._version, at, new)
        return g

    # -- tensors handed back and forth (the in-place paths of the backends) ---------------------
    def _writable(self, t: Tensor, clean: bool, role: str) -> bool:
        """Whether ``t`` is the tensor last returned (or entrusted) in ``role`` ("sum": g, "point":
        x, "estimates": EF21's g_i, ...), unchanged since, and (with ``clean``) known to hold no
        -0.0."""
        w = self._owned.get(role)
        return w is not None and w[0]() is t and w[1] == t._version and (w[2] or not clean)

    def _own(self, t: Tensor, clean: bool, role: str) -> Tensor:
        self._owned[role] = (weakref.ref(t), t._version, clean)
        return t

    def entrust(self, t: Tensor) -> None:
        """The caller hands ``t`` over: the next :meth:`aggregate_moved` given ``t`` (unchanged
        since) may write over it (a backend without in-place paths never does)."""
        self._own(t, clean=False, role="point")

    def _shifted_at(
        self,
        x: Tensor,
        gamma: float | Tensor,
        shifts: Tensor,
        shift_mean: Tensor,
        alpha: float,
        at: Tensor,
        delta: Tensor,
        own: list[tuple[Tensor, Tensor]],
    ) -> tuple[Tensor, Tensor]:
        """DIANA's steps 4-7 at the entries ``at`` of the round's mean message ``delta`` (repeated
        entries carry the same value and write it twice), with ``own[i]`` the (entries, values) of
        hosted worker i's message; h_i and h clean (no -0.0), so adding 0
        elsewhere would leave them as they are: bit for bit :meth:`Network.aggregate_shifted`."""
        # 5.-6. x - gamma (h + Delta): gamma h, its entries at `at` recomputed from h + Delta
        t = self._scaled_shifts(shift_mean, gamma)
        h_at = shift_mean.index_select(0, at)
        g_at = torch.add(h_at, delta)
        t.index_copy_(0, at, torch.mul(g_at, gamma[at] if isinstance(gamma, Tensor) else gamma))
        x_new = x.sub_(t) if self._writable(x, clean=False, role="point") else torch.sub(x, t)
        # 4. h_i += alpha Delta_i (one fused rounding, as add_ with alpha over the row)
        for row, (own_at, v) in zip(shifts, own):
            row.index_copy_(0, own_at, row.index_select(0, own_at).add_(v, alpha=alpha))
        # 7. h + alpha Delta
        h_new = torch.add(h_at, alpha * delta)
        shift_mean.index_copy_(0, at, h_new)
        if isinstance(gamma, float):  # t is gamma h^{k+1} but at these entries, where h is h_new
            self._scaled_shift = (t, weakref.ref(shift_mean), shift_mean._version, gamma, at, h_new)
        self._own(shifts, clean=True, role="shifts")
        return x_new, self._own(shift_mean, clean=True, role="shift mean")

    def _scaled_shifts(self, h: Tensor, gamma: float | Tensor) -> Tensor:
        """gamma h in a kept buffer: the last round's buffer with the entries it left as
        gamma (h + Delta) set to gamma h from h's new values there (same gamma, h unchanged
        since), else every product."""
        kept, self._scaled_shift = self._scaled_shift, None
        if (
            kept is not None
            and isinstance(gamma, float)
            and kept[3] == gamma
            and kept[1]() is h
            and kept[2] == h._version
        ):
            t, at, h_at = kept[0], kept[4], kept[5]
            return t.index_copy_(0, at, torch.mul(h_at, gamma))
        return torch.mul(h, gamma)

    def entries_changed(self, t: Tensor, since: int) -> tuple[Tensor, Tensor] | None:
        """(the entries (int64, 1-D), their new values) of the sum ``t`` this network changed in
        place since ``t``'s version ``since`` (one in-place addition, nothing else since), or
        None when that is not known. Lets a caller keep a product with ``t`` current."""
        change = self._sum_change
        if change is None or change[0]() is not t or change[1] != since or change[2] != t._version:
            return None
        return change[3], change[4]

    def aggregate(
        self,
        compressor: Compressor,
        X_local: Tensor,
        round: int,
        *,
        stream: str | int = "compress",
        multiplicity: Tensor | None = None,
    ) -> Tensor:
        """:meth:`aggregate_mean` (the older name)."""
        return self.aggregate_mean(compressor, X_local, round, stream=stream, multiplicity=multiplicity)

    def aggregate_dense(
        self,
        X_local: Tensor,
        round: int,
        dense_compressor: Compressor,
        *,
        multiplicity: Tensor | None = None,
    ) -> Tensor:
        """:meth:`aggregate_mean` with ``dense_compressor`` (the identity at the wire precision,
        which makes no random draws: a backend may pass it any Randomness with the right rows)."""
        return self.aggregate_mean(
            dense_compressor, X_local, round, stream="dense", multiplicity=multiplicity
        )

    # -- metrics (not counted) ----------------------------------------------------------------
    @abstractmethod
    def gather(self, values_local: Tensor) -> Tensor:
        """(n, ...) per-worker values of all workers in global order, from (n_local, ...)."""

    def global_mean(self, values_local: Tensor) -> Tensor:
        """Mean over all n workers of per-worker values (n_local, ...) -> (...), added in the
        fixed order of :func:`marina.reductions.fixed_mean` (as :meth:`Problem.grad` adds them)."""
        return fixed_mean(self.gather(values_local))

    @property
    def hosts_all(self) -> bool:
        """Whether this process hosts every worker (then problem-level metrics need no reduction)."""
        return self.n_local == self.n


def has_negative_zero(t: Tensor) -> bool:
    """Whether ``t`` holds a -0.0 (x + 0 = x holds for every other value)."""
    zeros = t == 0
    return bool(zeros.any()) and bool((zeros & t.signbit()).any())  # zeros are rare: one test


def mean_at_entries(zeros: Tensor, idx: Tensor, values: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """(the entries ``idx`` (n_messages, K) flattened; the mean message there): the messages'
    values added in row order into ``zeros`` (a (d,) buffer of zeros, zero again on return) and
    divided by n, bit for bit :func:`marina.compressors.sparse.sparse_sum` / n at those entries."""
    at = idx.reshape(-1)
    mean = zeros.index_add_(0, at, values.reshape(-1)).index_select(0, at).div_(n)
    zeros.index_fill_(0, at, 0.0)
    return at, mean
