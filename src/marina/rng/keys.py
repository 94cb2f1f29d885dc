"""Keys: the 64-bit key of each (seed, stream, round, worker, call), as Python ints or tensors.

SplitMix64's finaliser chains the numbers: ``base_key(seed, stream, round)`` once per object,
``row_key`` per worker id, ``call_keys`` per drawing call (the counter's salt xored in). Python
forms and tensor forms give the same keys mod 2^64.
"""

from __future__ import annotations

import zlib

import torch
from torch import Tensor

from .bits import GOLDEN, GOLDEN_U, mix64, mix_int, signed

__all__ = [
    "SHARED",
    "stream_id",
    "base_key",
    "row_keys",
    "row_keys_int",
    "call_salt",
    "call_keys",
    "call_keys_int",
]

SHARED = -1
"""Worker id that keys draws common to all workers."""


def stream_id(stream: str | int) -> int:
    """A stable integer for a stream name (CRC32, identical in every process and run).

    Args:
        stream: a stream name (``"compress"``), or an integer, returned as it is.
    """
    if isinstance(stream, int):
        return stream
    return zlib.crc32(stream.encode("utf-8"))


def base_key(seed: int, stream: str | int, round: int) -> int:
    """The key of (seed, stream, round), unsigned."""
    base = mix_int(seed * GOLDEN_U + 0x632BE59BD9B4E019)
    base = mix_int(base ^ (stream_id(stream) * 0xD1B54A32D192ED03))
    return mix_int(base ^ ((round + 1) * 0xAF251AF3B0F025B5))


def row_keys_int(base: int, worker_ids: list[int]) -> list[int]:
    """The key of each worker id's row, unsigned Python ints."""
    return [mix_int(w * GOLDEN_U + base) for w in worker_ids]


def row_keys(base: int, worker_ids: Tensor) -> Tensor:
    """The key of each worker id's row, an int64 tensor (ids: int64 tensor)."""
    return mix64(worker_ids * GOLDEN + signed(base))


def call_salt(calls: int) -> int:
    """What keys the call made after ``calls`` earlier calls, unsigned."""
    return mix_int((calls + 1) * GOLDEN_U)


def call_keys_int(rows: list[int], salt: int) -> list[int]:
    """Row keys -> keys of one call, unsigned Python ints."""
    return [mix_int(v ^ salt) for v in rows]


def call_keys(rows: Tensor, salt: int) -> Tensor:
    """Row keys -> keys of one call, int64 tensors."""
    if rows.device.type == "cpu" and rows.numel() <= _PYTHON_KEYS:  # fewer fixed costs
        keys = [signed(mix_int(v ^ salt)) for v in rows.reshape(-1).tolist()]
        return torch.tensor(keys, dtype=torch.int64).reshape(rows.shape)
    return mix64(rows ^ signed(salt))


_PYTHON_KEYS = 16
"""Call keys of at most this many CPU rows are mixed as Python ints (the same keys)."""
