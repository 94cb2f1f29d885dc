"""A method marina does not ship, in one file: EF14, compared with MARINA in a short sweep.

EF14 is the classic error feedback ("memory") of 1-bit SGD: Seide, Fu, Droppo, Li, Yu, "1-bit
stochastic gradient descent and its application to data-parallel distributed training of speech
DNNs", Interspeech 2014; analysed with contractive compressors by Stich, Cordonnier, Jaggi,
"Sparsified SGD with memory", NeurIPS 2018, and Karimireddy et al., "Error feedback fixes
SignSGD and other gradient compression schemes", ICML 2019. Every worker i keeps the error e_i of
what it did not send:

0. e_i^0 = 0
for k = 0, 1, ...:
1.   broadcast x^k; every worker computes grad f_i(x^k)
2.   p_i = e_i^k + gamma grad f_i(x^k)
3.   c_i = C(p_i), sent
4.   e_i^{k+1} = p_i - c_i
5.   x^{k+1} = x^k - (1/n) sum_i c_i

C is a contractive compressor (topk:K), or an unbiased one scaled by 1/(1 + omega) as the EF21
methods do. The class below declares what marina needs (name, parameters, accepted compressors,
the stepsize default); ``marina.methods.register`` makes it known to ``marina.run``, sweeps,
``marina plot`` and, with ``MARINA_METHODS=examples/custom_method.py`` in the environment, to the
``marina`` commands (``marina run --method ef14``, also on ``--backend torch-distributed``).

    python examples/custom_method.py [--out custom-method-results] [--iterations 300]

runs EF14 and MARINA on the bundled phishing data set (5 workers, randk:5, same seeds), prints
the final squared gradient norm and the bits each worker sent, and saves a figure with
``marina plot``'s code.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

import marina
from marina import experiments, plotting, theory
from marina.methods import Method, Setting
from marina.methods.base import IterateState
from marina.methods.ef21 import contraction_scale


@dataclass
class EF14State(IterateState):
    """x^k and the workers' errors e_i^k (n_local, d)."""

    errors: Tensor


class EF14(Method):
    """EF14 error feedback (Seide et al. 2014; Stich et al. 2018), full local gradients.

    Stepsize default: EF21's theory stepsize (:func:`marina.theory.ef21_stepsize`), a
    conservative choice borrowed for the comparison; EF14's own analyses need bounded gradients
    and give no comparable constant here, so the method declares no guarantee and no
    ``marina theory`` row.
    """

    name = "ef14"
    label = "EF14"
    takes = ()  # stepsize and stepsize_multiplier, as every method
    takes_contractive = True  # topk:K as it is; unbiased compressors scaled by 1/(1 + omega)
    State = EF14State
    plot_order = 5

    @classmethod
    def defaults(cls, s: Setting, given: dict[str, Any]) -> dict[str, Any]:
        return {"stepsize": theory.ef21_stepsize(s.L_f, s.L, s.alpha)}

    def __init__(self, problem, network, compressor, params: dict[str, Any]) -> None:
        super().__init__(problem, network, compressor, params)
        self.scale = contraction_scale(compressor, self.d)

    def _initial_state(self, x0: Tensor) -> EF14State:
        # 0. e_i^0 = 0
        return EF14State(x=x0, errors=torch.zeros(self.net.n_local, self.d, dtype=x0.dtype, device=x0.device))

    def step(self) -> None:
        k, state = self.k, self.state
        # 1. broadcast x^k, local gradients
        self._broadcast()
        grads = self.problem.local_grads(state.x)
        self._charge_full()
        # 2. p_i = e_i + gamma grad f_i(x^k)
        p = state.errors + self.gamma * grads
        # 3. c_i = C(p_i), sent (the network returns the mean and every hosted worker's message)
        mean, local = self.net.aggregate_with_local(self.Q, p, k)
        # 4. e_i = p_i - c_i
        state.errors = p - self.scale * local
        # 5. x^{k+1} = x^k - (1/n) sum_i c_i
        state.x = state.x - self.scale * mean
        self.k = k + 1


marina.methods.register(EF14)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="custom-method-results", help="results directory")
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--figure", default=None, help="figure file (default OUT/ef14-vs-marina.png)")
    args = ap.parse_args(argv)
    sweep = experiments.parse_sweep(
        {
            "problems": "phishing",
            "workers": 5,
            "iterations": args.iterations,
            "seeds": [0, 1],
            "compressors": "randk:5",
            "methods": ["ef14", "marina"],
        }
    )
    configs = experiments.validate(experiments.expand(sweep))
    experiments.run_sweep(configs, args.out, quiet=True)
    df = experiments.results.load_results(args.out)
    last = df[df["iteration"] == args.iterations]
    print(f"{'method':<8}{'runs':>5}{'final ||grad f||^2':>20}{'bits/n':>12}")
    for method, rows in last.groupby("method", sort=False):
        print(
            f"{plotting.method_label(method):<8}{len(rows):>5}{rows['grad_norm_sq'].mean():>20.4e}"
            f"{rows['bits_up'].mean():>12.4e}"
        )
    figure = args.figure or f"{args.out}/ef14-vs-marina.png"
    plotting.save(plotting.plot(df, x="bits"), figure)
    print(f"figure: {figure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
