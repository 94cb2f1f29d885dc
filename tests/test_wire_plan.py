"""The torch-distributed wire plan: layouts checked by hand, short functions, the two aggregations."""

from __future__ import annotations

import ast
import inspect

import pytest
import torch
import torch.distributed as dist

import marina.network.torch_distributed as td
from marina import compressors
from marina.errors import ConfigError
from marina.network import SimulatedNetwork
from marina.network.wire_plan import WirePlan
from marina.rng import Randomness
from marina.testing import free_port

CPU = torch.device("cpu")


def test_no_function_of_the_distributed_network_module_is_over_60_lines():
    tree = ast.parse(inspect.getsource(td))
    lengths = {
        node.name: node.end_lineno - node.lineno + 1  # type: ignore[operator]
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    }
    assert "aggregate_mean" in lengths and "aggregate_with_local" in lengths and "_decode" in lengths
    assert {name: n for name, n in lengths.items() if n > 60} == {}


def _plan(counts, world, rank, bits_of=None, weighted=True, drawn=False) -> WirePlan:
    plan = WirePlan.build(torch.tensor(counts), world, rank, weighted=weighted, drawn=drawn, row_device=CPU)
    return plan if bits_of is None else plan.with_message_bits([torch.tensor(b) for b in bits_of], CPU)


def test_weighted_plan_places_every_copy_by_hand():
    # workers 0, 1 on rank 0 and 2, 3 on rank 1; worker 0 sends twice, worker 1 never
    plan = _plan([2, 0, 1, 1], world=2, rank=0, bits_of=[[9, 16, 3], [20]])
    assert plan.copies == 2 and plan.messages == 4 and plan.slots == 2 and plan.known
    assert [s.tolist() for s in plan.senders] == [[0, 2, 3], [0]]
    assert [r.tolist() for r in plan.local_rows] == [[0], [0]]
    # rank 0: copy 0 of worker 0 (2 bytes), copy 1 of worker 0 (3 bytes); rank 1: 2 + 1 bytes
    assert plan.bits.tolist() == [[9, 20], [16, 3]]
    assert plan.rank_bytes == (5, 3) and plan.width == 5 and plan.sent_bits == 48
    assert [o.tolist() for o in plan.offsets] == [[0, 5, 7], [2]]
    assert [n.tolist() for n in plan.lengths] == [[2, 2, 1], [3]]
    assert plan.uniform_bits is None and not plan.bitpacked


def test_rows_read_back_the_messages_of_each_copy():
    plan = _plan([2, 0, 1, 1], world=2, rank=0, bits_of=[[9, 16, 3], [20]])
    buffer = torch.arange(1, 11, dtype=torch.uint8)  # segments [1 2 3 4 5] [6 7 8 9 10]
    assert plan.rows(buffer, 0).tolist() == [[1, 2], [6, 7], [8, 0]]
    assert plan.rows(buffer, 1).tolist() == [[3, 4, 5]]


def test_uniform_plan_packs_bits_back_to_back():
    # 49-bit messages (randk:1 at d = 10^5), 2 per rank: ceil(98 / 8) = 13 bytes, not 2 x 7
    plan = _plan([1] * 4, world=2, rank=1, bits_of=[[49] * 4], weighted=False)
    assert plan.uniform_bits == 49 and plan.bitpacked
    assert plan.rank_bytes == (13, 13) and plan.width == 13
    gen = torch.Generator().manual_seed(0)
    rows = torch.randint(0, 256, (4, 7), dtype=torch.uint8, generator=gen)
    rows[:, 6] &= 1  # 49 bits: one bit of the last byte
    buffer = torch.cat(
        [plan.segment(rows[:2], torch.full((2,), 49)), plan.segment(rows[2:], torch.full((2,), 49))]
    )
    assert buffer.numel() == 26 and torch.equal(plan.rows(buffer, 0), rows)


def test_byte_sized_uniform_messages_are_read_in_place_and_varying_ones_are_not():
    whole = _plan([1] * 4, world=2, rank=0, bits_of=[[16] * 4], weighted=False)
    assert whole.uniform_bits == 16 and not whole.bitpacked and whole.width == 4
    assert _plan([1] * 4, world=2, rank=0, bits_of=[[16] * 4], weighted=True).uniform_bits is None
    drawn = _plan([1] * 4, world=2, rank=0, bits_of=[[0, 0, 0, 0]], weighted=False, drawn=True)
    assert drawn.uniform_bits is None and drawn.width == 1 and drawn.poison_span() == [1, 1]


def test_sizes_exchanged_after_the_plan():
    plan = _plan([1, 1], world=2, rank=0)
    assert not plan.known and plan.bits is None
    sized = plan.with_sizes(torch.tensor([[1], [33]]), CPU)
    assert not sized.known and sized.rank_bytes == (1, 5) and sized.width == 5 and sized.uniform_bits is None


def test_unpack_rows_is_public_and_checks_its_rows():
    Q = compressors.get("randk:2")
    X = torch.linspace(-1, 1, 30, dtype=torch.float64).reshape(3, 10)
    rows, bits = Q.pack_compressed(X, Randomness(0, "compress", 0, range(3)))
    ids = torch.arange(3)
    back = Q.unpack_rows(rows, (bits + 7) // 8, 10, ids, torch.float64, None)
    sent = Q.compress(X, Randomness(0, "compress", 0, range(3)))
    assert torch.equal(back.bits, bits) and torch.equal(Q.decompress(back), Q.decompress(sent))
    with pytest.raises(ConfigError, match="uint8"):
        Q.unpack_rows(rows.to(torch.int32), (bits + 7) // 8, 10, ids, torch.float64, None)


@pytest.fixture
def one_rank():
    """A one-process gloo group hosting every worker."""
    if dist.is_initialized():
        dist.destroy_process_group()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("spec", ["randk:3", "bernoulli:0.5", "permk"])
def test_the_two_aggregations_equal_the_simulation(one_rank, spec, seed):
    print("seed", seed)
    n, d = 4, 12
    Q = compressors.get(spec, workers=n)
    X = torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    counts = torch.tensor([2, 0, 1, 3])
    for multiplicity in (None, counts):
        net, sim = td.TorchDistributedNetwork(n, seed), SimulatedNetwork(n, seed)
        mean, local = net.aggregate_with_local(Q, X, 5, multiplicity=multiplicity)
        sim_mean, sim_local = sim.aggregate_with_local(Q, X, 5, multiplicity=multiplicity)
        assert torch.equal(mean, sim_mean) and torch.equal(local, sim_local)
        assert torch.equal(
            net.aggregate_mean(Q, X, 6, multiplicity=multiplicity),
            sim.aggregate(Q, X, 6, multiplicity=multiplicity),
        )
        assert net.bits_up == sim.bits_up
