"""A small smooth non-convex finite-sum family with exactly known constants.

    f_ij(x) = 1/2 (a_ij^T x - b_ij)^2 + c sum_k cos(x_k),   f_i = (1/m) sum_j f_ij,   f = mean_i f_i.

Hessians: Hess f_ij = a_ij a_ij^T - c diag(cos x), Hess f_i = H_i - c diag(cos x) with
H_i = A_i^T A_i / m. Since H_i is PSD and -c diag(cos x) has eigenvalues in [-c, c], its
spectral norm is at most lambda_max(H_i) + c, attained at x = pi * 1 (cos = -1). Hence

- L_i = lambda_max(H_i) + c **exactly** (the smallest valid constant);
- L_f = lambda_max(mean_i H_i) + c exactly;  L = sqrt(mean_i L_i^2);
- script-L_i (VR-MARINA Assumption 3.1, single-sample variance, the cos term cancels) is
  exact too: with Delta_ij = a_ij a_ij^T v (v = x - y),
  Var_j(Delta_ij) = v^T (E_j ||a_ij||^2 a_ij a_ij^T - H_i^2) v, so
  script-L_i^2 = lambda_max((1/m) sum_j ||a_ij||^2 a_ij a_ij^T - H_i^2); L_avg = sqrt(mean_i script-L_i^2);
- the Hessian variance (Szlendak et al. 2022) exactly: L_pm^2 = lambda_max(mean_i H_i^2 - Hbar^2).

f is bounded below by -c d (the squares are >= 0), and non-convex once c exceeds
lambda_min(mean_i H_i) (at x = 0 the Hessian is mean_i H_i - c I).

Data (all drawn with :class:`marina.rng.Randomness`, each worker's rows keyed by its global id,
so a process hosting a subset of workers rebuilds exactly their data):

- shared centre x* ~ N(0, I_d); worker offsets u_i, mu_i ~ N(0, I_d);
- features a_ij = (z_ij + h mu_i) / sqrt(d) with z_ij ~ N(0, I_d), so that H_i = O(1);
- targets b_ij = a_ij^T (x* + h u_i) + noise * e_ij, e_ij ~ N(0, 1).

The heterogeneity knob h >= 0 moves both the feature distribution and the target model of
every worker: h = 0 gives identically distributed workers (the f_i differ only by sampling);
larger h makes the local minimisers and the L_i differ more.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from marina import memory
from marina.data.sampling import normal
from marina.data.splits import make_split
from marina.errors import ConfigError
from marina.problems.linear import LinearModelProblem
from marina.problems.spectral import snap_up
from marina.rng import SHARED, Randomness

__all__ = ["SyntheticProblem", "synthetic"]

DATA_BYTES_PER_ENTRY = 128
"""Bytes per entry a_ij[k] while building (memory budget): the draws and the dense features
(4 float64 arrays), then the stored sparse copies (CSR, lifted, transposed, torch: ~6 x 16 B)."""


class SyntheticProblem(LinearModelProblem):
    """The synthetic family above (build it with :func:`synthetic`).

    Extra attributes: ``nonconvexity`` (c), ``heterogeneity`` (h), ``noise``, ``features``
    ((n m, d) float64 array of all workers' rows, worker-major) and ``targets`` ((n m,)).

    Args:
        A: (n m, d) rows of all workers, worker-major (m rows each).
        b: (n m,) targets of the rows.
        workers: n, the number of workers (the rows split into n equal contiguous shards).
        nonconvexity: c >= 0, weight of the cos term.
        **kwargs: the options of :class:`marina.problems.LinearModelProblem`.
    """

    def __init__(
        self, A: np.ndarray, b: np.ndarray, workers: int, *, nonconvexity: float, **kwargs: Any
    ) -> None:
        self.nonconvexity = float(nonconvexity)
        m = A.shape[0] // workers
        blocks = A.reshape(workers, m, -1)
        H = blocks.transpose(0, 2, 1) @ blocks / m
        sq = np.sum(blocks**2, axis=2)  # (n, m) squared row norms
        fourth = np.einsum("ij,ijk,ijl->ikl", sq, blocks, blocks) / m
        script_L = snap_up(np.sqrt(np.maximum(np.linalg.eigvalsh(fourth - H @ H)[:, -1], 0.0)))
        Hbar = H.mean(axis=0)  # Hessian variance: the cos term is common to all workers and cancels
        L_pm = float(snap_up(np.sqrt(max(np.linalg.eigvalsh(np.mean(H @ H, axis=0) - Hbar @ Hbar)[-1], 0.0))))
        parts = make_split(np.zeros(A.shape[0]), workers, "contiguous")
        super().__init__(
            sp.csr_matrix(A),
            b,
            parts,
            kappa=1.0,
            rho=self.nonconvexity,
            script_L=script_L,
            hessian_variance=L_pm,
            **kwargs,
        )

    def _psi(self, t: Tensor, b: Tensor) -> Tensor:
        return 0.5 * (t - b) ** 2

    def _dpsi(self, t: Tensor, b: Tensor) -> Tensor:
        return t - b

    def _reg_value(self, x: Tensor) -> float | Tensor:
        return self.nonconvexity * torch.cos(x).sum()

    def _reg_grad(self, x: Tensor) -> Tensor | None:
        return -self.nonconvexity * torch.sin(x)


def synthetic(
    workers: int = 5,
    dim: int = 10,
    samples: int = 20,
    heterogeneity: float = 1.0,
    seed: int = 0,
    *,
    nonconvexity: float = 1.0,
    noise: float = 0.1,
    hosted_workers: Sequence[int] | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    deterministic: bool = True,
) -> SyntheticProblem:
    """A synthetic smooth non-convex problem with exact constants (module docstring).

    Args:
        workers: n >= 1.
        dim: d >= 1.
        samples: m >= 1 samples per worker (every shard has the same size).
        heterogeneity: h >= 0, how different the workers' f_i are.
        seed: keys all the data.
        nonconvexity: c >= 0, weight of the cos term (c = 0 gives a convex least-squares problem).
        noise: standard deviation of the target noise (>= 0).
        hosted_workers: keep only these global workers (same data as in the full problem).
        dtype: of every returned tensor (float64 by default).
        device: where every returned tensor lives (default: the CPU).
        deterministic: hosting-independent CPU kernels (see :mod:`marina.problems.linear`).
    """
    for label, value in (("workers", workers), ("dim", dim), ("samples", samples)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(f"synthetic: {label} == {value!r}, must be an integer >= 1")
    for label, value in (("heterogeneity", heterogeneity), ("nonconvexity", nonconvexity), ("noise", noise)):
        if not value >= 0:
            raise ConfigError(f"synthetic: {label} == {value!r}, must be >= 0")
    n, d, m, h = int(workers), int(dim), int(samples), float(heterogeneity)
    memory.check(  # before drawing: the data and its copies, the per-worker Hessians
        {
            "data": n * m * d * DATA_BYTES_PER_ENTRY,
            "Hessian blocks": 3 * n * d * d * 8,
            "workspace": memory.WORKSPACE,
        },
        f"synthetic with workers = {n}, dim = {d}, samples = {m}",
    )
    centre = normal(Randomness(seed, "synthetic-centre", 0, [SHARED]), d)  # (1, d)
    rng = Randomness(seed, "synthetic-worker", 0, range(n))
    z = normal(rng, m * d).reshape(n, m, d)
    mu = normal(rng, d)[:, None, :]
    u = normal(rng, d)
    e = normal(rng, m)
    A = (z + h * mu) / np.sqrt(d)
    b = torch.einsum("imd,id->im", A, centre + h * u) + noise * e
    problem = SyntheticProblem(
        A.reshape(n * m, d).numpy(),
        b.reshape(-1).numpy(),
        n,
        nonconvexity=nonconvexity,
        hosted_workers=hosted_workers,
        dtype=dtype,
        device=device,
        deterministic=deterministic,
        name=f"synthetic(n={n}, d={d}, m={m}, h={h:g}, c={float(nonconvexity):g})",
    )
    problem.heterogeneity = h
    problem.noise = float(noise)
    problem.features = A.reshape(n * m, d).numpy()
    problem.targets = b.reshape(-1).numpy()
    return problem
