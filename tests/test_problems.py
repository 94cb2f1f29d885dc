"""Problems: oracles against autograd, finite differences and explicit sums; constants; hosting."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

import marina
import marina.problems as P
from marina import data
from marina.errors import ConfigError
from marina.problems.logistic import PHI2_MAX, phi, phi_prime, phi_second
from marina.problems.spectral import SNAP_BITS

SEEDS = [random.randrange(2**31) for _ in range(2)] + [0]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def reference_local_losses(problem, x: torch.Tensor) -> torch.Tensor:
    """f_i(x) written from eq. (11) with dense tensors and the split's row lists (autograd-able)."""
    ds = problem.data
    X = ds.X.toarray()
    if problem.normalize:
        norms = np.linalg.norm(X, axis=1, keepdims=True)
        X = X / np.where(norms > 0, norms, 1.0)
    if problem.bias:
        X = np.hstack([X, np.ones((X.shape[0], 1))])
    out = []
    for g in problem.worker_ids.tolist():
        rows = problem.split.rows(g)
        A = torch.as_tensor(X[rows])
        y = torch.as_tensor(ds.y[rows])
        t = y * (A @ x)
        value = ((1.0 - 1.0 / (1.0 + torch.exp(-t))) ** 2).mean() + 0.5 * problem.l2 * (x @ x)
        out.append(value)
    return torch.stack(out)


def synthetic_reference(problem, x: torch.Tensor) -> torch.Tensor:
    A = torch.as_tensor(problem.features).reshape(problem.n_workers, -1, problem.dim)
    b = torch.as_tensor(problem.targets).reshape(problem.n_workers, -1)
    resid = torch.einsum("imd,d->im", A, x) - b
    return 0.5 * (resid**2).mean(dim=1) + problem.nonconvexity * torch.cos(x).sum()


def reference(problem):
    return synthetic_reference if isinstance(problem, P.SyntheticProblem) else reference_local_losses


def small_problems():
    return [
        P.libsvm("mushrooms", workers=3, split="shuffled", seed=5, l2=0.01, bias=True),
        P.libsvm("phishing", workers=4, split="dirichlet", alpha=0.3, normalize=True),
        P.libsvm("a9a.t", workers=7),
        P.synthetic(workers=4, dim=6, samples=9, heterogeneity=2.0),
    ]


PROBLEMS = small_problems()


@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.name)
@pytest.mark.parametrize("seed", SEEDS)
def test_local_grads_and_losses_match_autograd(problem, seed):
    x = (torch.randn(problem.dim, generator=gen(seed), dtype=torch.float64) * 0.5).requires_grad_(True)
    ref = reference(problem)(problem, x)
    G = problem.local_grads(x.detach())
    assert G.shape == (problem.n_workers, problem.dim)
    for i in range(problem.n_workers):
        (g,) = torch.autograd.grad(ref[i], x, retain_graph=True)
        torch.testing.assert_close(G[i], g, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(problem.local_losses(x.detach()), ref.detach(), rtol=1e-12, atol=1e-14)
    # whole objective: f = mean_i f_i, grad f = mean_i grad f_i (never the mean of local norms)
    (g_total,) = torch.autograd.grad(ref.mean(), x)
    torch.testing.assert_close(problem.grad(x.detach()), g_total, rtol=1e-10, atol=1e-13)
    assert problem.loss(x.detach()) == pytest.approx(float(ref.detach().mean()), rel=1e-12)
    assert problem.grad_norm_sq(x.detach()) == pytest.approx(float(g_total @ g_total), rel=1e-9)


@pytest.mark.parametrize("problem", [PROBLEMS[0], PROBLEMS[3]], ids=lambda p: p.name)
def test_gradients_match_central_finite_differences(problem):
    seed = SEEDS[0]
    x = torch.randn(problem.dim, generator=gen(seed), dtype=torch.float64) * 0.5
    h = 1e-5
    G = problem.local_grads(x)
    for k in range(3):
        v = torch.randn(problem.dim, generator=gen(seed + 1 + k), dtype=torch.float64)
        v /= v.norm()
        fd = (problem.local_losses(x + h * v) - problem.local_losses(x - h * v)) / (2 * h)
        # central differences: error O(h^2 * third derivative) ~ 1e-10 here, rounding ~ 1e-11
        torch.testing.assert_close(G @ v, fd, rtol=1e-6, atol=1e-8)
        fd_total = (problem.loss(x + h * v) - problem.loss(x - h * v)) / (2 * h)
        assert float(problem.grad(x) @ v) == pytest.approx(fd_total, rel=1e-6, abs=1e-8)


@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.name)
@pytest.mark.parametrize("seed", SEEDS[:2])
def test_minibatch_oracles_match_explicit_per_sample_sums(problem, seed):
    g = gen(seed)
    n, b = problem.n_workers, 5
    idx = torch.stack([torch.randint(0, int(m), (b,), generator=g) for m in problem.sizes])
    idx[:, 1] = idx[:, 0]  # a repeated sample counts twice
    x = torch.randn(problem.dim, generator=g, dtype=torch.float64) * 0.5
    y = torch.randn(problem.dim, generator=g, dtype=torch.float64) * 0.5
    mg = problem.minibatch_grads(x, idx)
    md = problem.minibatch_grad_diffs(x, y, idx)
    for i in range(n):
        # a one-worker problem per sample: its local gradient is grad f_ij
        def per_sample(z, i=i):
            return sum(sample_grad(problem, i, int(j), z) for j in idx[i]) / b

        torch.testing.assert_close(mg[i], per_sample(x), rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(md[i], per_sample(x) - per_sample(y), rtol=1e-10, atol=1e-13)


def sample_grad(problem, i: int, j: int, x: torch.Tensor) -> torch.Tensor:
    """grad f_ij(x) by autograd on the dense row (independent of the engine)."""
    z = x.clone().requires_grad_(True)
    if isinstance(problem, P.SyntheticProblem):
        m = int(problem.sizes[i])
        a = torch.as_tensor(problem.features[i * m + j])
        value = (
            0.5 * (a @ z - float(problem.targets[i * m + j])) ** 2 + problem.nonconvexity * torch.cos(z).sum()
        )
    else:
        row = int(problem.split.rows(int(problem.worker_ids[i]))[j])
        a = problem.data.X[row].toarray().reshape(-1)
        if problem.normalize and np.linalg.norm(a) > 0:
            a = a / np.linalg.norm(a)
        if problem.bias:
            a = np.append(a, 1.0)
        t = float(problem.data.y[row]) * (torch.as_tensor(a) @ z)
        value = phi(t) + 0.5 * problem.l2 * (z @ z)
    (g,) = torch.autograd.grad(value, z)
    return g


def test_full_batch_minibatch_equals_local_grads():
    problem = P.libsvm("mushrooms", workers=4, l2=0.1)
    m = int(problem.sizes.min())
    idx = torch.arange(m).repeat(4, 1)
    x = torch.full((problem.dim,), 0.05, dtype=torch.float64)
    torch.testing.assert_close(
        problem.minibatch_grads(x, idx), problem.local_grads(x), rtol=1e-10, atol=1e-14
    )
    torch.testing.assert_close(
        problem.minibatch_grad_diffs(x, 0 * x, idx),
        problem.local_grads(x) - problem.local_grads(0 * x),
        rtol=1e-10,
        atol=1e-14,
    )


# -- the loss ---------------------------------------------------------------------------------
def test_phi_derivatives_and_curvature_bound():
    t = torch.linspace(-30, 30, 600_001, dtype=torch.float64, requires_grad=True)
    (d1,) = torch.autograd.grad(phi(t).sum(), t, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), t)
    torch.testing.assert_close(phi_prime(t.detach()), d1.detach(), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(phi_second(t.detach()), d2, rtol=1e-10, atol=1e-15)
    # grid spacing 1e-4 around the peak t* = 0.4657: the grid max is within ~1e-9 of the sup
    assert float(d2.abs().max()) <= PHI2_MAX
    assert float(d2.abs().max()) == pytest.approx(PHI2_MAX, abs=1e-9)
    assert PHI2_MAX == pytest.approx(0.15405857012135, abs=1e-13)


def test_loss_is_finite_for_huge_margins():
    problem = P.libsvm("mushrooms", workers=2)
    for scale in (1e3, 1e8, 1e300):
        x = torch.linspace(-1, 1, problem.dim, dtype=torch.float64) * scale
        G = problem.local_grads(x)
        losses = problem.local_losses(x)
        assert torch.isfinite(G).all() and torch.isfinite(losses).all()
        assert ((losses >= 0) & (losses <= 1)).all()
    t = torch.tensor([-1e308, -800.0, 800.0, 1e308], dtype=torch.float64)
    torch.testing.assert_close(phi(t), torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64))
    assert torch.isfinite(phi_prime(t)).all() and torch.isfinite(phi_second(t)).all()


# -- constants --------------------------------------------------------------------------------
def dense_blocks(problem):
    """(A_i dense, signed rows) for every hosted worker, rebuilt from the data set."""
    X = problem.data.X.toarray()
    if problem.bias:
        X = np.hstack([X, np.ones((X.shape[0], 1))])
    return [X[problem.split.rows(int(g))] for g in problem.worker_ids]


def assert_rounded_up(got, exact, rtol: float = 1e-12) -> None:
    """``got`` is ``exact`` with its eigenvalue rounded up to SNAP_BITS bits (spectral.snap_up):
    never below it, at most 2^(1 - SNAP_BITS) above (each to the eigensolver's ``rtol``)."""
    got, exact = np.asarray(got, dtype=np.float64), np.asarray(exact, dtype=np.float64)
    assert (got >= exact * (1 - rtol)).all(), (got, exact)
    assert (got <= exact * (1 + 2.0 ** (1 - SNAP_BITS) + rtol)).all(), (got, exact)


def test_logistic_constants_equal_dense_formulas():
    problem = P.libsvm("mushrooms", workers=5, split="shuffled", seed=3, l2=0.02, bias=True)
    blocks = dense_blocks(problem)
    L_i = [PHI2_MAX * np.linalg.eigvalsh(A.T @ A)[-1] / A.shape[0] + 0.02 for A in blocks]
    assert_rounded_up(problem.L_i.numpy(), L_i)
    assert_rounded_up(problem.L, math.sqrt(np.mean(np.square(L_i))))
    H = sum(A.T @ A / A.shape[0] for A in blocks) / len(blocks)
    assert_rounded_up(problem.L_f, PHI2_MAX * np.linalg.eigvalsh(H)[-1] + 0.02)
    M = [np.einsum("j,jk,jl->kl", np.sum(A**2, axis=1), A, A) / A.shape[0] for A in blocks]
    script = [PHI2_MAX * math.sqrt(np.linalg.eigvalsh(Mi)[-1]) for Mi in M]
    assert_rounded_up(problem.L_avg, math.sqrt(np.mean(np.square(script))))
    loose = [PHI2_MAX * math.sqrt(np.mean(np.sum(A**2, axis=1) ** 2)) for A in blocks]
    assert all(a <= b * (1 + 1e-12) for a, b in zip(script, loose))


def test_average_smoothness_by_brute_force_on_a_small_data_set():
    """script-L_i^2 = kappa^2 max_h mean_j ||a_j||^2 (a_j^T h)^2 / ||h||^2 (Assumption 3.1 with
    ||grad f_ij(x) - grad f_ij(y)|| = |c_j| |a_j^T h| ||a_j||, |c_j| <= kappa): the matrix summed
    one outer product at a time, its top eigenvector attaining the maximum, random directions
    below it; against the looser kappa sqrt(mean_j ||a_j||^4) and the issue's mushrooms figures."""
    problem = P.libsvm("mushrooms", workers=400, hosted_workers=[0, 7, 399])
    for i, A in zip(problem.worker_ids.tolist(), dense_blocks(problem)):
        m, d = A.shape
        M = np.zeros((d, d))
        for a in A:  # one sample at a time
            M += float(a @ a) * np.outer(a, a) / m
        w, V = np.linalg.eigh(M)
        ratio = lambda h, A=A: float(np.mean(np.sum(A**2, axis=1) * (A @ h) ** 2) / (h @ h))
        assert ratio(V[:, -1]) == pytest.approx(w[-1], rel=1e-12)
        g = np.random.default_rng(i)
        assert max(ratio(g.standard_normal(d)) for _ in range(200)) <= w[-1] * (1 + 1e-12)
        k = problem.worker_ids.tolist().index(i)
        assert_rounded_up(float(problem.L_avg_i[k]), PHI2_MAX * math.sqrt(w[-1]), rtol=1e-10)
        assert float(problem.L_avg_i[k]) <= PHI2_MAX * math.sqrt(np.mean(np.sum(A**2, axis=1) ** 2))
    five = P.libsvm("mushrooms", workers=5)
    assert five.L_avg == pytest.approx(2.470, abs=5e-4)  # 3.235 with mean_j ||a_j||^4


@pytest.mark.parametrize("seed", SEEDS)
def test_L_i_and_L_f_bound_gradient_differences(seed):
    problem = P.libsvm("mushrooms", workers=4, split="shuffled", seed=seed)
    g = gen(seed)
    for _ in range(10):
        x = torch.randn(problem.dim, generator=g, dtype=torch.float64) * 0.3
        y = x + torch.randn(problem.dim, generator=g, dtype=torch.float64) * 0.01
        ratio = (problem.local_grads(x) - problem.local_grads(y)).norm(dim=1) / (x - y).norm()
        assert (ratio <= problem.L_i * (1 + 1e-9)).all()
        total = (problem.grad(x) - problem.grad(y)).norm() / (x - y).norm()
        assert float(total) <= problem.L_f * (1 + 1e-9)


def test_L_i_is_tight_within_documented_factor():
    """||Hess f_i(0)|| = phi''(0) lambda_max(A_i^T A_i)/m_i with phi''(0) = 1/8, so the best
    constant is at least L_i (1/8) / PHI2_MAX: L_i is loose by at most PHI2_MAX / (1/8) = 1.2325."""
    problem = P.libsvm("phishing", workers=50, split="shuffled", seed=SEEDS[0], hosted_workers=[0])
    (A,) = dense_blocks(problem)
    hess = torch.autograd.functional.hessian(
        lambda z: reference_local_losses(problem, z)[0], torch.zeros(problem.dim, dtype=torch.float64)
    )
    top = float(torch.linalg.eigvalsh(hess)[-1])
    assert top == pytest.approx(0.125 * np.linalg.eigvalsh(A.T @ A)[-1] / A.shape[0], rel=1e-9)
    assert float(problem.L_i[0]) == pytest.approx(PHI2_MAX / 0.125 * top, rel=1e-9)


def test_synthetic_constants_are_exact():
    problem = P.synthetic(workers=3, dim=5, samples=8, heterogeneity=1.5, nonconvexity=0.7)
    x_peak = torch.full((problem.dim,), math.pi, dtype=torch.float64)  # cos = -1: the sup
    for i in range(3):
        hess = torch.autograd.functional.hessian(lambda z, i=i: synthetic_reference(problem, z)[i], x_peak)
        assert_rounded_up(float(problem.L_i[i]), float(torch.linalg.matrix_norm(hess, ord=2)), rtol=1e-10)
        hess0 = torch.autograd.functional.hessian(
            lambda z, i=i: synthetic_reference(problem, z)[i], torch.zeros(problem.dim, dtype=torch.float64)
        )
        assert float(torch.linalg.matrix_norm(hess0, ord=2)) <= float(problem.L_i[i]) + 1e-12
    total = torch.autograd.functional.hessian(lambda z: synthetic_reference(problem, z).mean(), x_peak)
    assert_rounded_up(problem.L_f, float(torch.linalg.matrix_norm(total, ord=2)), rtol=1e-10)
    # non-convex at 0 (Hessian mean_i H_i - c I has a negative eigenvalue)
    h0 = torch.autograd.functional.hessian(
        lambda z: synthetic_reference(problem, z).mean(), torch.zeros(problem.dim, dtype=torch.float64)
    )
    assert float(torch.linalg.eigvalsh(h0)[0]) < 0


def single_sample_variance(delta: np.ndarray) -> float:
    """E_j ||Delta_ij - Delta_i||^2 for per-sample differences delta (m, d): the b' = 1 variance."""
    return float(((delta - delta.mean(axis=0)) ** 2).sum(axis=1).mean())


def test_synthetic_average_smoothness_is_attained():
    """Assumption 3.1 with b' = 1: E_j||Delta_ij - Delta_i||^2 <= script-L_i^2 ||x - y||^2, with
    equality along the top eigenvector of the single-sample covariance operator."""
    m, d = 6, 4
    problem = P.synthetic(workers=2, dim=d, samples=m, heterogeneity=1.0, seed=SEEDS[0])
    g = gen(SEEDS[0])
    for i in range(2):
        A = problem.features.reshape(2, m, d)[i]
        Li = float(problem.L_avg_i[i])
        # per-sample gradient differences: a_j a_j^T (x - y) (the cos term is common and cancels)
        for _ in range(10):
            v = torch.randn(d, generator=g, dtype=torch.float64).numpy()
            assert single_sample_variance(A * (A @ v)[:, None]) <= Li**2 * (v @ v) * (1 + 1e-9)
        M = np.einsum("j,jk,jl->kl", np.sum(A**2, axis=1), A, A) / m - (A.T @ A / m) @ (A.T @ A / m)
        w, V = np.linalg.eigh(M)
        v = V[:, -1]
        assert single_sample_variance(A * (A @ v)[:, None]) == pytest.approx(Li**2, rel=1e-9)
        # the engine's minibatch differences carry the same per-sample terms
        x = torch.as_tensor(v)
        per = torch.stack(
            [problem.minibatch_grad_diffs(x, 0 * x, torch.full((2, 1), j))[i] for j in range(m)]
        )
        assert single_sample_variance(per.numpy()) == pytest.approx(Li**2, rel=1e-9)


def test_logistic_average_smoothness_bounds_minibatch_variance():
    problem = P.libsvm("mushrooms", workers=3, split="shuffled", seed=SEEDS[1])
    g = gen(SEEDS[1])
    x = torch.randn(problem.dim, generator=g, dtype=torch.float64) * 0.3
    y = x + torch.randn(problem.dim, generator=g, dtype=torch.float64) * 0.3
    for i, A in enumerate(dense_blocks(problem)):
        Y = problem.data.y[problem.split.rows(i)]
        dphi = phi_prime(torch.as_tensor(Y * (A @ x.numpy()))) - phi_prime(
            torch.as_tensor(Y * (A @ y.numpy()))
        )
        delta = (dphi.numpy() * Y)[:, None] * A  # grad f_ij(x) - grad f_ij(y), row by row
        var = single_sample_variance(delta)
        assert var <= float(problem.L_avg_i[i]) ** 2 * float((x - y) @ (x - y))


# -- hosting a subset of workers ----------------------------------------------------------------
@pytest.mark.parametrize(
    "workers,hosted,split",
    [(6, [4, 1], "shuffled"), (300, [0, 299, 17], "contiguous"), (5, [2], "dirichlet")],
)
def test_hosted_workers_reproduce_the_full_problem_exactly(workers, hosted, split):
    full = P.libsvm("a9a.t", workers=workers, split=split, seed=SEEDS[0], l2=0.001)
    part = P.libsvm("a9a.t", workers=workers, split=split, seed=SEEDS[0], l2=0.001, hosted_workers=hosted)
    assert part.n_workers == len(hosted) and part.total_workers == workers
    assert part.worker_ids.tolist() == hosted
    assert torch.equal(part.sizes, full.sizes[hosted])
    assert torch.equal(part.L_i, full.L_i[hosted])
    assert (part.L, part.L_avg, part.L_f) == (full.L, full.L_avg, full.L_f)
    g = gen(SEEDS[0])
    x = torch.randn(full.dim, generator=g, dtype=torch.float64)
    y = torch.randn(full.dim, generator=g, dtype=torch.float64)
    assert torch.equal(part.local_grads(x), full.local_grads(x)[hosted])
    assert torch.equal(part.local_losses(x), full.local_losses(x)[hosted])
    idx = torch.stack([torch.randint(0, int(m), (3,), generator=g) for m in full.sizes])
    assert torch.equal(
        part.minibatch_grad_diffs(x, y, idx[hosted]), full.minibatch_grad_diffs(x, y, idx)[hosted]
    )
    assert torch.equal(part.minibatch_grads(x, idx[hosted]), full.minibatch_grads(x, idx)[hosted])


def test_synthetic_hosted_workers_share_data():
    full = P.synthetic(workers=5, dim=7, samples=4, seed=SEEDS[0])
    part = P.synthetic(workers=5, dim=7, samples=4, seed=SEEDS[0], hosted_workers=[3, 0])
    x = torch.linspace(-1, 1, 7, dtype=torch.float64)
    assert torch.equal(part.local_grads(x), full.local_grads(x)[[3, 0]])
    assert part.L == full.L and torch.equal(part.L_i, full.L_i[[3, 0]])


# -- synthetic heterogeneity knob -------------------------------------------------------------
def test_synthetic_heterogeneity_knob_spreads_local_gradients():
    """At a common point, the spread of grad f_i around grad f grows with h."""

    def spread(h):
        values = []
        for s in SEEDS:
            p = P.synthetic(workers=8, dim=10, samples=200, heterogeneity=h, seed=s)
            G = p.local_grads(torch.zeros(10, dtype=torch.float64))
            values.append(float(((G - G.mean(0)) ** 2).sum(1).mean()))
        return np.mean(values)

    assert spread(0.0) * 10 < spread(2.0)


def test_synthetic_is_deterministic_in_the_seed():
    a, b = P.synthetic(seed=11), P.synthetic(seed=11)
    assert np.array_equal(a.features, b.features) and np.array_equal(a.targets, b.targets)
    assert not np.array_equal(a.features, P.synthetic(seed=12).features)


# -- dtype, device, get ---------------------------------------------------------------------
def test_float32_problem():
    p32 = P.libsvm("mushrooms", workers=3, dtype=torch.float32)
    p64 = P.libsvm("mushrooms", workers=3)
    x = torch.linspace(-0.1, 0.1, p32.dim)
    G = p32.local_grads(x)
    assert G.dtype == torch.float32
    torch.testing.assert_close(G.double(), p64.local_grads(x.double()), rtol=1e-4, atol=1e-6)
    idx = torch.zeros(3, 2, dtype=torch.int64)
    assert p32.minibatch_grad_diffs(x, 0 * x, idx).dtype == torch.float32


def test_to_same_device_returns_self():
    p = P.synthetic()
    assert p.to("cpu") is p


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_problem_matches_cpu():
    cpu = P.libsvm("a9a", workers=1000, l2=0.01)
    gpu = cpu.to("cuda")
    x = torch.linspace(-0.2, 0.2, cpu.dim, dtype=torch.float64)
    torch.testing.assert_close(gpu.local_grads(x.cuda()).cpu(), cpu.local_grads(x), rtol=1e-10, atol=1e-14)
    idx = torch.zeros(1000, 3, dtype=torch.int64)
    torch.testing.assert_close(
        gpu.minibatch_grad_diffs(x.cuda(), 0 * x.cuda(), idx.cuda()).cpu(),
        cpu.minibatch_grad_diffs(x, 0 * x, idx),
        rtol=1e-10,
        atol=1e-14,
    )
    assert gpu.local_losses(x.cuda()).device.type == "cuda"


def test_get_accepts_problems_and_specs(tmp_path):
    p = P.synthetic(workers=3)
    assert P.get(p) is p and P.get(p, workers=3) is p
    with pytest.raises(ConfigError, match="workers == 4"):
        P.get(p, workers=4)
    with pytest.raises(ConfigError, match="spec strings only"):
        P.get(p, l2=0.1)
    q = P.get("mushrooms", workers=2, seed=1, split="shuffled")
    assert isinstance(q, P.LogisticProblem) and q.n_workers == 2 and q.split.kind == "shuffled"
    path = tmp_path / "tiny.svm"
    path.write_text("1 1:0.5 3:1\n-1 2:1\n1 1:1 2:-1\n-1 3:2\n")
    r = P.get(str(path), workers=2)
    assert r.dim == 3 and r.sizes.tolist() == [2, 2]
    assert P.get("synthetic", workers=2).n_workers == 2
    assert marina.problems is P
    with pytest.raises(ConfigError, match="must be a Problem"):
        P.get(3.5)


# -- errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"workers": 0}, r"workers == 0, must be >= 1"),
        ({"workers": 8125}, r"workers == 8125 exceeds the 8124 rows"),
        (
            {"workers": 2, "split": "random"},
            r"split == 'random', must be one of contiguous, shuffled, dirichlet",
        ),
        ({"workers": 2, "split": "dirichlet", "alpha": 0.0}, r"alpha == 0.0, must be > 0"),
        ({"workers": 2, "l2": -1.0}, r"l2 == -1.0, must be >= 0"),
        ({"workers": 3, "hosted_workers": [3]}, r"hosted_workers \[3\] must lie in \[0, 2\]"),
        ({"workers": 3, "hosted_workers": [1, 1]}, r"repeats a worker"),
        ({"workers": 3, "hosted_workers": []}, r"hosted_workers is empty"),
    ],
)
def test_libsvm_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        P.libsvm("mushrooms", **kwargs)


def test_oracle_argument_errors():
    p = P.synthetic(workers=3, dim=4, samples=5)
    x = torch.zeros(4, dtype=torch.float64)
    with pytest.raises(ConfigError, match=r"x has shape \(5,\), must be \(4,\)"):
        p.local_grads(torch.zeros(5, dtype=torch.float64))
    with pytest.raises(ConfigError, match=r"idx has shape \(2, 1\), must be \(n_workers=3, b\)"):
        p.minibatch_grads(x, torch.zeros(2, 1, dtype=torch.int64))
    with pytest.raises(ConfigError, match="outside"):
        p.minibatch_grads(x, torch.full((3, 1), 5))
    with pytest.raises(ConfigError, match="b == 0"):
        p.minibatch_grad_diffs(x, x, torch.zeros(3, 0, dtype=torch.int64))
    for kwargs, msg in [
        ({"workers": 0}, "workers == 0"),
        ({"dim": 0}, "dim == 0"),
        ({"heterogeneity": -1.0}, "heterogeneity == -1.0"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            P.synthetic(**kwargs)


def test_remainder_rows_are_kept_by_default():
    p = P.libsvm("mushrooms", workers=7)  # 8124 = 7 * 1160 + 4
    assert p.sizes.tolist() == [1161] * 4 + [1160] * 3
    q = P.libsvm("mushrooms", workers=7, drop_remainder=True)
    assert q.sizes.tolist() == [1160] * 7
    assert data.load("mushrooms").n_rows == int(p.sizes.sum())


def test_sigmoid_is_layout_independent():
    """The same value at any position and any array length (hosting a subset of workers moves rows)."""
    from marina.problems.linear import layout_independent_

    t = torch.randn(70_000, generator=gen(SEEDS[0]), dtype=torch.float64) * 4
    ref = layout_independent_(torch.Tensor.sigmoid_, t.clone())
    for shift in (1, 3, 7, 13, 33, 64, 32768 - 5):
        for length in (5, 129, 40_000):
            part = layout_independent_(torch.Tensor.sigmoid_, t[shift : shift + length].clone())
            assert torch.equal(part, ref[shift : shift + length])
    torch.testing.assert_close(ref, torch.sigmoid(t), rtol=1e-15, atol=0)


def test_torch_kernel_path_agrees_with_deterministic_path():
    """deterministic=False (torch/MKL kernels, the code path GPUs use) gives the same oracles."""
    for kwargs in ({"workers": 3}, {"workers": 400, "split": "shuffled"}):
        exact = P.libsvm("a9a.t", l2=0.01, **kwargs)
        fast = P.libsvm("a9a.t", l2=0.01, deterministic=False, **kwargs)
        g = gen(SEEDS[0])
        x = torch.randn(exact.dim, generator=g, dtype=torch.float64) * 0.3
        y = torch.randn(exact.dim, generator=g, dtype=torch.float64) * 0.3
        idx = torch.stack([torch.randint(0, int(m), (4,), generator=g) for m in exact.sizes])
        for name, args in [
            ("local_grads", (x,)),
            ("local_losses", (x,)),
            ("minibatch_grads", (x, idx)),
            ("minibatch_grad_diffs", (x, y, idx)),
        ]:
            torch.testing.assert_close(
                getattr(fast, name)(*args), getattr(exact, name)(*args), rtol=1e-12, atol=1e-15
            )


def test_base_problem_refuses_to_move():
    class Fixed(P.SyntheticProblem):
        to = P.Problem.to

    p = P.synthetic(workers=2)
    p.__class__ = Fixed
    assert p.to("cpu") is p
    with pytest.raises(ConfigError, match="cannot move"):
        p.to("meta")
