"""The method protocol: explicit state + ``step``, parameters resolved from theory or overrides.

A method holds

- its state, one small dataclass per method (``Method.State``, held in ``method.state``), every
  field a tensor named for what it is:

  - server-side fields, replicated on every process: the iterate x^k (``x``, also
    ``method.x``), the estimator g^k (``g``), DIANA's shift mean h^k (``shift_mean``), ...;
  - worker-side fields, one row per hosted worker: the last local gradients
    (``lazy_local_grads``, lazy rows), DIANA's shifts h_i (``shifts``), ...;

- hyperparameters (p, alpha, b', ...), read once from the resolved parameters at construction;
- counters: the round ``k`` and ``oracle_calls`` (cumulative component-gradient evaluations per
  worker, averaged over the n workers).

It talks only to a :class:`marina.network.Network` (aggregation, keyed randomness, bit counters)
and a :class:`marina.problems.base.Problem` (local oracles); it never loops over workers.
``start(x0)`` performs the work of round 0 (e.g. MARINA's dense g^0 round), ``step()`` one
communication round k -> k+1. ``state_dict()`` / ``load_state_dict()`` (one pair for every
method) carry the state fields, as plain tensors (lazy rows materialised), and the counters:
everything needed to continue bit-identically, since the randomness is keyed by the round and
no generator state exists.

Oracle-call convention (counted per worker, then averaged over workers): a full local gradient
grad f_i(x) costs m_i component gradients; a minibatch gradient on b samples costs b; a minibatch
gradient *difference* at two points on the same b samples costs 2 b (both points are evaluated;
Corollary 3.1 of the paper counts O(m + b'K) without the constant).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from marina import compressors, parameters, theory
from marina.compressors.base import Compressor
from marina.errors import ConfigError
from marina.lazy_rows import DenseRows, materialize
from marina.network.base import Network
from marina.problems.base import Problem

__all__ = [
    "Setting",
    "Method",
    "TheoryRow",
    "IterateState",
    "lazy_field",
    "cpu_field",
    "dense_compressor",
    "SHARED_BLOCK",
    "moved",
    "added",
]

_ARGS_SECTION = re.compile(r"^[ \t]*Args:[ \t]*$", re.M)
"""The start of a Google-style ``Args:`` section (see :meth:`Method.__init_subclass__`)."""

SHARED_BLOCK = 1024
"""Rounds per keyed call of the shared draws (coins, client samples); see Method._shared_uniforms."""


@dataclass(frozen=True)
class TheoryRow:
    """One row of ``marina theory``: its label and the overrides it resolves the method with.

    Attributes:
        label: the row's label in the table.
        overrides: the parameters the method is resolved with (:meth:`Method.resolve`).
        order: where the row comes in the table (smaller first; then the method's registration order).
    """

    label: str
    overrides: dict[str, Any] = field(default_factory=dict)
    order: float = 100.0


@dataclass(frozen=True)
class Setting:
    """The constants every theory default is computed from (all workers, not only hosted ones).

    Attributes:
        d: the dimension d.
        n: the number of workers n.
        m: the largest local data set, max_i m_i.
        m_min: the smallest local data set, min_i m_i.
        L: L = sqrt(mean_i L_i^2) (Assumption 1.2).
        L_max: L_max = max_i L_i.
        L_f: the smoothness constant L_f of f.
        L_avg: script-L, the average smoothness of minibatch differences (Assumption 3.1).
        omega: the compressor's variance parameter omega at dimension d (Definition 1.1; NaN for
            a biased compressor).
        zeta: the compressor's expected density zeta_Q at dimension d.
        wire_bits: the bits of one dense value on the wire.
        iterations: the number of rounds K.
        unknown_constants: None, or why the smoothness constants are unknown (a neural network
            without ``smoothness=``): they are then NaN, and theory stepsizes need an explicit
            ``stepsize``.
        alpha: the contraction ||C(x) - x||^2 <= (1 - alpha) ||x||^2 of the compressor, or of
            Q/(1 + omega) for an unbiased Q that is not contractive (the error-feedback methods'
            compressor).
        correlated: whether the compressor's draws are shared across workers (PermK).
        ab_A: the AB-inequality constant A (:meth:`marina.compressors.Compressor.ab_constants`).
        ab_B: the AB-inequality constant B.
        L_pm: the Hessian variance L_pm (the problem's ``L_pm``, else L, always valid).
        message_bits: the expected bits of one compressed message (for ``p="bits"``).
    """

    d: int
    n: int
    m: int
    m_min: int
    L: float
    L_max: float
    L_f: float
    L_avg: float
    omega: float
    zeta: float
    wire_bits: int
    iterations: int
    unknown_constants: str | None = None
    alpha: float = math.nan
    correlated: bool = False
    ab_A: float = math.nan
    ab_B: float = math.nan
    L_pm: float = math.nan
    message_bits: float = math.nan

    @property
    def omega_eff(self) -> float:
        """omega for theorems proved for independent compressors (:func:`marina.theory.effective_omega`)."""
        if not self.correlated:
            return self.omega
        return theory.effective_omega(self.omega, self.n, self.ab_A)

    @classmethod
    def build(cls, problem: Problem, network: Network, compressor: Compressor, iterations: int) -> Setting:
        """The constants of ``problem`` (all its workers, gathered over ``network``) with
        ``compressor`` at the problem's dimension, for a run of ``iterations`` rounds K."""
        sizes = network.gather(problem.sizes.reshape(-1, 1)).reshape(-1)
        d = int(problem.dim)
        try:
            L_i = network.gather(problem.L_i.reshape(-1, 1).double()).reshape(-1)
            L_f, L_avg, unknown = float(problem.L_f), float(problem.L_avg), None
        except ConfigError as err:  # e.g. a neural network: no smoothness constants known
            L_i = torch.full((int(network.n),), math.nan, dtype=torch.float64)
            L_f, L_avg, unknown = math.nan, math.nan, str(err)
        omega = float(compressor.omega(d)) if compressor.unbiased else math.nan
        if compressor.contractive:
            alpha = float(compressor.alpha(d))
        else:
            alpha = 1.0 / (1.0 + omega) if compressor.unbiased else math.nan
        L = float(torch.sqrt(torch.mean(L_i**2)))
        correlated = bool(getattr(compressor, "correlated", False))
        A, B = compressor.ab_constants(d, int(network.n)) if correlated else (math.nan, math.nan)
        return cls(
            d=d,
            n=int(network.n),
            m=int(sizes.max()),
            m_min=int(sizes.min()),
            L=L,
            L_max=float(L_i.max()),
            L_f=L_f,
            L_avg=L_avg,
            unknown_constants=unknown,
            omega=omega,
            alpha=alpha,
            zeta=float(compressor.density(d)),
            wire_bits=int(compressor.wire_bits_per_value),
            iterations=int(iterations),
            correlated=correlated,
            ab_A=A,
            ab_B=B,
            L_pm=float(getattr(problem, "L_pm", L)) if unknown is None else math.nan,
            message_bits=_expected_bits(compressor, d),
        )


def successor_cost(
    cls: type[Method], setting: Setting, gamma: float, *, rounds: int | None = None, **kw: Any
) -> theory.Prediction:
    """:meth:`Method.predict` of a successor whose guarantee is ``cls.guarantee_factor``
    Delta_0/(gamma K) with the dense start (:func:`marina.theory.successor_cost`; ``kw``: eps,
    delta0, message_bits and the per-round costs)."""
    if rounds is not None:
        raise ConfigError(f"{cls.name}: no prediction for a given number of rounds")
    return theory.successor_cost(cls.name, setting, cls.checked_guarantee_factor(), gamma, **kw)


def _expected_bits(compressor: Compressor, d: int) -> float:
    """Expected bits of one message (NaN when the compressor does not know it)."""
    try:
        return float(compressor.expected_bits(d))
    except (ConfigError, AttributeError):
        return math.nan


@dataclass
class IterateState:
    """The state every method has, and all of GD's and QGD's: the iterate.

    Each method's state is a dataclass of tensors extending this one. A field made with
    :func:`lazy_field` holds :class:`marina.lazy_rows.LazyRows` (materialised by ``state_dict``,
    restored as :class:`~marina.lazy_rows.DenseRows`); one made with :func:`cpu_field` lives on
    the CPU whatever the network's device; every other field lives on the network's device.
    """

    x: Tensor
    """x^k (d,), replicated on every process."""


def lazy_field() -> Any:
    """A state field holding lazy rows (see :class:`IterateState`)."""
    return field(metadata={"lazy": True})


def cpu_field() -> Any:
    """A state field kept on the CPU (see :class:`IterateState`)."""
    return field(metadata={"device": "cpu"})


def moved(x: Tensor, g: Tensor, gamma: float | Tensor) -> Tensor:
    """x - gamma g as a new tensor, with one allocation: the product, then the difference written
    over it (the same two roundings as ``x - gamma * g``, bit for bit)."""
    t = torch.mul(g, gamma)
    return torch.sub(x, t, out=t)


def added(a: Tensor, fresh: Tensor) -> Tensor:
    """a + fresh, written over ``fresh`` (a temporary of the caller: the aggregate of this round)."""
    return torch.add(a, fresh, out=fresh)


def dense_compressor(compressor: Compressor) -> Compressor:
    """The identity at the wire precision of ``compressor``: how dense rounds travel and count."""
    return compressors.get("identity", value_dtype=getattr(compressor, "value_dtype", torch.float32))


class Method(ABC):
    """A distributed method: explicit state, one communication round per :meth:`step`.

    Subclasses declare, once, at class level: ``name`` and ``label``, ``takes`` (their own
    parameters of :data:`marina.parameters.PARAMETERS`, whose table holds types, domains and
    help; ``stepsize`` and ``stepsize_multiplier`` are taken by every method), the compressors
    they accept (``takes_contractive``, or :meth:`accepts` overridden), ``State`` (the dataclass
    of their state, see :class:`IterateState`), ``guarantee_factor`` and :meth:`predict` with
    ``theory_rows`` (what ``marina theory`` shows), ``plot_order``. They read their
    hyperparameters in ``__init__`` and implement :meth:`defaults`, :meth:`_initial_state` and
    :meth:`step`. :func:`marina.methods.register` makes a subclass known by its name.

    Round schedule: :meth:`round_coin`, :meth:`is_dense_round` and :meth:`participants` answer,
    for round k (the :meth:`step` that runs while the counter ``k`` is k: x^k -> x^{k+1}, k >= 0;
    :meth:`start` is round-0 work, not a round), what that round draws and who sends. Each is a
    pure function of (seed, k) from a shared stream keyed by round (:meth:`_shared_uniforms`):
    the same in every process and after a resume, known before the round runs, and asking draws
    nothing. :meth:`step` reads its schedule through them.

    A subclass with this constructor gets these Args in its docstring (:meth:`__init_subclass__`).

    Args:
        problem: the problem: the local oracles f_i of the workers this process hosts.
        network: the network: aggregation, keyed randomness and bit counters of all n workers.
        compressor: the compressor Q of the workers' messages (:meth:`accepts` must accept it).
        params: the parameters, as :meth:`resolve` returns them (stepsize gamma, the method's
            own p, alpha, batch_size, ...); copied.
    """

    name: ClassVar[str]
    label: ClassVar[str] = ""
    """Display name in figures and tables (default: ``name`` upper-cased)."""
    takes: ClassVar[tuple[str, ...]] = ()
    """Its own parameters (names of :data:`marina.parameters.PARAMETERS`) besides the stepsize."""
    State: ClassVar[type[IterateState]] = IterateState
    takes_contractive: ClassVar[bool] = False
    """Whether biased contractive compressors (TopK) are accepted (the error-feedback methods)."""
    guarantee_factor: ClassVar[float | None] = None
    """c of the guarantee (1/K) sum_k E||grad f(x^k)||^2 <= c Delta_0/(gamma K) (None: no such
    bound, e.g. it adds terms of the noise level; see :func:`marina.theory.guarantee`)."""
    no_guarantee_reason: ClassVar[str] = "it declares no guarantee (Method.guarantee_factor)"
    """Why ``guarantee_factor`` is None, for messages."""
    theory_rows: ClassVar[tuple[TheoryRow, ...]] = ()
    """The rows ``marina theory`` shows for this method (each predicted by :meth:`predict`)."""
    plot_order: ClassVar[int] = 99
    """Where its curves come in a figure's legend (smaller first; ties by name)."""
    state: Any
    """An instance of ``State`` after :meth:`start` or :meth:`load_state_dict`, else None."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Append :class:`Method`'s ``Args:`` section to the docstring of a subclass that has a
        docstring without one and the same constructor arguments (help() and the API reference
        then show them)."""
        super().__init_subclass__(**kwargs)
        doc = cls.__dict__.get("__doc__")
        if not doc or _ARGS_SECTION.search(doc):
            return
        arguments = list(inspect.signature(cls.__init__).parameters)
        if arguments != list(inspect.signature(Method.__init__).parameters):
            return
        shared = inspect.cleandoc(Method.__doc__ or "")
        cls.__doc__ = inspect.cleandoc(doc) + "\n\n" + shared[_ARGS_SECTION.search(shared).start() :] + "\n"

    def __init__(
        self, problem: Problem, network: Network, compressor: Compressor, params: dict[str, Any]
    ) -> None:
        self.problem = problem
        self.net = network
        self.Q = compressor
        self.dense = dense_compressor(compressor)
        self.params = dict(params)
        self.gamma = float(params["stepsize"])
        self.d = int(problem.dim)
        self.wire_bits = int(compressor.wire_bits_per_value)
        sizes = network.gather(problem.sizes.reshape(-1, 1)).reshape(-1)
        self.sizes_all = sizes.to(device="cpu", dtype=torch.float64)  # m_i of every worker
        self.m_mean = float(self.sizes_all.mean())
        self.k = 0
        self.oracle_calls = 0.0
        self.state = None
        self._shared_cache: dict[tuple[str, int], tuple[int, Tensor, list | None]] = {}
        self.next_x: Tensor | None = None
        """x^k - gamma g^k computed by the caller with the stepsize of the next step (the torch
        optimizers' parameters after a step), taken by that step instead of computing it again
        (:meth:`_next_iterate`); None: computed there."""
        self.recycles_state = False
        """Whether a state tensor replaced every step (EF21-SGDM's v_i, DASHA-MVR's h_i) may be
        written into the one it replaced the step before (:meth:`_recycled`): set by
        :mod:`marina.torch`'s optimizers, which keep a replaced state only for the step (to put
        it back if the step raises); off in simulations, whose callers may keep states."""
        self._replaced_tensors: dict[str, Tensor] = {}

    def _recycled(self, name: str, current: Tensor) -> Tensor | None:
        """The buffer to write state field ``name``'s next value into, the value ``current``
        replaced (:attr:`recycles_state`), which is then remembered in its turn; None (a new
        tensor) when there is none, or when it is still held by the state (put back after a
        step that raised, or shared with another field)."""
        if not self.recycles_state:
            return None
        spare = self._replaced_tensors.get(name)
        self._replaced_tensors[name] = current
        if spare is None or spare.shape != current.shape or spare.dtype != current.dtype:
            return None
        fields = (getattr(self.state, f.name) for f in dataclasses.fields(self.state))
        held = {t.untyped_storage().data_ptr() for t in fields if isinstance(t, Tensor)}
        return None if spare.untyped_storage().data_ptr() in held else spare

    # -- parameters ---------------------------------------------------------------------------
    @classmethod
    def resolve(cls, setting: Setting, overrides: dict[str, Any]) -> dict[str, Any]:
        """Validate ``overrides`` and fill every other parameter from theory.

        Returns the parameters actually used: ``stepsize`` (and ``stepsize_theory``, the theory
        value it was derived from), the method's own (p, alpha, batch_size, ...), ``omega``,
        ``zeta``, ``L``... Raises ConfigError for unknown names or values out of range.
        """
        allowed = cls.parameter_names()
        unknown = sorted(set(overrides) - set(allowed))
        if unknown:
            raise ConfigError(
                f"{cls.name}: unknown parameter(s) {', '.join(unknown)}; "
                f"{cls.name} takes {', '.join(allowed)}"
            )
        if "stepsize" in overrides and "stepsize_multiplier" in overrides:
            raise ConfigError(
                f"{cls.name}: give stepsize or stepsize_multiplier, not both "
                f"(stepsize == {overrides['stepsize']!r}, "
                f"stepsize_multiplier == {overrides['stepsize_multiplier']!r})"
            )
        given = {}
        for key, value in overrides.items():
            try:
                given[key] = parameters.by_name(key).check(value, setting)
            except ConfigError as err:
                raise ConfigError(f"{cls.name}: {err}") from None
        if setting.unknown_constants is None:
            params = cls.defaults(setting, given)
            theory_gamma = float(params.pop("stepsize"))
        elif "stepsize" in given:
            # No smoothness constants: the other parameters (p, alpha, b', r) do not involve
            # them, so they come from a stand-in L = 1; there is no theory stepsize.
            stand_in = dataclasses.replace(setting, L=1.0, L_max=1.0, L_f=1.0, L_avg=1.0, L_pm=1.0)
            params = cls.defaults(stand_in, given)
            params.pop("stepsize")
            if "L_avg" in params:  # report the real (unknown) value, not the stand-in
                params["L_avg"] = setting.L_avg
            theory_gamma = math.nan
        else:
            raise ConfigError(setting.unknown_constants)
        if "stepsize" in given:
            gamma = given["stepsize"]
        else:
            gamma = theory_gamma * given.get("stepsize_multiplier", 1.0)
            if not gamma > 0.0:  # underflow: the run would never move
                raise ConfigError(
                    f"{cls.name}: the theory stepsize is {theory_gamma!r}"
                    + (
                        f" (times stepsize_multiplier {given['stepsize_multiplier']!r} = {gamma!r})"
                        if "stepsize_multiplier" in given
                        else ""
                    )
                    + f" with omega == {setting.omega:.6g}, must be > 0 for the run to move: "
                    "use a compressor of smaller variance, or give the stepsize"
                )
        out = {"stepsize": gamma, "stepsize_theory": theory_gamma}
        if "stepsize_multiplier" in given:
            out["stepsize_multiplier"] = given["stepsize_multiplier"]
        out.update(params)
        out.update({"omega": setting.omega, "zeta": setting.zeta, "L": setting.L, "L_f": setting.L_f})
        return out

    @classmethod
    @abstractmethod
    def defaults(cls, s: Setting, given: dict[str, Any]) -> dict[str, Any]:
        """Theory stepsize (key ``stepsize``) and method parameters, overrides in ``given`` applied."""

    # -- declarations -------------------------------------------------------------------------
    @classmethod
    def display_name(cls) -> str:
        """``label``, or ``name`` upper-cased."""
        return cls.label or cls.name.upper()

    @classmethod
    def parameter_names(cls) -> tuple[str, ...]:
        """The parameters it takes (``stepsize``, ``stepsize_multiplier`` and ``takes``), in table order."""
        own = {"stepsize", "stepsize_multiplier", *cls.takes}
        return tuple(name for name in parameters.names() if name in own)

    @classmethod
    def accepts(cls, compressor: Compressor) -> str | None:
        """Why ``compressor`` cannot be used by this method, or None when it can: an unbiased
        compressor always, a biased contractive one (TopK) only if ``takes_contractive``."""
        if getattr(compressor, "unbiased", False):
            return None
        if cls.takes_contractive and getattr(compressor, "contractive", False):
            return None
        spec = getattr(compressor, "spec", compressor)
        return (
            f"{spec!r} is biased; {cls.name} needs an unbiased compressor (identity, randk:K, ...); "
            "a contractive one (topk:K) needs an error-feedback method"
        )

    @classmethod
    def checked_guarantee_factor(cls) -> float:
        """``guarantee_factor``, or ConfigError saying why there is none (``no_guarantee_reason``)."""
        if cls.guarantee_factor is None:
            raise ConfigError(f"no guarantee for method {cls.name!r} here: {cls.no_guarantee_reason}")
        return float(cls.guarantee_factor)

    @classmethod
    def predict(
        cls,
        setting: Setting,
        used: dict[str, Any],
        *,
        eps: float,
        delta0: float,
        message_bits: float,
        rounds: int | None = None,
    ) -> theory.Prediction:
        """Rounds, bits per worker and oracle calls to reach E||grad f||^2 <= eps^2 with the
        parameters ``used`` (:meth:`resolve`'s result) and the constants of ``setting``; ``rounds``:
        the cost of that many rounds instead. ConfigError when the method declares no theory."""
        raise ConfigError(f"no prediction for method {cls.name!r}: it declares no theory (Method.predict)")

    # -- running ------------------------------------------------------------------------------
    @property
    def x(self) -> Tensor:
        """The iterate x^k (``state.x``)."""
        if self.state is None:
            raise ConfigError(f"{self.name}: no iterate yet; call start(x0) or load_state_dict() first")
        return self.state.x

    def start(self, x0: Tensor) -> None:
        """Set x^0 and do the work of round 0 (e.g. the dense g^0 round)."""
        self.k = 0
        self.next_x = None
        self.state = self._initial_state(x0.clone())

    def _initial_state(self, x0: Tensor) -> IterateState:
        """The state after round-0 work from x^0 (a copy this method owns); just x^0 by default."""
        return self.State(x=x0)

    @abstractmethod
    def step(self) -> None:
        """One communication round: x^k -> x^{k+1}; increments ``k``."""

    # -- the public round schedule (see the class docstring) -------------------------------------
    def round_coin(self, k: int) -> bool | None:
        """The shared coin c_k ~ Be(p) of round k, or None when the method draws none.

        True means round k computes full local gradients: the MARINA family's dense round
        (stream "coin"), DASHA-PAGE's h_i^{k+1} = grad f_i(x^{k+1}) (stream "coin"), VR-DIANA's
        move of the reference point (u^k, stream "refresh")."""
        return None

    def is_dense_round(self, k: int) -> bool:
        """Whether every worker sends its vector uncompressed in round k (the identity at the
        wire precision): GD always, the MARINA family when c_k = 1, the others never."""
        return False

    def participants(self, k: int) -> Tensor | None:
        """Who sends in round k: None when every worker sends one message, else a length-n int64
        tensor (CPU) over all workers of how many independent messages each sends (the
        ``multiplicity`` of :meth:`marina.network.Network.aggregate_mean`; 0: the worker computes
        and sends nothing). PP-MARINA's r clients drawn with replacement on its compressed rounds,
        EF21-PP's clients taking part with probability q."""
        return None

    # -- helpers for subclasses ---------------------------------------------------------------------
    def _next_iterate(self, x: Tensor, g: Tensor) -> Tensor:
        """x - gamma g (:func:`moved`), or :attr:`next_x` when the caller computed it (taken once)."""
        given, self.next_x = self.next_x, None
        return given if given is not None else moved(x, g, self.gamma)

    def _charge_full(self, workers: Tensor | None = None, factor: float = 1.0) -> None:
        """Account full local gradients: every worker (``workers`` None) or the given multiset
        weights (length-n float tensor), times ``factor``."""
        if workers is None:
            self.oracle_calls += factor * self.m_mean
        else:
            self.oracle_calls += factor * float(workers @ self.sizes_all) / self.net.n

    def _broadcast(self) -> None:
        """Account the server's broadcast of one d-vector (g^k or x^{k+1}) at wire precision."""
        self.net.count_broadcast(self.d, self.wire_bits)

    def _minibatch(self, b: int, round: int, replace: bool = False) -> Tensor:
        """(n_local, b) local sample indices, keyed per worker and round (stream "minibatch"):
        without replacement (finite sum, Algorithm 2) or i.i.d. uniform (online, Algorithm 3)."""
        rng = self.net.rng("minibatch", round)
        if replace:
            return rng.integers(self.problem.sizes, b)
        return rng.sample_without_replacement(self.problem.sizes, b)

    def _shared_uniforms(self, stream: str, round: int, width: int = 1) -> Tensor:
        """(width,) float64 uniforms of ``round`` from the shared stream ``stream``.

        Shared draws are made by blocks of :data:`SHARED_BLOCK` rounds: round k reads row
        k mod B of ``net.shared_rng(stream, k // B).uniform(B * width)`` viewed as (B, width).
        One keyed call per B rounds instead of one per round (a call has a fixed cost of a few
        dozen small tensor operations); the draws are still a pure function of (seed, stream, k),
        identical in every process and after a resume.
        """
        return self._shared_block(stream, round, width)[0]

    def _shared_block(self, stream: str, round: int, width: int) -> tuple[Tensor, list[float] | None]:
        """(row ``round mod B`` of the block of :meth:`_shared_uniforms`, the same row as Python
        floats when width is 1), the block drawn once per B rounds."""
        block, row = divmod(int(round), SHARED_BLOCK)
        cached = self._shared_cache.get((stream, width))
        if cached is None or cached[0] != block:
            u = self.net.shared_rng(stream, block).uniform(SHARED_BLOCK * width).reshape(SHARED_BLOCK, width)
            cached = (block, u, u.tolist() if width == 1 else None)
            self._shared_cache[(stream, width)] = cached
        return cached[1][row], None if cached[2] is None else cached[2][row]

    def _coin(self, stream: str, p: float, round: int) -> bool:
        """c ~ Be(p) from the shared stream (the coin c_k): the same on every worker and process
        (u < p on the float64 uniform, compared as a Python float: the same number)."""
        if p >= 1.0:
            return True
        return self._shared_block(stream, round, 1)[1][0] < p  # type: ignore[index] - width 1

    def _shared_choices(self, stream: str, round: int, n: int, r: int) -> Tensor:
        """(r,) int64 i.i.d. uniform on {0..n-1} from the shared stream (PP-MARINA's clients)."""
        return torch.floor(self._shared_uniforms(stream, round, r) * n).to(torch.int64)

    # -- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and numbers: the counters ``k``, ``oracle_calls`` and every field of
        ``state`` under its name (lazy rows materialised); enough to continue bit-identically."""
        out: dict[str, Any] = {"k": int(self.k), "oracle_calls": float(self.oracle_calls)}
        for f in dataclasses.fields(self.state):
            out[f.name] = materialize(getattr(self.state, f.name))
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`: tensors moved to the network's device (a :func:`cpu_field`
        to the CPU), dtypes kept, a :func:`lazy_field` wrapped as DenseRows."""
        self.k = int(state["k"])
        self.next_x = None
        self.oracle_calls = float(state["oracle_calls"])
        fields = {}
        for f in dataclasses.fields(self.State):
            value = state[f.name].to(f.metadata.get("device", self.net.device))
            fields[f.name] = DenseRows(value) if f.metadata.get("lazy") else value
        self.state = self.State(**fields)
