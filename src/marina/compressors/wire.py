"""Bit-exact wire encoding helpers shared by all compressors.

Conventions (every compressor's payload is a concatenation of these segments):

- **Values** travel as IEEE 754 numbers of the wire dtype, little-endian byte order
  (:func:`values_to_bytes`); 16, 32 or 64 bits each, so these segments are byte aligned and
  always come first in a payload.
- **Unsigned codes** of ``w`` bits (indices, quantisation levels with their sign bit, exponents,
  flags) are packed back to back, least significant bit first: code t occupies bits
  ``[t w, (t + 1) w)`` of the segment, bit ``b`` of the segment is bit ``b % 8`` of byte
  ``b // 8`` (:func:`pack_codes`). At most one such segment ends a payload, so a payload of
  ``bits`` bits occupies exactly ``ceil(bits / 8)`` bytes.

Everything is vectorised over the worker rows and processed in column chunks, so packing a
(16, 10^7) message never materialises one byte per bit (small segments on the CPU hold one
byte per bit, up to about :data:`_NUMPY_CODES` codes, more of wide codes).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "index_bits",
    "code_bits",
    "values_to_bytes",
    "bytes_to_values",
    "pack_codes",
    "unpack_codes",
    "concat_bits",
    "split_bits",
]

_CHUNK = 1 << 20  # elements per row-block processed at once
_NUMPY_CODES = 1 << 13
"""CPU segments of c codes (all rows) of w bits are packed by numpy's bit packing
(:func:`_pack_np`: 32 or 64 bytes of work per code, whatever w) while c (31 - w) <= 32 times
this (c <= 8192 codes of 3 bits, about 26000 of 21 bits; at most 32 times this for w >= 30);
larger ones, and other devices, through the byte plan of tensor operations, whose cost grows
with the bits plus a fixed part (benchmarks/codes.py prints both paths). Same bytes
(tests/test_compressors_wire.py compares the paths for every width)."""


def _numpy_codes(codes: int, w: int) -> bool:
    """Whether numpy packs ``codes`` codes of ``w`` bits (see :data:`_NUMPY_CODES`)."""
    return codes * max(1, 31 - w) <= 32 * _NUMPY_CODES


def _numpy_unpack(codes: int) -> bool:
    """Whether numpy unpacks ``codes`` codes (:func:`_unpack_np`: one read, shift and mask per
    code, whatever w; faster than the byte plan at every size measured): up to 128 times
    :data:`_NUMPY_CODES` (the byte plan beyond, in chunks)."""
    return 0 <= codes <= 128 * _NUMPY_CODES


_WORD = 56
"""Rows of at most this many code bits are packed as one little-endian 64-bit word each:
code t shifted to bit t w (the layout below, byte b of the word being byte b of the row)."""


_NUMPY_FLOATS = {torch.float64: "<f8", torch.float32: "<f4", torch.float16: "<f2"}
"""Wire dtypes numpy reads directly (little-endian); bfloat16 goes through tensor views."""


def _word_dtype(w: int) -> str:
    return "<u4" if w <= 32 else "<u8"


def _pack_word(codes: Tensor, w: int, nbytes: int) -> Tensor:
    """:func:`pack_codes` of rows of at most :data:`_WORD` bits: one integer per row."""
    c = codes.numpy().astype("<u8")
    word = c[:, 0] if c.shape[1] == 1 else (c << (np.arange(c.shape[1], dtype="<u8") * w)).sum(axis=1)
    return torch.from_numpy(np.ascontiguousarray(word.view(np.uint8).reshape(-1, 8)[:, :nbytes]))


def _unpack_word(data: np.ndarray, m: int, w: int) -> np.ndarray:
    """The (n, m) codes of rows of at most :data:`_WORD` bits (the inverse of :func:`_pack_word`)."""
    buf = np.zeros((data.shape[0], 8), dtype=np.uint8)
    buf[:, : data.shape[1]] = data
    return (buf.view("<u8") >> (np.arange(m, dtype="<u8") * w)) & np.uint64((1 << w) - 1)


def _pack_np(codes: Tensor, w: int, nbytes: int) -> Tensor:
    """:func:`pack_codes` on the CPU: each code's w low bits (numpy ``unpackbits`` of its
    little-endian bytes, LSB first) packed back to back with ``packbits``."""
    n, m = codes.shape
    if m * w <= _WORD:
        return _pack_word(codes, w, nbytes)
    dt = _word_dtype(w)
    c = codes.numpy().astype(dt)
    bits = np.unpackbits(c.view(np.uint8).reshape(n, m, c.itemsize), axis=2, bitorder="little")
    return torch.from_numpy(np.packbits(bits[:, :, :w].reshape(n, m * w), axis=1, bitorder="little"))


_NUMPY_INTS = {torch.uint8: np.uint8, torch.int16: np.int16, torch.int32: np.int32, torch.int64: np.int64}


def _unpack_np(raw: Tensor, m: int, w: int, nbytes: int, dtype: torch.dtype) -> Tensor:
    """:func:`unpack_codes` on the CPU (the inverse of :func:`_pack_np`), codes of ``dtype``."""
    n = raw.shape[0]
    data = raw[:, :nbytes].numpy()
    if data.shape[1] < nbytes:  # a short payload (rejected by the caller's length check)
        data = np.pad(data, ((0, 0), (0, nbytes - data.shape[1])))
    if m * w <= _WORD:
        out = _unpack_word(data, m, w)
    else:
        # code t is bits [t w, t w + w): the little-endian word read at byte (t w) >> 3 (one
        # unaligned read per code, from a view whose entries start at every byte) shifted right
        # by (t w) & 7, masked; 4 bytes hold 7 + w bits up to w = 25, 8 bytes up to w = 57
        dt = np.dtype("<u4" if w <= 25 else "<u8")
        padded = np.zeros((n, nbytes + dt.itemsize), dtype=np.uint8)
        padded[:, :nbytes] = data
        words = np.ndarray((n, nbytes + 1), dtype=dt, buffer=padded, strides=(padded.strides[0], 1))
        at, shift = _code_offsets(m, w, dt)
        out = np.take(words, at, axis=1)
        out >>= shift
        out &= dt.type((1 << w) - 1)
    return torch.from_numpy(out.astype(_NUMPY_INTS[dtype]))


_OFFSETS: dict[tuple[int, int, np.dtype], tuple[np.ndarray, np.ndarray]] = {}


def _code_offsets(m: int, w: int, dt: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """(the byte where code t starts, its bit within that byte) for t < m codes of w bits (kept
    for the last few (m, w): a run reads codes of the same sizes every round)."""
    key = (m, w, dt)
    hit = _OFFSETS.get(key)
    if hit is None:
        bit = np.arange(m, dtype=np.int64) * w
        hit = (bit >> 3, (bit & 7).astype(dt))
        if m <= 1 << 16:  # kept: at most 4 x 2^16 x 16 bytes
            if len(_OFFSETS) >= 4:
                _OFFSETS.clear()
            _OFFSETS[key] = hit
    return hit


def index_bits(d: int) -> int:
    """Bits of one index into {0, ..., d-1}: ceil(log2 d) (0 for d = 1)."""
    return (int(d) - 1).bit_length()


def code_bits(levels: int) -> int:
    """Bits of one code with ``levels`` possible values: ceil(log2 levels)."""
    return (int(levels) - 1).bit_length()


def values_to_bytes(values: Tensor) -> Tensor:
    """(n, m) floats of the wire dtype -> (n, m * itemsize) uint8, little-endian."""
    v = values.contiguous()
    if v.numel() == 0:
        size = torch.finfo(v.dtype).bits // 8
        return torch.empty((v.shape[0], v.shape[1] * size), dtype=torch.uint8, device=v.device)
    return v.view(torch.uint8)


def bytes_to_values(raw: Tensor, m: int, dtype: torch.dtype) -> Tensor:
    """Inverse of :func:`values_to_bytes`: the first ``m * itemsize`` bytes of each row."""
    size = torch.finfo(dtype).bits // 8
    if m == 0:
        return torch.empty((raw.shape[0], 0), dtype=dtype, device=raw.device)
    if raw.device.type == "cpu" and dtype in _NUMPY_FLOATS and raw.shape[1] >= m * size:  # one numpy copy
        return torch.from_numpy(raw.numpy()[:, : m * size].copy().view(_NUMPY_FLOATS[dtype]))
    n = raw.shape[0]
    # reshape(-1) copies unless the bytes are one contiguous run (then it is a view)
    flat = raw[:, : m * size].reshape(-1)
    if flat.storage_offset() % size:
        flat = flat.clone()
    return flat.view(dtype).reshape(n, m)


def _plan(w: int) -> list[tuple[int, list[tuple[int, int]]]]:
    """For a group of 8 codes of w bits (= w bytes): byte b <- [(code t, shift lo_t - 8b)]."""
    plan = []
    for b in range(w):
        parts = []
        for t in range(8):
            lo = t * w
            if lo < 8 * b + 8 and lo + w > 8 * b:
                parts.append((t, lo - 8 * b))
        plan.append((b, parts))
    return plan


def pack_codes(codes: Tensor, w: int) -> Tensor:
    """(n, m) non-negative integer codes < 2^w -> (n, ceil(m w / 8)) uint8, LSB first.

    Eight codes of w bits fill exactly w bytes; byte b of a group collects the codes that
    overlap it, shifted into place (left for a code starting inside the byte, right for one
    started in an earlier byte).
    """
    n, m = codes.shape
    nbytes = (m * w + 7) // 8
    if w > 56:
        raise ValueError(f"code width w == {w}, must be <= 56")
    if w and m and _numpy_codes(n * m, w) and codes.device.type == "cpu":
        return _pack_np(codes, w, nbytes)
    out = torch.zeros((n, nbytes), dtype=torch.uint8, device=codes.device)
    if w == 0 or m == 0:
        return out
    work = torch.int32 if w <= 24 else torch.int64
    groups = (m + 7) // 8
    step = max(1, _CHUNK // max(1, 8 * n))
    plan = _plan(w)
    full = torch.zeros((n, groups * w), dtype=torch.uint8, device=codes.device).view(n, groups, w)
    for g0 in range(0, groups, step):
        g1 = min(groups, g0 + step)
        c = codes[:, g0 * 8 : min(m, g1 * 8)].to(work)
        if c.shape[1] < (g1 - g0) * 8:
            c = torch.nn.functional.pad(c, (0, (g1 - g0) * 8 - c.shape[1]))
        c = c.view(n, g1 - g0, 8)
        for b, parts in plan:
            acc = None
            for t, shift in parts:
                part = c[:, :, t] << shift if shift >= 0 else c[:, :, t] >> (-shift)
                acc = part if acc is None else acc.bitwise_or_(part)
            full[:, g0:g1, b] = (acc & 0xFF).to(torch.uint8)
    out.copy_(full.reshape(n, groups * w)[:, :nbytes])
    return out


def unpack_codes(raw: Tensor, m: int, w: int, dtype: torch.dtype | None = None) -> Tensor:
    """Inverse of :func:`pack_codes`: (n, >= ceil(m w / 8)) uint8 -> (n, m) codes.

    Codes of ``dtype`` (uint8, int16, int32 or int64, wide enough for w bits); by default int32
    for w <= 24 (half the memory of int64 on large dense messages), int64 above.
    """
    n = raw.shape[0]
    work = torch.int32 if w <= 24 else torch.int64
    dtype = work if dtype is None else dtype
    if w == 0 or m == 0:
        return torch.zeros((n, m), dtype=dtype, device=raw.device)
    nbytes = (m * w + 7) // 8
    groups = (m + 7) // 8
    if _numpy_unpack(n * m) and raw.device.type == "cpu":
        return _unpack_np(raw, m, w, nbytes, dtype)
    data = raw[:, :nbytes]
    if data.shape[1] < groups * w:
        data = torch.nn.functional.pad(data, (0, groups * w - data.shape[1]))
    data = data.reshape(n, groups, w)
    mask = (1 << w) - 1
    out = torch.empty((n, groups, 8), dtype=work, device=raw.device)
    step = max(1, _CHUNK // max(1, 8 * n))
    # code t <- bytes b it overlaps: (byte_b << (8b - lo_t)) or (byte_b >> (lo_t - 8b))
    rev: list[list[tuple[int, int]]] = [[] for _ in range(8)]
    for b, parts in _plan(w):
        for t, shift in parts:
            rev[t].append((b, shift))
    for g0 in range(0, groups, step):
        g1 = min(groups, g0 + step)
        block = data[:, g0:g1, :].to(work)
        for t in range(8):
            acc = None
            for b, shift in rev[t]:
                part = block[:, :, b] >> shift if shift >= 0 else block[:, :, b] << (-shift)
                acc = part if acc is None else acc.bitwise_or_(part)
            out[:, g0:g1, t] = acc & mask
    return out.reshape(n, groups * 8)[:, :m].to(dtype)


def bits_to_bytes(bits: int) -> int:
    """ceil(bits / 8)."""
    return math.ceil(bits / 8)


def concat_bits(rows: Tensor, bits: int) -> Tensor:
    """(m, >= ceil(bits/8)) uint8 messages of ``bits`` bits each -> one (ceil(m bits / 8),) uint8
    segment holding them back to back at bit level: bit i of message t is bit t bits + i of the
    segment (LSB first, as :func:`pack_codes`). numpy's bit packing on the CPU, tensor ops
    elsewhere (:func:`_concat_bits_torch`, the same bytes)."""
    nb = (bits + 7) // 8
    if rows.device.type != "cpu":
        return _concat_bits_torch(rows, bits)
    flat = np.unpackbits(rows[:, :nb].numpy(), axis=1, count=bits, bitorder="little")
    return torch.from_numpy(np.packbits(flat.reshape(-1), bitorder="little"))


def split_bits(raw: Tensor, m: int, bits: int) -> Tensor:
    """Inverse of :func:`concat_bits` for R segments at once: (R, >= ceil(m bits / 8)) uint8 ->
    (R m, ceil(bits/8)) uint8 messages in segment order, zero bits after each message's last."""
    if raw.device.type != "cpu":
        return _split_bits_torch(raw, m, bits)
    R = raw.shape[0]
    flat = np.unpackbits(raw[:, : (m * bits + 7) // 8].numpy(), axis=1, count=m * bits, bitorder="little")
    return torch.from_numpy(np.packbits(flat.reshape(R * m, bits), axis=1, bitorder="little"))


def _concat_bits_torch(rows: Tensor, bits: int) -> Tensor:
    """:func:`concat_bits` with tensor ops (any device; one byte of work per bit)."""
    m, nb = rows.shape[0], (bits + 7) // 8
    total = (m * bits + 7) // 8
    shifts = torch.arange(8, dtype=torch.uint8, device=rows.device)
    flat = ((rows[:, :nb].unsqueeze(-1) >> shifts) & 1).reshape(m, 8 * nb)[:, :bits].reshape(-1)
    flat = torch.nn.functional.pad(flat, (0, 8 * total - m * bits))
    return (flat.view(total, 8) << shifts).sum(dim=1, dtype=torch.int32).to(torch.uint8)


def _split_bits_torch(raw: Tensor, m: int, bits: int) -> Tensor:
    """:func:`split_bits` with tensor ops (any device)."""
    R, nb = raw.shape[0], (bits + 7) // 8
    shifts = torch.arange(8, dtype=torch.uint8, device=raw.device)
    flat = ((raw[:, : (m * bits + 7) // 8].unsqueeze(-1) >> shifts) & 1).reshape(R, -1)[:, : m * bits]
    msgs = torch.nn.functional.pad(flat.reshape(R * m, bits), (0, 8 * nb - bits))
    return (msgs.view(R * m, nb, 8) << shifts).sum(dim=2, dtype=torch.int32).to(torch.uint8)
