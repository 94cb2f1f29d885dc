"""Distributed compressed gradient descent (QGD / DCGD): g = mean_i Q_i(grad f_i(x))."""

from __future__ import annotations

from typing import Any

from marina import theory
from marina.methods.base import Method, Setting, TheoryRow, moved, table1_prediction

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
    predict = classmethod(table1_prediction)

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
        g = self.net.aggregate(self.Q, lazy_local_grads, k)
        # 4. x^{k+1} = x^k - gamma g^k
        state.x = moved(state.x, g, self.gamma)
        self.k = k + 1
