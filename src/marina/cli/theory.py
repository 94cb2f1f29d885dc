"""``marina theory``: the constants of a problem and compressor, and what theory predicts.

For every method: the theory parameters (stepsize, p or alpha, b', r) and the predicted
communication rounds, bits per worker and oracle calls to reach E||grad f(x)||^2 <= eps^2,
exactly as :func:`marina.theory.predict` computes them, from the problem's smoothness constants
(L, L_f, max L_i, L_avg), the compressor's omega and zeta_Q at dimension d, its message size and
Delta_0 = f(x^0) - f_low.
"""

from __future__ import annotations

import argparse
import math
import warnings
from typing import TYPE_CHECKING, Any

from marina import theory
from marina.cli import COMMANDS, load_module
from marina.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from marina import methods
    from marina.compressors import Compressor
    from marina.problems import Problem


def rows() -> list[tuple[str, type[methods.Method], dict[str, Any]]]:
    """The rows of the table, (label, method class, overrides): every registered method's
    ``theory_rows``, by their declared order, then registration order. The MARINA family appears
    twice: p = zeta_Q/d (non-zeros, the corollaries) and p = "bits" (expected message bits / dense
    bits). EF21-SGD, EF21-SGDM and DASHA-MVR declare none: their guarantees depend on the unknown
    noise level."""
    methods = load_module("methods")
    found = [
        (row.order, i, j, row.label, cls, row.overrides)
        for i, cls in enumerate(methods.METHODS.values())
        for j, row in enumerate(cls.theory_rows)
    ]
    return [(label, cls, overrides) for *_, label, cls, overrides in sorted(found, key=lambda r: r[:3])]


MEASURE_ROUNDS = 16


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "theory",
        help=COMMANDS["theory"],
        description="Print omega and zeta_Q of the compressor, the smoothness constants of the "
        "problem, and for each method its theory stepsize, p or alpha and the predicted "
        "communication rounds, bits per worker (#bits/n) and oracle calls to reach "
        "E||grad f(x)||^2 <= eps^2 (marina.theory.predict, constants of the theorems kept).",
    )
    p.add_argument(
        "--problem", default="a9a", help="bundled data set, LibSVM file path, or synthetic (default a9a)"
    )
    p.add_argument("--workers", type=int, default=5, help="number of workers n (default 5)")
    p.add_argument(
        "--split", default="contiguous", help="how rows are divided among workers (default contiguous)"
    )
    p.add_argument("--compressor", default="randk:1", help="compressor spec (default randk:1)")
    p.add_argument("--eps", type=float, default=1e-3, help="target: E||grad f||^2 <= eps^2 (default 1e-3)")
    p.add_argument(
        "--f-low",
        type=float,
        default=None,
        help="lower bound of f in Delta_0 = f(x^0) - f_low (default: 0 for the non-negative losses, "
        "-c d for synthetic)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.set_defaults(func=main)


def lower_bound(problem: Problem) -> float:
    """A lower bound of f: ``problem.lower_bound`` if given; -c d for the synthetic family
    (squares >= 0 and c cos >= -c per coordinate); 0 otherwise (the logistic loss phi >= 0,
    cross-entropy >= 0, l2 terms >= 0)."""
    bound = getattr(problem, "lower_bound", None)
    if bound is not None:
        return float(bound)
    if hasattr(problem, "nonconvexity"):
        return -float(problem.nonconvexity) * int(problem.dim)
    return 0.0


def message_bits(comp: Compressor, problem: Problem, x: torch.Tensor, seed: int = 0) -> tuple[float, bool]:
    """(expected bits of one compressed message, measured?): the compressor's exact
    ``expected_bits(d)`` when it knows it, else the mean size of its messages for the local
    gradients at x over ``MEASURE_ROUNDS`` rounds of keyed randomness."""
    Randomness = load_module("rng").Randomness

    d = int(problem.dim)
    try:
        return float(comp.expected_bits(d)), False
    except (ConfigError, AttributeError):
        pass
    G = problem.local_grads(x)
    total = 0.0
    for k in range(MEASURE_ROUNDS):
        rng = Randomness(seed, "theory-bits", k, problem.worker_ids, device=G.device)
        total += float(comp.compress_decompress(G, rng)[1].double().mean())
    return total / MEASURE_ROUNDS, True


def predict_for(
    setting: Any, method: str, used: dict[str, Any], *, eps: float, delta0: float, message_bits: float, **kw
) -> theory.Prediction:
    """:func:`marina.theory.predict` for ``method`` (a predict name) with the constants of a
    :class:`marina.methods.Setting` and the parameters ``used`` that ``resolve`` returned (its
    p, b', r, b); ``kw`` go to predict (e.g. ``rounds``)."""
    return theory.predict(
        method,
        eps=eps,
        delta0=delta0,
        d=setting.d,
        n=setting.n,
        m=setting.m,
        L=setting.L,
        L_f=setting.L_f,
        L_max=setting.L_max,
        L_avg=setting.L_avg,
        omega=setting.omega,
        zeta=setting.zeta,
        message_bits=message_bits,
        wire_bits=setting.wire_bits,
        batch_size=used.get("batch_size"),
        clients=used.get("clients"),
        dense_batch_size=used.get("dense_batch_size"),
        ab=(setting.ab_A, setting.ab_B) if setting.correlated else None,
        L_pm=setting.L_pm,
        p=used.get("p"),
        **kw,
    )


def compute(
    problem: str = "a9a",
    workers: int = 5,
    compressor: str = "randk:1",
    eps: float = 1e-3,
    split: str = "contiguous",
    f_low: float | None = None,
) -> dict[str, Any]:
    """Everything ``marina theory`` prints, as a JSON-ready dict."""
    compressors, experiments, methods = (
        load_module("compressors"),
        load_module("experiments"),
        load_module("methods"),
    )
    SimulatedNetwork = load_module("network.simulated").SimulatedNetwork

    if not (eps > 0):
        raise ConfigError(f"--eps {eps}, must be > 0")
    (config,) = experiments.validate(
        [
            experiments.Raw(
                {
                    "problems": problem,
                    "workers": workers,
                    "split": split,
                    "methods": methods.EF21.name,  # takes every compressor, biased contractive ones too
                    "compressors": compressor,
                    "iterations": 1,
                },
                "",
            )
        ],
        lambda k: {"problems": "--problem", "compressors": "--compressor"}.get(k, f"--{k}"),
    )
    prob = experiments.load_problem(config.problem, config.workers, config.split)
    comp = compressors.get(config.compressor, workers=config.workers)
    net = SimulatedNetwork(config.workers, 0, device=prob.device)
    x0 = prob.initial_point()
    f0 = float(prob.loss(x0))
    low = lower_bound(prob) if f_low is None else float(f_low)
    if low > f0:
        raise ConfigError(f"--f-low {low:g} exceeds f(x^0) = {f0:g}, must be a lower bound of f")
    bits, measured = message_bits(comp, prob, x0)
    L_i = prob.L_i.double()
    sizes = prob.sizes.double()
    out: dict[str, Any] = {
        "problem": config.problem,
        "workers": config.workers,
        "split": config.split,
        "d": int(prob.dim),
        "m_mean": float(sizes.mean()),
        "compressor": comp.spec,
        "message_bits": bits,
        "message_bits_measured": measured,
        "eps": float(eps),
        "f_x0": f0,
        "f_low": low,
        "delta0": f0 - low,
        "L_i": {"min": float(L_i.min()), "mean": float(L_i.mean()), "max": float(L_i.max())},
    }
    rows_out: list[dict[str, Any]] = []
    setting = methods.Setting.build(prob, net, comp, 1)
    for label, cls, overrides in rows():
        if cls.accepts(comp) is not None:
            continue  # a biased compressor: only the error-feedback rows
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # p = 1 is visible in the table
                planned = methods.plan(
                    cls, prob, comp, iterations=1, overrides=overrides, network=net, check_memory=False
                )
        except ConfigError as err:  # e.g. pp-marina with a correlated compressor
            rows_out.append({"label": label, "method": cls.name, "refused": str(err)})
            continue
        pred = cls.predict(planned.setting, planned.params, eps=eps, delta0=out["delta0"], message_bits=bits)
        rows_out.append({"label": label, **pred.as_dict(), **_used_counts(planned.params)})
    out.update(
        {
            "m": setting.m,
            "m_min": setting.m_min,
            "L": setting.L,
            "L_f": setting.L_f,
            "L_max": setting.L_max,
            "L_avg": setting.L_avg,
            "omega": setting.omega,
            "alpha": setting.alpha,
            "zeta": setting.zeta,
            "correlated": setting.correlated,
            "ab": [setting.ab_A, setting.ab_B] if setting.correlated else None,
            "omega_eff": setting.omega_eff,
            "L_pm": setting.L_pm,
            "wire_bits": setting.wire_bits,
            "methods": rows_out,
        }
    )
    return out


def _used_counts(used: dict[str, Any]) -> dict[str, Any]:
    """The minibatch and client counts a method used (printed in the table)."""
    return {key: used[key] for key in ("batch_size", "clients", "dense_batch_size") if key in used}


def _omega_text(t: dict[str, Any]) -> str:
    """omega, or for a biased compressor why there is none and its contraction alpha."""
    if math.isfinite(t["omega"]):
        return f"omega = {t['omega']:.6g}"
    return f"omega undefined (biased), contractive with alpha = {t['alpha']:.6g}"


def _table(t: dict[str, Any]) -> str:
    how = "measured mean" if t["message_bits_measured"] else "exact"
    lines = [
        f"problem     {t['problem']} split {t['split']} among n = {t['workers']} workers: d = {t['d']}, "
        f"m = {t['m_mean']:.1f} per worker (min {t['m_min']}, max {t['m']})",
        f"smoothness  L = {t['L']:.6g} (sqrt mean L_i^2), L_f = {t['L_f']:.6g}, L_avg = {t['L_avg']:.6g}, "
        f"L_i in [{t['L_i']['min']:.6g}, {t['L_i']['max']:.6g}] (mean {t['L_i']['mean']:.6g})",
        f"compressor  {t['compressor']}: {_omega_text(t)}, zeta_Q = {t['zeta']:.6g}, "
        f"{t['message_bits']:.6g} bits per message ({how}; dense vector {t['d'] * t['wire_bits']} bits)",
        *(
            [
                f"correlated  AB inequality A = {t['ab'][0]:.6g}, B = {t['ab'][1]:.6g} (MARINA: Szlendak "
                f"et al. 2022, Theorem 4 (number unverified), Hessian variance L_pm = {t['L_pm']:.6g} = "
                f"{t['L_pm'] / t['L']:.3g} L); "
                f"omega_eff = {t['omega_eff']:.6g} for the other methods"
            ]
            if t["correlated"]
            else []
        ),
        f"target      E||grad f||^2 <= eps^2 = {t['eps'] ** 2:.3g}, Delta_0 = f(x^0) - f_low = "
        f"{t['f_x0']:.6g} - {t['f_low']:.6g} = {t['delta0']:.6g}",
        "",
        f"{'method':<20}{'stepsize':>12}{'p':>11}{'alpha':>11}{'b_prime':>9}{'r':>5}"
        f"{'rounds':>13}{'#bits/n':>13}{'epochs':>11}",
    ]
    for r in t["methods"]:
        if "refused" in r:
            lines.append(f"{r['label']:<20}refused: {r['refused']}")
            continue
        p = f"{r['p']:.4g}" if r["p"] is not None else "-"
        alpha = f"{r['alpha']:.4g}" if r["alpha"] is not None else "-"
        lines.append(
            f"{r['label']:<20}{r['stepsize']:>12.4e}{p:>11}{alpha:>11}{r.get('batch_size', '-')!s:>9}"
            f"{r.get('clients', '-')!s:>5}{r['rounds']:>13.4g}{r['bits_per_worker']:>13.4e}"
            f"{r['oracle_calls'] / t['m_mean']:>11.4g}"
        )
    lines.append("")
    lines.append(
        "p: zeta_Q/d (non-zeros, Corollaries 2.1-4.1); rows 'bits': expected message bits / dense "
        "bits. rounds, #bits/n (bits sent per worker) and epochs (oracle calls per worker / m) are the "
        "theorems' bounds with their constants, from marina.theory.predict; QGD's stepsize "
        "shrinks with the number of rounds K and is given for the predicted K (marina run uses "
        "its --iterations); the alpha column is DIANA's shift stepsize and DASHA's momentum a; "
        "with a biased compressor (topk:K, sign) only the error-feedback rows are shown"
    )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    experiments = load_module("experiments")

    t = compute(args.problem, args.workers, args.compressor, args.eps, args.split, args.f_low)
    if args.json:
        print(experiments.results.dumps_json(t))
    else:
        print(_table(t))
    return 0
