"""The simulated network against the wire path (compress -> pack -> unpack -> decompress)."""

from __future__ import annotations

import pytest
import torch

from marina import compressors
from marina.network import SimulatedNetwork, copy_stream
from marina.rng import SHARED, Randomness


def _wire_mean(c, X, seed, stream, round, ids, wire=True):
    """Reference: every worker's message (through the bytes when ``wire``), decompressed."""
    rng = Randomness(seed, stream, round, ids)
    msg = c.compress(X, rng)
    if wire:
        msg = c.unpack(c.pack(msg), X.shape[1], worker_ids=msg.worker_ids, dtype=X.dtype)
    return c.decompress(msg), msg.bits


@pytest.mark.parametrize("spec", ["identity", "randk:3"])
def test_aggregate_equals_wire_path(seed, spec):
    n, d = 6, 17
    X = torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    c = compressors.get(spec)
    net = SimulatedNetwork(n, seed)
    mean, local = net.aggregate_with_local(c, X, 4)
    ref, bits = _wire_mean(c, X, seed, "compress", 4, range(n))
    assert torch.equal(local, ref)
    # the receiver's reduction: the compressor's canonical sum of the unpacked messages, over n
    rng = Randomness(seed, "compress", 4, range(n))
    msg = c.compress(X, rng)
    back = c.unpack(c.pack(msg), d, worker_ids=msg.worker_ids, dtype=X.dtype)
    assert torch.equal(mean, c.sum_decompressed(back) / n)
    assert torch.allclose(mean, ref.mean(dim=0), rtol=1e-15, atol=1e-15)
    assert net.bits_up == int(bits.sum())
    assert net.bits_down == 0


def test_multiplicity_sends_independent_copies(seed):
    """Worker i with multiplicity c sends c independent messages (streams compress, compress#1, ...)."""
    n, d = 5, 12
    X = torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    counts = torch.tensor([0, 2, 1, 0, 3])
    c = compressors.get("randk:2")
    net = SimulatedNetwork(n, seed)
    mean, local = net.aggregate_with_local(c, X, 7, multiplicity=counts)
    total = torch.zeros(d, dtype=torch.float64)
    first = torch.zeros(n, d, dtype=torch.float64)
    bits = 0
    for i in range(n):
        for j in range(int(counts[i])):
            x_hat, b = _wire_mean(c, X[i : i + 1], seed, copy_stream("compress", j), 7, [i], wire=False)
            total += x_hat[0]
            bits += int(b.sum())
            if j == 0:
                first[i] = x_hat[0]
    assert torch.allclose(mean, total / 6, rtol=0, atol=1e-15)
    assert torch.equal(local, first)  # copy 0 of each sender, zero rows for the others
    # 6 messages of randk:2 on d = 12: 2 (32 + ceil(log2 12)) = 72 bits each
    assert bits == 6 * 72 and net.bits_up == 6 * 72
    # the copies draw from different keys (independent randomness)
    u0 = Randomness(seed, copy_stream("compress", 0), 7, [4]).uniform(3)
    u1 = Randomness(seed, copy_stream("compress", 1), 7, [4]).uniform(3)
    assert not torch.equal(u0, u1)


@pytest.mark.parametrize("counts", [None, [0, 2, 1, 0, 3]])
def test_mean_alone_is_the_mean_with_local_rows_same_bits(seed, counts):
    """aggregate_mean and aggregate_with_local send the same messages: the same mean, bit for
    bit, and the same bits; ``aggregate`` (the older name) is aggregate_mean; no method of the
    interface takes a flag that changes its return type."""
    import inspect

    from marina.network import Network
    from marina.network.torch_distributed import TorchDistributedNetwork

    n, d = 5, 12
    X = torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    mult = None if counts is None else torch.tensor(counts)
    c = compressors.get("randk:2")
    nets = [SimulatedNetwork(n, seed) for _ in range(3)]
    with_local, _ = nets[0].aggregate_with_local(c, X, 3, multiplicity=mult)
    alone = nets[1].aggregate_mean(c, X, 3, multiplicity=mult)
    older = nets[2].aggregate(c, X, 3, multiplicity=mult)
    assert torch.equal(with_local, alone) and torch.equal(alone, older)
    assert nets[0].bits_up == nets[1].bits_up == nets[2].bits_up > 0
    for cls in (Network, SimulatedNetwork, TorchDistributedNetwork):
        for name in ("aggregate", "aggregate_mean", "aggregate_with_local", "aggregate_dense"):
            assert "return_local" not in inspect.signature(getattr(cls, name)).parameters, (cls, name)


def test_dense_aggregation_counts_identity_at_wire_precision():
    n, d = 4, 9
    X = torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    net = SimulatedNetwork(n, 0)
    dense = compressors.get("identity", value_dtype=torch.float32)
    g = net.aggregate_dense(X, 0, dense)
    assert torch.equal(g, X.to(torch.float32).to(torch.float64).mean(dim=0))
    assert net.bits_up == n * d * 32
    net.count_broadcast(d, 32)
    net.count_broadcast(d, 32)
    assert net.bits_down == 2 * d * 32
    state = net.counters()
    other = SimulatedNetwork(n, 0)
    other.load_counters(state)
    assert other.counters() == state == {"bits_up": n * d * 32, "bits_down": 2 * d * 32}


def test_randomness_is_keyed_by_worker_and_shared_stream():
    a, b = SimulatedNetwork(3, 11), SimulatedNetwork(8, 11)
    # row r of the per-worker draws belongs to worker r whatever n is
    assert torch.equal(a.rng("compress", 5).uniform(4), b.rng("compress", 5).uniform(4)[:3])
    # shared draws do not depend on the workers at all
    ref = Randomness(11, "coin", 5, [SHARED]).uniform(1)
    assert torch.equal(a.shared_rng("coin", 5).uniform(1), ref)
    assert torch.equal(b.shared_rng("coin", 5).uniform(1), ref)
    assert not torch.equal(a.shared_rng("coin", 6).uniform(1), ref)
    assert a.hosts_all and torch.equal(a.gather(torch.arange(3)), torch.arange(3))
