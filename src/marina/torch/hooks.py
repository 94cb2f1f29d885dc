"""A DDP communication hook: compressed gradient averaging (QGD, DIANA, EF21, EF21-SGDM) for standard DDP.

    state = marina.torch.CompressionHookState(compressor="randk:1%", method="diana", seed=0)
    ddp.register_comm_hook(state, marina.torch.compression_hook)

Every bucket of every backward pass is one exchange: each rank compresses its bucket with the
keyed randomness (seed, stream ``ddp-bucket<i>``, round, rank), packs the message and launches
one all-gather of the packed bytes with ``async_op=True``; the hook returns that collective's
future, and the decoding runs in ``.then(...)`` (as torch's PowerSGD hook does), so the
exchange overlaps the rest of the backward pass. Compressors whose message size follows from
(compressor, d) (identity, randk, qsgd, natural, topk, ...) take this path; those whose sizes
vary (``bernoulli:q``) are exchanged by :class:`marina.network.TorchDistributedNetwork`
(a size exchange first), synchronously inside the hook.

- ``method="qgd"``: the bucket's gradient becomes (1/W) sum_r Q(g_r) (quantized GD, Khirirat et
  al. 2018; ``marina.methods.dcgd``).
- ``method="diana"``: Horvath et al. 2019, Algorithm 1 (``marina.methods.diana``), per bucket:
  1. Delta_r = Q(g_r - h_r) sent; 2. g = h + (1/W) sum_r Delta_r returned to DDP;
  3. h_r += alpha Delta_r, h += alpha (1/W) sum_r Delta_r (alpha = 1/(1 + omega) by default),
  the shifts h_r, h zero at first.
- ``method="ef21"``: Richtarik et al. 2021, Algorithm 2 (``marina.methods.ef21``), per bucket:
  1. c_r = C(g_r - e_r) sent; 2. e_r += c_r, e += (1/W) sum_r c_r; 3. e returned to DDP (the mean
  of the e_r, the estimator). C is contractive (``topk:K``, ``topk:1%``, identity) or an
  unbiased Q used as Q/(1 + omega), as ``marina.methods.ef21``. The first exchange of a bucket
  whose parameters have no estimate yet is dense (e_r = g_r, as marina's EF21 takes g_i^0), so
  e starts at the true mean; the user's optimizer (SGD with momentum, Adam, ...) steps with e.
- ``method="ef21-sgdm"``: Fatkhullin, Tyurin, Richtarik 2023, Algorithm 1 (``marina.methods.ef21``,
  EF21-SGDM), per bucket: 1. v_r = (1 - eta) v_r + eta g_r (eta = ``momentum``); 2. c_r =
  C(v_r - e_r) sent; 3. e_r += c_r, e += (1/W) sum_r c_r; 4. e returned to DDP. The first
  exchange of a fresh layout is dense, v_r = e_r = g_r, as the method's v_i^0 = g_i^0; eta = 1 is
  the ``ef21`` mode. The user's optimizer (plain SGD) then steps with EF21-SGDM's direction.

State across DDP's bucket rebuilds. DDP regroups the parameters into new buckets after the
first iteration (and may again, e.g. with ``static_graph``), so a bucket index names different
parameters over time. The shifts (DIANA), estimates (EF21) and momenta (EF21-SGDM) belong to
parameters: each bucket layout (its parameters, in order) has its own contiguous memory, and a
new layout takes every parameter's slice from the layout that held it before (zeros for
parameters never seen), so a rebuild keeps every value. One state per DDP model (parameters are
recognised by identity).

Agreement. At the first call for every (bucket index, d), the ranks all-gather a fixed-size
fingerprint (d, the gradient dtype, the compressor, the method and its parameters, the seed);
where they differ, every rank raises the same :class:`marina.errors.ConfigError` naming the
difference before any payload is exchanged (mismatched payloads would abort gloo in C++). A
rank whose compressor refuses its gradient (a non-finite entry) sends a payload of 0xFF bytes,
which no message of a fixed-size compressor can be, so every rank raises alike (a
:class:`marina.errors.ValueRangeError` naming the ranks) instead of one rank hanging the others.
Counters: see :class:`CompressionHookState`.

``"randk:P%"`` keeps round(P d / 100) coordinates of a bucket of d entries (at least one; also in
compositions, ``"randk:1%+natural"``), resolved by :func:`marina.torch.optim.compressor_for`, as
the optimizers resolve it; ``"topk:P%"`` likewise.

Why MARINA itself cannot be a hook: MARINA's step is x^{k+1} = x^k - gamma g^k with
g^{k+1} = g^k + Q(grad f_i(x^{k+1}) - grad f_i(x^k)) and, with probability p, the dense
gradient: every worker needs its gradient at two points (or the previous one kept) and the
method decides, from a shared coin, *before* the backward pass whether the round is dense. A
comm hook only sees one bucket of one gradient at a time and must return that bucket's average;
it cannot make the optimizer step with g^k instead of the averaged gradient. MARINA is an
optimizer, not an averaging rule: use the ``marina.torch`` optimizers (issue 12).
"""

# No ``from __future__ import annotations`` here: DDP's register_comm_hook compares the hook's
# annotations with the objects dist.GradBucket and torch.futures.Future[torch.Tensor].

import hashlib
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from marina import compressors
from marina.compressors.base import CompressorSpec
from marina.errors import ConfigError, ValueRangeError
from marina.lazy_rows import DenseRows, RowDifference
from marina.methods.ef21 import contraction_scale
from marina.network.base import has_negative_zero, mean_at_entries
from marina.network.link import DIRECT_MAX_BYTES
from marina.network.torch_distributed import TorchDistributedNetwork
from marina.rng import Randomness
from marina.torch.optim import compressor_for

__all__ = ["CompressionHookConfig", "CompressionHookState", "compression_hook"]

HOOK_METHODS = ("qgd", "diana", "ef21", "ef21-sgdm")
METHOD_PARAMETERS: dict[str, tuple[str, ...]] = {
    "qgd": (),
    "diana": ("alpha",),
    "ef21": (),
    "ef21-sgdm": ("momentum",),
}
"""The parameters each method takes (beyond compressor and seed)."""
ERROR_FEEDBACK = ("ef21", "ef21-sgdm")
"""The methods that take contractive compressors and keep estimates e_r (an unbiased Q is used as
Q/(1 + omega))."""
FINGERPRINT_BYTES = 512
"""Size of the configuration fingerprint every rank contributes at a bucket's first call."""
_POISON = 0xFF  # a rank that fails to compress sends only these bytes (never a message: see
# marina.compressors.base.Compressor.message_bits)


@dataclass(frozen=True)
class CompressionHookConfig:
    """The hook's configuration, checked at construction and fixed afterwards.

    Args:
        compressor: a compressor spec (``"randk:1%"``, ``"randk:10"``, ``"qsgd:4"``, ...): unbiased
            for ``qgd`` and ``diana``; contractive (``"topk:1%"``) or unbiased for ``ef21`` and
            ``ef21-sgdm``.
        method: ``"qgd"``, ``"diana"``, ``"ef21"`` or ``"ef21-sgdm"``.
        seed: keys every random draw (an integer).
        alpha: DIANA's shift stepsize in (0, 1] (default 1/(1 + omega) of the bucket's
            compressor); a parameter of ``diana`` only.
        momentum: EF21-SGDM's eta in (0, 1], the weight of the new gradient in v_r; required by
            ``ef21-sgdm`` (the theory's eta depends on the horizon and the noise), refused by
            the other methods.
    """

    compressor: CompressorSpec = "identity"
    method: str = "qgd"
    seed: int = 0
    alpha: float | None = None
    momentum: float | None = None

    def __post_init__(self) -> None:
        if self.method not in HOOK_METHODS:
            raise ConfigError(f"method == {self.method!r}, must be one of {', '.join(HOOK_METHODS)}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed == {self.seed!r}, must be an integer")
        for name, owner in (("alpha", "diana"), ("momentum", "ef21-sgdm")):
            value = getattr(self, name)
            if value is None:
                continue
            if name not in METHOD_PARAMETERS[self.method]:
                raise ConfigError(
                    f"{name} == {value!r} is a parameter of method={owner!r} only; "
                    f"method={self.method!r} does not take it (leave {name}=None)"
                )
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not ok or not 0 < float(value) <= 1:
                raise ConfigError(f"{name} == {value!r}, must be a number in (0, 1]")
        if self.method == "ef21-sgdm" and self.momentum is None:
            raise ConfigError(
                "method='ef21-sgdm' needs momentum=eta in (0, 1] (the weight of the new gradient in "
                "v_r = (1 - eta) v_r + eta g_r; eta = 1 is method='ef21')"
            )
        self.compressor_for(100, 1)  # a bad spec fails here, not in the first backward pass

    @property
    def parameters(self) -> dict[str, Any]:
        """The method's own parameters, as given (``{"alpha": None}`` for DIANA's default)."""
        return {name: getattr(self, name) for name in METHOD_PARAMETERS[self.method]}

    def compressor_for(self, d: int, world: int) -> compressors.Compressor:
        """The compressor of a bucket of ``d`` entries on ``world`` ranks (``randk:P%`` resolved
        to a K, as the optimizers resolve it: :func:`marina.torch.optim.compressor_for`)."""
        return compressor_for(
            self.compressor, d, world, user=f"the DDP hook's method={self.method!r}", method=self.method
        )

    def fingerprint(self, d: int, dtype: torch.dtype) -> dict[str, str]:
        """What every rank must agree on for a bucket of ``d`` entries of ``dtype``."""
        spec = self.compressor if isinstance(self.compressor, str) else self.compressor.spec
        fields = {"d": str(d), "gradient dtype": str(dtype), "compressor": str(spec), "method": self.method}
        fields.update({name: repr(value) for name, value in self.parameters.items()})
        fields["seed"] = str(self.seed)
        return fields


@dataclass
class _Plan:
    """How a bucket of (index, d) is exchanged: its compressor, the message size when it follows
    from (compressor, d) (None: sizes vary, exchanged by the network), DIANA's alpha, EF21's scale
    (also EF21-SGDM's)."""

    Q: compressors.Compressor
    bits: int | None
    alpha: float
    scale: float


@dataclass
class _Memory:
    """Per-layout memory: DIANA's (h_r, h), EF21's (e_r, e) or EF21-SGDM's (e_r, e, v_r), each (1, d)."""

    local: Tensor
    mean: Tensor
    fresh: bool
    """No parameter of the layout had a value before (EF21's first exchange is dense)."""
    momentum: Tensor | None = None
    """EF21-SGDM's v_r (None for the other methods)."""
    next_momentum: Tensor | None = None
    """EF21-SGDM's next v_r is formed here, and swapped with v_r once the exchange succeeded."""
    clean: bool = False
    """e_r and e are known to hold no -0.0 (then e_r + 0 = e_r and e + 0 = e entry by entry, so a
    sparsifier's round may add its entries alone: :meth:`CompressionHookState._add_entries`)."""
    zeros: Tensor | None = None
    """A (d,) buffer of zeros the entry path sums the messages in (zero again after each use)."""


class CompressionHookState:
    """Configuration, memory and counters of :func:`compression_hook` (one per DDP model).

    Args:
        compressor: a compressor spec (see :class:`CompressionHookConfig`).
        method: ``"qgd"``, ``"diana"``, ``"ef21"`` or ``"ef21-sgdm"``.
        seed: keys every random draw.
        alpha: DIANA's shift stepsize (``diana`` only; default 1/(1 + omega)).
        group: the process group (default: the default group, as DDP's).
        momentum: EF21-SGDM's eta in (0, 1] (``ef21-sgdm`` only, and required there).

    Counters (equal on every rank; 0 before the first backward pass):
        rounds: backward passes done (the round advances after the last bucket).
        messages: messages each rank sent (one per bucket per backward pass).
        bits_up: bits sent per worker (all ranks' message bits / W), the meaning of the
            ``marina.torch`` optimizers' ``bits_up`` (the paper's #bits/n).
        bits_up_all_ranks: the exact bits of every rank's messages, all ranks together.
        wire_bytes: bytes this rank put on links: W - 1 copies of its padded payload per bucket,
            and of the fingerprint at a bucket's first call (0 on one rank).
    """

    def __init__(
        self,
        compressor: CompressorSpec = "identity",
        method: str = "qgd",
        seed: int = 0,
        alpha: float | None = None,
        group: "dist.ProcessGroup | None" = None,
        momentum: float | None = None,
    ) -> None:
        self.config = CompressionHookConfig(compressor, method, seed, alpha, momentum)
        if group is not None and not isinstance(group, dist.ProcessGroup):
            raise ConfigError(f"group == {group!r}, must be a torch.distributed.ProcessGroup or None")
        self.group = group
        self.rounds = 0
        self.messages = 0
        self.bits_up_all_ranks = 0
        self.wire_bytes = 0
        self._world = 0
        self._rank = 0
        self._comm_device = torch.device("cpu")
        self._direct = False
        self._plans: dict[tuple[int, int], _Plan] = {}
        self._memory: dict[tuple[int, ...], _Memory] = {}
        self._owner: dict[int, tuple[tuple[int, ...], int]] = {}  # id(param) -> (layout, offset)
        self._network: TorchDistributedNetwork | None = None

    compressor = property(lambda self: self.config.compressor, doc="The compressor spec (fixed).")
    method = property(lambda self: self.config.method, doc="The method (fixed).")
    seed = property(lambda self: self.config.seed, doc="The seed (fixed).")
    alpha = property(lambda self: self.config.alpha, doc="DIANA's alpha as given (fixed).")
    momentum = property(lambda self: self.config.momentum, doc="EF21-SGDM's eta (fixed).")

    @property
    def bits_up(self) -> float:
        """Bits sent per worker (all ranks' bits / W), as the optimizers' ``bits_up``."""
        return self.bits_up_all_ranks / self._world if self._world else 0.0

    def compressor_for(self, d: int) -> compressors.Compressor:
        """The compressor of a bucket of ``d`` entries (see :meth:`CompressionHookConfig.compressor_for`)."""
        return self.config.compressor_for(d, self._world or 1)

    def __repr__(self) -> str:
        c = self.config
        params = "".join(f", {k}={v!r}" for k, v in c.parameters.items())
        return f"CompressionHookState({c.compressor!r}, {c.method!r}, seed={c.seed}{params})"

    # -- setup, at first sight of a bucket ------------------------------------------------------
    def _start(self) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise ConfigError("compression_hook needs an initialised torch.distributed process group")
        self._world = int(dist.get_world_size(self.group))
        self._rank = int(dist.get_rank(self.group))
        backend = str(dist.get_backend(self.group))
        if backend == "nccl":
            self._comm_device = torch.device("cuda", torch.cuda.current_device())
        self._direct = backend == "gloo" and self._world > 1

    def _plan(self, index: int, d: int, buffer: Tensor) -> _Plan:
        plan = self._plans.get((index, d))
        if plan is None:
            if not self._world:
                self._start()
            self._agree(index, d, buffer.dtype)
            Q = self.compressor_for(d)
            sizes = Q.message_bits(d, torch.arange(self._world)) if Q.fixed_size else None
            uniform = sizes is not None and bool((sizes == sizes[0]).all())
            alpha = self.config.alpha
            plan = _Plan(
                Q,
                int(sizes[0]) if uniform else None,
                float(alpha) if alpha is not None else (1.0 / (1.0 + Q.omega(d)) if Q.unbiased else 1.0),
                contraction_scale(Q, d) if self.config.method in ERROR_FEEDBACK else 1.0,
            )
            self._plans[(index, d)] = plan
        return plan

    def _agree(self, index: int, d: int, dtype: torch.dtype) -> None:
        """Every rank's fingerprint of bucket ``index`` (one all-gather of FINGERPRINT_BYTES);
        the same ConfigError on every rank naming what differs."""
        mine = self.config.fingerprint(d, dtype)
        text = "\n".join(f"{k}={_short(v)}" for k, v in mine.items()).encode("utf-8")
        raw = torch.zeros(FINGERPRINT_BYTES, dtype=torch.uint8)
        raw[: len(text)] = torch.frombuffer(bytearray(text), dtype=torch.uint8)
        out, work = self._all_gather(raw.to(self._comm_device))
        work.wait()
        self.wire_bytes += (self._world - 1) * FINGERPRINT_BYTES
        ranks = []
        for row in out.cpu().view(self._world, FINGERPRINT_BYTES):
            fields = bytes(row.tolist()).rstrip(b"\0").decode("utf-8", "replace").split("\n")
            ranks.append(dict(f.partition("=")[::2] for f in fields))
        keys = list(dict.fromkeys(key for fp in ranks for key in fp))  # the same order on every rank
        differ = [
            f"{key}: " + ", ".join(f"rank {r} has {fp.get(key, '(none)')}" for r, fp in enumerate(ranks))
            for key in keys
            if len({fp.get(key) for fp in ranks}) > 1
        ]
        if differ:
            raise ConfigError(
                f"compression_hook: the ranks disagree at DDP bucket {index}; "
                + "; ".join(differ)
                + ". Every rank must register the same CompressionHookState on the same model."
            )

    def _layout_memory(self, params: list[Tensor], d: int, like: Tensor) -> _Memory:
        """The memory of the bucket holding ``params`` in this order: a new layout (DDP rebuilt
        its buckets) takes each parameter's slice from the layout that held it before."""
        key = tuple(id(p) for p in params)
        memory = self._memory.get(key)
        if memory is not None:
            return memory
        sizes = [int(p.numel()) for p in params]
        if sum(sizes) != d:
            raise ConfigError(
                f"compression_hook: a DDP bucket of {d} entries holds parameters of {sum(sizes)} "
                "entries in all; this layout is not supported"
            )
        momentum = self.config.method == "ef21-sgdm"
        zeros = torch.zeros(3 if momentum else 2, d, dtype=like.dtype, device=like.device)
        memory = _Memory(zeros[0:1], zeros[1:2], fresh=True, momentum=zeros[2:3] if momentum else None)
        at = 0
        for p, n in zip(params, sizes):
            before = self._owner.get(id(p))
            if before is not None:
                old, start = self._memory[before[0]], before[1]
                memory.local[:, at : at + n] = old.local[:, start : start + n]
                memory.mean[:, at : at + n] = old.mean[:, start : start + n]
                if memory.momentum is not None and old.momentum is not None:
                    memory.momentum[:, at : at + n] = old.momentum[:, start : start + n]
                memory.fresh = False
            self._owner[id(p)] = (key, at)
            at += n
        self._memory[key] = memory
        held = {layout for layout, _ in self._owner.values()}
        for layout in [k for k in self._memory if k not in held]:
            del self._memory[layout]  # every parameter moved to another layout
        return memory

    # -- the exchange -----------------------------------------------------------------------------
    def _all_gather(self, src: Tensor) -> tuple[Tensor, Any]:
        """Launch the all-gather of ``src`` (uint8, the same size on every rank), async: the
        (W * len,) output and the work. Small chunks on gloo go by a direct exchange, as
        :meth:`marina.network.TorchDistributedNetwork._all_gather` sends them."""
        W = self._world
        out = torch.empty(W * src.numel(), dtype=src.dtype, device=src.device)
        if self._direct and src.numel() <= DIRECT_MAX_BYTES:
            work = dist.all_to_all(
                list(out.view(W, -1).unbind(0)), [src] * W, group=self.group, async_op=True
            )
        else:
            gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
            work = gather(out, src, group=self.group, async_op=True)
        return out, work

    def _exchange(
        self, plan: _Plan, X: Tensor, stream: str, round: int, want_local: bool, entries: bool = False
    ) -> torch.futures.Future:
        """Steps 1-2 of every method: compress and send ``X`` (1, d); a future of
        (mean of the W decompressed messages, this rank's decompressed message or None), or with
        ``entries`` (a sparsifier, sizes known) of the messages as entries: ((indices, values) of
        all W messages, (W, K) each, in rank order; this rank's (indices, values), (1, K))."""
        Q, bits, W, d = plan.Q, plan.bits, self._world, X.shape[1]
        if bits is None:  # sizes vary: the network's size exchange, synchronously
            if self._network is None:
                self._network = TorchDistributedNetwork(
                    W, self.config.seed, device=X.device, group=self.group
                )
            net = self._network
            before_bits, before_wire = net.bits_up, net.wire_bytes
            got = (
                net.aggregate_with_local(Q, X, round, stream=stream)
                if want_local
                else (net.aggregate_mean(Q, X, round, stream=stream), None)
            )
            self.bits_up_all_ranks += net.bits_up - before_bits
            self.wire_bytes += (net.wire_bytes - before_wire) // W
            done: torch.futures.Future = torch.futures.Future()
            done.set_result(got)
            return done
        L = (bits + 7) // 8
        error: BaseException | None = None
        try:
            rng = Randomness(self.config.seed, stream, round, [self._rank], X.device)
            rows, _ = Q.pack_compressed(X, rng)
            mine = rows[0, :L].to(self._comm_device)
        except Exception as err:  # noqa: BLE001 - every rank learns of it from the payloads
            error = err
            mine = torch.full((L,), _POISON, dtype=torch.uint8, device=self._comm_device)
        out, work = self._all_gather(mine)
        self.bits_up_all_ranks += W * bits
        self.wire_bytes += (W - 1) * L

        def decode(_: torch.futures.Future) -> tuple[Tensor, Tensor | None]:
            rows = out.view(W, L)
            _check_poison(rows, Q.spec, error)
            ids = torch.arange(W, device=rows.device)
            lengths = torch.full((W,), L, dtype=torch.int64, device=rows.device)

            def receiver(senders: Tensor) -> Randomness | None:  # regenerates the senders' draws
                return (
                    Randomness(self.config.seed, stream, round, senders, rows.device)
                    if Q.regenerates
                    else None
                )

            if entries:
                idx, values = Q.packed_entries(rows, lengths, d, ids, X.dtype, receiver(ids))
                r = slice(self._rank, self._rank + 1)
                return (idx, values), (idx[r], values[r])
            mean = Q.sum_packed(rows, lengths, d, ids, X.dtype, receiver(ids)).to(X.device) / W
            if not want_local:
                return mean, None
            r = slice(self._rank, self._rank + 1)  # this rank's own message, decoded alone
            back = Q.unpack_rows(
                rows[r], lengths[r], d=d, worker_ids=ids[r], dtype=X.dtype, rng=receiver(ids[r])
            )
            return mean, Q.decompress(back).to(X.device)

        return work.get_future().then(decode)

    def _communicate(self, bucket: Any) -> torch.futures.Future:
        buffer = bucket.buffer()
        index, d = int(bucket.index()), int(buffer.numel())
        plan = self._plan(index, d, buffer)
        method = self.config.method
        memory = None if method == "qgd" else self._layout_memory(list(bucket.parameters()), d, buffer)
        round, stream = self.rounds, f"ddp-bucket{index}"
        if bucket.is_last():
            self.rounds += 1
        self.messages += 1
        X = buffer.detach().view(1, d)
        out = X  # the bucket's buffer receives the result, as DDP's allreduce hook does

        if method == "qgd":
            by_entries = self._by_entries(plan, X)

            # 1. Q(g_r) sent; 2. g = (1/W) sum_r Q(g_r) returned
            def finish(fut: torch.futures.Future) -> Tensor:
                if not by_entries:
                    return out.copy_(fut.value()[0]).view_as(buffer)
                # the messages' entries summed in rank order into zeros (as sum_packed), / W
                (idx, values), _ = fut.value()
                at, flat = idx.reshape(-1), out.view(-1)
                flat.zero_().index_add_(0, at, values.reshape(-1))
                flat.index_copy_(0, at, flat.index_select(0, at).div_(self._world))
                return out.view_as(buffer)

            return self._exchange(plan, X, stream, round, False, entries=by_entries).then(finish)

        assert memory is not None
        if method == "diana":
            alpha = plan.alpha
            by_entries = memory.clean and self._by_entries(plan, X)
            # 1. Delta_r = Q(g_r - h_r), sent (lazy: a sparsifier reads its K entries of X and h_r)
            sent = RowDifference(DenseRows(X), memory.local)

            def finish(fut: torch.futures.Future) -> Tensor:
                if by_entries:
                    self._shift_entries(memory, *fut.value(), alpha, out)
                    return out.view_as(buffer)
                mean, local = fut.value()
                # 2. g = h + (1/W) sum_r Delta_r, returned to DDP
                torch.add(memory.mean, mean, out=out)
                # 3. h_r += alpha Delta_r, h += alpha (1/W) sum_r Delta_r
                memory.local.add_(local, alpha=alpha)
                memory.mean.add_(mean, alpha=alpha)
                memory.clean = not (has_negative_zero(memory.local) or has_negative_zero(memory.mean))
                return out.view_as(buffer)

            return self._exchange(plan, sent, stream, round, True, entries=by_entries).then(finish)

        # EF21 and EF21-SGDM. 0. A layout with no estimate yet sends the gradient dense
        # (e_r = g_r, and v_r = g_r)
        dense = memory.fresh
        memory.fresh = False
        if dense:
            plan = _Plan(compressors.get("identity"), 32 * d, 1.0, 1.0)
        scale = plan.scale
        # EF21-SGDM: 1. v_r = (1 - eta) v_r + eta g_r, in a spare buffer kept once the exchange succeeded
        tracked = X  # what e_r tracks: g_r (EF21), v_r (EF21-SGDM)
        if memory.momentum is not None and not dense:
            eta = float(self.config.momentum)  # type: ignore[arg-type] - required for ef21-sgdm
            if memory.next_momentum is None:
                memory.next_momentum = torch.empty_like(memory.momentum)
            # (the roundings of torch.add(v_r * (1 - eta), g_r, alpha=eta), into the spare buffer)
            tracked = torch.mul(memory.momentum, 1.0 - eta, out=memory.next_momentum).add_(X, alpha=eta)
        # c_r = C(tracked - e_r), sent (C = Q/(1 + omega) for an unbiased Q: both ends scale;
        # lazy: TopK writes its magnitudes into its scratch row, a sparsifier reads its entries)
        sent = RowDifference(DenseRows(tracked), memory.local)

        by_entries = memory.clean and not dense and self._by_entries(plan, X)

        def finish_ef21(fut: torch.futures.Future) -> Tensor:
            if memory.momentum is not None and tracked is memory.next_momentum:
                memory.momentum, memory.next_momentum = tracked, memory.momentum
            elif memory.momentum is not None:  # the dense first exchange: v_r = g_r
                memory.momentum.copy_(tracked)
            if by_entries:
                self._add_entries(memory, *fut.value(), scale)
            else:
                mean, local = fut.value()
                if scale != 1.0:
                    mean, local = mean * scale, local * scale
                # e_r += c_r, e += (1/W) sum_r c_r
                memory.local.add_(local)
                memory.mean.add_(mean)
                memory.clean = not (has_negative_zero(memory.local) or has_negative_zero(memory.mean))
            # e, the mean of the e_r, returned to DDP
            return out.copy_(memory.mean).view_as(buffer)

        return self._exchange(plan, sent, stream, round, True, entries=by_entries).then(finish_ef21)

    def _by_entries(self, plan: _Plan, X: Tensor) -> bool:
        """Whether the round's messages can be read as entries: a sparsifier's, of known size,
        summed on the CPU (where ``sum_packed`` adds entries in order)."""
        cpu = X.device.type == "cpu" and self._comm_device.type == "cpu"
        return cpu and plan.bits is not None and hasattr(plan.Q, "packed_entries")

    def _mean_at(self, memory: _Memory, idx: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """(the messages' entries, repeated where messages share one; the mean message there):
        the entries summed in rank order into the memory's buffer of zeros (as ``sum_packed``),
        divided by W, the buffer zeroed again."""
        if memory.zeros is None or memory.zeros.numel() != memory.mean.numel():
            memory.zeros = torch.zeros_like(memory.mean.view(-1))
        return mean_at_entries(memory.zeros, idx, values, self._world)

    def _shift_entries(
        self,
        memory: _Memory,
        everyone: tuple[Tensor, Tensor],
        mine: tuple[Tensor, Tensor],
        alpha: float,
        out: Tensor,
    ) -> None:
        """DIANA's steps 2-3 at the entries the messages hold, bit for bit the dense updates when
        h_r and h hold no -0.0: out = h + mean (h elsewhere), h_r += alpha Delta_r and
        h += alpha mean with add_'s fused rounding."""
        at, mean = self._mean_at(memory, *everyone)
        h, g = memory.mean.view(-1), out.view(-1)
        # 2. g = h + (1/W) sum_r Delta_r
        g.copy_(h).index_copy_(0, at, torch.add(h.index_select(0, at), mean))
        # 3. h_r += alpha Delta_r, h += alpha (1/W) sum_r Delta_r
        local, own_at = memory.local.view(-1), mine[0].reshape(-1)
        local.index_copy_(0, own_at, local.index_select(0, own_at).add_(mine[1].reshape(-1), alpha=alpha))
        h.index_copy_(0, at, h.index_select(0, at).add_(mean, alpha=alpha))

    def _add_entries(
        self, memory: _Memory, everyone: tuple[Tensor, Tensor], mine: tuple[Tensor, Tensor], scale: float
    ) -> None:
        """EF21's e_r += c_r and e += (1/W) sum_r c_r at the entries the messages hold, bit for
        bit the dense updates when e_r and e hold no -0.0 (elsewhere both add 0): the messages
        summed entry by entry in rank order into zeros (as ``sum_packed``), divided by W."""
        at, mean = self._mean_at(memory, *everyone)
        flat = memory.mean.view(-1)
        own_at, own = mine[0].reshape(-1), mine[1].reshape(-1)
        if scale != 1.0:
            mean, own = mean * scale, own * scale
        local = memory.local.view(-1)
        local.index_copy_(0, own_at, torch.add(local.index_select(0, own_at), own))
        # repeated entries (messages that share one) write the same value twice
        flat.index_copy_(0, at, torch.add(flat.index_select(0, at), mean))


def _short(value: str, limit: int = 64) -> str:
    """``value`` for the fingerprint: as it is up to ``limit`` characters, else a prefix and a
    digest (so every fingerprint fits FINGERPRINT_BYTES and still tells values apart)."""
    value = value.replace("\n", " ")
    if len(value) <= limit:
        return value
    return value[:40] + "...sha256:" + hashlib.sha256(value.encode("utf-8")).hexdigest()[:12]


def _check_poison(rows: Tensor, spec: str, error: BaseException | None) -> None:
    """Raise alike on every rank when some rank failed to compress (its row is all 0xFF)."""
    if error is None and not bool((rows[:, 0] == _POISON).any()):
        return
    failed = [r for r in range(rows.shape[0]) if bool((rows[r] == _POISON).all())]
    if not failed:
        return  # a message may begin with 0xFF; only a whole row of it is the failure pattern
    if isinstance(error, ValueRangeError) or error is None:
        raise ValueRangeError(
            f"{spec}: the gradients of rank(s) {failed} could not be compressed (non-finite or out "
            "of the wire range) in the DDP hook; every rank stops alike"
            + (f" ({error})" if error is not None else ""),
            non_finite=getattr(error, "non_finite", False),
        )
    raise ConfigError(f"{spec}: rank(s) {failed} failed to compress in the DDP hook ({error})") from error


def compression_hook(
    state: CompressionHookState, bucket: dist.GradBucket
) -> torch.futures.Future[torch.Tensor]:
    """DDP comm hook: the bucket's compressed average (QGD), DIANA's shifted estimate, or EF21's
    (EF21-SGDM's) error-feedback estimate (see the module doc), returned as the exchange's future.

    Register it as ``ddp.register_comm_hook(state, compression_hook)``; DDP then calls it once per
    bucket of every backward pass.

    Args:
        state: the :class:`CompressionHookState` of this DDP model (configuration, memory, counters).
        bucket: the gradient bucket DDP hands over (its flat buffer is the d entries compressed).

    Returns:
        A future of the bucket's new gradient, the same on every rank.

    Raises:
        ConfigError: ``state`` is not a :class:`CompressionHookState`.
    """
    if not isinstance(state, CompressionHookState):
        raise ConfigError(
            f"compression_hook's state is a {type(state).__name__}, not a CompressionHookState: "
            "register it as ddp.register_comm_hook(marina.torch.CompressionHookState(compressor=..., "
            "method=...), marina.torch.compression_hook)"
        )
    return state._communicate(bucket)
