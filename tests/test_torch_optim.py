"""marina.torch optimizers: against torch.optim.SGD, against each other, against marina.run."""

from __future__ import annotations

import copy
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import marina
import marina.torch as mt
from marina import compressors
from marina.errors import ConfigError
from marina.problems.torch_model import TorchModelProblem
from marina.rng import Randomness
from marina.torch.closure import ClosureProblem

F64_IDENTITY = compressors.get("identity", value_dtype=torch.float64)


def _mlp(seed: int = 1, dropout: float = 0.0, bn: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Linear(6, 8)] + ([nn.BatchNorm1d(8)] if bn else []) + [nn.Tanh()]
    layers += [nn.Dropout(dropout)] if dropout else []
    return nn.Sequential(*layers, nn.Linear(8, 3)).double()


def _data(n: int = 24, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def _closure(model, opt, x, y):
    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return closure


def _flat(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


# -- against SGD and each other ------------------------------------------------------------------
def test_marina_identity_p1_equals_sgd_and_follows_an_lr_schedule():
    x, y = _data()
    m1, m2 = _mlp(), _mlp()
    o1 = mt.MARINA(m1.parameters(), compressor=F64_IDENTITY, lr=0.3, p=1.0)
    o2 = torch.optim.SGD(m2.parameters(), lr=0.3)
    s1 = torch.optim.lr_scheduler.StepLR(o1, step_size=3, gamma=0.5)
    s2 = torch.optim.lr_scheduler.StepLR(o2, step_size=3, gamma=0.5)
    start = _flat(m1)
    for _ in range(12):
        l1 = o1.step(_closure(m1, o1, x, y))
        l2 = o2.step(_closure(m2, o2, x, y))
        assert l1.item() == pytest.approx(l2.item(), rel=1e-13)
        s1.step()
        s2.step()
        torch.testing.assert_close(_flat(m1), _flat(m2), rtol=0, atol=1e-14)
    assert float((_flat(m1) - start).norm()) > 0.1  # it moved
    assert o1.param_groups[0]["lr"] == 0.3 * 0.5**4


def test_lr_schedule_changes_the_steps_of_marina_by_hand():
    """x^{t+1} = x^t - lr_t g^t with g^t the exact gradient (p = 1, identity): lr halves at t = 2."""
    x, y = _data()
    model, ref = _mlp(), _mlp()
    opt = mt.MARINA(model.parameters(), compressor=F64_IDENTITY, lr=0.2, p=1.0)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[2], gamma=0.5)
    for t in range(4):
        opt.step(_closure(model, opt, x, y))
        sched.step()
        ref.zero_grad()
        F.cross_entropy(ref(x), y).backward()
        lr = 0.2 if t < 2 else 0.1
        with torch.no_grad():
            for p in ref.parameters():
                p -= lr * p.grad
        torch.testing.assert_close(_flat(model), _flat(ref), rtol=0, atol=1e-14)


def test_param_groups_with_different_lrs_match_sgd():
    x, y = _data()
    m1, m2 = _mlp(), _mlp()
    groups = lambda m: [{"params": m[0].parameters()}, {"params": m[2].parameters(), "lr": 0.05}]
    o1 = mt.MARINA(groups(m1), compressor=F64_IDENTITY, lr=0.3, p=1.0)
    o2 = torch.optim.SGD(groups(m2), lr=0.3)
    for _ in range(5):
        o1.step(_closure(m1, o1, x, y))
        o2.step(_closure(m2, o2, x, y))
    torch.testing.assert_close(_flat(m1), _flat(m2), rtol=0, atol=1e-14)


def test_vr_marina_with_the_whole_local_data_set_equals_marina():
    x, y = _data(20)
    m1, m2 = _mlp(), _mlp()
    o1 = mt.MARINA(m1.parameters(), compressor="randk:5", lr=0.2, p=0.3, seed=4)
    o2 = mt.VRMARINA(
        m2.parameters(),
        compressor="randk:5",
        lr=0.2,
        p=0.3,
        seed=4,
        batch_size=20,
        local_size=20,
        online=False,
    )
    coins = []
    for _ in range(15):
        coins.append(o1.round_coin)
        assert o1.round_coin == o2.round_coin and o2.coin == o2.round_coin and o1.coin is True
        o1.step(_closure(m1, o1, x, y))
        o2.step(_closure(m2, o2, x, y))
        assert torch.equal(_flat(m1), _flat(m2))
    assert True in coins[1:] and False in coins  # both kinds of rounds happened
    assert o1.bits_up == o2.bits_up


# -- parity with marina.run -----------------------------------------------------------------------
def _drive(opt, model, problem_x, problem_y, batch: int | None, seed: int, worker: int, steps: int):
    """The loop a user writes: full local pass on dense rounds, the keyed minibatch otherwise."""
    m = len(problem_x)
    for _ in range(steps):
        if opt.coin is False and batch is not None:
            idx = Randomness(seed, "minibatch", opt.method.k, [worker]).sample_without_replacement(m, batch)[
                0
            ]
            xb, yb = problem_x[idx], problem_y[idx]
        else:
            xb, yb = problem_x, problem_y
        opt.step(_closure(model, opt, xb, yb))


@pytest.mark.parametrize("method", ["marina", "vr-marina", "diana"])
def test_one_worker_matches_marina_run(method):
    x, y = _data(24)
    steps, seed, lr = 12, 7, 0.2
    prob = TorchModelProblem(_mlp(), (x, y), workers=1, init_seed=None, worker_batching="loop", chunk_size=64)
    kwargs = {"p": 0.4} if method != "diana" else {}
    if method == "vr-marina":
        kwargs["batch_size"] = 5
    result = marina.run(
        method=method,
        problem=prob,
        compressor="randk:7",
        iterations=steps,
        seed=seed,
        stepsize=lr,
        log_every=1,
        **kwargs,
    )
    model = _mlp()
    cls = {"marina": mt.MARINA, "vr-marina": mt.VRMARINA, "diana": mt.DIANA}[method]
    extra = {"online": False, "local_size": 24} if method == "vr-marina" else {}
    opt = cls(model.parameters(), compressor="randk:7", lr=lr, seed=seed, **kwargs, **extra)
    _drive(opt, model, x, y, kwargs.get("batch_size"), seed, 0, steps)
    torch.testing.assert_close(_flat(model), result.x, rtol=0, atol=1e-12)
    # the MARINA family's step t moves to x^{t+1} with g^t: g^K of marina.run's last round is not
    # computed yet after K steps (DIANA / QGD: step t is round t)
    row = result.history.iloc[-2 if method != "diana" else -1]
    assert (opt.bits_up, opt.bits_down) == (row["bits_up"], row["bits_down"])


def test_pp_marina_with_one_worker_is_marina():
    """One worker, one client drawn per compressed round: PP-MARINA's rounds are MARINA's (same
    coins, same compressor stream), so the two optimizers agree bit for bit."""
    x, y = _data()
    models = [_mlp(), _mlp()]
    opts = [
        cls(m.parameters(), compressor="randk:5", lr=0.2, p=0.3, seed=4)
        for cls, m in zip((mt.MARINA, mt.PPMARINA), models)
    ]
    for _ in range(15):
        for m, o in zip(models, opts):
            o.step(_closure(m, o, x, y))
    assert torch.equal(_flat(models[0]), _flat(models[1]))
    assert (opts[0].bits_up, opts[0].rounds) == (opts[1].bits_up, opts[1].rounds)


@pytest.mark.parametrize("name", ["MARINA", "DASHA", "EF21", "DIANA", "VRMARINA", "DASHAMVR"])
def test_kept_products_of_the_move_equal_products_recomputed_every_step(seed, name):
    """The move x - lr g keeps lr g between steps and recomputes only the K entries where the
    network changed g (DIANA: lr h); with an lr schedule (a new lr: every product again) the
    parameters equal, bit for bit, those of a run that recomputes every product every step."""
    print("seed", seed)
    x, y = _data()
    spec = "topk:6" if name == "EF21" else "randk:6"
    runs = []
    for recompute in (False, True):
        model = _mlp()
        two_points = {"batch_size": 4} if name in ("VRMARINA", "DASHAMVR") else {}  # x^k kept apart
        opt = getattr(mt, name)(model.parameters(), compressor=spec, lr=0.2, seed=seed, **two_points)
        if recompute:
            opt.net.entries_changed = lambda t, since: None
            opt.net._scaled_shifts = lambda h, gamma: torch.mul(h, gamma)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.5)
        for _ in range(20):
            opt.step(_closure(model, opt, x, y))
            sched.step()
        runs.append(_flat(model))
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("name", ["VRMARINA", "DASHAMVR", "DASHAPAGE"])
def test_two_point_optimizers_show_their_buffers_instead_of_copying(seed, name):
    """The optimizers that evaluate at x^k too make the parameters views of the buffer that holds
    the point (x^k for the second evaluation, then the spare holding x^{k+2}): no copy of d
    entries, the parameters alternate between two buffers and always hold the optimizer's point,
    and the run equals one that copies every point into one buffer, bit for bit."""
    print("seed", seed)
    x, y = _data()
    kw = {"batch_size": 4} | ({"local_size": 24} if name == "DASHAPAGE" else {})
    runs, buffers = [], []
    for copying in (False, True):
        model = _mlp()
        opt = getattr(mt, name)(model.parameters(), compressor="randk:6", lr=0.2, seed=seed, **kw)
        if copying:
            opt.problem.show = opt.problem.write
        first = next(model.parameters())
        for _ in range(12):
            opt.step(_closure(model, opt, x, y))
            assert torch.equal(_flat(model), opt.method.next_x) and first is next(model.parameters())
            buffers.append(first.data_ptr()) if not copying else None
        runs.append(_flat(model))
    assert torch.equal(runs[0], runs[1])
    assert len(set(buffers[1:])) == 2


# -- checkpoints ---------------------------------------------------------------------------------
RESUMABLE = {
    "marina": lambda ps: mt.MARINA(ps, compressor="randk:4", lr=0.1, p=0.3, seed=2),
    "vr-marina": lambda ps: mt.VRMARINA(ps, compressor="randk:4", lr=0.1, p=0.3, seed=2, batch_size=4),
    "pp-marina": lambda ps: mt.PPMARINA(ps, compressor="randk:4", lr=0.1, p=0.3, seed=2),
    "diana": lambda ps: mt.DIANA(ps, compressor="randk:4", lr=0.1, seed=2),
    "qgd": lambda ps: mt.QGD(ps, compressor="qsgd:2", lr=0.1, seed=2),
}


def _train(model, opt, sched, steps: int, x, y, start: int = 0):
    for t in range(start, start + steps):
        sl = slice((3 * t) % 16, (3 * t) % 16 + 8)  # a changing batch, as from a DataLoader
        opt.step(_closure(model, opt, x[sl], y[sl]))
        sched.step()


@pytest.mark.parametrize("name", list(RESUMABLE))
def test_resume_from_state_dict_equals_an_uninterrupted_run(name, tmp_path):
    x, y = _data(24)
    model = _mlp(dropout=0.2)  # the closure draws random numbers: the RNG state is checkpointed too
    opt = RESUMABLE[name](model.parameters())
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9)
    torch.manual_seed(11)
    _train(model, opt, sched, 5, x, y)
    torch.save(
        {
            "model": model.state_dict(),
            "opt": opt.state_dict(),
            "sched": sched.state_dict(),
            "rng": torch.get_rng_state(),
        },
        tmp_path / "ckpt.pt",
    )
    _train(model, opt, sched, 7, x, y, start=5)

    ckpt = torch.load(tmp_path / "ckpt.pt")
    model2 = _mlp(seed=99, dropout=0.2)
    model2.load_state_dict(ckpt["model"])
    opt2 = RESUMABLE[name](model2.parameters())
    sched2 = torch.optim.lr_scheduler.ExponentialLR(opt2, gamma=0.9)
    opt2.load_state_dict(ckpt["opt"])
    sched2.load_state_dict(ckpt["sched"])
    torch.set_rng_state(ckpt["rng"])
    assert opt2.rounds == 5 and opt2.bits_up == pytest.approx(opt2.bits_up)
    _train(model2, opt2, sched2, 7, x, y, start=5)
    assert torch.equal(_flat(model), _flat(model2))
    assert (opt2.bits_up, opt2.bits_down, opt2.rounds) == (
        opt.bits_up,
        opt.bits_down,
        opt.rounds,
    ) and opt.rounds == 12
    sd = opt.state_dict()
    assert set(sd) == {"state", "param_groups"} and set(sd["state"]) == set(range(4))


# -- counters ----------------------------------------------------------------------------------------
def test_counters_equal_hand_counts():
    x, y = _data()
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    d = sum(p.numel() for p in model.parameters())  # 83
    opt = mt.MARINA(model.parameters(), compressor="randk:10%", lr=0.1, p=0.25, seed=5)
    K = round(0.1 * d)
    dense_bits, sparse_bits = d * 32, K * (32 + math.ceil(math.log2(d)))
    expected = 0
    for t in range(20):
        expected += dense_bits if opt.round_coin else sparse_bits
        opt.step(_closure(model, opt, x.float(), y))
        assert opt.bits_up == expected
        assert opt.rounds == t + 1
        assert opt.bits_down == t * d * 32  # g^k broadcast in every round after line 2
    assert opt.wire_bytes == 0


# -- randomness and buffers of the two evaluations -------------------------------------------------------
def test_equal_dropout_masks_give_a_zero_difference_at_equal_points():
    x, y = _data()
    model = _mlp(dropout=0.5)
    params = list(model.parameters())
    prob = ClosureProblem(
        params, local_size=24, total_workers=1, worker_ids=torch.zeros(1, dtype=torch.int64), module=model
    )

    def closure():
        model.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    point = prob.flat_params()
    torch.manual_seed(3)
    prob.begin_step(closure)
    diff = prob.minibatch_grad_diffs(point, point.clone(), None)
    prob.end_step()
    assert torch.equal(diff, torch.zeros_like(diff))
    after = torch.get_rng_state()
    torch.manual_seed(3)
    prob.begin_step(closure)
    a = prob.evaluate(point)
    prob.end_step()
    assert torch.equal(torch.get_rng_state(), after)  # the RNG advanced as for ONE evaluation
    prob.begin_step(closure)
    b = prob.evaluate(point)  # a fresh step: new masks, a different gradient
    prob.end_step()
    assert not torch.equal(a, b)


def test_lazy_minibatch_difference_equals_the_dense_one(seed):
    """VR-MARINA's difference left lazy: its gathered entries and its materialised rows equal the
    dense difference of the two evaluations bit for bit (same batch, dropout masks forked)."""
    print("seed", seed)
    x, y = _data()
    model = _mlp(dropout=0.3)
    prob = ClosureProblem(
        list(model.parameters()),
        local_size=24,
        total_workers=1,
        worker_ids=torch.zeros(1, dtype=torch.int64),
        module=model,
    )
    closure = _closure(model, torch.optim.SGD(model.parameters(), lr=0.0), x, y)
    new = prob.flat_params().clone()
    old = new + 0.01 * torch.randn(new.shape, generator=torch.Generator().manual_seed(seed), dtype=new.dtype)
    idx = torch.sort(torch.randperm(prob.dim, generator=torch.Generator().manual_seed(seed))[:11]).values
    results = []
    for lazy in (True, False):
        torch.manual_seed(seed)
        prob.begin_step(closure)
        get = prob.lazy_minibatch_grad_diffs if lazy else prob.minibatch_grad_diffs
        results.append(get(new, old, None))
        prob.end_step()
    lazy_rows, dense = results
    assert torch.equal(lazy_rows.gather(1, idx.reshape(1, -1)), dense.gather(1, idx.reshape(1, -1)))
    assert torch.equal(lazy_rows.dense(), dense) and not torch.equal(dense, torch.zeros_like(dense))


def test_batch_norm_buffers_are_updated_once_per_step():
    x, y = _data(24)
    model = _mlp(bn=True)
    opt = mt.VRMARINA(
        model.parameters(), compressor="randk:5", lr=0.1, p=0.2, seed=1, batch_size=8, module=model
    )
    bn = model[1]
    compressed = 0
    for t in range(8):
        sl = slice(8 * (t % 3), 8 * (t % 3) + 8)
        ref = copy.deepcopy(model)
        with torch.no_grad():
            ref(x[sl])  # one forward at the current parameters, train mode
        compressed += opt.coin is False
        opt.step(_closure(model, opt, x[sl], y[sl]))
        assert int(bn.num_batches_tracked) == t + 1
        assert torch.equal(bn.running_mean, ref[1].running_mean)
        assert torch.equal(bn.running_var, ref[1].running_var)
    assert compressed >= 3  # steps with two evaluations happened


# -- refusals -----------------------------------------------------------------------------------------
def test_bad_input_is_refused_naming_the_value():
    ps = list(_mlp().parameters())
    with pytest.raises(ConfigError, match=r"lr == -0\.1"):
        mt.MARINA(ps, lr=-0.1)
    with pytest.raises(ConfigError, match="qsgd:1%"):
        mt.MARINA(ps, compressor="qsgd:1%")
    with pytest.raises(ConfigError, match="local_size"):
        mt.VRMARINA(ps, batch_size=4, online=False)
    with pytest.raises(ConfigError, match="p == 1.5"):
        mt.MARINA(ps, p=1.5)
    with pytest.raises(ConfigError, match="biased"):
        mt.MARINA(ps, compressor="topk:3")
    mixed = [torch.zeros(3, requires_grad=True), torch.zeros(3, dtype=torch.float64, requires_grad=True)]
    with pytest.raises(ConfigError, match="one dtype"):
        mt.QGD(mixed)


def test_theory_defaults_of_p():
    ps = list(_mlp().parameters())
    d = sum(p.numel() for p in ps)  # 83
    assert mt.MARINA(ps, compressor="randk:1%").method_params["p"] == pytest.approx(1 / d)
    opt = mt.VRMARINA(ps, compressor="randk:20%", batch_size=4, dense_batch_size=28)
    K = round(0.2 * d)
    assert opt.method_params["p"] == pytest.approx(min(K / d, 4 / (28 + 4)))
    # a composition's RandK takes K as a share of d too; zeta_Q = K (natural keeps the K values)
    composed = mt.MARINA(ps, compressor="randk:20%+natural")
    assert composed.method_params["p"] == pytest.approx(K / d)
    assert mt.optim.compressor_for("randk:20%+qsgd:2", d, 1).spec == f"randk:{K}+qsgd:2"


def test_compressor_rule_is_the_methods_accepts():
    """compressor_for refuses with the method's own reason (Method.accepts), also for a method
    whose rule is its own; without a method, MARINA's rule (or EF21's with contractive)."""
    from marina import methods

    cases = [
        ("marina", "topk:3"),
        ("qgd", "topk:3"),
        ("ef21", "topk:3"),
        ("dasha", "sign"),
        ("ef21", "randk:2"),
    ]
    for name, spec in cases:
        reason = methods.get(name).accepts(compressors.get(spec))
        if reason is None:
            assert mt.compressor_for(spec, 10, 1, method=name).spec == spec
        else:
            with pytest.raises(ConfigError) as err:
                mt.compressor_for(spec, 10, 1, user="who", method=name)
            assert str(err.value) == f"who: compressor {reason}"

    class NoIdentity(methods.MARINA):
        name = "marina-no-identity"

        @classmethod
        def accepts(cls, compressor):
            return "identity sends everything" if compressor.name == "identity" else None

    with pytest.raises(ConfigError, match="identity sends everything"):
        mt.compressor_for("identity", 10, 1, method=NoIdentity)
    assert mt.compressor_for("randk:10%", 10, 1, method=NoIdentity).spec == "randk:1"
    with pytest.raises(ConfigError, match=re.escape(methods.MARINA.accepts(compressors.get("topk:1")))):
        mt.compressor_for("topk:10%", 10, 1)
    assert mt.compressor_for("topk:10%", 10, 1, contractive=True).spec == "topk:1"


def test_base_constructor_is_keyword_only_and_every_optimizer_passes_its_arguments():
    """MarinaOptimizer's constructor takes only ``params`` by position; every optimizer's own
    signature has the base's keyword arguments, which it passes by name; and they arrive: a seed and
    lr given to each optimizer are the ones its method uses."""
    import inspect

    from marina.torch.optim import _BASE_ARGUMENTS

    base = inspect.signature(mt.MarinaOptimizer.__init__).parameters
    assert [n for n, p in base.items() if p.kind is not inspect.Parameter.KEYWORD_ONLY] == ["self", "params"]
    assert set(base) == {"self", "params", "overrides", *_BASE_ARGUMENTS}
    ps = list(_mlp().parameters())
    for name in ("MARINA", "VRMARINA", "PPMARINA", "DIANA", "QGD", "EF21", "EF21PP", "EF21SGD"):
        cls = getattr(mt, name)
        assert set(_BASE_ARGUMENTS) <= set(inspect.signature(cls.__init__).parameters), name
        kw = {"batch_size": 4, "local_size": 24} if name in ("VRMARINA", "EF21SGD") else {}
        opt = cls(ps, compressor="randk:10%" if "EF21" not in name else "topk:10%", lr=0.0125, seed=11, **kw)
        assert (opt.method.gamma, opt.net.seed, opt.compressor.K) == (0.0125, 11, 8), name  # K: 10% of 83


def test_torch_layer_uses_only_public_members_of_methods():
    """No attribute starting with '_' is read from a method object (``self.method``, ``m``, ...) in
    src/marina/torch: the layer goes through the public round schedule and state."""
    import ast
    import pathlib

    root = pathlib.Path(mt.__file__).parent
    found = []
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                owner = ast.unparse(node.value)
                if owner in ("m", "method", "self.method", "opt.method") or owner.endswith(".method"):
                    found.append(f"{path.name}:{node.lineno}: {owner}.{node.attr}")
    assert found == []


# -- torch.distributed: each gloo rank one worker ----------------------------------------------------
@pytest.mark.parametrize("world", [2, 3])
def test_gloo_ranks_match_marina_run(world, tmp_path):
    import json
    import os
    import sys

    from marina.testing import run_ranks

    run_ranks(
        [sys.executable, os.path.join(os.path.dirname(__file__), "torch_optim_ranks.py"), str(tmp_path)],
        world,
    )
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
    for name in ("marina", "vr-marina", "diana", "pp-marina"):
        for r, rep in enumerate(reports):
            case = rep[name]
            assert case["max_diff"] < 1e-12, (name, r, case)
            assert case["bits_up"][0] == case["bits_up"][1], (name, r, case)
            assert case["bits_down"][0] == case["bits_down"][1], (name, r, case)
            assert case["wire_bytes"] > 0 and case["wire_bytes"] == reports[0][name]["wire_bytes"]
    # PP-MARINA with r = 1 client: ranks not drawn skipped their closure on some rounds
    assert sum(rep["pp-marina"]["skipped"] for rep in reports) > 0


def test_example_train_torch_runs_and_resumes(tmp_path):
    import os
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "train_torch.py")
    cmd = [
        sys.executable,
        script,
        "--ckpt",
        str(tmp_path / "c.pt"),
        "--ckpt-every",
        "4",
        "--large-batch",
        "64",
    ]
    first = subprocess.run([*cmd, "--steps", "4"], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    again = subprocess.run([*cmd, "--steps", "8", "--resume"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed at step 4" in again.stdout and "rounds 8" in again.stdout, again.stdout


def test_mixed_precision_recipe_loss_scaled_and_unscaled_inside_the_closure():
    """The documented order (autocast forward, scaled backward, unscale, clip, return) gives the
    unscaled trajectory: a power-of-two scale is exact in binary floating point."""
    x, y = _data()
    scale = 2.0**12
    runs = []
    for scaled, unscale in ((False, False), (True, True), (True, False)):
        model = _mlp()
        opt = mt.VRMARINA(model.parameters(), compressor="randk:5", lr=0.2, batch_size=8, seed=3, p=0.3)

        def closure(model=model, opt=opt, scaled=scaled, unscale=unscale):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)  # float16 autocast would go here
            (loss * scale if scaled else loss).backward()
            if unscale:
                for p in model.parameters():
                    p.grad.div_(scale)  # unscale before clipping
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=5.0)
            return loss

        for _ in range(8):
            opt.step(closure)
        runs.append(_flat(model))
    assert torch.equal(runs[0], runs[1])
    assert not torch.allclose(runs[0], runs[2])  # forgetting to unscale: clipped scaled grads differ
    # bf16 autocast (no scaler needed) inside the closure runs and moves the model
    model = _mlp().float()
    opt = mt.MARINA(model.parameters(), compressor="randk:5", lr=0.1, p=0.5)
    xf = x.float()
    start = _flat(model).clone()

    def bf16_closure():
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(xf), y)
        loss.backward()
        return loss

    for _ in range(3):
        assert math.isfinite(float(opt.step(bf16_closure).detach()))
    assert not torch.equal(_flat(model), start)
