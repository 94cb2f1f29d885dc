"""The distributions, each written once on the words of one call of any :class:`.backend.Backend`.

Each function takes the backend, the call's keys and per-row operands in that backend's form,
and returns the backend's array of the draws (``Randomness`` makes the tensor).
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import Tensor

from .backend import Backend
from .bits import key63, mix_int, scaled

__all__ = [
    "uniform",
    "integers",
    "bernoulli",
    "permutation",
    "is_dense",
    "sample_without_replacement",
]

# sample_without_replacement scans the whole population at or below this size
DENSE_POPULATION = 4096
_REDRAW = 0xD6E8FEB86659FD93  # attempt multiplier of the duplicate redraws


def uniform(arrays: Backend, keys: Any, cols: int, dtype: torch.dtype) -> Any:
    """Uniforms in [0, 1): the top 53 bits of a 64-bit word (float64), else of a 32-bit word."""
    return arrays.uniform(keys, cols, dtype)


def integers(arrays: Backend, keys: Any, high: Any, cols: int) -> Any:
    """floor(u high) of a float64 uniform u (float64 arithmetic), ``high`` per row."""
    return arrays.uniform(keys, cols, torch.float64, scaled, arrays.column(high))


def bernoulli(arrays: Backend, keys: Any, p: Any, cols: int) -> Any:
    """u < p for a float64 uniform u."""
    return arrays.uniform(keys, cols, torch.float64, operator.lt, p)


def permutation(arrays: Backend, keys: Any, size: int) -> Any:
    """Stable argsort of one 32-bit word per element."""
    return arrays.argsort(arrays.words32(keys, size), size)


def is_dense(population: int | Tensor, k: int) -> bool | Tensor:
    """Whether a row of sample_without_replacement takes the k smallest of per-element keys
    (an element formula of the row's population)."""
    return (k > 1) & ((population <= DENSE_POPULATION) | (2 * k > population))


def sample_without_replacement(arrays: Backend, keys: Any, population: Any, k: int) -> Any:
    """A sorted uniformly random k-subset of {0, ..., population_r - 1} in row r, each row by
    the method its own (population, k) picks (k >= 1; ``Randomness.sample_without_replacement``)."""
    dense = k > 1 and arrays.each(is_dense, population, k)  # k = 1: never dense
    kind = arrays.which(dense)
    if kind is not None:
        return (_dense if kind else _sparse)(arrays, keys, population, k)
    dkeys, skeys = arrays.partition(keys, dense)
    dpop, spop = arrays.partition(population, dense)
    return arrays.merge(dense, _dense(arrays, dkeys, dpop, k), _sparse(arrays, skeys, spop, k), k)


def _dense(arrays: Backend, keys: Any, population: Any, k: int) -> Any:
    """The k smallest of one random 63-bit key per element (ties: probability ~2^-63)."""
    z = arrays.words64(keys, population, key63)
    return arrays.smallest(z, k, population)


def _sparse(arrays: Backend, keys: Any, population: Any, k: int) -> Any:
    """Draw with replacement, redraw duplicates until none is left (row-wise)."""
    pop = arrays.column(population)
    draw = lambda ks: arrays.uniform(ks, k, torch.float64, scaled, pop)
    if k == 1:  # one draw per row: never a duplicate
        return draw(keys)
    fused = arrays.sparse_sample(keys, pop, k, redraw_salt)
    if fused is not None:
        return fused
    idx = arrays.sort(draw(keys), k)
    attempt = 0
    while (dup := arrays.duplicates(idx, k)) is not None:
        attempt += 1
        # column j of the redraw replaces a duplicate in column j (only those are drawn)
        idx = arrays.redrawn_sorted(idx, dup, arrays.rekey(keys, redraw_salt(attempt)), k, pop)
    return idx


def redraw_salt(attempt: int) -> int:
    """The salt of the keys of the sparse method's redraw ``attempt`` (1, 2, ...)."""
    return mix_int(attempt * _REDRAW)
