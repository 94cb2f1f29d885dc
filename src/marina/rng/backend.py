"""The interface the distributions are written against: the array operations of one call.

A backend draws the words of a call from its keys (one 64-bit key per row) and operates on
arrays of ``rows x cols`` numbers, both in its own representation: tensors on a device
(:mod:`.tensors`) or flat row-major lists of Python numbers (:mod:`.small`, for small CPU calls).
A per-row operand (a population, a bound, a probability) is a number or a column in the same
representation. Element formulas (:mod:`.bits`) take either. Both backends give the same bits.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import torch
from torch import Tensor

__all__ = ["Backend"]

K = TypeVar("K")  # the keys of a call
A = TypeVar("A")  # an array of rows x cols numbers (or a per-row column)


class Backend(ABC, Generic[K, A]):
    """Array operations of a drawing call; see the module docstring for the representations."""

    # -- words of a call ------------------------------------------------------------------------
    @abstractmethod
    def words32(self, keys: K, cols: int) -> A:
        """The signed 32-bit words (lowbias32) of columns 0 .. cols - 1 of each row."""

    @abstractmethod
    def words64(self, keys: K, cols: int | A, f: Callable | None = None) -> A:
        """The signed 64-bit words (SplitMix64) of columns 0 .. cols - 1 of each row, or the
        element formula ``f`` of each (given the word mod 2^64, signed or not: f masks what it
        keeps); ``cols`` may be per row (row r then has at least ``cols[r]`` columns)."""

    @abstractmethod
    def uniform(
        self, keys: K, cols: int, dtype: torch.dtype, f: Callable | None = None, operand: Any = None
    ) -> A:
        """The uniforms u of ``dtype`` of columns 0 .. cols - 1, or ``f(u, operand)`` with row
        r's operand in row r."""

    @abstractmethod
    def rekey(self, keys: K, salt: int) -> K:
        """The keys of another call: ``mix64(key ^ salt)``."""

    # -- elements and rows ---------------------------------------------------------------------
    @abstractmethod
    def each(self, f: Callable, x: A | int, *args: Any) -> A:
        """``f(v, *args)`` of every entry of x (a per-row column or a number)."""

    @abstractmethod
    def column(self, values: Any) -> Any:
        """A per-row operand as float64 numbers (``uniform``'s ``operand``)."""

    @abstractmethod
    def argsort(self, x: A, cols: int) -> A:
        """The column indices that sort each row (stable: ties keep their order)."""

    @abstractmethod
    def sort(self, x: A, cols: int, nearly_sorted: bool = False) -> A:
        """Each row sorted (``nearly_sorted``: a hint that only a few entries are out of place)."""

    @abstractmethod
    def smallest(self, z: A, k: int, cols: int | A) -> A:
        """The indices of the k smallest of the first ``cols[r]`` entries of row r, ascending
        (ties go to the smaller index)."""

    @abstractmethod
    def duplicates(self, x: A, cols: int) -> A | None:
        """Where an entry equals the one before it in its row (a boolean array), or None."""

    @abstractmethod
    def where(self, mask: A, a: A, b: A) -> A:
        """a where mask is true, else b (element-wise)."""

    @abstractmethod
    def redrawn(self, x: A, mask: A, keys: Any, cols: int, operand: Any) -> A:
        """x with its masked entries replaced by the same entries of
        ``uniform(keys, cols, float64, scaled, operand)`` (the index redraws)."""

    @abstractmethod
    def redrawn_sorted(self, x: A, mask: A, keys: Any, cols: int, operand: Any) -> A:
        """``sort(redrawn(x, mask, ...), nearly_sorted=True)`` for rows ``x`` sorted already (a
        backend may merge the few redrawn entries into the rest instead: the sorted rows are the
        same)."""

    @abstractmethod
    def sparse_sample(self, keys: K, population: Any, k: int, redraw_salt: Callable[[int], int]) -> A | None:
        """The sparse method of ``distributions.sample_without_replacement`` in one fused pass
        where this backend has one for these rows (the same bits), else None (the generic
        steps then run). ``redraw_salt(attempt)`` salts the keys of redraw ``attempt``."""

    # -- subsets of rows -----------------------------------------------------------------------
    @abstractmethod
    def which(self, mask: A | bool) -> bool | None:
        """True if every row's mask is true, False if none is, None if they differ."""

    @abstractmethod
    def partition(self, x: K | A, mask: A) -> tuple[K | A, K | A]:
        """(the rows of x where the row mask is true, the others), each in row order."""

    @abstractmethod
    def merge(self, mask: A, a: A, b: A, cols: int) -> A:
        """The rows of a where the row mask is true, of b elsewhere (``partition`` undone)."""

    # -- the result ----------------------------------------------------------------------------
    @abstractmethod
    def tensor(self, x: A, dtype: torch.dtype, rows: int, cols: int) -> Tensor:
        """x as a (rows, cols) tensor of ``dtype``."""
