"""marina.torch EF21, EF21PP, EF21SGD, EF21SGDM, DASHA, DASHAPAGE, DASHAMVR: against SGD, against marina.run
(one process and gloo ranks), state_dict resume, counters by hand, theory defaults, refusals."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import marina
import marina.torch as mt
import test_torch_optim as torch_optim_tests
from marina import compressors
from marina.errors import ConfigError
from marina.methods.base import SHARED_BLOCK
from marina.problems.torch_model import TorchModelProblem
from marina.rng import SHARED, Randomness
from test_torch_optim import _closure, _data, _flat, _mlp

F64_IDENTITY = compressors.get("identity", value_dtype=torch.float64)
M, B, B0 = 24, 5, 12
"""Samples per worker, the minibatch and DASHA-MVR's initial batch of the parity runs."""

CASES = {
    "ef21": (mt.EF21, "topk:7", {}, {}),
    "ef21-pp": (mt.EF21PP, "topk:7", {"participation": 0.5}, {}),
    "ef21-sgd": (mt.EF21SGD, "topk:7", {"batch_size": B}, {}),
    "ef21-sgdm": (mt.EF21SGDM, "topk:7", {"batch_size": B, "momentum": 0.3}, {}),
    "dasha": (mt.DASHA, "randk:7", {}, {}),
    "dasha-page": (mt.DASHAPAGE, "randk:7", {"batch_size": B, "p": 0.4}, {}),
    "dasha-mvr": (mt.DASHAMVR, "randk:7", {"batch_size": B, "dense_batch_size": B0}, {}),
}
"""name: (optimizer, compressor, method parameters given to both, optimizer-only keywords)."""


def feed(opt, name: str, seed: int, worker: int, m: int, batch: int = B, dense: int = B0):
    """The sample indices the loop feeds to the next step: the methods' keyed draws of
    marina.run (stream "minibatch"), so that the closure sees the batch of the simulation."""
    if name == "dasha-mvr":  # i.i.d. draws: B_0 on step 0 (keyed as round -1), then B
        rnd, size = (-1, dense) if not opt.started else (opt.method.k, batch)
        return Randomness(seed, "minibatch", rnd, [worker]).integers(m, size)[0]
    if opt.coin is False:
        return Randomness(seed, "minibatch", opt.method.k, [worker]).sample_without_replacement(m, batch)[0]
    return slice(None)


def _simulation(name: str, x, y, workers: int, steps: int, seed: int, lr: float, comp: str | None = None):
    _, default, kwargs, _ = CASES[name]
    comp = comp or default
    prob = TorchModelProblem(_mlp(), (x, y), workers=workers, init_seed=None, worker_batching="loop")
    return marina.run(
        method=name,
        problem=prob,
        compressor=comp,
        iterations=steps,
        seed=seed,
        stepsize=lr,
        log_every=1,
        **kwargs,
    )


# -- against SGD ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ef21", "ef21-sgdm", "dasha"])
def test_with_the_identity_the_optimizer_is_sgd(name):
    """EF21: g_i^{k+1} = g_i^k + (grad - g_i^k) = grad; DASHA with a = 1 and EF21-SGDM with
    eta = 1 (v_i = grad) fed the full loss: the same."""
    x, y = _data()
    m1, m2 = _mlp(), _mlp()
    extra = {"dasha": {"momentum": 1.0}, "ef21-sgdm": {"momentum": 1.0, "batch_size": len(x)}}.get(name, {})
    o1 = CASES[name][0](m1.parameters(), compressor=F64_IDENTITY, lr=0.3, **extra)
    o2 = torch.optim.SGD(m2.parameters(), lr=0.3)
    s1 = torch.optim.lr_scheduler.StepLR(o1, step_size=3, gamma=0.5)
    s2 = torch.optim.lr_scheduler.StepLR(o2, step_size=3, gamma=0.5)
    start = _flat(m1)
    for _ in range(10):
        assert o1.coin is (True if name != "ef21-sgdm" else o1.rounds == 0)  # EF21-SGDM: minibatches
        l1 = o1.step(_closure(m1, o1, x, y))
        l2 = o2.step(_closure(m2, o2, x, y))
        assert l1.item() == pytest.approx(l2.item(), rel=1e-12)
        s1.step()
        s2.step()
        torch.testing.assert_close(_flat(m1), _flat(m2), rtol=0, atol=1e-13)
    assert float((_flat(m1) - start).norm()) > 0.1


# -- parity with marina.run ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "comp"),
    [(name, case[1]) for name, case in CASES.items()] + [("ef21", "randk:7"), ("ef21-pp", "randk:7")],
)
def test_one_worker_matches_marina_run(name, comp):
    """The EF21 family with an unbiased compressor too (used as Q/(1 + omega))."""
    x, y = _data(M)
    steps, seed, lr = 12, 7, 0.2
    ref = _simulation(name, x, y, 1, steps, seed, lr, comp)
    cls, _, kwargs, extra = CASES[name]
    model = _mlp()
    opt = cls(model.parameters(), compressor=comp, lr=lr, seed=seed, local_size=M, **kwargs, **extra)
    for _ in range(steps):
        idx = feed(opt, name, seed, 0, M)
        opt.step(_closure(model, opt, x[idx], y[idx]))
    torch.testing.assert_close(_flat(model), ref.x, rtol=0, atol=1e-12)
    row = ref.history.iloc[-2]  # step t moves to x^{t+1} with g^t: g^K is not computed yet
    assert (opt.bits_up, opt.bits_down) == (row["bits_up"], row["bits_down"])
    assert opt.oracle_calls == pytest.approx(row["oracle_calls"], rel=1e-12)
    assert opt.rounds == steps


@pytest.mark.parametrize("world", [2])
def test_gloo_ranks_match_marina_run(world, tmp_path):
    import json

    _run_successor_ranks(world, tmp_path)
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
    for name in CASES:
        for r, rep in enumerate(reports):
            case = rep[name]
            assert case["max_diff"] < 1e-12, (name, r, case)
            assert case["bits_up"][0] == case["bits_up"][1], (name, r, case)
            assert case["bits_down"][0] == case["bits_down"][1], (name, r, case)
            assert case["oracle_calls"][0] == pytest.approx(case["oracle_calls"][1], rel=1e-12)
            assert case["wire_bytes"] > 0 and case["wire_bytes"] == reports[0][name]["wire_bytes"]
    # EF21-PP: a rank not drawn skipped its closure on some rounds, and drawn ranks computed
    assert sum(rep["ef21-pp"]["skipped"] for rep in reports) > 0
    assert all(rep["ef21-pp"]["computed"] > 1 for rep in reports)


def _run_successor_ranks(world: int, out, *names: str) -> None:
    """tests/torch_successor_ranks.py on ``world`` gloo ranks (``names``: only these CASES)."""
    import os
    import sys

    from marina.testing import run_ranks

    script = os.path.join(os.path.dirname(__file__), "torch_successor_ranks.py")
    run_ranks([sys.executable, script, str(out), *names], world)


def test_ef21_sgdm_on_three_gloo_ranks_matches_marina_run(tmp_path):
    import json

    _run_successor_ranks(3, tmp_path, "ef21-sgdm")
    for r in range(3):
        case = json.loads((tmp_path / f"rank{r}.json").read_text())["ef21-sgdm"]
        assert case["max_diff"] < 1e-12, (r, case)
        assert case["bits_up"][0] == case["bits_up"][1] and case["bits_down"][0] == case["bits_down"][1]
        assert case["oracle_calls"][0] == pytest.approx(case["oracle_calls"][1], rel=1e-12)
        assert case["wire_bytes"] > 0


def test_ef21_sgdm_a_non_finite_gradient_leaves_the_momentum_as_before():
    """The compressor refuses a NaN after v_i is formed: the step undone bit for bit, v_i included
    (written into the buffer of the v_i it replaced, never into the one the state holds)."""
    from marina.errors import ValueRangeError
    from test_torch_optim_guards import _equal

    x, y = _data(24)
    model, twin = _mlp(), _mlp()
    make = CASES["ef21-sgdm"][0]
    opt, twin_opt = (make(m.parameters(), "topk:7", 0.1, momentum=0.3, batch_size=8) for m in (model, twin))
    for t in range(3):
        for m, o in ((model, opt), (twin, twin_opt)):
            o.step(_closure(m, o, x[t : t + 8], y[t : t + 8]))
    params, state = _flat(model).clone(), opt.state_dict()
    inner = _closure(model, opt, x[:8], y[:8])

    def poisoned():
        loss = inner()
        next(model.parameters()).grad.view(-1)[0] = float("nan")
        return loss

    for _ in range(2):  # twice: the momentum buffer replaced two steps before is reused once free
        with pytest.raises(ValueRangeError):
            opt.step(poisoned)
        assert torch.equal(_flat(model), params) and _equal(opt.state_dict(), state)
    for t in range(3, 6):
        for m, o in ((model, opt), (twin, twin_opt)):
            o.step(_closure(m, o, x[t : t + 8], y[t : t + 8]))
        assert torch.equal(_flat(model), _flat(twin))


@pytest.mark.parametrize(("name", "field"), [("ef21-sgdm", "momenta"), ("dasha-mvr", "local_estimates")])
def test_state_replaced_every_step_alternates_between_two_buffers(name, field):
    """EF21-SGDM's v_i and DASHA-MVR's h_i are written into the buffer of the value they replaced
    a step before (no allocation of d entries per step), while a simulation of the same method
    keeps every replaced state as it was."""
    x, y = _data(24)
    model = _mlp()
    make, spec, kw, _ = CASES[name]
    opt = make(model.parameters(), spec, 0.1, **kw)
    buffers = []
    for t in range(6):
        opt.step(_closure(model, opt, x[t : t + 8], y[t : t + 8]))
        buffers.append(getattr(opt.method.state, field).data_ptr())
    assert len(set(buffers[2:])) == 2 and buffers[2] == buffers[4] != buffers[3] == buffers[5]
    prob = marina.problems.synthetic(workers=2, dim=20, samples=30, seed=1)
    run_kw = {"batch_size": 4} | ({"momentum": 0.3} if name == "ef21-sgdm" else {"dense_batch_size": 8})
    method = marina.methods.plan(opt.method_name, prob, "randk:3", iterations=4, overrides=run_kw).build()
    method.start(torch.zeros(prob.dim, dtype=prob.dtype))
    kept = []
    for _ in range(4):
        method.step()
        kept.append((getattr(method.state, field), getattr(method.state, field).clone()))
    assert all(torch.equal(t, copy) for t, copy in kept)


# -- checkpoints ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CASES))
def test_resume_from_state_dict_equals_an_uninterrupted_run(name, tmp_path, monkeypatch):
    """The checkpoint test of the MARINA family (dropout in the closure, a scheduler, a fresh
    model and optimizer loading the state dicts), run on each successor."""
    cls, comp, kwargs, extra = CASES[name]

    def make(ps):
        return cls(ps, compressor=comp, lr=0.1, seed=2, local_size=M, **kwargs, **extra)

    monkeypatch.setitem(torch_optim_tests.RESUMABLE, name, make)
    torch_optim_tests.test_resume_from_state_dict_equals_an_uninterrupted_run(name, tmp_path)


# -- counters by hand ----------------------------------------------------------------------------
def _shared(seed: int, stream: str, rounds: int):
    """Rounds 0..rounds-1 of a shared stream's draws, recomputed from the key (block 0)."""
    return Randomness(seed, stream, 0, [SHARED], "cpu").uniform(SHARED_BLOCK).reshape(-1)[:rounds]


def _small():
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    return model, sum(p.numel() for p in model.parameters())  # d = 83


def test_ef21_topk_and_ef21_sgd_counters_equal_hand_counts():
    x, y = _data()
    model, d = _small()
    K = round(0.1 * d)
    dense, sparse = d * 32, K * (32 + math.ceil(math.log2(d)))  # TopK sends values and indices
    ef = mt.EF21(model.parameters(), compressor="topk:10%", lr=0.05, local_size=M)
    sgd_model, _ = _small()
    sgd = mt.EF21SGD(sgd_model.parameters(), compressor="topk:10%", lr=0.05, batch_size=4, local_size=M)
    sgdm_model, _ = _small()
    sgdm = mt.EF21SGDM(
        sgdm_model.parameters(), compressor="topk:10%", lr=0.05, momentum=0.2, batch_size=4, local_size=M
    )
    for t in range(8):
        assert sgd.coin is (t == 0) and sgdm.coin is (t == 0)
        ef.step(_closure(model, ef, x.float(), y))
        sgd.step(_closure(sgd_model, sgd, x[:4].float(), y[:4]))
        sgdm.step(_closure(sgdm_model, sgdm, x[:4].float(), y[:4]))
        for opt in (ef, sgd, sgdm):
            assert opt.bits_up == dense + t * sparse
            assert opt.bits_down == t * d * 32  # x^{k+1} broadcast in every round after the start
            assert opt.rounds == t + 1
        assert ef.oracle_calls == (t + 1) * M  # a full local gradient every round
        assert sgd.oracle_calls == sgdm.oracle_calls == M + t * 4
    assert ef.compressor.spec.startswith("topk") and ef.wire_bytes == 0


def test_ef21_pp_counts_and_calls_the_closure_only_when_drawn():
    x, y = _data()
    model, d = _small()
    q, seed, steps = 0.4, 3, 30
    opt = mt.EF21PP(
        model.parameters(), compressor="topk:5", lr=0.05, participation=q, seed=seed, local_size=M
    )
    drawn = (_shared(seed, "participation", steps) < q).tolist()  # round k: index k
    sparse = 5 * (32 + math.ceil(math.log2(d)))
    bits, calls = d * 32, M
    for t in range(steps):
        takes_part = t == 0 or drawn[t - 1]
        assert opt.participates is takes_part
        before = opt.problem.evaluations
        opt.step(_closure(model, opt, x.float(), y))
        assert opt.problem.evaluations - before == int(takes_part)
        if t > 0:
            bits += sparse * drawn[t - 1]
            calls += M * drawn[t - 1]
        assert (opt.bits_up, opt.oracle_calls) == (bits, calls)
    assert 3 < sum(drawn[: steps - 1]) < steps - 4


def test_dasha_page_and_mvr_counters_equal_hand_counts():
    x, y = _data()
    seed, steps, p = 4, 20, 0.3
    sparse = lambda d: 7 * (32 + math.ceil(math.log2(d)))  # RandK: values and indices
    m1, d = _small()
    page = mt.DASHAPAGE(m1.parameters(), "randk:7", 0.05, p=p, seed=seed, batch_size=4, local_size=M)
    m2, _ = _small()
    mvr = mt.DASHAMVR(
        m2.parameters(), "randk:7", 0.05, seed=seed, batch_size=4, dense_batch_size=10, local_size=M
    )
    coins = (_shared(seed, "coin", steps) < p).tolist()
    calls = M
    for t in range(steps):
        assert page.coin is (t == 0 or coins[t - 1])
        assert mvr.coin is (t == 0)
        before = page.problem.evaluations, mvr.problem.evaluations
        page.step(_closure(m1, page, x.float(), y))
        mvr.step(_closure(m2, mvr, x[:4].float(), y[:4]))
        if t > 0:
            calls += M if coins[t - 1] else 2 * 4
        # the closure runs twice on minibatch steps (at x^{k+1} and x^k), once otherwise
        assert page.problem.evaluations - before[0] == (1 if t == 0 or coins[t - 1] else 2)
        assert mvr.problem.evaluations - before[1] == (1 if t == 0 else 2)
        assert page.oracle_calls == calls
        assert mvr.oracle_calls == 10 + t * 2 * 4
        for opt in (page, mvr):  # every round after the start sends one compressed message
            assert opt.bits_up == d * 32 + t * sparse(d)
    assert 0 < sum(coins[: steps - 1]) < steps - 1


# -- theory defaults and refusals ----------------------------------------------------------------------------
def test_theory_defaults_of_the_method_parameters():
    ps = list(_mlp().parameters())
    d = sum(p.numel() for p in ps)  # 83
    omega = d / 10 - 1  # RandK with K = 10
    assert mt.DASHA(ps, compressor="randk:10").method_params["momentum"] == pytest.approx(1 / (2 * omega + 1))
    page = mt.DASHAPAGE(ps, compressor="randk:10", batch_size=4, local_size=36).method_params
    assert page["p"] == pytest.approx(4 / (36 + 4)) and page["momentum"] == pytest.approx(1 / (2 * omega + 1))
    mvr = mt.DASHAMVR(ps, compressor="randk:10", batch_size=4, local_size=30).method_params
    assert mvr["dense_batch_size"] == 30  # min(m, 10 B)
    assert mvr["mvr_momentum"] == pytest.approx(min(math.sqrt(4 / 30) / omega, 4 / 30))
    assert mt.DASHAMVR(ps, batch_size=4).method_params["dense_batch_size"] == 40  # m defaults to 10 B
    assert mt.EF21PP(ps).method_params["participation"] == 0.5
    sgdm = mt.EF21SGDM(ps, momentum=0.25, batch_size=4).method_params
    assert (sgdm["momentum"], sgdm["batch_size"]) == (0.25, 4)  # eta as given, m defaults to b
    assert mt.EF21(ps, compressor="topk:1%").compressor.spec == compressors.get("topk:1").spec
    # the optimizer's lr is the stepsize: a model's smoothness is unknown
    assert mt.EF21(ps, lr=0.25).method.gamma == 0.25


def test_bad_input_is_refused_naming_the_value():
    ps = list(_mlp().parameters())
    with pytest.raises(ConfigError, match="biased"):
        mt.DASHA(ps, compressor="topk:3")
    with pytest.raises(ConfigError, match="local_size"):
        mt.DASHAPAGE(ps, batch_size=4)
    with pytest.raises(ConfigError, match=r"participation == 1\.5"):
        mt.EF21PP(ps, participation=1.5)
    with pytest.raises(ConfigError, match="momentum == 0"):
        mt.DASHA(ps, momentum=0.0)
    with pytest.raises(ConfigError, match="batch_size == 30"):
        mt.EF21SGD(ps, batch_size=30, local_size=20)
    with pytest.raises(ConfigError, match=r"lr == 0"):
        mt.EF21(ps, lr=0)


@pytest.mark.parametrize(
    ("momentum", "message"),
    [
        (None, r"EF21SGDM needs momentum=eta in \(0, 1\]"),
        (0.0, r"momentum == 0\.0, must be in \(0, 1\]"),
        (1.5, r"momentum == 1\.5, must be in \(0, 1\]"),
        ("0.5", r"momentum == '0\.5', must be a number in \(0, 1\]"),
        (float("nan"), r"momentum == nan"),
    ],
)
def test_ef21_sgdm_refuses_a_bad_momentum_naming_it(momentum, message):
    with pytest.raises(ConfigError, match=message):
        mt.EF21SGDM(_mlp().parameters(), momentum=momentum, batch_size=4)
