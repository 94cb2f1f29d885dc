"""Largest eigenvalues of Gram matrices A_i^T A_i of sparse row blocks, never densifying A_i.

Used for the smoothness constants of linear-model problems (L_i, L_f). For a block B (m x d)
the non-zero spectra of B^T B (d x d) and B B^T (m x m) agree, so the smaller Gram matrix is
formed (as a sparse product, then dense) and solved exactly with LAPACK ``eigvalsh`` when its
side is at most :data:`DENSE_LIMIT`. Larger blocks use Lanczos (``scipy.sparse.linalg.eigsh``)
on the operator v -> B^T (B v); the Ritz value theta is a lower bound of lambda_max, so we
return theta + ||B^T B v - theta v|| (the residual norm), an upper bound when the Ritz pair
has converged to the top eigenpair (Bauer-Fike for symmetric matrices).

Every returned value is rounded up to :data:`SNAP_BITS` significant bits (:func:`snap_up`).
LAPACK's and BLAS's results depend on the kernels picked for the CPU at hand (OpenBLAS's
Haswell, SkylakeX or Zen kernels give eigenvalues a few ulps apart), and these constants set the
stepsize, hence every iterate. Two machines whose values lie a few ulps apart get the same
rounded value unless a multiple of 2^-SNAP_BITS (relative) falls between them, which happens
with probability of order 2^(SNAP_BITS - 46) for a discrepancy of 2^6 ulps (2^-14). Rounding up keeps
every constant an upper bound; it grows by at most 2^(1-SNAP_BITS) relative.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

__all__ = ["block_lambda_max", "lambda_max", "snap_up"]

DENSE_LIMIT = 1500
"""Largest Gram side solved densely (a 1500 x 1500 float64 matrix is 18 MB)."""

SNAP_BITS = 32
"""Significant bits kept by :func:`snap_up` (a relative step of 2^-32, about 2.3e-10)."""


def snap_up(values: np.ndarray | float) -> np.ndarray:
    """The smallest float64 >= each value with at most :data:`SNAP_BITS` significant bits
    (exact: frexp, ceil and ldexp do not round); zeros, infinities and NaN stay as they are."""
    v = np.asarray(values, dtype=np.float64)
    mantissa, exponent = np.frexp(v)  # v = mantissa 2^exponent, 0.5 <= |mantissa| < 1
    return np.ldexp(np.ceil(np.ldexp(mantissa, SNAP_BITS)), exponent - SNAP_BITS)


def lambda_max(B: sp.spmatrix | np.ndarray) -> float:
    """lambda_max(B^T B) = sigma_max(B)^2 of one (sparse or dense) matrix."""
    m, d = B.shape
    if m == 0 or d == 0:
        return 0.0
    if min(m, d) <= DENSE_LIMIT:
        if sp.issparse(B):
            B = sp.csr_matrix(B)
            G = (B @ B.T) if m < d else (B.T @ B)
            G = G.toarray()
        else:
            G = B @ B.T if m < d else B.T @ B
        return float(snap_up(max(np.linalg.eigvalsh(G)[-1], 0.0)))
    Bs = sp.csr_matrix(B)
    Bt = Bs.T.tocsr()
    op = spla.LinearOperator((d, d), matvec=lambda v: Bt @ (Bs @ v), dtype=np.float64)
    vals, vecs = spla.eigsh(op, k=1, which="LA", tol=1e-10)
    theta, v = float(vals[0]), vecs[:, 0]
    residual = float(np.linalg.norm(op.matvec(v) - theta * v))
    return float(snap_up(max(theta, 0.0) + residual))


def block_lambda_max(X: sp.csr_matrix, offsets: np.ndarray) -> np.ndarray:
    """(n,) lambda_max(X_i^T X_i) of the consecutive row blocks X[offsets[i]:offsets[i+1]].

    Equal small blocks are solved in one batched dense call (the (n, m, d) stack is at most
    32 MB); others one at a time (setup cost only, never on the hot path).
    """
    X = sp.csr_matrix(X)
    sizes = np.diff(offsets)
    n, d = sizes.size, X.shape[1]
    out = np.empty(n, dtype=np.float64)
    m = int(sizes.max()) if n else 0
    if n and int(sizes.min()) == m and n * m * d <= 4_000_000 and min(m, d) <= DENSE_LIMIT:
        dense = X[int(offsets[0]) : int(offsets[-1])].toarray().reshape(n, m, d)
        G = dense @ dense.transpose(0, 2, 1) if m < d else dense.transpose(0, 2, 1) @ dense
        return snap_up(np.maximum(np.linalg.eigvalsh(G)[:, -1], 0.0))
    for i in range(n):  # setup only
        out[i] = lambda_max(X[int(offsets[i]) : int(offsets[i + 1])])
    return out
