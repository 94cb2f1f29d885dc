"""EF21, EF21-PP, EF21-SGD and EF21-SGDM: error feedback with contractive compressors.

Richtarik, Sokolov, Fatkhullin, "EF21: A New, Simpler, Theoretically Better, and Practically
Faster Error Feedback", NeurIPS 2021 (Algorithm 2, Theorem 1); Fatkhullin, Sokolov, Gorbunov,
Li, Richtarik, "EF21 with Bells & Whistles", 2021 (EF21-PP and EF21-SGD); Fatkhullin, Tyurin,
Richtarik, "Momentum Provably Improves Error Feedback!", NeurIPS 2023 (EF21-SGDM).

The compressor C is contractive: ||C(x) - x||^2 <= (1 - alpha) ||x||^2. A biased contractive
compressor (``topk:K``, alpha = K/d; the ``sign`` compressor plugs in the same way once it
declares ``contractive`` and ``alpha``) is used as it is. An unbiased Q that is not contractive
(``randk:K``, ...) is used as C = Q/(1 + omega), contractive with alpha = 1/(1 + omega): the
worker sends Q's message (same bits) and both ends multiply the decompressed vector by
1/(1 + omega).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from marina import parameters, theory
from marina.compressors.base import Compressor
from marina.lazy_rows import DenseRows, LazyRows, piecewise
from marina.methods.base import IterateState, Method, Setting, TheoryRow, successor_cost
from marina.methods.diana import default_batch_size
from marina.network.base import Network
from marina.problems.base import Problem

__all__ = ["EF21", "EF21PP", "EF21SGD", "EF21SGDM", "EF21State", "EF21SGDMState", "contraction_scale"]


def contraction_scale(compressor: Compressor, d: int) -> float:
    """1 for a contractive compressor, 1/(1 + omega) for an unbiased one (C = Q/(1 + omega))."""
    if compressor.contractive:
        return 1.0
    return 1.0 / (1.0 + float(compressor.omega(d)))


@dataclass
class EF21State(IterateState):
    """The EF21 family's state after round k: x^k, the server's g^k and the workers' g_i^k."""

    g: Tensor
    """g^k = (1/n) sum_i g_i^k (d,), the server's estimator, replicated on every process."""
    estimates: Tensor
    """g_i^k (n_local, d), each hosted worker's estimate of grad f_i(x^k)."""


class EF21(Method):
    """EF21 (Algorithm 2 of the EF21 paper), full local gradients.

    Algorithm (the paper leaves g_i^0 free; we take g_i^0 = grad f_i(x^0), sent dense, so that
    G^0 = (1/n) sum_i ||g_i^0 - grad f_i(x^0)||^2 = 0 in Theorem 1, as MARINA's g^0):

    0. g_i^0 = grad f_i(x^0), g^0 = (1/n) sum_i g_i^0  (dense round: bits and m_i oracle calls)
    for k = 0, 1, ..., K-1:
    1.   x^{k+1} = x^k - gamma g^k
    2.   broadcast x^{k+1}
    3.   every worker computes grad f_i(x^{k+1})  (m_i oracle calls: a dense gradient per round
         is inherent to EF21, whatever the compressor)
    4.   c_i^k = C(grad f_i(x^{k+1}) - g_i^k), sent (stream "compress", round k)
    5.   g_i^{k+1} = g_i^k + c_i^k
    6.   g^{k+1} = g^k + (1/n) sum_i c_i^k

    Default (Theorem 1): gamma = 1/(L_f + L sqrt(beta/theta)), theta = 1 - sqrt(1 - alpha),
    beta = (1 - alpha)/(1 - sqrt(1 - alpha)) (:func:`marina.theory.ef21_stepsize`); with the
    identity (alpha = 1) EF21 is GD. State: :class:`EF21State`.
    """

    name = "ef21"
    State = EF21State
    takes = ()
    # with the dense start g_i^0 = grad f_i(x^0) the G^0 terms vanish (theory.predict_successor):
    guarantee_factor = 2.0  # Richtarik, Sokolov, Fatkhullin 2021, Theorem 1
    theory_rows = (TheoryRow("ef21", order=12),)
    plot_order = 3
    state: EF21State
    takes_contractive = True

    @classmethod
    def predict(cls, setting: Setting, used: dict[str, Any], **kw: Any) -> theory.Prediction:
        """Theorem 1's stepsize; per round one message and m oracle calls."""
        return successor_cost(cls, setting, theory.ef21_stepsize(setting.L_f, setting.L, setting.alpha), **kw)

    @classmethod
    def defaults(cls, s: Setting, given: dict[str, Any]) -> dict[str, Any]:
        return {"stepsize": theory.ef21_stepsize(s.L_f, s.L, s.alpha), "contraction": s.alpha}

    def __init__(
        self, problem: Problem, network: Network, compressor: Compressor, params: dict[str, Any]
    ) -> None:
        super().__init__(problem, network, compressor, params)
        self.scale = contraction_scale(compressor, self.d)

    def _initial_state(self, x0: Tensor) -> EF21State:
        # 0. g_i^0 = grad f_i(x^0), sent dense
        estimates = self.problem.local_grads(x0)
        self._charge_full()
        g = self.net.aggregate_dense(estimates, 0, self.dense)
        return EF21State(x=x0, g=g, estimates=estimates)

    def _new_local_grads(self, k: int, mult: Tensor | None) -> Tensor | LazyRows:
        """Step 3: grad f_i(x^{k+1}) of the hosted workers (lazy rows), oracle calls charged to
        the clients sending (``mult``, see :meth:`participants`)."""
        self._charge_full(None if mult is None else mult.double())
        return self.problem.lazy_local_grads(self.state.x)

    def step(self) -> None:
        k, state = self.k, self.state
        # 1. x^{k+1} = x^k - gamma g^k
        state.x = self._next_iterate(state.x, state.g)
        # 2. broadcast x^{k+1}
        self._broadcast()
        mult = self.participants(k)
        if mult is not None and not bool(mult.any()):
            self.k = k + 1  # no client takes part: nothing is computed or sent
            return
        # 3. local gradients at x^{k+1}
        new_grads = self._new_local_grads(k, mult)
        # the network averages over the messages sent; EF21's step 6 sums over all n workers
        weight = self.scale if mult is None else self.scale * float(mult.sum()) / self.net.n
        # 4. c_i^k = C(grad f_i(x^{k+1}) - g_i^k), sent
        # 5. g_i^{k+1} = g_i^k + c_i^k  (zero rows for clients that sent nothing)
        # 6. g^{k+1} = g^k + (1/n) sum_i c_i^k
        if isinstance(new_grads, Tensor):  # a dense row (EF21-SGDM's momenta): the difference stays
            new_grads = DenseRows(new_grads)  # lazy too, read where the compressor reads it
        state.g = self.net.aggregate_feedback(
            state.g,
            state.estimates,
            self.Q,
            new_grads - state.estimates,
            k,
            self.scale,
            weight,
            multiplicity=mult,
        )
        self.k = k + 1


class EF21PP(EF21):
    """EF21-PP: EF21 with partial participation (the extensions paper, Section "Partial
    participation", Algorithm EF21-PP).

    As :class:`EF21`, except that in round k every client takes part independently with
    probability q = ``participation`` (the draws come from the shared stream "participation",
    keyed by round, so every process knows who sends, as the server does in the paper):
    participating clients do steps 3-5, the others compute and send nothing and keep g_i^k;
    step 6 is g^{k+1} = g^k + (1/n) sum_{i participating} c_i^k. Oracle calls: m_i for each
    participating client.

    Defaults: q = 1/2; gamma = 1/(L_f + L sqrt(beta_p/theta_p)) with theta_p = theta q/2 and
    beta_p of :func:`marina.theory.ef21_pp_theta_beta` (the theorem leaves a parameter rho free;
    we take rho = theta q/(2 (1 - q))). q = 1 gives EF21.
    """

    name = "ef21-pp"
    takes = ("participation",)
    guarantee_factor = 2.0  # Fatkhullin et al. 2021 (EF21 extensions), Theorem 7
    theory_rows = (TheoryRow("ef21-pp", order=13),)
    plot_order = 4

    @classmethod
    def predict(cls, setting: Setting, used: dict[str, Any], **kw: Any) -> theory.Prediction:
        """Theorem 7's stepsize at q = ``participation`` (default 1/2); per round q messages and
        q m oracle calls on average."""
        s, q = setting, parameters.by_name("participation").check(used.get("participation") or 0.5)
        gamma = theory.ef21_pp_stepsize(s.L_f, s.L, s.alpha, q)
        return successor_cost(cls, s, gamma, share=q, per_round_oracle=q * float(s.m), **kw)

    @classmethod
    def defaults(cls, s: Setting, given: dict[str, Any]) -> dict[str, Any]:
        q = given.get("participation", 0.5)
        return {
            "stepsize": theory.ef21_pp_stepsize(s.L_f, s.L, s.alpha, q),
            "contraction": s.alpha,
            "participation": q,
        }

    def __init__(
        self, problem: Problem, network: Network, compressor: Compressor, params: dict[str, Any]
    ) -> None:
        super().__init__(problem, network, compressor, params)
        self.q = float(self.params["participation"])

    def participants(self, k: int) -> Tensor:
        """1 for each client taking part in round k (probability q, shared stream
        "participation"), 0 for the others."""
        return (self._shared_uniforms("participation", k, self.net.n) < self.q).to(torch.int64)


class EF21SGD(EF21):
    """EF21-SGD: EF21 with minibatch gradients (the extensions paper, Algorithm EF21-SGD).

    As :class:`EF21`, with step 3 replaced by a minibatch gradient
    g_hat_i(x^{k+1}) = (1/b) sum_{j in I_{i,k}} grad f_ij(x^{k+1}) on b = ``batch_size`` local
    samples drawn without replacement (stream "minibatch", keyed per worker and round; b oracle
    calls), and c_i^k = C(g_hat_i(x^{k+1}) - g_i^k). g_i^0 = grad f_i(x^0) as in EF21 (the paper
    allows any g_i^0; the full gradient makes G^0 = 0).

    Defaults: b = max(1, m/100); gamma = 1/(L_f + L sqrt(2 beta/theta))
    (:func:`marina.theory.ef21_sgd_stepsize`). Under bounded variance, E||g_hat_i(x) -
    grad f_i(x)||^2 <= sigma^2/b for every x and i (true of the logistic problems; the synthetic
    least squares and networks need not meet it), the minibatch noise leaves a neighbourhood of
    size O(sigma^2/b) in the guarantee.
    """

    name = "ef21-sgd"
    takes = ("batch_size",)
    guarantee_factor = None
    no_guarantee_reason = "its bound adds terms of the unknown noise level sigma^2 of stochastic gradients"
    theory_rows = ()
    plot_order = 5

    @classmethod
    def defaults(cls, s: Setting, given: dict[str, Any]) -> dict[str, Any]:
        return {
            "stepsize": theory.ef21_sgd_stepsize(s.L_f, s.L, s.alpha),
            "contraction": s.alpha,
            "batch_size": given.get("batch_size", default_batch_size(s)),
        }

    def __init__(
        self, problem: Problem, network: Network, compressor: Compressor, params: dict[str, Any]
    ) -> None:
        super().__init__(problem, network, compressor, params)
        self.b = int(self.params["batch_size"])

    def _new_local_grads(self, k: int, mult: Tensor | None) -> Tensor:
        # 3. minibatch gradient at x^{k+1} on b samples without replacement
        idx = self._minibatch(self.b, k)
        self.oracle_calls += float(self.b)
        return self.problem.lazy_minibatch_grads(self.state.x, idx)


@dataclass
class EF21SGDMState(EF21State):
    """EF21-SGDM's state after round k: EF21's and the workers' momenta v_i^k."""

    momenta: Tensor
    """v_i^k (n_local, d), each hosted worker's momentum estimate of grad f_i(x^k)."""


class EF21SGDM(EF21SGD):
    """EF21-SGDM: EF21 applied to Polyak momentum on the workers (the momentum paper,
    Algorithm 1 "EF21-SGDM").

    Algorithm (v_i^0 = g_i^0 = grad f_i(x^0), sent dense, as EF21's start; the paper starts from a
    minibatch of size B_init, the full local gradient is B_init = m_i, noise-free):

    0. v_i^0 = g_i^0 = grad f_i(x^0), g^0 = (1/n) sum_i g_i^0  (dense round: bits and m_i oracle calls)
    for k = 0, 1, ..., K-1:
    1.   x^{k+1} = x^k - gamma g^k
    2.   broadcast x^{k+1}
    3.   v_i^{k+1} = (1 - eta) v_i^k + eta g_hat_i(x^{k+1}), g_hat_i the minibatch gradient on
         b = ``batch_size`` local samples drawn without replacement (stream "minibatch", keyed per
         worker and round; b oracle calls), eta = ``momentum``
    4.   c_i^k = C(v_i^{k+1} - g_i^k), sent (stream "compress", round k)
    5.   g_i^{k+1} = g_i^k + c_i^k
    6.   g^{k+1} = g^k + (1/n) sum_i c_i^k

    eta = 1 is EF21-SGD (bit for bit: step 3 is then 0 v_i + g_hat_i); eta = 1 with b = m and
    the identity compressor is GD. Defaults (:mod:`marina.theory`, the momentum paper's theorem as
    we read it, unverified): b = max(1, m/100);
    eta = :func:`~marina.theory.ef21_sgdm_momentum` with T = K and the noise stand-in
    :func:`~marina.theory.minibatch_noise_ratio` (sigma^2 and Delta_0 are unknown; eta = 1 when
    b = m); gamma = min(alpha/(20 L), eta/(7 L_f)) (:func:`~marina.theory.ef21_sgdm_stepsize`).
    State: :class:`EF21SGDMState`.
    """

    name = "ef21-sgdm"
    State = EF21SGDMState
    takes = ("batch_size", "momentum")
    plot_order = 6
    state: EF21SGDMState

    @classmethod
    def defaults(cls, s: Setting, given: dict[str, Any]) -> dict[str, Any]:
        b = given.get("batch_size", default_batch_size(s))
        noise = theory.minibatch_noise_ratio(s.m, b)
        eta = given.get("momentum", theory.ef21_sgdm_momentum(s.alpha, s.n, max(1, s.iterations), noise))
        return {
            "stepsize": theory.ef21_sgdm_stepsize(s.L_f, s.L, s.alpha, eta),
            "contraction": s.alpha,
            "batch_size": b,
            "momentum": eta,
        }

    def __init__(
        self, problem: Problem, network: Network, compressor: Compressor, params: dict[str, Any]
    ) -> None:
        super().__init__(problem, network, compressor, params)
        self.eta = float(self.params["momentum"])

    def _initial_state(self, x0: Tensor) -> EF21SGDMState:
        # 0. v_i^0 = g_i^0 = grad f_i(x^0), sent dense
        state = super()._initial_state(x0)
        return EF21SGDMState(x=state.x, g=state.g, estimates=state.estimates, momenta=state.estimates.clone())

    def _new_local_grads(self, k: int, mult: Tensor | None) -> Tensor:
        # 3. v_i^{k+1} = (1 - eta) v_i^k + eta g_hat_i(x^{k+1}); step 4 compresses v_i^{k+1} - g_i^k.
        # Not v_i^k updated in place (a new tensor, or the one v_i^k replaced): a round that raises
        # later (a non-finite entry in the compressor) leaves the state as it was
        minibatch = super()._new_local_grads(k, mult)
        v = self.state.momenta
        self.state.momenta = piecewise(self._momentum, v, minibatch, out=self._recycled("momenta", v))
        return self.state.momenta

    def _momentum(self, v: Tensor, minibatch: Tensor, out: Tensor) -> Tensor:
        """Step 3 entry by entry: (1 - eta) v + eta g_hat (the sum fused, as ``add_`` rounds it)."""
        torch.mul(v, 1.0 - self.eta, out=out)
        return out.add_(minibatch, alpha=self.eta)
