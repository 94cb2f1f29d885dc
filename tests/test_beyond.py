"""EF21, EF21-PP, EF21-SGD, DASHA, DASHA-PAGE and DASHA-MVR: against GD, hand counts of bits and
oracle calls, hand-computed theory stepsizes, and EF21's Lyapunov descent on every bundled set."""

from __future__ import annotations

import json
import math

import pytest
import torch

import marina
from marina import compressors, methods, problems, theory
from marina.cli import main
from marina.errors import ConfigError
from marina.methods.base import SHARED_BLOCK
from marina.network.simulated import SimulatedNetwork
from marina.rng import SHARED, Randomness

K = 12
SEED = 5
WIRE = 32


@pytest.fixture(scope="module")
def prob():
    return problems.synthetic(workers=6, dim=24, samples=20, seed=2)


def _run(prob, method, compressor="identity", **params):
    """marina.run logging every round, K rounds unless ``iterations`` is given."""
    options = {"iterations": K, "seed": SEED, "log_every": 1, **params}
    return marina.run(method=method, problem=prob, compressor=compressor, **options)


def _shared(stream, width):
    """The shared draws of rounds 0..K-1, recomputed from the key (block 0 of the stream)."""
    u = Randomness(SEED, stream, 0, [SHARED], "cpu").uniform(SHARED_BLOCK * width)
    return u.reshape(SHARED_BLOCK, width)[:K]


def _sparse_bits(k, d):
    return k * (WIRE + math.ceil(math.log2(d)))


# -- the identity gives GD ------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["ef21", "dasha"])
def test_with_the_identity_the_trajectory_is_gd(prob, method):
    """At float64 wire precision (float32 would round GD's gradients and EF21's differences
    differently, a 1e-8 relative effect unrelated to the algorithms)."""
    identity = compressors.get("identity", value_dtype=torch.float64)
    gd = _run(prob, "gd", identity)
    params = {"momentum": 1.0} if method == "dasha" else {}
    got = _run(prob, method, identity, **params)
    assert got.params["stepsize"] == gd.params["stepsize"] == 1.0 / float(prob.L_f)
    a, b = got.history, gd.history
    assert torch.allclose(got.x, gd.x, rtol=1e-12, atol=1e-13)
    assert ((a["grad_norm_sq"] - b["grad_norm_sq"]).abs() / b["grad_norm_sq"]).max() < 1e-10
    d, m = prob.dim, float(prob.sizes.double().mean())
    k = a["iteration"]
    # GD sends grad f_i(x^k) in rounds 0..K-1; EF21/DASHA send g_i^0 dense, then one message a round
    assert b["bits_up"].tolist() == (k * d * 64).tolist()
    assert a["bits_up"].tolist() == ((k + 1) * d * 64).tolist()
    assert a["oracle_calls"].tolist() == pytest.approx(((k + 1) * m).tolist(), rel=1e-12)
    assert a["bits_down"].tolist() == (k * d * 64).tolist()


def test_dasha_with_the_identity_defaults_to_momentum_one(prob):
    assert _run(prob, "dasha", iterations=1).params["momentum"] == 1.0


# -- bits and oracle calls ------------------------------------------------------------------------
def test_ef21_topk_counts(prob):
    res = _run(prob, "ef21", "topk:3")
    h, d, m = res.history, prob.dim, float(prob.sizes.double().mean())
    assert h["bits_up"].iloc[-1] == d * WIRE + K * _sparse_bits(3, d)
    assert h["oracle_calls"].iloc[-1] == pytest.approx((K + 1) * m)
    assert h["bits_down"].iloc[-1] == K * d * WIRE


def test_ef21_pp_counts_only_the_participating_clients(prob):
    q = 0.4
    res = _run(prob, "ef21-pp", "topk:3", participation=q)
    part = _shared("participation", prob.n_workers) < q  # (K, n) who takes part
    n, d = prob.n_workers, prob.dim
    sizes = prob.sizes.double()
    expected_bits = d * WIRE + int(part.sum()) * _sparse_bits(3, d) / n
    expected_calls = float(sizes.mean()) + float((part.double() @ sizes).sum()) / n
    h = res.history
    assert h["bits_up"].iloc[-1] == pytest.approx(expected_bits, rel=1e-12)
    assert h["oracle_calls"].iloc[-1] == pytest.approx(expected_calls, rel=1e-12)
    assert 0 < int(part.sum()) < part.numel()


def test_ef21_pp_with_full_participation_is_ef21(prob):
    a = _run(prob, "ef21-pp", "topk:3", participation=1.0)
    b = _run(prob, "ef21", "topk:3")
    assert a.params["stepsize"] == b.params["stepsize"]
    assert torch.allclose(a.x, b.x, rtol=1e-12, atol=1e-13)
    assert a.history["bits_up"].tolist() == b.history["bits_up"].tolist()


def test_ef21_sgd_and_dasha_mvr_counts(prob):
    d, m = prob.dim, float(prob.sizes.double().mean())
    sgd = _run(prob, "ef21-sgd", "topk:3", batch_size=4).history
    assert sgd["oracle_calls"].iloc[-1] == pytest.approx(m + 4 * K)
    assert sgd["bits_up"].iloc[-1] == d * WIRE + K * _sparse_bits(3, d)
    mvr = _run(prob, "dasha-mvr", "randk:3", batch_size=4, dense_batch_size=10).history
    assert mvr["oracle_calls"].iloc[-1] == pytest.approx(10 + 2 * 4 * K)
    assert mvr["bits_up"].iloc[-1] == d * WIRE + K * _sparse_bits(3, d)


def test_dasha_page_counts_follow_the_shared_coin(prob):
    p, B = 0.3, 4
    res = _run(prob, "dasha-page", "randk:3", p=p, batch_size=B)
    coins = (_shared("coin", 1)[:, 0] < p).double()
    m, d = float(prob.sizes.double().mean()), prob.dim
    expected = m + float((coins * m + (1 - coins) * 2 * B).sum())
    h = res.history
    assert h["oracle_calls"].iloc[-1] == pytest.approx(expected, rel=1e-12)
    # every round sends a compressed message, coin or not
    assert h["bits_up"].iloc[-1] == d * WIRE + K * _sparse_bits(3, d)
    assert 0 < coins.sum() < K


# -- theory stepsizes -------------------------------------------------------------------------------
def test_ef21_theory_against_hand_formulas():
    # alpha = 1/2: theta = 1 - 1/sqrt 2, beta = (1/2)/theta, sqrt(beta/theta) = 1 + sqrt 2
    assert theory.ef21_stepsize(2.0, 3.0, 0.5) == pytest.approx(1.0 / (2.0 + 3.0 * (1.0 + math.sqrt(2.0))))
    assert theory.ef21_stepsize(2.0, 3.0, 1.0) == 0.5  # identity: GD
    # EF21-SGD doubles beta: sqrt(2 beta/theta) = sqrt 2 (1 + sqrt 2)
    assert theory.ef21_sgd_stepsize(2.0, 3.0, 0.5) == pytest.approx(
        1.0 / (2.0 + 3.0 * math.sqrt(2.0) * (1.0 + math.sqrt(2.0)))
    )
    # EF21-PP, q = 1/2, alpha = 1/2: theta = 1 - 1/sqrt 2, rho = theta/2, theta_p = theta/4,
    # beta_p = beta/2 + (1 + 2/theta)/2
    theta = 1.0 - 1.0 / math.sqrt(2.0)
    beta = 0.5 / theta
    theta_p, beta_p = theta / 4.0, beta / 2.0 + (1.0 + 2.0 / theta) / 2.0
    assert theory.ef21_pp_theta_beta(0.5, 0.5) == pytest.approx((theta_p, beta_p))
    assert theory.ef21_pp_stepsize(2.0, 3.0, 0.5, 0.5) == pytest.approx(
        1.0 / (2.0 + 3.0 * math.sqrt(beta_p / theta_p))
    )
    with pytest.raises(ConfigError, match="alpha == 0.0, must be in"):
        theory.ef21_stepsize(2.0, 3.0, 0.0)


@pytest.mark.parametrize(("alpha", "q"), [(0.5, 0.5), (0.1, 0.3), (0.9, 0.8), (1.0, 0.25)])
def test_ef21_pp_constants_are_theorem_7_in_its_general_form(alpha, q):
    """The extensions paper's Theorem 7 as FL_PyTorch writes it (EF21PP.theoreticalStepSize):
    theta = 1 - (1 + s)(1 - alpha), beta = (1 + 1/s)(1 - alpha) for a free s > 0,
    theta_p = rho p_min + theta p_max - rho - (p_max - p_min), beta_p = beta p + (1 + 1/rho)(1 - p);
    with p_min = p_max = q, EF21's s = 1/sqrt(1 - alpha) - 1 and rho = theta q/(2 (1 - q))."""
    if alpha == 1.0:  # s -> infinity: theta = 1, beta = 0
        theta, beta = 1.0, 0.0
    else:
        s = 1.0 / math.sqrt(1.0 - alpha) - 1.0
        theta, beta = 1.0 - (1.0 + s) * (1.0 - alpha), (1.0 + 1.0 / s) * (1.0 - alpha)
    assert theory.ef21_theta_beta(alpha) == pytest.approx((theta, beta), rel=1e-12, abs=1e-15)
    rho = theta * q / (2.0 * (1.0 - q))
    theta_p = rho * q + theta * q - rho - (q - q)
    beta_p = beta * q + (1.0 + 1.0 / rho) * (1.0 - q)
    assert theta_p == pytest.approx(theta * q / 2.0) and theta_p > 0
    assert theory.ef21_pp_theta_beta(alpha, q) == pytest.approx((theta_p, beta_p), rel=1e-12)
    L_f, L = 2.0, 3.0
    gamma = 1.0 / (L_f + math.sqrt(beta_p * L**2 / theta_p))  # FL_PyTorch: B = beta_p mean L_i^2
    assert theory.ef21_pp_stepsize(L_f, L, alpha, q) == pytest.approx(gamma, rel=1e-12)
    assert theory.ef21_pp_stepsize(L_f, L, alpha, q) < theory.ef21_stepsize(L_f, L, alpha)


def test_dasha_theory_against_hand_formulas():
    # omega = 1, n = 6: a = 1/3, sqrt(16 * 1 * 3/6) = 2 sqrt 2
    assert theory.dasha_momentum(1.0) == pytest.approx(1.0 / 3.0)
    assert theory.dasha_stepsize(2.0, 3.0, 1.0, 6) == pytest.approx(1.0 / (2.0 + 2.0 * math.sqrt(2.0) * 3.0))
    # PAGE, m = 36, B = 4: p = 0.1; 48 * 1/2 * (9 + 0.9 * 25/4) + 2 * 0.9 * 25/(0.1 * 6 * 4)
    p = theory.dasha_page_p(36, 4)
    assert p == pytest.approx(0.1)
    root = math.sqrt(24.0 * (9.0 + 0.9 * 25.0 / 4.0) + 2.0 * 0.9 * 25.0 / (0.1 * 6 * 4))
    assert theory.dasha_page_stepsize(2.0, 3.0, 5.0, 1.0, 6, p, 4) == pytest.approx(1.0 / (2.0 + root))
    # MVR, B = 4, B_0 = 16, omega = 1: b = min(sqrt(1/4), 1/4) = 1/4
    assert theory.dasha_mvr_momentum(1.0, 4, 16) == pytest.approx(0.25)
    assert theory.dasha_mvr_momentum(0.1, 4, 16) == pytest.approx(0.25)  # min(5, 1/4)
    root = math.sqrt(24.0 * (9.0 + 0.75**2 * 25.0 / 4.0) + 12.0 * 25.0 / (0.25 * 6 * 4))
    assert theory.dasha_mvr_stepsize(2.0, 3.0, 5.0, 1.0, 6, 0.25, 4) == pytest.approx(1.0 / (2.0 + root))


def test_run_uses_the_theory_of_the_problem_and_compressor(prob):
    L_f = float(prob.L_f)
    L = float(torch.sqrt(torch.mean(prob.L_i.double() ** 2)))
    d, n = prob.dim, prob.n_workers
    alpha = 3 / d  # topk:3
    root = math.sqrt(1 - alpha)
    expected = 1.0 / (L_f + L * math.sqrt(((1 - alpha) / (1 - root)) / (1 - root)))
    # an unbiased compressor is scaled: alpha = 1/(1 + omega) = K/d for randk:K, same stepsize
    for spec in ("topk:3", "randk:3"):
        assert _run(prob, "ef21", spec, iterations=1).params["stepsize"] == pytest.approx(expected, rel=1e-12)
    omega = d / 3 - 1
    used = _run(prob, "dasha", "randk:3", iterations=1).params
    assert used["momentum"] == pytest.approx(1 / (2 * omega + 1))
    assert used["stepsize"] == pytest.approx(1 / (L_f + math.sqrt(16 * omega * (2 * omega + 1) / n) * L))


def test_dasha_refuses_a_biased_compressor_and_ef21_takes_it(prob):
    with pytest.raises(ConfigError, match="'topk:3' is biased; dasha needs an unbiased"):
        _run(prob, "dasha", "topk:3", iterations=1)
    with pytest.raises(ConfigError, match="participation == 1.5, must be in"):
        _run(prob, "ef21-pp", "topk:3", iterations=1, participation=1.5)


def test_ef21_with_randk_sends_randk_messages_scaled_by_one_over_one_plus_omega(prob):
    """One round by hand: g^1 = g^0 + (1/(1+omega)) mean_i Q_i(grad f_i(x^1) - g_i^0)."""
    net = SimulatedNetwork(prob.n_workers, SEED)
    Q = compressors.get("randk:3", value_dtype=torch.float64)  # no float32 rounding of g^0
    cls = methods.get("ef21")
    used = cls.resolve(methods.Setting.build(prob, net, Q, 1), {})
    algo = cls(prob, net, Q, used)
    x0 = prob.initial_point()
    algo.start(x0)
    g0 = prob.local_grads(x0)
    algo.step()
    x1 = x0 - used["stepsize"] * g0.mean(0)
    rng = Randomness(SEED, "compress", 0, torch.arange(prob.n_workers), "cpu")
    msgs, _ = Q.compress_decompress(prob.local_grads(x1) - g0, rng)
    omega = prob.dim / 3 - 1
    assert torch.allclose(algo.state.x, x1, rtol=1e-13)
    assert torch.allclose(algo.state.estimates, g0 + msgs / (1 + omega), rtol=1e-12, atol=1e-14)
    assert torch.allclose(algo.state.g, g0.mean(0) + msgs.mean(0) / (1 + omega), rtol=1e-12, atol=1e-14)


# -- EF21 with TopK on the bundled data sets -----------------------------------------------------------
LIBSVM = ("a9a", "ijcnn1", "mushrooms", "phishing", "w8a")


@pytest.mark.parametrize("name", LIBSVM)
def test_ef21_topk_converges_with_theory_stepsizes(name):
    """Theorem 1's Lyapunov function Phi^k = f(x^k) - f_low + gamma/(2 theta) G^k, with
    G^k = (1/n) sum_i ||g_i^k - grad f_i(x^k)||^2, decreases by at least (gamma/2)||grad f(x^k)||^2
    every round (TopK is deterministic, so the expectation is the value); hence G^k -> 0."""
    prob = problems.libsvm(name, workers=5)
    net = SimulatedNetwork(5, 0)
    kk = max(1, prob.dim // 4)
    Q = compressors.get(f"topk:{kk}")
    cls = methods.get("ef21")
    used = cls.resolve(methods.Setting.build(prob, net, Q, 1), {})
    gamma, alpha = used["stepsize"], kk / prob.dim
    theta = 1 - math.sqrt(1 - alpha)
    algo = cls(prob, net, Q, used)
    algo.start(prob.initial_point())

    def lyapunov():
        G = float(((algo.state.estimates - prob.local_grads(algo.x)) ** 2).sum(1).mean())
        return prob.loss(algo.x) + gamma / (2 * theta) * G, G, prob.grad_norm_sq(algo.x)

    phi, G, gn = lyapunov()
    errors = [G]
    for _ in range(300):
        algo.step()
        phi_next, G, gn_next = lyapunov()
        assert phi_next <= phi - gamma / 2 * gn + 1e-12 * abs(phi), (name, algo.k)
        phi, gn = phi_next, gn_next
        errors.append(G)
    peak = max(errors)
    assert peak > 0
    assert errors[-1] < 0.05 * peak, (name, errors[-1], peak)


# -- marina theory ---------------------------------------------------------------------------------
def test_marina_theory_predicts_ef21_and_dasha_from_hand_formulas(capsys):
    tiny = ["--problem", "synthetic", "--workers", "3"]
    assert main(["theory", *tiny, "--compressor", "randk:2", "--eps", "0.01", "--json"]) == 0
    t = json.loads(capsys.readouterr().out)
    prob = problems.get("synthetic", workers=3)
    d, m, n = 10, 20, 3
    delta0 = prob.loss(prob.initial_point()) + prob.nonconvexity * d
    L_f, L = float(prob.L_f), float(prob.L)
    rows = {r["label"]: r for r in t["methods"]}
    # randk:2 on d = 10: omega = 4, scaled to alpha = 1/5; messages of 2 (32 + 4) = 72 bits
    root = math.sqrt(0.8)
    gamma_ef21 = 1 / (L_f + L * math.sqrt(0.8 / (1 - root) ** 2))
    gamma_dasha = 1 / (L_f + math.sqrt(16 * 4 * 9 / n) * L)
    for label, gamma in (("ef21", gamma_ef21), ("dasha", gamma_dasha)):
        rounds = math.ceil(2 * delta0 / (gamma * 0.01**2))
        got = rows[label]
        assert got["stepsize"] == pytest.approx(gamma, rel=1e-12), label
        assert got["rounds"] == rounds, label
        assert got["bits_per_worker"] == pytest.approx(d * 32 + rounds * 72, rel=1e-12), label
        assert got["oracle_calls"] == pytest.approx(m * (1 + rounds), rel=1e-12), label
    assert rows["dasha"]["alpha"] == pytest.approx(1 / 9)  # a = 1/(2 omega + 1)
    assert "ef21-sgd" not in rows and "dasha-mvr" not in rows  # guarantees need sigma
    # a biased compressor: only the error-feedback rows
    assert main(["theory", *tiny, "--compressor", "topk:2", "--json"]) == 0
    labels = [r["label"] for r in json.loads(capsys.readouterr().out)["methods"]]
    assert labels == ["ef21", "ef21-pp"]
    # the table says why there is no omega and gives the contraction instead: alpha = K/d, 1/d
    for spec, alpha in (("topk:2", "0.2"), ("sign", "0.1")):
        assert main(["theory", *tiny, "--compressor", spec]) == 0
        head = capsys.readouterr().out.splitlines()[2]
        assert f"{spec}: omega undefined (biased), contractive with alpha = {alpha}," in head
        assert "nan" not in head


# -- state -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method, spec",
    [
        ("ef21", "topk:3"),
        ("ef21-pp", "randk:3"),
        ("ef21-sgd", "topk:3"),
        ("dasha", "randk:3"),
        ("dasha-page", "randk:3"),
        ("dasha-mvr", "randk:3"),
    ],
)
def test_state_dict_continues_bit_identically(prob, method, spec):
    """5 rounds, state_dict, a fresh method loads it and does 7 more: the iterate and the
    counters of 12 uninterrupted rounds, bit for bit (the randomness is keyed by the round)."""

    def build():
        net = SimulatedNetwork(prob.n_workers, SEED)
        Q = compressors.get(spec)
        cls = methods.get(method)
        return cls(prob, net, Q, cls.resolve(methods.Setting.build(prob, net, Q, K), {})), net

    whole, net_whole = build()
    whole.start(prob.initial_point())
    for _ in range(K):
        whole.step()
    first, net_first = build()
    first.start(prob.initial_point())
    for _ in range(5):
        first.step()
    second, net_second = build()
    second.load_state_dict(first.state_dict())
    net_second.load_counters(net_first.counters())
    for _ in range(K - 5):
        second.step()
    assert torch.equal(second.x, whole.x)
    assert second.oracle_calls == whole.oracle_calls
    assert net_second.counters() == net_whole.counters()


def test_ef21_with_the_scaled_sign(prob):
    """sign is contractive with alpha = 1/d: EF21's theory stepsize for that alpha, messages of
    w + d bits (scale, then one sign bit a coordinate); the unbiased-only methods refuse it."""
    L_f = float(prob.L_f)
    L = float(torch.sqrt(torch.mean(prob.L_i.double() ** 2)))
    d = prob.dim
    alpha = 1 / d
    root = math.sqrt(1 - alpha)
    res = _run(prob, "ef21", "sign")
    assert res.params["stepsize"] == pytest.approx(
        1.0 / (L_f + L * math.sqrt(((1 - alpha) / (1 - root)) / (1 - root))), rel=1e-12
    )
    assert res.history["bits_up"].iloc[-1] == d * WIRE + K * (WIRE + d)
    for method in ("marina", "diana", "dasha"):
        with pytest.raises(ConfigError, match=f"'sign' is biased; {method} needs an unbiased"):
            _run(prob, method, "sign", iterations=1)
