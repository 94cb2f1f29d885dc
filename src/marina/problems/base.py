"""The problem protocol: f(x) = (1/n) sum_i f_i(x), with f_i(x) = (1/m_i) sum_j f_ij(x).

Worker-side quantities carry a leading axis of the workers this object hosts (all n in
simulation; a block of them on a torch.distributed rank). Every concrete problem (the LibSVM
logistic loss, the synthetic family, wrapped torch models) implements this interface; methods
and networks rely on nothing else.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod

import torch
from torch import Tensor

from marina.errors import ConfigError
from marina.lazy_rows import DenseRows, LazyRows
from marina.reductions import fixed_dot, fixed_mean

__all__ = ["Problem", "ProblemSpec"]


class Problem(ABC):
    """Smooth finite-sum problem split among workers.

    Attributes:
        n_workers: number of workers hosted here (rows of every worker-side tensor).
        worker_ids: global ids of the hosted workers (int64 tensor of length n_workers).
        dim: d, the number of parameters.
        sizes: m_i, number of local samples of each hosted worker (int64 tensor, (n_workers,)).
        dtype: of every tensor this problem returns.
        device: where every tensor this problem returns lives.
        total_workers: n of the whole problem (theory defaults use it); equals n_workers
            unless this object hosts a subset of the workers (a torch.distributed rank).

    Constants ``L``, ``L_avg`` and ``L_f`` describe the whole problem (all ``total_workers``
    workers), so every process derives the same theory defaults; ``L_i`` is per hosted worker.
    """

    n_workers: int
    worker_ids: Tensor
    dim: int
    sizes: Tensor
    dtype: torch.dtype
    device: torch.device
    name: str = "problem"

    @property
    def total_workers(self) -> int:
        """Workers of the whole problem (default: ``n_workers``; a subset host sets it)."""
        return int(self.__dict__.get("_total_workers", self.n_workers))

    @total_workers.setter
    def total_workers(self, value: int) -> None:
        self.__dict__["_total_workers"] = int(value)

    def to(self, device: torch.device | str) -> Problem:
        """This problem with every tensor on ``device`` (self when already there)."""
        if torch.device(device) == self.device:
            return self
        raise ConfigError(
            f"device == {device}, but {type(self).__name__} lives on {self.device} and cannot move"
        )

    # -- oracles (the hot path) ----------------------------------------------------------------
    @abstractmethod
    def local_grads(self, x: Tensor) -> Tensor:
        """(n_workers, d) dense tensor: grad f_i(x) for every hosted worker, at the common point x (d,)."""

    def lazy_local_grads(self, x: Tensor) -> LazyRows:
        """The local gradients at x as :class:`marina.lazy_rows.LazyRows` (not a tensor): entries
        read by a sparsifying compressor may be evaluated alone; :func:`marina.lazy_rows.materialize`
        gives the dense tensor, equal to :meth:`local_grads` bit for bit. By default they are
        computed at once."""
        return DenseRows(self.local_grads(x))

    @abstractmethod
    def minibatch_grads(self, x: Tensor, idx: Tensor) -> Tensor:
        """(n_workers, d): (1/b) sum_{j in idx[i]} grad f_ij(x); idx is (n_workers, b) local indices."""

    def lazy_minibatch_grads(self, x: Tensor, idx: Tensor) -> LazyRows:
        """:meth:`minibatch_grads` as :class:`marina.lazy_rows.LazyRows` (equal to it bit for bit
        once materialised). By default computed at once."""
        return DenseRows(self.minibatch_grads(x, idx))

    @abstractmethod
    def minibatch_grad_diffs(self, x_new: Tensor, x_old: Tensor, idx: Tensor) -> Tensor:
        """(n_workers, d): (1/b) sum_{j in idx[i]} (grad f_ij(x_new) - grad f_ij(x_old)), same samples."""

    def lazy_minibatch_grad_diffs(self, x_new: Tensor, x_old: Tensor, idx: Tensor) -> LazyRows:
        """:meth:`minibatch_grad_diffs` as :class:`marina.lazy_rows.LazyRows` (a sparsifier may read
        just its entries of the difference, equal to the dense one's bit for bit). By default
        computed at once."""
        return DenseRows(self.minibatch_grad_diffs(x_new, x_old, idx))

    @abstractmethod
    def local_losses(self, x: Tensor) -> Tensor:
        """(n_workers,): f_i(x) for every hosted worker."""

    # -- whole objective (metrics) ---------------------------------------------------------------
    # Means and the squared norm add in a fixed order (marina.reductions), never through BLAS or a
    # vectorised sum, so a metric's bits do not depend on the machine's kernels.
    def loss(self, x: Tensor) -> float:
        """f(x) = mean_i f_i(x) over the hosted workers (all of them in simulation)."""
        return float(fixed_mean(self.local_losses(x)))

    def grad(self, x: Tensor) -> Tensor:
        """grad f(x) = mean_i grad f_i(x), shape (d,)."""
        return fixed_mean(self.local_grads(x))

    def grad_norm_sq(self, x: Tensor) -> float:
        """||grad f(x)||^2 of the whole objective (never the mean of local norms)."""
        g = self.grad(x)
        return float(fixed_dot(g, g))

    # -- smoothness constants (theory defaults) ----------------------------------------------
    @property
    @abstractmethod
    def L_i(self) -> Tensor:
        """(n_workers,): smoothness constant of each f_i."""

    @property
    def L(self) -> float:
        """sqrt(mean_i L_i^2), the constant of MARINA's Assumption 1.2."""
        return float(torch.sqrt(torch.mean(self.L_i.double() ** 2)))

    @property
    @abstractmethod
    def L_avg(self) -> float:
        """Average smoothness for minibatches (VR-MARINA Assumption 3.1, script-L)."""

    @property
    @abstractmethod
    def L_f(self) -> float:
        """Smoothness constant of f itself."""

    def initial_point(self) -> Tensor:
        """The default x^0 (zeros unless the problem says otherwise)."""
        return torch.zeros(self.dim, dtype=self.dtype, device=self.device)


ProblemSpec = str | os.PathLike[str] | Problem
"""What a ``problem`` argument takes: a :class:`Problem` object (used as it is) or a spec for
:func:`marina.problems.get`: a bundled data set name (``"a9a"``), a LibSVM file path,
``"synthetic"`` or a registered name (``"fashion-mnist"``)."""
