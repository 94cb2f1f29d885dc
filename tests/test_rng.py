"""Keyed randomness: key semantics, reference hash, chunk invariance, statistical sanity."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from marina.rng import SHARED, Randomness, bits, distributions, elements, hash32_reference, randomness
from marina.rng import tensors as rng_tensors
from marina.rng.backend import Backend
from marina.rng.small import SMALL, SmallBackend
from marina.rng.tensors import MERGE_ROWS, TensorBackend, tensor_backend
from test_compressors_common import one_intra_op_thread  # noqa: F401 (autouse fixture)

SEEDS = ["random", "random", 0]  # the seed fixture draws a seed for each "random" entry


def _draw_all(rng: Randomness) -> list[torch.Tensor]:
    """One of each drawing method, in a fixed order."""
    return [
        rng.uniform(37, torch.float32),
        rng.uniform(37, torch.float64),
        rng.bits(5),
        rng.words32(9),
        rng.integers(11, 13),
        rng.bernoulli(0.3, 7),
        rng.sample_without_replacement(50, 6),
        rng.sample_without_replacement(10, 8),  # dense path (2k > population)
        rng.permutation(20),
    ]


@pytest.mark.parametrize("seed", SEEDS, indirect=True)
def test_hosting_subset_gives_same_rows(seed):
    full = _draw_all(Randomness(seed, "compress", 4, range(8)))
    part = _draw_all(Randomness(seed, "compress", 4, [3, 5]))
    single = _draw_all(Randomness(seed, "compress", 4, torch.tensor([5])))
    for f, p, s in zip(full, part, single):
        assert torch.equal(f[[3, 5]], p)
        assert torch.equal(f[[5]], s)


@pytest.mark.parametrize("seed", SEEDS, indirect=True)
def test_per_row_populations_do_not_depend_on_other_rows(seed):
    # rows 0 and 3 use the dense method (population <= 4096), the others redraw duplicates
    pops = torch.tensor([10, 5000, 100_000, 3000, 9000, 16])
    full = Randomness(seed, "mb", 2, range(5)).sample_without_replacement(pops[:5], 8)
    for rows in ([1, 3], [0], [2, 4], [3]):
        part = Randomness(seed, "mb", 2, rows).sample_without_replacement(pops[rows], 8)
        assert torch.equal(full[rows], part)
    assert bool((full < pops[:5, None]).all()) and bool((full[:, 1:] > full[:, :-1]).all())
    scalar = Randomness(seed, "mb", 2, range(5)).sample_without_replacement(9000, 8)
    assert torch.equal(scalar[4], full[4])


def test_each_call_advances_counter_by_one():
    rng = Randomness(1, "s", 0, range(3))
    draws = _draw_all(rng)
    assert rng.calls == len(draws)
    e = Randomness(1, "s", 0, range(3))
    e.elements()
    assert e.calls == 1


def test_reference_hash_matches_tensor_code():
    rng = Randomness(123, "ref", 9, [0, 7, SHARED])
    keys = rng._next_keys()
    k1, k2 = bits.split32(keys)
    words = rng.words32(300)
    for r in range(3):
        # k1, k2 are the low and high 32-bit halves of the 64-bit call key
        key = int(keys[r]) & ((1 << 64) - 1)
        assert (int(k1[r]) & 0xFFFFFFFF) == key & 0xFFFFFFFF
        assert (int(k2[r]) & 0xFFFFFFFF) == key >> 32
        for j in list(range(20)) + [149, 299]:
            assert int(words[r, j]) & 0xFFFFFFFF == hash32_reference(j, int(k1[r]), int(k2[r]))


def test_uniform_is_exact_function_of_words():
    rng = Randomness(5, "u", 1, range(2))
    words = rng.words32(100)
    u = Randomness(5, "u", 1, range(2)).uniform(100, torch.float32)
    # the top 24 bits as a signed number s, u = s / 2^24 + 1/2 = ((w >>> 8) xor 2^23) / 2^24
    expect = (((words.to(torch.int64) & 0xFFFFFFFF) >> 8) ^ (1 << 23)).to(torch.float64) / 2**24
    assert torch.equal(u.double(), expect)
    # float64: the top 53 bits of the SplitMix64 word at state key + (j + 1) * golden
    rng = Randomness(5, "u", 1, range(2))
    keys = rng._next_keys()
    u64 = rng.uniform(100, torch.float64)
    for r in range(2):
        key = int(keys[r]) & ((1 << 64) - 1)
        expect = [(bits.mix_int(key + (j + 1) * 0x9E3779B97F4A7C15) >> 11) / 2**53 for j in range(100)]
        assert u64[r].tolist() == expect
    words = Randomness(5, "u", 1, range(2)).bits(100)
    assert torch.equal((words >> 11) & ((1 << 53) - 1), (u64 * 2**53).to(torch.int64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chunking_and_pieces_do_not_change_draws(monkeypatch, dtype):
    ref = Randomness(2, "c", 3, range(3)).uniform(1000, dtype)
    monkeypatch.setattr(elements, "CPU_CHUNK", 64)  # many chunks, ragged last one
    assert torch.equal(Randomness(2, "c", 3, range(3)).uniform(1000, dtype), ref)
    e = Randomness(2, "c", 3, range(3)).elements()
    pieces = torch.cat([e.uniform(a, min(1000, a + 77), dtype) for a in range(0, 1000, 77)], dim=1)
    assert torch.equal(pieces, ref)


def test_keys_separate_seed_stream_round_worker_call():
    base = Randomness(0, "a", 0, [0]).uniform(64)
    others = [
        Randomness(1, "a", 0, [0]).uniform(64),
        Randomness(0, "b", 0, [0]).uniform(64),
        Randomness(0, "a", 1, [0]).uniform(64),
        Randomness(0, "a", 0, [1]).uniform(64),
    ]
    second = Randomness(0, "a", 0, [0])
    second.uniform(64)
    others.append(second.uniform(64))
    for o in others:
        assert not torch.equal(o, base)
    assert torch.equal(Randomness(0, "a", 0, [0]).uniform(64), base)


def test_shared_is_the_shared_key_at_the_current_counter():
    rng = Randomness(4, "s", 2, [1, 2])
    rng.uniform(3)
    sh = rng.shared()
    ref = Randomness(4, "s", 2, [SHARED])
    ref.advance(1)
    assert torch.equal(sh.uniform(10), ref.uniform(10))


def _z(mean: float, expect: float, var: float, count: int) -> float:
    return abs(mean - expect) / math.sqrt(var / count)


@pytest.mark.parametrize("seed", SEEDS, indirect=True)
def test_uniform_moments_and_bits_balanced(seed):
    n, m = 8, 50_000
    N = n * m
    for dtype in (torch.float32, torch.float64):
        u = Randomness(seed, "stat", 0, range(n)).uniform(m, dtype).double()
        assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
        assert _z(float(u.mean()), 0.5, 1 / 12, N) < 6
        # E u^2 = 1/3, Var u^2 = 1/5 - 1/9
        assert _z(float((u * u).mean()), 1 / 3, 1 / 5 - 1 / 9, N) < 6
        # lag-1 correlation within rows and correlation between neighbouring rows
        c = u - 0.5
        assert _z(float((c[:, 1:] * c[:, :-1]).mean()), 0.0, 1 / 144, n * (m - 1)) < 6
        assert _z(float((c[1:] * c[:-1]).mean()), 0.0, 1 / 144, (n - 1) * m) < 6
    w = Randomness(seed, "stat", 1, range(n)).words32(m).to(torch.int64) & 0xFFFFFFFF
    for b in range(32):
        p = float(((w >> b) & 1).double().mean())
        assert _z(p, 0.5, 0.25, N) < 6


@pytest.mark.parametrize("seed", SEEDS, indirect=True)
def test_uniform_histogram_chi_square(seed):
    u = Randomness(seed, "hist", 0, range(4)).uniform(100_000, torch.float32).reshape(-1)
    bins = 256
    counts = torch.bincount((u * bins).long(), minlength=bins).double()
    expect = u.numel() / bins
    chi2 = float(((counts - expect) ** 2 / expect).sum())
    # chi-square with 255 dof: mean 255, sd sqrt(510) ~ 22.6; 6 sd
    assert abs(chi2 - (bins - 1)) < 6 * math.sqrt(2 * (bins - 1))


@pytest.mark.parametrize("seed", SEEDS, indirect=True)
def test_sample_without_replacement_is_uniform(seed):
    pop, k, n = 30, 4, 2000
    idx = Randomness(seed, "swr", 0, range(n)).sample_without_replacement(pop, k)
    assert idx.shape == (n, k)
    assert bool((idx[:, 1:] > idx[:, :-1]).all())  # sorted, no duplicates
    assert int(idx.min()) >= 0 and int(idx.max()) < pop
    freq = torch.bincount(idx.reshape(-1), minlength=pop).double() / n
    p = k / pop
    assert float((freq - p).abs().max()) < 6 * math.sqrt(p * (1 - p) / n)
    # the duplicate-redraw method (population > 4096): inclusion uniform over 10 buckets
    pop, k = 50_000, 4
    idx = Randomness(seed, "swr", 1, range(n)).sample_without_replacement(pop, k)
    assert bool((idx[:, 1:] > idx[:, :-1]).all()) and int(idx.max()) < pop
    freq = torch.bincount(idx.reshape(-1) * 10 // pop, minlength=10).double() / (n * k)
    assert float((freq - 0.1).abs().max()) < 6 * math.sqrt(0.1 * 0.9 / (n * k))
    per_row = Randomness(seed, "swr", 0, range(3)).sample_without_replacement(torch.tensor([5, 9, 7]), 5)
    assert bool((per_row < torch.tensor([[5], [9], [7]])).all())


@pytest.mark.parametrize("seed", SEEDS, indirect=True)
def test_permutation(seed):
    n, size = 3000, 6
    perm = Randomness(seed, "perm", 0, range(n)).permutation(size)
    assert torch.equal(torch.sort(perm, dim=1).values, torch.arange(size).expand(n, size))
    first = torch.bincount(perm[:, 0], minlength=size).double() / n
    assert float((first - 1 / size).abs().max()) < 6 * math.sqrt((1 / size) * (1 - 1 / size) / n)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_draws_equal_cpu_draws():
    cpu = _draw_all(Randomness(7, "dev", 2, [0, 3, SHARED]))
    gpu = _draw_all(Randomness(7, "dev", 2, [0, 3, SHARED], device="cuda"))
    for c, g in zip(cpu, gpu):
        assert torch.equal(c, g.cpu())


# -- the small-draw path (Python ints) against the tensor code ----------------------------------
# (SMALL_ROWS, SMALL_ELEMENTS): "tensor" forces the tensor code for keys and draws, "python" the
# Python ints for every call, "default" the shipped thresholds
_MODES = {  # (SMALL_ROWS, SMALL_ELEMENTS, tensors.FUSED_SPARSE)
    "tensor": (0, -1, True),
    "python": (10**6, 10**9, True),
    "default": (randomness.SMALL_ROWS, randomness.SMALL_ELEMENTS, True),
    "unfused": (0, -1, False),  # one CPU row's sparse draw by the generic steps
}
_FLOATS = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def _in_mode(monkeypatch, mode: str, draw, *args):
    """draw(*args) (which makes its Randomness objects) with the thresholds of ``mode``."""
    key_rows, small_elements, fused = _MODES[mode]
    monkeypatch.setattr(randomness, "SMALL_ROWS", key_rows)
    monkeypatch.setattr(randomness, "SMALL_ELEMENTS", small_elements)
    monkeypatch.setattr(rng_tensors, "FUSED_SPARSE", fused)
    return draw(*args)


def _assert_same(results: dict[str, list]) -> None:
    ref = results["tensor"]
    for mode, got in results.items():
        assert len(got) == len(ref)
        for i, (a, b) in enumerate(zip(ref, got)):
            if isinstance(a, torch.Tensor):
                assert a.dtype == b.dtype and a.shape == b.shape, (mode, i)
                assert torch.equal(a, b), (mode, i)
            else:
                assert a == b, (mode, i)


def _every_method(key: tuple, ids, pops: torch.Tensor) -> list:
    """Every drawing method at column counts around the small-draw threshold."""
    rng = Randomness(*key, ids)
    out: list = [rng._next_keys()]
    for cols in (0, 1, 2, 5, 128 // max(1, rng.n_rows), 129):
        out += [rng.uniform(cols, dtype) for dtype in _FLOATS]
        out += [rng.bits(cols), rng.words32(cols), rng.bernoulli(0.3, cols), rng.bernoulli(1, cols)]
        out.append(rng.bernoulli(torch.tensor(0.7), cols))
        out += [rng.integers(1000, cols), rng.integers(pops, cols), rng.integers(torch.tensor([7]), cols)]
    out += [rng.permutation(size) for size in (1, 5, 40)]
    for pop, k in ((1, 1), (3, 1), (3, 2), (3, 3), (123, 1), (123, 2), (5000, 1), (5000, 2), (5000, 40)):
        out.append(rng.sample_without_replacement(pop, k))
    out += [rng.sample_without_replacement(10**6, k) for k in (1, 8)]
    out += [rng.sample_without_replacement(pops, k) for k in (1, 2, 3)]
    out.append(rng.calls)
    return out


@pytest.mark.parametrize("rows", [1, 2, 31, 32, 33])
@pytest.mark.parametrize("seed", SEEDS, indirect=True)
def test_small_draw_path_equals_tensor_code(monkeypatch, seed, rows):
    gen = random.Random(seed * 100 + rows)
    ids = gen.sample(range(-1, 2000), rows)
    # per-row populations: dense (<= 4096) and sparse rows mixed
    pops = torch.tensor([gen.choice([3, 50, 123, 5000, 9000, 10**6]) for _ in range(rows)])
    for stream, rnd in (("compress", gen.randrange(10**6)), ("minibatch", 0)):
        key = (seed, stream, rnd)
        results = {mode: _in_mode(monkeypatch, mode, _every_method, key, ids, pops) for mode in _MODES}
        # worker ids given as an int32 tensor key the same draws
        as_tensor = torch.tensor(ids, dtype=torch.int32)
        results["int32 ids"] = _in_mode(monkeypatch, "default", _every_method, key, as_tensor, pops)
        _assert_same(results)


def _swr_with_initial(key: tuple, ids, pop: int | torch.Tensor, k: int) -> list[torch.Tensor]:
    """sample_without_replacement after one call and, from a twin at the same counter, its first
    draw with replacement (the sparse method's first attempt is floor(u population) of the call)."""
    rng, twin = Randomness(*key, ids), Randomness(*key, ids)
    rng.uniform(1)
    twin.advance(1)
    return [rng.sample_without_replacement(pop, k), twin.integers(pop, k)]


@pytest.mark.parametrize("seed", SEEDS, indirect=True)
def test_small_draw_path_duplicate_redraws(monkeypatch, seed):
    ids = list(range(0, 64, 2))
    cases = [(5000, 40), (30, 15), (50, 20), (torch.tensor([30, 50, 40, 5000] * 8), 15)]
    for dense_population in (distributions.DENSE_POPULATION, 0):  # 0: every k >= 2 row redraws duplicates
        monkeypatch.setattr(distributions, "DENSE_POPULATION", dense_population)
        for pop, k in cases:
            key = (seed, "redraw", 3)
            res = {mode: _in_mode(monkeypatch, mode, _swr_with_initial, key, ids, pop, k) for mode in _MODES}
            _assert_same(res)
            idx, first = res["tensor"]
            popc = pop[:, None] if isinstance(pop, torch.Tensor) else pop
            assert bool((idx[:, 1:] > idx[:, :-1]).all()) and bool((idx >= 0).all() & (idx < popc).all())
            if dense_population == 0:
                first = torch.sort(first, dim=1).values
                clean = (first[:, 1:] != first[:, :-1]).all(dim=1)
                # the redraw loop ran (duplicates in a first draw of k from <= 50; 40 of 5000 has
                # none in all 32 rows with probability 0.86^32 ~ 1%), and rows drawn without
                # duplicates the first time keep that draw
                if not isinstance(pop, int) or pop <= 50:
                    assert not bool(clean.all())
                assert torch.equal(idx[clean], first[clean])


@pytest.mark.parametrize("rows", [1, 3, MERGE_ROWS, MERGE_ROWS + 1])
@pytest.mark.parametrize("seed", SEEDS, indirect=True)
def test_redraws_merged_into_few_rows_equal_the_python_draws(monkeypatch, seed, rows):
    """Up to MERGE_ROWS rows with redraws merge the redrawn entries into the sorted rest; more
    rows sort again: both equal the small backend's sort of the redrawn rows."""
    monkeypatch.setattr(distributions, "DENSE_POPULATION", 0)  # every row redraws duplicates
    ids = list(range(5, 5 + 3 * rows, 3))
    # k large enough that the first row's first draw has duplicates for any seed (no duplicate in
    # k of pop with probability prod_{i<k} (1 - i/pop): 2e-7, 4e-30 and 6e-10 here)
    for pop, k in ((40, 30), (5000, 800), (torch.tensor([30, 5000, 45][:rows] * rows)[:rows], 28)):
        key = (seed, "merge", 7)
        res = {mode: _in_mode(monkeypatch, mode, _swr_with_initial, key, ids, pop, k) for mode in _MODES}
        _assert_same(res)
        idx, first = res["tensor"]
        first = torch.sort(first, dim=1).values
        assert not bool((first[:, 1:] != first[:, :-1]).all())  # some row redrew


@pytest.mark.parametrize("seed", SEEDS, indirect=True)
def test_one_row_fused_sparse_draw_equals_the_generic_steps(monkeypatch, seed):
    """One CPU row draws the sparse method in one fused NumPy pass: the same indices as the
    generic steps and the Python draws, redraws included (pops from 40, where a first draw of 30
    has duplicates for any seed, to 2^40, where the fused pass multiplies by pop 2^-53 once)."""
    monkeypatch.setattr(distributions, "DENSE_POPULATION", 0)  # small pops take the sparse method
    gen = random.Random(seed)
    for pop, k in ((40, 30), (5000, 800), (1185026, 11850), (2**40, 300), (10**6, 2), (10**6, 1)):
        key, ids = (seed, "fused", gen.randrange(10**6)), [gen.randrange(100)]
        res = {mode: _in_mode(monkeypatch, mode, _swr_with_initial, key, ids, pop, k) for mode in _MODES}
        _assert_same(res)
        idx, first = res["tensor"]
        assert bool((idx[:, 1:] > idx[:, :-1]).all()) and 0 <= int(idx.min()) and int(idx.max()) < pop
        first = torch.sort(first, dim=1).values
        if pop == 40:  # the redraw loop ran
            assert not bool((first[:, 1:] != first[:, :-1]).all())


@pytest.mark.parametrize("seed", SEEDS, indirect=True)
def test_fused_sparse_draw_in_chunks_equals_the_whole_row(monkeypatch, seed):
    """A row longer than a chunk is hashed chunk by chunk, with Weyl increments past the kept
    table computed: the same indices as the generic steps (here with chunks of 1000 and a table
    of 1500 entries, for a row of 5000)."""
    print("seed", seed)
    monkeypatch.setattr(rng_tensors, "CPU_CHUNK", 1000)
    monkeypatch.setattr(rng_tensors, "_WEYL_KEPT", 1500)
    monkeypatch.setattr(rng_tensors, "_WEYL_U64", [np.empty(0, dtype=np.uint64)])
    key = (seed, "chunks", 1)
    res = {mode: _in_mode(monkeypatch, mode, _swr_with_initial, key, [3], 10**6, 5000) for mode in _MODES}
    _assert_same(res)


@pytest.mark.parametrize("seed", SEEDS, indirect=True)
def test_single_sample_is_one_integer_per_row(seed):
    # k = 1 never has duplicates: the sample is floor(u population) of the call, for both paths
    for rows in (5, 40):
        for pop in (123, 5000, 10**6, torch.arange(7, 7 + rows)):
            a, b = _swr_with_initial((seed, "k1", 2), range(rows), pop, 1)
            assert torch.equal(a, b)


def test_worker_ids_stay_an_int64_tensor():
    for ids in ([3, 5], range(3, 6, 2), torch.tensor([3, 5], dtype=torch.int32), torch.tensor([[3], [5]])):
        rng = Randomness(0, "w", 0, ids)
        assert rng.worker_ids.dtype == torch.int64 and rng.worker_ids.device.type == "cpu"
        assert rng.worker_ids.tolist() == [3, 5]


def test_array_backends_agree_on_64_bit_words():
    """Both backends give the same signed 64-bit words for the same call keys: the reference
    SplitMix64 of the Weyl sequence (the tensor backend once ignored a request for unsigned words)."""
    rng = Randomness(11, "w64", 2, [0, 5, SHARED])
    keys = rng._next_keys()
    ints = [int(k) & bits.MASK64 for k in keys]
    ref = [bits.signed(bits.mix_int(key + j * bits.GOLDEN_U)) for key in ints for j in range(1, 7)]
    assert min(ref) < 0 < max(ref)
    tensors = tensor_backend(torch.device("cpu"))
    assert SMALL.words64(ints, 6) == ref
    assert tensors.words64(keys, 6).reshape(-1).tolist() == ref
    # an element formula sees the same word mod 2^64 in both (unsigned in the small backend)
    keys63 = [(w & bits.MASK64) >> 1 for w in ref]
    assert SMALL.words64(ints, 6, bits.key63) == keys63
    assert tensors.words64(keys, 6, bits.key63).reshape(-1).tolist() == keys63


def test_backends_offer_exactly_the_interface():
    """The distributions reach a backend only through ``Backend``'s operations."""
    interface = set(Backend.__abstractmethods__)
    for cls in (SmallBackend, TensorBackend):
        public = {name for name in vars(cls) if not name.startswith("_")}
        assert public == interface, cls.__name__


@pytest.mark.parametrize("seed", SEEDS, indirect=True)
def test_one_row_cpu_sort_and_key_mix_equal_the_plain_forms(seed):
    # the CPU's one-row sort (grouping by the top 16 bits, then a merge sort) and NumPy key mix
    # against torch's sort and the Python-int SplitMix64 finaliser
    gen = torch.Generator().manual_seed(seed)
    arrays = tensor_backend(torch.device("cpu"))
    for low, high, n in (
        (0, 300, 50),
        (0, 1 << 16, 3000),
        (0, 1185026, 11850),
        (0, 1 << 40, 5000),
        (-99, 99, 40),
    ):
        x = torch.randint(low, high, (1, n), generator=gen)
        assert torch.equal(arrays.sort(x, n), torch.sort(x, dim=1).values)
    z = torch.randint(-(1 << 63), (1 << 63) - 1, (7,), generator=gen)
    assert [bits.signed(v) for v in map(bits.mix_int, z.tolist())] == bits.mix64(z).tolist()
