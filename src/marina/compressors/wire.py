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
(16, 10^7) message never materialises one byte per bit.
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
_SMALL = 1 << 14
"""CPU segments of at most this many bits are packed bit by bit with numpy's ``packbits``
(``bitorder="little"``: bit b of the segment is bit b % 8 of byte b // 8, the layout below),
a few microseconds for a small message (RandK with small K) instead of a Python loop over the
byte plan. Same bytes (tests/test_compressors_wire.py compares both paths for every width)."""
_SHIFTS: dict[int, np.ndarray] = {}


def _shifts(w: int) -> np.ndarray:
    if w not in _SHIFTS:
        _SHIFTS[w] = np.arange(w, dtype=np.int64)
    return _SHIFTS[w]


def _pack_small(codes: Tensor, w: int) -> Tensor:
    """:func:`pack_codes` bit by bit: bit i of code t is bit t w + i of the segment (LSB first)."""
    n, m = codes.shape
    bits = ((codes.numpy().astype(np.int64, copy=False)[:, :, None] >> _shifts(w)) & 1).astype(np.uint8)
    return torch.from_numpy(np.packbits(bits.reshape(n, m * w), axis=1, bitorder="little"))


def _unpack_small(raw: Tensor, m: int, w: int, nbytes: int, work: torch.dtype) -> Tensor:
    """:func:`unpack_codes` bit by bit (the inverse of :func:`_pack_small`)."""
    n = raw.shape[0]
    data = raw[:, :nbytes].numpy()
    if data.shape[1] < nbytes:  # a short payload (rejected by the caller's length check)
        data = np.pad(data, ((0, 0), (0, nbytes - data.shape[1])))
    bits = np.unpackbits(data, axis=1, count=m * w, bitorder="little").reshape(n, m, w)
    codes = (bits.astype(np.int64) << _shifts(w)).sum(axis=2)
    return torch.from_numpy(codes.astype(np.int32 if work == torch.int32 else np.int64))


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
    out = torch.zeros((n, nbytes), dtype=torch.uint8, device=codes.device)
    if w == 0 or m == 0:
        return out
    if w > 56:
        raise ValueError(f"code width w == {w}, must be <= 56")
    if n * m * w <= _SMALL and codes.device.type == "cpu":
        return _pack_small(codes, w)
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


def unpack_codes(raw: Tensor, m: int, w: int) -> Tensor:
    """Inverse of :func:`pack_codes`: (n, >= ceil(m w / 8)) uint8 -> (n, m) codes.

    int32 codes for w <= 24 (half the memory of int64 on large dense messages), int64 above.
    """
    n = raw.shape[0]
    if w == 0 or m == 0:
        return torch.zeros((n, m), dtype=torch.int32 if w <= 24 else torch.int64, device=raw.device)
    nbytes = (m * w + 7) // 8
    groups = (m + 7) // 8
    work = torch.int32 if w <= 24 else torch.int64
    if n * m * w <= _SMALL and raw.device.type == "cpu":
        return _unpack_small(raw, m, w, nbytes, work)
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
    return out.reshape(n, groups * 8)[:, :m]


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
