"""Real workers on torch.distributed: compressed payloads on the wire, same trajectory as simulation.

Each rank (process) hosts a block of workers (:func:`worker_block`: rank r of W hosts the n/W
workers ``r n/W .. (r+1) n/W - 1``) and holds only their shards of the data. The methods run
unchanged (:class:`marina.network.base.Network`); this backend moves the messages.

Topology: all-gather of the compressed payloads (chosen over gather-to-a-server + broadcast)
    Every rank contributes the packed messages of its workers and receives everybody's, then
    unpacks, decompresses and averages them itself, in global worker order. Why:

    - the server state (x^k, g^k, DIANA's h) is replicated: every rank computes it from the same
      bytes with the same code, so it stays bitwise identical on every rank without any further
      message, exactly as the interface (:mod:`marina.network.base`) prescribes;
    - the downlink stays compressed. In the paper's gather + broadcast, the server broadcasts
      g^k as a dense d-vector every round (what ``bits_down`` accounts); here what reaches a
      worker is the other ranks' *compressed* messages, which for RandK-type compressors with
      few ranks is far less than d values. (With many ranks, W (W-1) compressed messages
      can exceed W dense vectors; the counters below make that trade-off visible.)
    - no rank is special (no server bottleneck, nothing to fail over), and it is one collective
      that gloo and NCCL both implement well. On gloo, chunks of up to 64 KB (every
      compressed round, small dense ones) go by a direct exchange, each rank sending its chunk
      to the W - 1 others at once, which waits for one hop instead of the ring's W - 1
      (``_all_gather``); larger chunks by the ring all-gather.

One aggregation, as data flows (``aggregate_mean`` / ``aggregate_with_local``: plan, encode,
exchange, decode)
    A worker drawn c times by PP-MARINA sends c messages; copy j uses the randomness stream
    ``copy_stream(stream, j)`` (see :mod:`marina.network.base`). The multiplicities are known to
    every rank, so every rank knows how many messages m_r each rank sends (n_local without
    multiplicity) and in which order: copy 0 of its senders in worker order, then copy 1, ...
    Every rank writes this down in the same :class:`marina.network.wire_plan.WirePlan` (senders,
    slots, sizes where known, byte offsets, bytes per rank, bit-packing), built once per
    (compressor, d) and cached where nothing else decides it (no multiplicity, sizes not drawn).

    1. Compress. Rank r compresses copy j of its workers drawn more than j times in one call
       per j, each row with its worker's keyed randomness, and packs every message
       (``compressor.pack_compressed``: message i in the first ``ceil(bits / 8)`` bytes of row i).
    2. Sizes. Where every message's size follows from (compressor, d, worker id) alone
       (``compressor.message_bits``: identity, randk, randk seeded, permk, qsgd, natural,
       natural dithering, topk), every rank computes the (W, s) table of message bits itself,
       with s = max_r m_r slots, and no size collective is made: ONE collective per
       aggregation. So it does where the sizes follow from the senders' keyed draws
       (``compressor.sized_by_draws``: ``bernoulli:q:seeded``, d w bits when a worker's coin
       says sent, else 0): every rank regenerates every sender's coin (``message_bits(d, ids,
       rng)`` with a Randomness over all senders of copy j, as draws are keyed per worker).
       Only where sizes vary with the values or with draws that do not follow from the key
       (``bernoulli:q``, whose flag travels and decides between 1 and 1 + d w bits) every rank
       all-gathers an int64 tensor of s slots:
       the exact bit size of each of its messages, then zeros (unused slots; a negative code if
       its compression failed, see "Errors"). Either way every rank knows every message's length
       (``ceil(bits/8)``) and the bits to account.
    3. Payloads. Every rank all-gathers its messages concatenated in order (bit-packed where the
       plan says, see below), zero-padded to the
       largest rank's total, as one uint8 tensor. A rank whose workers all send nothing
       (PP-MARINA's clients not drawn) contributes only padding, so nobody waits for it; if no
       rank sends a byte the payload collective is skipped (every rank knows it from step 2,
       so none hangs), except for sizes from the draws: there a rank can fail to compress with
       nothing to send (its values are checked whether its coin says sent or not), so every
       rank contributes at least one byte, and the failure pattern (see "Errors") covers a
       rank's whole padded segment when it sends nothing.
    4. For each copy j, every rank reads the j-th messages of all workers in global worker
       order out of the gathered buffer at the plan's offsets (blocks are contiguous, so rank
       order is worker order), sums them with the compressor's canonical ``sum_packed``
       (``unpack_rows`` and ``sum_decompressed`` where the hosted rows are wanted too, bit for
       bit the same sum) and reduces exactly like
       :class:`marina.network.SimulatedNetwork`: that sum divided by n without multiplicity,
       the per-copy sums added up and divided by sum(multiplicity) with it. Same reduction on
       the same messages, so the float64 trajectory equals the simulation's (bit for bit on the
       same machine).

Uniform plans and bit-level packing (one message per worker, every message of the same known size)
    Without multiplicities and with every message of ``b`` bits known from (compressor, d)
    (every fixed-size compressor; PermK where n divides d), the plan is *uniform*: rank r's
    segment is its n/W packed rows, the gathered buffer is every message in worker order, and
    the compressor's row decoder reads it in place. Where b is not a whole number of bytes,
    b <= ``wire_plan.BITPACK_MAX_BITS`` (4096) and a rank hosts several
    workers, its messages travel back to back at bit level (:func:`marina.compressors.wire.
    concat_bits`): ceil(n/W b / 8) bytes instead of n/W ceil(b / 8), so the wire carries at most
    7 bits per rank beyond the accounted bits (at one message per rank, ceil(b/8) bytes is the
    floor of any byte-granular collective: randk:1 at d = 10^5 sends 49 bits in 7 bytes).
    Everything else (multiplicities, varying sizes, ``exchange_sizes=True``) keeps every
    message byte aligned. Same messages either way, so the same trajectory, bit for bit.

Bytes on the wire (counters, equal on every rank; the network's share of "bytes sent")
    With W ranks, s slots per rank and B_r the payload bytes of rank r, one aggregation
    contributes per rank ``8 s`` bytes of sizes (only where sizes are exchanged, step 2) and
    ``max_r B_r`` bytes of padded payload; each
    contribution must reach the W-1 other ranks (a direct exchange sends each chunk over W-1
    links, a ring all-gather forwards it over W-1 links: the minimum for point-to-point
    delivery either way):

    - ``payload_bytes`` += sum_r B_r = sum over messages of ceil(bits / 8)  (one copy of each;
      sum over ranks of ceil(rank bits / 8) where messages are bit-packed, see above);
    - ``size_bytes`` += 8 s W (0 without a size exchange);   ``padding_bytes`` += W max_r B_r - sum_r B_r;
    - ``wire_bytes`` += (W - 1) (size_bytes + payload_bytes + padding_bytes) of this round:
      the bytes all ranks together put on links (0 when W = 1: nothing crosses).

    ``metric_bytes`` counts the (uncounted-in-bits) gathers of metrics the runner makes at log
    points, the same way. ``bits_up`` / ``bits_down`` keep the paper's accounting, identical to
    the simulation's. With ``keep_log=True``, ``exchanges`` holds one record per aggregation.

Errors
    - Compression failures stay consistent: a rank whose compressor refuses its values (non-
      finite, outside the wire range, any other error) sends a negative code in the size
      exchange instead of raising at once; the code is chosen by the error's type
      (:class:`marina.errors.ValueRangeError` and its ``non_finite`` flag; anything else is a
      failure), never by its message. Every rank then raises the same kind of error before the
      payload collective: a ValueRangeError (the rank's own, or one naming the ranks whose values
      left the range), so the runner reports divergence on every rank alike, or a
      :class:`DistributedError` for any other failure. Without a size exchange, the failing rank
      fills its whole payload with 0xFF bytes instead, a pattern no message of a fixed-size
      compressor can take (its first field would be a NaN or infinite value: see
      ``Compressor.message_bits``); every rank sees it in the payload collective, and only then
      do the ranks all-gather one failure code each and raise as above. A healthy round costs no
      extra byte for this.
    - A rank that dies, hangs or disconnects makes every collective of the others fail, at once
      (connection reset) or after the process group's timeout (``init_process_group(timeout=)``;
      gloo applies it to every collective, NCCL through its watchdog: see
      :mod:`marina.distributed`). The failure is re-raised as :class:`DistributedError` naming
      this rank, the operation, the round and the timeout; with a ``store``, every surviving
      rank checks in under a key of its own and waits up to ``grace_s`` seconds for the others,
      so the message also names the ranks that did not check in (dead or hung). The whole
      diagnosis runs in a daemon thread bounded by ``grace_s`` + 1 s (``grace_s`` defaults to
      min(5 s, timeout / 2)), so a rank stops at most timeout + grace_s + 1 s after a rank
      hangs, and about grace_s after a rank dies (its connections close at once).
      (``monitored_barrier`` is not used for this: it needs a healthy gloo group, and after a
      peer failure the group's connections are broken.)

Only tensors cross the network (no pickled objects): sizes as int64, payloads as uint8,
metric values in their own dtype, configuration agreement as SHA-256 digests (uint8).
With NCCL, every tensor handed to a collective lives on this rank's current CUDA device;
with gloo, on the CPU (results are moved back to the problem's device).
"""

from __future__ import annotations

import hashlib
import threading
import time
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from marina.compressors.base import Compressor
from marina.errors import ConfigError, MarinaError, ValueRangeError
from marina.network.base import Network, copy_stream, mean_at_entries
from marina.network.link import DIRECT_MAX_BYTES, Link, parse_link
from marina.network.wire_plan import WirePlan
from marina.rng import Randomness

__all__ = ["DistributedError", "TorchDistributedNetwork", "worker_block"]

SIZE_DTYPE = torch.int64
"""dtype of the size exchange (one bit count per message slot: 8 bytes)."""
SIZE_BYTES = 8

# negative size codes: why a rank sent no message (see "Errors")
_NON_FINITE, _WIRE_RANGE, _FAILED = -1, -2, -3
_POISON = 0xFF
"""The byte a rank that failed to compress sends, all over its payload, when sizes are not exchanged."""


def failure_code(err: BaseException) -> int:
    """The size code a rank sends when compressing raised ``err``: by type, not by message."""
    if isinstance(err, ValueRangeError):
        return _NON_FINITE if err.non_finite else _WIRE_RANGE
    return _FAILED


class DistributedError(MarinaError, RuntimeError):
    """A peer rank died, hung or disconnected (or failed), so this rank cannot go on."""


def worker_block(n_workers: int, world_size: int, rank: int) -> range:
    """The global worker ids rank ``rank`` of ``world_size`` hosts: a contiguous block of n/W.

    Every rank hosts the same number of workers (the collectives exchange equal-shaped tensors),
    so ``n_workers`` must be a multiple of ``world_size``.

    Raises:
        ConfigError: naming the values and what would be valid.
    """
    for label, value, low in (("workers", n_workers, 1), ("world size", world_size, 1), ("rank", rank, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{label} == {value!r}, must be an integer >= {low}")
    if rank >= world_size:
        raise ConfigError(f"rank == {rank}, must be < the world size {world_size}")
    if n_workers % world_size:
        divisors = [k for k in range(1, n_workers + 1) if n_workers % k == 0]
        multiples = ", ".join(str(world_size * k) for k in range(1, 4))
        raise ConfigError(
            f"workers == {n_workers} is not divisible by the world size {world_size} (number of "
            f"ranks = nnodes x nproc-per-node): every rank hosts the same number of workers; use "
            f"workers = {multiples}, ... or a world size in {divisors}"
        )
    per = n_workers // world_size
    return range(rank * per, (rank + 1) * per)


def first_line(err: BaseException) -> str:
    """The first line of an exception's text (its type name when the text is empty)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _is_collective_failure(err: BaseException) -> bool:
    return isinstance(err, RuntimeError) and not isinstance(err, MarinaError)


def _all_equal(t: Tensor, value: int) -> bool:
    """Every entry of t equals value (numpy on the CPU: one call instead of three tensor ops)."""
    return bool((t.numpy() == value).all()) if t.device.type == "cpu" else bool((t == value).all())


def _any_equal(t: Tensor, value: int) -> bool:
    """Some entry of t equals value (as :func:`_all_equal`)."""
    return bool((t.numpy() == value).any()) if t.device.type == "cpu" else bool((t == value).any())


class TorchDistributedNetwork(Network):
    """The workers of this rank's block; aggregation by all-gather of packed messages.

    The default process group (or ``group``) must be initialised (see
    :func:`marina.distributed.init` or ``torch.distributed.init_process_group``).

    Args:
        n: total number of workers over all ranks (a multiple of the world size).
        seed: experiment seed (checked to be the same on every rank).
        device: where worker-side tensors live (the problem's device).
        group: the process group (default: the default group).
        timeout_s: the group's collective timeout, for error messages (None: not stated).
        store: a ``torch.distributed.Store`` shared by the ranks (e.g. the rendezvous store),
            used only after a failure to find out which ranks are gone.
        grace_s: how long a failing rank waits for the others to check in (default
            min(5, timeout_s / 2); 5 s when the timeout is not given).
        keep_log: keep one record per aggregation in ``exchanges``.
        exchange_sizes: always exchange message sizes first (two collectives per aggregation),
            even where they follow from (compressor, d); for comparisons and tests.
        link: a link model (:mod:`marina.network.link`): adds ``link_time_s``, the modelled time
            of this run's aggregations on W ranks with such links.
    """

    def __init__(
        self,
        n: int,
        seed: int = 0,
        *,
        device: torch.device | str | None = None,
        group: Any = None,
        timeout_s: float | None = None,
        store: Any = None,
        grace_s: float | None = None,
        keep_log: bool = False,
        exchange_sizes: bool = False,
        link: str | Link | None = None,
    ) -> None:
        super().__init__()
        self._zeros: Tensor | None = None  # see _round_entries
        self.link = parse_link(link)
        if not dist.is_available() or not dist.is_initialized():
            raise ConfigError(
                "torch.distributed is not initialised: call marina.distributed.init() (or "
                "torch.distributed.init_process_group) in every process first, e.g. under torchrun"
            )
        self.group = group
        self.rank = int(dist.get_rank(group))
        self.world_size = int(dist.get_world_size(group))
        self.backend = str(dist.get_backend(group))
        if isinstance(n, bool) or not isinstance(n, int):
            raise ConfigError(f"workers == {n!r}, must be an integer >= 1")
        block = worker_block(n, self.world_size, self.rank)
        self.n = int(n)
        self.seed = int(seed)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        if self.backend == "nccl":
            if not torch.cuda.is_available():
                raise ConfigError("the process group uses NCCL, which needs CUDA, but CUDA is not available")
            self.comm_device = torch.device("cuda", torch.cuda.current_device())
        else:
            self.comm_device = torch.device("cpu")
        self.worker_ids = torch.arange(block.start, block.stop, dtype=torch.int64, device=self.device)
        self._lo = int(block.start)
        self.timeout_s = None if timeout_s is None else float(timeout_s)
        self.grace_s = float(grace_s) if grace_s is not None else min(5.0, (self.timeout_s or 10.0) / 2)
        self.store = store
        self.keep_log = bool(keep_log)
        self.exchange_sizes = bool(exchange_sizes)
        self._plans: dict[tuple, WirePlan] = {}
        self.exchanges: list[dict[str, Any]] = []
        self.wire_bytes = 0
        self.payload_bytes = 0
        self.size_bytes = 0
        self.padding_bytes = 0
        self.metric_bytes = 0
        self._round = -1
        self.agree(f"workers={self.n} seed={self.seed} world={self.world_size}", "workers and seed")

    # -- counters -----------------------------------------------------------------------------
    WIRE_COUNTERS = ("wire_bytes", "payload_bytes", "size_bytes", "padding_bytes", "metric_bytes")

    def counters(self) -> dict[str, int]:
        out = super().counters()
        out.update({name: int(getattr(self, name)) for name in self.WIRE_COUNTERS})
        return out

    def load_counters(self, state: dict[str, int]) -> None:
        super().load_counters(state)
        for name in self.WIRE_COUNTERS:
            setattr(self, name, int(state.get(name, 0)))

    def log_columns(self) -> dict[str, float]:
        """Extra history columns: cumulative ``wire_bytes`` and ``payload_bytes`` (all ranks),
        and ``link_time_s`` with a link model."""
        wire = {"wire_bytes": float(self.wire_bytes), "payload_bytes": float(self.payload_bytes)}
        return {**wire, **super().log_columns()}

    # -- collectives with clear failures -------------------------------------------------------
    def _all_gather(self, local: Tensor, what: str) -> Tensor:
        """(W * local.shape[0], ...) concatenation of every rank's ``local`` (same shape everywhere).

        On gloo, chunks of up to :data:`marina.network.link.DIRECT_MAX_BYTES` (the same size on
        every rank, so every rank makes the same choice) go by a direct exchange
        (``all_to_all`` with this rank's chunk as every input: each rank sends it to the W - 1
        others at once, one step) rather than gloo's ring all-gather (W - 1 steps of
        forwarding): the same bytes on every link, one hop to wait for instead of W - 1
        (``benchmarks/collectives.py``). Larger chunks, and other backends (NCCL), use the
        all-gather.
        """
        src = local.to(self.comm_device).contiguous()
        W = self.world_size
        out = torch.empty((W * src.shape[0], *src.shape[1:]), dtype=src.dtype, device=src.device)
        nbytes = src.numel() * src.element_size()
        try:
            if self.backend == "gloo" and W > 1 and 0 < nbytes <= DIRECT_MAX_BYTES:
                dist.all_to_all(list(out.view(W, *src.shape).unbind(0)), [src] * W, group=self.group)
            else:
                gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
                gather(out, src, group=self.group)
        except Exception as err:  # re-raised with context below
            if not _is_collective_failure(err):
                raise
            raise self._failure(what, err) from err
        return out

    def _failure(self, what: str, err: BaseException) -> DistributedError:
        timeout = f"{self.timeout_s:g} s" if self.timeout_s is not None else "the process group's timeout"
        where = f"round {self._round}" if self._round >= 0 else "setup"
        text = first_line(err)
        missing = self._diagnose()
        return DistributedError(
            f"torch-distributed: rank {self.rank} of {self.world_size} stopped: {what} ({where}) "
            f"failed: another rank died, hung or disconnected (collective timeout {timeout}). "
            f"{missing}Cause: {text}"
        )

    def _diagnose(self) -> str:
        """Which ranks do not check in within ``grace_s`` (via the store), as a sentence."""
        if self.store is None or self.world_size == 1:
            return ""
        result: list[str] = []

        def probe() -> None:
            try:
                store = dist.PrefixStore("marina-fault/", self.store)
                store.set(str(self.rank), "alive")
                keys = [str(r) for r in range(self.world_size)]
                deadline = time.monotonic() + self.grace_s
                while not store.check(keys) and time.monotonic() < deadline:  # polling: no noisy waits
                    time.sleep(0.05)
                gone = [r for r in range(self.world_size) if not store.check([str(r)])]
                if gone:
                    result.append(
                        f"Rank(s) {gone} did not check in within {self.grace_s:g} s of the failure "
                        "(dead or hung). "
                    )
                else:
                    result.append("Every rank is still alive (one of them failed or lost its connection). ")
            except Exception as err:  # noqa: BLE001 - the store itself may be gone
                result.append(
                    f"The rendezvous store is unreachable too ({type(err).__name__}), so the rank "
                    "hosting it (rank 0, or the torchrun agent) is likely down. "
                )

        thread = threading.Thread(target=probe, name="marina-fault-probe", daemon=True)
        thread.start()
        thread.join(self.grace_s + 1.0)
        return result[0] if result else f"No rank answered within {self.grace_s:g} s. "

    def agree(self, text: str, what: str) -> None:
        """Check that every rank passes the same ``text`` (SHA-256 digests are compared).

        Raises:
            ConfigError on every rank, naming the ranks that differ from rank 0.
        """
        digest = torch.frombuffer(bytearray(hashlib.sha256(text.encode("utf-8")).digest()), dtype=torch.uint8)
        rows = self._all_gather(digest, f"checking that all ranks agree on {what}").cpu().reshape(-1, 32)
        self.metric_bytes += (self.world_size - 1) * int(rows.numel())
        differ = [r for r in range(self.world_size) if not torch.equal(rows[r], rows[0])]
        if differ:
            raise ConfigError(
                f"ranks {differ} were started with a different {what} than rank 0 "
                f"(this rank {self.rank}: {text}); start every rank with the same options"
            )

    # -- aggregation --------------------------------------------------------------------------
    def aggregate_mean(
        self,
        compressor: Compressor,
        X_local: Tensor,
        round: int,
        *,
        stream: str | int = "compress",
        multiplicity: Tensor | None = None,
    ) -> Tensor:
        """The mean of every worker's decompressed messages, on every rank (steps 1-4 above)."""
        plan, buffer = self._send(compressor, X_local, round, stream, multiplicity)
        return self._decode(compressor, plan, buffer, X_local, round, stream, keep_local=False)[0]

    def aggregate_with_local(
        self,
        compressor: Compressor,
        X_local: Tensor,
        round: int,
        *,
        stream: str | int = "compress",
        multiplicity: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """:meth:`aggregate_mean` and the hosted workers' own decompressed messages (n_local, d):
        copy 0, zero rows for workers that sent nothing."""
        plan, buffer = self._send(compressor, X_local, round, stream, multiplicity)
        mean, local = self._decode(compressor, plan, buffer, X_local, round, stream, keep_local=True)
        return mean, local  # type: ignore[return-value] - keep_local gives the rows

    def _entries_apply(self, compressor: Compressor, X_local: Tensor) -> bool:
        """Whether a round's mean can be read as entries: a sparsifier's messages, summed on the
        CPU (where :func:`marina.compressors.sparse.sparse_sum` adds entries in order)."""
        cpu = X_local.device.type == "cpu" and self.comm_device.type == "cpu"
        return cpu and hasattr(compressor, "packed_entries")

    def _round_entries(
        self, compressor: Compressor, X_local: Tensor, round: int, stream: str | int
    ) -> tuple[Tensor, Tensor, list[tuple[Tensor, Tensor]]]:
        """Every message's entries (repeated where messages share one) and the mean there, bit
        for bit :meth:`aggregate_mean`'s: the entries added in worker order into a kept buffer of
        zeros (zeroed again at those entries after), divided by n; the hosted workers' messages."""
        plan, buffer = self._send(compressor, X_local, round, stream, None)
        senders = plan.senders[0]
        rx = (
            Randomness(self.seed, copy_stream(stream, 0), round, senders, self.comm_device)
            if compressor.regenerates
            else None
        )
        d, dtype = int(X_local.shape[1]), X_local.dtype
        idx, values = compressor.packed_entries(
            plan.rows(buffer, 0), plan.lengths[0], d, senders.to(self.comm_device), dtype, rx
        )
        if self._zeros is None or self._zeros.numel() != d or self._zeros.dtype != dtype:
            self._zeros = torch.zeros(d, dtype=dtype)
        at, mean = mean_at_entries(self._zeros, idx, values, self.n)
        own = [(idx[self._lo + i], values[self._lo + i]) for i in range(self.n_local)]
        return at, mean, own

    def _send(
        self,
        compressor: Compressor,
        X_local: Tensor,
        round: int,
        stream: str | int,
        multiplicity: Tensor | None,
    ) -> tuple[WirePlan, Tensor]:
        """Steps 1-3: the plan with every size known, and the gathered segments of all ranks."""
        self._round = int(round)
        if X_local.dim() != 2 or X_local.shape[0] != self.n_local:
            raise ValueError(f"X_local has shape {tuple(X_local.shape)}, expected ({self.n_local}, d)")
        plan = self._plan(compressor, int(X_local.shape[1]), multiplicity, round, stream)
        mine, sizes, error = self._encode(compressor, plan, X_local, round, stream)
        return self._exchange(compressor, plan, mine, sizes, error, round, stream)

    def _plan(
        self, compressor: Compressor, d: int, multiplicity: Tensor | None, round: int, stream: str | int
    ) -> WirePlan:
        """This aggregation's :class:`WirePlan`, cached per (compressor, d) where nothing else
        decides it (no multiplicity, sizes not drawn)."""
        drawn = compressor.sized_by_draws and not self.exchange_sizes
        key = (compressor.spec, compressor.value_dtype, compressor.workers, d)
        cached = multiplicity is None and not drawn
        if cached and key in self._plans:
            return self._plans[key]
        counts = self._counts(multiplicity)
        plan = WirePlan.build(
            counts,
            self.world_size,
            self.rank,
            weighted=multiplicity is not None,
            drawn=drawn,
            row_device=self.device,
        )
        bits_of = None if self.exchange_sizes else self._known_bits(compressor, d, plan, round, stream)
        if bits_of is not None:
            plan = plan.with_message_bits(bits_of, self.comm_device)
        if cached:
            self._plans[key] = plan
        return plan

    def _counts(self, multiplicity: Tensor | None) -> Tensor:
        """(n,) CPU int64 messages each worker sends (one each without a multiplicity)."""
        if multiplicity is None:
            return torch.ones(self.n, dtype=torch.int64)
        counts = multiplicity.to(device="cpu", dtype=torch.int64).reshape(-1)
        if counts.numel() != self.n:
            raise ValueError(f"multiplicity has {counts.numel()} entries, expected n = {self.n}")
        if int(counts.sum()) < 1:
            raise ValueError("multiplicity sums to 0: nobody would send anything")
        return counts

    def _known_bits(
        self, compressor: Compressor, d: int, plan: WirePlan, round: int, stream: str | int
    ) -> list[Tensor] | None:
        """Per copy j, the bits of its senders' messages from ``compressor.message_bits`` alone
        (step 2 without a collective); None when sizes vary (Bernoulli). Where sizes follow from
        the draws (:attr:`plan.drawn`), message_bits gets the senders' Randomness of copy j (draws
        are keyed per worker, so one object over all of copy j's senders draws what their ranks
        draw)."""
        out = []
        for j, senders in enumerate(plan.senders):
            if plan.drawn:
                bits = compressor.message_bits(
                    d, senders, rng=Randomness(self.seed, copy_stream(stream, j), round, senders)
                )
            else:
                bits = compressor.message_bits(d, senders)
            if bits is None:
                return None
            out.append(bits)
        return out

    def _encode(
        self, compressor: Compressor, plan: WirePlan, X_local: Tensor, round: int, stream: str | int
    ) -> tuple[Tensor, Tensor, BaseException | None]:
        """Step 1: this rank's messages (copy 0 of its senders, copy 1, ...; each copy in one
        call) as one uint8 segment in the plan's layout, unpadded, and their (slots,) bits. If
        compressing fails: no segment, a failure code in every slot, and the error."""
        sizes = torch.zeros(plan.slots, dtype=SIZE_DTYPE)
        pieces: list[Tensor] = []
        filled = 0
        try:
            for j, rows in enumerate(plan.local_rows):
                if rows.numel() == 0:
                    continue
                every = rows.numel() == self.n_local
                ids = self.worker_ids if every else self.worker_ids.index_select(0, rows)
                rng = Randomness(self.seed, copy_stream(stream, j), round, ids, self.device)
                packed, bits = compressor.pack_compressed(
                    X_local if every else X_local.index_select(0, rows), rng
                )
                pieces.append(plan.segment(packed, bits).to(self.comm_device))
                sizes[filled : filled + rows.numel()] = bits.to("cpu", SIZE_DTYPE)
                filled += rows.numel()
            if plan.known and not torch.equal(sizes, plan.bits[self.rank]):  # type: ignore[index]
                raise DistributedError(
                    f"{compressor.spec}: message bits {sizes.tolist()} differ from message_bits() "
                    f"{plan.bits[self.rank].tolist()} (a compressor declaring fixed sizes must keep them)"  # type: ignore[index]
                )
        except Exception as err:  # noqa: BLE001 - reported to every rank by the sizes or the poison bytes
            return torch.zeros(0, dtype=torch.uint8), sizes.fill_(failure_code(err)), err
        if len(pieces) == 1:
            return pieces[0], sizes, None
        return torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.uint8), sizes, None

    def _exchange(
        self,
        compressor: Compressor,
        plan: WirePlan,
        mine: Tensor,
        sizes: Tensor,
        error: BaseException | None,
        round: int,
        stream: str | int,
    ) -> tuple[WirePlan, Tensor]:
        """Steps 2-3: the sizes where the plan does not know them (a failure raises here on every
        rank), then every rank's segment padded to the plan's width (0xFF bytes from a rank that
        failed to compress, seen by every rank in :meth:`_check_poison`)."""
        W = self.world_size
        if not plan.known:
            all_sizes = (
                self._all_gather(sizes, f"size exchange of {compressor.spec}").cpu().reshape(W, plan.slots)
            )
            if bool((all_sizes < 0).any()):
                self._raise_compress_failure(compressor, all_sizes, error)
            plan = plan.with_sizes(all_sizes, self.comm_device)
        self._bits_up += plan.sent_bits
        if plan.width == 0:  # nobody sends a byte (every rank knows it): no payload collective
            self._count(round, stream, plan)
            return plan, torch.zeros(0, dtype=torch.uint8, device=self.comm_device)
        if error is not None:
            mine = torch.full((plan.width,), _POISON, dtype=torch.uint8, device=self.comm_device)
        elif mine.numel() < plan.width:
            mine = torch.nn.functional.pad(mine, (0, plan.width - mine.numel()))
        buffer = self._all_gather(mine, f"payload exchange of {compressor.spec}")
        if plan.known:
            self._check_poison(compressor, buffer.view(W, plan.width), plan.poison_span(), error)
        self._count(round, stream, plan)
        return plan, buffer

    def _decode(
        self,
        compressor: Compressor,
        plan: WirePlan,
        buffer: Tensor,
        X_local: Tensor,
        round: int,
        stream: str | int,
        keep_local: bool,
    ) -> tuple[Tensor, Tensor | None]:
        """Step 4: copy by copy, every message in global worker order, summed in the compressor's
        canonical order and reduced as the simulation: the sum over n, or the copies' sums added
        and divided by the number of messages (weighted). With ``keep_local``, also this rank's
        decompressed copy 0."""
        d, dtype, device = int(X_local.shape[1]), X_local.dtype, X_local.device
        parts: list[Tensor] = []
        local = None
        for j, senders in enumerate(plan.senders):
            rows, lengths, ids = plan.rows(buffer, j), plan.lengths[j], senders.to(self.comm_device)
            rx = (
                Randomness(self.seed, copy_stream(stream, j), round, senders, self.comm_device)
                if compressor.regenerates
                else None
            )
            if keep_local and j == 0:
                back = compressor.unpack_rows(rows, lengths, d, ids, dtype, rx)
                parts.append(compressor.sum_decompressed(back).to(device))
                local = self._own_rows(compressor.decompress(back).to(device), senders)
            else:
                parts.append(compressor.sum_packed(rows, lengths, d, ids, dtype, rx).to(device))
        if not plan.weighted:
            return parts[0] / self.n, local  # the simulation's reduction: the canonical sum over n
        acc = torch.zeros_like(parts[0])
        for part in parts:
            acc += part
        return acc / plan.messages, local

    def _own_rows(self, X_hat: Tensor, senders: Tensor) -> Tensor:
        """This rank's rows (n_local, d) of the decompressed messages ``X_hat`` of ``senders``
        (zero rows for hosted workers that sent nothing)."""
        lo, hi = self._lo, self._lo + self.n_local
        if senders.numel() == self.n:
            return X_hat[lo:hi]
        mine = torch.nonzero((senders >= lo) & (senders < hi)).reshape(-1)
        local = torch.zeros((self.n_local, X_hat.shape[1]), dtype=X_hat.dtype, device=X_hat.device)
        rows = mine.to(X_hat.device)
        return local.index_copy_(0, (senders[mine] - lo).to(X_hat.device), X_hat.index_select(0, rows))

    def _check_poison(
        self, compressor: Compressor, rows: Tensor, per_rank: list[int], error: BaseException | None
    ) -> None:
        """Without a size exchange: find ranks whose bytes are all 0xFF (they failed to compress),
        then exchange one failure code per rank (only then) and raise alike on every rank."""
        if error is None and not _any_equal(rows[:, 0], _POISON):
            return  # the healthy round: one comparison
        heads = torch.nonzero(rows[:, 0] == _POISON).reshape(-1).tolist()
        failed = [
            r for r in heads if int(per_rank[r]) and bool((rows[r, : int(per_rank[r])] == _POISON).all())
        ]
        if not failed:
            return
        code = torch.tensor([failure_code(error) if error is not None else 0], dtype=SIZE_DTYPE)
        codes = (
            self._all_gather(code, f"failure codes of {compressor.spec}").cpu().reshape(self.world_size, 1)
        )
        self._raise_compress_failure(compressor, codes, error)

    def _count(self, round: int, stream: str | int, plan: WirePlan) -> None:
        """Add one aggregation's bytes to the counters (see "Bytes on the wire")."""
        W, width, exchanged = self.world_size, plan.width, not plan.known
        payload = sum(plan.rank_bytes)
        padding = W * width - payload
        size_bytes = W * plan.slots * SIZE_BYTES if exchanged else 0
        wire = (W - 1) * (size_bytes + payload + padding)
        self.payload_bytes += payload
        self.padding_bytes += padding
        self.size_bytes += size_bytes
        self.wire_bytes += wire
        self._model_link(W, width, plan.slots if exchanged else 0)
        if self.keep_log:
            self.exchanges.append(
                {
                    "round": int(round),
                    "stream": str(stream),
                    "messages": plan.messages,
                    "slots": plan.slots,
                    "size_exchange": exchanged,
                    "payload_bytes": payload,
                    "padding_bytes": padding,
                    "size_bytes": size_bytes,
                    "wire_bytes": wire,
                    "rank_bytes": list(plan.rank_bytes),
                }
            )

    def _raise_compress_failure(
        self, compressor: Compressor, all_sizes: Tensor, error: BaseException | None
    ) -> None:
        """Every rank raises the same kind of error when some rank could not compress."""
        codes = all_sizes.reshape(self.world_size, -1).min(dim=1).values.tolist()
        bad = [r for r, c in enumerate(codes) if c < 0]
        worst = min(codes)
        if worst != _FAILED and isinstance(error, ValueRangeError):
            raise error
        ranks = ", ".join(str(r) for r in bad)
        if worst == _FAILED:
            cause = f" ({type(error).__name__}: {error})" if error is not None else ""
            raise DistributedError(
                f"torch-distributed: rank(s) {ranks} failed while compressing with "
                f"{compressor.spec} in round {self._round}{cause}; see their logs"
            ) from error
        reason = "contain a non-finite value" if worst == _NON_FINITE else "exceed the wire range"
        raise ValueRangeError(
            f"{compressor.spec}: the values of the workers on rank(s) {ranks} {reason} in round "
            f"{self._round} (every rank stops alike)",
            non_finite=worst == _NON_FINITE,
        )

    # -- metrics ------------------------------------------------------------------------------
    def gather(self, values_local: Tensor) -> Tensor:
        if values_local.shape[0] != self.n_local:
            raise ValueError(
                f"values_local has {values_local.shape[0]} rows, expected n_local = {self.n_local}"
            )
        out = self._all_gather(values_local, "gathering metrics")
        self.metric_bytes += (self.world_size - 1) * out.numel() * out.element_size()
        return out.to(values_local.device)

    def barrier(self) -> None:
        """Wait for every rank (a tiny all-gather, so failures are reported like any other)."""
        self._all_gather(torch.zeros(1, dtype=torch.uint8), "barrier")
