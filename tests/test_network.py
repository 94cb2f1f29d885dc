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


def _bits_of(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32) if t.dtype == torch.float32 else t.view(torch.int64)


@pytest.mark.parametrize("spec", ["randk:7", "topk:7", "natural", "randk:7+natural"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_aggregate_added_equals_base_plus_mean_bit_for_bit(seed, spec, dtype):
    """g <- aggregate_added(g, ...) over rounds equals g + aggregate(...) of a twin network bit for
    bit, -0.0 in g and in the messages included; with one worker and a sparsifier, rounds after
    the first add in place (the same tensor comes back)."""
    print("seed", seed)
    gen = torch.Generator().manual_seed(seed)
    d = 40
    c = compressors.get(spec)
    net, twin = SimulatedNetwork(1, seed), SimulatedNetwork(1, seed)
    g = torch.randn(d, generator=gen, dtype=dtype)
    g[::3] = -0.0  # a dense round's g may hold -0.0; base + 0 turns it into 0.0
    ref = g.clone()
    for k in range(6):
        X = torch.randn(1, d, generator=gen, dtype=dtype)
        X[0, ::4] = -0.0
        X[0, 1::5] = 0.0
        before = g
        g = net.aggregate_added(g, c, X, k)
        ref = ref + twin.aggregate(c, X, k)
        assert torch.equal(_bits_of(g), _bits_of(ref)), k
        in_place = hasattr(c, "compress_entries") and k > 0
        assert (g is before) == in_place
    assert net.bits_up == twin.bits_up
    # a sum changed by its caller since is not written over (ownership is by tensor version)
    g.mul_(2.0)
    X = torch.randn(1, d, generator=gen, dtype=dtype)
    out = net.aggregate_added(g, c, X, 6)
    assert out is not g and torch.equal(_bits_of(out), _bits_of(g + twin.aggregate(c, X, 6)))


@pytest.mark.parametrize("spec", ["randk:7", "topk:7", "natural"])
@pytest.mark.parametrize("per_coordinate", [False, True])
def test_aggregate_moved_equals_moved_bit_for_bit(seed, spec, per_coordinate):
    """x <- aggregate_moved(x, gamma, ...) equals moved(x, aggregate(...), gamma) of a twin network
    bit for bit (-0.0 in x and in the messages, gamma 0 on some coordinates); an entrusted x and
    the point returned last are written over (one worker, a sparsifier), anything else is not."""
    from marina.methods.base import moved

    print("seed", seed)
    gen = torch.Generator().manual_seed(seed)
    d = 40
    c = compressors.get(spec)
    net, twin = SimulatedNetwork(1, seed), SimulatedNetwork(1, seed)
    x = torch.randn(d, generator=gen, dtype=torch.float64)
    x[::3] = -0.0
    gamma = torch.rand(d, generator=gen, dtype=torch.float64) if per_coordinate else 0.3
    if per_coordinate:
        gamma[::5] = 0.0
    ref, kept = x.clone(), x.clone()
    net.entrust(x)
    for k in range(5):
        X = torch.randn(1, d, generator=gen, dtype=torch.float64)
        X[0, ::4] = -0.0
        before = x
        x = net.aggregate_moved(x, gamma, c, X, k)
        ref = moved(ref, twin.aggregate(c, X, k), gamma)
        assert torch.equal(x.view(torch.int64), ref.view(torch.int64)), k
        assert (x is before) == hasattr(c, "compress_entries")
    assert net.bits_up == twin.bits_up
    # a point not handed over stays as it was
    X = torch.randn(1, d, generator=gen, dtype=torch.float64)
    out = net.aggregate_moved(kept, gamma, c, X, 5)
    assert out is not kept and torch.equal(out, moved(kept, twin.aggregate(c, X, 5), gamma))


@pytest.mark.parametrize("spec", ["topk:7", "randk:7", "natural"])
def test_aggregate_feedback_equals_ef21_steps_bit_for_bit(seed, spec):
    """g <- aggregate_feedback(g, e, ...) equals EF21's steps 4-6 written out (the messages'
    mean and rows of a twin network, e += scale rows, g + weight mean) bit for bit, -0.0 in the
    start and in the gradients; with one worker, a sparsifier and scale = weight = 1 the rounds
    after the first add in place (g comes back itself)."""
    from marina.methods.ef21 import contraction_scale

    print("seed", seed)
    gen = torch.Generator().manual_seed(seed)
    d = 40
    c = compressors.get(spec)
    scale = contraction_scale(c, d)
    net, twin = SimulatedNetwork(1, seed), SimulatedNetwork(1, seed)
    e = torch.randn(1, d, generator=gen, dtype=torch.float64)
    e[0, ::3] = -0.0  # the start g_i^0 = grad f_i(x^0) may hold -0.0
    g = e[0].clone()
    e_ref, g_ref = e.clone(), g.clone()
    for k in range(6):
        grads = torch.randn(1, d, generator=gen, dtype=torch.float64)
        grads[0, ::4] = -0.0
        grads[0, 1::6] = 0.0
        before = g
        g = net.aggregate_feedback(g, e, c, grads - e, k, scale, scale)
        mean, local = twin.aggregate_with_local(c, grads - e_ref, k)
        e_ref.add_(local, alpha=scale)
        g_ref = g_ref + scale * mean
        assert torch.equal(e.view(torch.int64), e_ref.view(torch.int64)), k
        assert torch.equal(g.view(torch.int64), g_ref.view(torch.int64)), k
        assert (g is before) == (hasattr(c, "compress_entries") and scale == 1.0 and k > 0)
    assert net.bits_up == twin.bits_up


def test_aggregate_feedback_underflow_to_minus_zero_keeps_the_full_path():
    """A message value rounded to -0.0 at the wire precision, added to a g_i entry -0.0, leaves
    -0.0 in g_i: the next round is a full one (equal to EF21's steps bit for bit)."""
    c, d = compressors.get("topk:7"), 40
    net, twin = SimulatedNetwork(1, 0), SimulatedNetwork(1, 0)
    e = torch.zeros(1, d, dtype=torch.float64)
    e[0, :7] = -0.0
    g, e_ref, g_ref = e[0].clone(), e.clone(), e[0].clone()
    for k in range(4):
        grads = torch.zeros(1, d, dtype=torch.float64)
        if k < 2:
            grads[0, :7] = -1e-50  # below float32's range: -0.0 on the wire
        else:
            grads[0, 7:14] = 1.0  # other entries sent: the -0.0 ones of g_i only get + 0
        g = net.aggregate_feedback(g, e, c, grads - e, k, 1.0, 1.0)
        mean, local = twin.aggregate_with_local(c, grads - e_ref, k)
        e_ref.add_(local)
        g_ref = g_ref + mean
        assert torch.equal(e.view(torch.int64), e_ref.view(torch.int64)), k
        assert torch.equal(g.view(torch.int64), g_ref.view(torch.int64)), k


@pytest.mark.parametrize("spec", ["randk:7", "natural", "randk:7:seeded"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("per_coordinate", [False, True])
def test_aggregate_shifted_equals_diana_steps_bit_for_bit(seed, spec, dtype, per_coordinate):
    """(x, h) <- aggregate_shifted(x, gamma, h_i, h, ...) equals DIANA's steps 3-7 written out
    (the messages' mean and rows of a twin network, h_i += alpha rows, x - gamma (h + mean),
    h + alpha mean) bit for bit, -0.0 in x and in the gradients, a start of shifts holding -0.0
    included; an entrusted x is written over and, once h_i and h are known to hold no -0.0,
    the shifts are updated in place (one worker, a sparsifier)."""
    from marina.methods.base import moved

    print("seed", seed)
    gen = torch.Generator().manual_seed(seed)
    d, alpha = 40, 0.37
    c = compressors.get(spec)
    net, twin = SimulatedNetwork(1, seed), SimulatedNetwork(1, seed)
    x = torch.randn(d, generator=gen, dtype=dtype)
    x[::3] = -0.0
    gamma = torch.rand(d, generator=gen, dtype=dtype) if per_coordinate else 0.3
    h_i = torch.zeros(1, d, dtype=dtype)
    h_i[0, 1::7] = -0.0  # loaded from elsewhere: the first round takes the full path
    h = h_i[0].clone()
    x_ref, h_i_ref, h_ref = x.clone(), h_i.clone(), h.clone()
    sparse = hasattr(c, "compress_entries")
    for k in range(6):
        grads = torch.randn(1, d, generator=gen, dtype=dtype)
        grads[0, ::4] = -0.0
        net.entrust(x)
        before_x, before_h = x, h
        x, h = net.aggregate_shifted(x, gamma, h_i, h, c, grads - h_i, k, alpha)
        mean, local = twin.aggregate_with_local(c, grads - h_i_ref, k)
        h_i_ref.add_(local, alpha=alpha)
        x_ref = moved(x_ref, h_ref + mean, gamma)
        h_ref = h_ref + alpha * mean
        for got, want in ((x, x_ref), (h_i, h_i_ref), (h, h_ref)):
            assert torch.equal(_bits_of(got), _bits_of(want)), k
        assert (x is before_x) == (sparse and k > 0)
        assert (h is before_h) == (sparse and k > 0)
    assert net.bits_up == twin.bits_up
    # a point not handed over stays as it was
    kept = x.clone()
    out, _ = net.aggregate_shifted(
        kept, gamma, h_i, h, c, torch.randn(1, d, generator=gen, dtype=dtype), 6, alpha
    )
    assert out is not kept


def test_has_negative_zero_finds_exactly_the_negative_zeros():
    from marina.network.base import has_negative_zero

    cases = {
        (1.0, -2.0, float("nan")): False,
        (0.0, 3.0, 0.0): False,
        (0.0, -0.0, 1.0): True,
        (-0.0,): True,
        (float("-inf"), -1e-45, 0.0): False,
    }
    for values, expected in cases.items():
        for dtype in (torch.float32, torch.float64):
            assert has_negative_zero(torch.tensor(values, dtype=dtype)) is expected, (values, dtype)
