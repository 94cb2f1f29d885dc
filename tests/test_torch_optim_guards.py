"""marina.torch optimizers refuse misuse: raising closures undo the step, bad configurations and
state dicts are refused naming the value, ranks that disagree fail together, divergence is named."""

from __future__ import annotations

import copy
import inspect
import json
import os
import sys
import warnings

import pytest
import torch
import torch.distributed as dist
from torch import nn

import marina.torch as mt
from marina import compressors
from marina.errors import ConfigError, MemoryBudgetError, ValueRangeError
from test_torch_optim import RESUMABLE, _closure, _data, _flat, _mlp

F64_IDENTITY = compressors.get("identity", value_dtype=torch.float64)

FACTORIES = {
    **{name.upper().replace("-", ""): make for name, make in RESUMABLE.items()},
    "EF21": lambda ps: mt.EF21(ps, compressor="topk:9", lr=0.1, seed=2),
    "EF21PP": lambda ps: mt.EF21PP(ps, compressor="topk:9", lr=0.1, seed=2),
    "EF21SGD": lambda ps: mt.EF21SGD(ps, compressor="topk:9", lr=0.1, seed=2, batch_size=4),
    "EF21SGDM": lambda ps: mt.EF21SGDM(ps, compressor="topk:9", lr=0.1, seed=2, momentum=0.3, batch_size=4),
    "DASHA": lambda ps: mt.DASHA(ps, compressor="randk:9", lr=0.1, seed=2),
    "DASHAPAGE": lambda ps: mt.DASHAPAGE(
        ps, compressor="randk:9", lr=0.1, seed=2, batch_size=4, local_size=24
    ),
    "DASHAMVR": lambda ps: mt.DASHAMVR(ps, compressor="randk:9", lr=0.1, seed=2, batch_size=4),
}
"""Every optimizer, small settings (the MARINA family's are the resume test's)."""
ONE_POINT = {"MARINA", "DIANA", "QGD", "EF21", "EF21PP", "EF21SGD", "EF21SGDM", "DASHA"}
"""One gradient per step, at the current parameters (read from the method definitions)."""
TWICE = {"VRMARINA", "DASHAPAGE", "DASHAMVR"}
"""Two evaluations, at x^{k+1} and x^k, on the steps where :attr:`coin` is False."""


def _equal(a, b) -> bool:
    """Recursive bit-for-bit equality of state dicts (tensors, dicts, lists, numbers)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(u, v) for u, v in zip(a, b))
    return a == b


class Boom(RuntimeError):
    pass


def _raising(model, opt, x, y, at: int):
    """A closure that calls backward and then raises on its call number ``at`` of the step."""
    calls = [0]
    inner = _closure(model, opt, x, y)

    def closure():
        loss = inner()
        calls[0] += 1
        if calls[0] > at:
            raise Boom("after backward")
        return loss

    return closure


@pytest.mark.parametrize("name", list(FACTORIES))
@pytest.mark.parametrize("later", [False, True])
def test_a_raising_closure_leaves_parameters_and_state_as_before(name, later):
    """At step 0, or at the first step >= 3 that evaluates twice (c_k = 0) for the two-point
    methods: the closure raises on its first call and, there, on its second."""
    x, y = _data(24)
    model, twin = _mlp(), _mlp()
    opt, twin_opt = FACTORIES[name](model.parameters()), FACTORIES[name](twin.parameters())

    def both(t):
        opt.step(_closure(model, opt, x[t % 16 : t % 16 + 8], y[t % 16 : t % 16 + 8]))
        twin_opt.step(_closure(twin, twin_opt, x[t % 16 : t % 16 + 8], y[t % 16 : t % 16 + 8]))

    t = 0
    while later and (t < 3 or (name in TWICE and opt.coin) or not getattr(opt, "participates", True)):
        both(t)
        t += 1
    params, state = _flat(model).clone(), copy.deepcopy(opt.state_dict())
    counters = (opt.bits_up, opt.bits_down, opt.rounds, opt.oracle_calls)
    two_points = later and name in TWICE
    assert not two_points or opt.coin is False  # a c_k = 0 step came (p = 0.3)
    for at in (0, 1) if two_points else (0,):
        with pytest.raises(Boom):
            opt.step(_raising(model, opt, x[:8], y[:8], at))
        assert torch.equal(_flat(model), params)
        assert _equal(opt.state_dict(), state)
        assert (opt.bits_up, opt.bits_down, opt.rounds, opt.oracle_calls) == counters
    for s in range(t, t + 3):  # and it goes on exactly as an optimizer that never failed
        both(s)
        assert torch.equal(_flat(model), _flat(twin))


@pytest.mark.parametrize("key", ["weight_decay", "momentum", "nesterov", "betas"])
def test_param_group_keys_the_method_does_not_use_are_refused(key):
    model = _mlp()
    groups = [{"params": model[0].parameters()}, {"params": model[2].parameters(), key: 0.9}]
    with pytest.raises(ConfigError, match=rf"param group 1 has '{key}' == 0\.9.*'params', 'lr'"):
        mt.MARINA(groups, compressor="randk:5")


@pytest.mark.parametrize("lr", ["0.1", float("inf"), float("nan"), -1.0, 0, True])
def test_group_lrs_that_are_not_finite_positive_numbers_are_refused(lr):
    model = _mlp()
    groups = [{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": lr}]
    with pytest.raises(ConfigError, match=r"param group 1: lr == " + repr(lr).replace(".", r"\.")):
        mt.EF21(groups)
    opt = mt.QGD(model.parameters(), compressor="qsgd:2")
    if lr == 0:
        return  # a schedule may end at lr 0: accepted at a step
    opt.param_groups[0]["lr"] = lr  # as a scheduler could: refused at the next step, nothing moved
    x, y = _data()
    before = _flat(model).clone()
    with pytest.raises(ConfigError, match=r"param_groups\[0\]\['lr'\] == "):
        opt.step(_closure(model, opt, x, y))
    assert torch.equal(_flat(model), before)


def test_bad_parameters_and_arguments_are_refused_naming_the_value():
    model = _mlp()
    w = model[0].weight
    with pytest.raises(ConfigError, match="same tensor as param group 0, parameter 0"):
        mt.MARINA([w, model[0].bias, w])
    with pytest.raises(ConfigError, match="param group 1, parameter 0 .* same tensor"):
        mt.MARINA([{"params": [w]}, {"params": [w]}])
    with pytest.raises(ConfigError, match="device 'meta'"):
        mt.MARINA([torch.zeros(3, device="meta", requires_grad=True)])
    with pytest.raises(ConfigError, match="process_group == 'world'"):
        mt.MARINA(model.parameters(), process_group="world")
    with pytest.raises(ConfigError, match="module == 'model'"):
        mt.DASHA(model.parameters(), module="model")
    with pytest.raises(ConfigError, match="one tensor"):
        mt.MARINA(w)


def test_a_ddp_wrapped_module_is_refused():
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        model = _mlp()
        ddp = DistributedDataParallel(model)
        with pytest.raises(ConfigError, match="DistributedDataParallel.*ddp.module"):
            mt.MARINA(model.parameters(), module=ddp)
        del ddp
    finally:
        dist.destroy_process_group()


def test_no_gradient_and_sparse_gradients_are_refused_at_the_step():
    x, y = _data()
    model = _mlp()
    opt = mt.MARINA(model.parameters(), compressor="randk:5", p=0.5)
    before = _flat(model).clone()

    def forgot_backward():
        opt.zero_grad()
        return torch.nn.functional.cross_entropy(model(x), y)

    with pytest.raises(ConfigError, match=r"every p\.grad is None.*loss\.backward\(\)"):
        opt.step(forgot_backward)
    assert torch.equal(_flat(model), before) and opt.rounds == 0
    emb = nn.Embedding(10, 3, sparse=True).double()
    opt = mt.QGD(emb.parameters(), compressor="qsgd:2")

    def sparse_closure():
        opt.zero_grad()
        loss = emb(torch.tensor([1, 2])).sum()
        loss.backward()
        return loss

    with pytest.raises(ConfigError, match="sparse_coo gradient"):
        opt.step(sparse_closure)


def test_a_state_dict_of_another_shape_is_refused_at_load():
    x, y = _data()
    model = _mlp()
    opt = mt.MARINA(model.parameters(), compressor="randk:5", p=0.5)
    for _ in range(2):
        opt.step(_closure(model, opt, x, y))
    other = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    opt2 = mt.MARINA(other.parameters(), compressor="randk:5", p=0.5)
    with pytest.raises(ConfigError, match=r"parameter 0 has shape \(8, 6\).*\(8, 5\).*another shape"):
        opt2.load_state_dict(opt.state_dict())
    wider = nn.Sequential(nn.Linear(6, 8), nn.Tanh()).double()
    with pytest.raises(ConfigError, match=r"param groups of \[4\] parameters, this MARINA \[2\]"):
        mt.MARINA(wider.parameters(), compressor="randk:5").load_state_dict(opt.state_dict())


def test_the_memory_estimate_is_checked_against_the_budget(monkeypatch):
    from marina import memory

    layer = nn.Linear(1000, 200)  # d = 200200 float32
    d = sum(p.numel() for p in layer.parameters())
    estimate = memory.state_bytes(1, d, 4) + 2 * d * 4 + memory.WORKSPACE  # + flat params, x^{k+1}
    monkeypatch.setenv("MARINA_MEMORY_BUDGET", str(estimate - 1))
    with pytest.raises(MemoryBudgetError, match=f"d = {d}.*MARINA_MEMORY_BUDGET={estimate - 1}"):
        mt.MARINA(layer.parameters())
    monkeypatch.setenv("MARINA_MEMORY_BUDGET", str(estimate))
    assert mt.MARINA(layer.parameters()).problem.dim == d


@pytest.mark.parametrize("name", list(FACTORIES))
def test_step_returns_a_detached_loss_and_reads_p_grad_without_a_closure(name):
    x, y = _data(24)
    model, twin = _mlp(), _mlp()
    opt, twin_opt = FACTORIES[name](model.parameters()), FACTORIES[name](twin.parameters())
    loss = opt.step(_closure(model, opt, x, y))
    assert not loss.requires_grad
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        float(loss)
    if name not in ONE_POINT:
        with pytest.raises(ConfigError, match=f"{name}.step\\(\\) needs a closure: .* two points"):
            twin_opt.step()
        return
    twin_opt.step(_closure(twin, twin_opt, x, y))
    for t in range(5):  # the standard loop: backward, then step() without a closure
        xb, yb = (x, y) if opt.coin else (x[t : t + 4], y[t : t + 4])
        opt.step(_closure(model, opt, xb, yb))
        twin_opt.zero_grad()
        torch.nn.functional.cross_entropy(twin(xb), yb).backward()
        assert twin_opt.step() is None
        assert torch.equal(_flat(model), _flat(twin))


def test_coin_has_one_meaning_what_the_next_closure_must_compute():
    x, y = _data(24)
    seen: dict[str, list] = {}
    for name, make in FACTORIES.items():
        model = _mlp()
        opt = make(model.parameters())
        seen[name] = []
        for _ in range(8):
            seen[name].append((opt.coin, opt.round_coin))
            opt.step(_closure(model, opt, x, y))
    full_loss = {"MARINA", "PPMARINA", "EF21", "EF21PP", "DASHA"}  # line 8 reuses the last gradient
    for name, rows in seen.items():
        coins = [c for c, _ in rows]
        if name in full_loss:
            assert all(coins), name
        elif name in ("VRMARINA", "DASHAPAGE"):
            assert coins == [r for _, r in rows] and True in coins[1:] and False in coins, name
        elif name in ("EF21SGD", "EF21SGDM", "DASHAMVR"):
            assert coins == [True] + [False] * 7, name
        else:
            assert not any(coins), name  # DIANA, QGD: minibatches are fine
        has_coin = name in ("MARINA", "VRMARINA", "PPMARINA", "DASHAPAGE")
        assert all((r is not None) == has_coin for _, r in rows), name


def test_a_loss_that_explodes_raises_naming_the_cause_and_the_fix():
    x, y = _data()
    model = _mlp()
    opt = mt.MARINA(model.parameters(), compressor=F64_IDENTITY, lr=1.0, p=1.0)

    def closure():  # a quadratic: the gradient step with lr 1 multiplies w by -19 (|.|^2 = 361)
        opt.zero_grad()
        loss = 10 * sum((p**2).sum() for p in model.parameters())
        loss.backward()
        return loss

    first = float(opt.step(closure))
    with pytest.raises(ValueRangeError, match="diverged.*VRMARINA or EF21SGD.*Lower the lr"):
        for _ in range(4):  # step t's loss is 361^t times the first: 361^2 < 1e6 < 361^3
            opt.step(closure)
    assert opt.rounds == 4 and first > 0  # raised by step t = 3 (after it)
    ef21 = mt.EF21(model.parameters(), compressor="topk:20", lr=1.0)
    with pytest.raises(ValueRangeError, match="diverged. Lower the lr. ") as err:  # no minibatch claim
        for _ in range(5):
            ef21.step(closure)
    assert "consecutive" not in str(err.value)
    quiet = mt.MARINA(_mlp().parameters(), compressor=F64_IDENTITY, lr=1.0, p=1.0)
    quiet.divergence_factor = None
    model = quiet.param_groups[0]["params"]
    for _ in range(4):
        quiet.zero_grad()
        loss = 10 * sum((p**2).sum() for p in model)
        loss.backward()
        quiet.step()


def test_every_optimizer_documents_its_closure_and_every_argument():
    for name in FACTORIES:
        cls = getattr(mt, name)
        doc = inspect.getdoc(cls)
        assert doc.startswith("Closure: "), name
        args = doc[doc.index("\nArgs:\n") :]
        for param in inspect.signature(cls.__init__).parameters:
            if param != "self":
                assert f"\n    {param}: " in args, (name, param)


def test_ranks_that_disagree_all_raise_one_error_naming_the_difference(tmp_path):
    from marina.testing import run_ranks

    script = os.path.join(os.path.dirname(__file__), "torch_optim_ranks.py")
    run_ranks([sys.executable, script, str(tmp_path), "disagree"], 2)
    reports = [json.loads((tmp_path / f"disagree{r}.json").read_text()) for r in range(2)]
    expected = {
        "d": r"d and shapes: rank 0 d=83 .*, rank 1 d=91 ",
        "compressor": "compressor: rank 0 randk:7, rank 1 randk:8",
        "method": "method: rank 0 MARINA, rank 1 DASHA",
        "p": r"method parameter p: rank 0 0\.4, rank 1 0\.5",
    }
    import re

    for rep in reports:
        assert rep["agreeing"] == "ok"
        for case, pattern in expected.items():
            assert re.search(pattern, rep[case]), (case, rep[case])
            assert rep[case].startswith("marina.torch: the ranks disagree")
