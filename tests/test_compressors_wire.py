"""Wire format: exact pack/unpack round trips, payload length == ceil(bits / 8), bit layout."""

from __future__ import annotations

import math

import pytest
import torch

from marina.compressors import get, wire
from marina.compressors.wire import (
    bytes_to_values,
    concat_bits,
    pack_codes,
    split_bits,
    unpack_codes,
    values_to_bytes,
)
from marina.errors import ConfigError
from marina.rng import Randomness
from test_compressors_common import one_intra_op_thread  # noqa: F401 (autouse fixture)

SPECS = [
    "identity",
    "randk:3",
    "randk:9",
    "randk:3:seeded",
    "bernoulli:0.5",
    "qsgd:1",
    "qsgd:5",
    "natural",
    "natural-dithering:3",
    "permk",
    "topk:2",
    "terngrad",
    "sign",
    "randk:3+natural",
    "randk:3+qsgd:2",
    "randk:2:seeded+qsgd:5",
    "randk:3+natural-dithering:2",
    "randk:3+terngrad",
]
WIRE_BITS = {torch.float32: 32, torch.float64: 64, torch.float16: 16, torch.bfloat16: 16}
EXP_BITS = {torch.float32: 8, torch.float64: 11, torch.float16: 5, torch.bfloat16: 8}


def _ib(d: int) -> int:
    return math.ceil(math.log2(d)) if d > 1 else 0


def _expected_bits(c, d: int, msg) -> list[int]:
    """Bits per worker from the documented encodings, computed independently."""
    w = WIRE_BITS[c.value_dtype]
    n = msg.n
    if c.name == "identity":
        return [d * w] * n
    if c.name in ("randk", "topk"):
        return [c.K * (w + (0 if c.seeded else _ib(d)))] * n
    if c.name == "bernoulli":
        return [1 + d * w if bool(s) else 1 for s in msg.data["sent"]]
    if c.name in ("qsgd", "natural-dithering"):
        return [w + d * (1 + math.ceil(math.log2(c.s + 1)))] * n
    if c.name == "natural":
        return [d * (1 + EXP_BITS[c.value_dtype])] * n
    if c.name == "terngrad":  # scale, then sign + one level bit per coordinate
        return [w + 2 * d] * n
    if c.name == "sign":  # scale, then one sign bit per coordinate
        return [w + d] * n
    if c.name == "composed":  # the quantiser's message of the K kept values, plus K indices
        ib = 0 if c.outer.seeded else _ib(d)
        return [b + c.K * ib for b in _expected_bits(c.inner, c.K, msg)]
    if c.name == "permk":  # the block sizes, assigned to the workers by the shared permutation
        nw = c.workers
        sizes = sorted(max(1, (t + 1) * d // nw - t * d // nw) for t in range(nw))
        got = msg.data["sizes"].tolist()
        assert sorted(got) == sizes if len(got) == nw else set(got) <= set(sizes)
        return [s * w for s in got]
    raise AssertionError(c.name)


def _x(n: int, d: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    u = Randomness(seed, "wire-test", 0, range(n)).uniform(d, torch.float64)
    x = torch.tan(math.pi * (u - 0.5))  # heavy tails: many magnitudes
    x[:, ::4] = 0.0
    return x.to(dtype)


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("wire", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_round_trip_exact_and_lengths(seed, spec, wire):
    for dtype in (torch.float32, torch.float64):
        for d in (1, 3, 8, 13, 100):
            for n in (1, 5):
                if spec.startswith(("randk", "topk")) and int(spec.split(":")[1].split("+")[0]) > d:
                    continue
                c = get(spec, value_dtype=wire, workers=n)
                ids = list(range(n))
                X = _x(len(ids), d, dtype, seed + d)
                if wire == torch.float16:
                    X = X.clamp(-100, 100)  # stay inside float16's range after scaling
                rng = lambda ids=ids: Randomness(seed, "compress", 7, ids)
                msg = c.compress(X, rng())
                assert msg.bits.tolist() == _expected_bits(c, d, msg)
                payloads = c.pack(msg)
                assert len(payloads) == len(ids)
                assert [p.dtype for p in payloads] == [torch.uint8] * len(ids)
                assert [p.numel() for p in payloads] == [(b + 7) // 8 for b in msg.bits.tolist()]
                back = c.unpack(payloads, d, worker_ids=ids, dtype=dtype, rng=rng())
                assert torch.equal(back.bits, msg.bits)
                a, b = c.decompress(msg), c.decompress(back)
                fused, bits = c.compress_decompress(X, rng())
                for y in (b, fused):
                    assert y.dtype == dtype and y.shape == X.shape
                    assert torch.equal(a, y) and torch.equal(a.signbit(), y.signbit())
                assert torch.equal(bits, msg.bits)
                # packing the unpacked message gives the same bytes again
                again = c.pack(back)
                assert all(torch.equal(p, q) for p, q in zip(payloads, again))
                # the fused paths of the one-collective aggregation: the same bytes, the same sum
                rows, fused_bits = c.pack_compressed(X, rng())
                assert torch.equal(fused_bits, msg.bits)
                assert all(torch.equal(rows[i, : p.numel()], p) for i, p in enumerate(payloads))
                packed, lengths = c._pack_rows(msg)
                total = c.sum_packed(packed, lengths, d, torch.tensor(ids), dtype, rng())
                want = c.sum_decompressed(msg)
                assert torch.equal(total, want) and torch.equal(total.signbit(), want.signbit())


@pytest.mark.parametrize("spec", SPECS)
def test_roundtrip_convenience(seed, spec):
    c = get(spec, workers=1)
    x = _x(1, 17, torch.float64, seed)[0]
    x_hat, bits = c.roundtrip(x, seed=seed)
    assert x_hat.shape == (17,) and x_hat.dtype == torch.float64 and isinstance(bits, int)
    X_hat, B = c.roundtrip(x[None], seed=seed)
    assert torch.equal(X_hat[0], x_hat) and B.tolist() == [bits]
    if spec == "identity":
        assert torch.equal(x_hat, x.float().double())


@pytest.mark.parametrize("w", list(range(1, 33)))
def test_code_packing_inverts(seed, w):
    for m in (1, 7, 8, 9, 100):
        hi = (1 << w) - 1
        u = Randomness(seed, "codes", w, range(3)).uniform(m, torch.float64)
        codes = torch.floor(u * (hi + 1)).to(torch.int64).clamp(max=hi)
        codes[:, 0] = hi
        raw = pack_codes(codes, w)
        assert raw.shape == (3, (m * w + 7) // 8) and raw.dtype == torch.uint8
        assert torch.equal(unpack_codes(raw, m, w).long(), codes)


@pytest.mark.parametrize("w", [1, 3, 7, 8, 9, 17, 24, 25, 26, 33, 56])
def test_word_small_and_large_code_paths_make_the_same_bytes(seed, w, monkeypatch):
    """Rows of <= 56 bits are packed as one 64-bit word, small segments with numpy's bit
    packing, large ones (and other devices) by the byte plan: the same bytes and the same codes
    on all three paths."""
    for n, m in ((1, 1), (3, 2), (3, 5), (2, 17), (4, 100), (1, 70000)):  # 70000: offsets not kept
        u = Randomness(seed, "codes", w, range(n)).uniform(m, torch.float64)
        codes = torch.floor(u * 2.0**w).to(torch.int64).clamp(max=(1 << w) - 1)
        packed, back = [], []
        for word, small in ((56, 1 << 18), (-1, 1 << 18), (-1, -1)):  # word, numpy bits, byte plan
            monkeypatch.setattr(wire, "_WORD", word)
            monkeypatch.setattr(wire, "_NUMPY_CODES", small)
            packed.append(pack_codes(codes, w))
            back.append(unpack_codes(packed[-1], m, w))
            # a requested dtype: the same codes, of that dtype, on every path
            wide = [(torch.int64, 63), (torch.int32, 31), (torch.int16, 15), (torch.uint8, 8)]
            for dtype in [t for t, most in wide if w <= most]:  # dtypes wide enough for w bits
                asked = unpack_codes(packed[-1], m, w, dtype)
                assert asked.dtype == dtype and torch.equal(asked.long(), codes), (n, m, dtype)
        monkeypatch.undo()
        for raw, codes_back in zip(packed[1:], back[1:]):
            assert torch.equal(packed[0], raw), (n, m)
            assert back[0].dtype == codes_back.dtype and torch.equal(back[0], codes_back)
        assert torch.equal(back[0].long(), codes)


@pytest.mark.parametrize("bits", [1, 7, 9, 39, 49, 64, 114])
def test_messages_back_to_back_at_bit_level(seed, bits):
    """concat_bits: message t at bits [t b, (t + 1) b) of one little-endian integer, checked with
    Python integers; split_bits recovers every message (trailing bits zero) for several ranks."""
    nb = (bits + 7) // 8
    for m in (1, 2, 3, 5):
        u = Randomness(seed, "bytes", bits, range(m)).uniform(nb, torch.float64)
        rows = torch.floor(u * 256).clamp(max=255).to(torch.uint8)
        if bits % 8:
            rows[:, -1] &= (1 << (bits % 8)) - 1  # a packed message's unused high bits are zero
        seg = concat_bits(rows, bits)
        assert seg.shape == ((m * bits + 7) // 8,)
        whole = sum(int.from_bytes(bytes(rows[t].tolist()), "little") << (t * bits) for t in range(m))
        assert int.from_bytes(bytes(seg.tolist()), "little") == whole
        other = concat_bits(rows.flip(0), bits)
        both = torch.stack([seg, other])
        assert torch.equal(split_bits(both, m, bits), torch.cat([rows, rows.flip(0)]))
        # the tensor-op path (GPUs) makes the same bytes
        assert torch.equal(wire._concat_bits_torch(rows, bits), seg)
        assert torch.equal(wire._split_bits_torch(both, m, bits), split_bits(both, m, bits))


def test_code_bit_layout_is_lsb_first():
    # codes 1, 2, 3 of 2 bits -> bits 1,0 | 0,1 | 1,1 -> 1 + 8 + 16 + 32 = 57
    assert pack_codes(torch.tensor([[1, 2, 3]]), 2).tolist() == [[57]]
    # a 9-bit code 0x1FF then 0: bits 0..8 set -> bytes 0xFF, 0x01, then zeros
    assert pack_codes(torch.tensor([[0x1FF, 0]]), 9).tolist() == [[0xFF, 0x01, 0x00]]
    # 24-bit indices 0x123456, 0xABCDEF -> little-endian bytes
    raw = pack_codes(torch.tensor([[0x123456, 0xABCDEF]]), 24)
    assert raw.tolist() == [[0x56, 0x34, 0x12, 0xEF, 0xCD, 0xAB]]


def test_values_are_little_endian_ieee():
    raw = values_to_bytes(torch.tensor([[1.0, -2.0]], dtype=torch.float32))
    assert raw.tolist() == [[0x00, 0x00, 0x80, 0x3F, 0x00, 0x00, 0x00, 0xC0]]
    back = bytes_to_values(raw, 2, torch.float32)
    assert back.tolist() == [[1.0, -2.0]]


def test_randk_payload_by_hand(seed):
    d, K = 5, 2
    c = get(f"randk:{K}")
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]])
    msg = c.compress(x, Randomness(seed, "compress", 0, [0]))
    (p,) = c.pack(msg)
    idx = msg.data["indices"][0].tolist()
    assert idx == sorted(idx) and len(set(idx)) == K
    vals = [x[0, j].item() * d / K for j in idx]
    # K float32 values, then K indices of ceil(log2 5) = 3 bits: 2*32 + 2*3 = 70 bits -> 9 bytes
    assert msg.bits.tolist() == [70] and p.numel() == 9
    assert bytes_to_values(p[None, :8], 2, torch.float32)[0].tolist() == vals
    assert p[8].item() == idx[0] | (idx[1] << 3)


def test_qsgd_payload_by_hand(seed):
    c = get("qsgd:2")
    x = torch.tensor([[3.0, -4.0]])  # norm 5: levels 2*3/5 = 1.2 and 2*4/5 = 1.6
    msg = c.compress(x, Randomness(seed, "compress", 0, [0]))
    (p,) = c.pack(msg)
    # 32-bit norm, then per coordinate sign + 2 level bits: 32 + 2*3 = 38 bits -> 5 bytes
    assert msg.bits.tolist() == [38] and p.numel() == 5
    assert bytes_to_values(p[None, :4], 1, torch.float32).item() == 5.0
    c0, c1 = p[4].item() & 7, (p[4].item() >> 3) & 7
    assert c0 & 1 == 0 and c1 & 1 == 1  # signs
    assert c0 >> 1 in (1, 2) and c1 >> 1 in (1, 2)  # neighbouring levels of 1.2 and 1.6
    x_hat = c.decompress(msg)
    assert x_hat.tolist() == [[2.5 * (c0 >> 1), -2.5 * (c1 >> 1)]]


def test_natural_payload_by_hand(seed):
    c = get("natural")
    x = torch.tensor([[1.0, -0.75, 0.0]])
    msg = c.compress(x, Randomness(seed, "compress", 0, [0]))
    (p,) = c.pack(msg)
    assert msg.bits.tolist() == [27] and p.numel() == 4
    codes = unpack_codes(p[None], 3, 9)[0].tolist()
    assert codes[0] == 127 << 1  # 1.0 = 2^0: biased exponent 127, sign 0
    assert codes[1] in ((126 << 1) | 1, (127 << 1) | 1)  # -0.75 in [2^-1, 2^0): -2^-1 or -1
    assert codes[2] == 0


def test_composed_payload_by_hand(seed):
    """randk:2+natural at d = 5: K codes of 9 + 3 bits, natural code + index << 9, LSB first."""
    c = get("randk:2+natural")
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]])
    msg = c.compress(x, Randomness(seed, "compress", 0, [0]))
    (p,) = c.pack(msg)
    assert msg.bits.tolist() == [24] and p.numel() == 3  # 2 x (9 + 3)
    raw = int.from_bytes(bytes(p.tolist()), "little")
    idx = get("randk:2").compress(x, Randomness(seed, "compress", 0, [0])).data["indices"][0].tolist()
    x_hat = c.decompress(msg)[0]
    for t, j in enumerate(idx):
        code = (raw >> (12 * t)) & 0xFFF
        assert code >> 9 == j
        y = x[0, j].item() * 5 / 2  # the RandK value, then a neighbouring power of two
        lo = 2.0 ** math.floor(math.log2(y))
        assert (code & 1) == 0 and ((code >> 1) & 0xFF) - 127 in (math.log2(lo), math.log2(lo) + 1)
        assert x_hat[j].item() == 2.0 ** (((code >> 1) & 0xFF) - 127)
    assert int((x_hat != 0).sum()) == 2


def test_sign_and_terngrad_payload_by_hand():
    x = torch.tensor([[3.0, -4.0, 0.0, 1.0]])
    c = get("sign")
    msg = c.compress(x, Randomness(0, "compress", 0, [0]))
    (p,) = c.pack(msg)
    assert msg.bits.tolist() == [36] and p.numel() == 5
    assert bytes_to_values(p[None, :4], 1, torch.float32).item() == 2.0  # ||x||_1 / d = 8 / 4
    assert p[4].item() == 0b0010  # the sign bits of 3, -4, 0 (positive), 1
    assert c.decompress(msg).tolist() == [[2.0, -2.0, 2.0, 2.0]]
    t = get("terngrad")
    msg = t.compress(x, Randomness(0, "compress", 0, [0]))
    (p,) = t.pack(msg)
    assert msg.bits.tolist() == [40] and p.numel() == 5
    assert bytes_to_values(p[None, :4], 1, torch.float32).item() == 4.0  # ||x||_inf
    codes = [(p[4].item() >> (2 * j)) & 3 for j in range(4)]
    assert codes[1] == 3 and codes[2] == 0  # -4 = -s always; 0 never sent
    assert t.decompress(msg)[0].tolist() == [4.0 * (c >> 1) * (-1 if c & 1 else 1) for c in codes]


def test_unpack_rejects_wrong_lengths_and_missing_rng():
    c = get("randk:2")
    msg = c.compress(torch.ones(2, 6), Randomness(0, "compress", 0, [0, 1]))
    payloads = c.pack(msg)
    with pytest.raises(ConfigError, match="payload lengths"):
        c.unpack([payloads[0], payloads[1][:-1]], 6)
    with pytest.raises(ConfigError, match="payload lengths"):
        c.unpack(payloads, 600)
    p = get("permk", workers=2)
    msg = p.compress(torch.ones(2, 6), Randomness(0, "compress", 0, [0, 1]))
    with pytest.raises(ConfigError, match="needs rng"):
        p.unpack(p.pack(msg), 6)


def test_permk_receiver_needs_the_senders_call_counter(seed):
    c = get("permk", workers=3)
    X = _x(3, 12, torch.float64, seed)
    msg = c.compress(X, Randomness(seed, "compress", 2, range(3)))
    good = c.decompress(
        c.unpack(c.pack(msg), 12, dtype=X.dtype, rng=Randomness(seed, "compress", 2, range(3)))
    )
    assert torch.equal(good, c.decompress(msg))
    late = Randomness(seed, "compress", 2, range(3))
    late.advance(1)
    wrong = c.decompress(c.unpack(c.pack(msg), 12, dtype=X.dtype, rng=late))
    assert not torch.equal(wrong, good)


@pytest.mark.parametrize("spec", SPECS)
def test_no_rows_hosted(seed, spec):
    """A process hosting no sending worker compresses and unpacks empty batches."""
    c = get(spec, workers=4)
    X = torch.zeros(0, 12, dtype=torch.float64)
    msg = c.compress(X, Randomness(seed, "compress", 0, []))
    assert msg.bits.shape == (0,) and c.pack(msg) == []
    X_hat, bits = c.compress_decompress(X, Randomness(seed, "compress", 0, []))
    assert X_hat.shape == (0, 12) and bits.shape == (0,)
    back = c.unpack([], 12, worker_ids=[], dtype=torch.float64, rng=Randomness(seed, "compress", 0, []))
    assert c.decompress(back).shape == (0, 12)
