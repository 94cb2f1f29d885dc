"""A toy method defined outside the package (tests/test_custom_method.py): compressed gradient
descent with a fixed damping, g^k = (1/n) sum_i Q_i(grad f_i(x^k)), x^{k+1} = x^k - gamma g^k.

Registered on import; the ``marina`` commands find it with ``MARINA_METHODS=tests/toy_method.py``.
It declares one ``marina theory`` row whose prediction is the descent lemma's (valid for the
identity compressor, where the method is GD): K = ceil(2 Delta_0/(gamma eps^2)) rounds.
"""

from __future__ import annotations

import math
from typing import Any

import marina
from marina import theory
from marina.methods import Method, Setting, TheoryRow


class ToyCGD(Method):
    name = "toy-cgd"
    label = "Toy CGD"
    takes = ("p",)  # read as a damping factor: gamma = p / L_f (default 1)
    guarantee_factor = 2.0
    theory_rows = (TheoryRow("toy-cgd", order=50),)
    plot_order = 0

    @classmethod
    def defaults(cls, s: Setting, given: dict[str, Any]) -> dict[str, Any]:
        p = given.get("p", 1.0)
        return {"p": p, "stepsize": p * theory.gd_stepsize(s.L_f)}

    @classmethod
    def predict(cls, setting, used, *, eps, delta0, message_bits, rounds=None) -> theory.Prediction:
        gamma = float(used["stepsize"])
        K = rounds or max(1, math.ceil(cls.guarantee_factor * delta0 / (gamma * eps**2)))
        return theory.Prediction(cls.name, K, K * float(message_bits), K * float(setting.m), gamma, used["p"])

    def step(self) -> None:
        k, state = self.k, self.state
        self._broadcast()
        grads = self.problem.lazy_local_grads(state.x)
        self._charge_full()
        g = self.net.aggregate_mean(self.Q, grads, k)
        state.x = state.x - self.gamma * g
        self.k = k + 1


marina.methods.register(ToyCGD)
