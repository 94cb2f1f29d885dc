"""Theory-driven defaults and predicted complexities, each with the result it comes from.

Notation (Gorbunov, Burlachenko, Li, Richtarik, "MARINA: Faster Non-Convex Distributed Learning
with Compression", ICML 2021; "the paper" below):

- ``n`` workers, dimension ``d``, ``m`` local samples per worker (the largest m_i when they differ);
- ``L`` = sqrt(mean_i L_i^2) (Assumption 1.2), ``L_max`` = max_i L_i, ``L_f`` the smoothness
  constant of f itself (L_f <= L), ``L_avg`` the average smoothness of minibatch differences
  (script-L of Assumption 3.1);
- ``omega`` the variance parameter of an unbiased compressor Q (Definition 1.1:
  E||Q(x) - x||^2 <= omega ||x||^2) and ``zeta`` its expected density zeta_Q = sup E||Q(x)||_0;
- ``A``, ``B`` the constants of the AB inequality (Szlendak, Tyurin, Richtarik, "Permutation
  compressors for provably faster distributed nonconvex optimization", ICLR 2022, arXiv:2110.03300,
  Definition 1): E||(1/n) sum_i Q_i(a_i) - abar||^2 <= A (1/n) sum_i ||a_i||^2 - B ||abar||^2;
  A = omega/n, B = 0 for independent unbiased Q_i; for PermK (correlated) A = B = 1 when d >= n
  and A = B = omega/(n - 1) < 1 when d < n (:meth:`marina.compressors.permk.PermK.ab_constants`);
- ``L_pm`` (L_±) the Hessian variance of the same paper: (1/n) sum_i ||grad f_i(x) - grad f_i(y)||^2
  - ||grad f(x) - grad f(y)||^2 <= L_pm^2 ||x - y||^2 (L_pm <= L always);
  the numbers cited from that paper (Definitions 1-3, "Theorem 4" for MARINA under the AB
  inequality) are unverified: only its abstract could be reached, not its text. What was checked:
  the stepsize formula of :func:`marina_ab_stepsize` is the authors' code's (mysteryresearcher/dasha,
  algorithm.py: MarinaPermutationMasterAlgorithm._estimate_permutation_gamma for d >= n, with
  A = (omega + 1)/n and B = 1, and MarinaNodesPermutationMasterAlgorithm for n a multiple of d,
  A = B = omega/(n - 1)), and PermK's constants are derived and tested here;
- ``b_prime`` (b') the minibatch of VR-MARINA's compressed rounds, ``b`` the minibatch of its
  online dense rounds, ``r`` the number of clients of PP-MARINA's compressed rounds.

Every function is a pure function of numbers; :func:`predict` turns them into the iteration,
communication and oracle complexities of Table 1 with the constants of the theorems kept (so
the gap between theory and measurement can be shown), and :func:`guarantee` gives the bound on
E||grad f(x_hat)||^2 after K rounds that each theorem proves.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import marina  # marina.methods loads on first use: the parsers' --help stays free of torch
from marina.errors import ConfigError

__all__ = [
    "gd_stepsize",
    "qgd_abc_constants",
    "qgd_stepsize",
    "diana_alpha",
    "diana_stepsize",
    "vr_diana_epoch_length",
    "effective_omega",
    "bits_p",
    "marina_p",
    "marina_stepsize",
    "marina_ab_stepsize",
    "pp_marina_oracle_per_round",
    "marina_pl_stepsize",
    "vr_marina_p",
    "vr_marina_online_p",
    "vr_marina_stepsize",
    "pp_marina_p",
    "pp_marina_stepsize",
    "guarantee",
    "Prediction",
    "predict",
    "predict_successor",
    "successor_cost",
    "rounds_to_reach",
    "qgd_rounds",
    "chosen_p",
    "p_size",
]


def _guarantee_factor(method: str) -> float:
    """c of the guarantee c Delta_0/(gamma K) that ``method`` declares
    (:attr:`marina.methods.Method.guarantee_factor`); ConfigError when it declares none."""
    try:
        cls = marina.methods.get(method)
    except ConfigError:
        cls = None
    if cls is None:
        known = [name for name, c in marina.methods.METHODS.items() if c.guarantee_factor is not None]
        raise ConfigError(f"no guarantee for method {method!r}; known: qgd, {', '.join(known)}")
    return cls.checked_guarantee_factor()


def _positive(name: str, value: float) -> float:
    value = float(value)
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{name} == {value}, must be a finite number > 0")
    return value


def _nonnegative(name: str, value: float) -> float:
    value = float(value)
    if not (value >= 0 and math.isfinite(value)):
        raise ConfigError(f"{name} == {value}, must be a finite number >= 0")
    return value


def _probability(name: str, value: float) -> float:
    value = float(value)
    if not (0.0 < value <= 1.0):
        raise ConfigError(f"{name} == {value}, must be in (0, 1]")
    return value


# -- GD ---------------------------------------------------------------------------------------
def gd_stepsize(L_f: float) -> float:
    """gamma = 1/L_f: the descent lemma gives f(x^{k+1}) <= f(x^k) - (gamma/2)||grad f(x^k)||^2,
    hence min_k ||grad f(x^k)||^2 <= 2 Delta_0/(gamma K) (e.g. Nesterov 2004, Sec. 1.2.3).

    Args:
        L_f: the smoothness constant L_f of f (L_f <= L).
    """
    return 1.0 / _positive("L_f", L_f)


# -- QGD / DCGD ---------------------------------------------------------------------------------
def qgd_abc_constants(
    L_max: float, omega: float, n: int, delta_inf: float = 0.0
) -> tuple[float, float, float]:
    """(A, B, C) of the ABC assumption of Khaled & Richtarik 2020 ("Better theory for SGD in the
    nonconvex world", Assumption 2) for g = (1/n) sum_i Q_i(grad f_i(x)) with independent Q_i:

    E||g||^2 = ||grad f||^2 + (1/n^2) sum_i E||Q_i(grad f_i) - grad f_i||^2
             <= ||grad f||^2 + (omega/n^2) sum_i ||grad f_i||^2,
    and ||grad f_i(x)||^2 <= 2 L_i (f_i(x) - f_i^inf), so
    A = omega L_max / n, B = 1, C = 2 A delta_inf with delta_inf = f^inf - (1/n) sum_i f_i^inf >= 0.

    Args:
        L_max: L_max = max_i L_i.
        omega: the compressor's variance parameter omega (Definition 1.1).
        n: the number of workers n.
        delta_inf: delta_inf = f^inf - (1/n) sum_i f_i^inf >= 0.

    Returns:
        (A, B, C) = (omega L_max/n, 1, 2 A delta_inf).
    """
    A = _nonnegative("omega", omega) * _positive("L_max", L_max) / int(n)
    return A, 1.0, 2.0 * A * _nonnegative("delta_inf", delta_inf)


def qgd_stepsize(L_f: float, L_max: float, omega: float, n: int, iterations: int) -> float:
    """gamma = min(1/(L_f B), 1/sqrt(L_f A K)) (Khaled & Richtarik 2020, Theorem 2 / Corollary 1,
    with the ABC constants of :func:`qgd_abc_constants`; the guarantee then reads
    min_k E||grad f(x^k)||^2 <= 2 e Delta_0/(gamma K) + L_f C gamma).

    Args:
        L_f: the smoothness constant L_f of f (L_f <= L).
        L_max: L_max = max_i L_i.
        omega: the compressor's variance parameter omega (Definition 1.1).
        n: the number of workers n.
        iterations: the number of rounds K.
    """
    A, B, _ = qgd_abc_constants(L_max, omega, n)
    L_f = _positive("L_f", L_f)
    gamma = 1.0 / (L_f * B)
    if A > 0:
        gamma = min(gamma, 1.0 / math.sqrt(L_f * A * int(iterations)))
    return gamma


# -- DIANA / VR-DIANA -------------------------------------------------------------------------------
def diana_alpha(omega: float) -> float:
    """alpha = 1/(1+omega) (Horvath et al. 2019, "Stochastic distributed learning with gradient
    quantization and variance reduction", Theorem 4).

    Args:
        omega: the compressor's variance parameter omega (Definition 1.1).
    """
    return 1.0 / (1.0 + _nonnegative("omega", omega))


def diana_stepsize(L: float, omega: float, n: int, epoch_length: float = 1.0) -> float:
    """gamma = 1/(10 L sqrt(1 + omega/n) (M^{2/3} + omega + 1)) (Horvath et al. 2019, Theorem 4,
    non-convex case). M is the number of minibatches per local data set (m/b for VR-DIANA with
    minibatch b); M = 1 gives DIANA with full local gradients. L bounds the smoothness of the
    components the estimator samples (max_i L_i for DIANA).

    Args:
        L: the smoothness constant of the sampled components (max_i L_i for DIANA).
        omega: the compressor's variance parameter omega (Definition 1.1).
        n: the number of workers n.
        epoch_length: M, the minibatches per local data set (1: DIANA).
    """
    omega = _nonnegative("omega", omega)
    M = _positive("M", epoch_length)
    return 1.0 / (
        10.0 * _positive("L", L) * math.sqrt(1.0 + omega / int(n)) * (M ** (2.0 / 3.0) + omega + 1.0)
    )


def vr_diana_epoch_length(m: int, batch_size: int) -> float:
    """M = m/b: the L-SVRG reference point is refreshed with probability 1/M per round (Kovalev,
    Horvath & Richtarik 2019, loopless SVRG; Horvath et al. 2019, Algorithm 1 with minibatch b).

    Args:
        m: the local data set size m (the largest m_i).
        batch_size: the minibatch b.
    """
    return float(m) / float(batch_size)


# -- correlated compressors and bit-aware p -------------------------------------------------------
def effective_omega(omega: float, n: int, A: float) -> float:
    """omega_eff = max(omega, n A): the omega to use in a theorem proved for independent
    compressors when the Q_i are correlated with AB constant A. Such proofs use two facts about Q:
    E||Q_i(x) - x||^2 <= omega ||x||^2 per worker, and E||(1/n) sum_i Q_i(a_i) - abar||^2 <=
    (omega/n^2) sum_i ||a_i||^2 for the average; the AB inequality gives the second with omega/n
    replaced by A, so omega_eff satisfies both (conservative; independent Q_i: A = omega/n, so
    omega_eff = omega; PermK: omega_eff = n for d >= n, n omega/(n - 1) for d < n).

    Args:
        omega: the compressor's variance parameter omega (Definition 1.1).
        n: the number of workers n.
        A: the AB-inequality constant A of the correlated Q_i.
    """
    return max(_nonnegative("omega", omega), int(n) * _nonnegative("A", A))


def bits_p(message_bits: float, d: int, wire_bits: int) -> float:
    """p = (expected bits of a compressed message)/(bits of a dense one): the bit-aware form of
    Corollary 2.1's choice, which balances the expected cost of a round, p d w + (1-p) bits(Q),
    against the compressed cost the same way zeta_Q/d does for non-zeros.

    Args:
        message_bits: the expected bits of one compressed message.
        d: the dimension d.
        wire_bits: the bits of one dense value on the wire.
    """
    return min(1.0, _positive("message_bits", message_bits) / (int(d) * int(wire_bits)))


# -- MARINA --------------------------------------------------------------------------------------
def marina_p(zeta: float, d: int) -> float:
    """p = zeta_Q/d (Corollary 2.1): the expected dense cost p d equals the compressed cost zeta_Q.

    Args:
        zeta: the compressor's expected density zeta_Q.
        d: the dimension d.
    """
    return min(1.0, _positive("zeta_Q", zeta) / int(d))


def marina_stepsize(L: float, omega: float, n: int, p: float) -> float:
    """gamma = 1/(L (1 + sqrt((1-p) omega/(p n)))) (Theorem 2.1).

    Args:
        L: L = sqrt(mean_i L_i^2) (Assumption 1.2).
        omega: the compressor's variance parameter omega (Definition 1.1).
        n: the number of workers n.
        p: the probability p of a dense round (c_k = 1).
    """
    p = _probability("p", p)
    return 1.0 / (_positive("L", L) * (1.0 + math.sqrt((1.0 - p) * _nonnegative("omega", omega) / (p * n))))


def marina_ab_stepsize(L_f: float, L: float, L_pm: float, A: float, B: float, p: float) -> float:
    """gamma = 1/(L_- + sqrt((1-p)/p ((A - B) L_+^2 + B L_pm^2))) with L_- = L_f, L_+ = L: MARINA
    with compressors satisfying the AB inequality, correlated ones included (Szlendak, Tyurin,
    Richtarik 2022, their MARINA theorem, cited as Theorem 4: numbering unverified, formula as the
    authors' code, see the module docstring; the guarantee is Theorem 2.1's, 2 Delta_0/(gamma K)). For PermK
    (A = B = kappa, 1 for d >= n, omega/(n - 1) for d < n): 1/(L_f + sqrt((1-p)/p kappa) L_pm);
    for independent Q_i (A = omega/n, B = 0) it is Theorem 2.1's stepsize with L_f in place of
    the first L.

    Args:
        L_f: L_-, the smoothness constant of f.
        L: L_+ = sqrt(mean_i L_i^2).
        L_pm: the Hessian variance L_pm (L_pm <= L).
        A: the AB-inequality constant A.
        B: the AB-inequality constant B (B <= A).
        p: the probability p of a dense round (c_k = 1).
    """
    p = _probability("p", p)
    A, B = _nonnegative("A", A), _nonnegative("B", B)
    if B > A:
        raise ConfigError(f"B == {B} exceeds A == {A}, must be B <= A (AB inequality)")
    var = (A - B) * _positive("L", L) ** 2 + B * _nonnegative("L_pm", L_pm) ** 2
    return 1.0 / (_positive("L_f", L_f) + math.sqrt((1.0 - p) / p * var))


def marina_pl_stepsize(L: float, omega: float, n: int, p: float, mu: float) -> float:
    """gamma = min(1/(L (1 + sqrt(2 (1-p) omega/(p n)))), p/(2 mu)) under the PL condition with
    parameter mu (Theorem 2.2).

    Args:
        L: L = sqrt(mean_i L_i^2) (Assumption 1.2).
        omega: the compressor's variance parameter omega (Definition 1.1).
        n: the number of workers n.
        p: the probability p of a dense round (c_k = 1).
        mu: the PL constant mu.
    """
    p = _probability("p", p)
    base = 1.0 / (
        _positive("L", L) * (1.0 + math.sqrt(2.0 * (1.0 - p) * _nonnegative("omega", omega) / (p * n)))
    )
    return min(base, p / (2.0 * _positive("mu", mu)))


# -- VR-MARINA ------------------------------------------------------------------------------------
def _batch_at_most(b_prime: int, bound: int, what: str) -> int:
    """b' as an int in [1, ``bound``], else a ConfigError naming both (``what``: the bound and why)."""
    b_prime, bound = int(b_prime), int(bound)
    if b_prime < 1:
        raise ConfigError(f"batch_size b' == {b_prime}, must be >= 1")
    if b_prime > bound:
        raise ConfigError(f"batch_size b' == {b_prime} exceeds {what} == {bound}, must be b' <= it")
    return b_prime


def vr_marina_p(zeta: float, d: int, m: int, b_prime: int) -> float:
    """p = min(zeta_Q/d, b'/(m + b')) (Corollary 3.1, finite-sum case), for b' <= m (the b' samples
    are drawn without replacement from the m local ones; ConfigError otherwise).

    Args:
        zeta: the compressor's expected density zeta_Q.
        d: the dimension d.
        m: the local data set size m (the largest m_i).
        b_prime: b', the minibatch of the compressed rounds.
    """
    b_prime = _batch_at_most(b_prime, m, "m (finite sum: b' of the m local samples, without replacement)")
    return min(marina_p(zeta, d), b_prime / (m + b_prime))


def vr_marina_online_p(zeta: float, d: int, b: int, b_prime: int) -> float:
    """p = min(zeta_Q/d, b'/(b + b')) (Corollary 3.2, online case), for b' <= b (the corollary's
    b' is at most the dense rounds' batch b; ConfigError otherwise).

    Args:
        zeta: the compressor's expected density zeta_Q.
        d: the dimension d.
        b: the minibatch b of the dense rounds.
        b_prime: b', the minibatch of the compressed rounds.
    """
    b_prime = _batch_at_most(b_prime, b, "dense_batch_size b (online: Corollary 3.2 takes b' <= b)")
    return min(marina_p(zeta, d), b_prime / (b + b_prime))


def vr_marina_stepsize(L: float, L_avg: float, omega: float, n: int, p: float, b_prime: int) -> float:
    """gamma = 1/(L + sqrt((1-p)/(p n) (omega L^2 + (1+omega) L_avg^2/b'))) (Theorems 3.1 and 3.2).

    Args:
        L: L = sqrt(mean_i L_i^2) (Assumption 1.2).
        L_avg: script-L, the average smoothness of minibatch differences (Assumption 3.1).
        omega: the compressor's variance parameter omega (Definition 1.1).
        n: the number of workers n.
        p: the probability p of a dense round (c_k = 1).
        b_prime: b', the minibatch of the compressed rounds.
    """
    p = _probability("p", p)
    L = _positive("L", L)
    omega = _nonnegative("omega", omega)
    b_prime = _batch_at_most(b_prime, b_prime, "itself")  # an integer >= 1
    var = omega * L**2 + (1.0 + omega) * _nonnegative("L_avg", L_avg) ** 2 / b_prime
    return 1.0 / (L + math.sqrt((1.0 - p) / (p * n) * var))


# -- PP-MARINA ------------------------------------------------------------------------------------
def pp_marina_p(zeta: float, d: int, n: int, r: int) -> float:
    """p = zeta_Q r/(d n) (Corollary 4.1).

    Args:
        zeta: the compressor's expected density zeta_Q.
        d: the dimension d.
        n: the number of workers n.
        r: the number of clients r of a compressed round.
    """
    return min(1.0, _positive("zeta_Q", zeta) * int(r) / (int(d) * int(n)))


def pp_marina_stepsize(L: float, omega: float, p: float, r: int) -> float:
    """gamma = 1/(L (1 + sqrt((1-p)(1+omega)/(p r)))) (Theorem 4.1).

    Args:
        L: L = sqrt(mean_i L_i^2) (Assumption 1.2).
        omega: the compressor's variance parameter omega (Definition 1.1).
        p: the probability p of a dense round (c_k = 1).
        r: the number of clients r of a compressed round.
    """
    p = _probability("p", p)
    return 1.0 / (
        _positive("L", L) * (1.0 + math.sqrt((1.0 - p) * (1.0 + _nonnegative("omega", omega)) / (p * r)))
    )


def pp_marina_oracle_per_round(m: float, n: int, r: int, p: float) -> tuple[float, float]:
    """Expected oracle calls per worker of one PP-MARINA round, counted as the method does:
    ``(first, later)`` for round 0 and for rounds k >= 1.

    A compressed round (probability 1 - p) draws r clients with replacement: client i takes part
    with probability q = 1 - (1 - 1/n)^r and pays m for grad f_i(x^{k+1}) plus m for
    grad f_i(x^k) unless it holds it. It holds it when the previous round was dense or it took
    part in it: always in round 0 (g^0 is dense), with probability p + (1-p) q later, independent
    of this round's draw. A dense round costs m. So round 0 costs p m + (1-p) q m and round
    k >= 1 costs p m + (1-p) q m (2 - p - (1-p) q).

    Args:
        m: the local data set size m (mean m_i).
        n: the number of workers n.
        r: the number of clients r of a compressed round.
        p: the probability p of a dense round (c_k = 1).

    Returns:
        (first, later): the expected calls of round 0 and of a round k >= 1.
    """
    p = _probability("p", p)
    q = 1.0 - (1.0 - 1.0 / int(n)) ** int(r)
    fresh = p + (1.0 - p) * q
    return p * m + (1.0 - p) * q * m, p * m + (1.0 - p) * q * m * (2.0 - fresh)


# -- guarantees and predictions ------------------------------------------------------------------------
def guarantee(
    method: str,
    delta0: float,
    stepsize: float,
    iterations: int,
    *,
    L_f: float | None = None,
    qgd_C: float = 0.0,
) -> float:
    """Upper bound on (1/K) sum_{k<K} E||grad f(x^k)||^2 (hence on the expected min) proved for
    ``method`` run K = ``iterations`` rounds with ``stepsize`` no larger than its theory value:

    - gd: 2 Delta_0/(gamma K) (descent lemma);
    - marina (Thm 2.1), vr-marina finite sum (Thm 3.1), pp-marina (Thm 4.1): 2 Delta_0/(gamma K)
      (the full statements in Appendices C-E; g^0 = grad f(x^0) makes the Lyapunov function
      start at Delta_0);
    - diana, vr-diana: 4 Delta_0/(gamma K) (Horvath et al. 2019, Theorem 4: 40 Delta_0 L
      sqrt(1+omega/n)(M^{2/3}+omega+1)/K with gamma = 1/(10 L sqrt(1+omega/n)(M^{2/3}+omega+1)));
    - ef21 (Thm 1), ef21-pp (Thm 7 of the extensions paper), dasha (Thm 6.1), dasha-page
      (Thm 6.4): 2 Delta_0/(gamma K) with the dense start g_i^0 = grad f_i(x^0);
    - qgd: 2 e Delta_0/(gamma K) + L_f C gamma (Khaled & Richtarik 2020, Theorem 2, with
      (1 + L A gamma^2)^K <= e for gamma <= 1/sqrt(L A K)); pass ``L_f`` and ``qgd_C``.
    The online VR-MARINA, EF21-SGD, EF21-SGDM and DASHA-MVR bounds add terms of the noise level
    sigma^2: not covered here (ConfigError saying so).

    Args:
        method: a registered method name, or "qgd".
        delta0: Delta_0 = f(x^0) - f^inf.
        stepsize: the stepsize gamma.
        iterations: the number of rounds K.
        L_f: the smoothness constant L_f of f (qgd only).
        qgd_C: the ABC constant C (qgd only, :func:`qgd_abc_constants`).
    """
    delta0 = _nonnegative("Delta_0", delta0)
    gamma = _positive("stepsize", stepsize)
    K = int(iterations)
    if K < 1:
        raise ConfigError(f"iterations == {K}, must be >= 1")
    if method == "qgd":
        if L_f is None:
            raise ConfigError("guarantee('qgd', ...) needs L_f")
        return 2.0 * math.e * delta0 / (gamma * K) + float(L_f) * float(qgd_C) * gamma
    factor = _guarantee_factor(method)
    return factor * delta0 / (gamma * K)


@dataclass(frozen=True)
class Prediction:
    """Predicted cost of reaching E||grad f(x_hat)||^2 <= eps^2 with the theory parameters.

    Attributes:
        method: the method's name.
        rounds: the communication rounds K.
        bits_per_worker: the expected bits each worker sends in total (the paper's #bits/n,
            including the dense g^0 round of the MARINA family).
        oracle_calls: the expected component-gradient evaluations per worker.
        stepsize: the stepsize gamma.
        p: the MARINA family's probability p of a dense round (None: the method has none).
        alpha: the method's other parameter (DIANA's alpha, a momentum), or None.
    """

    method: str
    rounds: int
    bits_per_worker: float
    oracle_calls: float
    stepsize: float
    p: float | None = None
    alpha: float | None = None

    def as_dict(self) -> dict:
        """The fields as a dict."""
        return asdict(self)


def rounds_to_reach(factor: float, delta0: float, gamma: float, eps: float, rounds: int | None = None) -> int:
    """K = ceil(factor Delta_0/(gamma eps^2)) (at least 1): the rounds after which the guarantee
    factor Delta_0/(gamma K) is at most eps^2; ``rounds`` when given instead.

    Args:
        factor: c of the guarantee c Delta_0/(gamma K).
        delta0: Delta_0 = f(x^0) - f^inf.
        gamma: the stepsize gamma.
        eps: the target accuracy eps (E||grad f||^2 <= eps^2).
        rounds: the answer when given (None: computed).
    """
    eps2 = _positive("eps", eps) ** 2
    if rounds is not None:
        return int(rounds)
    return max(1, math.ceil(factor * delta0 / (gamma * eps2)))


def qgd_rounds(delta0: float, L_f: float, A: float, B: float, C: float, eps: float) -> int:
    """K >= 12 Delta_0 L_f/eps^2 max(B, 12 Delta_0 A/eps^2, 2 C/eps^2) (Khaled & Richtarik 2020,
    Corollary 1, with the ABC constants of :func:`qgd_abc_constants`).

    Args:
        delta0: Delta_0 = f(x^0) - f^inf.
        L_f: the smoothness constant L_f of f (L_f <= L).
        A: the ABC constant A.
        B: the ABC constant B.
        C: the ABC constant C.
        eps: the target accuracy eps (E||grad f||^2 <= eps^2).
    """
    eps2 = _positive("eps", eps) ** 2
    return max(1, math.ceil(12.0 * delta0 * L_f / eps2 * max(B, 12.0 * delta0 * A / eps2, 2.0 * C / eps2)))


def chosen_p(p: float | str | None, default: float) -> float:
    """The MARINA family's p for a prediction: ``default`` (the theory value) for None or
    ``"bits"``, else the given probability.

    Args:
        p: the given p: a probability, None or "bits".
        default: the theory value of p.
    """
    return default if p is None or p == "bits" else _probability("p", p)


def p_size(p: float | str | None, zeta: float, message_bits: float, wire_bits: int) -> float:
    """What p = size/d counts (Corollary 2.1): zeta_Q, or message_bits/wire_bits for ``p="bits"``.

    Args:
        p: the given p ("bits" selects the bit count).
        zeta: the compressor's expected density zeta_Q.
        message_bits: the expected bits of one compressed message.
        wire_bits: the bits of one dense value on the wire.
    """
    return float(message_bits) / wire_bits if p == "bits" else zeta


def predict(
    method: str,
    *,
    eps: float,
    delta0: float,
    d: int,
    n: int,
    m: int,
    L: float,
    L_f: float,
    L_max: float,
    L_avg: float,
    omega: float,
    zeta: float,
    message_bits: float,
    wire_bits: int = 32,
    batch_size: int | None = None,
    clients: int | None = None,
    dense_batch_size: int | None = None,
    delta_inf: float = 0.0,
    ab: tuple[float, float] | None = None,
    L_pm: float | None = None,
    p: float | str | None = None,
    rounds: int | None = None,
) -> Prediction:
    """Rounds, bits and oracle calls to reach E||grad f(x_hat)||^2 <= eps^2 (Table 1, constants kept).

    The method's own :meth:`marina.methods.Method.predict` with these constants (``method`` is a
    registered name; ``NAME-online`` is NAME with ``online=True``, VR-MARINA's Algorithm 3).
    ``message_bits`` is the expected size of one compressed message, ``wire_bits`` the bits of one
    dense value. The rounds solve guarantee(method, delta0, gamma, K) <= eps^2 for K with the
    theory parameters of each method (for QGD, :func:`qgd_rounds`). Per-round costs:
    GD d values; QGD, DIANA, VR-DIANA one message; MARINA and VR-MARINA p d + (1-p) message;
    PP-MARINA p d + (1-p)(r/n) message (only r of n clients send), plus one dense round at start
    for the MARINA family. Oracle calls: full local gradient m; minibatch difference 2 b';
    PP-MARINA as the method counts them (:func:`pp_marina_oracle_per_round`).

    ``ab`` = (A, B) for a correlated compressor (None: independent, A = omega/n, B = 0): MARINA then
    uses :func:`marina_ab_stepsize` with ``L_pm`` (default L), QGD, DIANA, VR-DIANA and VR-MARINA
    omega_eff = max(omega, n A), and PP-MARINA is refused. ``p``: the MARINA family's p, None
    for the theory value with zeta_Q, ``"bits"`` for it with message_bits/wire_bits in place of
    zeta_Q (:func:`bits_p`), or a number. ``rounds``: cost of that many rounds instead of the
    number that reaches eps (to compare with a run of that length).

    Args:
        method: a registered method name, or NAME-online.
        eps: the target accuracy eps (E||grad f||^2 <= eps^2).
        delta0: Delta_0 = f(x^0) - f^inf.
        d: the dimension d.
        n: the number of workers n.
        m: the local data set size m (the largest m_i).
        L: L = sqrt(mean_i L_i^2) (Assumption 1.2).
        L_f: the smoothness constant L_f of f (L_f <= L).
        L_max: L_max = max_i L_i.
        L_avg: script-L, the average smoothness of minibatch differences (Assumption 3.1).
        omega: the compressor's variance parameter omega (Definition 1.1).
        zeta: the compressor's expected density zeta_Q.
        message_bits: the expected bits of one compressed message.
        wire_bits: the bits of one dense value on the wire.
        batch_size: b', the minibatch of VR-MARINA's compressed rounds (also VR-DIANA's and DASHA's B).
        clients: r, PP-MARINA's clients per compressed round.
        dense_batch_size: b, the minibatch of online VR-MARINA's dense rounds (DASHA-MVR's B_0).
        delta_inf: QGD's delta_inf (:func:`qgd_abc_constants`).
        ab: (A, B) of a correlated compressor, or None.
        L_pm: the Hessian variance L_pm (None: L).
        p: the MARINA family's p (see above).
        rounds: the number of rounds to cost (None: the rounds that reach eps).
    """
    name, online = method, False
    if isinstance(method, str) and method.endswith("-online"):
        name, online = method[: -len("-online")], True
    try:
        cls = marina.methods.get(name)
    except ConfigError:
        known = [k for k, c in marina.methods.METHODS.items() if c.theory_rows]
        raise ConfigError(f"unknown method {method!r}; known: {', '.join(known)}") from None
    setting = marina.methods.Setting(
        d=d,
        n=n,
        m=m,
        m_min=m,
        L=L,
        L_max=L_max,
        L_f=L_f,
        L_avg=L_avg,
        omega=omega,
        zeta=zeta,
        wire_bits=wire_bits,
        iterations=1,
        correlated=ab is not None,
        ab_A=math.nan if ab is None else ab[0],
        ab_B=math.nan if ab is None else ab[1],
        L_pm=L if L_pm is None else L_pm,
    )
    used = {"batch_size": batch_size, "clients": clients, "dense_batch_size": dense_batch_size, "p": p}
    used |= {"online": online, "delta_inf": delta_inf}  # delta_inf: QGD's constant C
    return cls.predict(setting, used, eps=eps, delta0=delta0, message_bits=message_bits, rounds=rounds)


# -- EF21 family (error feedback with contractive compressors) -------------------------------------
# Richtarik, Sokolov, Fatkhullin, "EF21: A New, Simpler, Theoretically Better, and Practically
# Faster Error Feedback", NeurIPS 2021 ("EF21" below); Fatkhullin, Sokolov, Gorbunov, Li,
# Richtarik, "EF21 with Bells & Whistles", 2021 ("the extensions paper"). There L is the
# smoothness of f (our L_f) and L-tilde = sqrt(mean_i L_i^2) (our L). What was checked, and against what
# (the papers' text itself was not at hand):
# - EF21 (Theorem 1): gamma = 1/(L + L-tilde sqrt(beta/theta)) with theta = 1 - sqrt(1 - alpha),
#   beta = (1 - alpha)/(1 - sqrt(1 - alpha)) is the stepsize of FL_PyTorch (burlachenkok/flpytorch,
#   fl_pytorch/utils/algorithms.py, EF21AC.theoreticalStepSize, "Th.1, p.40 from EF21"); the EF21
#   authors' code (mysteryresearcher/dasha, algorithm.py, EF21MasterAlgorithm) uses the bound
#   sqrt(beta/theta) <= 2/alpha - 1 in its place.
# - EF21-PP: theta_p = rho p_min + theta p_max - rho - (p_max - p_min) and
#   beta_p = beta p + (1 + 1/rho)(1 - p), gamma = 1/(L + L-tilde sqrt(beta_p/theta_p)), with
#   theta = 1 - (1 + s)(1 - alpha), beta = (1 + 1/s)(1 - alpha) for free s, rho > 0, is FL_PyTorch's
#   EF21PP.theoreticalStepSize ("Th.7, p.47 from EF21-PP", i.e. Theorem 7 of the extensions paper;
#   it fixes s = rho = 1e-3). We take p_min = p_max = q, EF21's s and rho = theta q/(2 (1 - q)).
# - EF21-SGD: beta_1 = 2 beta is NOT verified (neither text nor code of that theorem was found);
#   tests/test_beyond.py pins the formula as written.
def ef21_theta_beta(alpha: float) -> tuple[float, float]:
    """(theta, beta) = (1 - sqrt(1 - alpha), (1 - alpha)/(1 - sqrt(1 - alpha))): EF21, Lemma 3
    with Young's parameter s = 1/sqrt(1 - alpha) - 1, the choice of Theorem 1 (beta = 0 at
    alpha = 1).

    Args:
        alpha: the compressor's contraction parameter alpha, ||C(x) - x||^2 <= (1 - alpha) ||x||^2.

    Returns:
        (theta, beta).
    """
    alpha = _probability("alpha", alpha)
    root = math.sqrt(1.0 - alpha)
    return 1.0 - root, (1.0 - alpha) / (1.0 - root)


def ef21_stepsize(L_f: float, L: float, alpha: float) -> float:
    """gamma = 1/(L_f + L sqrt(beta/theta)) (EF21, Theorem 1); alpha = 1 gives GD's 1/L_f.

    Args:
        L_f: the smoothness constant L of f (our L_f).
        L: L-tilde = sqrt(mean_i L_i^2) (our L).
        alpha: the compressor's contraction parameter alpha, ||C(x) - x||^2 <= (1 - alpha) ||x||^2.
    """
    theta, beta = ef21_theta_beta(alpha)
    return 1.0 / (_positive("L_f", L_f) + _positive("L", L) * math.sqrt(beta / theta))


def ef21_pp_theta_beta(alpha: float, participation: float) -> tuple[float, float]:
    """(theta_p, beta_p) of EF21-PP (the extensions paper, Theorem 7, as FL_PyTorch reads it) with
    every client taking part with probability q = ``participation`` (p_min = p_max = q):
    theta_p = rho q + theta q - rho, beta_p = beta q + (1 + 1/rho)(1 - q), with the free
    rho = theta q/(2 (1 - q)) (our choice; the theorem asks only theta_p > 0), so
    theta_p = theta q/2. q = 1 gives EF21's (theta, beta).

    Args:
        alpha: the compressor's contraction parameter alpha, ||C(x) - x||^2 <= (1 - alpha) ||x||^2.
        participation: q, the probability that a client takes part in a round.

    Returns:
        (theta_p, beta_p).
    """
    theta, beta = ef21_theta_beta(alpha)
    q = _probability("participation", participation)
    if q == 1.0:
        return theta, beta
    rho = theta * q / (2.0 * (1.0 - q))
    return rho * q + theta * q - rho, beta * q + (1.0 + 1.0 / rho) * (1.0 - q)


def ef21_pp_stepsize(L_f: float, L: float, alpha: float, participation: float) -> float:
    """gamma = 1/(L_f + L sqrt(beta_p/theta_p)) (EF21-PP, the extensions paper), with
    (theta_p, beta_p) of :func:`ef21_pp_theta_beta`.

    Args:
        L_f: the smoothness constant L of f (our L_f).
        L: L-tilde = sqrt(mean_i L_i^2) (our L).
        alpha: the compressor's contraction parameter alpha, ||C(x) - x||^2 <= (1 - alpha) ||x||^2.
        participation: q, the probability that a client takes part in a round.
    """
    theta, beta = ef21_pp_theta_beta(alpha, participation)
    return 1.0 / (_positive("L_f", L_f) + _positive("L", L) * math.sqrt(beta / theta))


def ef21_sgd_stepsize(L_f: float, L: float, alpha: float) -> float:
    """gamma = 1/(L_f + L sqrt(beta_1/theta)) with beta_1 = 2 beta (EF21-SGD, the extensions
    paper: the estimator's error splits by Young's inequality into the compression part and the
    minibatch noise, doubling beta; theta, beta as :func:`ef21_theta_beta`). That the noise only
    adds a neighbourhood to the guarantee (of order sigma^2/b, not a smaller stepsize) assumes
    bounded variance: E||g_hat_i(x) - grad f_i(x)||^2 <= sigma^2/b for every x and i, g_hat_i a
    b-sample minibatch gradient. The LibSVM (logistic) problems satisfy it: |psi'| <= 8/27, so
    sigma^2 <= (8/27)^2 max_i mean_j ||a_ij||^2. The synthetic least-squares family does only on
    bounded sets (its per-sample gradients grow with ||x||), and a network's gradients need not.
    The factor 2 is our reading, unverified (see the comment above :func:`ef21_theta_beta`).

    Args:
        L_f: the smoothness constant L of f (our L_f).
        L: L-tilde = sqrt(mean_i L_i^2) (our L).
        alpha: the compressor's contraction parameter alpha, ||C(x) - x||^2 <= (1 - alpha) ||x||^2.
    """
    theta, beta = ef21_theta_beta(alpha)
    return 1.0 / (_positive("L_f", L_f) + _positive("L", L) * math.sqrt(2.0 * beta / theta))


# -- EF21-SGDM (Fatkhullin, Tyurin, Richtarik, "Momentum Provably Improves Error Feedback!", NeurIPS
# 2023, arXiv:2305.15155; "the momentum paper" below) --------------------------------------------------
# There L is the smoothness of f (our L_f), L-tilde = sqrt(mean_i L_i^2) (our L), sigma^2 bounds the
# variance of one stochastic gradient of f_i, B is the batch and T the number of rounds. What was
# checked: the algorithm (worker momentum v_i = (1 - eta) v_i + eta grad f_i(x; xi), g_i += C(v_i - g_i),
# x -= gamma mean_i g_i) is the paper's Algorithm 1 as its abstract and the issue state it; the order
# (step x, stochastic gradient at the new x, momentum, compress v_i - g_i, g_i += c_i, average) matches
# the normalized variant of Khirirat et al. (arXiv:2410.16871, Algorithm 2), who also cite the EF21-SGDM
# rate as the momentum paper's Theorem 3 and its Lyapunov function as f - f_inf plus weighted means of
# ||v_i - g_i||^2 and ||v_i - grad f_i||^2 (no constants). The theorem's and corollary's text were NOT at
# hand: the stored copy of the NeurIPS text is only searchable through its opening (abstract and first
# line of the introduction). So the conditions below are our reading, unverified, constants included:
# - stepsize gamma <= min(alpha/(20 L-tilde), eta/(7 L)), any eta in (0, 1];
# - bound (1/T) sum_t E||grad f(x^t)||^2 = O(Delta_0/(gamma T) + eta^2 sigma^2/(alpha^2 B)
#   + eta sigma^2/(n B)) with the noise-free start g_i^0 = v_i^0 = grad f_i(x^0);
# - eta chosen to balance those terms with gamma = eta/(7 L): eta = min(1, (alpha^2/(r T))^(1/3),
#   (n/(r T))^(1/2)) with r = sigma^2/(B L Delta_0), constants dropped; by that reading the rounds are
#   O(L-tilde Delta_0/(alpha eps^2) + L Delta_0 sigma^2/(n B eps^4) + L Delta_0 sigma/(alpha sqrt(B) eps^3)),
#   no large batch needed (EF21-SGD needs B of order sigma^2/(alpha eps^2)).
#   Open: the form of the compression-noise term. If the theorem has eta^3 sigma^2/alpha^2
#   + eta^2 sigma^2/alpha instead of eta^2 sigma^2/alpha^2, the eta above and the rounds'
#   alpha-dependence change (terms sigma^(2/3)/(alpha^(2/3) eps^(8/3)) and sigma/(alpha^(1/2) eps^3));
#   only the theorem's text settles it.
# tests/test_ef21_sgdm.py pins the formulas as written. sigma^2 and Delta_0 are unknown to the methods:
# see minibatch_noise_ratio for the stand-in the defaults use.
def minibatch_noise_ratio(m: int, batch_size: int) -> float:
    """r = (m - B)/(B (m - 1)): the variance of a B-sample mean drawn without replacement from m
    samples is r times the variance of one sample. The EF21-SGDM defaults use it as the stand-in
    for sigma^2/(B L Delta_0) (one sample's variance taken as L Delta_0, the scale that bounds
    ||grad f(x^0)||^2 <= 2 L Delta_0); r = 0 for B = m (full local gradients, no noise).

    Args:
        m: the local data set size m.
        batch_size: the minibatch B.
    """
    m, B = int(m), int(batch_size)
    if not 1 <= B <= m:
        raise ConfigError(f"batch_size == {B}, must be in [1, {m}] (the local data set m = {m})")
    return 0.0 if B == m else (m - B) / (B * (m - 1.0))


def ef21_sgdm_momentum(alpha: float, n: int, iterations: int, noise_ratio: float) -> float:
    """eta = min(1, (alpha^2/(r T))^(1/3), (n/(r T))^(1/2)) with r = ``noise_ratio`` =
    sigma^2/(B L Delta_0) and T = ``iterations`` (the momentum paper's choice balancing
    Delta_0/(gamma T), eta^2 sigma^2/(alpha^2 B) and eta sigma^2/(n B) at gamma = eta/(7 L), constants
    dropped; see the comment above). No noise (r = 0) gives eta = 1: EF21-SGDM is then EF21.

    Args:
        alpha: the compressor's contraction parameter alpha, ||C(x) - x||^2 <= (1 - alpha) ||x||^2.
        n: the number of workers n.
        iterations: the number of rounds T.
        noise_ratio: r = sigma^2/(B L Delta_0) (:func:`minibatch_noise_ratio`).
    """
    alpha = _probability("alpha", alpha)
    r = _nonnegative("noise_ratio", noise_ratio)
    T = int(iterations)
    if T < 1:
        raise ConfigError(f"iterations == {T}, must be >= 1")
    if r == 0.0:
        return 1.0
    return min(1.0, (alpha**2 / (r * T)) ** (1.0 / 3.0), math.sqrt(int(n) / (r * T)))


def ef21_sgdm_stepsize(L_f: float, L: float, alpha: float, eta: float) -> float:
    """gamma = min(alpha/(20 L), eta/(7 L_f)) (the momentum paper's theorem for EF21-SGDM as we read
    it, unverified: see the comment above :func:`minibatch_noise_ratio`).

    Args:
        L_f: the smoothness constant L of f (our L_f).
        L: L-tilde = sqrt(mean_i L_i^2) (our L).
        alpha: the compressor's contraction parameter alpha, ||C(x) - x||^2 <= (1 - alpha) ||x||^2.
        eta: the momentum eta, in (0, 1].
    """
    alpha = _probability("alpha", alpha)
    eta = _probability("momentum", eta)
    return min(alpha / (20.0 * _positive("L", L)), eta / (7.0 * _positive("L_f", L_f)))


# -- DASHA family (Tyurin and Richtarik, "DASHA: Distributed Nonconvex Optimization with
# Communication Compression and Optimal Oracle Complexity", ICLR 2023) ----------------------------
# There L is the smoothness of f (our L_f), L-hat = sqrt(mean_i L_i^2) (our L), L_max (PAGE) and
# L_sigma (MVR) the mean-squared smoothness of the sampled components (our L_avg). What was checked:
# - a = 1/(2 omega + 1) and DASHA-PAGE's p = B/(m + B) are those of the authors' code
#   (mysteryresearcher/dasha, code/distributed_optimization_library/algorithm.py: _estimate_momentum,
#   ZeroMarinaPageMasterAlgorithm._estimate_prob); so are the three estimators h_i and the message
#   m_i = Q(h_i^{k+1} - h_i^k - a (g_i^k - h_i^k)) of the methods (ZeroMarina*NodeAlgorithm).
# - The stepsize constants 16 (Theorem 6.1), 48 and 2 (Theorem 6.4), 48 and 12 (Theorem 6.7) are
#   NOT verified: the paper's text was not at hand, and the authors' code follows an earlier version
#   of the analysis (its DASHA stepsize, ZeroMarinaMasterAlgorithm._estimate_gamma, is
#   1/(L + L-hat sqrt(omega (4 omega + 1)/n)), larger than ours for every omega > 0; it has no theory
#   stepsize for PAGE or MVR). Ours are the smaller, conservative ones. tests/test_beyond.py pins
#   the formulas as written, and with the identity (omega = 0) checks DASHA against GD (1/L_f).
def dasha_momentum(omega: float) -> float:
    """a = 1/(2 omega + 1) (DASHA, Theorems 6.1, 6.4 and 6.7).

    Args:
        omega: the compressor's variance parameter omega (Definition 1.1 of the MARINA paper).
    """
    return 1.0 / (2.0 * _nonnegative("omega", omega) + 1.0)


def _dasha_compression_term(omega: float, n: int) -> float:
    """omega (2 omega + 1)/n, the compression factor of every DASHA stepsize."""
    omega = _nonnegative("omega", omega)
    return omega * (2.0 * omega + 1.0) / int(n)


def dasha_stepsize(L_f: float, L: float, omega: float, n: int) -> float:
    """gamma = 1/(L_f + sqrt(16 omega (2 omega + 1)/n) L) (DASHA, Theorem 6.1; the constant 16 is
    unverified, see the comment above dasha_momentum).

    Args:
        L_f: the smoothness constant L of f (our L_f).
        L: L-hat = sqrt(mean_i L_i^2) (our L).
        omega: the compressor's variance parameter omega (Definition 1.1 of the MARINA paper).
        n: the number of workers n.
    """
    root = math.sqrt(16.0 * _dasha_compression_term(omega, n))
    return 1.0 / (_positive("L_f", L_f) + root * _positive("L", L))


def dasha_page_p(m: int, batch_size: int) -> float:
    """p = B/(m + B) (DASHA, Corollary 6.5).

    Args:
        m: the local data set size m.
        batch_size: the minibatch B.
    """
    return int(batch_size) / (int(m) + int(batch_size))


def dasha_page_stepsize(
    L_f: float, L: float, L_avg: float, omega: float, n: int, p: float, batch_size: int
) -> float:
    """gamma = 1/(L_f + sqrt(48 omega (2 omega + 1)/n (L^2 + (1-p) L_max^2/B)
    + 2 (1-p) L_max^2/(p n B))) with L_max = L_avg (DASHA-PAGE, Theorem 6.4; the constants 48 and 2
    are unverified, see the comment above dasha_momentum).

    Args:
        L_f: the smoothness constant L of f (our L_f).
        L: L-hat = sqrt(mean_i L_i^2) (our L).
        L_avg: L_max of the theorem, the mean-squared smoothness of the sampled components.
        omega: the compressor's variance parameter omega (Definition 1.1 of the MARINA paper).
        n: the number of workers n.
        p: the probability p of a full local gradient.
        batch_size: the minibatch B.
    """
    p = _probability("p", p)
    B = int(batch_size)
    L, La = _positive("L", L), _nonnegative("L_avg", L_avg)
    c = _dasha_compression_term(omega, n)
    root = math.sqrt(48.0 * c * (L**2 + (1.0 - p) * La**2 / B) + 2.0 * (1.0 - p) * La**2 / (p * int(n) * B))
    return 1.0 / (_positive("L_f", L_f) + root)


def dasha_mvr_momentum(omega: float, batch_size: int, dense_batch_size: int) -> float:
    """b = min(sqrt(B/B_0)/omega, B/B_0) (DASHA-MVR, Corollary 6.8, b = min((1/omega)
    sqrt(n eps B/sigma^2), n eps B/sigma^2), with the unknown sigma^2/(n eps) replaced by the
    initial batch B_0 = ``dense_batch_size``: the batch that makes one minibatch gradient
    eps-accurate, as in the corollary's choice of B_init).

    Args:
        omega: the compressor's variance parameter omega (Definition 1.1 of the MARINA paper).
        batch_size: the minibatch B.
        dense_batch_size: the initial batch B_0.
    """
    ratio = int(batch_size) / int(dense_batch_size)
    omega = _nonnegative("omega", omega)
    return min(1.0, ratio if omega == 0 else min(math.sqrt(ratio) / omega, ratio))


def dasha_mvr_stepsize(
    L_f: float, L: float, L_avg: float, omega: float, n: int, b: float, batch_size: int
) -> float:
    """gamma = 1/(L_f + sqrt(48 omega (2 omega + 1)/n (L^2 + (1-b)^2 L_sigma^2/B)
    + 12 L_sigma^2/(b n B))) with L_sigma = L_avg (DASHA-MVR, Theorem 6.7; the constants 48 and 12
    are unverified, see the comment above dasha_momentum).

    Args:
        L_f: the smoothness constant L of f (our L_f).
        L: L-hat = sqrt(mean_i L_i^2) (our L).
        L_avg: L_sigma of the theorem, the mean-squared smoothness of the sampled components.
        omega: the compressor's variance parameter omega (Definition 1.1 of the MARINA paper).
        n: the number of workers n.
        b: the momentum b of the MVR estimator, in (0, 1].
        batch_size: the minibatch B.
    """
    b = _probability("mvr_momentum", b)
    B = int(batch_size)
    L, La = _positive("L", L), _nonnegative("L_avg", L_avg)
    c = _dasha_compression_term(omega, n)
    root = math.sqrt(48.0 * c * (L**2 + (1.0 - b) ** 2 * La**2 / B) + 12.0 * La**2 / (b * int(n) * B))
    return 1.0 / (_positive("L_f", L_f) + root)


def successor_cost(
    method: str,
    setting,
    factor: float,
    gamma: float,
    *,
    eps: float,
    delta0: float,
    message_bits: float,
    share: float = 1.0,
    per_round_oracle: float | None = None,
    p: float | None = None,
    momentum: float | None = None,
) -> Prediction:
    """The cost of a successor whose guarantee is ``factor`` Delta_0/(gamma K) with the dense start
    g_i^0 = grad f_i(x^0): K = ceil(factor Delta_0/(gamma eps^2)) rounds, bits d w (the start) +
    K ``share`` message_bits (``share``: expected fraction of clients sending), oracle calls m
    (the start) + K ``per_round_oracle`` (default m); ``momentum`` is reported as alpha.

    Args:
        method: the method's name (reported).
        setting: the constants (a :class:`marina.methods.Setting`).
        factor: c of the guarantee c Delta_0/(gamma K).
        gamma: the stepsize gamma.
        eps: the target accuracy eps (E||grad f||^2 <= eps^2).
        delta0: Delta_0 = f(x^0) - f^inf.
        message_bits: the expected bits of one compressed message.
        share: the expected fraction of clients sending per round.
        per_round_oracle: oracle calls per worker per round (None: m).
        p: reported as the prediction's p.
        momentum: reported as the prediction's alpha.
    """
    s = setting
    eps2 = _positive("eps", eps) ** 2
    m = float(s.m)
    per_round = m if per_round_oracle is None else float(per_round_oracle)
    K = max(1, math.ceil(factor * _nonnegative("Delta_0", delta0) / (gamma * eps2)))
    bits = float(s.d) * s.wire_bits + K * share * float(message_bits)
    return Prediction(method, int(K), float(bits), float(m + K * per_round), float(gamma), p, momentum)


def predict_successor(
    method: str,
    setting,
    *,
    eps: float,
    delta0: float,
    message_bits: float,
    batch_size: int | None = None,
    participation: float | None = None,
) -> Prediction:
    """:func:`predict` for the successors whose guarantee is 2 Delta_0/(gamma K) with the dense
    start g_i^0 = grad f_i(x^0) (the G^0 terms vanish): EF21 (Theorem 1), EF21-PP (the extensions
    paper's Theorem 7), DASHA (Theorem 6.1) and DASHA-PAGE (Theorem 6.4), each by its class's
    :meth:`marina.methods.Method.predict` (with :func:`successor_cost`). EF21-SGD, EF21-SGDM and
    DASHA-MVR are not covered: their bounds add terms of the unknown noise level sigma^2.

    ``setting`` holds the constants (a :class:`marina.methods.Setting`: d, n, m, L, L_f, L_avg,
    omega, alpha, wire_bits). Per round: EF21 and DASHA one message and m oracle calls; EF21-PP
    q messages and q m calls on average; DASHA-PAGE one message and p m + (1 - p) 2 B calls;
    plus the dense start (d values, m calls).

    Args:
        method: ef21, ef21-pp, dasha or dasha-page.
        setting: the constants (a :class:`marina.methods.Setting`).
        eps: the target accuracy eps (E||grad f||^2 <= eps^2).
        delta0: Delta_0 = f(x^0) - f^inf.
        message_bits: the expected bits of one compressed message.
        batch_size: DASHA-PAGE's minibatch B (None: its default).
        participation: EF21-PP's q (None: its default).
    """
    _guarantee_factor(method)  # ConfigError naming why there is none
    used = {"batch_size": batch_size, "participation": participation}
    return marina.methods.get(method).predict(
        setting, used, eps=eps, delta0=delta0, message_bits=message_bits
    )
