"""Finite-sum linear-model problems on sparse data: the engine behind ``libsvm`` and ``synthetic``.

Every sample is a row a_ij of a sparse matrix with a target b_ij, and

    f_ij(x) = psi(a_ij^T x, b_ij) + r(x),     f_i = (1/m_i) sum_j f_ij,     f = (1/n) sum_i f_i,

with a scalar loss psi (its derivative psi' in t) and a regulariser r common to all samples.
Then grad f_ij(x) = psi'(a_ij^T x, b_ij) a_ij + grad r(x).

Storage and the hot path. The hosted rows are stored as one CSR matrix A, ordered by worker
(worker i's shard is a block of consecutive rows), plus the "lifted transpose" T, an (n d) x N
CSR matrix whose row i*d + k holds column k of worker i's block. Then, for all workers at once,

    t = A x                            (one sparse mat-vec, O(nnz))
    w_j = psi'(t_j, b_j)               (O(N); the factor 1/m_i is folded into T)
    G = (T w).view(n, d)               (one sparse mat-vec, O(nnz)):  G[i] = sum_{j in i} w_j a_j

so evaluating all n local gradients costs one A x plus one A^T w (the same nnz), with no loop
over workers. When n d exceeds the number of data rows N of the split (many workers: a9a with
n = 1000 gives T 123000 rows of ~4 non-zeros, where per-row overhead dominates), T w is
computed instead as the transposed product of the lifted N x (n d) matrix (a scatter over the
N rows, cost independent of n). The choice depends only on the full split, never on which
workers are hosted. Minibatch oracles gather only the selected rows' non-zeros
(O(b * nnz per row)) and apply the same two steps to them.

Exactness across hosting. On CPU the products use scipy's sequential CSR/CSC kernels, which
sum each output entry's terms one by one in row order, and the elementwise transcendental
functions go through :func:`layout_independent_`. The result for a worker therefore does not
depend on which other rows are stored: a process hosting workers [i, j] returns bit for bit
rows i and j of the full simulation (so simulated and torch.distributed runs with the same
seed follow the same trajectory). torch's MKL kernels are not like this (their kernel choice
depends on the whole matrix, so the same row can round differently); they are used with
``deterministic=False`` (faster with many threads) and on GPUs.

Constants (computed once on the FULL split, before keeping the hosted workers, so every
process agrees on the theory defaults): with kappa = sup_t |psi''(t)| and rho the curvature
bound of r (||Hess r|| <= rho),

- L_i = kappa lambda_max(A_i^T A_i) / m_i + rho        (Hess f_i = A_i^T D A_i / m_i + Hess r);
- L = sqrt(mean_i L_i^2)                              (MARINA, Assumption 1.2);
- L_f = kappa lambda_max(sum_i A_i^T A_i / (n m_i)) + rho (Hess f; equals
  kappa lambda_max(A^T A)/N + rho for equal shards);
- L_avg (VR-MARINA, Assumption 3.1): minibatches of b' samples drawn uniformly, i.i.d. (or
  without replacement, which only shrinks the variance by (m - b')/(m - 1)), give
  E||Delta~_i - Delta_i||^2 = Var_j(Delta_ij)/b' <= E_j ||Delta_ij||^2 / b'
  where Delta_ij = grad f_ij(x) - grad f_ij(y) without the common r term (it cancels in
  Delta~_i - Delta_i) is c_ij a_ij a_ij^T h, h = x - y, with |c_ij| <= kappa (mean value of
  psi''), so ||Delta_ij||^2 <= kappa^2 h^T (||a_ij||^2 a_ij a_ij^T) h and
  E_j ||Delta_ij||^2 <= kappa^2 lambda_max(M_i) ||h||^2, M_i = (1/m_i) sum_j ||a_ij||^2 a_ij a_ij^T.
  So script-L_i = kappa sqrt(lambda_max(M_i)) and L_avg = sqrt(mean_i script-L_i^2), the
  average the paper's Theorem 3.1 uses. Since h^T M_i h <= mean_j ||a_ij||^4 ||h||^2, this is
  never looser than kappa sqrt(mean_j ||a_ij||^4) (the per-sample L_ij = kappa ||a_ij||^2
  averaged; 3.235 against 2.470 on mushrooms, n = 5) nor than the paper's example
  script-L_i <= max_j L_ij (Section 3.1, after Assumption 3.1). lambda_max(M_i) is computed as
  for L_i (:func:`marina.problems.spectral.block_lambda_max`: exact eigenvalues for small
  blocks, Lanczos plus its residual, an upper bound, otherwise). Subclasses may supply a
  tighter script-L_i (the synthetic problem computes it exactly).
- L_pm, the Hessian variance of Szlendak, Tyurin, Richtarik 2022 (used by MARINA's stepsize with
  correlated compressors): grad f_i(x) - grad f_i(y) = (H_i + R) h with h = x - y,
  H_i = A_i^T D_i A_i / m_i (D_i diagonal, its entries the mean values of psi'' between the two
  points, so in [lo, hi] = [min(inf psi'', 0), max(sup psi'', 0)]: ``psi_second_range``, else
  [-kappa, kappa]) and R the common regulariser part, which cancels. For any number c, since the
  mean minimises a sum of squares,
  (1/n) sum_i ||H_i h||^2 - ||Hbar h||^2 = (1/n) sum_i ||(H_i - Hbar) h||^2
  <= (1/n) sum_i ||(H_i - c I) h||^2 <= (1/n) sum_i ||H_i - c I||^2 ||h||^2,
  and H_i is symmetric with eigenvalues in [lo lam_i, hi lam_i], lam_i = lambda_max(A_i^T A_i)/m_i
  (lo sum_j (a_ij^T v)^2 <= v^T A_i^T D_i A_i v <= hi sum_j (a_ij^T v)^2 as lo <= 0 <= hi), so
  ||H_i - c I|| <= |c - mid_i| + half_i, the midpoint and half-width of that interval. Hence
  L_pm^2 <= min_c (1/n) sum_i (|c - mid_i| + half_i)^2 (:func:`hessian_variance_bound`; c = 0
  gives mean_i (kappa lam_i)^2 = mean_i (L_i - rho)^2, L^2 without a regulariser). It is a bound
  (the D_i depend on x, y and the data, no closed form for the supremum); subclasses with constant
  curvature give it exactly (the synthetic problem: L_pm^2 = lambda_max((1/n) sum_i H_i^2 -
  Hbar^2)). For the paper's non-convex logistic loss, psi'' in [-0.1202, 0.1541], and equal
  lam_i it is (0.1541 + 0.1202)/2 lam = 0.89 L without a regulariser (a convex loss, psi'' >= 0,
  would give L/2): PermK's stepsize gains little from it on the LibSVM problems. The supremum
  over the box of D_i ignores how x, y tie the D_i of the workers together; the true L_pm can be
  far smaller, but no computable bound here captures that.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from marina.data.splits import Split
from marina.errors import ConfigError
from marina.lazy_rows import DenseRows, LazyRows
from marina.problems.base import Problem
from marina.problems.spectral import block_lambda_max, lambda_max

__all__ = ["LinearModelProblem", "hessian_variance_bound", "layout_independent_"]

_INT32_MAX = 2**31 - 1
_NUMPY_DTYPES = {torch.float64: np.float64, torch.float32: np.float32}
_SIMD_ALIGN = 64  # a multiple of two SIMD vectors of any dtype on any CPU (AVX-512: 16 floats)
_SLICE = 32768  # at::internal::GRAIN_SIZE, a multiple of _SIMD_ALIGN


def _csr_tensor(M: sp.csr_matrix, dtype: torch.dtype, index_dtype: torch.dtype) -> Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta": we rely on mat-vec only
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            torch.from_numpy(np.asarray(M.indptr)).to(index_dtype),
            torch.from_numpy(np.asarray(M.indices)).to(index_dtype),
            torch.from_numpy(np.asarray(M.data, dtype=np.float64)).to(dtype),
            size=M.shape,
            check_invariants=False,
        )


def layout_independent_(op_: Callable[[Tensor], Tensor], t: Tensor) -> Tensor:
    """Apply an in-place elementwise op (``Tensor.sigmoid_``, ...) to t, computing every element
    with the same code whatever its position; returns the result (t itself when no padding).

    On CPU, ATen evaluates a contiguous elementwise op with SIMD vectors and finishes the last
    (length mod 2 x vector width) elements of each thread's chunk with scalar code, whose
    transcendental functions round differently from the vectorised ones (about 2% of sigmoid
    values differ in the last bit). A process hosting a subset of the workers sees their rows at
    other positions, so it would disagree in the last bit with the full simulation. Here the
    array is padded to a multiple of :data:`_SIMD_ALIGN` and processed in slices of
    :data:`_SLICE` elements (ATen's grain size: one slice is never split among threads), so every
    element takes the vectorised path. On other devices the op is applied as is.
    """
    if t.device.type != "cpu" or (t.numel() % _SIMD_ALIGN == 0 and t.numel() <= _SLICE and t.is_contiguous()):
        return op_(t)  # elsewhere as is; on the CPU, aligned and within one slice already
    flat = t.reshape(-1)
    n = flat.numel()
    pad = (-n) % _SIMD_ALIGN
    buf = flat if pad == 0 else torch.cat([flat, flat.new_zeros(pad)])
    for start in range(0, buf.numel(), _SLICE):
        op_(buf[start : start + _SLICE])
    return buf[:n].view(t.shape)


def hessian_variance_bound(lam: np.ndarray, curvature: tuple[float, float]) -> float:
    """sqrt(min_c mean_i (|c - mid_i| + half_i)^2) >= L_pm (module docstring), with mid_i and
    half_i the midpoint and half-width of [lo lam_i, hi lam_i], lo = min(inf psi'', 0),
    hi = max(sup psi'', 0) from ``curvature``, lam_i = lambda_max(A_i^T A_i)/m_i. Any c gives a
    valid bound: the smaller of c = 0 (sqrt(mean_i (max(-lo, hi) lam_i)^2)) and the minimiser
    found by golden-section search (the function is convex in c)."""
    lo, hi = min(float(curvature[0]), 0.0), max(float(curvature[1]), 0.0)
    mid, half = (lo + hi) / 2 * lam, (hi - lo) / 2 * lam

    def squared(c: float) -> float:
        return float(np.mean((np.abs(c - mid) + half) ** 2))

    a, b = float(np.min(lo * lam, initial=0.0)), float(np.max(hi * lam, initial=0.0))
    shrink = (np.sqrt(5.0) - 1.0) / 2.0
    for _ in range(100):  # the bracket shrinks by 0.618 per step: far below one ulp at the end
        c1, c2 = b - shrink * (b - a), a + shrink * (b - a)
        if squared(c1) <= squared(c2):
            b = c2
        else:
            a = c1
    return float(np.sqrt(min(squared(0.0), squared((a + b) / 2))))


class LinearModelProblem(Problem):
    """f_ij(x) = psi(a_ij^T x, b_ij) + r(x) on sparse rows, split among workers.

    Subclasses define the loss through :meth:`_psi` and :meth:`_dpsi`, the regulariser through
    :meth:`_reg_value` and :meth:`_reg_grad`, and give ``kappa`` (sup |psi''|) and ``rho``
    (curvature bound of r) to the constructor.

    Args:
        X: (N, d) CSR features of the whole data set (all workers), any row order.
        targets: (N,) b_ij of every row.
        split: which rows belong to which worker (global worker ids 0..n-1).
        kappa: sup_t |psi''(t, b)| over t and b.
        rho: ||Hess r(x)|| <= rho for all x.
        hosted_workers: global ids of the workers this object hosts (default: all).
        dtype: of every tensor it returns (float64 by default).
        device: where every tensor it returns lives (default: the CPU).
        name: short description for logs.
        script_L: optional (n,) script-L_i of every worker (else the bound above).
        hessian_variance: optional exact L_pm (else the bound above).
        deterministic: on CPU, use sequential (scipy) sparse kernels whose result for a worker
            does not depend on the other rows stored (default). False uses torch's (MKL,
            multi-threaded) kernels: faster on many cores, but a process hosting a subset of
            workers may then differ from the full simulation in the last bits. Other devices
            always use torch's kernels.

    Attributes (besides :class:`Problem`'s):
        total_workers: n of the whole split (L, L_avg, L_f refer to all of them).
        L_i_all: (total_workers,) L_i of every worker of the split.
        L_avg_i: (n_workers,) script-L_i of the hosted workers.
        split: the :class:`marina.data.splits.Split`.
        nnz: stored non-zeros of the hosted rows.
    """

    psi_second_range: tuple[float, float] | None = None
    """(inf psi'', sup psi'') over t and b when known (tightens L_pm, module docstring); None:
    [-kappa, kappa]."""

    def __init__(
        self,
        X: sp.csr_matrix,
        targets: np.ndarray,
        split: Split,
        *,
        kappa: float,
        rho: float,
        hosted_workers: Sequence[int] | None = None,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
        name: str = "linear",
        script_L: np.ndarray | None = None,
        hessian_variance: float | None = None,
        deterministic: bool = True,
    ) -> None:
        n_total = split.n_workers
        X = sp.csr_matrix(X, dtype=np.float64)
        targets = np.asarray(targets, dtype=np.float64)
        ordered = X[split.order]
        ordered.sort_indices()
        offsets = split.offsets
        sizes = split.sizes.astype(np.float64)

        # -- constants on the full split (identical in every process) ------------------------
        lam = block_lambda_max(ordered, offsets)
        L_all = kappa * lam / sizes + rho
        row_scale = 1.0 / np.repeat(sizes, split.sizes)
        weighted = sp.diags(np.sqrt(row_scale / n_total)) @ ordered
        L_f = kappa * lambda_max(weighted) + rho
        if script_L is None:  # kappa sqrt(lambda_max(M_i)), M_i = W_i^T W_i, rows sqrt(||a||^2/m_i) a
            sq_norms = np.asarray(ordered.multiply(ordered).sum(axis=1)).reshape(-1)
            fourth = sp.diags(np.sqrt(sq_norms * row_scale)) @ ordered
            script_L = kappa * np.sqrt(block_lambda_max(sp.csr_matrix(fourth), offsets))
        script_L = np.asarray(script_L, dtype=np.float64)

        # -- hosted workers ---------------------------------------------------------------------
        if hosted_workers is None:
            hosted = np.arange(n_total, dtype=np.int64)
        else:
            hosted = np.asarray(list(hosted_workers), dtype=np.int64).reshape(-1)
            if hosted.size == 0:
                raise ConfigError("hosted_workers is empty, must name at least one worker")
            if hosted.min() < 0 or hosted.max() >= n_total:
                raise ConfigError(f"hosted_workers {hosted.tolist()} must lie in [0, {n_total - 1}]")
            if np.unique(hosted).size != hosted.size:
                raise ConfigError(f"hosted_workers {hosted.tolist()} repeats a worker")
        rows = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in hosted])
        A = ordered[rows]
        h_sizes = split.sizes[hosted]
        n, d = hosted.size, X.shape[1]
        n_rows = A.shape[0]
        pad = (-n_rows) % _SIMD_ALIGN  # empty rows: see layout_independent_
        A = sp.vstack([A, sp.csr_matrix((pad, d))], format="csr")

        self.n_workers = int(n)
        self.total_workers = int(n_total)
        self.dim = int(d)
        self.dtype = dtype
        self.device = torch.device("cpu")
        self.name = name
        self.split = split
        self.nnz = int(A.nnz)
        self._n_rows = int(n_rows)
        self.worker_ids = torch.as_tensor(hosted, dtype=torch.int64)
        self.sizes = torch.as_tensor(h_sizes, dtype=torch.int64)
        self.L_i_all = torch.as_tensor(L_all, dtype=torch.float64)
        self._L_i = self.L_i_all[torch.as_tensor(hosted)]
        self.L_avg_i = torch.as_tensor(script_L[hosted], dtype=torch.float64)
        self._L = float(np.sqrt(np.mean(L_all**2)))
        self._L_avg = float(np.sqrt(np.mean(script_L**2)))
        self._L_f = float(L_f)
        curvature = self.psi_second_range or (-kappa, kappa)
        self._L_pm = (
            hessian_variance_bound(lam / sizes, curvature)
            if hessian_variance is None
            else float(hessian_variance)
        )

        # -- hot-path storage (module docstring) -------------------------------------------------
        np_dtype = _NUMPY_DTYPES.get(dtype, np.float64)
        worker_of_row = np.repeat(np.arange(n), h_sizes)
        worker_of_padded = np.concatenate([worker_of_row, np.zeros(pad, dtype=worker_of_row.dtype)])
        row_scale = np.concatenate([1.0 / h_sizes[worker_of_row], np.zeros(pad)])
        lifted = sp.csr_matrix(
            (A.data, A.indices + np.repeat(worker_of_padded * d, np.diff(A.indptr)), A.indptr),
            shape=(A.shape[0], n * d),
        )
        # the per-row factor _grad_factor / m_i lives in the lifted values: T w needs w = psi'/factor
        self._lifted = sp.csr_matrix(sp.diags(self._grad_factor * row_scale) @ lifted, dtype=np_dtype)
        self._A_sp = sp.csr_matrix(A, dtype=np_dtype)
        self._scatter = n_total * d > split.order.size  # many workers: scatter over rows (CSC)
        self._T_sp = self._lifted.T if self._scatter else self._lifted.T.tocsr()
        self._S_sp = sp.csr_matrix(  # (n, N_pad): worker means for local_losses
            (row_scale[:n_rows], (worker_of_row, np.arange(n_rows))), shape=(n, A.shape[0]), dtype=np_dtype
        )
        self.deterministic = bool(deterministic)
        big = max(A.nnz, n_total * d, A.shape[0]) > _INT32_MAX
        self._index_dtype = torch.int64 if big else torch.int32
        self._A: Tensor | None = None  # torch CSR copies, built on demand (torch kernel path)
        self._Tcsr: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # lifted T, lazy entries
        self._T: Tensor | None = None
        self._crow = torch.from_numpy(np.asarray(A.indptr, dtype=np.int64))
        self._col = torch.from_numpy(np.asarray(A.indices, dtype=np.int64))
        self._val = torch.from_numpy(np.asarray(A.data, dtype=np.float64)).to(dtype)
        self._targets = torch.as_tensor(
            np.concatenate([targets[split.order][rows], np.zeros(pad)]), dtype=dtype
        )
        self._row_scale = torch.as_tensor(row_scale, dtype=dtype)
        self._row_worker = torch.as_tensor(worker_of_padded, dtype=torch.int64)
        self._offsets = torch.as_tensor(np.concatenate([[0], np.cumsum(h_sizes)]), dtype=torch.int64)
        self._use_torch_kernels = not self.deterministic
        if device is not None:
            self._move(torch.device(device))
        elif self._use_torch_kernels:
            self._build_torch_kernels()

    # -- loss pieces (subclasses) -----------------------------------------------------------
    def _psi(self, t: Tensor, b: Tensor) -> Tensor:
        """psi(t, b), elementwise."""
        raise NotImplementedError

    def _dpsi(self, t: Tensor, b: Tensor) -> Tensor:
        """d psi / d t at (t, b), elementwise."""
        raise NotImplementedError

    _grad_factor: float = 1.0
    """Constant factor of psi' folded into the lifted matrix (see :meth:`_weights`)."""

    def _weights(self, t: Tensor, b: Tensor) -> Tensor:
        """psi'(t, b) / _grad_factor, elementwise; may overwrite t (a fresh product A x)."""
        return self._dpsi(t, b)

    _weights_read_targets = True
    """False where :meth:`_weights` ignores b (then :meth:`_grad_entries` does not gather it)."""

    def _reg_value(self, x: Tensor) -> float | Tensor:
        return 0.0

    def _reg_grad(self, x: Tensor) -> Tensor | None:
        """grad r(x) (d,), or None when r = 0."""
        return None

    # -- device and kernels ------------------------------------------------------------------
    def _build_torch_kernels(self) -> None:
        if self._A is None:
            self._A = _csr_tensor(self._A_sp, self.dtype, self._index_dtype).to(self.device)
            self._T = _csr_tensor(self._lifted.T.tocsr(), self.dtype, self._index_dtype).to(self.device)

    def _move(self, device: torch.device) -> None:
        for key, value in list(vars(self).items()):
            if isinstance(value, Tensor):
                setattr(self, key, value.to(device))
        self.device = self._val.device  # "cuda" -> "cuda:0"
        self._use_torch_kernels = self.device.type != "cpu" or not self.deterministic
        if self._use_torch_kernels:
            self._build_torch_kernels()

    def to(self, device: torch.device | str) -> LinearModelProblem:
        """A copy of this problem whose tensors live on ``device`` (self when already there)."""
        device = torch.device(device)
        if device == self.device:
            return self
        moved = copy.copy(self)
        moved._move(device)
        return moved

    # -- oracles ------------------------------------------------------------------------------
    def _x(self, x: Tensor) -> Tensor:
        if x.shape != (self.dim,):
            raise ConfigError(f"x has shape {tuple(x.shape)}, must be ({self.dim},)")
        return x.detach().to(dtype=self.dtype, device=self.device)

    def _add_reg(self, G: Tensor, x: Tensor) -> Tensor:
        g = self._reg_grad(x)
        return G if g is None else G.add_(g)

    def _forward(self, x: Tensor) -> Tensor:
        """t = A x over the hosted (padded) rows."""
        if self._use_torch_kernels:
            return self._A @ x
        return torch.from_numpy(self._A_sp @ x.numpy())

    def _row_weights(self, x: Tensor) -> Tensor:
        """w = psi'(A x, b) / _grad_factor over the hosted rows (the lifted values carry the rest)."""
        return self._weights(self._forward(x), self._targets)

    def _grads_from(self, w: Tensor, x: Tensor) -> Tensor:
        """(n, d) local gradients from the row weights w at x: the lifted A^T w plus grad r(x)."""
        if self._T is not None and (self.device.type != "cpu" or not self._scatter):
            G = self._T @ w
        else:
            G = torch.from_numpy(self._T_sp @ w.numpy())
        return self._add_reg(G.view(self.n_workers, self.dim), x)

    def local_grads(self, x: Tensor) -> Tensor:
        """(n, d) grad f_i(x) of every hosted worker: one A x, one lifted A^T w (see module doc)."""
        x = self._x(x)
        return self._grads_from(self._row_weights(x), x)

    def lazy_local_grads(self, x: Tensor) -> LazyRows:
        """The local gradients at x, evaluated where read (:mod:`marina.lazy_rows`).

        On the deterministic CPU path only t = A x is computed now. An entry (i, c) read by
        ``gather`` is row i d + c of the lifted transpose times the row weights w, and only the
        data rows in that row get their weight w_j = psi'(t_j)/factor (:meth:`_grad_entries`);
        the sum runs in the order of the full product, so the entry equals
        ``local_grads(x)[i, c]`` bit for bit, at the cost of that row's non-zeros.
        ``dense()`` computes every weight and the full product. Elsewhere (torch kernels) the
        gradients are computed at once.
        """
        x = self._x(x)
        if self._use_torch_kernels:
            return DenseRows(self._grads_from(self._row_weights(x), x))
        return _LinearGradients(self, x, self._forward(x))

    def _grad_entries(
        self, points: list[tuple[Tensor, Tensor]], idx: Tensor, workers: Tensor | None = None
    ) -> list[Tensor]:
        """(r, K) entries idx of the local gradients at each (t = A x, x) of ``points``, for
        the hosted workers at positions ``workers`` (r,) (default: all, in order). CPU path.

        Each entry is ``sum_j T[r, j] w_j`` over the non-zeros of row r = i d + c of the lifted
        transpose T, in increasing j, accumulated from 0 in that order (a running sum for a single
        entry, ``index_add_`` for several; both sequential on the CPU): the order and the
        products of scipy's CSR and CSC mat-vecs. The weights w_j are
        computed for those data rows j only, by one :meth:`_weights` call for all points, whose
        results do not depend on positions (:func:`layout_independent_`). Hence the bits of the
        full computation. The non-zeros are located once for all points, with numpy (the
        per-call cost of small torch operations would dominate).
        """
        if self._Tcsr is None:
            T = self._lifted.T.tocsr()  # sorted indices: increasing data row j in every row
            self._Tcsr = (np.asarray(T.indptr, dtype=np.int64), np.asarray(T.indices), T.data)
        crow, col, val = self._Tcsr
        n, K = idx.shape
        first = np.arange(n) if workers is None else workers.numpy()
        rows = (idx.numpy() + (first * self.dim)[:, None]).reshape(-1)
        if rows.size == 1:  # one entry (RandK with K = 1 on one worker): its non-zeros are a slice
            lo, hi = crow[rows[0]], crow[rows[0] + 1]
            data_rows, vals = col[lo:hi], val[lo:hi]
        else:
            starts = crow[rows]
            lens = crow[rows + 1] - starts
            ends = np.cumsum(lens)
            rid = np.repeat(np.arange(rows.size), lens)
            pos = np.arange(rid.size) + np.repeat(starts - ends + lens, lens)
            data_rows, vals = col[pos], val[pos]
        # t and b of those rows at every point, one after the other, padded as layout_independent_ pads
        P, nnz = len(points), data_rows.size
        size = P * nnz + (-(P * nnz)) % _SIMD_ALIGN
        t, b = np.zeros(size, dtype=vals.dtype), np.zeros(size, dtype=vals.dtype)
        for p, (t_p, _) in enumerate(points):
            np.take(t_p.numpy(), data_rows, out=t[p * nnz : (p + 1) * nnz])
        if self._weights_read_targets:
            np.take(self._targets.numpy(), data_rows, out=b[:nnz])
            for p in range(1, P):
                b[p * nnz : (p + 1) * nnz] = b[:nnz]
        w = self._weights(torch.from_numpy(t), torch.from_numpy(b)).numpy()[: P * nnz]  # may overwrite t
        prod = (w.reshape(P, nnz) * vals).reshape(-1)  # the products of the full mat-vec
        if rows.size == 1:  # one sum per point: a running sum (sequential), its last value
            sums = np.add.accumulate(prod.reshape(P, nnz), axis=1)[:, -1] + 0.0 if nnz else np.zeros(P)
        else:
            slots = rid if P == 1 else np.concatenate([rid + p * rows.size for p in range(P)])
            sums = (
                torch.zeros(P * rows.size, dtype=self.dtype)
                .index_add_(0, torch.from_numpy(slots), torch.from_numpy(prod))
                .numpy()
            )
        sums = torch.from_numpy(sums.astype(vals.dtype, copy=False))
        flat_idx = idx.reshape(-1)
        outs = []
        for p, (_, x) in enumerate(points):
            out = sums[p * rows.size : (p + 1) * rows.size]
            g = self._reg_grad(x)
            outs.append((out if g is None else out.add_(g.index_select(0, flat_idx))).view(n, K))
        return outs

    def local_losses(self, x: Tensor) -> Tensor:
        """(n,) f_i(x) = (1/m_i) sum_j psi(a_ij^T x, b_ij) + r(x)."""
        x = self._x(x)
        v = self._psi(self._forward(x), self._targets)
        if self._use_torch_kernels:
            out = torch.zeros(self.n_workers, dtype=self.dtype, device=self.device)
            out.index_add_(0, self._row_worker, v * self._row_scale)
        else:
            out = torch.from_numpy(self._S_sp @ v.numpy())
        return out + self._reg_value(x)

    def _gather(self, idx: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Non-zeros of the selected rows: (rows (n b,), row id per nnz, cols, vals, lifted cols).

        Row r = i b + k is local sample idx[i, k] of worker i; only its non-zeros are read
        (O(b * nnz per row)), so the cost never depends on m. ``lifted cols`` = i d + col.
        """
        if idx.dim() != 2 or idx.shape[0] != self.n_workers:
            raise ConfigError(f"idx has shape {tuple(idx.shape)}, must be (n_workers={self.n_workers}, b)")
        if idx.shape[1] == 0:
            raise ConfigError("minibatch size b == 0, must be >= 1")
        idx = idx.to(device=self.device, dtype=torch.int64)
        if bool(((idx < 0) | (idx >= self.sizes[:, None])).any()):
            raise ConfigError("idx holds a local index outside [0, m_i) for some worker")
        rows = (self._offsets[:-1, None] + idx).reshape(-1)
        starts = self._crow.index_select(0, rows)
        lens = self._crow.index_select(0, rows + 1).sub_(starts)
        ends = torch.cumsum(lens, 0)
        total = int(ends[-1])
        rid = torch.repeat_interleave(torch.arange(rows.numel(), device=self.device), lens, output_size=total)
        pos = torch.arange(total, device=self.device).add_((starts - ends + lens).index_select(0, rid))
        cols, vals = self._col.index_select(0, pos), self._val.index_select(0, pos)
        worker_base = torch.div(rid, idx.shape[1], rounding_mode="floor").mul_(self.dim)
        return rows, rid, cols, vals, worker_base.add_(cols)

    def _minibatch(self, X: Tensor, idx: Tensor) -> Tensor:
        """(n, d): (1/b) sum_{j in idx[i]} (sum_c sign_c psi'(a_ij^T X[:, c], b_ij)) a_ij, X (d, C)
        with C = 1 (value) or 2 (difference, sign +1 then -1).

        Both sums are ``index_add_`` calls, sequential in index order on CPU: every entry adds
        its own row's (worker's) terms in the same order whatever else is stored.
        """
        rows, rid, cols, vals, lifted_cols = self._gather(idx)
        nb, C = rows.numel(), X.shape[1]
        prod = X.index_select(0, cols).mul_(vals[:, None]).reshape(-1)  # (nnz * C,)
        slot = (rid[:, None] * C + torch.arange(C, device=self.device)).reshape(-1)
        t = torch.zeros(nb * C, dtype=self.dtype, device=self.device).index_add_(0, slot, prod).view(nb, C)
        dp = self._dpsi(t, self._targets.index_select(0, rows)[:, None])  # (n b, C)
        w = (dp[:, 0] - dp[:, 1] if C == 2 else dp[:, 0]).div_(idx.shape[1])
        G = torch.zeros(self.n_workers * self.dim, dtype=self.dtype, device=self.device)
        G.index_add_(0, lifted_cols, w.index_select(0, rid).mul_(vals))
        return G.view(self.n_workers, self.dim)

    def minibatch_grads(self, x: Tensor, idx: Tensor) -> Tensor:
        """(n, d): (1/b) sum_{j in idx[i]} grad f_ij(x), idx (n, b) local indices (repeats count)."""
        x = self._x(x)
        return self._add_reg(self._minibatch(x[:, None], idx), x)

    def minibatch_grad_diffs(self, x_new: Tensor, x_old: Tensor, idx: Tensor) -> Tensor:
        """(n, d): (1/b) sum_{j in idx[i]} (grad f_ij(x_new) - grad f_ij(x_old)), same samples."""
        x_new, x_old = self._x(x_new), self._x(x_old)
        G = self._minibatch(torch.stack([x_new, x_old], dim=1), idx)
        g_new, g_old = self._reg_grad(x_new), self._reg_grad(x_old)
        return G if g_new is None else G.add_(g_new - g_old)

    def minibatch_bytes(self, b: int, points: int) -> int:
        """Peak bytes of one minibatch oracle on ``b`` samples per hosted worker, each evaluated
        at ``points`` points (:meth:`_gather` and :meth:`_minibatch`, bounded with the densest row):
        per non-zero five int64 indices, its value, product and weight at every point; per
        sampled row four int64 offsets and its points' t, psi' and weights; the (n, d) result."""
        item = int(self.dtype.itemsize)
        densest = int((self._crow[1:] - self._crow[:-1]).max()) if self._crow.numel() > 1 else 0
        per_nnz = 5 * 8 + (2 + points) * item + points * 8
        per_row = 4 * 8 + (2 * points + 2) * item
        return self.n_workers * b * (densest * per_nnz + per_row) + self.n_workers * self.dim * item

    # -- constants ----------------------------------------------------------------------------
    @property
    def L_i(self) -> Tensor:
        """(n_workers,) L_i = kappa lambda_max(A_i^T A_i)/m_i + rho of the hosted workers."""
        return self._L_i

    @property
    def L(self) -> float:
        """sqrt(mean_i L_i^2) over ALL workers of the split (not only the hosted ones)."""
        return self._L

    @property
    def L_avg(self) -> float:
        """sqrt(mean_i script-L_i^2) over all workers (VR-MARINA Assumption 3.1; module doc)."""
        return self._L_avg

    @property
    def L_pm(self) -> float:
        """Hessian variance L_pm over all workers (module docstring): exact or a bound, <= L."""
        return self._L_pm

    @property
    def L_f(self) -> float:
        """kappa lambda_max(sum_i A_i^T A_i/(n m_i)) + rho, smoothness of f (all workers)."""
        return self._L_f

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.name!r}, workers={self.n_workers}/{self.total_workers}, "
            f"dim={self.dim}, rows={int(self.sizes.sum())}, nnz={self.nnz}, split={self.split.kind!r}, "
            f"L={self.L:.4g}, L_avg={self.L_avg:.4g}, L_f={self.L_f:.4g}, dtype={self.dtype}, "
            f"device={self.device})"
        )


class _LinearGradients(LazyRows):
    """Local gradients of a :class:`LinearModelProblem` at x, from t = A x (``lazy_local_grads``).

    A row subset (``workers``: positions among the hosted workers) keeps a reference to the
    view of all hosted workers (``root``), which computes and keeps the dense gradients once
    however many subsets are materialised.
    """

    def __init__(
        self,
        problem: LinearModelProblem,
        x: Tensor,
        t: Tensor,
        workers: Tensor | None = None,
        root: _LinearGradients | None = None,
    ) -> None:
        self.problem, self.x, self.t, self.workers = problem, x, t, workers
        self.root = self if root is None else root
        n = problem.n_workers if workers is None else int(workers.numel())
        self.shape = torch.Size((n, problem.dim))
        self.dtype, self.device = problem.dtype, problem.device
        self._G: Tensor | None = None

    def _same_rows(self, other: _LinearGradients) -> bool:
        if self.workers is None or other.workers is None:
            return self.workers is None and other.workers is None
        return torch.equal(self.workers, other.workers)

    def _select_rows(self, rows: Tensor) -> LazyRows:
        if self._G is not None:
            return DenseRows(self._G.index_select(0, rows))
        workers = rows if self.workers is None else self.workers.index_select(0, rows)
        return _LinearGradients(self.problem, self.x, self.t, workers, self.root)

    def dense(self) -> Tensor:
        if self._G is None:
            if self.root is not self:
                self._G = self.root.dense().index_select(0, self.workers)
            else:
                w = self.problem._weights(self.t.clone(), self.problem._targets)  # t stays for gathers
                self._G = self.problem._grads_from(w, self.x)
        return self._G

    def _gather(self, idx: Tensor) -> Tensor:
        if self._G is not None:
            return self._G.gather(1, idx)
        return self.problem._grad_entries([(self.t, self.x)], idx, self.workers)[0]

    def _gather_minus(self, other: LazyRows | Tensor, idx: Tensor) -> Tensor:
        if (
            isinstance(other, _LinearGradients)
            and other.problem is self.problem
            and self._same_rows(other)
            and self._G is None
            and other._G is None
        ):
            points = [(self.t, self.x), (other.t, other.x)]
            new, old = self.problem._grad_entries(points, idx, self.workers)
            return new.sub_(old)
        return super()._gather_minus(other, idx)
