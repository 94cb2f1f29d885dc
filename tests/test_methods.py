"""Methods against each other (exact reductions) and counters against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

import marina
from marina import compressors, problems
from marina.methods.base import SHARED_BLOCK
from marina.rng import SHARED, Randomness

N, D, M = 3, 10, 20  # synthetic: 3 workers, d = 10, m = 20 samples each
DENSE = D * 32  # a dense float32 message: 320 bits
RANDK2 = 2 * (32 + 4)  # randk:2 on d = 10: two values and two ceil(log2 10) = 4-bit indices


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny sparse products: one thread avoids OpenMP spinning on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def synth():
    return problems.synthetic(workers=N, dim=D, samples=M, heterogeneity=1.0, seed=3)


def _run(problem, method, compressor, iterations=30, seed=0, **params):
    return marina.run(
        method=method,
        problem=problem,
        compressor=compressor,
        iterations=iterations,
        seed=seed,
        log_every=1,
        **params,
    )


def _shared_uniforms(seed, stream, k, width=1):
    """Documented keying of shared draws: round k is row k mod B of block k // B."""
    block, row = divmod(k, SHARED_BLOCK)
    return (
        Randomness(seed, stream, block, [SHARED])
        .uniform(SHARED_BLOCK * width)
        .reshape(SHARED_BLOCK, width)[row]
    )


def _coins(seed, stream, p, rounds):
    return [bool(_shared_uniforms(seed, stream, k)[0] < p) for k in range(rounds)]


F64 = dict(value_dtype=torch.float64)


# -- exact reductions ------------------------------------------------------------------------------
def test_marina_with_p1_is_gd_bit_for_bit(seed, synth):
    gd = _run(synth, "gd", "randk:2", seed=seed, stepsize=0.05)
    mar = _run(synth, "marina", "randk:2", seed=seed, stepsize=0.05, p=1.0)
    assert torch.equal(gd.x, mar.x)
    for col in ("grad_norm_sq", "loss"):
        assert gd.history[col].tolist() == mar.history[col].tolist()
    # MARINA also paid the dense g^0 round: one more dense message and one more local gradient
    assert (mar.history["bits_up"] - gd.history["bits_up"]).tolist() == [DENSE] * 31
    assert (mar.history["oracle_calls"] - gd.history["oracle_calls"]).tolist() == [M] * 31


def test_marina_with_identity_is_gd(seed, synth):
    gd = _run(synth, "gd", "identity", seed=seed, stepsize=0.05)
    # theory p = zeta/d = 1 for the identity: bit for bit
    mar = _run(synth, "marina", "identity", seed=seed, stepsize=0.05)
    assert mar.params["p"] == 1.0
    assert torch.equal(gd.x, mar.x)
    # forced p < 1 with an exact (float64) wire: equal up to float64 rounding of the differences
    Q = compressors.get("identity", **F64)
    gd64 = _run(synth, "gd", Q, seed=seed, stepsize=0.05)
    mar64 = _run(synth, "marina", Q, seed=seed, stepsize=0.05, p=0.2)
    assert torch.allclose(gd64.x, mar64.x, rtol=1e-12, atol=1e-13)
    assert gd64.history["grad_norm_sq"].to_numpy() == pytest.approx(
        mar64.history["grad_norm_sq"].to_numpy(), rel=1e-9
    )


def test_qgd_and_diana_with_identity_are_gd(seed, synth):
    gd = _run(synth, "gd", "identity", seed=seed, stepsize=0.05)
    qgd = _run(synth, "qgd", "identity", seed=seed, stepsize=0.05)
    assert torch.equal(gd.x, qgd.x)
    assert gd.history.drop(columns="time_s").equals(qgd.history.drop(columns="time_s"))
    Q = compressors.get("identity", **F64)
    gd64 = _run(synth, "gd", Q, seed=seed, stepsize=0.05)
    diana = _run(synth, "diana", Q, seed=seed, stepsize=0.05)  # alpha = 1/(1 + 0) = 1
    assert diana.params["alpha"] == 1.0
    assert torch.allclose(gd64.x, diana.x, rtol=1e-12, atol=1e-13)


def test_vr_marina_with_full_batch_is_marina(seed, synth):
    """b' = m without replacement: the minibatch difference is the full difference; same coins,
    same compression randomness, so the same trajectory up to float64 rounding."""
    Q = compressors.get("randk:3", **F64)
    mar = _run(synth, "marina", Q, seed=seed, p=0.3)
    vr = _run(synth, "vr-marina", Q, seed=seed, p=0.3, batch_size=M, stepsize=mar.params["stepsize"])
    assert torch.allclose(mar.x, vr.x, rtol=1e-10, atol=1e-12)
    assert mar.history["grad_norm_sq"].to_numpy() == pytest.approx(
        vr.history["grad_norm_sq"].to_numpy(), rel=1e-8
    )
    assert mar.history["bits_up"].tolist() == vr.history["bits_up"].tolist()


def test_pp_marina_with_all_clients_and_p1_is_marina(seed, synth):
    mar = _run(synth, "marina", "randk:2", seed=seed, p=1.0, stepsize=0.05)
    pp = _run(synth, "pp-marina", "randk:2", seed=seed, p=1.0, stepsize=0.05, clients=N)
    assert torch.equal(mar.x, pp.x)
    assert mar.history.drop(columns="time_s").equals(pp.history.drop(columns="time_s"))


def test_pp_marina_with_all_clients_matches_marina_in_distribution(seed, synth):
    """With r = n clients drawn with replacement, g^1 = g^0 + (1/r) sum_t D_{i_t} where
    D_i = Q_i(grad f_i(x^1) - grad f_i(x^0)). With Q = identity (exact wire) and c_0 = 0, MARINA
    gives g^0 + mean_i D_i: PP-MARINA's g^1 has that mean and covariance trace
    (1/r) mean_i ||D_i - mean D||^2. Checked over S seeds with 6-sigma CLT tolerances."""
    Q = compressors.get("identity", **F64)
    gamma, S = 0.1, 300
    mar = marina.run(method="marina", problem=synth, compressor=Q, iterations=2, p=1e-12, stepsize=gamma)
    # x^2 = x^1 - gamma g^1, with g^1 from one compressed round (c_0 = 0 unless a 1e-12 event)
    x0 = synth.initial_point()
    x1 = x0 - gamma * synth.local_grads(x0).mean(0)
    Dif = synth.local_grads(x1) - synth.local_grads(x0)
    g1_marina = (x1 - mar.x) / gamma
    base = seed
    g1 = torch.stack([(x1 - _pp_x(synth, Q, gamma, base + s)) / gamma for s in range(S)])
    # mean: E g^1 = g^0 + mean_i D_i, per-coordinate std sqrt(Var_i(D)/r)/sqrt(S)
    sd = torch.sqrt(Dif.var(dim=0, unbiased=False) / N / S)
    assert bool(((g1.mean(0) - g1_marina).abs() <= 6 * sd + 1e-12).all())
    # covariance trace
    dev = ((g1 - g1_marina) ** 2).sum(1)
    trace = ((Dif - Dif.mean(0)) ** 2).sum(1).mean() / N
    assert abs(float(dev.mean() - trace)) <= 6 * float(dev.std()) / math.sqrt(S) + 1e-12


def _pp_x(problem, Q, gamma, seed):
    return marina.run(
        method="pp-marina",
        problem=problem,
        compressor=Q,
        iterations=2,
        p=1e-12,
        stepsize=gamma,
        clients=N,
        seed=seed,
        log_every=1,
    ).x


# -- counters --------------------------------------------------------------------------------------
def _expected(method, seed, K, m_i, n, d_bits, msg_bits, params):
    """Hand-computed cumulative bits_up (per worker), bits_down and oracle_calls at rounds 0..K.

    m_i: list of local sizes; d_bits: a dense message; msg_bits: one compressed message.
    """
    m_mean = sum(m_i) / n
    up, down, oracle = [0.0], [0.0], [0.0]
    if method in ("marina", "vr-marina", "pp-marina"):
        up[0] = d_bits  # g^0 dense round
        oracle[0] = params.get("dense_batch_size", m_mean)
    if method == "vr-diana":
        oracle[0] = m_mean  # mu_i^0 = grad f_i(x^0)
    p = params.get("p", 1.0)
    coins = _coins(seed, "coin", p, K)
    refresh = _coins(seed, "refresh", params.get("refresh_p", 1.0), K)
    fresh = [True] * n
    for k in range(K):
        u, o = 0.0, 0.0
        if method == "gd":
            u, o = d_bits, m_mean
        elif method in ("qgd", "diana"):
            u, o = msg_bits, m_mean
        elif method == "vr-diana":
            b = params["batch_size"]
            u, o = msg_bits, 2 * b + (m_mean if refresh[k] else 0.0)
        elif method == "marina":
            u, o = (d_bits if coins[k] else msg_bits), m_mean
        elif method == "vr-marina":
            b_dense = params.get("dense_batch_size", m_mean)
            u = d_bits if coins[k] else msg_bits
            o = b_dense if coins[k] else 2 * params["batch_size"]
        elif method == "pp-marina":
            if coins[k]:
                u, o, fresh = d_bits, m_mean, [True] * n
            else:
                r = params["clients"]
                draws = torch.floor(_shared_uniforms(seed, "clients", k, r) * n).long().tolist()
                u = r * msg_bits / n  # one message per draw, duplicates included
                part = set(draws)
                o = sum(m_i[i] * (1 if fresh[i] else 2) for i in part) / n
                fresh = [i in part for i in range(n)]
        up.append(up[-1] + u)
        down.append(down[-1] + d_bits)
        oracle.append(oracle[-1] + o)
    return up, down, oracle


COUNTER_CASES = [
    ("gd", {}),
    ("qgd", {}),
    ("diana", {}),
    ("vr-diana", {"batch_size": 5, "refresh_p": 0.3}),
    ("marina", {"p": 0.25}),
    ("vr-marina", {"p": 0.25, "batch_size": 5}),
    ("vr-marina", {"p": 0.25, "batch_size": 5, "online": True, "dense_batch_size": 8}),
    ("pp-marina", {"p": 0.2, "clients": 4}),
]


@pytest.mark.parametrize("method, params", COUNTER_CASES)
def test_counters_match_hand_computation(seed, method, params):
    """mushrooms split in 5 (m_i = 1625, 1625, 1625, 1625, 1624), d = 112, randk:2:
    dense message 112 * 32 = 3584 bits, compressed 2 (32 + ceil(log2 112) = 7) = 78 bits."""
    prob = _mushrooms5()
    K = 25
    res = marina.run(
        method=method, problem=prob, compressor="randk:2", iterations=K, seed=seed, log_every=1, **params
    )
    m_i = prob.sizes.tolist()
    assert m_i == [1625, 1625, 1625, 1625, 1624]
    up, down, oracle = _expected(method, seed, K, m_i, 5, 3584, 78, params)
    h = res.history
    assert h["iteration"].tolist() == list(range(K + 1))
    assert h["bits_up"].tolist() == pytest.approx(up, rel=1e-12)
    assert h["bits_down"].tolist() == down
    assert h["oracle_calls"].tolist() == pytest.approx(oracle, rel=1e-12)


_CACHE: dict = {}


def _mushrooms5():
    if "m5" not in _CACHE:
        _CACHE["m5"] = problems.libsvm("mushrooms", workers=5)
    return _CACHE["m5"]


def test_shared_draws_cross_block_boundaries(seed, synth):
    """Coins of rounds around a block boundary follow the documented keying."""
    from marina.methods import MARINA, Setting
    from marina.network import SimulatedNetwork

    net = SimulatedNetwork(N, seed)
    Q = compressors.get("randk:2")
    params = MARINA.resolve(Setting.build(synth, net, Q, 10), {"p": 0.5})
    algo = MARINA(synth, net, Q, params)
    rounds = list(range(SHARED_BLOCK - 5, SHARED_BLOCK + 5)) + [3 * SHARED_BLOCK + 1, 2]
    got = [algo._coin("coin", 0.5, k) for k in rounds]
    assert got == [bool(_shared_uniforms(seed, "coin", k)[0] < 0.5) for k in rounds]
    draws = algo._shared_choices("clients", SHARED_BLOCK + 3, N, 7)
    assert (
        draws.tolist()
        == torch.floor(_shared_uniforms(seed, "clients", SHARED_BLOCK + 3, 7) * N).long().tolist()
    )


SCHEDULE_CASES = [
    ("gd", {}),
    ("marina", {"p": 0.3}),
    ("vr-marina", {"p": 0.3, "batch_size": 5}),
    ("pp-marina", {"p": 0.2, "clients": 4}),
    ("ef21-pp", {"participation": 0.4}),
    ("dasha", {}),
]


@pytest.mark.parametrize("method, params", SCHEDULE_CASES)
def test_public_schedule_is_what_a_run_does(seed, method, params):
    """is_dense_round(k) and participants(k), asked of a method that never runs, against the
    per-round bits_up (per worker) that a run with the same seed records, on mushrooms split in 5
    with randk:2 (fixed-size messages): a dense round d w = 3584 bits per worker, otherwise
    78 bits per message sent, one per worker when participants(k) is None."""
    prob = _mushrooms5()
    K = 40
    res = _run(prob, method, "randk:2", iterations=K, seed=seed, **params)
    schedule = marina.methods.plan(method, prob, "randk:2", iterations=K, overrides=params, seed=seed).build()
    per_round = torch.diff(torch.as_tensor(res.history["bits_up"].to_numpy())).tolist()
    expected = []
    for k in range(K):
        mult = schedule.participants(k)
        if schedule.is_dense_round(k):
            assert mult is None, k
            expected.append(3584.0)
        else:
            expected.append(78.0 if mult is None else 78.0 * int(mult.sum()) / 5)
    assert per_round == pytest.approx(expected, rel=1e-12)
    assert schedule.k == 0 and schedule.state is None  # asking ran nothing


def test_dense_rounds_and_clients_follow_the_documented_draws(seed):
    """MARINA's dense rounds are the shared coins c_k ~ Be(p) (stream "coin", block-keyed):
    the documented keying, round by round over several blocks, and a frequency within 6 standard
    deviations of p; PP-MARINA's participants are the counts of its r i.i.d. draws (stream
    "clients") and None on its dense rounds; EF21-PP's are Be(q) per client (stream
    "participation"); methods without such draws answer None / False."""
    prob = _mushrooms5()
    n, K, p = 5, 3 * SHARED_BLOCK + 17, 0.3
    m = marina.methods.plan("marina", prob, "randk:2", iterations=1, overrides={"p": p}, seed=seed).build()
    dense = [m.is_dense_round(k) for k in range(K)]
    assert dense == _coins(seed, "coin", p, K) and [m.round_coin(k) for k in range(5)] == dense[:5]
    assert abs(sum(dense) - p * K) <= 6 * math.sqrt(K * p * (1 - p))
    pp = marina.methods.plan(
        "pp-marina", prob, "randk:2", iterations=1, overrides={"p": p, "clients": 4}, seed=seed
    ).build()
    for k in list(range(20)) + [SHARED_BLOCK + 3]:
        mult = pp.participants(k)
        if _coins(seed, "coin", p, k + 1)[k]:
            assert mult is None and pp.is_dense_round(k)
        else:
            draws = torch.floor(_shared_uniforms(seed, "clients", k, 4) * n).long()
            assert mult.tolist() == torch.bincount(draws, minlength=n).tolist()
    ef = marina.methods.plan(
        "ef21-pp", prob, "randk:2", iterations=1, overrides={"participation": 0.4}, seed=seed
    )
    ef = ef.build()
    for k in (0, 1, SHARED_BLOCK + 1):
        assert (
            ef.participants(k).tolist()
            == (_shared_uniforms(seed, "participation", k, n) < 0.4).long().tolist()
        )
    for name in ("qgd", "diana", "ef21", "dasha"):
        other = marina.methods.plan(name, prob, "randk:2", iterations=1, seed=seed).build()
        assert (other.round_coin(3), other.is_dense_round(3), other.participants(3)) == (None, False, None)
    gd = marina.methods.plan("gd", prob, "identity", iterations=1, seed=seed).build()
    assert gd.is_dense_round(0) and gd.round_coin(0) is None


# -- state -----------------------------------------------------------------------------------------
STATE_FIELDS = {
    "gd": ["x"],
    "qgd": ["x"],
    "diana": ["x", "shifts", "shift_mean"],
    "vr-diana": ["x", "shifts", "shift_mean", "ref_point", "ref_grads"],
    "marina": ["x", "g", "lazy_local_grads"],
    "vr-marina": ["x", "g"],
    "pp-marina": ["x", "g", "lazy_local_grads", "fresh"],
}
STATE_PARAMS = {"marina": {"p": 0.3}, "pp-marina": {"p": 0.3}, "vr-marina": {"p": 0.3}}


def _method(name, problem, seed, overrides):
    from marina.methods import Setting, get
    from marina.network import SimulatedNetwork

    cls = get(name)
    net = SimulatedNetwork(problem.n_workers, seed)
    Q = compressors.get("randk:3")
    return cls(problem, net, Q, cls.resolve(Setting.build(problem, net, Q, 30), overrides))


@pytest.mark.parametrize("name", list(STATE_FIELDS))
def test_state_dict_is_plain_tensors_and_a_loaded_method_continues_bit_for_bit(name, seed):
    """One generic state_dict / load_state_dict: the fields of the method's State under their
    names, lazy rows materialised; a fresh method loading it continues the trajectory exactly."""
    from marina.lazy_rows import LazyRows

    prob = _mushrooms5()
    full = _method(name, prob, seed, STATE_PARAMS.get(name, {}))
    full.start(prob.initial_point())
    for _ in range(7):
        full.step()
    state = full.state_dict()
    assert list(state) == ["k", "oracle_calls", *STATE_FIELDS[name]]
    assert all(isinstance(state[f], torch.Tensor) for f in STATE_FIELDS[name])
    assert isinstance(full.state, full.State)
    if "lazy_local_grads" in state:
        assert isinstance(full.state.lazy_local_grads, LazyRows)
        assert torch.equal(state["lazy_local_grads"], prob.local_grads(full.x))
    resumed = _method(name, prob, seed, STATE_PARAMS.get(name, {}))
    resumed.load_state_dict({k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()})
    if name == "pp-marina":
        assert resumed.state.fresh.device.type == "cpu"
    for _ in range(8):
        full.step()
        resumed.step()
        assert torch.equal(full.x, resumed.x)
    assert resumed.k == full.k == 15 and resumed.oracle_calls == full.oracle_calls
    after, again = full.state_dict(), resumed.state_dict()
    assert all(torch.equal(after[f], again[f]) for f in STATE_FIELDS[name])


def test_hyperparameters_are_read_once_at_construction(synth):
    algo = _method("vr-marina", synth, 0, {"p": 0.25, "batch_size": 3})
    assert (algo.p, algo.b_prime, algo.online, algo.b) == (0.25, 3, False, None)
    online = _method("vr-marina", synth, 0, {"online": True, "batch_size": 2, "dense_batch_size": 7})
    assert (online.online, online.b_prime, online.b) == (True, 2, 7)
    assert _method("pp-marina", synth, 0, {"clients": 2}).r == 2
    vr = _method("vr-diana", synth, 0, {"alpha": 0.5, "batch_size": 4, "refresh_p": 0.1})
    assert (vr.alpha, vr.b, vr.refresh_p) == (0.5, 4, 0.1)
    with pytest.raises(marina.errors.ConfigError, match="call start"):
        vr.x  # noqa: B018 - no state before start
