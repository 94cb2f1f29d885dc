"""Contract tests for every registered compressor: shapes, wire round trip, bits, errors."""

from __future__ import annotations

import math
import re

import pytest
import torch

import marina
from marina.compressors import Message, get, known
from marina.errors import ConfigError
from marina.rng import Randomness
from test_compressors_common import one_intra_op_thread  # noqa: F401 (autouse fixture)


def _example(template: str, K: str, q: str = "0.5", s: str = "2") -> str:
    """A spec from a template of :func:`known`: ``randk:K:seeded`` -> ``randk:<K>:seeded``."""
    return re.sub(r":([Kqs])\b", lambda m: ":" + {"K": K, "q": q, "s": s}[m.group(1)], template)


def _rng(n: int, seed: int = 0, round: int = 0) -> Randomness:
    return Randomness(seed, "compress", round, range(n))


def test_get_and_spec_canonical():
    assert get("randk:5").spec == "randk:5"
    assert get(" RandK:05 ").spec == "randk:5"
    assert get("identity").spec == "identity"
    assert marina.compressors.get("identity").wire_bits_per_value == 32
    assert get("randk:5", value_dtype=torch.float64).wire_bits_per_value == 64
    c = get("randk:3")
    assert get(c) is c


def test_randk_theory():
    c = get("randk:4")
    assert c.unbiased and not c.correlated
    assert c.omega(10) == pytest.approx(10 / 4 - 1)
    assert c.density(10) == 4
    with pytest.raises(ConfigError, match=r"K == 4 exceeds the dimension d == 3"):
        c.omega(3)
    with pytest.raises(ConfigError, match="alpha"):
        c.alpha(10)


@pytest.mark.parametrize("d", [1, 2, 7, 100, 1000])
def test_randk_message_and_bits(d):
    K = min(d, 5)
    c = get(f"randk:{K}")
    X = torch.randn(3, d, dtype=torch.float64)
    msg = c.compress(X, _rng(3))
    assert isinstance(msg, Message)
    assert msg.bits.dtype == torch.int64 and msg.bits.shape == (3,)
    ib = math.ceil(math.log2(d)) if d > 1 else 0
    assert msg.bits.tolist() == [K * (32 + ib)] * 3
    Xh = c.decompress(msg)
    assert Xh.shape == X.shape and Xh.dtype == X.dtype
    nz = Xh != 0
    assert nz.sum(1).tolist() == [K] * 3
    # kept coordinates are x_j d/K rounded to float32
    expect = (X * (d / K)).to(torch.float32).to(torch.float64)
    assert torch.equal(Xh[nz], expect[nz])


def test_identity_wire_rounding_and_float64():
    X = torch.randn(2, 9, dtype=torch.float64)
    c32 = get("identity")
    Xh, bits = c32.compress_decompress(X, _rng(2))
    assert torch.equal(Xh, X.float().double())
    assert bits.tolist() == [9 * 32] * 2
    Xh64, bits64 = get("identity", value_dtype=torch.float64).compress_decompress(X, _rng(2))
    assert torch.equal(Xh64, X) and bits64.tolist() == [9 * 64] * 2


def test_unknown_spec_lists_known():
    with pytest.raises(ConfigError) as err:
        get("nope:3")
    for name in known():
        assert name in str(err.value)


def test_randk_zero_and_rank_errors():
    with pytest.raises(ConfigError, match=r"K == 0, must be >= 1"):
        get("randk:0")
    c = get("randk:2")
    with pytest.raises(ConfigError, match=r"shape \(5,\).*must be 2-D"):
        c.compress(torch.randn(5), _rng(1))
    with pytest.raises(ConfigError, match="non-finite"):
        c.compress(torch.tensor([[1.0, float("nan"), 2.0]]), _rng(1))


# -- errors: value and constraint in the message ---------------------------------------------------
@pytest.mark.parametrize(
    "spec,pattern",
    [
        ("qsgd:0", r"qsgd: s == 0, must be >= 1"),
        ("qsgd:-3", r"s == -3, must be >= 1"),
        ("qsgd:2.5", r"s == '2.5', must be an integer"),
        ("natural-dithering:0", r"s == 0, must be >= 1"),
        ("natural-dithering:65", r"s == 65, must be <= 64"),
        ("bernoulli:1.5", r"bernoulli: q == 1.5, must be in \(0, 1\]"),
        ("bernoulli:0", r"q == 0, must be in \(0, 1\]"),
        ("bernoulli:-0.1", r"q == -0.1, must be in"),
        ("bernoulli:abc", r"q == 'abc', must be a number"),
        ("topk:0", r"topk: K == 0, must be >= 1"),
        ("identity:3", r"identity: takes no parameter"),
        ("qsgd", r"qsgd: missing parameter s"),
        ("", r"unknown compressor"),
    ],
)
def test_bad_specs(spec, pattern):
    with pytest.raises(ConfigError, match=pattern):
        get(spec)


def test_bad_options():
    with pytest.raises(ConfigError, match="unknown compressor option"):
        get("randk:2", levels=3)
    with pytest.raises(ConfigError, match=r"value_dtype == torch.int32, must be one of"):
        get("randk:2", value_dtype=torch.int32)
    with pytest.raises(ConfigError, match=r"workers == 0, must be >= 1"):
        get("permk", workers=0)
    with pytest.raises(ConfigError, match="must be a string"):
        get(5)


@pytest.mark.parametrize("spec", ["randk:7", "topk:7"])
def test_k_larger_than_d_at_compress_time(spec):
    c = get(spec)
    with pytest.raises(ConfigError, match=r"K == 7 exceeds the dimension d == 5, must be <= d"):
        c.compress(torch.ones(2, 5), _rng(2))
    with pytest.raises(ConfigError, match=r"K == 7 exceeds the dimension d == 5"):
        c.compress_decompress(torch.ones(2, 5), _rng(2))
    with pytest.raises(ConfigError, match=r"K == 7 exceeds the dimension d == 5"):
        c.roundtrip(torch.ones(5))


@pytest.mark.parametrize("spec", known())
def test_input_validation(spec):
    c = get(_example(spec, K="1"), workers=2)
    for bad in (float("nan"), float("inf"), -float("inf")):
        X = torch.ones(2, 4)
        X[1, 2] = bad
        with pytest.raises(ConfigError, match=rf"non-finite value \({bad}\), must be finite"):
            c.compress(X, _rng(2))
        with pytest.raises(ConfigError, match="non-finite"):
            c.compress_decompress(X, _rng(2))
    with pytest.raises(ConfigError, match=r"shape \(4,\) \(1-D\), must be 2-D \(n, d\)"):
        c.compress(torch.ones(4), _rng(1))
    with pytest.raises(ConfigError, match=r"shape \(2, 2, 4\) \(3-D\), must be 2-D"):
        c.compress_decompress(torch.ones(2, 2, 4), _rng(2))
    with pytest.raises(ConfigError, match=r"shape \(2, 2, 2\), must be \(d,\) or \(n, d\)"):
        c.roundtrip(torch.ones(2, 2, 2))
    with pytest.raises(ConfigError, match=r"dtype torch.int64, must be a floating dtype"):
        c.compress(torch.ones(2, 4, dtype=torch.int64), _rng(2))
    with pytest.raises(ConfigError, match=r"X has 2 rows but rng hosts 3 workers"):
        c.compress(torch.ones(2, 4), _rng(3))
    with pytest.raises(ConfigError, match=r"d == 0, must be >= 1"):
        c.compress(torch.ones(2, 0), _rng(2))


def test_permk_needs_workers_and_ids_below_n():
    with pytest.raises(ConfigError, match=r"get\('permk', workers=n\)"):
        get("permk").compress(torch.ones(1, 4), _rng(1))
    with pytest.raises(ConfigError, match=r"workers=n"):
        get("permk").omega(10)
    c = get("permk", workers=8)
    with pytest.raises(ConfigError, match=r"worker ids \[7, 8\] must lie in 0..7"):
        c.compress(torch.ones(2, 10), Randomness(0, "compress", 0, [7, 8]))


def test_wire_overflow_is_reported():
    with pytest.raises(
        ConfigError, match=r"\|x\| up to 1e\+300 exceeds .*float32 wire.*value_dtype=torch.float64"
    ):
        get("identity").compress(torch.full((1, 3), 1e300, dtype=torch.float64), _rng(1))
    get("identity", value_dtype=torch.float64).compress(
        torch.full((1, 3), 1e300, dtype=torch.float64), _rng(1)
    )
    with pytest.raises(ConfigError, match=r"times the scale 1000"):
        get("randk:1").compress(torch.full((1, 1000), 1e36), _rng(1))
    with pytest.raises(ConfigError, match=r"\|\|x\|\| up to .* exceeds"):
        get("qsgd:2").compress(torch.full((1, 100), 1e38), _rng(1))
    with pytest.raises(ConfigError, match=r"exceeds 2\^127"):
        get("natural").compress(torch.full((1, 2), 3e38), _rng(1))
    assert torch.isfinite(get("natural").compress_decompress(torch.full((1, 2), 2.0**127), _rng(1))[0]).all()


def test_decompress_rejects_foreign_messages_and_theory_errors():
    msg = get("randk:1").compress(torch.ones(1, 3), _rng(1))
    with pytest.raises(ConfigError, match="cannot decompress a message made by 'randk:1'"):
        get("randk:2").decompress(msg)
    with pytest.raises(ConfigError, match=r"d == 0, must be an integer >= 1"):
        get("qsgd:2").omega(0)
    with pytest.raises(ConfigError, match=r"topk:3: TopK is biased, so omega is undefined.*alpha\(d\) = K/d"):
        get("topk:3").omega(10)
    with pytest.raises(ConfigError, match="alpha is defined for contractive compressors"):
        get("qsgd:2").alpha(10)


def test_theory_values():
    assert get("identity").omega(7) == 0 and get("identity").alpha(7) == 1 and get("identity").density(7) == 7
    assert get("bernoulli:0.25").omega(9) == pytest.approx(3.0) and get("bernoulli:0.25").density(8) == 2
    assert get("qsgd:2").omega(100) == pytest.approx(min(100 / 4, 10 / 2))
    assert get("qsgd:20").omega(100) == pytest.approx(min(100 / 400, 10 / 20))
    assert get("qsgd:2").density(100) == pytest.approx(2 * (2 + 10))
    assert get("qsgd:50").density(100) == 100
    assert get("natural").omega(10**6) == 1 / 8 and get("natural").density(10) == 10
    a = math.sqrt(100) * 2.0 ** (1 - 3)
    assert get("natural-dithering:3").omega(100) == pytest.approx(1 / 8 + a * min(1, a))
    assert get("natural-dithering:3").density(100) == pytest.approx(min(100, 4 * 10))
    assert get("topk:3").alpha(12) == 0.25 and get("topk:3").density(12) == 3
    assert get("permk", workers=4).omega(12) == 3 and get("permk", workers=4).density(12) == 3
    assert get("natural").wire_bits_per_value == 32
    specs = [_example(s, K="2") for s in known()]
    assert [get(s).unbiased for s in specs] == [True] * 10 + [False] * 2 + [True] * 4
    assert get("terngrad").omega(100) == pytest.approx(4.5) and get("terngrad").density(100) == 100
    assert get("sign").alpha(8) == 1 / 8 and get("sign").density(8) == 8
    # randk:4 at d = 100 keeps 4 values; qsgd:2 of 4 values: omega min(4/4, 2/2) = 1
    assert get("randk:4+qsgd:2").omega(100) == pytest.approx(25 * 2 - 1)
    assert get("randk:4+qsgd:2").density(100) == pytest.approx(min(4, 2 * (2 + 2)))
    assert get("randk:4+natural").omega(100) == pytest.approx(25 * 9 / 8 - 1)
    assert get("bernoulli:0.5").spec == "bernoulli:0.5" and get("qsgd:04").spec == "qsgd:4"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_topk_threshold_selection_is_exactly_torch_topk(seed):
    """The threshold path returns the set torch.topk of |x| returns (sorted), or declines (None)
    on ties at the boundary, at every float width (magnitudes compared as integers of their
    bits); the compressor's selection equals torch.topk's in every case."""
    from marina.compressors.sparse import FAST_TOPK_MIN_D, largest_by_threshold

    print("seed", seed)
    g = torch.Generator().manual_seed(seed)
    d = FAST_TOPK_MIN_D + 12345
    rows = {
        "normal": torch.randn(3, d, generator=g, dtype=torch.float64),
        "heavy tails": torch.randn(2, d, generator=g).pow(5),
        "sorted ramp": torch.linspace(-1, 1, d).reshape(1, d),  # the subsample sees a pattern
        "mostly zeros": torch.randn(1, d, generator=g) * (torch.rand(1, d, generator=g) < 0.005),
        "ties +-a": torch.randint(-3, 4, (1, d), generator=g).float(),
        "float16": torch.randn(1, d, generator=g).half(),
        "bfloat16": torch.randn(1, d, generator=g).bfloat16(),
        "subnormals, -0.0": torch.randn(1, d, generator=g) * 1e-40 * (torch.rand(1, d, generator=g) < 0.5),
    }
    used = 0
    for name, X in rows.items():
        for K in (1, d // 100, d // 16):
            expected = torch.sort(torch.topk(X.abs(), K, dim=1).indices, dim=1).values
            for row, want in zip(X, expected):
                got = largest_by_threshold(row.abs(), K)
                if got is not None:
                    used += 1
                    assert torch.equal(got, want), (name, K)
                    others = row[~torch.isin(torch.arange(d), got)]
                    assert float(row[got].abs().min()) > float(others.abs().max())
            Q = get(f"topk:{K}")
            idx, scale = Q._select(X, Randomness(seed, "compress", 0, torch.arange(X.shape[0])))
            if name != "ties +-a" and name != "mostly zeros":
                assert torch.equal(idx, expected), (name, K)
            else:  # ties: any K largest magnitudes (torch.topk's own tie order is unspecified)
                kept = X.abs().gather(1, idx)
                assert torch.equal(kept.sort(dim=1).values, X.abs().gather(1, expected).sort(dim=1).values)
    assert used >= 12  # the threshold path served the rows without ties


def test_largest_integers_at_any_length(seed):
    """The subsample of blocks fits every length (shorter than a block, not a multiple of the
    blocks, one block per 16 entries): the k largest distinct integers, ascending, as torch.topk."""
    from marina.compressors.sparse import largest_integers

    print("seed", seed)
    g = torch.Generator().manual_seed(seed)
    for d in (1, 7, 16, 17, 1000, 16 * 1024 + 5, 50_000):
        a = torch.randperm(3 * d, generator=g)[:d].to(torch.int32)  # distinct: no ties
        for k in {1, max(1, d // 100), max(1, d // 3), d}:
            got = largest_integers(a, k)
            want = torch.sort(torch.topk(a, k).indices).values
            assert got is None or torch.equal(got, want), (d, k)
            assert got is not None or k > d // 3, (d, k)  # declined only for a large share


@pytest.mark.parametrize("bad", [float("nan"), -float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("d", [500, 70000])
def test_topk_refuses_a_non_finite_entry_wherever_it_is(seed, bad, d):
    """TopK checks only the kept entries (no pass over X for it), which is enough: an infinite
    |x| is the largest, and a NaN is kept too, -NaN (x86's inf - inf) as well (the threshold path
    ranks the magnitudes' bits, NaN's above inf's, and torch.topk ranks NaN first), on the short
    rows' torch.topk and the long rows' threshold path alike; the wire range is that of the
    largest |x|, which TopK always keeps."""
    from marina.errors import ValueRangeError

    print("seed", seed)
    g = torch.Generator().manual_seed(seed)
    Q = get("topk:50")
    for pos in (0, int(torch.randint(1, d - 1, (1,), generator=g)), d - 1):
        X = torch.randn(2, d, generator=g)
        X[1, pos] = bad
        with pytest.raises(ValueRangeError, match="non-finite"):
            Q.compress_sum(X, Randomness(seed, "compress", 0, [0, 1]))
    X = torch.randn(1, d, generator=g, dtype=torch.float64)
    X[0, d // 3] = 1e39  # beyond the float32 wire format
    with pytest.raises(ValueRangeError, match="exceeds"):
        Q.compress_sum(X, Randomness(seed, "compress", 0, [0]))
