"""Distributed compressed gradient descent (QGD / DCGD): g = mean_i Q_i(grad f_i(x))."""

from __future__ import annotations

from typing import Any

from marina import theory
from marina.methods.base import Method, Setting, TheoryRow

__all__ = ["QGD"]


class QGD(Method):
    """Compressed gradient descent (Khirirat, Feyzmahdavian & Johansson 2018; Alistarh et al. 2017).

    Algorithm (one round, k = 0, 1, ...):

    1. broadcast x^k to all workers;
    2. every worker i sends Q_i(grad f_i(x^k)) with its own randomness (stream "compress", round k);
    3. g^k = (1/n) sum_i Q_i(grad f_i(x^k));
    4. x^{k+1} = x^k - gamma g^k.

    Default stepsize gamma = min(1/L_f, 1/sqrt(L_f A K)), A = omega max_i L_i / n (omega_eff for a
    correlated compressor, :func:`marina.theory.effective_omega`)
    (Khaled & Richtarik 2020, ABC assumption; :func:`marina.theory.qgd_stepsize`). State: x^k only
    (:class:`~marina.methods.base.IterateState`).
    """

    name = "qgd"
    takes = ()
    theory_rows = (TheoryRow("qgd", order=1),)  # guarantee: 2 e Delta_0/(gamma K) + L_f C gamma
    plot_order = 12

    @classmethod
    def predict(cls, setting: Setting, used: dict[str, Any], **kw: Any) -> theory.Prediction:
        """Corollary 1 of Khaled & Richtarik 2020 (:func:`marina.theory.qgd_rounds`; the stepsize
        for that K, capped by eps^2/(2 L_f C)); per round one message and m oracle calls. ``used``
        may hold ``delta_inf`` (f^inf - mean_i f_i^inf, default 0)."""
        s, eps, delta0 = setting, kw["eps"], kw["delta0"]
        A, B, C = theory.qgd_abc_constants(s.L_max, s.omega_eff, s.n, used.get("delta_inf", 0.0))
        K = theory.qgd_rounds(delta0, s.L_f, A, B, C, eps)
        K = K if kw.get("rounds") is None else int(kw["rounds"])
        gamma = theory.qgd_stepsize(s.L_f, s.L_max, s.omega_eff, s.n, K)
        if C > 0:
            gamma = min(gamma, eps**2 / (2.0 * s.L_f * C))
        bits, oracle = K * float(kw["message_bits"]), K * float(s.m)
        return theory.Prediction(cls.name, K, float(bits), float(oracle), gamma)

    @classmethod
    def defaults(cls, s: Setting, given: dict[str, Any]) -> dict[str, Any]:
        return {"stepsize": theory.qgd_stepsize(s.L_f, s.L_max, s.omega_eff, s.n, s.iterations)}

    def step(self) -> None:
        k, state = self.k, self.state
        # 1. broadcast x^k
        self._broadcast()
        # 2. compressed local gradients (lazy rows: a sparsifier reads K entries per row)
        lazy_local_grads = self.problem.lazy_local_grads(state.x)
        self._charge_full()
        # 3. g^k = mean_i Q_i(grad f_i(x^k))
        # 4. x^{k+1} = x^k - gamma g^k
        state.x = self.net.aggregate_moved(state.x, self.gamma, self.Q, lazy_local_grads, k)
        self.k = k + 1
