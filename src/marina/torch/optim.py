"""MARINA, VR-MARINA, PP-MARINA, DIANA and QGD as ``torch.optim.Optimizer`` subclasses.

Each optimizer is a thin layer over one :mod:`marina.methods` method, run on a
:class:`marina.network.Network` (this rank is one worker of a torch.distributed group, or the
only worker without one) and on a :class:`marina.torch.closure.ClosureProblem` (the user's
parameters and closure). The algorithm lines, the keyed coins, the compressors and the packed
payloads on the wire are those of ``marina.run`` and ``--backend torch-distributed``.

Steps and rounds. ``step(closure)`` follows ``torch.optim.LBFGS``: the closure zeroes the grads,
computes the loss of the current batch, calls backward and returns the loss; ``step`` returns
the loss of its first evaluation (at the current parameters), detached. The methods that take
one gradient per step at the current parameters (``one_point``: MARINA, DIANA, QGD, EF21,
EF21-PP, EF21-SGD, EF21-SGDM, DASHA) also take ``loss.backward(); opt.step()`` (``p.grad`` is
read); the others refuse ``step()`` without a closure. Parameters must not be wrapped in
``DistributedDataParallel`` (the optimizer does the communication). At construction the
parameters become views of one flat buffer (the module keeps its ``Parameter`` objects; their
``.data`` is replaced), so writing the next point is one pass; the methods with one gradient per
step and the estimator first (MARINA, EF21, EF21-SGD, EF21-SGDM, DASHA) move that buffer in place.
The methods that also evaluate at x^k (VR-MARINA, DASHA-PAGE, DASHA-MVR, PP-MARINA) make the
parameters views of the buffer holding the point instead of copying it (x^k for the second
evaluation, then the spare holding x^{k+2}): their ``.data`` alternates between two buffers.

Guards. A step that raises (in the closure, or a non-finite gradient) leaves parameters and
optimizer state as before it, bit for bit (the state fields are restored: the methods assign new
tensors and update their own in place only after a round's evaluations). Param-group keys other
than ``params`` and ``lr``, duplicate parameters, devices other than cpu and cuda, sparse
gradients, no gradient at all, a DDP-wrapped ``module``, non-finite or non-numeric lrs and state
dicts of other shapes raise :class:`marina.errors.ConfigError` naming the value. The memory of
the method's state is checked against :mod:`marina.memory`'s budget before it is allocated. With
several ranks, the first step compares d, shapes, dtype, method, compressor, method parameters,
lrs and round (a fixed-size digest exchange) and every rank raises the same error naming the
difference. A loss beyond :data:`DIVERGENCE_FACTOR` times max(1, |first loss|), or non-finite,
raises :class:`marina.errors.ValueRangeError` naming the likely cause and the fix
(``opt.divergence_factor = None`` turns it off).

- MARINA family (the estimator g^k is built from gradients at x^k, then x^{k+1} = x^k - gamma
  g^k): step 0 is line 2 (g^0 from the closure at x^0, dense); step t >= 1 is the loop body of
  round k = t - 1 (line 4 coin c_k, lines 7-10: the closure at x^{k+1} = the current
  parameters). After every step the parameters hold the next point x - lr g, so step t is one
  SGD-like step: gradients at the current parameters, then a move by the current lr.
- DIANA and QGD: step t is round k = t (closure at x^k = the current parameters, then the move).

What to feed. :attr:`coin`, known before the step, has one meaning for every optimizer: True,
the next closure must compute the full local loss f_i or the method's large batch (online
VR-MARINA's b); False, a minibatch suffices. MARINA and PP-MARINA need the full local loss at
every step (line 8 differences the gradients of consecutive steps), VR-MARINA when its c_k = 1.
:attr:`round_coin` is the method's own c_k ~ Be(p) (True on step 0: the dense round).

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
its slice of every state field (g^k, x^k, the last local gradients, DIANA's shifts, ...; where
the parameters move in place, x is the point they hold, marked ``x_is_next``), and
under the first parameter a "marina" entry with the round counter and the bit counters; the
keyed randomness has no state beyond the round. Resuming (model and optimizer state dicts, and
``torch.get_rng_state`` when the closure draws random numbers) continues bit for bit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import math
import textwrap
import weakref
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from marina import compressors, memory, methods
from marina.compressors.base import CompressorSpec
from marina.errors import ConfigError, ValueRangeError
from marina.lazy_rows import materialize
from marina.methods.base import moved
from marina.network.base import Network
from marina.network.simulated import SimulatedNetwork
from marina.network.torch_distributed import TorchDistributedNetwork
from marina.torch.closure import ClosureProblem, ClosureRows

__all__ = ["MarinaOptimizer", "MARINA", "VRMARINA", "PPMARINA", "DIANA", "QGD", "compressor_for"]

APPLIED_LR = "applied_lr"
"""param_groups key: the lr of the move that produced the current parameters (MARINA family)."""


def compressor_for(
    spec: CompressorSpec,
    d: int,
    n: int | None,
    contractive: bool = False,
    user: str = "the marina.torch optimizers",
    *,
    method: str | type[methods.Method] | None = None,
) -> compressors.Compressor:
    """A marina compressor for d parameters and n workers; ``"randk:1%"`` means K = max(1, round(d/100))
    (also in ``"randk:1%+natural"``). The optimizers and the DDP hook (a bucket of d entries)
    resolve their specs here.

    The compressor must pass ``method``'s rule (:meth:`marina.methods.Method.accepts`).

    Args:
        spec: a compressor spec (``"randk:1%"``, ``"qsgd:4"``, ...) or a compressor object.
        d: the number of entries compressed (parameters, or a DDP bucket's entries).
        n: the total number of workers (PermK needs it), None when unknown.
        contractive: also accept biased contractive compressors (``topk:K``), as the
            error-feedback methods do; otherwise unbiased ones only.
        user: who needs the compressor, as the errors name it.
        method: the method whose rule (:meth:`marina.methods.Method.accepts`) the
            compressor must pass; None: MARINA's rule (unbiased only) or, with
            ``contractive``, EF21's.

    Raises:
        ConfigError: a bad spec or percentage, or a biased compressor where it is refused.
    """
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
    if method is None:
        method = methods.EF21 if contractive else methods.MARINA
    reason = (methods.get(method) if isinstance(method, str) else method).accepts(Q)
    if reason is not None:
        raise ConfigError(f"{user}: compressor {reason}")
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


Params = Iterable[Tensor] | Iterable[dict[str, Any]]
"""What ``params`` takes, as in ``torch.optim``: tensors, or param-group dicts."""

DIVERGENCE_FACTOR = 1e6
"""A step whose loss exceeds this factor times max(1, |first loss|) (or is not finite) raises."""

GROUP_KEYS = ("params", "lr")
"""The param-group keys the optimizers read (every other key is refused at construction)."""

SUPPORTED_DEVICES = ("cpu", "cuda")

_GROUP_KEY_HINTS = {
    "weight_decay": "add (weight_decay / 2) ||x||^2 to the loss inside the closure (it is then part of f_i)",
    "momentum": "the method's estimator takes the place of momentum (DASHA's and EF21SGDM's momentum= "
    "are arguments)",
    "nesterov": "the method's estimator takes the place of momentum",
}


def _checked_lr(value: Any, where: str, zero_ok: bool = False) -> float:
    """``value`` as a finite float > 0 (>= 0 with ``zero_ok``: a schedule may end at 0), else
    ConfigError naming ``where`` and the value."""
    bound = ">= 0" if zero_ok else "> 0"
    if isinstance(value, Tensor) and value.numel() == 1 and value.dtype.is_floating_point:
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where} == {value!r} ({type(value).__name__}), must be a finite number {bound}")
    if not (math.isfinite(value) and (value >= 0 if zero_ok else value > 0)):
        raise ConfigError(f"{where} == {value!r}, must be a finite number {bound}")
    return float(value)


def _check_process_group(group: Any) -> None:
    if group is None:
        return
    if not (dist.is_available() and isinstance(group, dist.ProcessGroup)):
        raise ConfigError(
            f"process_group == {group!r} ({type(group).__name__}), must be None (the default group, or "
            "this process alone without one) or a torch.distributed.ProcessGroup (dist.new_group)"
        )


def _check_module(module: Any) -> None:
    from torch.nn.parallel import DistributedDataParallel

    if module is None:
        return
    if isinstance(module, DistributedDataParallel):
        raise ConfigError(
            "module is wrapped in DistributedDataParallel: the marina optimizers communicate "
            "themselves (DDP would all-reduce the dense gradients as well, and the bits counted would "
            "be wrong); pass the plain model (ddp.module) and do not wrap it"
        )
    if not isinstance(module, nn.Module):
        raise ConfigError(
            f"module == {module!r} ({type(module).__name__}), must be a torch.nn.Module or None"
        )


def _param_groups(params: Any, owner: str) -> list[dict[str, Any]]:
    """The param groups as lists, checked: tensors on a supported device, no duplicates, only the
    keys of :data:`GROUP_KEYS`, valid lrs."""
    if isinstance(params, Tensor):
        raise ConfigError(f"{owner}: params is one tensor; pass an iterable of tensors (model.parameters())")
    try:
        groups = list(params)
    except TypeError:
        raise ConfigError(f"{owner}: params == {params!r} is not an iterable of tensors or dicts") from None
    if not groups:
        raise ConfigError(f"{owner}: the parameter list is empty")
    if not isinstance(groups[0], dict):
        groups = [{"params": groups}]
    out, seen = [], {}
    for i, group in enumerate(groups):
        if not isinstance(group, dict) or "params" not in group:
            raise ConfigError(f"{owner}: param group {i} == {group!r} must be a dict with 'params'")
        for key in group:
            if key not in GROUP_KEYS:
                hint = _GROUP_KEY_HINTS.get(key, "")
                raise ConfigError(
                    f"{owner}: param group {i} has {key!r} == {group[key]!r}, which {owner} does not use; "
                    f"it supports only the keys {', '.join(map(repr, GROUP_KEYS))} per group"
                    + (f" ({hint})" if hint else "")
                )
        if "lr" in group:
            _checked_lr(group["lr"], f"param group {i}: lr")
        ps = [group["params"]] if isinstance(group["params"], Tensor) else list(group["params"])
        for j, p in enumerate(ps):
            where = f"{owner}: param group {i}, parameter {j}"
            if not isinstance(p, Tensor):
                raise ConfigError(f"{where} is a {type(p).__name__}, must be a torch.Tensor")
            if id(p) in seen:
                raise ConfigError(
                    f"{where} (shape {tuple(p.shape)}) is the same tensor as {seen[id(p)]}: each parameter "
                    "must appear once (it would count twice in d and in the bits)"
                )
            seen[id(p)] = f"param group {i}, parameter {j}"
            if p.device.type not in SUPPORTED_DEVICES:
                raise ConfigError(
                    f"{where} is on device {str(p.device)!r}; supported: {', '.join(SUPPORTED_DEVICES)}"
                )
            if p.layout != torch.strided:
                raise ConfigError(
                    f"{where} has layout {p.layout}; only dense (strided) parameters are supported"
                )
        out.append({**group, "params": ps})
    return out


def _check_memory(owner: str, d: int, dtype: torch.dtype) -> None:
    """:func:`marina.memory.check` of the optimizer's estimate, before it allocates its state."""
    item = int(dtype.itemsize)
    parts = {
        "method state": memory.state_bytes(1, d, item),
        "flat parameters and x^{k+1}": 2 * d * item,
        "workspace": memory.WORKSPACE,
    }
    memory.check(parts, f"marina.torch.{owner} (d = {d}, {dtype})")


def _digest(text: str) -> Tensor:
    return torch.frombuffer(bytearray(hashlib.sha256(text.encode("utf-8")).digest()), dtype=torch.uint8)


def agree_fields(net: Network, fields: dict[str, str | dict[str, Any]]) -> list[str]:
    """Compare ``fields`` (name -> text, or a dict of values) across the ranks of ``net``: one
    fixed-size exchange of SHA-256 digests; where they differ, the values themselves are gathered.
    Returns one line per differing field (per differing key of a dict), naming every rank's value:
    the same list on every rank; [] alone."""
    if not isinstance(net, TorchDistributedNetwork) or net.world_size == 1:
        return []
    names = list(fields)
    texts = {
        k: repr(sorted((a, repr(b)) for a, b in v.items())) if isinstance(v, dict) else v
        for k, v in fields.items()
    }
    rows = net._all_gather(torch.stack([_digest(texts[k]) for k in names]), "checking the configuration")
    rows = rows.cpu().reshape(net.world_size, len(names), 32)
    differ = [k for i, k in enumerate(names) if not bool((rows[:, i] == rows[0, i]).all())]
    if not differ:
        return []
    values: list[Any] = [None] * net.world_size
    dist.all_gather_object(values, {k: fields[k] for k in differ}, group=net.group)
    out = []
    for k in differ:
        per_rank = [v[k] for v in values]
        if all(isinstance(v, dict) for v in per_rank):
            keys = sorted(set().union(*per_rank), key=str)
            for key in keys:
                got = [v.get(key, "(none)") for v in per_rank]
                if any(repr(g) != repr(got[0]) for g in got):
                    out.append(f"{k} {key}: " + ", ".join(f"rank {r} {g!r}" for r, g in enumerate(got)))
        else:
            out.append(f"{k}: " + ", ".join(f"rank {r} {v}" for r, v in enumerate(per_rank)))
    return out


ARGUMENTS = {
    "params": "iterable of parameters, or of param-group dicts with the keys ``params`` and ``lr`` only "
    "(one dtype, one device: cpu or cuda; each parameter once)",
    "compressor": "a marina compressor spec or object; ``randk:1%`` / ``topk:1%`` take K as a share of d",
    "lr": "the stepsize gamma, ``param_groups[i]['lr']``, read at every step (schedulers work)",
    "p": "probability of a dense round c_k = 1 (None: the theory default)",
    "seed": "the key of every random draw (coins, compressors); the same on every rank",
    "process_group": "the torch.distributed group whose ranks are the workers (None: the default "
    "group when initialised, else this process alone)",
    "local_size": "m_i, the samples of this worker (theory defaults and :attr:`oracle_calls`)",
    "module": "the model, whose buffers (batch norm) then advance once per step; never a DDP wrapper",
    "batch_size": "b', the minibatch of the c_k = 0 steps",
    "dense_batch_size": "b, the large batch of the c_k = 1 steps and of step 0 (online only)",
    "online": "True: i.i.d. samples (Algorithm 3); False: finite sum of ``local_size`` samples",
    "clients": "r, the clients drawn in each c_k = 0 round (None: ceil(n/2))",
    "alpha": "the shift stepsize (None: 1/(1 + omega))",
    "participation": "q, the probability that a client takes part in a round (None: 1/2)",
    "momentum": "DASHA's momentum a (None: 1/(2 omega + 1))",
    "mvr_momentum": "the MVR momentum b (None: min(sqrt(B/B_0)/omega, B/B_0))",
}
"""One line per constructor argument, appended to each optimizer's docstring by :func:`documented`."""


def documented(**own: str) -> Callable[[type], type]:
    """Class decorator: the docstring gets an ``Args:`` section listing every argument of
    ``__init__`` (``own`` overrides :data:`ARGUMENTS` for this class)."""

    def add(cls: type) -> type:
        names = [n for n in inspect.signature(cls.__init__).parameters if n != "self"]
        lines = [
            textwrap.fill(
                f"{name}: {own.get(name, ARGUMENTS[name])}.",
                width=104,
                initial_indent=" " * 8,
                subsequent_indent=" " * 12,
            )
            for name in names
        ]
        cls.__doc__ = (cls.__doc__ or "").rstrip() + "\n\n    Args:\n" + "\n".join(lines) + "\n    "
        return cls

    return add


_BASE_ARGUMENTS = ("compressor", "lr", "seed", "process_group", "module", "local_size")
"""The keyword arguments of :class:`MarinaOptimizer`'s constructor that every optimizer takes too."""


def _base_arguments(arguments: dict[str, Any]) -> dict[str, Any]:
    """The :data:`_BASE_ARGUMENTS` of an optimizer's constructor, by name from its ``locals()``."""
    return {name: arguments[name] for name in _BASE_ARGUMENTS}


class MarinaOptimizer(torch.optim.Optimizer):
    """The common layer: a marina method on this rank's worker (see the module doc).

    Counters (equal on every rank): :attr:`bits_up` (the paper's #bits/n, the ``bits_up``
    history column of ``marina.run``), :attr:`bits_down`, :attr:`rounds`, :attr:`oracle_calls`,
    :attr:`wire_bytes` (0 without torch.distributed). ``method_params`` are the parameters used.

    Subclasses name their method (``method_name``) and pass their own arguments as ``overrides``.

    Args:
        params: iterable of parameters, or of param-group dicts (keys ``params`` and ``lr``).
        compressor: a marina compressor spec or object (see :func:`compressor_for`).
        lr: the stepsize gamma of every group without its own ``lr``.
        seed: the key of every random draw; the same on every rank.
        process_group: the torch.distributed group of the workers (None: the default group when
            initialised, else this process alone).
        module: the model, whose buffers then advance once per step (None: not protected).
        local_size: m_i, the samples of this worker (None: 1).
        overrides: the method's own parameters (:mod:`marina.parameters`); None values take the
            theory defaults.
    """

    method_name: ClassVar[str]
    estimator_first: ClassVar[bool] = True
    one_point: ClassVar[bool] = True
    """Whether every step takes exactly one gradient, at the current parameters (then ``step()``
    without a closure reads ``p.grad``)."""
    full_loss: ClassVar[bool] = True
    """Whether every step after the start needs the full local loss f_i (no minibatches)."""
    differences_steps: ClassVar[bool] = False
    """Whether the estimator differences the gradients of consecutive steps (MARINA, PP-MARINA,
    DASHA): minibatches there make the run diverge."""
    first_point_current: ClassVar[bool] = True
    """Whether the first evaluation of a step is at the current parameters (then not rewritten)."""
    divergence_factor: float | None = DIVERGENCE_FACTOR
    """A loss beyond this factor times max(1, |first loss|), or non-finite, raises
    :class:`marina.errors.ValueRangeError` (None: never)."""

    def __init__(
        self,
        params: Params,
        *,
        compressor: CompressorSpec,
        lr: float,
        seed: int,
        process_group: dist.ProcessGroup | None,
        module: nn.Module | None,
        local_size: int | None,
        overrides: dict[str, Any],
    ) -> None:
        """Called by the subclasses, with their arguments by name (:func:`_base_arguments`) and
        ``overrides``, the method's own parameters (None: its theory default)."""
        lr = _checked_lr(lr, "lr")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"seed == {seed!r}, must be an integer")
        if local_size is not None and (
            isinstance(local_size, bool) or not isinstance(local_size, int) or local_size < 1
        ):
            raise ConfigError(f"local_size == {local_size!r}, must be an integer >= 1")
        _check_process_group(process_group)
        _check_module(module)
        groups = _param_groups(params, type(self).__name__)
        flat = [p for group in groups for p in group["params"]]
        probe = ClosureProblem(
            flat, local_size=1, total_workers=1, worker_ids=torch.zeros(1, dtype=torch.int64)
        )  # checks dtype/device
        _check_memory(type(self).__name__, probe.dim, probe.dtype)
        super().__init__(groups, {"lr": lr})
        self.net = _network(seed, probe.device, process_group)
        self.problem = ClosureProblem(
            flat,
            local_size=local_size or 1,
            total_workers=self.net.n,
            worker_ids=self.net.worker_ids,
            module=module,
        )
        self.problem.adopt_flat_storage()
        cls = methods.get(self.method_name)
        Q = compressor_for(
            compressor, self.problem.dim, self.net.n, user=f"marina.torch.{type(self).__name__}", method=cls
        )
        given = {"stepsize": float(lr), **{k: v for k, v in overrides.items() if v is not None}}
        planned = methods.plan(
            cls, self.problem, Q, iterations=1, overrides=given, network=self.net, check_memory=False
        )
        self.compressor, self.method_params = planned.compressor, planned.params
        self.method = planned.build()
        self.method.recycles_state = True  # a replaced state is kept only for the step (_snapshot)
        self._params = flat
        self._agreed = self.net.n == 1  # the ranks compare their configurations at the first step
        self._spares: list[Tensor] = []  # see _moved_into_spare
        self._scaled: tuple | None = None  # see _scaled_estimator: (gamma g, g, its version, gamma)
        self._first_loss: float | None = None

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if hasattr(self, "method"):
            raise ConfigError(
                "marina.torch optimizers fix their parameters at construction: no add_param_group"
            )
        super().add_param_group(param_group)

    # -- stepsize -------------------------------------------------------------------------------
    def _gamma(self, key: str = "lr") -> float | Tensor:
        """The groups' ``key`` lr: one float when all agree, else a per-coordinate (d,) tensor."""
        lrs = [
            _checked_lr(group[key], f"param_groups[{i}][{key!r}]", zero_ok=True)
            for i, group in enumerate(self.param_groups)
        ]
        if all(lr == lrs[0] for lr in lrs):
            return lrs[0]
        parts = [
            torch.full((p.numel(),), lr, dtype=self.problem.dtype, device=self.problem.device)
            for lr, group in zip(lrs, self.param_groups)
            for p in group["params"]
        ]
        return torch.cat(parts)

    # -- what the loop feeds ----------------------------------------------------------------------
    @property
    def started(self) -> bool:
        return self.method.state is not None

    @property
    def coin(self) -> bool:
        """What the closure of the next step must compute, one meaning for every optimizer: True,
        the full local loss f_i (or the method's large batch: online VR-MARINA's b, DASHA-MVR's
        B_0); False, a minibatch of ``batch_size`` samples suffices. Known before the step."""
        if not self.full_loss and self.round_coin is None:
            return not self.started and self.estimator_first
        return True if self.full_loss else bool(self.round_coin)

    @property
    def round_coin(self) -> bool | None:
        """c_k ~ Be(p) of the next round, shared by all ranks (True on step 0, the dense start):
        the MARINA family's dense round, DASHA-PAGE's full-gradient round; None for methods
        without a coin."""
        coin = self.method.round_coin(self.method.k)
        if coin is None:
            return None
        return True if not self.started else coin  # line 2: g^0 is dense

    # -- the step ---------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):  # torch.optim.Optimizer's signature
        """One communication round (see the module doc); returns the closure's loss, detached
        (None when this rank evaluated nothing, e.g. a PP-MARINA client not drawn, or without a
        closure). Without a closure (the methods that take one gradient per step at the current
        parameters), ``p.grad`` as left by the caller's ``loss.backward()`` is read.

        If anything raises during the step (the closure, a non-finite gradient), parameters and
        optimizer state are put back as they were before it, bit for bit."""
        if closure is None and not self.one_point:
            raise ConfigError(
                f"{type(self).__name__}.step() needs a closure: this method evaluates the gradient at "
                "two points on some steps (the current parameters and the previous ones, on the same "
                "batch); pass step(closure) with a closure that zeroes the grads, computes the loss "
                "and calls backward"
            )
        if not self._agreed:
            self._agree()
        before = self._snapshot()
        problem = self.problem
        problem.begin_step(closure)
        problem.at_first_point = self.first_point_current
        try:
            self._round()
        except BaseException:
            self._restore(before)
            raise
        finally:
            problem.end_step()
        loss = problem.loss_value
        loss = loss.detach() if isinstance(loss, Tensor) else loss
        self._check_divergence(loss)
        return loss

    def _round(self) -> None:
        method, problem = self.method, self.problem
        if not self.started:
            method.start(problem.flat_params())  # MARINA family: line 2, g^0 at x^0
            if not self.estimator_first:
                method.gamma = self._gamma()
                method.step()
        else:
            method.gamma = self._gamma(APPLIED_LR if self.estimator_first else "lr")
            method.step()
        if self.estimator_first:
            # line 7 of the next round, applied now: the parameters hold x^{k+1} = x^k - gamma g^k,
            # which the next step takes instead of computing it again (the same lr: APPLIED_LR)
            if self.moves_in_place:
                method.next_x = self._moved_in_place(method.state.g, self._gamma())
            else:
                method.next_x = self._moved_into_spare(method.state.x, method.state.g, self._gamma())
                problem.show(method.next_x)  # the parameters become the spare's views: no copy
            for group in self.param_groups:
                group[APPLIED_LR] = group["lr"]
        else:
            problem.write(method.state.x)
            # the parameters are x^{k+1}: the next round reads them as x and may write x^{k+2} over
            # them (QGD adds its K entries in place, Network.aggregate_moved; nothing raises then)
            method.state.x = problem.flat_params()
            self.net.entrust(method.state.x)

    @property
    def moves_in_place(self) -> bool:
        """Whether the next point is written over the parameters in place (the MARINA-family
        methods with one gradient per step never read x^k once they moved from it), so that
        :attr:`Method.next_x` is the flat parameter buffer and ``state.x`` becomes it."""
        return self.estimator_first and not self._reads_previous_point()

    def _reads_previous_point(self) -> bool:
        """Whether a step may evaluate at x^k after moving from it (then x^k stays in a buffer)."""
        return not self.one_point

    def _moved_in_place(self, g: Tensor, gamma: float | Tensor) -> Tensor:
        """The parameters <- x - gamma g with :func:`moved`'s two roundings, returned as the flat
        parameter buffer."""
        x = self.problem.flat_params()
        return torch.sub(x, self._scaled_estimator(g, gamma).reshape(x.shape), out=x)

    def _moved_into_spare(self, x: Tensor, g: Tensor, gamma: float | Tensor) -> Tensor:
        """x - gamma g (:func:`moved`'s two roundings) written into one of two buffers this
        optimizer keeps, the one that is not ``x`` (which holds x^k until the next step ends):
        no allocation of d entries per step. The caller takes it as :attr:`Method.next_x`."""
        spares = self._spares
        if not spares or spares[0].shape != x.shape or spares[0].dtype != x.dtype:
            spares[:] = [torch.empty_like(x), torch.empty_like(x)]
        out = spares[1] if spares[0].data_ptr() == x.data_ptr() else spares[0]
        return torch.sub(x, self._scaled_estimator(g, gamma).reshape(x.shape), out=out)

    def _scaled_estimator(self, g: Tensor, gamma: float | Tensor) -> Tensor:
        """gamma g, kept between steps: when the network changed g at K entries since
        (:meth:`Network.entries_changed`) and gamma is the same number, only those K products
        are recomputed (the others are the same products of the same values)."""
        kept = self._scaled
        if kept is not None and kept[1]() is g and isinstance(gamma, float) and gamma == kept[3]:
            changed = self.net.entries_changed(g, since=kept[2])
        else:
            changed = None
        if kept is None or kept[0].shape != g.shape or kept[0].dtype != g.dtype:
            kept = (torch.empty_like(g),)
        t = kept[0]
        if changed is not None:
            at, values = changed  # g's new values at the entries the network changed
            t.index_copy_(0, at, torch.mul(values, gamma))
        else:
            torch.mul(g, gamma, out=t)
        self._scaled = (t, weakref.ref(g), g._version, gamma if isinstance(gamma, float) else None)
        return t

    def _snapshot(self) -> tuple:
        """What a step changes, to undo it: the method's state fields (the methods assign new
        tensors, and update their own in place only after all of a round's evaluations), counters,
        the parameters (x^0 before step 0; later they are recomputed from the state)."""
        m = self.method
        state = None if m.state is None else dataclasses.replace(m.state)
        x0 = self.problem.flat_params().clone() if state is None else None
        applied = [group.get(APPLIED_LR) for group in self.param_groups]
        return state, m.k, m.oracle_calls, self.net.counters(), applied, x0, m.next_x

    def _restore(self, before: tuple) -> None:
        state, k, oracle_calls, counters, applied, x0, next_x = before
        m = self.method
        m.state, m.k, m.oracle_calls, m.next_x = state, k, oracle_calls, next_x
        self.net.load_counters(counters)
        for group, value in zip(self.param_groups, applied):
            if value is None:
                group.pop(APPLIED_LR, None)
            else:
                group[APPLIED_LR] = value
        if state is None:
            self.problem.write(x0)
        elif self.estimator_first:  # shown, not copied: the parameters may view a buffer of the state
            self.problem.show(
                next_x if next_x is not None else moved(state.x, state.g, self._gamma(APPLIED_LR))
            )
        else:
            self.problem.write(state.x)

    def _check_divergence(self, loss: Tensor | None) -> None:
        if loss is None or self.divergence_factor is None or loss.numel() != 1:
            return
        value = float(loss)
        if self._first_loss is None and math.isfinite(value):
            self._first_loss = value
            return
        limit = self.divergence_factor * max(1.0, abs(self._first_loss or 0.0))
        if math.isfinite(value) and abs(value) <= limit:
            return
        name = type(self).__name__
        hint = (
            f" {name} needs the full local loss f_i in every closure (its estimator differences "
            "gradients of consecutive steps, so minibatch noise accumulates); for minibatches use "
            "VRMARINA or EF21SGD (or DASHAMVR)."
            if self.differences_steps
            else ""
        )
        omega = float(self.method_params.get("omega", math.nan))
        lr_hint = (
            f" (an unbiased compressor needs about 1/(1 + omega) of plain SGD's; omega = {omega:.4g} here)"
            if math.isfinite(omega)
            else ""
        )
        raise ValueRangeError(
            f"{name}: the loss is {value:.4g} after {self.rounds} steps (first loss "
            f"{self._first_loss!r}, limit {limit:.3g}): the run diverged.{hint} Lower the lr{lr_hint}. "
            "(opt.divergence_factor = None turns this check off.)"
        )

    def _agree(self) -> None:
        """Every rank compares d, parameter shapes, dtype, method, compressor and its parameters
        (one small fixed-size exchange); all raise the same ConfigError naming the difference."""
        fields = {
            "d and shapes": f"d={self.problem.dim} shapes={[tuple(p.shape) for p in self._params]}",
            "dtype": str(self.problem.dtype),
            "method": type(self).__name__,
            "compressor": self.compressor.spec,
            "method parameter": dict(self.method_params),
            "lr": repr([group["lr"] for group in self.param_groups]),
            "round": f"started={self.started} k={self.method.k}",
        }
        disagree = agree_fields(self.net, fields)
        if disagree:
            raise ConfigError(
                "marina.torch: the ranks disagree before the first step: "
                + "; ".join(disagree)
                + ". Construct the optimizer with the same model, compressor and parameters on every rank"
            )
        self._agreed = True

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
            if self.moves_in_place and self.method.next_x is not None:
                meta["x_is_next"] = True  # x^k was written over: "x" holds the parameters' point
            for f in self._fields():
                value = getattr(self.method.state, f.name)
                if f.name == "x" and meta.get("x_is_next"):
                    value = self.method.next_x
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

    def _check_loadable(self, state_dict: Any) -> None:
        """ConfigError unless ``state_dict`` was saved from parameters of the same shapes."""
        name = type(self).__name__
        try:
            groups, saved = state_dict["param_groups"], state_dict["state"]
            sizes = [len(g["params"]) for g in groups]
        except (KeyError, TypeError) as err:
            raise ConfigError(f"state_dict is not one of a torch optimizer (missing {err})") from None
        own = [len(g["params"]) for g in self.param_groups]
        if sizes != own:
            raise ConfigError(
                f"state_dict has param groups of {sizes} parameters, this {name} {own}: it was saved "
                "for another model"
            )
        ids = [i for g in groups for i in g["params"]]
        for j, (pid, p) in enumerate(zip(ids, self._params)):
            for field, value in saved.get(pid, {}).items():
                if not isinstance(value, Tensor):
                    continue
                if value.dim() < p.dim() or tuple(value.shape[value.dim() - p.dim() :]) != tuple(p.shape):
                    raise ConfigError(
                        f"state_dict: {field!r} of parameter {j} has shape {tuple(value.shape)}, but this "
                        f"{name}'s parameter {j} has shape {tuple(p.shape)}: it was saved for a model of "
                        "another shape"
                    )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._check_loadable(state_dict)
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
                if meta.get("x_is_next"):
                    self.method.next_x = self.method.state.x
                for f in self._fields():
                    if not meta["evaluated"][f.name]:
                        setattr(self.method.state, f.name, ClosureRows(self.problem, self.method.state.x))
            else:
                self.method.state, self.method.k, self.method.oracle_calls = None, 0, 0.0
                self.method.next_x = None
            self.net.load_counters(meta["counters"])
        except KeyError as err:
            raise ConfigError(
                f"state_dict is not one of a marina.torch.{type(self).__name__} optimizer (missing {err})"
            ) from None
        finally:
            self.state.clear()


@documented()
class MARINA(MarinaOptimizer):
    """Closure: the full local loss f_i at every step, never a minibatch (:attr:`coin` is always True).

    MARINA (Algorithm 1): line 8 differences grad f_i at consecutive steps, so a different batch
    at each step adds the batch noise to g^k at every round and the run diverges; for minibatches
    use :class:`VRMARINA` (or :class:`marina.torch.EF21SGD`). p defaults to zeta_Q/d (Corollary
    2.1); ``local_size`` = m_i only feeds :attr:`oracle_calls`.
    """

    method_name = "marina"
    differences_steps = True

    def __init__(
        self,
        params: Params,
        compressor: CompressorSpec = "randk:1%",
        lr: float = 0.1,
        p: float | None = None,
        seed: int = 0,
        process_group: dist.ProcessGroup | None = None,
        *,
        local_size: int | None = None,
        module: nn.Module | None = None,
    ) -> None:
        super().__init__(params, overrides={"p": p}, **_base_arguments(locals()))


@documented()
class VRMARINA(MarinaOptimizer):
    """Closure: ``batch_size`` samples; when :attr:`coin`, the large batch (online) or the full local loss.

    VR-MARINA: online (Algorithm 3, ``online=True``, the default) or finite sum (Algorithm 2).
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
    one_point = False
    full_loss = False

    def __init__(
        self,
        params: Params,
        compressor: CompressorSpec = "randk:1%",
        lr: float = 0.1,
        p: float | None = None,
        seed: int = 0,
        process_group: dist.ProcessGroup | None = None,
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
        super().__init__(params, overrides=overrides, **_base_arguments(locals()))


@documented()
class PPMARINA(MarinaOptimizer):
    """Closure: the full local loss f_i at every step, on the ranks that take part (:attr:`participates`).

    PP-MARINA (Algorithm 4; r = ``clients`` defaults to ceil(n/2), p = zeta_Q r/(d n)). On
    c_k = 0 steps only the r clients drawn from the shared stream compute; a rank not drawn
    (:attr:`participates` False) never calls the closure and sends nothing, but must still call
    ``step`` (the round is a collective).
    """

    method_name = "pp-marina"
    differences_steps = True
    one_point = False
    first_point_current = False  # a client may first recompute grad f_i(x^k)

    def __init__(
        self,
        params: Params,
        compressor: CompressorSpec = "randk:1%",
        lr: float = 0.1,
        p: float | None = None,
        seed: int = 0,
        process_group: dist.ProcessGroup | None = None,
        *,
        clients: int | None = None,
        local_size: int | None = None,
        module: nn.Module | None = None,
    ) -> None:
        super().__init__(params, overrides={"p": p, "clients": clients}, **_base_arguments(locals()))

    @property
    def participates(self) -> bool:
        """Whether this rank computes in the next step (dense round, or drawn among the r clients)."""
        if self.round_coin:
            return True
        mult = self.method.participants(self.method.k)
        return mult is None or bool(mult[int(self.net.worker_ids[0])] > 0)

    def _reads_previous_point(self) -> bool:
        # a client recomputes grad f_i(x^k) unless it took part in the last round; one worker
        # takes part in every round (r >= 1 draws of the one client)
        return self.net.n > 1


@documented()
class DIANA(MarinaOptimizer):
    """Closure: the local loss, of the full local data or of a minibatch (:attr:`coin` is False).

    DIANA (standard form, :class:`marina.methods.DIANA`; alpha defaults to 1/(1 + omega)): one
    gradient at the current parameters per step, so ``loss.backward(); opt.step()`` works too.
    """

    method_name = "diana"
    full_loss = False
    estimator_first = False

    def __init__(
        self,
        params: Params,
        compressor: CompressorSpec = "randk:1%",
        lr: float = 0.1,
        alpha: float | None = None,
        seed: int = 0,
        process_group: dist.ProcessGroup | None = None,
        *,
        local_size: int | None = None,
        module: nn.Module | None = None,
    ) -> None:
        super().__init__(params, overrides={"alpha": alpha}, **_base_arguments(locals()))


@documented()
class QGD(MarinaOptimizer):
    """Closure: the local loss, of the full local data or of a minibatch (:attr:`coin` is False).

    QGD / DCGD: x^{k+1} = x^k - lr mean_i Q_i(grad f_i(x^k)) (:class:`marina.methods.QGD`); one
    gradient at the current parameters per step, so ``loss.backward(); opt.step()`` works too.
    """

    method_name = "qgd"
    full_loss = False
    estimator_first = False

    def __init__(
        self,
        params: Params,
        compressor: CompressorSpec = "randk:1%",
        lr: float = 0.1,
        seed: int = 0,
        process_group: dist.ProcessGroup | None = None,
        *,
        local_size: int | None = None,
        module: nn.Module | None = None,
    ) -> None:
        super().__init__(params, overrides={}, **_base_arguments(locals()))
