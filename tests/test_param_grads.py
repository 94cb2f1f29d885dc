"""The gradients of a closure read where autograd left them (marina.torch.closure.ParamGrads).

Reading K entries or a difference from the per-parameter grads must equal reading the
concatenated row bit for bit, and a row read in one step must not change when a later closure
zeroes or recomputes the grads, however it zeroes them.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import marina.torch as mt
from marina.errors import ValueRangeError
from marina.rng import Randomness
from marina.torch.closure import ParamGrads

NUMELS = [3, 1, 40, 7, 2, 25]


@pytest.fixture(autouse=True)
def pieces_at_any_length(monkeypatch):
    """Rows of any length are read in pieces (by default only rows of PIECES_MIN_D entries)."""
    import marina.lazy_rows
    import marina.torch.closure

    monkeypatch.setattr(marina.lazy_rows, "PIECES_MIN_D", 1)
    monkeypatch.setattr(marina.torch.closure, "PIECES_MIN_D", 1)


def _grads(seed: int, dtype=torch.float32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g, dtype=dtype) for n in NUMELS]


@pytest.mark.parametrize("k", [1, 5, 30, 78])
def test_sorted_gather_equals_the_gather_of_the_concatenated_row(seed, k):
    print("seed", seed)
    grads = _grads(seed)
    rows = ParamGrads(grads, torch.float32, torch.device("cpu"))
    dense = torch.cat(grads).reshape(1, -1)
    idx = Randomness(seed, "entries", 0, [0]).sample_without_replacement(dense.shape[1], k)
    got = rows.gather(1, idx)
    assert rows.values is None  # read in place, nothing concatenated
    assert torch.equal(got, dense.gather(1, idx))
    shuffled = idx[:, torch.randperm(k, generator=torch.Generator().manual_seed(seed))]
    assert torch.equal(rows.gather(1, shuffled), dense.gather(1, shuffled))  # any order


def test_gathers_of_one_index_row_stay_exact_across_gradients_shapes_and_changes(seed):
    """The entries' per-parameter offsets are kept for the last index row: gathering it from
    another gradient, from parameters of other sizes, or after the row changed in place still
    equals the gather of the concatenated row."""
    print("seed", seed)
    cpu = torch.device("cpu")
    idx = Randomness(seed, "entries", 1, [0]).sample_without_replacement(sum(NUMELS), 20)
    for grads in (_grads(seed), _grads(seed + 1), _grads(seed + 2)[::-1]):
        rows = ParamGrads(grads, torch.float32, cpu)
        assert torch.equal(rows.gather(1, idx), torch.cat(grads).reshape(1, -1).gather(1, idx))
    grads = _grads(seed + 3)
    rows, dense = ParamGrads(grads, torch.float32, cpu), torch.cat(grads).reshape(1, -1)
    rows.gather(1, idx)
    idx[0, :5] = torch.arange(5)  # in place: still sorted (the smallest entries), other offsets
    assert torch.equal(rows.gather(1, idx), dense.gather(1, idx))


def test_difference_with_a_dense_row_equals_the_dense_subtraction(seed):
    print("seed", seed)
    a, b = _grads(seed), torch.cat(_grads(seed + 1)).reshape(1, -1)
    rows = ParamGrads(a, torch.float32, torch.device("cpu"))
    got = (rows - b).dense()
    assert rows.values is None
    assert torch.equal(got, torch.cat(a).reshape(1, -1) - b)
    other = ParamGrads(_grads(seed + 1), torch.float32, torch.device("cpu"))
    assert torch.equal((rows - other).dense(), torch.cat(a).reshape(1, -1) - b)


def test_topk_reads_the_difference_of_the_parameters_gradients_where_they_are(seed, monkeypatch):
    """EF21's message C(grad - g_i) on one rank: TopK writes the magnitudes of the difference into
    its scratch row, parameter by parameter, and gathers the signed entries it keeps, never
    materialising the difference; the messages equal those of the dense difference bit for bit
    (-0.0 and a NaN's rank included) and the scratch row is reused."""
    import marina.compressors.sparse as sparse
    from marina import compressors

    monkeypatch.setattr(sparse, "FAST_TOPK_MIN_D", 16)
    print("seed", seed)
    grads, g = _grads(seed), torch.cat(_grads(seed + 1)).reshape(1, -1)
    grads[2][5] = g[0, 4 + 5]  # a zero difference
    grads[2][6], g[0, 4 + 6] = -0.0, 0.0  # a -0.0 difference
    Q = compressors.get("topk:4")
    rng = lambda: Randomness(seed, "compress", 0, [0])
    expected = Q.compress_entries(torch.cat(grads).reshape(1, -1) - g, rng())
    lazy = ParamGrads(grads, torch.float32, torch.device("cpu")) - g
    lazy.dense = None  # not callable: materialising would fail
    got = Q.compress_entries(lazy, rng())
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    scratch = sparse._SCRATCH.row
    assert torch.equal(Q.compress_entries(lazy, rng())[0], expected[0]) and sparse._SCRATCH.row is scratch
    shorter = (torch.cat(grads).reshape(1, -1) - g)[:, :70]  # a shorter row shares the buffer
    want = torch.topk(shorter.abs(), 4).indices.sort().values
    assert torch.equal(Q.compress_entries(shorter, rng())[0], want) and sparse._SCRATCH.row is scratch
    grads[5][3] = float("nan")  # kept (ranked above every number), then refused
    with pytest.raises(ValueRangeError, match="non-finite"):
        Q.compress_entries(ParamGrads(grads, torch.float32, torch.device("cpu")) - g, rng())


def _model() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(24, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (24,), generator=g)


@pytest.mark.parametrize("zeroing", ["none", "in place", "by hand"])
def test_rows_held_across_steps_survive_any_zeroing_of_the_grads(seed, zeroing):
    """MARINA keeps grad f(x^k) for the next step's difference: a closure that zeroes the grads in
    place (or a loop that does so after ``loss.backward(); opt.step()``) must not change it, so
    every way of zeroing gives the trajectory of the default ``zero_grad()``."""
    print("seed", seed)
    x, y = _data()
    finals = []
    for how in ("none", zeroing):
        model = _model()
        opt = mt.MARINA(model.parameters(), compressor="randk:9", lr=0.2, p=0.2, seed=seed)
        for _ in range(8):
            opt.step(_closure(model, opt, x, y, how))
        # the same run without a closure: backward, step, then zero the grads
        model2 = _model()
        opt2 = mt.MARINA(model2.parameters(), compressor="randk:9", lr=0.2, p=0.2, seed=seed)
        for _ in range(8):
            F.cross_entropy(model2(x), y).backward()
            opt2.step()
            _zero(model2, opt2, how)
        assert torch.equal(_flat(model), _flat(model2))
        finals.append(_flat(model))
    assert torch.equal(finals[0], finals[1])


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _zero(model: nn.Module, opt: torch.optim.Optimizer, how: str) -> None:
    if how == "none":
        opt.zero_grad()
    elif how == "in place":
        opt.zero_grad(set_to_none=False)
    else:
        for p in model.parameters():
            if p.grad is not None:
                p.grad.zero_()


def _closure(model, opt, x, y, how: str):
    def closure():
        _zero(model, opt, how)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return closure


def _momentum(v, g, out):
    torch.mul(v, 1.0 - 0.1, out=out)
    return out.add_(g, alpha=0.1)


def _mvr(new, h, old, out):
    torch.sub(h, old, out=out)
    return torch.add(new, out, alpha=1.0 - 0.37, out=out)


def test_piecewise_updates_equal_the_whole_row_updates(seed):
    """EF21-SGDM's momentum and DASHA-MVR's h written parameter by parameter from the grads equal
    the same operations on the concatenated rows bit for bit (fused add_ with alpha included)."""
    from marina.lazy_rows import piecewise

    print("seed", seed)
    grads, grads2 = _grads(seed), _grads(seed + 7)
    rows = ParamGrads(grads, torch.float32, torch.device("cpu"))
    rows2 = ParamGrads(grads2, torch.float32, torch.device("cpu"))
    a, b = torch.cat(grads).reshape(1, -1), torch.cat(grads2).reshape(1, -1)
    v = torch.randn(a.shape, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(piecewise(_momentum, v, rows), v.mul(0.9).add_(a, alpha=0.1))
    assert torch.equal(piecewise(_mvr, rows, v, rows2), a.clone().add_(v - b, alpha=1.0 - 0.37))
    assert rows.values is None and rows2.values is None  # nothing concatenated


def test_short_rows_are_concatenated_once(seed, monkeypatch):
    """Below PIECES_MIN_D a gather concatenates the row (one call instead of one per piece), with
    the same values."""
    import marina.torch.closure

    monkeypatch.setattr(marina.torch.closure, "PIECES_MIN_D", 1000)
    rows = ParamGrads(_grads(seed), torch.float32, torch.device("cpu"))
    idx = Randomness(seed, "entries", 0, [0]).sample_without_replacement(rows.shape[1], 9)
    assert torch.equal(rows.gather(1, idx), torch.cat(_grads(seed)).reshape(1, -1).gather(1, idx))
    assert rows.values is not None
