"""A DDP communication hook: compressed gradient averaging (QGD or DIANA) for standard DDP.

    ddp.register_comm_hook(
        marina.torch.CompressionHookState(compressor="randk:1%", method="diana", seed=0),
        marina.torch.compression_hook,
    )

Every bucket of every backward pass is one aggregation of :mod:`marina.network.torch_distributed`
(one worker per rank, rank r is worker r; one all-gather of the packed messages where sizes
follow from the compressor, gloo or NCCL), with the keyed randomness (seed, stream
``ddp-bucket<i>``, round, rank): the same draws on every run, nothing global.

- ``method="qgd"``: the bucket's gradient becomes (1/W) sum_r Q(g_r) (quantized GD, Khirirat et
  al. 2018; ``marina.methods.dcgd``).
- ``method="diana"``: Horvath et al. 2019, Algorithm 1 (``marina.methods.diana``), per bucket:
  1. Delta_r = Q(g_r - h_r) sent; 2. g = h + (1/W) sum_r Delta_r returned to DDP;
  3. h_r += alpha Delta_r, h += alpha (1/W) sum_r Delta_r (alpha = 1/(1 + omega) by default),
  the shifts h_r, h kept per bucket in the state (zeros at first).

The compressor must be unbiased; ``"randk:P%"`` keeps round(P d / 100) coordinates of a bucket
of d entries (at least one; also in compositions, ``"randk:1%+natural"``), as the optimizers do.
Counters: ``state.bits_up`` (exact bits of every rank's messages, all ranks together, as
``Network.bits_up``), ``state.messages``, ``state.rounds`` (backward passes: the round advances
after the last bucket).

Why MARINA itself cannot be a hook: MARINA's step is x^{k+1} = x^k - gamma g^k with
g^{k+1} = g^k + Q(grad f_i(x^{k+1}) - grad f_i(x^k)) and, with probability p, the dense
gradient: every worker needs its gradient at two points (or the previous one kept) and the
method decides, from a shared coin, *before* the backward pass whether the round is dense. A
comm hook only sees one bucket of one gradient at a time and must return that bucket's average;
it cannot make the optimizer step with g^k instead of the averaged gradient. MARINA is an
optimizer, not an averaging rule: use the ``marina.torch`` optimizers (issue 12).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from marina.errors import ConfigError
from marina.network.torch_distributed import TorchDistributedNetwork
from marina.torch.optim import compressor_for

__all__ = ["CompressionHookState", "compression_hook"]

HOOK_METHODS = ("qgd", "diana")


@dataclass
class CompressionHookState:
    """Configuration and per-bucket memory of :func:`compression_hook`.

    Args:
        compressor: an unbiased compressor spec (``"randk:10"``, ``"randk:1%"``, ``"qsgd:4"``, ...).
        method: ``"qgd"`` or ``"diana"``.
        seed: keys every random draw.
        alpha: DIANA's shift stepsize (default 1/(1 + omega) of the bucket's compressor).
        group: the process group (default: DDP's default group).
    """

    compressor: str = "identity"
    method: str = "qgd"
    seed: int = 0
    alpha: float | None = None
    group: Any = None
    rounds: int = 0
    bits_up: int = 0
    messages: int = 0
    shifts: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)
    _network: TorchDistributedNetwork | None = None
    _compressors: dict[tuple[int, int], Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in HOOK_METHODS:
            raise ConfigError(f"method == {self.method!r}, must be one of {', '.join(HOOK_METHODS)}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed == {self.seed!r}, must be an integer")
        if self.alpha is not None and not 0 < float(self.alpha) <= 1:
            raise ConfigError(f"alpha == {self.alpha!r}, must be in (0, 1]")
        self.compressor_for(100)  # a bad spec fails here, not in the first backward pass

    def compressor_for(self, d: int) -> Any:
        """The compressor of a bucket of ``d`` entries (``randk:P%`` resolved to a K, as the
        optimizers resolve it: :func:`marina.torch.optim.compressor_for`)."""
        return compressor_for(self.compressor, d, None, user="the DDP hook and its methods (qgd, diana)")

    def network(self, device: torch.device) -> TorchDistributedNetwork:
        if self._network is None:
            world = dist.get_world_size(self.group)
            self._network = TorchDistributedNetwork(world, self.seed, device=device, group=self.group)
        return self._network


def compression_hook(state: CompressionHookState, bucket: Any) -> torch.futures.Future:
    """DDP comm hook: the bucket's compressed average (QGD) or DIANA's shifted estimate."""
    buffer = bucket.buffer()
    index, d = int(bucket.index()), int(buffer.numel())
    net = state.network(buffer.device)
    Q = state._compressors.get((index, d))
    if Q is None:
        Q = state._compressors[(index, d)] = state.compressor_for(d)
    X = buffer.detach().reshape(1, d)
    before = net.bits_up
    stream = f"ddp-bucket{index}"
    if state.method == "qgd":
        out = net.aggregate(Q, X, state.rounds, stream=stream)
    else:
        if index not in state.shifts:
            zero = torch.zeros(d, dtype=buffer.dtype, device=buffer.device)
            state.shifts[index] = (zero, zero.clone())
        h_local, h = state.shifts[index]
        # 1. Delta_r = Q(g_r - h_r), sent
        mean, local = net.aggregate(Q, X - h_local, state.rounds, stream=stream, return_local=True)
        # 2. g = h + mean of the Delta_r
        out = h + mean
        # 3. h_r += alpha Delta_r, h += alpha mean Delta
        alpha = state.alpha if state.alpha is not None else 1.0 / (1.0 + Q.omega(d))
        state.shifts[index] = (h_local + alpha * local[0], h + alpha * mean)
    state.bits_up += net.bits_up - before
    state.messages += net.n
    if bucket.is_last():
        state.rounds += 1
    fut: torch.futures.Future = torch.futures.Future()
    fut.set_result(out.to(buffer.dtype).reshape_as(buffer))
    return fut
