"""EF21-SGDM (Fatkhullin, Tyurin, Richtarik 2023): against GD and EF21-SGD, the update by hand,
bits and oracle calls by hand, theory defaults by hand, 3 gloo processes against the simulation,
refused overrides, and the paper's claim that momentum removes EF21-SGD's noise floor."""

from __future__ import annotations

import math
import random

import pandas as pd
import pytest
import torch

import marina
from marina import compressors, methods, problems, theory
from marina.cli import main as cli_main
from marina.errors import ConfigError
from marina.network.simulated import SimulatedNetwork
from test_compressors_common import one_intra_op_thread  # noqa: F401 (autouse fixture)
from test_distributed import CLI_SYNTHETIC, _join, _launch, _logs

K = 12
WIRE = 32


@pytest.fixture(scope="module")
def prob():
    return problems.synthetic(workers=6, dim=24, samples=20, seed=2)


@pytest.fixture
def seed():
    s = random.SystemRandom().randrange(2**31)
    print(f"random seed {s}")
    return s


def _run(prob, method, compressor, seed, **params):
    options = {"iterations": K, "seed": seed, "log_every": 1, **params}
    return marina.run(method=method, problem=prob, compressor=compressor, **options)


def _method(prob, compressor, iterations=K, seed=0, **overrides):
    """An EF21-SGDM instance on the simulated network, started at the problem's x^0."""
    net = SimulatedNetwork(prob.n_workers, seed)
    cls = methods.get("ef21-sgdm")
    params = cls.resolve(methods.Setting.build(prob, net, compressor, iterations), overrides)
    algo = cls(prob, net, compressor, params)
    algo.start(prob.initial_point())
    return algo


# -- equivalences ------------------------------------------------------------------------------------
def test_identity_full_batches_and_eta_one_is_gd(prob, seed):
    """v_i = grad f_i(x) exactly when eta = 1 and b = m; the minibatch sums the m samples in a
    drawn order, so GD is matched to rounding (float64 wire: no float32 rounding of messages)."""
    identity = compressors.get("identity", value_dtype=torch.float64)
    m = int(prob.sizes.min())
    gamma = 1.0 / float(prob.L_f)
    gd = _run(prob, "gd", identity, seed, stepsize=gamma)
    got = _run(prob, "ef21-sgdm", identity, seed, stepsize=gamma, momentum=1.0, batch_size=m)
    assert torch.allclose(got.x, gd.x, rtol=1e-13, atol=1e-14)
    a, b = got.history["grad_norm_sq"], gd.history["grad_norm_sq"]
    assert ((a - b).abs() / b).max() < 1e-12
    assert got.history["iteration"].tolist() == gd.history["iteration"].tolist()


@pytest.mark.parametrize("spec", ["topk:3", "randk:3"])
def test_eta_one_is_ef21_sgd_bit_for_bit(prob, seed, spec):
    """Step 3 with eta = 1 is 0 v_i + 1 g_hat_i = g_hat_i exactly: the same operations as EF21-SGD."""
    sgdm = _run(prob, "ef21-sgdm", spec, seed, momentum=1.0, batch_size=4, stepsize=0.05)
    sgd = _run(prob, "ef21-sgd", spec, seed, batch_size=4, stepsize=0.05)
    assert torch.equal(sgdm.x, sgd.x)
    pd.testing.assert_frame_equal(
        sgdm.history.drop(columns="time_s"), sgd.history.drop(columns="time_s"), check_exact=True
    )


# -- the update by hand --------------------------------------------------------------------------------
def _topk(x: torch.Tensor, k: int) -> torch.Tensor:
    out = torch.zeros_like(x)
    idx = x.abs().topk(k, dim=1).indices
    return out.scatter_(1, idx, x.gather(1, idx))


def test_two_rounds_by_hand():
    """v_i^0 = g_i^0 = grad f_i(x^0); x^1 = x^0 - gamma g^0; v_i^1 = (1 - eta) v_i^0 + eta grad f_i(x^1)
    (b = m: the whole local set); g_i^1 = g_i^0 + TopK(v_i^1 - g_i^0); the same again for round 2."""
    small = problems.synthetic(workers=2, dim=5, samples=4, seed=7)
    eta, gamma = 0.3, 0.2
    topk = compressors.get("topk:2", value_dtype=torch.float64)
    algo = _method(small, topk, momentum=eta, stepsize=gamma, batch_size=4)
    x = small.initial_point()
    v = g_i = small.local_grads(x)
    for _ in range(2):
        x = x - gamma * g_i.mean(0)
        v = (1 - eta) * v + eta * small.local_grads(x)
        g_i = g_i + _topk(v - g_i, 2)
        algo.step()
        assert torch.allclose(algo.x, x, rtol=1e-13, atol=1e-15)
        assert torch.allclose(algo.state.momenta, v, rtol=1e-13, atol=1e-15)
        assert torch.allclose(algo.state.estimates, g_i, rtol=1e-13, atol=1e-15)
        assert torch.allclose(algo.state.g, g_i.mean(0), rtol=1e-13, atol=1e-15)
    assert not torch.allclose(v, g_i)  # TopK(2 of 5) left an error for the next round


def test_state_dict_resumes_bit_for_bit(prob):
    algo = _method(prob, compressors.get("topk:3"), momentum=0.2, batch_size=3, stepsize=0.05)
    for _ in range(4):
        algo.step()
    # copied, as a checkpoint file holds it (state_dict returns the live tensors, updated in place)
    saved = {k: v.clone() if torch.is_tensor(v) else v for k, v in algo.state_dict().items()}
    assert set(saved) == {"k", "oracle_calls", "x", "g", "estimates", "momenta"}
    for _ in range(4):
        algo.step()
    again = _method(prob, compressors.get("topk:3"), momentum=0.2, batch_size=3, stepsize=0.05)
    again.load_state_dict(saved)
    for _ in range(4):
        again.step()
    assert torch.equal(again.x, algo.x) and torch.equal(again.state.momenta, algo.state.momenta)


# -- bits and oracle calls by hand -------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["topk:3", "randk:3"])
def test_bits_and_oracle_calls_by_hand(prob, seed, spec):
    """Round 0: g_i^0 dense (d values) and m oracle calls; each round: one message of 3 values and
    3 indices of ceil(log2 d) bits up, x^{k+1} down (d values), b oracle calls."""
    b = 4
    h = _run(prob, "ef21-sgdm", spec, seed, batch_size=b, momentum=0.5).history
    d, m, k = prob.dim, float(prob.sizes.double().mean()), h["iteration"]
    message = 3 * (WIRE + math.ceil(math.log2(d)))
    assert h["bits_up"].tolist() == (d * WIRE + k * message).tolist()
    assert h["bits_down"].tolist() == (k * d * WIRE).tolist()
    assert h["oracle_calls"].tolist() == pytest.approx((m + k * b).tolist(), rel=1e-12)


# -- theory defaults by hand ------------------------------------------------------------------------------
def test_theory_formulas_by_hand():
    # r = (m - B)/(B (m - 1)): the variance of a without-replacement mean over one sample's
    assert theory.minibatch_noise_ratio(100, 4) == pytest.approx(96 / (4 * 99))
    assert theory.minibatch_noise_ratio(100, 100) == 0.0
    assert theory.minibatch_noise_ratio(1, 1) == 0.0
    r = 96 / (4 * 99)
    # eta = min(1, (alpha^2/(r T))^(1/3), (n/(r T))^(1/2))
    want = min(1.0, (0.25**2 / (r * 1000)) ** (1 / 3), math.sqrt(5 / (r * 1000)))
    assert theory.ef21_sgdm_momentum(0.25, 5, 1000, r) == pytest.approx(want, rel=1e-12)
    # n / (r T) decides when the workers are few: sqrt(1/(r 1000)) < (1/(r 1000))^(1/3)
    r_big = 1.0
    assert theory.ef21_sgdm_momentum(1.0, 1, 1000, r_big) == pytest.approx(math.sqrt(1e-3), rel=1e-12)
    assert theory.ef21_sgdm_momentum(0.25, 5, 1000, 0.0) == 1.0  # no noise: EF21
    assert theory.ef21_sgdm_momentum(1.0, 4, 1, 1e-6) == 1.0  # capped at 1
    # gamma = min(alpha/(20 L), eta/(7 L_f))
    assert theory.ef21_sgdm_stepsize(2.0, 3.0, 0.5, 0.1) == pytest.approx(min(0.5 / 60, 0.1 / 14))
    assert theory.ef21_sgdm_stepsize(2.0, 3.0, 0.5, 1.0) == pytest.approx(0.5 / 60)
    with pytest.raises(ConfigError, match="momentum == 0.0, must be in"):
        theory.ef21_sgdm_stepsize(2.0, 3.0, 0.5, 0.0)
    with pytest.raises(ConfigError, match=r"batch_size == 5, must be in \[1, 4\]"):
        theory.minibatch_noise_ratio(4, 5)


def test_defaults_of_a_run_are_the_formulas(prob, seed):
    used = _run(prob, "ef21-sgdm", "topk:3", seed).params
    n, d, m = prob.n_workers, prob.dim, int(prob.sizes.max())
    alpha = 3 / d  # TopK
    b = max(1, min(int(prob.sizes.min()), m // 100))
    assert used["batch_size"] == b == 1
    r = (m - b) / (b * (m - 1))
    eta = min(1.0, (alpha**2 / (r * K)) ** (1 / 3), math.sqrt(n / (r * K)))
    assert used["momentum"] == pytest.approx(eta, rel=1e-12)
    gamma = min(alpha / (20 * float(prob.L)), eta / (7 * float(prob.L_f)))
    assert used["stepsize"] == pytest.approx(gamma, rel=1e-12)
    assert used["contraction"] == pytest.approx(alpha)
    # an unbiased RandK is used as Q/(1 + omega): alpha = 1/(1 + omega) = K/d for RandK
    assert _run(prob, "ef21-sgdm", "randk:3", seed).params["contraction"] == pytest.approx(alpha)
    # full local batches have no noise: eta = 1, EF21's regime; an explicit eta is kept
    full = _run(prob, "ef21-sgdm", "topk:3", seed, batch_size=int(prob.sizes.min())).params
    assert full["momentum"] == 1.0
    assert full["stepsize"] == pytest.approx(min(alpha / (20 * float(prob.L)), 1 / (7 * float(prob.L_f))))
    given = _run(prob, "ef21-sgdm", "topk:3", seed, momentum=0.25, stepsize_multiplier=2.0).params
    assert given["momentum"] == 0.25
    assert given["stepsize"] == pytest.approx(
        2 * min(alpha / (20 * float(prob.L)), 0.25 / (7 * float(prob.L_f)))
    )


def test_no_guarantee_or_prediction_without_the_noise_level(prob):
    with pytest.raises(ConfigError, match="unknown noise level sigma"):
        theory.guarantee("ef21-sgdm", 1.0, 0.1, 10)
    setting = methods.Setting.build(prob, SimulatedNetwork(prob.n_workers, 0), compressors.get("topk:3"), 10)
    with pytest.raises(ConfigError, match="unknown noise level sigma"):
        theory.predict_successor("ef21-sgdm", setting, eps=1e-2, delta0=1.0, message_bits=100.0)


# -- refused overrides --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"momentum": 0.0}, "momentum == 0.0, must be in (0, 1]"),
        ({"momentum": 1.5}, "momentum == 1.5, must be in (0, 1]"),
        ({"momentum": "0.5"}, "momentum == '0.5', must be a number in (0, 1]"),
        ({"batch_size": 0}, "batch_size == 0, must be in [1, 20]"),
        ({"batch_size": 21}, "batch_size == 21, must be in [1, 20]"),
        ({"batch_size": 2.5}, "batch_size == 2.5, must be an integer >= 1"),
        ({"p": 0.5}, "ef21-sgdm: unknown parameter(s) p; ef21-sgdm takes stepsize"),
        ({"mvr_momentum": 0.5}, "unknown parameter(s) mvr_momentum"),
    ],
)
def test_bad_overrides_are_refused_naming_the_value(prob, override, message):
    with pytest.raises(ConfigError) as err:
        _run(prob, "ef21-sgdm", "topk:3", 0, **override)
    assert message in str(err.value)


def test_cli_refuses_a_bad_momentum_with_status_2(capsys):
    argv = ["run", "--problem", "synthetic", "--workers", "3", "--method", "ef21-sgdm"]
    assert cli_main([*argv, "--compressor", "topk:2", "--momentum", "1.5", "--iterations", "2"]) == 2
    assert "momentum == 1.5, must be in (0, 1]" in capsys.readouterr().err


# -- simulation == torch.distributed (3 gloo processes) -----------------------------------------------
def test_three_gloo_processes_follow_the_simulation(tmp_path, seed):
    options = ["--method", "ef21-sgdm", "--compressor", "topk:3", "--momentum", "0.3", "--batch-size", "2"]
    options += ["--iterations", "20", "--log-every", "1", "--seed", str(seed), "--quiet"]
    dist_out, sim_out = tmp_path / "dist", tmp_path / "sim"
    codes = _join(_launch("cli", {"argv": [*CLI_SYNTHETIC, *options, "--out", str(dist_out)]}, tmp_path), 240)
    assert all(code == 0 for code in codes.values()), f"exit codes {codes}\n{_logs(tmp_path)}"
    assert cli_main(["run", *CLI_SYNTHETIC[3:], *options, "--out", str(sim_out)]) == 0
    dist_df = pd.read_parquet(dist_out / "results.parquet")
    sim_df = pd.read_parquet(sim_out / "results.parquet")
    assert dist_df["run_id"].tolist() == sim_df["run_id"].tolist()
    assert dist_df["iteration"].tolist() == list(range(21))
    rel = ((dist_df["grad_norm_sq"] - sim_df["grad_norm_sq"]).abs() / sim_df["grad_norm_sq"]).max()
    assert rel <= 1e-10, f"seed {seed}: relative difference {rel}"
    for column in ("bits_up", "bits_down", "oracle_calls"):
        assert dist_df[column].tolist() == sim_df[column].tolist(), column


# -- the paper's claim --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_momentum_lowers_the_noise_floor_of_ef21_sgd(seed):
    """The momentum paper's point, at batch 1 and one stepsize: EF21-SGD (eta = 1, bit for bit
    above) stalls at a noise floor; in EF21-SGDM the compression error ||g_i - v_i||^2 scales like
    eta^2 sigma^2/alpha^2 (the error-feedback estimator tracks the momentum, which moves by eta
    per round), and the gradient norm it settles at is several times smaller (about 1/4 at
    eta = 0.1 on these problems). Averages over the second half of 1200 rounds."""
    small = problems.synthetic(workers=4, dim=12, samples=40, seed=seed % 1000)
    gamma = 0.05 / float(small.L_f)
    floors, errors = {}, {}
    for eta in (1.0, 0.1):
        algo = _method(
            small, compressors.get("topk:2"), seed=seed, momentum=eta, batch_size=1, stepsize=gamma
        )
        grads, errs = [], []
        for k in range(1200):
            algo.step()
            if k >= 600 and k % 4 == 0:
                grads.append(small.grad_norm_sq(algo.x))
                errs.append(float(((algo.state.estimates - algo.state.momenta) ** 2).sum(1).mean()))
        floors[eta], errors[eta] = sum(grads) / len(grads), sum(errs) / len(errs)
    print(f"seed {seed}: floors {floors}, compression errors {errors}")
    assert floors[0.1] < 0.5 * floors[1.0]
    assert errors[0.1] < 0.05 * errors[1.0]  # eta^2 = 0.01
