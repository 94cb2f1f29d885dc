"""DIANA and VR-DIANA: compression of differences between local gradients and learned shifts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from marina import theory
from marina.compressors.base import Compressor
from marina.lazy_rows import LazyRows
from marina.methods.base import IterateState, Method, Setting, TheoryRow
from marina.network.base import Network
from marina.problems.base import Problem

__all__ = ["DIANA", "VRDIANA", "DianaState", "VRDianaState", "default_batch_size"]


def default_batch_size(s: Setting) -> int:
    """b' = max(1, m/100), at most the smallest local data set: the paper's Figure 1 uses ~m/100."""
    return max(1, min(s.m_min, s.m // 100))


@dataclass
class DianaState(IterateState):
    """DIANA's state after round k (besides x^k)."""

    shifts: Tensor
    """h_i^k (n_local, d), the learned shift of each hosted worker."""
    shift_mean: Tensor
    """h^k = (1/n) sum_i h_i^k (d,), the server's copy, replicated on every process."""


@dataclass
class VRDianaState(DianaState):
    """VR-DIANA's state after round k: DIANA's plus the L-SVRG reference point."""

    ref_point: Tensor
    """w^k (d,), the reference point, replicated on every process."""
    ref_grads: Tensor
    """mu_i^k = grad f_i(w^k) (n_local, d), dense: added to every round's estimate."""


class DIANA(Method):
    """DIANA in its standard form (Mishchenko et al. 2019; Horvath et al. 2019, Algorithm 1 with
    full local gradients), NOT the damped aggregate of the MARINA paper's code.

    Algorithm (h_i^0 = 0, h^0 = 0; one round, k = 0, 1, ...):

    1. broadcast x^k to all workers;
    2. every worker i computes its local estimate g_i^k (here grad f_i(x^k));
    3. worker i sends Delta_i^k = Q_i(g_i^k - h_i^k) (own randomness, stream "compress", round k);
    4. worker i updates h_i^{k+1} = h_i^k + alpha Delta_i^k;
    5. server: Delta^k = (1/n) sum_i Delta_i^k, g^k = h^k + Delta^k;
    6. x^{k+1} = x^k - gamma g^k;
    7. h^{k+1} = h^k + alpha Delta^k  (= (1/n) sum_i h_i^{k+1}).

    Defaults (Horvath et al. 2019, Theorem 4 with M = 1): alpha = 1/(1+omega),
    gamma = 1/(10 L_max sqrt(1+omega/n) (omega+2)); omega is omega_eff = max(omega, n A) for a
    correlated compressor (:func:`marina.theory.effective_omega`; conservative).
    State: :class:`DianaState` (x^k, the shifts h_i^k, their mean h^k).
    """

    name = "diana"
    State = DianaState
    takes = ("alpha",)
    # Horvath et al. 2019, Theorem 4: 40 Delta_0 L sqrt(1+omega/n)(M^{2/3}+omega+1)/K = 4 Delta_0/(gamma K)
    guarantee_factor = 4.0
    theory_rows = (TheoryRow("diana", order=2),)
    plot_order = 10

    @classmethod
    def predict(cls, setting: Setting, used: dict[str, Any], **kw: Any) -> theory.Prediction:
        """Theorem 4 of Horvath et al. 2019 (M = 1); per round one message and m oracle calls."""
        s = setting
        gamma = theory.diana_stepsize(s.L_max, s.omega_eff, s.n)
        return cls._cost(s, gamma, 0.0, float(s.m), **kw)

    @classmethod
    def _cost(cls, s: Setting, gamma: float, start: float, per_round: float, **kw: Any) -> theory.Prediction:
        """The prediction for ``gamma``: one message a round, ``start`` + K ``per_round`` oracle calls."""
        K = theory.rounds_to_reach(cls.guarantee_factor, kw["delta0"], gamma, kw["eps"], kw.get("rounds"))
        bits, oracle = K * float(kw["message_bits"]), start + K * per_round
        alpha = theory.diana_alpha(s.omega_eff)
        return theory.Prediction(cls.name, K, float(bits), float(oracle), gamma, None, alpha)

    state: DianaState

    @classmethod
    def defaults(cls, s: Setting, given: dict[str, Any]) -> dict[str, Any]:
        return {
            "stepsize": theory.diana_stepsize(s.L_max, s.omega_eff, s.n),
            "alpha": given.get("alpha", theory.diana_alpha(s.omega_eff)),
        }

    def __init__(
        self, problem: Problem, network: Network, compressor: Compressor, params: dict[str, Any]
    ) -> None:
        super().__init__(problem, network, compressor, params)
        self.alpha = float(self.params["alpha"])

    def _initial_state(self, x0: Tensor) -> DianaState:
        return DianaState(x=x0, **self._zero_shifts(x0))

    def _zero_shifts(self, x0: Tensor) -> dict[str, Tensor]:
        """h_i^0 = 0 and h^0 = 0."""
        shifts = torch.zeros((self.net.n_local, self.d), dtype=x0.dtype, device=x0.device)
        return {"shifts": shifts, "shift_mean": torch.zeros_like(x0)}

    def _local_estimates(self, k: int) -> Tensor | LazyRows:
        """Step 2: g_i^k, one row per hosted worker (lazy rows: a sparsifier reads K entries)."""
        lazy_local_grads = self.problem.lazy_local_grads(self.state.x)
        self._charge_full()
        return lazy_local_grads

    def step(self) -> None:
        k, state = self.k, self.state
        # 1. broadcast x^k
        self._broadcast()
        # 2. local estimates g_i^k
        estimates = self._local_estimates(k)
        # 3. Delta_i^k = Q_i(g_i^k - h_i^k), sent; the server gets their mean
        # 4. h_i^{k+1} = h_i^k + alpha Delta_i^k
        # 5. g^k = h^k + Delta^k
        # 6. x^{k+1} = x^k - gamma g^k   (x^k kept for step 8 of VR-DIANA: never entrusted there)
        # 7. h^{k+1} = h^k + alpha Delta^k
        x_old = state.x
        state.x, state.shift_mean = self.net.aggregate_shifted(
            x_old, self.gamma, state.shifts, state.shift_mean, self.Q, estimates - state.shifts, k, self.alpha
        )
        self._after_round(k, x_old)
        self.k = k + 1

    def _after_round(self, k: int, x_old: Tensor) -> None:  # optional hook
        """Hook for VR-DIANA's reference-point refresh."""


class VRDIANA(DIANA):
    """VR-DIANA with the L-SVRG estimator (Horvath, Kovalev, Mishchenko, Stich & Richtarik 2019,
    "Stochastic distributed learning with gradient quantization and variance reduction",
    Algorithm 1, loopless-SVRG option, with minibatches of size b).

    Algorithm (w^0 = x^0, mu_i^0 = grad f_i(w^0), h_i^0 = 0; one round, k = 0, 1, ...):

    1. draw u^k ~ Be(1/M) from the shared stream "refresh" (block-keyed by round), M = m/b;
    2. broadcast x^k (u^k needs no message: every worker draws it);
    3. every worker i draws a minibatch I_i^k of b local samples without replacement
       (stream "minibatch", round k) and forms
       g_i^k = (1/b) sum_{j in I_i^k} (grad f_ij(x^k) - grad f_ij(w^k)) + mu_i^k;
    4.-7. as DIANA (Delta_i^k = Q_i(g_i^k - h_i^k), h_i, g^k = h^k + Delta^k, x^{k+1}, h^{k+1});
    8. if u^k = 1: w^{k+1} = x^k and every worker recomputes mu_i = grad f_i(x^k) (m_i oracle
       calls); else w^{k+1} = w^k.

    The coin u^k is shared by all workers (one reference point w, as in Algorithm 1 where the
    server broadcasts u^k). Oracle calls per round: 2b, plus m_i on refresh rounds, plus m_i at
    start for mu_i^0. Defaults (Theorem 4): alpha = 1/(1+omega), refresh_p = b/m,
    gamma = 1/(10 L sqrt(1+omega/n)(M^{2/3}+omega+1)) with L = max(max_i L_i, L_avg) bounding
    the smoothness of the sampled components; b = max(1, m/100). State: :class:`VRDianaState`
    (DIANA's, plus w^k and mu_i^k).
    """

    name = "vr-diana"
    State = VRDianaState
    takes = ("alpha", "batch_size", "refresh_p")
    guarantee_factor = 4.0  # as DIANA, with M = m/b
    theory_rows = (TheoryRow("vr-diana", order=3),)
    plot_order = 11

    @classmethod
    def predict(cls, setting: Setting, used: dict[str, Any], **kw: Any) -> theory.Prediction:
        """Theorem 4 with M = m/b' (:func:`marina.theory.vr_diana_epoch_length`); per round one
        message and 2 b' + m/M oracle calls, plus m at the start."""
        s = setting
        b = int(used.get("batch_size") or 1)
        M = theory.vr_diana_epoch_length(s.m, b)
        gamma = theory.diana_stepsize(max(s.L_max, s.L_avg), s.omega_eff, s.n, M)
        return cls._cost(s, gamma, float(s.m), 2.0 * b + float(s.m) / M, **kw)

    state: VRDianaState

    @classmethod
    def defaults(cls, s: Setting, given: dict[str, Any]) -> dict[str, Any]:
        b = given.get("batch_size", default_batch_size(s))
        M = theory.vr_diana_epoch_length(s.m, b)
        return {
            "stepsize": theory.diana_stepsize(max(s.L_max, s.L_avg), s.omega_eff, s.n, M),
            "alpha": given.get("alpha", theory.diana_alpha(s.omega_eff)),
            "batch_size": b,
            "refresh_p": given.get("refresh_p", 1.0 / M),
        }

    def __init__(
        self, problem: Problem, network: Network, compressor: Compressor, params: dict[str, Any]
    ) -> None:
        super().__init__(problem, network, compressor, params)
        self.b = int(self.params["batch_size"])
        self.refresh_p = float(self.params["refresh_p"])

    def round_coin(self, k: int) -> bool:
        """u^k ~ Be(refresh_p) (shared stream "refresh"): the reference point moves to x^k."""
        return self._coin("refresh", self.refresh_p, k)

    def _initial_state(self, x0: Tensor) -> VRDianaState:
        # w^0 = x^0, mu_i^0 = grad f_i(w^0)
        ref_point = x0.clone()
        ref_grads = self.problem.local_grads(ref_point)
        self._charge_full()
        return VRDianaState(x=x0, ref_point=ref_point, ref_grads=ref_grads, **self._zero_shifts(x0))

    def _local_estimates(self, k: int) -> Tensor:
        # 3. g_i^k = minibatch difference at (x^k, w^k) + mu_i^k
        state = self.state
        idx = self._minibatch(self.b, k)
        estimates = self.problem.minibatch_grad_diffs(state.x, state.ref_point, idx)
        self.oracle_calls += 2.0 * self.b
        return estimates.add_(state.ref_grads)  # a fresh tensor of the problem

    def _after_round(self, k: int, x_old: Tensor) -> None:
        # 1./8. u^k ~ Be(refresh_p), shared; on u^k = 1 the reference point moves to x^k
        if self.round_coin(k):
            self.state.ref_point = x_old
            self.state.ref_grads = self.problem.local_grads(x_old)
            self._charge_full()
