"""The one problem loader of ``marina run``, ``marina sweep`` and torch.distributed ranks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from marina import problems

__all__ = ["ProblemCache", "load_problem"]


def load_problem(
    problem: str,
    workers: int,
    split: str = "contiguous",
    device: torch.device | str | None = "cpu",
    hosted: Sequence[int] | None = None,
    **options: Any,
) -> problems.Problem:
    """The problem of a configuration (:func:`marina.problems.get`): a bundled data set or a
    LibSVM file split among ``workers`` (random splits keyed by seed 0, so every run seed sees
    the same data), or ``synthetic``.

    Args:
        problem: the problem spec.
        workers: n, the number of workers.
        split: how the rows are split (``contiguous``, ``shuffled``, ``dirichlet``).
        device: where the problem computes.
        hosted: only these workers' shards, with the constants of the whole problem (a
            torch.distributed rank); None: all of them.
        **options: further options of :func:`marina.problems.get`.
    """
    if split != "contiguous":
        options["split"] = split
    if hosted is not None:
        options["hosted_workers"] = list(hosted)
    return problems.get(problem, workers=workers, seed=0, device=device, **options)


class ProblemCache:
    """Problems built once per (problem, workers, split, device), newest ``size`` kept.

    Args:
        size: how many problems are kept (the oldest is dropped first).
    """

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._items: dict[tuple, Any] = {}

    def get(self, problem: str, workers: int, split: str, device: str) -> problems.Problem:
        key = (problem, workers, split, device)
        if key not in self._items:
            if len(self._items) >= self.size:
                self._items.pop(next(iter(self._items)))
            self._items[key] = load_problem(*key)
        return self._items[key]
