"""Correlated compressors in the theory (AB inequality, Hessian variance), p="bits", and the
predicted counters of every method against long runs."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
import torch

import marina
from marina import compressors, methods, problems, theory
from marina.cli.theory import predict_for
from marina.errors import ConfigError
from marina.network import SimulatedNetwork
from marina.problems.spectral import SNAP_BITS
from marina.rng import Randomness
from test_compressors_common import one_intra_op_thread  # noqa: F401 (autouse fixture)

Z = 6.0


@pytest.fixture(scope="module")
def synth():
    return problems.synthetic(workers=5, dim=12, samples=16, heterogeneity=1.0, seed=4)


def _aggregate_variance(c, A: torch.Tensor, reps: int, seed: int) -> tuple[float, float]:
    """Mean and standard error over rounds of ||(1/n) sum_i Q_i(a_i) - abar||^2."""
    n = A.shape[0]
    abar = A.mean(0)
    v = torch.tensor(
        [
            float(
                (
                    (c.compress_decompress(A, Randomness(seed, "compress", r, range(n)))[0].mean(0) - abar)
                    ** 2
                ).sum()
            )
            for r in range(reps)
        ],
        dtype=torch.float64,
    )
    return float(v.mean()), float(v.std()) / math.sqrt(reps)


def test_permk_breaks_the_independent_bound_and_meets_the_ab_inequality(seed):
    """a_1 = a, a_2 = -a, n = 2: PermK's average is a_B1 - a_B2, of squared norm ||a||^2 every
    round, twice the independent bound (omega/n^2) sum_i ||a_i||^2 = ||a||^2/2, and equal to the
    AB bound with A = B = 1: (1/n) sum_i ||a_i||^2 - ||abar||^2 = ||a||^2."""
    d, n = 10, 2
    c = compressors.get("permk", workers=n, value_dtype=torch.float64)
    a = torch.linspace(-1.0, 2.0, d, dtype=torch.float64)
    mean, se = _aggregate_variance(c, torch.stack([a, -a]), 50, seed)
    sq = float(a @ a)
    assert mean == pytest.approx(sq, rel=1e-12) and se < 1e-12 * sq
    assert c.omega(d) / n**2 * 2 * sq == pytest.approx(sq / 2)
    assert c.ab_constants(d, n) == (1.0, 1.0)


@pytest.mark.parametrize(
    "spec,n,d",
    [("permk", 5, 4), ("permk", 7, 3), ("permk", 5, 23), ("permk", 3, 9), ("randk:3", 4, 9)],
)
def test_ab_inequality_measured(seed, spec, n, d):
    """E||(1/n) sum_i Q_i(a_i) - abar||^2 <= A (1/n) sum_i ||a_i||^2 - B ||abar||^2 over the
    compressor's own draws, with equality for PermK (any d, n: the mean of a_ij over a random
    subset of its holders) and for independent RandK (A = omega/n, B = 0: each worker's error has
    variance exactly omega ||a_i||^2)."""
    c = compressors.get(spec, workers=n, value_dtype=torch.float64)
    A_, B_ = c.ab_constants(d, n)
    if spec.startswith("randk"):
        assert (A_, B_) == (pytest.approx(c.omega(d) / n), 0.0)
    g = Randomness(seed, "ab-test", 0, range(n)).uniform(d)
    a = (g - 0.5) * torch.arange(1, n + 1, dtype=torch.float64)[:, None] + 0.3
    mean, se = _aggregate_variance(c, a, 1500, seed)
    abar = a.mean(0)
    bound = A_ * float((a**2).sum(1).mean()) - B_ * float(abar @ abar)
    assert mean <= bound + Z * se + 1e-12
    # RandK: (1/n^2) sum_i (d/K - 1) ||a_i||^2 exactly (so B = omega/n would fail);
    # PermK: A ((1/n) sum_i ||a_i||^2 - ||abar||^2) exactly
    exact = (
        (d / c.K - 1) / n**2 * float((a**2).sum())
        if spec.startswith("randk")
        else A_ * (float((a**2).sum(1).mean()) - float(abar @ abar))
    )
    assert abs(mean - exact) <= Z * se + 1e-12 * exact


def _permk_enumerated(a: torch.Tensor, d: int) -> float:
    """E||(1/n) sum_i Q_i(a_i) - abar||^2 over every pair of permutations (pi of the d coordinates,
    sigma of the n workers), PermK's assignment for d < n written out: worker i takes slot
    s = sigma[i] mod d, coordinate pi[s], held by c_s = q + 1 workers if s < r else q
    (n = q d + r), and sends (n/c_s) a_i[pi[s]]."""
    n = a.shape[0]
    q, r = divmod(n, d)
    rows, abar = a.tolist(), a.mean(0).tolist()
    total, count = 0.0, 0
    for pi in itertools.permutations(range(d)):
        for sigma in itertools.permutations(range(n)):
            est = [0.0] * d
            for i in range(n):
                slot = sigma[i] % d
                holders = q + 1 if slot < r else q
                est[pi[slot]] += rows[i][pi[slot]] / holders
            total += sum((e - b) ** 2 for e, b in zip(est, abar))
            count += 1
    return total / count


@pytest.mark.parametrize("n,d", [(5, 2), (6, 3), (7, 3), (4, 1), (6, 4)])
def test_permk_ab_constant_below_n_is_exact_by_enumeration(seed, n, d):
    """For d < n, A = B = omega/(n - 1): equal to the exact expectation over all n! d! draws for
    any a_i (random here), (d - 1)/(n - 1) when d divides n and larger otherwise (so the d | n
    formula alone would be wrong for 7 workers and 3 coordinates); below PermK's A = B = 1 of
    d >= n, which d < n used before."""
    c = compressors.get("permk", workers=n, value_dtype=torch.float64)
    A_, B_ = c.ab_constants(d, n)
    q, r = divmod(n, d)
    by_hand = ((r / d) * (n - q - 1) / (q + 1) + ((d - r) / d) * (n - q) / q) / (n - 1)
    assert A_ == B_ == pytest.approx(by_hand, rel=1e-14) and A_ < 1
    if r == 0:
        assert A_ == pytest.approx((d - 1) / (n - 1), rel=1e-14)
    else:
        assert A_ > (d - 1) / (n - 1)
    u = Randomness(seed, "ab-exact", 0, range(n)).uniform(d)
    a = (u - 0.5) * torch.arange(1, n + 1, dtype=torch.float64)[:, None] + 0.2
    abar = a.mean(0)
    spread = float((a**2).sum(1).mean()) - float(abar @ abar)
    assert _permk_enumerated(a, d) == pytest.approx(A_ * spread, rel=1e-12)


def test_marina_stepsize_with_permk_below_n_uses_the_exact_constant(seed):
    """synthetic, n = 6 workers, d = 3 < n: p = zeta_Q/d = 1/3 and gamma = 1/(L_f + sqrt((1-p)/p
    A) L_pm) with A = B = (d - 1)/(n - 1) = 2/5, larger than with A = B = 1; omega_eff = n A = 12/5
    for the methods proved for independent compressors."""
    prob = problems.synthetic(workers=6, dim=3, samples=8, heterogeneity=1.0, seed=seed % 1000)
    s = _setting(prob, "permk", n=6)
    assert (s.ab_A, s.ab_B) == (pytest.approx(0.4), pytest.approx(0.4)) and s.omega == 2
    used = methods.get("marina").resolve(s, {})
    p = 1 / 3
    assert used["p"] == pytest.approx(p, rel=1e-15)
    hand = 1.0 / (prob.L_f + math.sqrt((1 - p) / p * 0.4) * prob.L_pm)
    assert used["stepsize"] == pytest.approx(hand, rel=1e-14)
    assert used["stepsize"] > 1.0 / (prob.L_f + math.sqrt((1 - p) / p) * prob.L_pm)
    assert s.omega_eff == pytest.approx(6 * 0.4)
    vr = methods.get("vr-marina").resolve(s, {})
    assert vr["stepsize"] == pytest.approx(
        theory.vr_marina_stepsize(s.L, s.L_avg, 2.4, 6, vr["p"], vr["batch_size"]), rel=1e-14
    )


def test_synthetic_hessian_variance_matches_brute_force(seed, synth):
    """L_pm^2 = sup_h [(1/n) sum_i ||grad f_i(x+h) - grad f_i(x)||^2 - ||grad f(x+h) - grad f(x)||^2]/||h||^2,
    from the gradients themselves: never exceeded over random directions, attained along the top
    eigenvector of mean_i H_i^2 - Hbar^2 (built here from the features)."""
    n, d = 5, 12
    F = synth.features.reshape(n, -1, d)
    H = np.einsum("imk,iml->ikl", F, F) / F.shape[1]
    Hbar = H.mean(0)
    w, V = np.linalg.eigh(np.mean(H @ H, axis=0) - Hbar @ Hbar)
    exact = math.sqrt(w[-1])  # L_pm is this rounded up to SNAP_BITS bits (spectral.snap_up)
    assert exact * (1 - 1e-12) <= synth.L_pm <= exact * (1 + 2.0 ** (1 - SNAP_BITS) + 1e-12)
    assert synth.L_pm <= synth.L

    def ratio(x, h):
        D = synth.local_grads(x + h) - synth.local_grads(x)
        return float(((D**2).sum(1).mean() - (D.mean(0) ** 2).sum()) / (h @ h))

    x = torch.linspace(-1, 1, d, dtype=torch.float64)
    for k in range(20):
        h = Randomness(seed, "directions", k, [0]).uniform(d)[0] - 0.5
        assert ratio(x, h) <= synth.L_pm**2 * (1 + 1e-9)
    top = torch.as_tensor(V[:, -1])
    assert ratio(x, 1e-3 * top) == pytest.approx(synth.L_pm**2, rel=1e-7)


def test_logistic_hessian_variance_is_a_valid_bound(seed):
    prob = problems.libsvm("mushrooms", workers=5)
    assert prob.L_pm <= prob.L
    d = prob.dim
    for k in range(10):
        u = Randomness(seed, "points", k, [0, 1]).uniform(d) - 0.5
        x, y = u[0].to(prob.dtype), u[1].to(prob.dtype)
        D = prob.local_grads(x) - prob.local_grads(y)
        var = float((D**2).sum(1).mean() - (D.mean(0) ** 2).sum())
        assert var <= prob.L_pm**2 * float((x - y) @ (x - y)) * (1 + 1e-9)


def _small_logistic():
    """3 workers, 4 samples each, d = 2, no regulariser: small enough for brute force."""
    import scipy.sparse as sp

    from marina.data.splits import make_split
    from marina.problems.logistic import LogisticProblem

    g = np.random.default_rng(1)
    n, per, d = 3, 4, 2
    X = g.normal(size=(n * per, d)) * np.array([1.0, 0.5]) + 0.3
    labels = np.where(g.random(n * per) < 0.5, -1.0, 1.0)
    split = make_split(labels, n)
    prob = LogisticProblem(sp.csr_matrix(X), labels, split)
    rows = (-labels[:, None] * X)[split.order]  # f_ij = phi(y a^T x) = psi(a~^T x), a~ = -y a
    return prob, [rows[split.offsets[i] : split.offsets[i + 1]] for i in range(n)]


def test_logistic_hessian_variance_bound_against_brute_force(seed):
    """L_pm of the non-convex logistic loss without a regulariser, on data small enough to search:
    above the true constant (sup over x of the Hessians' variance on a grid, and over random pairs
    x, y through the problem's gradients), above the worst case over every vertex of the box of
    curvatures the proof allows (psi'' in [PHI2_MIN, PHI2_MAX], all 2^12 choices), which comes
    within 2% of it (the proof's relaxation is nearly attained), and below L = sqrt(mean L_i^2),
    the bound used before (equal to L without a regulariser)."""
    from marina.problems.logistic import PHI2_MAX, PHI2_MIN, phi_second

    prob, blocks = _small_logistic()
    n, per, d = len(blocks), blocks[0].shape[0], blocks[0].shape[1]
    assert prob.L_pm < 0.95 * prob.L and prob.L == pytest.approx(
        math.sqrt(np.mean([(PHI2_MAX * np.linalg.eigvalsh(B.T @ B)[-1] / per) ** 2 for B in blocks])),
        rel=1e-9,
    )
    outer = np.stack([np.einsum("mk,ml->mkl", B, B) / per for B in blocks])  # (n, m, d, d)

    def sup_variance(curv):  # curv (P, n, m): the Hessians' variance's top eigenvalue, max over P
        H = np.einsum("pim,imkl->pikl", curv, outer)
        Hbar = H.mean(1)
        return float(np.linalg.eigvalsh(np.mean(H @ H, axis=1) - Hbar @ Hbar)[:, -1].max())

    vertices = np.array(list(itertools.product([PHI2_MIN, PHI2_MAX], repeat=n * per))).reshape(-1, n, per)
    box = math.sqrt(sup_variance(vertices))
    assert 0.98 * prob.L_pm <= box <= prob.L_pm
    grid = np.linspace(-10.0, 10.0, 161)
    xs = np.stack(np.meshgrid(grid, grid), -1).reshape(-1, d)
    curv = np.stack([phi_second(torch.as_tensor(-(xs @ B.T))).numpy() for B in blocks], 1)
    local = math.sqrt(sup_variance(curv))
    pairs = 0.0
    for k in range(200):
        u = Randomness(seed, "pairs", k, [0, 1]).uniform(d)
        x, h = (u[0] - 0.5) * 12, (u[1] - 0.5) * 10.0 ** (-3 + 4 * float(u[1, 0]))
        D = prob.local_grads(x + h) - prob.local_grads(x)
        pairs = max(pairs, float((D**2).sum(1).mean() - (D.mean(0) ** 2).sum()) / float(h @ h))
    print(
        f"L_pm bound {prob.L_pm:.5g}, box {box:.5g}, Hessian grid {local:.5g}, pairs {math.sqrt(pairs):.5g}"
    )
    assert local <= prob.L_pm and math.sqrt(pairs) <= prob.L_pm * (1 + 1e-9)


def test_minibatch_noise_is_bounded_as_ef21_sgd_assumes(seed):
    """EF21-SGD's neighbourhood assumes E||g_hat_i(x) - grad f_i(x)||^2 <= sigma^2/b; on the
    logistic problems the one-sample variance is at most (8/27)^2 mean_j ||a_ij||^2 at every x,
    since |psi'| <= 8/27 (max of 2 s^2 (1 - s) at s = 2/3; checked on a grid)."""
    from marina.problems.logistic import phi_prime

    t = torch.linspace(-30.0, 30.0, 600001, dtype=torch.float64)
    assert float(phi_prime(t).abs().max()) == pytest.approx(8 / 27, rel=1e-9)
    prob, blocks = _small_logistic()
    n, per, d = len(blocks), blocks[0].shape[0], blocks[0].shape[1]
    bound = (8 / 27) ** 2 * np.array([np.mean((B**2).sum(1)) for B in blocks])
    for k in range(5):
        x = (Randomness(seed, "points", k, [0]).uniform(d)[0] - 0.5) * 20
        G = torch.stack([prob.minibatch_grads(x, torch.full((n, 1), j)) for j in range(per)], 1)  # (n, m, d)
        variance = ((G - G.mean(1, keepdim=True)) ** 2).sum(2).mean(1)
        assert (variance.numpy() <= bound * (1 + 1e-12)).all()


def test_hessian_variance_bound_by_hand():
    """hessian_variance_bound: a symmetric curvature range gives the former bound sqrt(mean_i
    (kappa lam_i)^2) bit for bit; a convex loss with equal lam_i gives kappa lam/2 (Popoviciu);
    the minimum over c matches a fine grid over c and is never above c = 0's value."""
    from marina.problems.linear import hessian_variance_bound

    lam = np.array([0.3, 1.7, 0.9, 1.1])
    assert hessian_variance_bound(lam, (-0.25, 0.25)) == float(np.sqrt(np.mean((0.25 * lam) ** 2)))
    assert hessian_variance_bound(np.full(3, 2.0), (0.0, 0.25)) == pytest.approx(0.25, rel=1e-12)
    lo, hi = -0.12, 0.154
    mid, half = (lo + hi) / 2 * lam, (hi - lo) / 2 * lam
    cs = np.linspace(-0.5, 0.5, 200001)
    grid = np.sqrt(np.mean((np.abs(cs[:, None] - mid) + half) ** 2, axis=1)).min()
    got = hessian_variance_bound(lam, (lo, hi))
    assert grid * (1 - 1e-9) <= got <= grid * (1 + 1e-9)
    assert got < float(np.sqrt(np.mean((hi * lam) ** 2)))


def _setting(problem, spec, n=5, iterations=10):
    return methods.Setting.build(
        problem, SimulatedNetwork(n, 0), compressors.get(spec, workers=n), iterations
    )


@pytest.mark.parametrize("name", ["synthetic", "mushrooms"])
def test_marina_default_stepsize_with_permk_is_the_ab_formula(synth, name):
    prob = synth if name == "synthetic" else problems.libsvm("mushrooms", workers=5)
    s = _setting(prob, "permk")
    used = methods.get("marina").resolve(s, {})
    d, n = prob.dim, 5
    p = (d / n) / d  # zeta_Q/d with zeta_Q = d/n
    L_pm = prob.L_pm
    # Szlendak et al. 2022 (cited as Theorem 4, unverified), A = B = 1: 1/(L_- + sqrt((1-p)/p) L_pm)
    hand = 1.0 / (prob.L_f + math.sqrt((1 - p) / p) * L_pm)
    assert used["p"] == pytest.approx(p, rel=1e-15)
    assert used["stepsize"] == pytest.approx(hand, rel=1e-14)
    # the independent formula with omega = n - 1 would be larger than omega_eff = n's
    assert theory.marina_stepsize(prob.L, n - 1, n, p) > theory.marina_stepsize(prob.L, n, n, p)


def test_methods_without_correlated_theory_use_omega_eff_or_refuse(synth):
    s = _setting(synth, "permk", iterations=50)
    n = 5
    assert s.correlated and s.omega == n - 1 and s.omega_eff == n
    qgd = methods.get("qgd").resolve(s, {})
    assert qgd["stepsize"] == pytest.approx(theory.qgd_stepsize(s.L_f, s.L_max, n, n, 50))
    diana = methods.get("diana").resolve(s, {})
    assert diana["stepsize"] == pytest.approx(theory.diana_stepsize(s.L_max, n, n))
    assert diana["alpha"] == pytest.approx(1 / (1 + n))
    vr = methods.get("vr-marina").resolve(s, {})
    assert vr["stepsize"] == pytest.approx(
        theory.vr_marina_stepsize(s.L, s.L_avg, n, n, vr["p"], vr["batch_size"])
    )
    with pytest.raises(ConfigError, match="pp-marina: the compressor is correlated"):
        methods.get("pp-marina").resolve(s, {})
    # independent compressors are untouched: omega_eff = omega
    s2 = _setting(synth, "randk:2")
    assert not s2.correlated and s2.omega_eff == s2.omega == 12 / 2 - 1


@pytest.mark.parametrize(
    "spec, bits",
    [
        ("randk:3", 3 * (32 + 7)),  # K (w + ceil(log2 112))
        ("qsgd:4", 32 + 112 * (1 + 3)),  # w + d (1 + ceil(log2(s + 1)))
        ("natural", 112 * 9),  # d (1 + 8)
    ],
)
def test_p_bits_is_the_hand_ratio(spec, bits):
    prob = problems.libsvm("mushrooms", workers=5)
    d, n = prob.dim, 5
    assert d == 112
    s = _setting(prob, spec)
    ratio = bits / (d * 32)
    m_used = methods.get("marina").resolve(s, {"p": "bits"})
    assert m_used["p"] == pytest.approx(ratio, rel=1e-15)
    assert m_used["stepsize"] == pytest.approx(theory.marina_stepsize(s.L, s.omega, n, ratio), rel=1e-14)
    vr = methods.get("vr-marina").resolve(s, {"p": "bits"})
    bp = vr["batch_size"]
    assert vr["p"] == pytest.approx(min(ratio, bp / (s.m + bp)), rel=1e-15)
    pp = methods.get("pp-marina").resolve(s, {"p": "bits", "clients": 2})
    assert pp["p"] == pytest.approx(min(1.0, ratio * 2 / n), rel=1e-15)


def test_default_p_of_one_warns_and_bits_does_not_for_natural():
    prob = problems.libsvm("mushrooms", workers=5)
    s = _setting(prob, "natural")
    with pytest.warns(UserWarning, match="reduces to GD"):
        assert methods.get("marina").resolve(s, {})["p"] == 1.0
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert methods.get("marina").resolve(s, {"p": "bits"})["p"] == 9 / 32


def test_p_bits_refuses_other_words_and_the_online_batches_are_ordered(synth):
    s = _setting(synth, "randk:2")
    with pytest.raises(ConfigError, match=r"p == 'bitz', must be a number in \(0, 1\]"):
        methods.get("marina").resolve(s, {"p": "bitz"})
    with pytest.raises(ConfigError, match=r"dense_batch_size == 2 is smaller than batch_size == 4, must be"):
        methods.get("vr-marina").resolve(s, {"online": True, "batch_size": 4, "dense_batch_size": 2})
    big = problems.synthetic(workers=2, dim=3, samples=300, seed=1)  # default b' = 300/100 = 3
    sb = _setting(big, "randk:2", n=2)
    with pytest.warns(
        UserWarning, match=r"dense_batch_size == 2 is smaller than batch_size == 3 \(the default"
    ):
        used = methods.get("vr-marina").resolve(sb, {"online": True, "dense_batch_size": 2, "p": 0.3})
        assert (used["batch_size"], used["p"]) == (3, 0.3)
    # without p, Corollary 3.2's p would be needed outside its domain b' <= b
    with pytest.raises(ConfigError, match=r"dense_batch_size == 2 is smaller than batch_size == 3 .*give"):
        methods.get("vr-marina").resolve(sb, {"online": True, "dense_batch_size": 2})


def test_vr_marina_theory_functions_check_the_minibatch_sizes():
    """b' <= m (finite sum: b' of the m local samples without replacement, Corollary 3.1) and
    b' <= b (online, Corollary 3.2): p by hand at the boundary, ConfigError naming both values past
    it, also through theory.predict; b' >= 1 everywhere."""
    assert theory.vr_marina_p(5, 100, 20, 20) == pytest.approx(min(5 / 100, 20 / 40))
    assert theory.vr_marina_online_p(50, 100, 8, 8) == pytest.approx(min(50 / 100, 8 / 16))
    with pytest.raises(ConfigError, match=r"batch_size b' == 21 exceeds m .* == 20"):
        theory.vr_marina_p(5, 100, 20, 21)
    with pytest.raises(ConfigError, match=r"batch_size b' == 9 exceeds dense_batch_size b .* == 8"):
        theory.vr_marina_online_p(5, 100, 8, 9)
    for bad in (
        lambda: theory.vr_marina_p(5, 100, 20, 0),
        lambda: theory.vr_marina_online_p(5, 100, 8, 0),
        lambda: theory.vr_marina_stepsize(1.0, 1.0, 1.0, 4, 0.5, 0),
    ):
        with pytest.raises(ConfigError, match=r"batch_size b' == 0, must be >= 1"):
            bad()
    kw = dict(eps=0.1, delta0=1.0, d=100, n=4, m=20, L=1.0, L_f=1.0, L_max=1.0, L_avg=1.0, omega=9.0)
    kw |= dict(zeta=10.0, message_bits=390.0)
    with pytest.raises(ConfigError, match=r"b' == 9 exceeds dense_batch_size b"):
        theory.predict("vr-marina-online", batch_size=9, dense_batch_size=8, **kw)
    with pytest.raises(ConfigError, match=r"b' == 21 exceeds m"):
        theory.predict("vr-marina", batch_size=21, **kw)
    assert theory.predict("vr-marina-online", batch_size=8, dense_batch_size=8, **kw).p == pytest.approx(0.1)


def test_pp_marina_predicted_oracle_calls_match_the_issue_example():
    """r = 3, n = 5, p = 0.05: q = 1 - 0.8^3 = 0.488 and m (p + (1-p) q (2 - p - (1-p) q)) ~ 0.739 m."""
    first, later = theory.pp_marina_oracle_per_round(1.0, 5, 3, 0.05)
    q = 1 - 0.8**3
    assert later == pytest.approx(0.05 + 0.95 * q * (2 - 0.05 - 0.95 * q))
    assert later == pytest.approx(0.739, abs=1e-3)
    assert first == pytest.approx(0.05 + 0.95 * q)


CASES = [
    ("gd", "identity", {}),
    ("qgd", "randk:3", {}),
    ("diana", "bernoulli:0.3", {}),
    ("vr-diana", "randk:3", {"batch_size": 4}),
    ("marina", "randk:2", {"p": 0.3}),
    ("marina", "permk", {"p": 0.3}),
    ("marina", "qsgd:2", {"p": "bits"}),
    ("vr-marina", "randk:2", {"p": 0.3, "batch_size": 4}),
    ("vr-marina", "randk:2", {"online": True, "p": 0.3, "batch_size": 2, "dense_batch_size": 8}),
    ("pp-marina", "randk:3", {"p": 0.3, "clients": 3}),
    ("pp-marina", "natural-dithering:2", {"p": 0.05, "clients": 3}),
    ("marina", "randk:3+natural", {"p": "bits"}),
    ("diana", "terngrad", {}),
]


@pytest.mark.parametrize("method, spec, params", CASES)
def test_predict_counters_match_a_long_run(seed, synth, method, spec, params):
    """Bits per worker and oracle calls of predict(rounds=K) within 5% of what a K-round run
    counts (K = 3000; the coins and client draws make the counts random: with p = 0.3 the
    number of dense rounds has relative standard deviation sqrt(0.7/900) < 3%)."""
    K = 3000
    n = 5
    res = marina.run(
        method=method, compressor=spec, problem=synth, iterations=K, seed=seed % 1000, stepsize=1e-4, **params
    )
    assert res.status == "finished"
    Q = compressors.get(spec, workers=n)
    s = methods.Setting.build(synth, SimulatedNetwork(n, 0), Q, K)
    name = "vr-marina-online" if params.get("online") else method
    pred = predict_for(s, name, res.params, eps=1.0, delta0=1.0, message_bits=s.message_bits, rounds=K)
    last = res.history.iloc[-1]
    assert int(last["iteration"]) == K
    # predict gives expectations; the number of dense rounds is Binomial(K, p), so allow 5% plus
    # three of its relative standard deviations (sqrt((1 - p) / (p K)); 0 for methods without p)
    p = float(res.params.get("p", 1.0))
    rel = 0.05 + 3 * math.sqrt((1 - p) / (p * K))
    assert float(last["bits_up"]) == pytest.approx(pred.bits_per_worker, rel=rel)
    assert float(last["oracle_calls"]) == pytest.approx(pred.oracle_calls, rel=rel)


def test_p_bits_in_python_runs(synth):
    res = marina.run(method="marina", compressor="qsgd:2", problem=synth, iterations=5, p="bits")
    w, d = 32, 12
    assert res.params["p"] == pytest.approx((w + d * (1 + 2)) / (d * w))


def test_p_bits_in_sweep_files_and_marina_run_is_recorded_typed(tmp_path, capsys):
    """A sweep with p = ["bits", 0.25] and ``marina run --p bits``: the runs use the hand ratio
    expected bits / dense bits (times r/n for PP-MARINA, Corollary 4.1's zeta r/(d n)); results
    keep p (float64) missing and p_rule (string) "bits" for them, p = 0.25 and p_rule missing
    for the number; legends say p=bits and p=0.25."""
    from marina import experiments, plotting
    from marina.cli import main
    from marina.experiments import results

    sweep = tmp_path / "s.toml"
    sweep.write_text(
        'problems = "synthetic"\nworkers = 3\niterations = 6\nlog_every = 2\n'
        '[[grid]]\nmethods = ["marina", "pp-marina"]\ncompressors = "qsgd:2"\np = ["bits", 0.25]\n'
    )
    out = tmp_path / "out"
    assert main(["sweep", str(sweep), "--out", str(out), "--quiet"]) == 0
    cli_out = tmp_path / "cli"
    argv = ["run", "--problem", "synthetic", "--workers", "3", "--iterations", "6", "--method", "marina"]
    assert main([*argv, "--compressor", "qsgd:2", "--p", "bits", "--out", str(cli_out)]) == 0
    capsys.readouterr()
    w = 32
    for where in (out, cli_out):
        df = results.load_results(where)
        assert str(df["p"].dtype) == "float64" and str(df["p_rule"].dtype) == "string"
        assert list(df.columns).index("p_rule") == list(df.columns).index("p") + 1
        bits = df[df["p_rule"] == "bits"]
        assert len(bits) and bits["p"].isna().all()
        runs = [r for r in results.load_runs(where) if r["config"]["params"].get("p") == "bits"]
        assert len(runs) == (2 if where == out else 1)
        for run in runs:  # qsgd:2: norm + d (sign + 2 level bits), over d float32 values
            d, used = run["d"], run["params"]
            share = used["clients"] / 3 if run["config"]["method"] == "pp-marina" else 1.0  # r/n
            assert used["p"] == pytest.approx(share * (w + d * (1 + 2)) / (d * w), rel=1e-12)
    df = results.load_results(out)
    numbers = df[df["p_rule"].isna()]
    assert set(numbers["p"]) == {0.25}
    labels = {c.label for c in plotting.curves(df)}
    want = {f"{m}, qsgd:2, {v}" for m in ("MARINA", "PP-MARINA") for v in ("p=bits", "p=0.25")}
    assert labels == want, labels
    # the run ids of p = "bits" and of the number it resolves to differ: they are different rules
    a = experiments.RunConfig("synthetic", 3, "marina", "qsgd:2", params={"p": "bits"})
    b = experiments.RunConfig("synthetic", 3, "marina", "qsgd:2", params={"p": runs[0]["params"]["p"]})
    assert a.run_id != b.run_id and a.params == {"p": "bits"}


def test_results_of_schema_2_read_with_p_rule_missing(tmp_path):
    """A history written before p_rule existed reads with p_rule as a missing string column."""
    from marina.experiments import results

    record = {"run_id": "r1", "config": {"problem": "synthetic", "method": "marina", "params": {"p": 0.5}}}
    frame = results.history_frame(record, pd.DataFrame({"iteration": [0, 1], "bits_up": [0.0, 1.0]}))
    old = frame.drop(columns=["p_rule"])
    back = results.with_config_columns(old)
    assert list(back.columns) == list(frame.columns)
    assert str(back["p_rule"].dtype) == "string" and back["p_rule"].isna().all()
    assert back["p"].tolist() == [0.5, 0.5]
    assert results.SCHEMA_VERSION == 3
