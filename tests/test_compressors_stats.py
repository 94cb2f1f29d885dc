"""Monte-Carlo tests of the compressors' theory: unbiasedness, variance (omega), density.

Replicas are independent workers (one row each) of a single batched call, except for PermK,
whose workers share one permutation per call: its replicas are rounds.

Tolerances: a sample mean of R bounded variables is accepted within Bernstein's bound
sqrt(2 sigma^2 L / R) + 2 M L / (3 R) with L = ln(2 / 1e-9) (the CLT's z ~ 6.5 standard errors,
plus the term that keeps rare, large values -- a QSGD level of a tiny coordinate, a RandK pick --
from failing the test by chance); sigma^2 and the range M are exact, derived per coordinate from
each rounding scheme. Where sigma is unknown (the squared error), the empirical Bernstein bound
(Maurer & Pontil 2009) with the sample variance is used. A false alarm has probability about
1e-9 per comparison, so the tests pass for any seed. A tiny slack covers the float32 wire
rounding of values.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from marina.compressors import get
from marina.rng import Randomness
from test_compressors_common import one_intra_op_thread  # noqa: F401 (autouse fixture)

Z = 6.0  # standard errors, where a plain CLT tolerance is used
L = math.log(2 / 1e-9)
R = 3000  # replicas


UNBIASED = [
    "identity",
    "randk",
    "bernoulli:0.3",
    "qsgd:1",
    "qsgd:4",
    "natural",
    "natural-dithering:3",
    "permk",
    "terngrad",
    "randk+natural",
    "randk+qsgd:2",
    "randk+terngrad",
]


def _spec(name: str, d: int) -> str:
    if name.startswith("randk+"):  # K <= 2: the exact moments enumerate every K-subset
        return f"randk:{max(1, min(2, d // 3))}+{name[6:]}"
    return {"randk": f"randk:{max(1, d // 3)}", "topk": f"topk:{max(1, d // 3)}"}.get(name, name)


def _subsets(c, x: torch.Tensor):
    """Every K-subset S of a composition's RandK, with y = (d/K) x_S (each has probability 1/C(d, K))."""
    d = x.numel()
    for S in itertools.combinations(range(d), c.K):
        yield list(S), x[list(S)] * (d / c.K)


def _vector(kind: str, d: int, seed: int) -> torch.Tensor:
    """Test vectors: gaussian, sparse (mostly zeros), constant, huge (1e30), tiny (1e-30), mixed scales."""
    g = Randomness(seed, "test-vector", 0, [0]).uniform(2 * d).reshape(-1)
    # Box-Muller from two uniforms: deterministic given the seed, no global RNG
    z = torch.sqrt(-2 * torch.log1p(-g[:d])) * torch.cos(2 * math.pi * g[d:])
    if kind == "gaussian":
        return z
    if kind == "sparse":
        x = torch.zeros(d, dtype=torch.float64)
        x[:: max(1, d // 3)] = z[:: max(1, d // 3)] + 0.5
        return x
    if kind == "constant":
        return torch.full((d,), -1.7, dtype=torch.float64)
    if kind == "huge":
        return 1e30 * z
    if kind == "tiny":
        return 1e-30 * z
    if kind == "scales":
        return z * torch.logspace(-3, 3, d, dtype=torch.float64)
    raise AssertionError(kind)


KINDS = ["gaussian", "sparse", "constant", "huge", "tiny", "scales"]
EVERY_KIND = ["identity", "randk:3", "bernoulli:0.5", "qsgd:2", "natural", "natural-dithering:3", "permk"]
EVERY_KIND += ["topk:2", "terngrad", "sign", "randk:3+natural", "randk:3+qsgd:2"]
"""One spec of every compressor family (and of both kinds of composition)."""
DIMS = [1, 2, 7, 48]


def _samples(c, x: torch.Tensor, n_workers: int, seed: int, reps: int = R) -> torch.Tensor:
    """(reps, n_workers, d) decompressed samples; worker w of replica r is independent across r."""
    d = x.numel()
    if not c.correlated:
        ids = range(reps * n_workers)
        X = x.reshape(1, d).expand(reps * n_workers, d).contiguous()
        Xh, bits = c.compress_decompress(X, Randomness(seed, "compress", 0, ids))
        return Xh.reshape(reps, n_workers, d)
    out = torch.empty((reps, n_workers, d), dtype=x.dtype)
    X = x.reshape(1, d).expand(n_workers, d).contiguous()
    for r in range(reps):
        out[r], _ = c.compress_decompress(X, Randomness(seed, "compress", r, range(n_workers)))
    return out


def _coord_moments(c, x: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, d) exact Var(Q_i(x)_j) and a bound on |Q_i(x)_j - x_j| (worker i of n), from the
    definition of each rounding scheme."""
    d = x.numel()
    a = x.abs()
    norm = float(torch.linalg.vector_norm(x))
    if c.name == "identity":
        var, M = torch.zeros_like(a), torch.zeros_like(a)
    elif c.name == "randk":
        var, M = a**2 * (d / c.K - 1), a * d / c.K
    elif c.name == "bernoulli":
        var, M = a**2 * (1 / c.q - 1), a / c.q
    elif c.name == "permk":
        # coordinate j is in worker i's piece with probability 1/n (d >= n), scaled by n; for
        # d < n = q d + r it is in slot s (c_s = q + 1 holders for r slots, q for d - r) with
        # probability c_s/(n d), scaled by n/c_s: E Q^2 = x_j^2 (n/d) sum_s 1/c_s
        if d >= n:
            second, top = float(n), float(n)
        else:
            q, r = divmod(n, d)
            second, top = n / d * (r / (q + 1) + (d - r) / q), n / q
        var, M = a**2 * (second - 1), a * top
    elif c.name == "qsgd":
        r = a * c.s / norm if norm > 0 else a
        f = r - torch.floor(r)
        var, M = (norm / c.s) ** 2 * f * (1 - f), torch.full_like(a, norm / c.s)
    elif c.name == "natural":
        lo = torch.where(a > 0, torch.exp2(torch.floor(torch.log2(a))), torch.zeros_like(a))
        var, M = (a - lo) * (2 * lo - a), lo
    elif c.name == "terngrad":  # s b_j, b_j ~ Bernoulli(|x_j| / s), s = ||x||_inf
        s = float(a.max())
        var, M = a * s - a**2, torch.full_like(a, s)
    elif c.name == "composed":  # E Q_j^2 = E_S[1{j in S} (y_j^2 + Var_2(y)_j)], S a uniform K-subset
        second, M = torch.zeros_like(a), a.clone()
        count = 0
        for S, y in _subsets(c, x):
            v2, m2 = _coord_moments(c.inner, y, 1)
            second[S] += y**2 + v2[0]
            M[S] = torch.maximum(M[S], y.abs() + m2[0] + a[S])
            count += 1
        var = second / count - a**2
    elif c.name == "natural-dithering":
        t = a / norm if norm > 0 else a
        small = t < 2.0 ** (1 - c.s)
        lo = torch.where(small, 0.0, torch.exp2(torch.floor(torch.log2(torch.where(small, 1.0, t)))))
        hi = torch.where(small, 2.0 ** (1 - c.s), 2 * lo)
        var, M = norm**2 * (t - lo) * (hi - t), norm * (hi - lo)
    else:
        raise AssertionError(c.name)
    return var.expand(n, d), M.expand(n, d)


def _max_norm(c, x: torch.Tensor, n: int) -> float:
    """An upper bound on ||Q_i(x)|| for every outcome."""
    d = x.numel()
    if c.name == "composed":
        return _composed_max_norm(c, x)
    nx = float(torch.linalg.vector_norm(x))
    return {
        "identity": nx,
        "randk": d / getattr(c, "K", 1) * nx,
        "bernoulli": nx / getattr(c, "q", 1.0),
        "permk": (n if d >= n else n / (n // max(1, d))) * nx,
        "terngrad": math.sqrt(d) * nx,
        "qsgd": nx + nx * math.sqrt(d) / getattr(c, "s", 1),
        "natural": 2 * nx,
        "natural-dithering": 2 * nx + nx * math.sqrt(d) * 2.0 ** (1 - getattr(c, "s", 1)),
    }[c.name] * (1 + 1e-6)


def _composed_max_norm(c, x: torch.Tensor) -> float:
    return max(_max_norm(c.inner, y, 1) for _, y in _subsets(c, x))


def _check_mean(S: torch.Tensor, x: torch.Tensor, var: torch.Tensor, M: torch.Tensor, what: str) -> None:
    """S (reps, d) samples of one worker: every coordinate's mean is x_j within Bernstein's bound."""
    reps = S.shape[0]
    tol = torch.sqrt(2 * var * L / reps) + 2 * M * L / (3 * reps) + 1e-6 * (x.abs() + M)
    bad = (S.mean(0) - x).abs() > tol
    assert not bool(bad.any()), f"{what}: E[Q(x)] != x at {bad.nonzero().reshape(-1).tolist()[:5]}"


def _check_variance(c, S: torch.Tensor, x: torch.Tensor, n: int, what: str) -> None:
    """Measured E||Q(x) - x||^2 equals the exact variance, which is <= omega ||x||^2."""
    reps, _, d = S.shape
    err = ((S - x) ** 2).sum(-1)  # (reps, n)
    exact = _coord_moments(c, x, n)[0].sum(-1)
    sq = float(x @ x)
    omega = c.omega(d)
    assert bool((exact <= omega * sq * (1 + 1e-12)).all()), f"{what}: theory bound violated"
    m = err.mean(0)
    M = (_max_norm(c, x, n) + math.sqrt(sq)) ** 2  # range of one squared error
    tol = torch.sqrt(2 * err.var(0) * L / reps) + 7 * M * L / (3 * (reps - 1)) + 1e-5 * sq
    assert bool(((m - exact).abs() <= tol).all()), f"{what}: variance {m.tolist()} vs {exact.tolist()}"
    assert bool((m <= omega * sq + tol).all()), f"{what}: E||Q(x)-x||^2 > omega ||x||^2"


@pytest.mark.parametrize("name", UNBIASED)
@pytest.mark.parametrize("d", DIMS)
def test_unbiased_and_variance(seed, name, d):
    n = 3 if name == "permk" else 1  # d in {1, 2} < n: PermK's one-coordinate pieces
    c = get(_spec(name, d), workers=n)
    assert c.unbiased
    kinds = KINDS if d in (1, 48) else ["gaussian"]
    for k, kind in enumerate(kinds):
        x = _vector(kind, d, seed + k)
        reps = 400 if name == "permk" else R
        S = _samples(c, x, n, seed + 100 + k, reps)
        var, M = _coord_moments(c, x, n)
        for i in range(n):
            _check_mean(S[:, i], x, var[i], M[i], f"{c.spec} d={d} {kind} worker {i}")
        _check_variance(c, S, x, n, f"{c.spec} d={d} {kind}")


@pytest.mark.parametrize("name", ["randk", "qsgd:2", "natural", "natural-dithering:4"])
def test_unbiased_in_float32(seed, name):
    d = 20
    c = get(_spec(name, d))
    x = _vector("scales", d, seed).to(torch.float32)
    S = _samples(c, x, 1, seed + 1)[:, 0].double()
    var, M = _coord_moments(c, x.double(), 1)
    _check_mean(S, x.double(), var[0], M[0], f"{c.spec} float32")


@pytest.mark.parametrize("d,K", [(10, 1), (10, 3), (50, 7), (9, 9)])
def test_randk_omega_is_d_over_k_minus_one(seed, d, K):
    c = get(f"randk:{K}")
    x = _vector("gaussian", d, seed)
    S = _samples(c, x, 1, seed + 7)[:, 0]
    ratio = ((S - x) ** 2).sum(-1) / float(x @ x)
    se = float(ratio.std()) / math.sqrt(R)
    assert abs(float(ratio.mean()) - (d / K - 1)) <= Z * se + 1e-6
    assert c.omega(d) == pytest.approx(d / K - 1)


def _expected_nnz(c, x: torch.Tensor) -> float:
    """E number of non-zeros of Q(x), from each scheme's rounding probabilities."""
    d = x.numel()
    nz = x != 0
    norm = float(torch.linalg.vector_norm(x))
    if c.name in ("identity", "natural"):
        return float(nz.sum())
    if c.name == "randk":
        return float(c.K) if bool(nz.all()) else c.K * float(nz.sum()) / d
    if c.name == "bernoulli":
        return c.q * float(nz.sum())
    if c.name == "qsgd":
        return float(torch.clamp(c.s * x.abs() / norm, max=1).sum())
    if c.name == "natural-dithering":
        return float(torch.clamp(2.0 ** (c.s - 1) * x.abs() / norm, max=1).sum())
    if c.name == "terngrad":
        return float(x.abs().sum() / x.abs().max())
    if c.name == "composed":
        counts = [_expected_nnz(c.inner, y) for _, y in _subsets(c, x)]
        return sum(counts) / len(counts)
    raise AssertionError(c.name)


@pytest.mark.parametrize(
    "spec",
    [
        "identity",
        "randk:5",
        "bernoulli:0.2",
        "qsgd:1",
        "qsgd:3",
        "natural",
        "natural-dithering:2",
        "terngrad",
        "randk:2+natural",
        "randk:2+qsgd:1",
    ],
)
@pytest.mark.parametrize("d", [1, 30, 200])
def test_expected_density(seed, spec, d):
    K = spec.split(":")[1].split("+")[0] if spec.startswith("randk") else None
    c = get(spec.replace(f"randk:{K}", f"randk:{min(int(K), d)}") if K else spec)
    for kind in ["gaussian", "constant"]:
        x = _vector(kind, d, seed)
        S = _samples(c, x, 1, seed + 3, 2000)[:, 0]
        nnz = (S != 0).sum(-1).double()
        se = float(nnz.std()) / math.sqrt(nnz.numel())
        expect = _expected_nnz(c, x)
        assert abs(float(nnz.mean()) - expect) <= Z * se + 1e-9, (spec, d, kind)
        # the reported density is the expectation for dense x, an upper bound otherwise
        assert expect <= c.density(d) + 1e-9
        if c.name in ("identity", "randk", "bernoulli", "natural") or c.spec.endswith("+natural"):
            assert expect == pytest.approx(c.density(d))


def _permk_round(c, x: torch.Tensor, n: int, r: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    return c.compress_decompress(
        x.expand(n, x.numel()).contiguous(), Randomness(seed, "compress", r, range(n))
    )


@pytest.mark.parametrize("n,d", [(4, 10), (5, 103), (3, 9), (5, 4), (7, 3), (4, 2), (3, 1)])
def test_permk_pieces_partition_the_coordinates(seed, n, d):
    """d >= n: blocks of floor/ceil(d/n) coordinates partitioning {0..d-1}; d < n = q d + r:
    one coordinate each, every coordinate held by q or q + 1 workers (r of them by q + 1)."""
    c = get("permk", workers=n)
    assert c.correlated and c.density(d) == max(1.0, d / n)
    x = _vector("gaussian", d, seed) + 3.0  # no zero entries
    seen_sizes = set()
    for r in range(20):
        Xh, bits = _permk_round(c, x, n, r, seed)
        held = (Xh != 0).sum(0)
        sizes = (Xh != 0).sum(1)
        assert bits.tolist() == [32 * int(s) for s in sizes]
        if d >= n:
            assert torch.equal(held, torch.ones(d, dtype=torch.int64))
            assert sorted(sizes.tolist()) == sorted((t + 1) * d // n - t * d // n for t in range(n))
        else:
            q, rem = divmod(n, d)
            assert torch.equal(sizes, torch.ones(n, dtype=torch.int64))
            assert sorted(held.tolist()) == [q] * (d - rem) + [q + 1] * rem
        seen_sizes.add(tuple(sizes.tolist()))
    if d % n and d > n:  # the shared assignment moves the big blocks between workers
        assert len(seen_sizes) > 1


@pytest.mark.parametrize("n", [1, 2, 5, 24])
@pytest.mark.parametrize("offset", ["n-1", "n", "n+1", "103", "1000"])
def test_permk_average_is_exact(seed, n, offset):
    d = {"n-1": n - 1, "n": n, "n+1": n + 1, "103": 103, "1000": 1000}[offset]
    if d < 1:
        pytest.skip("d = 0")
    c = get("permk", workers=n, value_dtype=torch.float64)
    x = _vector("scales", d, seed + n)
    for r in range(5):
        mean = _permk_round(c, x, n, r, seed)[0].mean(0)
        if n & (n - 1) == 0 and d >= n:
            assert torch.equal(mean, x)  # (n x_j) / n is exact for n a power of two
        else:  # (n/c x_j) c times, summed and divided by n: a few roundings of x_j
            torch.testing.assert_close(mean, x, rtol=8e-16, atol=0)


@pytest.mark.parametrize("n", [2, 5, 24])
@pytest.mark.parametrize("kind", ["n-1", "n+1", "103"])
def test_permk_measured_omega_per_worker_equals_theory(seed, n, kind):
    """E||Q_i(x) - x||^2 = omega ||x||^2 with equality for PermK: n - 1 (d >= n), and
    (n/d)(r/(q+1) + (d-r)/q) - 1 (d < n = q d + r), measured for every worker."""
    d = {"n-1": n - 1, "n+1": n + 1, "103": 103}[kind]
    c = get("permk", workers=n, value_dtype=torch.float64)
    if d >= n:
        assert c.omega(d) == n - 1
    else:
        q, r = divmod(n, d)
        assert c.omega(d) == pytest.approx(n / d * (r / (q + 1) + (d - r) / q) - 1)
    x = _vector("gaussian", d, seed + d)
    reps = 600
    ratio = torch.stack([((_permk_round(c, x, n, r, seed)[0] - x) ** 2).sum(1) for r in range(reps)]) / float(
        x @ x
    )
    m, se = ratio.mean(0), ratio.std(0) / math.sqrt(reps)
    assert bool(((m - c.omega(d)).abs() <= Z * se + 1e-9).all()), (m.tolist(), c.omega(d))


@pytest.mark.parametrize("d,K", [(1, 1), (10, 1), (10, 4), (57, 20), (8, 8)])
def test_topk_is_contractive(seed, d, K):
    c = get(f"topk:{K}", value_dtype=torch.float64)
    assert not c.unbiased and c.contractive
    assert c.alpha(d) == pytest.approx(K / d)
    with pytest.raises(Exception, match="biased"):
        c.omega(d)
    for kind in KINDS:
        X = torch.stack([_vector(kind, d, seed + i) for i in range(20)])
        Xh, _ = c.compress_decompress(X, Randomness(0, "compress", 0, range(20)))
        err = ((Xh - X) ** 2).sum(1)
        bound = (1 - K / d) * (X**2).sum(1)
        assert bool((err <= bound * (1 + 1e-12)).all()), kind
        # it keeps exactly the K largest magnitudes
        kept = (Xh != 0) | (X == 0)
        thresh = X.abs().topk(K, dim=1).values[:, -1:]
        assert bool(((X.abs() > thresh) <= kept).all())


def test_randk_masks_of_two_workers_are_independent(seed):
    d, K, pairs = 12, 4, 3000
    c = get(f"randk:{K}")
    X = torch.arange(1.0, d + 1, dtype=torch.float64).expand(2 * pairs, d).contiguous()
    # pair p is workers 2p and 2p + 1 of one round; the first pair is workers 0 and 1
    Xh, _ = c.compress_decompress(X, Randomness(seed, "compress", 0, range(2 * pairs)))
    m = (Xh != 0).reshape(pairs, 2, d)
    overlap = (m[:, 0] & m[:, 1]).sum(1).double()
    # independent uniform K-subsets: hypergeometric overlap with mean K^2/d (identical masks: K)
    mean = K * K / d
    var = K * (K / d) * ((d - K) / d) * ((d - K) / (d - 1))
    assert abs(float(overlap.mean()) - mean) <= Z * math.sqrt(var / pairs)
    same = float((m[:, 0] == m[:, 1]).all(1).double().mean())
    p = 1 / math.comb(d, K)
    assert same <= p + Z * math.sqrt(p * (1 - p) / pairs) + 2 * L / (3 * pairs)
    # and the same two workers across rounds
    rounds = [
        c.compress_decompress(X[:2], Randomness(seed, "compress", r, [0, 1]))[0] != 0 for r in range(200)
    ]
    equal = sum(bool((a[0] == a[1]).all()) for a in rounds)
    assert equal <= 200 * p + Z * math.sqrt(200 * p) + L


@pytest.mark.parametrize("spec", EVERY_KIND)
def test_same_seed_same_output_different_seed_differs(seed, spec):
    c = get(spec, workers=4)
    X = torch.stack([_vector("gaussian", 40, seed + i) for i in range(4)])
    out = lambda seed, rnd=0: c.compress_decompress(X, Randomness(seed, "compress", rnd, range(4)))[0]
    a = out(seed)
    assert torch.equal(a, out(seed))
    if spec not in ("identity", "topk:2", "sign"):
        # eight rounds at once: a Bernoulli flag pattern of 4 workers repeats with probability 1/16,
        # all eight rounds' patterns with 2^-32
        rounds = lambda seed: torch.cat([out(seed, r) for r in range(8)])
        assert not torch.equal(rounds(seed), rounds(seed + 1))
        assert not torch.equal(torch.cat([out(seed, r) for r in range(0, 16, 2)]), rounds(seed))


@pytest.mark.parametrize("spec", [*EVERY_KIND, "randk:3:seeded+qsgd:2"])
def test_hosted_subset_compresses_like_full_simulation(seed, spec):
    c = get(spec, workers=8)
    X = torch.stack([_vector("gaussian", 24, seed + i) for i in range(8)])
    full, bits = c.compress_decompress(X, Randomness(seed, "compress", 3, range(8)))
    part, pbits = c.compress_decompress(X[[3, 5]], Randomness(seed, "compress", 3, [3, 5]))
    assert torch.equal(full[[3, 5]], part) and torch.equal(bits[[3, 5]], pbits)


def test_terngrad_omega_is_attained_at_its_worst_vector(seed):
    """||x||_inf ||x||_1 / ||x||^2 is (sqrt d + 1)/2 at x = (1, t, ..., t), t = 1/(sqrt d + 1):
    the measured E||Q(x) - x||^2 / ||x||^2 equals omega = (sqrt d - 1)/2 there, less elsewhere."""
    d = 16
    c = get("terngrad", value_dtype=torch.float64)
    t = 1 / (math.sqrt(d) + 1)
    x = torch.full((d,), t, dtype=torch.float64)
    x[0] = 1.0
    assert c.omega(d) == 1.5
    exact = float(x.abs().max() * x.abs().sum() - x @ x) / float(x @ x)
    assert exact == pytest.approx(c.omega(d), rel=1e-12)
    S = _samples(c, x, 1, seed)[:, 0]
    ratio = ((S - x) ** 2).sum(-1) / float(x @ x)
    assert abs(float(ratio.mean()) - c.omega(d)) <= Z * float(ratio.std()) / math.sqrt(R)
    for k in range(20):  # random vectors stay below the bound
        y = _vector("gaussian", d, seed + k)
        assert float(y.abs().max() * y.abs().sum() - y @ y) <= c.omega(d) * float(y @ y)


@pytest.mark.parametrize("inner", ["natural", "qsgd:2", "natural-dithering:3", "terngrad"])
def test_composed_theory_is_the_product_formula(inner):
    d, K = 40, 8
    c, q = get(f"randk:{K}+{inner}"), get(inner)
    assert c.unbiased and not c.correlated and c.gathers
    assert c.omega(d) == pytest.approx((1 + (d / K - 1)) * (1 + q.omega(K)) - 1, rel=1e-15)
    assert c.density(d) == q.density(K)
    assert c.bits_per_message(d) == q.bits_per_message(K) + K * math.ceil(math.log2(d))
    assert get(f"randk:{K}:seeded+{inner}").bits_per_message(d) == q.bits_per_message(K)


def test_composed_omega_is_attained_with_natural(seed):
    """The scaled kept values (d/K) x_j = (4/3) 2^k each give natural compression's worst case
    1/8, so E||Q(x) - x||^2 = (d/K)(9/8) - 1 times ||x||^2: the formula, measured."""
    d, K = 12, 3
    c = get(f"randk:{K}+natural", value_dtype=torch.float64)
    x = (K / d) * (4 / 3) * torch.exp2(torch.arange(d, dtype=torch.float64) - 6)
    S = _samples(c, x, 1, seed)[:, 0]
    ratio = ((S - x) ** 2).sum(-1) / float(x @ x)
    assert c.omega(d) == pytest.approx(d / K * 9 / 8 - 1)
    assert abs(float(ratio.mean()) - c.omega(d)) <= Z * float(ratio.std()) / math.sqrt(R)


def test_composed_draws_randk_then_the_quantiser(seed):
    """The kept indices are RandK's of the same key; the kept values are the quantiser's of
    (d/K) x_S made at the next call counter."""
    d, K, n = 30, 5, 4
    X = torch.stack([_vector("gaussian", d, seed + i) for i in range(n)])
    rng = Randomness(seed, "compress", 2, range(n))
    msg = get(f"randk:{K}+qsgd:3").compress(X, rng)
    ref = Randomness(seed, "compress", 2, range(n))
    idx = ref.sample_without_replacement(d, K)
    assert torch.equal(msg.data["indices"], idx)
    q = get("qsgd:3").compress((X.gather(1, idx) * (d / K)).contiguous(), ref)
    assert torch.equal(msg.data["codes"], q.data["codes"]) and torch.equal(msg.data["norm"], q.data["norm"])


@pytest.mark.parametrize("d", [1, 2, 9, 64])
def test_sign_is_contractive_with_alpha_one_over_d(seed, d):
    c = get("sign", value_dtype=torch.float64)
    assert not c.unbiased and c.contractive and c.alpha(d) == 1 / d and c.density(d) == d
    with pytest.raises(Exception, match="biased"):
        c.omega(d)
    X = torch.stack([_vector(kind, d, seed + i) for i, kind in enumerate(KINDS)])
    Xh, bits = c.compress_decompress(X, Randomness(0, "compress", 0, range(len(KINDS))))
    l1, sq = X.abs().sum(1), (X**2).sum(1)
    err = ((Xh - X) ** 2).sum(1)
    assert bool(((err - (sq - l1**2 / d)).abs() <= 1e-12 * sq).all())  # the exact error
    assert bool((err <= (1 - 1 / d) * sq * (1 + 1e-12)).all())
    torch.testing.assert_close(Xh.abs(), (l1 / d)[:, None].expand(-1, d), rtol=1e-15, atol=0)
    e1 = torch.zeros(1, d, dtype=torch.float64)
    e1[0, 0] = 2.0
    E = c.compress_decompress(e1, Randomness(0, "compress", 0, [0]))[0]
    assert float(((E - e1) ** 2).sum()) == pytest.approx((1 - c.alpha(d)) * 4.0)  # attained
    big = torch.full((1, d), -1e306, dtype=torch.float64)  # ||x||_1 overflows float64 for d >= 180
    big[0, 0] = 1e306
    torch.testing.assert_close(
        c.compress_decompress(big, Randomness(0, "compress", 0, [0]))[0].abs(),
        torch.full((1, d), 1e306, dtype=torch.float64),
        rtol=1e-15,
        atol=0,
    )
