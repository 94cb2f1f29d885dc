"""Distributed gradient descent: the uncompressed baseline (MARINA with Q = identity, p = 1)."""

from __future__ import annotations

from typing import Any

from marina import theory
from marina.methods.base import Method, Setting, TheoryRow

__all__ = ["GD"]


class GD(Method):
    """Gradient descent with dense communication.

    Algorithm (one round, k = 0, 1, ...):

    1. broadcast x^k to all workers;
    2. every worker i computes grad f_i(x^k) and sends it (d values at wire precision);
    3. g^k = (1/n) sum_i grad f_i(x^k);
    4. x^{k+1} = x^k - gamma g^k.

    Default stepsize gamma = 1/L_f (:func:`marina.theory.gd_stepsize`). State: x^k only
    (:class:`~marina.methods.base.IterateState`).
    """

    name = "gd"
    takes = ()
    guarantee_factor = 2.0  # descent lemma with gamma <= 1/L_f
    theory_rows = (TheoryRow("gd", order=0),)
    plot_order = 13

    @classmethod
    def predict(cls, setting: Setting, used: dict[str, Any], **kw: Any) -> theory.Prediction:
        """Per round d values and m oracle calls."""
        s = setting
        gamma = theory.gd_stepsize(s.L_f)
        K = theory.rounds_to_reach(cls.guarantee_factor, kw["delta0"], gamma, kw["eps"], kw.get("rounds"))
        bits, oracle = K * (float(s.d) * s.wire_bits), K * float(s.m)
        return theory.Prediction(cls.name, K, float(bits), float(oracle), gamma)

    @classmethod
    def defaults(cls, s: Setting, given: dict[str, Any]) -> dict[str, Any]:
        return {"stepsize": theory.gd_stepsize(s.L_f)}

    def is_dense_round(self, k: int) -> bool:
        return True

    def step(self) -> None:
        k, state = self.k, self.state
        # 1. broadcast x^k
        self._broadcast()
        # 2. local gradients, sent dense
        local_grads = self.problem.local_grads(state.x)
        self._charge_full()
        # 3. g^k = mean_i grad f_i(x^k)
        g = self.net.aggregate_dense(local_grads, k, self.dense)
        # 4. x^{k+1} = x^k - gamma g^k
        state.x = state.x - self.gamma * g
        self.k = k + 1
