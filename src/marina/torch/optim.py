"""MARINA, VR-MARINA, PP-MARINA, DIANA and QGD as ``torch.optim.Optimizer`` subclasses.

Each optimizer is a thin layer over one :mod:`marina.methods` method, run on a
:class:`marina.network.Network` (this rank is one worker of a torch.distributed group, or the
only worker without one) and on a :class:`marina.torch.closure.ClosureProblem` (the user's
parameters and closure). The algorithm lines, the keyed coins, the compressors and the packed
payloads on the wire are those of ``marina.run`` and ``--backend torch-distributed``.

Steps and rounds. ``step(closure)`` follows ``torch.optim.LBFGS``: the closure zeroes the grads,
computes the loss of the current batch, calls backward and returns the loss; ``step`` returns
the loss of its first evaluation (at the current parameters). Parameters must not be wrapped
in ``DistributedDataParallel`` (the optimizer does the communication).

- MARINA family (the estimator g^k is built from gradients at x^k, then x^{k+1} = x^k - gamma
  g^k): step 0 is line 2 (g^0 from the closure at x^0, dense); step t >= 1 is the loop body of
  round k = t - 1 (line 4 coin c_k, lines 7-10: the closure at x^{k+1} = the current
  parameters). After every step the parameters hold the next point x - lr g, so step t is one
  SGD-like step: gradients at the current parameters, then a move by the current lr.
- DIANA and QGD: step t is round k = t (closure at x^k = the current parameters, then the move).

The coin c_k of the next step is :attr:`coin` (True on step 0), known before the step, so the
loop feeds the large batch (online VR-MARINA) or a full local pass (MARINA, finite-sum
VR-MARINA) when it is True and the small batch otherwise.

Stepsize. ``param_groups[i]["lr"]`` is gamma, read at every step (schedulers work); groups with
different lrs give a per-coordinate stepsize. Gradient clipping goes inside the closure, after
``backward()`` (VR-MARINA clips each of its two gradients). Mixed precision: ``torch.autocast``
inside the closure works (bfloat16 needs no loss scaling). ``GradScaler.step`` refuses closures
and its ``unscale_`` runs once per step, while VR-MARINA calls the closure twice, so for float16
scale inside the closure, in this order: autocast forward, ``(loss * S).backward()``, divide every
``p.grad`` by S, clip, return the loss; a power-of-two S gives exactly the unscaled gradients
(tested). There is no skipped step on overflow: a non-finite gradient raises
:class:`marina.errors.ValueRangeError` in the compressor (lower S).

Checkpoints. ``state_dict()`` is the standard ``{"state", "param_groups"}`` form: per parameter,
its slice of every state field (g^k, x^k, the last local gradients, DIANA's shifts, ...), and
under the first parameter a "marina" entry with the round counter and the bit counters; the
keyed randomness has no state beyond the round. Resuming (model and optimizer state dicts, and
``torch.get_rng_state`` when the closure draws random numbers) continues bit for bit.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from marina import compressors, methods
from marina.errors import ConfigError
from marina.lazy_rows import materialize
from marina.network.base import Network
from marina.network.simulated import SimulatedNetwork
from marina.network.torch_distributed import TorchDistributedNetwork
from marina.torch.closure import ClosureProblem, ClosureRows

__all__ = ["MarinaOptimizer", "MARINA", "VRMARINA", "PPMARINA", "DIANA", "QGD", "compressor_for"]

APPLIED_LR = "applied_lr"
"""param_groups key: the lr of the move that produced the current parameters (MARINA family)."""


def compressor_for(
    spec: Any, d: int, n: int | None, contractive: bool = False, user: str = "the marina.torch optimizers"
) -> compressors.Compressor:
    """A marina compressor for d parameters and n workers; ``"randk:1%"`` means K = max(1, round(d/100))
    (also in ``"randk:1%+natural"``). The optimizers and the DDP hook (a bucket of d entries)
    resolve their specs here.

    Unbiased ones only, unless ``contractive`` (the error-feedback methods): then biased
    contractive ones (``topk:K``) too. ``user`` names who needs it in the errors."""
    head, plus, tail = spec.partition("+") if isinstance(spec, str) else ("", "", "")
    if head.strip().endswith("%"):  # also the RandK of a composition, "randk:1%+natural"
        name, _, arg = head.strip().partition(":")
        try:
            frac = float(arg[:-1]) / 100.0
        except ValueError:
            raise ConfigError(f"compressor {spec!r}: the percentage {arg!r} is not a number") from None
        if not 0.0 < frac <= 1.0:
            raise ConfigError(f"compressor {spec!r}: a fraction of d must be in (0%, 100%]")
        if name.strip().lower() not in ("randk", "topk"):
            raise ConfigError(f"compressor {spec!r}: only randk and topk take K as a fraction of d")
        spec = f"{name}:{max(1, round(frac * d))}" + plus + tail
    Q = compressors.get(spec, workers=n) if isinstance(spec, str) else compressors.get(spec)
    if not getattr(Q, "unbiased", False) and not (contractive and Q.contractive):
        raise ConfigError(
            f"compressor {Q.spec!r} is biased; {user} need an unbiased one"
            + (" or a contractive one (topk:K)" if contractive else " (EF21 takes topk:K)")
        )
    return Q


def default_local_size(batch_size: Any, dense_batch_size: Any = None) -> int:
    """m_i when the loop does not declare it, for a method fed minibatches of b' = ``batch_size``:
    max(b', b) with b = ``dense_batch_size``, or 10 b' (m only bounds b' and sets b's default);
    invalid values are left to the parameter checks."""
    bp = batch_size if isinstance(batch_size, int) and batch_size > 0 else 1
    return max(bp, dense_batch_size if isinstance(dense_batch_size, int) else 10 * bp)


def _network(seed: int, device: torch.device, process_group: Any) -> Network:
    """This rank as one worker of the group (default group when initialised), else one worker alone."""
    if process_group is not None or (dist.is_available() and dist.is_initialized()):
        return TorchDistributedNetwork(
            int(dist.get_world_size(process_group)), seed, device=device, group=process_group
        )
    return SimulatedNetwork(1, seed, device=device)


class MarinaOptimizer(torch.optim.Optimizer):
    """The common layer: a marina method on this rank's worker (see the module doc).

    Counters (equal on every rank): :attr:`bits_up` (the paper's #bits/n, the ``bits_up``
    history column of ``marina.run``), :attr:`bits_down`, :attr:`rounds`, :attr:`oracle_calls`,
    :attr:`wire_bytes` (0 without torch.distributed). ``method_params`` are the parameters used.
    """

    method_name: ClassVar[str]
    estimator_first: ClassVar[bool] = True

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        compressor: Any,
        lr: float,
        seed: int,
        process_group: Any,
        module: nn.Module | None,
        local_size: int | None,
        overrides: dict[str, Any],
    ) -> None:
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0 or not math.isfinite(lr):
            raise ConfigError(f"lr == {lr!r}, must be a finite number > 0")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"seed == {seed!r}, must be an integer")
        if local_size is not None and (
            isinstance(local_size, bool) or not isinstance(local_size, int) or local_size < 1
        ):
            raise ConfigError(f"local_size == {local_size!r}, must be an integer >= 1")
        super().__init__(params, {"lr": float(lr)})
        flat = [p for group in self.param_groups for p in group["params"]]
        for group in self.param_groups:
            if not group["lr"] > 0:
                raise ConfigError(f"a param group has lr == {group['lr']!r}, must be > 0")
        probe = ClosureProblem(flat, 1, 1, torch.zeros(1, dtype=torch.int64))  # checks dtype/device
        self.net = _network(seed, probe.device, process_group)
        self.problem = ClosureProblem(flat, local_size or 1, self.net.n, self.net.worker_ids, module)
        cls = methods.get(self.method_name)
        self.compressor = compressor_for(compressor, self.problem.dim, self.net.n, cls.takes_contractive)
        setting = methods.Setting.build(self.problem, self.net, self.compressor, 1)
        given = {"stepsize": float(lr), **{k: v for k, v in overrides.items() if v is not None}}
        self.method_params = cls.resolve(setting, given)
        self.method = cls(self.problem, self.net, self.compressor, self.method_params)
        self._params = flat

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if hasattr(self, "method"):
            raise ConfigError(
                "marina.torch optimizers fix their parameters at construction: no add_param_group"
            )
        super().add_param_group(param_group)

    # -- stepsize -------------------------------------------------------------------------------
    def _gamma(self, key: str = "lr") -> float | Tensor:
        """The groups' ``key`` lr: one float when all agree, else a per-coordinate (d,) tensor."""
        lrs = [float(group[key]) for group in self.param_groups]
        if all(lr == lrs[0] for lr in lrs):
            return lrs[0]
        parts = [
            torch.full((p.numel(),), float(group[key]), dtype=self.problem.dtype, device=self.problem.device)
            for group in self.param_groups
            for p in group["params"]
        ]
        return torch.cat(parts)

    # -- the step ---------------------------------------------------------------------------------
    @property
    def started(self) -> bool:
        return self.method.state is not None

    @property
    def coin(self) -> bool | None:
        """c_k of the next step (True: dense round, feed the large batch / full pass); None
        for methods without a coin (DIANA, QGD)."""
        if not self.estimator_first:
            return None
        if not self.started:
            return True  # line 2: g^0 is dense
        return self.method._coin("coin", self.method.p, self.method.k)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201 - torch.optim.Optimizer's signature
        """One communication round (see the module doc); returns the closure's loss (None when
        this rank evaluated nothing, e.g. a PP-MARINA client not drawn)."""
        method, problem = self.method, self.problem
        problem.begin_step(closure)
        try:
            if not self.started:
                method.start(problem.flat_params())  # MARINA family: line 2, g^0 at x^0
                if not self.estimator_first:
                    method.gamma = self._gamma()
                    method.step()
            else:
                method.gamma = self._gamma(APPLIED_LR if self.estimator_first else "lr")
                method.step()
            if self.estimator_first:
                # line 7 of the next round, applied now: the parameters hold x^{k+1} = x^k - gamma g^k
                problem.write(method.state.x - self._gamma() * method.state.g)
                for group in self.param_groups:
                    group[APPLIED_LR] = group["lr"]
            else:
                problem.write(method.state.x)
            return problem.loss_value
        finally:
            problem.end_step()

    # -- counters ---------------------------------------------------------------------------------
    @property
    def bits_up(self) -> float:
        """Bits sent by all workers divided by n (the paper's #bits/n), since step 0."""
        return self.net.bits_up / self.net.n

    @property
    def bits_down(self) -> int:
        """Bits of the server broadcasts accounted (each counted once)."""
        return self.net.bits_down

    @property
    def rounds(self) -> int:
        """Communication rounds done (= steps taken; step 0 of the MARINA family is the g^0 round)."""
        if not self.started:
            return 0
        return self.method.k + (1 if self.estimator_first else 0)

    @property
    def oracle_calls(self) -> float:
        """Component gradients per worker as marina counts them (with ``local_size`` = m_i)."""
        return float(self.method.oracle_calls)

    @property
    def wire_bytes(self) -> int:
        """Bytes all ranks together put on links (torch.distributed; 0 alone)."""
        return int(getattr(self.net, "wire_bytes", 0))

    # -- checkpoints ------------------------------------------------------------------------------
    def _fields(self) -> list[dataclasses.Field]:
        return list(dataclasses.fields(self.method.State))

    def state_dict(self) -> dict[str, Any]:
        self.state.clear()
        head = self._params[0]
        meta: dict[str, Any] = {"started": self.started, "counters": self.net.counters()}
        if self.started:
            meta.update(k=int(self.method.k), oracle_calls=float(self.method.oracle_calls), evaluated={})
            for f in self._fields():
                value = getattr(self.method.state, f.name)
                lazy_unread = isinstance(value, ClosureRows) and not value.evaluated
                meta["evaluated"][f.name] = not lazy_unread
                if lazy_unread:
                    continue  # PP-MARINA client not drawn: grad f_i(x^k) is recomputed when needed
                t = materialize(value)
                if f.metadata.get("device") == "cpu":
                    meta[f.name] = t.clone()
                    continue
                lead = t.shape[:-1]
                for p, chunk in zip(self._params, t.split(self.problem.numels, dim=-1)):
                    self.state[p][f.name] = chunk.reshape(*lead, *p.shape).clone()
        self.state[head]["marina"] = meta
        out = super().state_dict()
        self.state.clear()
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        try:
            meta = self.state[self._params[0]]["marina"]
            if meta["started"]:
                fields: dict[str, Any] = {"k": meta["k"], "oracle_calls": meta["oracle_calls"]}
                for f in self._fields():
                    if not meta["evaluated"][f.name]:
                        fields[f.name] = torch.zeros(1, self.problem.dim, dtype=self.problem.dtype)
                    elif f.metadata.get("device") == "cpu":
                        fields[f.name] = meta[f.name]
                    else:
                        parts = [self.state[p][f.name] for p in self._params]
                        lead = parts[0].shape[: parts[0].dim() - self._params[0].dim()]
                        fields[f.name] = torch.cat([t.reshape(*lead, -1) for t in parts], dim=-1)
                self.method.load_state_dict(fields)
                for f in self._fields():
                    if not meta["evaluated"][f.name]:
                        setattr(self.method.state, f.name, ClosureRows(self.problem, self.method.state.x))
            else:
                self.method.state, self.method.k, self.method.oracle_calls = None, 0, 0.0
            self.net.load_counters(meta["counters"])
        except KeyError as err:
            raise ConfigError(
                f"state_dict is not one of a marina.torch.{type(self).__name__} optimizer (missing {err})"
            ) from None
        finally:
            self.state.clear()


class MARINA(MarinaOptimizer):
    """MARINA (Algorithm 1; defaults p = zeta_Q/d, Corollary 2.1). The closure should compute the
    full local loss f_i (the previous round's grad f_i(x^k) is reused, line 8) at least on dense
    rounds (:attr:`coin`); ``local_size`` = m_i only feeds :attr:`oracle_calls`."""

    method_name = "marina"

    def __init__(
        self,
        params,  # noqa: ANN001 - as torch.optim
        compressor: Any = "randk:1%",
        lr: float = 0.1,
        p: float | None = None,
        seed: int = 0,
        process_group: Any = None,
        *,
        local_size: int | None = None,
        module: nn.Module | None = None,
    ) -> None:
        super().__init__(params, compressor, lr, seed, process_group, module, local_size, {"p": p})


class VRMARINA(MarinaOptimizer):
    """VR-MARINA: online (Algorithm 3, ``online=True``, the default) or finite sum (Algorithm 2).

    On c_k = 0 steps the closure is evaluated twice on the same batch of b' = ``batch_size``
    samples, at x^{k+1} (the current parameters) and at x^k (line 8): the optimizer swaps the
    parameter values, the RNG state is forked so dropout masks agree, and ``module``'s buffers
    advance once, as after the evaluation at x^{k+1} (see :mod:`marina.torch.closure`). On c_k = 1
    steps (and step 0) the closure runs once, on b = ``dense_batch_size`` samples (online) or the
    full local data set of ``local_size`` = m samples (finite sum).

    p=None: min(zeta_Q/d, b'/(b+b')) online (Corollary 3.2; b defaults to 10 b', or min(m, 10 b')
    with ``local_size``), min(zeta_Q/d, b'/(m+b')) in the finite sum (Corollary 3.1, needs m).
    """

    method_name = "vr-marina"

    def __init__(
        self,
        params,  # noqa: ANN001 - as torch.optim
        compressor: Any = "randk:1%",
        lr: float = 0.1,
        p: float | None = None,
        seed: int = 0,
        process_group: Any = None,
        *,
        batch_size: int,
        dense_batch_size: int | None = None,
        online: bool = True,
        local_size: int | None = None,
        module: nn.Module | None = None,
    ) -> None:
        if not isinstance(online, bool):
            raise ConfigError(f"online == {online!r}, must be True or False")
        if not online and local_size is None:
            raise ConfigError(
                "VRMARINA(online=False) needs local_size=m, the samples of each worker: the dense rounds "
                "are full local passes and b' <= m"
            )
        if online and local_size is None:
            local_size = default_local_size(batch_size, dense_batch_size)
        overrides = {"p": p, "batch_size": batch_size, "online": online}
        if online:
            overrides["dense_batch_size"] = dense_batch_size
        elif dense_batch_size is not None:
            raise ConfigError(f"dense_batch_size == {dense_batch_size!r} is used only with online=True")
        super().__init__(params, compressor, lr, seed, process_group, module, local_size, overrides)


class PPMARINA(MarinaOptimizer):
    """PP-MARINA (Algorithm 4; r = ``clients`` defaults to ceil(n/2), p = zeta_Q r/(d n)).

    On c_k = 0 steps only the r clients drawn from the shared stream compute; a rank not drawn
    (:attr:`participates` False) never calls the closure and sends nothing, but must still call
    ``step`` (the round is a collective)."""

    method_name = "pp-marina"

    def __init__(
        self,
        params,  # noqa: ANN001 - as torch.optim
        compressor: Any = "randk:1%",
        lr: float = 0.1,
        p: float | None = None,
        seed: int = 0,
        process_group: Any = None,
        *,
        clients: int | None = None,
        local_size: int | None = None,
        module: nn.Module | None = None,
    ) -> None:
        super().__init__(
            params, compressor, lr, seed, process_group, module, local_size, {"p": p, "clients": clients}
        )

    @property
    def participates(self) -> bool:
        """Whether this rank computes in the next step (dense round, or drawn among the r clients)."""
        if self.coin:
            return True
        m = self.method
        draws = m._shared_choices("clients", m.k, self.net.n, m.r)
        return bool((draws == int(self.net.worker_ids[0])).any())


class DIANA(MarinaOptimizer):
    """DIANA (standard form, see :class:`marina.methods.DIANA`; alpha defaults to 1/(1+omega))."""

    method_name = "diana"
    estimator_first = False

    def __init__(
        self,
        params,  # noqa: ANN001 - as torch.optim
        compressor: Any = "randk:1%",
        lr: float = 0.1,
        alpha: float | None = None,
        seed: int = 0,
        process_group: Any = None,
        *,
        local_size: int | None = None,
        module: nn.Module | None = None,
    ) -> None:
        super().__init__(params, compressor, lr, seed, process_group, module, local_size, {"alpha": alpha})


class QGD(MarinaOptimizer):
    """QGD / DCGD: x^{k+1} = x^k - lr mean_i Q_i(grad f_i(x^k)) (:class:`marina.methods.QGD`)."""

    method_name = "qgd"
    estimator_first = False

    def __init__(
        self,
        params,  # noqa: ANN001 - as torch.optim
        compressor: Any = "randk:1%",
        lr: float = 0.1,
        seed: int = 0,
        process_group: Any = None,
        *,
        local_size: int | None = None,
        module: nn.Module | None = None,
    ) -> None:
        super().__init__(params, compressor, lr, seed, process_group, module, local_size, {})
