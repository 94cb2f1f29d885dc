"""``Randomness``: the draws of the rows (workers) one process hosts, and where each call is drawn.

An object keeps its row keys and a call counter; each drawing method advances the counter by one
and draws its call on the small-call backend (Python numbers) or the tensor backend. The choice
is made in one place, :meth:`Randomness._call`, and never changes a bit.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import distributions
from .backend import Backend
from .bits import signed
from .elements import ElementDraws
from .keys import SHARED, base_key, call_keys, call_keys_int, call_salt, row_keys, row_keys_int
from .small import SMALL
from .tensors import tensor_backend

__all__ = ["Randomness"]

_CPU = torch.device("cpu")

# Objects with at most this many rows (on the CPU) keep their row keys as Python ints: a handful
# of integer operations per row instead of two dozen small tensor operations
SMALL_ROWS = 32
# ... and draw on Python numbers the calls that hash at most this many elements in all (rows x
# columns; for sample_without_replacement k per sparse row, the population per dense row),
# making the result tensor with one call (the break-even point against the fixed cost of the
# tensor code's small operations: benchmarks/README.md)
SMALL_ELEMENTS = 128
# ... whose per-row highs / populations are at most this large (beyond: the tensor code)
SMALL_OPERAND = 2.0**62
_SMALL_FLOATS = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


class Randomness:
    """Random draws for the rows (workers) that one process hosts, in one round.

    Row ``r`` of every draw is keyed by ``worker_ids[r]``. Each drawing method advances the call
    counter by exactly one, so identical code makes identical calls everywhere.

    Args:
        seed: experiment seed (any Python int).
        stream: purpose of the draws (a name or an int).
        round: iteration number k.
        worker_ids: global ids of the hosted workers, an int sequence or 1-D tensor.
        device: where drawn tensors are created.
    """

    def __init__(
        self,
        seed: int,
        stream: str | int,
        round: int,
        worker_ids: Tensor | list[int] | range,
        device: torch.device | str | None = None,
    ) -> None:
        self.seed = int(seed)
        self.stream = stream
        self.round = int(round)
        if isinstance(device, torch.device):
            self.device = device
        else:
            self.device = torch.device(device) if device is not None else _CPU
        ids_list: list[int] | None = None
        if isinstance(worker_ids, Tensor):
            ids = worker_ids
            if ids.dtype != torch.int64 or ids.device != self.device:
                ids = ids.to(dtype=torch.int64, device=self.device)
            self.worker_ids = ids if ids.dim() == 1 else ids.reshape(-1)
        else:
            ids_list = [int(w) for w in worker_ids]
            self.worker_ids = torch.tensor(ids_list, dtype=torch.int64, device=self.device)
        base = base_key(self.seed, stream, self.round)
        self._tensors = tensor_backend(self.device)
        # small CPU row sets keep their row keys as Python ints (the same keys mod 2^64), and
        # _call may draw their calls on Python numbers
        self._row_ints: list[int] | None = None
        self._row_keys: Tensor | None = None
        if self.device.type == "cpu" and self.worker_ids.numel() <= SMALL_ROWS:
            if ids_list is None:
                ids_list = self.worker_ids.tolist()
            self._row_ints = row_keys_int(base, ids_list)
        else:
            self._row_keys = row_keys(base, self.worker_ids)
        self.calls = 0

    @property
    def n_rows(self) -> int:
        return int(self.worker_ids.numel())

    def shared(self) -> Randomness:
        """Draws that every worker agrees on: a one-row object keyed by ``SHARED``.

        Its call counter starts at this object's counter (0 for a fresh object), so it draws
        what ``Randomness(seed, stream, round, [SHARED])`` draws after that many calls.
        """
        out = Randomness(self.seed, self.stream, self.round, [SHARED], self.device)
        out.calls = self.calls
        return out

    def advance(self, calls: int = 1) -> None:
        """Skip ``calls`` drawing calls (for code that drew them from :meth:`shared` instead)."""
        self.calls += int(calls)

    # -- calls --------------------------------------------------------------------------------
    def _next_keys(self) -> Tensor:
        """(rows,) int64 keys of the next call (the counter is not advanced)."""
        salt = call_salt(self.calls)
        if self._row_ints is not None:
            return torch.tensor([signed(v) for v in call_keys_int(self._row_ints, salt)], dtype=torch.int64)
        return call_keys(self._row_keys, salt)

    def _call(
        self, elements: int | None, operand: Any = None, small_operand: Any = None
    ) -> tuple[Backend, Any, Any]:
        """(backend, keys, operand) of the next call, the counter advanced.

        The small backend draws it when this object keeps Python row keys and the call hashes at
        most ``SMALL_ELEMENTS`` elements in all (``elements``; None where Python numbers cannot
        represent the call), with ``small_operand`` (one Python number per row) as the per-row
        operand; the tensor backend with ``operand`` otherwise.
        """
        salt = call_salt(self.calls)
        self.calls += 1
        if self._row_ints is None:
            return self._tensors, call_keys(self._row_keys, salt), operand
        keys = call_keys_int(self._row_ints, salt)
        if elements is not None and 0 <= elements <= SMALL_ELEMENTS:
            return SMALL, keys, small_operand
        return self._tensors, torch.tensor([signed(v) for v in keys], dtype=torch.int64), operand

    def elements(self) -> ElementDraws:
        """One drawing call whose columns can be generated piece by piece (fused loops).

        ``rng.elements().uniform(0, cols, dtype)`` equals ``rng.uniform(cols, dtype)`` made at
        the same call counter.
        """
        keys = self._next_keys()
        self.calls += 1
        return ElementDraws(keys, self.device)

    # -- raw bits -----------------------------------------------------------------------------
    def bits(self, cols: int) -> Tensor:
        """(rows, cols) int64 tensor of uniformly random 64-bit words."""
        arrays, keys, _ = self._call(self.n_rows * cols)
        return arrays.tensor(arrays.words64(keys, cols), torch.int64, self.n_rows, cols)

    def words32(self, cols: int) -> Tensor:
        """(rows, cols) int32 tensor of uniformly random 32-bit words (two's complement)."""
        arrays, keys, _ = self._call(self.n_rows * cols)
        return arrays.tensor(arrays.words32(keys, cols), torch.int32, self.n_rows, cols)

    # -- distributions ------------------------------------------------------------------------
    def uniform(self, cols: int, dtype: torch.dtype = torch.float64) -> Tensor:
        """(rows, cols) uniform numbers in [0, 1) (53 random bits for float64, 24 otherwise)."""
        arrays, keys, _ = self._call(self.n_rows * cols if dtype in _SMALL_FLOATS else None)
        return arrays.tensor(distributions.uniform(arrays, keys, cols, dtype), dtype, self.n_rows, cols)

    def integers(self, high: int | Tensor, cols: int) -> Tensor:
        """(rows, cols) int64 uniform on {0, ..., high-1}; ``high`` scalar or per row (rows,).

        floor(u high) of a float64 uniform u (in float64 arithmetic).
        """
        highs = self._small_highs(high)
        arrays, keys, h = self._call(self.n_rows * cols if highs is not None else None, high, highs)
        return arrays.tensor(distributions.integers(arrays, keys, h, cols), torch.int64, self.n_rows, cols)

    def _small_highs(self, high: int | Tensor) -> list[float] | None:
        """Per-row ``high`` as Python floats (the float64 values the tensor code multiplies by),
        for a small CPU row set; None where the tensor code must handle it (large or non-finite
        values, a tensor that is neither one entry nor one per row)."""
        rows = self.n_rows
        if self._row_ints is None:
            return None
        if isinstance(high, Tensor):
            if high.numel() not in (1, rows):
                return None
            hs = [float(h) for h in high.reshape(-1).tolist()]
            hs = hs * rows if len(hs) == 1 else hs
        else:
            hs = [float(high)] * rows
        return hs if all(abs(h) <= SMALL_OPERAND for h in hs) else None

    def bernoulli(self, p: float, cols: int = 1) -> Tensor:
        """(rows, cols) boolean, each True with probability p: u < p for a float64 uniform u."""
        ps = [p] * self.n_rows if self._row_ints is not None and type(p) in (float, int) else None
        arrays, keys, p = self._call(self.n_rows * cols if ps is not None else None, p, ps)
        return arrays.tensor(distributions.bernoulli(arrays, keys, p, cols), torch.bool, self.n_rows, cols)

    def permutation(self, size: int) -> Tensor:
        """(rows, size) int64: a uniformly random permutation of {0, ..., size-1} per row.

        Stable argsort of one 32-bit word per element: exact ties (probability ~size^2/2^33 in
        all, each fixing the order of one pair) are broken by position. O(size log size).
        """
        arrays, keys, _ = self._call(self.n_rows * size)
        return arrays.tensor(distributions.permutation(arrays, keys, size), torch.int64, self.n_rows, size)

    def sample_without_replacement(self, population: int | Tensor, k: int) -> Tensor:
        """(rows, k) int64: row r is a uniformly random k-subset of {0, ..., population_r - 1}.

        Returned sorted within each row. Each row uses one of two methods, chosen from its own
        (population, k) only, so a row's draw never depends on the other hosted rows:

        - k >= 2 and (population up to 4096 or 2k > population): the k smallest of one random
          63-bit key per element, O(population) per row;
        - otherwise (always for k = 1): draw k with replacement, redraw the duplicates, repeat
          (every step is equivariant under permutations of the population, so the final k-set
          is uniform), O(k log k) expected per row -- never a pass over the population.
        """
        rows = self.n_rows
        pops: list[int] | None = None  # per-row populations as Python ints (small row sets)
        if isinstance(population, Tensor):
            pop = population.to(device=self.device, dtype=torch.int64).reshape(-1)
            if pop.numel() != rows:
                raise ValueError(f"population has {pop.numel()} entries, expected one per row ({rows})")
            if self._row_ints is not None:
                pops = pop.tolist()
                smallest = min(pops) if rows else 0
            else:
                smallest = int(pop.min()) if rows else 0
        else:
            pop = smallest = int(population)
            if self._row_ints is not None:
                pops = [pop] * rows
        if k < 0:
            raise ValueError(f"k == {k}, must be >= 0")
        if rows and k > smallest:
            raise ValueError(f"k == {k} exceeds the smallest population {smallest}")
        work = None
        if pops is not None and k > 0 and max(pops, default=0) <= SMALL_OPERAND:
            dense = distributions.is_dense
            work = rows if k == 1 else sum(p if dense(p, k) else k for p in pops)
        arrays, keys, pop = self._call(work, pop, pops)
        if k == 0 or rows == 0:
            return torch.empty((rows, k), dtype=torch.int64, device=self.device)
        out = distributions.sample_without_replacement(arrays, keys, pop, k)
        return arrays.tensor(out, torch.int64, rows, k)
