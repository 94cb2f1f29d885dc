"""DASHA, DASHA-PAGE and DASHA-MVR (Tyurin and Richtarik, "DASHA: Distributed Nonconvex
Optimization with Communication Compression and Optimal Oracle Complexity", ICLR 2023).

One algorithm (Algorithm 1 of the paper) with three local estimators h_i; the workers send only
compressed messages (besides the dense round 0), with unbiased compressors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from marina import theory
from marina.compressors.base import Compressor
from marina.errors import ConfigError
from marina.lazy_rows import Elementwise, LazyRows, materialize, piecewise
from marina.methods.base import IterateState, Method, Setting, TheoryRow, lazy_field, successor_cost
from marina.methods.diana import default_batch_size
from marina.network.base import Network
from marina.problems.base import Problem

__all__ = ["DASHA", "DASHAPAGE", "DASHAMVR", "DashaState"]


@dataclass
class DashaState(IterateState):
    """DASHA's state after round k: x^k, g^k, and per worker g_i^k and h_i^k."""

    g: Tensor
    """g^k = (1/n) sum_i g_i^k (d,), the server's estimator, replicated on every process."""
    estimates: Tensor
    """g_i^k (n_local, d): what the server holds of worker i (the sum of its messages)."""
    local_estimates: Tensor | LazyRows = lazy_field()
    """h_i^k (n_local, d): worker i's own estimator of grad f_i(x^k) (DASHA: the lazy local
    gradients, of which a sparsifier reads K entries)."""


class DASHA(Method):
    """DASHA (Algorithm 1 of the paper) with full local gradients, h_i^{k+1} = grad f_i(x^{k+1}).

    Algorithm (g_i^0 = h_i^0 = grad f_i(x^0), as Theorem 6.1 takes them):

    2.  g^0 = (1/n) sum_i g_i^0  (dense round: bits and m_i oracle calls)
    3.  for k = 0, 1, ..., K-1:
    4.    x^{k+1} = x^k - gamma g^k
    5.    (DASHA-PAGE only) c_k ~ Be(p), shared stream "coin"
    6.    broadcast x^{k+1}
    8.    h_i^{k+1} = grad f_i(x^{k+1})  (m_i oracle calls; PAGE and MVR: see the subclasses)
    9.    m_i^{k+1} = Q_i(h_i^{k+1} - h_i^k - a (g_i^k - h_i^k))  (stream "compress", round k)
    10.   g_i^{k+1} = g_i^k + m_i^{k+1}
    11.   send m_i^{k+1}
    13.   g^{k+1} = g^k + (1/n) sum_i m_i^{k+1}

    Defaults (Theorem 6.1): a = 1/(2 omega + 1), gamma = 1/(L_f + sqrt(16 omega (2 omega + 1)/n) L)
    (:func:`marina.theory.dasha_stepsize`). With the identity and a = 1, DASHA is GD.
    State: :class:`DashaState`.
    """

    name = "dasha"
    State = DashaState
    takes = ("momentum",)
    guarantee_factor = 2.0  # Tyurin & Richtarik 2022, Theorem 6.1, with the dense start
    theory_rows = (TheoryRow("dasha", order=14),)
    plot_order = 7

    @classmethod
    def predict(cls, setting: Setting, used: dict[str, Any], **kw: Any) -> theory.Prediction:
        """Theorem 6.1's stepsize and a; per round one message and m oracle calls."""
        s = setting
        gamma = theory.dasha_stepsize(s.L_f, s.L, s.omega, s.n)
        return successor_cost(cls, s, gamma, momentum=theory.dasha_momentum(s.omega), **kw)

    state: DashaState

    @classmethod
    def defaults(cls, s: Setting, given: dict[str, Any]) -> dict[str, Any]:
        return {
            "stepsize": theory.dasha_stepsize(s.L_f, s.L, s.omega, s.n),
            "momentum": given.get("momentum", theory.dasha_momentum(s.omega)),
        }

    def __init__(
        self, problem: Problem, network: Network, compressor: Compressor, params: dict[str, Any]
    ) -> None:
        super().__init__(problem, network, compressor, params)
        self.a = float(self.params["momentum"])

    def _initial_local_estimates(self, x0: Tensor) -> Tensor:
        """h_i^0 = grad f_i(x^0) (m_i oracle calls)."""
        self._charge_full()
        return self.problem.local_grads(x0)

    def _initial_state(self, x0: Tensor) -> DashaState:
        h = self._initial_local_estimates(x0)
        # 2. g^0 = (1/n) sum_i g_i^0 with g_i^0 = h_i^0, sent dense
        g = self.net.aggregate_dense(h, 0, self.dense)
        return DashaState(x=x0, g=g, estimates=h.clone(), local_estimates=h)

    def _next_local_estimates(self, k: int, x_old: Tensor) -> Tensor | LazyRows:
        """Step 8: h_i^{k+1}, oracle calls charged (lazy rows: read where the message is)."""
        self._charge_full()
        return self.problem.lazy_local_grads(self.state.x)

    def step(self) -> None:
        k, state = self.k, self.state
        # 4. x^{k+1} = x^k - gamma g^k
        x_old = state.x
        state.x = self._next_iterate(x_old, state.g)
        # 6. broadcast x^{k+1} (DASHA-PAGE's coin of step 5 is drawn in step 8, shared: free)
        self._broadcast()
        # 8. h_i^{k+1}
        h_new = self._next_local_estimates(k, x_old)
        h = state.local_estimates
        # 9.+11. m_i^{k+1} = Q_i(h_i^{k+1} - h_i^k - a (g_i^k - h_i^k)), sent
        # 10. g_i^{k+1} = g_i^k + m_i^{k+1}
        # 13. g^{k+1} = g^k + (1/n) sum_i m_i^{k+1}
        message = Elementwise(self._message, h_new, h, state.estimates)
        state.g = self.net.aggregate_feedback(state.g, state.estimates, self.Q, message, k, 1.0, 1.0)
        state.local_estimates = h_new
        self.k = k + 1

    def _message(self, h_new: Tensor, h: Tensor, estimates: Tensor) -> Tensor:
        """Step 9's argument h_i^{k+1} - h_i^k - a (g_i^k - h_i^k), entry by entry."""
        return h_new - h - self.a * (estimates - h)


class DASHAPAGE(DASHA):
    """DASHA-PAGE (Algorithm 1 with the PAGE estimator; Theorem 6.4, Corollary 6.5): finite sums.

    Step 8: with c_k ~ Be(p) drawn once for all workers (shared stream "coin", as the server's
    draw of step 5), h_i^{k+1} = grad f_i(x^{k+1}) if c_k = 1 (m_i oracle calls), else
    h_i^{k+1} = h_i^k + (1/B) sum_{j in I_{i,k}} (grad f_ij(x^{k+1}) - grad f_ij(x^k)) on
    B = ``batch_size`` samples drawn without replacement (stream "minibatch"; 2 B oracle calls).
    The rest as :class:`DASHA` (every round sends a compressed message, unlike MARINA's dense
    rounds).

    Defaults: B = max(1, m/100); p = B/(m + B) (Corollary 6.5); a = 1/(2 omega + 1);
    gamma = 1/(L_f + sqrt(48 omega (2 omega + 1)/n (L^2 + (1-p) L_avg^2/B) + 2 (1-p) L_avg^2/(p n B)))
    (Theorem 6.4, its L_max being our L_avg).
    """

    name = "dasha-page"
    takes = ("p", "batch_size", "momentum")
    guarantee_factor = 2.0  # Theorem 6.4
    theory_rows = (TheoryRow("dasha-page", order=15),)
    plot_order = 8

    @classmethod
    def predict(cls, setting: Setting, used: dict[str, Any], **kw: Any) -> theory.Prediction:
        """Theorem 6.4's stepsize with Corollary 6.5's p = B/(m + B); per round one message and
        p m + (1 - p) 2 B oracle calls."""
        s, m = setting, float(setting.m)
        B = int(used.get("batch_size") or 1)
        p = theory.dasha_page_p(s.m, B)
        gamma = theory.dasha_page_stepsize(s.L_f, s.L, s.L_avg, s.omega, s.n, p, B)
        a = theory.dasha_momentum(s.omega)
        return successor_cost(
            cls, s, gamma, per_round_oracle=p * m + (1.0 - p) * 2.0 * B, p=p, momentum=a, **kw
        )

    @classmethod
    def defaults(cls, s: Setting, given: dict[str, Any]) -> dict[str, Any]:
        B = given.get("batch_size", default_batch_size(s))
        if given.get("p") == "bits":  # the rule sizes MARINA's dense rounds; DASHA-PAGE has none
            raise ConfigError(
                "dasha-page: p == 'bits' is a rule of the MARINA family (p of a dense round from the "
                "message bits); dasha-page's p is the probability of a full local gradient, "
                "must be a number in (0, 1]"
            )
        p = given.get("p", theory.dasha_page_p(s.m, B))
        return {
            "stepsize": theory.dasha_page_stepsize(s.L_f, s.L, s.L_avg, s.omega, s.n, p, B),
            "momentum": given.get("momentum", theory.dasha_momentum(s.omega)),
            "batch_size": B,
            "p": p,
            "L_avg": s.L_avg,
        }

    def __init__(
        self, problem: Problem, network: Network, compressor: Compressor, params: dict[str, Any]
    ) -> None:
        super().__init__(problem, network, compressor, params)
        self.p = float(self.params["p"])
        self.B = int(self.params["batch_size"])

    def round_coin(self, k: int) -> bool:
        """c_k ~ Be(p) (step 5; shared stream "coin"): h_i^{k+1} = grad f_i(x^{k+1}) when True."""
        return self._coin("coin", self.p, k)

    def _next_local_estimates(self, k: int, x_old: Tensor) -> Tensor:
        # 5. c_k ~ Be(p), shared
        if self.round_coin(k):
            return super()._next_local_estimates(k, x_old)
        # 8. c_k = 0: h_i^k + minibatch difference on the same B samples at x^{k+1} and x^k
        idx = self._minibatch(self.B, k)
        self.oracle_calls += 2.0 * self.B
        diffs = self.problem.minibatch_grad_diffs(self.state.x, x_old, idx)
        return diffs.add_(materialize(self.state.local_estimates))


class DASHAMVR(DASHA):
    """DASHA-MVR (Algorithm 1 with momentum variance reduction; Theorem 6.7, Corollary 6.8):
    f_i(x) = E_{xi ~ D_i} f_xi(x), D_i uniform on the local data, samples drawn i.i.d.

    h_i^0 = g_i^0 = (1/B_0) sum_{j in I_{i,0}} grad f_{xi_ij}(x^0) on B_0 = ``dense_batch_size``
    i.i.d. samples (B_0 oracle calls; keyed as round -1), sent dense. Step 8 on B = ``batch_size``
    i.i.d. samples (stream "minibatch", round k), the same at both points:
    h_i^{k+1} = g_hat_i(x^{k+1}) + (1 - b)(h_i^k - g_hat_i(x^k))  (2 B oracle calls).

    Defaults: B = max(1, m/100), B_0 = min(m, 10 B) (as VR-MARINA online); a = 1/(2 omega + 1);
    b = min(sqrt(B/B_0)/omega, B/B_0) (Corollary 6.8 with sigma^2/(n eps) replaced by B_0, since
    sigma is unknown: :func:`marina.theory.dasha_mvr_momentum`);
    gamma = 1/(L_f + sqrt(48 omega (2 omega + 1)/n (L^2 + (1-b)^2 L_avg^2/B) + 12 L_avg^2/(b n B)))
    (Theorem 6.7, its L_sigma being our L_avg).
    """

    name = "dasha-mvr"
    takes = ("batch_size", "dense_batch_size", "momentum", "mvr_momentum")
    guarantee_factor = None
    no_guarantee_reason = "its bound adds terms of the unknown noise level sigma^2 of stochastic gradients"
    theory_rows = ()
    plot_order = 9

    @classmethod
    def defaults(cls, s: Setting, given: dict[str, Any]) -> dict[str, Any]:
        B = given.get("batch_size", default_batch_size(s))
        B0 = given.get("dense_batch_size", min(s.m, 10 * B))
        b = given.get("mvr_momentum", theory.dasha_mvr_momentum(s.omega, B, B0))
        return {
            "stepsize": theory.dasha_mvr_stepsize(s.L_f, s.L, s.L_avg, s.omega, s.n, b, B),
            "momentum": given.get("momentum", theory.dasha_momentum(s.omega)),
            "mvr_momentum": b,
            "batch_size": B,
            "dense_batch_size": B0,
            "L_avg": s.L_avg,
        }

    def __init__(
        self, problem: Problem, network: Network, compressor: Compressor, params: dict[str, Any]
    ) -> None:
        super().__init__(problem, network, compressor, params)
        self.b = float(self.params["mvr_momentum"])
        self.B = int(self.params["batch_size"])
        self.B0 = int(self.params["dense_batch_size"])

    def _initial_local_estimates(self, x0: Tensor) -> Tensor:
        idx = self._minibatch(self.B0, -1, replace=True)
        self.oracle_calls += float(self.B0)
        return self.problem.minibatch_grads(x0, idx)

    def _next_local_estimates(self, k: int, x_old: Tensor) -> Tensor:
        # 8. h_i^{k+1} = g_hat_i(x^{k+1}) + (1 - b)(h_i^k - g_hat_i(x^k)), same B samples
        idx = self._minibatch(self.B, k, replace=True)
        self.oracle_calls += 2.0 * self.B
        new = self.problem.lazy_minibatch_grads(self.state.x, idx)
        old = self.problem.lazy_minibatch_grads(x_old, idx)
        h = materialize(self.state.local_estimates)
        return piecewise(self._mvr, new, h, old, out=self._recycled("local_estimates", h))

    def _mvr(self, new: Tensor, h: Tensor, old: Tensor, out: Tensor) -> Tensor:
        """Step 8 entry by entry: g_hat(x^{k+1}) + (1 - b)(h - g_hat(x^k)) (the sum fused, as
        ``add_`` rounds it)."""
        torch.sub(h, old, out=out)
        return torch.add(new, out, alpha=1.0 - self.b, out=out)
