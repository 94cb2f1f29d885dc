"""Run one experiment: ``marina.run(...) -> Result`` (history, status, parameters used).

Logging happens at round 0, every ``log_every`` rounds and at the last round. Each row holds

- ``iteration``: the round k (the row describes x^k);
- ``grad_norm_sq``: ||grad f(x^k)||^2 of the whole objective (never a mean of local norms);
- ``loss``: f(x^k);
- ``bits_up``: cumulative bits sent by all workers divided by n (the paper's #bits/n), the dense
  g^0 round and index bits included;
- ``bits_down``: cumulative bits of the server's broadcasts (one d-vector at wire precision per
  round, counted once: what every worker receives);
- ``oracle_calls``: cumulative component-gradient evaluations per worker, averaged over workers
  (full local gradient: m_i; minibatch gradient: b; minibatch difference at two points: 2 b);
  epochs = oracle_calls / m;
- ``time_s``: cumulative wall time of the method itself (start and steps), excluding metric
  evaluation and checkpoint writes (CUDA is synchronised around each timed section);
- then the columns of ``problem.extra_metrics(x)`` if the problem defines it, and of
  ``network.log_columns()`` (torch.distributed: bytes on the wire; with ``link=``:
  ``link_time_s``, the modelled seconds of the messages so far, :mod:`marina.network.link`).

A non-finite iterate or loss stops the run at once with status ``"diverged"``; the history keeps
every row up to that round (the last row is the diverged round) and the message names the
stepsize and how to lower it. A finished run whose ||grad f||^2 became exactly 0 (an underflow)
says so in its message.

Checkpoints (``checkpoint_path``, ``checkpoint_every``): the whole run state (method state
tensors, counters, history so far, elapsed time) as plain tensors and primitives, written
atomically (temporary file, fsync, ``os.replace``) and loadable with
``torch.load(weights_only=True)``. Calling :func:`run` again with the same arguments resumes from
the checkpoint and produces the history an uninterrupted run would (``time_s`` aside); the
randomness is keyed by the round, so it needs no saved generator state. A finished run leaves a
final checkpoint, and re-running the call returns its result without recomputing.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from marina import compressors, devices, methods, problems, trackers
from marina.errors import CheckpointError, ConfigError, RunInterrupted, ValueRangeError
from marina.files import atomic_write
from marina.network.base import Network
from marina.network.link import parse_link
from marina.reductions import fixed_dot

__all__ = ["run", "Result", "HISTORY_COLUMNS"]

HISTORY_COLUMNS = ("iteration", "grad_norm_sq", "loss", "bits_up", "bits_down", "oracle_calls", "time_s")
CHECKPOINT_FORMAT = "marina-run-checkpoint/2"


@dataclass
class Result:
    """Outcome of :func:`run`.

    Attributes:
        history: one row per logged round, columns :data:`HISTORY_COLUMNS` (+ extra metrics).
        status: ``"finished"`` or ``"diverged"``.
        params: parameters actually used (stepsize, stepsize_theory, p / alpha / batch_size /
            clients / refresh_p where the method has them, omega, zeta, L, L_f, ...).
        message: human-readable summary (why it diverged, when it did).
        x: the last iterate.
        config: method, compressor, problem, workers, seed, iterations, log_every.
    """

    history: pd.DataFrame
    status: str
    params: dict[str, Any]
    message: str = ""
    x: Tensor | None = None
    config: dict[str, Any] = field(default_factory=dict)


def _int_arg(name: str, value: Any, low: int) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        and not (isinstance(value, float) and value.is_integer())
    ):
        raise ConfigError(f"{name} == {value!r}, must be an integer >= {low}")
    if int(value) < low:
        raise ConfigError(f"{name} == {value}, must be >= {low}")
    return int(value)


def _build_problem(
    problem: problems.ProblemSpec, workers: int | None, device: Any, dtype: Any
) -> problems.Problem:
    if device is not None:
        device = devices.check(device)
    if dtype is not None and dtype not in (torch.float32, torch.float64):
        raise ConfigError(f"dtype == {dtype!r}, must be torch.float32 or torch.float64")
    if isinstance(problem, problems.Problem):
        prob = problems.get(problem, workers=workers)
        if dtype is not None and prob.dtype != dtype:
            raise ConfigError(f"dtype == {dtype}, but the given problem computes in {prob.dtype}")
        if device is not None and prob.device != torch.device(device):
            if not hasattr(prob, "to"):
                raise ConfigError(f"device == {device}, but the given problem lives on {prob.device}")
            prob = prob.to(device)
        return prob
    kwargs: dict[str, Any] = {}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if device is not None:
        kwargs["device"] = device
    return problems.get(problem, workers=workers, **kwargs)


def _initial_point(x0: Any, prob: problems.Problem) -> Tensor:
    if x0 is None:
        return prob.initial_point().to(dtype=prob.dtype, device=prob.device)
    x = torch.as_tensor(x0)
    if x.shape != (prob.dim,):
        raise ConfigError(f"x0 has shape {tuple(x.shape)}, must be ({prob.dim},)")
    x = x.to(dtype=prob.dtype, device=prob.device)
    if not bool(torch.isfinite(x).all()):
        raise ConfigError("x0 contains non-finite values, must be finite")
    return x


def _finite(x: Tensor) -> bool:
    """Every entry of x is finite: one reduction (a non-finite entry makes the sum non-finite),
    checked entry by entry only when the sum is not finite (it may also overflow)."""
    return math.isfinite(float(x.sum())) or bool(torch.isfinite(x).all())


def _plain(value: Any) -> Any:
    """Parameters as checkpoint-safe primitives."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return str(value)


def run(
    *,
    method: str,
    problem: problems.ProblemSpec,
    compressor: compressors.CompressorSpec = "identity",
    workers: int | None = None,
    iterations: int = 1000,
    seed: int = 0,
    log_every: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    x0: Tensor | None = None,
    progress: Callable[[dict[str, float], int], None] | None = None,
    checkpoint_path: str | os.PathLike[str] | None = None,
    checkpoint_every: int | None = None,
    network: Network | None = None,
    loggers: Any = None,
    link: str | None = None,
    **params: Any,
) -> Result:
    """Run ``method`` on ``problem`` split among ``workers`` for ``iterations`` rounds.

    Args:
        method: gd, qgd, diana, vr-diana, marina, vr-marina, pp-marina, ef21, ef21-pp, ef21-sgd,
            ef21-sgdm, dasha, dasha-page, dasha-mvr.
        problem: a :class:`marina.problems.Problem`, a bundled data set name (``"a9a"``,
            ``"mushrooms"``, ...), a LibSVM file path or ``"synthetic"``.
        compressor: spec string (``"randk:1"``) or a compressor object; must be unbiased, except
            for the EF21 family, which also takes contractive ones (``topk:K``). GD uses only its
            wire precision.
        workers: number of workers n (a problem object already fixes it).
        iterations: number of communication rounds K (>= 1).
        seed: keys every random draw (coins, compressors, minibatches, clients).
        log_every: log every this many rounds (default max(1, K // 200)); round 0 and the last
            round are always logged.
        device: where the problem computes (for a spec string; a problem object must already
            live there or move with its ``to``).
        dtype: the problem's precision, float32 or float64 (for a spec string; a problem object
            must already match).
        x0: starting point (default ``problem.initial_point()``).
        progress: called as ``progress(row, iterations)`` at every log point.
        checkpoint_path: file of the run state, written every ``checkpoint_every`` rounds (and
            at the end); the same call made again resumes from it.
        checkpoint_every: rounds between checkpoints (with ``checkpoint_path``).
        network: a :class:`marina.network.Network` to run on (default: a simulated network
            hosting all workers, on the problem's device).
        loggers: trackers that also get every history row: ``"tensorboard"``, ``"mlflow"``,
            ``"wandb"`` (comma-separated or a list; files under the working directory), or
            objects from :func:`marina.trackers.make` (see :mod:`marina.trackers`).
        link: a link model, e.g. ``"100mbit"`` or ``"10mbit:1ms"`` (:mod:`marina.network.link`):
            adds the history column ``link_time_s``, the modelled time of the rounds' messages
            on such links (simulation: one rank per worker).
        **params: overrides: ``stepsize`` or ``stepsize_multiplier`` (times the theory
            stepsize), ``p``, ``alpha``, ``batch_size`` (b'), ``clients`` (r), ``refresh_p``,
            ``online``, ``dense_batch_size`` (b), ``mu`` (PL constant, marina), ``participation``
            (EF21-PP), ``momentum`` (DASHA's a), ``mvr_momentum`` (DASHA-MVR's b) as the method
            accepts them.

    Returns:
        :class:`Result`.

    Raises:
        ConfigError: any bad argument, before the first round.
    """
    setup = _setup(
        method, problem, compressor, workers, iterations, seed, log_every, device, dtype, x0, network, params
    )
    _use_link(setup, link)
    session = trackers.Session(loggers, setup.fingerprint)
    history = History(setup, session.wrap(progress))
    try:
        result = _execute(setup, history, Checkpoint(checkpoint_path, checkpoint_every, setup))
    except BaseException as exc:
        session.close("failed", f"{type(exc).__name__}: {exc}")
        raise
    session.close(result.status, result.message)
    return result


def _execute(setup: _Setup, history: History, checkpoint: Checkpoint) -> Result:
    """Resume from ``checkpoint`` or start, then run the rounds left."""
    clock = Clock(setup.x0.device)
    state = checkpoint.load()
    if state is not None:  # resume
        setup.method.load_state_dict(state["method_state"])
        setup.network.load_counters(state["counters"])
        history.load(state)
        clock.elapsed = float(state["elapsed"])
        checkpoint.saved_round = setup.method.k
        if state["status"] != "running":
            return setup.result(history, state["status"], state["message"])
    else:
        with clock:
            setup.method.start(setup.x0)
        history.log(0, clock.elapsed)
    try:
        status, message = _rounds(setup, history, checkpoint, clock)
    except KeyboardInterrupt as err:  # say how far it got and what a rerun resumes from
        k, saved = setup.method.k, checkpoint.round_on_disk()
        raise RunInterrupted(k, setup.iterations, saved, checkpoint.path) from err
    checkpoint.save(history, clock, status, message)
    return setup.result(history, status, message)


@dataclass
class _Setup:
    """A validated run: the method built on its problem, network and compressor."""

    method: methods.Method
    problem: problems.Problem
    network: Network
    x0: Tensor
    iterations: int
    log_every: int
    params: dict[str, Any]
    config: dict[str, Any]

    @property
    def fingerprint(self) -> dict[str, Any]:
        """What a checkpoint must match to be resumed: the configuration and the parameters used."""
        return {**self.config, "params": {k: _plain(v) for k, v in self.params.items()}}

    def result(self, history: History, status: str, message: str) -> Result:
        return Result(history.frame(), status, dict(self.params), message, self.method.x, dict(self.config))


def _setup(
    method, problem, compressor, workers, iterations, seed, log_every, device, dtype, x0, network, params
) -> _Setup:
    """Validate the arguments of :func:`run` and build the method (ConfigError before round 0)."""
    cls = methods.get(method)
    iterations = _int_arg("iterations", iterations, 1)
    log_every = _int_arg("log_every", max(1, iterations // 200) if log_every is None else log_every, 1)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed == {seed!r}, must be an integer")
    if workers is not None:
        workers = _int_arg("workers", workers, 1)
    prob = _build_problem(problem, workers, device, dtype)
    planned = methods.plan(
        cls, prob, compressor, iterations=iterations, overrides=params, network=network, seed=seed
    )
    Q, net, used, n_total = planned.compressor, planned.network, planned.params, int(planned.network.n)
    x_start = _initial_point(x0, prob)
    config = {
        "method": cls.name,
        "compressor": Q.spec,
        "value_dtype": str(getattr(Q, "value_dtype", "")),
        "problem": getattr(prob, "name", type(prob).__name__),
        "workers": n_total,
        "dim": int(prob.dim),
        "dtype": str(prob.dtype),
        "seed": int(seed),
        "iterations": iterations,
        "log_every": log_every,
    }
    return _Setup(planned.build(), prob, net, x_start, iterations, log_every, used, config)


def _use_link(setup: _Setup, link: str | None) -> None:
    """Model the network's links (``link_time_s``); the configuration names the link."""
    if link is not None:
        setup.network.link = parse_link(link)
    if setup.network.link is not None:
        setup.config["link"] = setup.network.link.spec


def _rounds(setup: _Setup, history: History, checkpoint: Checkpoint, clock: Clock) -> tuple[str, str]:
    """Rounds from the method's current one to ``iterations``: (status, message)."""
    algo, iterations = setup.method, setup.iterations
    while algo.k < iterations:
        try:
            with clock:
                algo.step()
        except ValueRangeError as err:  # values beyond the wire format mid-run: diverged
            algo.k += 1
            history.log(algo.k, clock.elapsed)
            return "diverged", _diverged(setup, algo.k, f"values out of the wire range: {err}")
        k = algo.k
        if not _finite(algo.x):
            history.log(k, clock.elapsed)
            return "diverged", _diverged(setup, k, "non-finite iterate")
        if k % setup.log_every == 0 or k == iterations:
            row = history.log(k, clock.elapsed)
            if not math.isfinite(row["loss"]):
                return "diverged", _diverged(setup, k, "non-finite loss")
        if checkpoint.due(k):
            checkpoint.save(history, clock, "running", "")
    return "finished", f"{algo.name}: {iterations} rounds finished" + _underflow_note(history)


def _underflow_note(history: History) -> str:
    """A warning for the message when ||grad f(x^k)||^2 became exactly 0 after round 0: in
    floating point that is an underflow (e.g. a saturated sigmoid after a huge stepsize), not a
    verified stationary point, and it breaks log-scale plots."""
    its, gns = history.rows.get("iteration", []), history.rows.get("grad_norm_sq", [])
    zero = next((int(k) for k, g in zip(its, gns) if g == 0.0 and k > 0), None)
    if zero is None:
        return ""
    return (
        f"; warning: ||grad f||^2 is exactly 0 from round {zero} on: the gradient underflowed "
        "(e.g. a saturated sigmoid after too large a stepsize), not a verified stationary point"
    )


def _diverged(setup: _Setup, k: int, what: str) -> str:
    gamma = setup.params["stepsize"]
    return (
        f"{setup.method.name} diverged at round {k} ({what}) with stepsize {gamma:.6g} "
        f"(theory value {setup.params['stepsize_theory']:.6g}); lower it, e.g. stepsize_multiplier=0.5 "
        f"or stepsize={gamma / 2:.6g}"
    )


class Clock:
    """Wall time of the method itself (``with clock:`` around start and steps), CUDA-synchronised
    on both sides, so metric evaluation and checkpoint writes are not counted."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.elapsed = 0.0
        self._t0 = 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __enter__(self) -> Clock:
        self._sync()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, exc_type, *exc: object) -> None:
        if exc_type is None:
            self._sync()
        self.elapsed += time.perf_counter() - self._t0


class History:
    """The logged rows: :data:`HISTORY_COLUMNS`, then the problem's ``extra_metrics`` and the
    network's ``log_columns`` (e.g. wire bytes), in the order they first appear."""

    def __init__(self, setup: _Setup, progress: Callable[[dict[str, float], int], None] | None) -> None:
        self.setup = setup
        self.progress = progress
        self.columns: list[str] = list(HISTORY_COLUMNS)
        self.rows: dict[str, list[float]] = {}

    def _metrics(self, x: Tensor) -> tuple[float, float]:
        """||grad f(x)||^2 and f(x) of the whole objective (averaged over ranks if need be)."""
        prob, net = self.setup.problem, self.setup.network
        if net.hosts_all:
            return float(prob.grad_norm_sq(x)), float(prob.loss(x))
        g = net.global_mean(prob.local_grads(x))
        return float(fixed_dot(g, g)), float(net.global_mean(prob.local_losses(x).reshape(-1, 1)).reshape(()))

    def log(self, k: int, elapsed: float) -> dict[str, float]:
        """Append the row of round ``k`` and return it."""
        algo, net, prob = self.setup.method, self.setup.network, self.setup.problem
        gns, loss = self._metrics(algo.x)
        row: dict[str, float] = {
            "iteration": k,
            "grad_norm_sq": gns,
            "loss": loss,
            "bits_up": net.bits_up / net.n,
            "bits_down": float(net.bits_down),
            "oracle_calls": float(algo.oracle_calls),
            "time_s": elapsed,
        }
        extra = getattr(prob, "extra_metrics", None)
        more = dict(extra(algo.x)) if extra is not None else {}
        more.update(net.log_columns() if hasattr(net, "log_columns") else {})
        for key, value in more.items():
            if key not in self.columns:
                self.columns.append(key)
            row[key] = float(value)
        for key in self.columns:
            self.rows.setdefault(key, []).append(row.get(key, math.nan))
        if self.progress is not None:
            self.progress(row, self.setup.iterations)
        return row

    def frame(self) -> pd.DataFrame:
        frame = pd.DataFrame({key: self.rows.get(key, []) for key in self.columns})
        frame["iteration"] = frame["iteration"].astype("int64")
        return frame

    def state(self) -> dict[str, Any]:
        return {
            "columns": list(self.columns),
            "history": {key: torch.tensor(vals, dtype=torch.float64) for key, vals in self.rows.items()},
        }

    def load(self, state: dict[str, Any]) -> None:
        self.columns = list(state["columns"])
        self.rows = {key: state["history"][key].tolist() for key in self.columns}


class Checkpoint:
    """The whole run state in one file, every ``every`` rounds and at the end (see the module
    docstring); resumed only by a run with the same fingerprint and x0."""

    def __init__(self, path: str | os.PathLike[str] | None, every: int | None, setup: _Setup) -> None:
        if every is not None:
            every = _int_arg("checkpoint_every", every, 1)
            if path is None:
                raise ConfigError("checkpoint_every is set but checkpoint_path is not")
        self.path = None if path is None else os.fspath(path)
        self.every = every
        self.setup = setup
        self.saved_round: int | None = None
        self._writing: int | None = None  # the round being written
        """The round of the state in the file (written or resumed from), None before one."""

    def due(self, k: int) -> bool:
        return self.every is not None and k % self.every == 0 and k < self.setup.iterations

    def save(self, history: History, clock: Clock, status: str, message: str) -> None:
        if self.path is None:
            return
        algo = self.setup.method
        state = {
            "format": CHECKPOINT_FORMAT,
            "fingerprint": self.setup.fingerprint,
            "x0": self.setup.x0.cpu(),
            "method_state": {
                k: (v.cpu() if isinstance(v, Tensor) else v) for k, v in algo.state_dict().items()
            },
            "counters": self.setup.network.counters(),
            **history.state(),
            "elapsed": float(clock.elapsed),
            "status": status,
            "message": message,
        }
        self._writing = int(algo.k)
        atomic_write(self.path, lambda tmp: torch.save(state, tmp))
        self.saved_round, self._writing = self._writing, None

    def round_on_disk(self) -> int | None:
        """The round of the checkpoint in the file now: :attr:`saved_round`, or, when a write
        was cut short (Ctrl-C during it), the round the file holds."""
        if self._writing is not None and self.path is not None and os.path.exists(self.path):
            try:
                state = torch.load(self.path, map_location="cpu", weights_only=True)
                return int(state["method_state"]["k"])
            except Exception:  # noqa: BLE001 - unreadable: a rerun reports and redoes it
                return None
        return self.saved_round

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None when there is no checkpoint (CheckpointError if it is
        unreadable or belongs to another run)."""
        if self.path is None or not os.path.exists(self.path):
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:  # any unreadable file is reported the same way
            raise CheckpointError(f"checkpoint {self.path!r} cannot be read ({err}); remove it") from err
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"checkpoint {self.path!r} is not a {CHECKPOINT_FORMAT} file; remove it")
        if state.get("fingerprint") != self.setup.fingerprint:
            raise CheckpointError(
                f"checkpoint {self.path!r} was written by a different run "
                f"({state.get('fingerprint')}); remove it or choose another checkpoint_path"
            )
        if not torch.equal(state["x0"], self.setup.x0.cpu()):
            raise CheckpointError(f"checkpoint {self.path!r} was written from another x0")
        return state
