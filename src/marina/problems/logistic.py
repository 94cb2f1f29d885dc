"""The paper's non-convex logistic loss on LibSVM data (Gorbunov et al. 2021, Section 5, eq. (11)).

    phi(t) = (1 - 1/(1 + exp(-t)))^2 = sigmoid(-t)^2,
    f_ij(x) = phi(y_ij a_ij^T x) + (l2/2) ||x||^2,   f_i = (1/m_i) sum_j f_ij,   f = (1/n) sum_i f_i.

Derivatives, with s = sigmoid(-t) (so ds/dt = -s (1 - s)):

    phi'(t)  = -2 s^2 (1 - s),
    phi''(t) = 2 s^2 (1 - s)(2 - 3 s).

Over s in (0, 1), |phi''| peaks where d/ds [s^2 (1-s)(2-3s)] = 0, i.e. 12 s^2 - 15 s + 4 = 0:
s* = (15 - sqrt(33))/24 = 0.38564... (t* = log((1 - s*)/s*) = 0.46566...), giving

    max_t |phi''(t)| = PHI2_MAX = 2 s*^2 (1 - s*)(2 - 3 s*) = 0.15405857012135...

(the other root, s = (15 + sqrt(33))/24 = 0.864, gives min_t phi''(t) = PHI2_MIN = -0.1202...,
smaller in absolute value; phi'' vanishes at s = 0, 2/3 and 1 only, so these are its extremes).

Storage: since y_ij^2 = 1 we store the rows a~_ij = -y_ij a_ij, so with t = a~_ij^T x,
f_ij(x) = phi(-t) = sigmoid(t)^2 =: psi(t) and psi'(t) = 2 sigmoid(t)^2 (1 - sigmoid(t)):
the hot path computes one sigmoid per row, in place, and no negation.

Constants (see :mod:`marina.problems.linear` for the derivations), with kappa = PHI2_MAX:
L_i = kappa lambda_max(A_i^T A_i)/m_i + l2 (the issue's "tight" constant, never looser than
kappa max_j ||a_ij||^2 + l2), L = sqrt(mean L_i^2), L_f = kappa lambda_max(sum_i
A_i^T A_i/(n m_i)) + l2, and L_avg = kappa sqrt(mean_i lambda_max((1/m_i) sum_j ||a_ij||^2 a_ij
a_ij^T)) (Assumption 3.1; never above kappa sqrt(mean_i mean_j ||a_ij||^4)).

Evaluation is stable for any |t|: torch.sigmoid saturates to exactly 0 or 1 without overflow,
so phi, phi' stay finite (phi -> 1 and phi' -> 0 as t -> -inf; both -> 0 as t -> +inf).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from marina import data as _data
from marina.data.splits import Split, make_split
from marina.errors import ConfigError
from marina.problems.linear import LinearModelProblem, layout_independent_

__all__ = ["PHI2_MAX", "PHI2_MIN", "LogisticProblem", "libsvm", "phi", "phi_prime", "phi_second"]

_S_STAR = (15.0 - math.sqrt(33.0)) / 24.0
PHI2_MAX: float = 2.0 * _S_STAR**2 * (1.0 - _S_STAR) * (2.0 - 3.0 * _S_STAR)
"""max_t |phi''(t)| = 0.1540585701213505 (closed form above; checked on a fine grid in tests)."""
_S_LOW = (15.0 + math.sqrt(33.0)) / 24.0
PHI2_MIN: float = 2.0 * _S_LOW**2 * (1.0 - _S_LOW) * (2.0 - 3.0 * _S_LOW)
"""min_t phi''(t) = -0.1202044... (closed form above): with PHI2_MAX, the range of psi'' that
bounds the Hessian variance L_pm (:mod:`marina.problems.linear`)."""


def phi(t: Tensor) -> Tensor:
    """phi(t) = sigmoid(-t)^2 (eq. 11), elementwise."""
    s = torch.sigmoid(-t)
    return s * s


def phi_prime(t: Tensor) -> Tensor:
    """phi'(t) = -2 sigmoid(-t)^2 sigmoid(t), elementwise."""
    s = torch.sigmoid(-t)
    return (s * s).mul_(s - 1.0).mul_(2.0)


def phi_second(t: Tensor) -> Tensor:
    """phi''(t) = 2 s^2 (1 - s)(2 - 3 s) with s = sigmoid(-t), elementwise."""
    s = torch.sigmoid(-t)
    return 2.0 * s * s * (1.0 - s) * (2.0 - 3.0 * s)


class LogisticProblem(LinearModelProblem):
    """Non-convex logistic regression (eq. 11) on sparse rows; see the module docstring.

    Build it with :func:`libsvm`. Extra attributes: ``l2``, ``data`` (the
    :class:`marina.data.Dataset`), ``bias``, ``normalize``.

    Args:
        X: (N, d) CSR features of the whole data set.
        labels: (N,) labels in {-1, +1}.
        split: which rows belong to which worker.
        l2: weight of (l2/2)||x||^2 in every f_ij (>= 0).
        **kwargs: the options of :class:`marina.problems.LinearModelProblem` (``hosted_workers``,
            ``dtype``, ``device``, ``name``, ``deterministic``, ...).
    """

    def __init__(
        self, X: sp.csr_matrix, labels: np.ndarray, split: Split, *, l2: float = 0.0, **kwargs: Any
    ) -> None:
        if not l2 >= 0:
            raise ConfigError(f"l2 == {l2}, must be >= 0")
        self.l2 = float(l2)
        signed = sp.diags(-np.asarray(labels, dtype=np.float64)) @ sp.csr_matrix(X)
        super().__init__(signed, np.zeros(X.shape[0]), split, kappa=PHI2_MAX, rho=self.l2, **kwargs)

    def _psi(self, t: Tensor, b: Tensor) -> Tensor:
        s = layout_independent_(Tensor.sigmoid_, t.clone())  # psi(t) = phi(-t) = sigmoid(t)^2
        return s.mul_(s)

    def _dpsi(self, t: Tensor, b: Tensor) -> Tensor:
        s = layout_independent_(Tensor.sigmoid_, t.clone())  # psi'(t) = -phi'(-t) = 2 s^2 (1 - s)
        return torch.rsub(s, 1.0).mul_(s).mul_(s).mul_(2.0)

    psi_second_range = (PHI2_MIN, PHI2_MAX)  # psi''(t) = phi''(-t): the same range
    _grad_factor = 2.0  # psi'(t) = 2 s^2 (1 - s): the 2 lives in the lifted matrix
    _weights_read_targets = False  # the targets are folded into the signed rows

    def _weights(self, t: Tensor, b: Tensor) -> Tensor:
        s = layout_independent_(Tensor.sigmoid_, t)  # s = sigmoid(t) = sigmoid(-u), u = y a^T x
        # s (1 - s) s = psi'(t) / 2 in one fused pass (ATen's sigmoid_backward(g, s) = g (1 - s) s,
        # plain products, the same in its vector and scalar code)
        return torch.ops.aten.sigmoid_backward(s, s)

    def _reg_value(self, x: Tensor) -> float | Tensor:
        return 0.5 * self.l2 * (x @ x) if self.l2 else 0.0

    def _reg_grad(self, x: Tensor) -> Tensor | None:
        return self.l2 * x if self.l2 else None


def libsvm(
    name_or_path: str | os.PathLike[str],
    workers: int = 1,
    split: str | Sequence[Sequence[int]] | np.ndarray = "contiguous",
    seed: int = 0,
    l2: float = 0.0,
    bias: bool = False,
    *,
    normalize: bool = False,
    alpha: float = 0.5,
    balanced: bool = True,
    drop_remainder: bool = False,
    hosted_workers: Sequence[int] | None = None,
    n_features: int | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    deterministic: bool = True,
) -> LogisticProblem:
    """The paper's non-convex logistic problem on a bundled data set or a LibSVM file.

    Args:
        name_or_path: bundled name (``a9a``, ``a9a.t``, ``w8a``, ``mushrooms``, ``phishing``,
            ``ijcnn1``, ``ijcnn1.t``) or a LibSVM/svmlight file path (plain, .gz, .bz2).
        workers: n, the number of workers the rows are split among (1 <= n <= N).
        split: ``contiguous`` (paper), ``shuffled``, ``dirichlet``, or explicit row lists;
            see :mod:`marina.data.splits` (remainder rule: the first N mod n workers get one
            extra row; ``drop_remainder=True`` drops those rows instead, as the paper did).
        seed: keys the random splits.
        l2: weight of (l2/2)||x||^2 in every f_ij (>= 0; the paper used 0).
        bias: append a constant-1 feature (d + 1 columns).
        normalize: scale every non-zero row to unit l2 norm (before adding the bias).
        alpha: concentration of the Dirichlet label-skewed split (smaller: more skewed).
        balanced: the Dirichlet split gives every worker the same number of rows.
        drop_remainder: drop the N mod n rows left over by an even split (as the paper did)
            instead of giving the first workers one extra row.
        hosted_workers: keep only these global workers' shards (the split is made on the whole
            file first); L, L_avg and L_f still describe the whole problem, L_i the hosted ones.
        n_features: override the number of feature columns.
        dtype: of every returned tensor (float64 by default).
        device: where every returned tensor lives (default: the CPU).
        deterministic: CPU kernels whose results do not depend on the hosted subset (default;
            see :mod:`marina.problems.linear`); False uses torch's multi-threaded MKL kernels.
    """
    ds = _data.load(name_or_path, n_features=n_features)
    X = ds.X
    if normalize:
        norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=1)).reshape(-1))
        X = sp.diags(1.0 / np.where(norms > 0, norms, 1.0)) @ X
    if bias:
        X = sp.hstack([X, np.ones((X.shape[0], 1))], format="csr")
    parts = make_split(
        ds.y, workers, split, seed=seed, alpha=alpha, balanced=balanced, drop_remainder=drop_remainder
    )
    problem = LogisticProblem(
        sp.csr_matrix(X),
        ds.y,
        parts,
        l2=l2,
        hosted_workers=hosted_workers,
        dtype=dtype,
        device=device,
        name=ds.name,
        deterministic=deterministic,
    )
    problem.data = ds
    problem.bias = bool(bias)
    problem.normalize = bool(normalize)
    return problem
