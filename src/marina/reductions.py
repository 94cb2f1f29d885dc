"""Sums whose order of addition is fixed, whatever the CPU or device.

A BLAS dot product (``g @ g``) or a vectorised ``sum()`` adds in an order chosen by the kernel
the library picks at run time (MKL's for the CPU at hand, the SIMD width, a GPU's thread
blocks), so the last bits of a metric may differ from machine to machine. Here a sum over the
leading axis is a pairwise tree of element-wise additions: the rows are padded with zeros to
2^k, then the second half is added onto the first, k times. Each element-wise addition is one
IEEE-754 rounding of the same two operands on every machine, so the result is the same bit for
bit on every CPU and on CUDA (for the same inputs). The tree is also a pairwise summation, with
an error bound of O(log n) ulps instead of the O(n) of a running sum.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["fixed_dot", "fixed_mean", "fixed_sum"]


def fixed_sum(X: Tensor) -> Tensor:
    """Sum over the leading axis of X (shape (n, ...) -> (...)) in a fixed pairwise order.

    Padding to 2^k with +0.0 changes no sum (x + 0.0 == x) except a sum of only -0.0, which
    becomes +0.0.
    """
    n = X.shape[0]
    if n == 0:
        return X.new_zeros(X.shape[1:])
    if n == 1:
        return X[0].clone()
    size = 1 << (n - 1).bit_length()  # 2^k >= n
    buf = X.new_zeros((size, *X.shape[1:]))
    buf[:n] = X
    while size > 1:
        size //= 2
        buf[:size] += buf[size : 2 * size]
    return buf[0]


def fixed_mean(X: Tensor) -> Tensor:
    """Mean over the leading axis: :func:`fixed_sum` divided by the number of rows."""
    return fixed_sum(X) / X.shape[0]


def fixed_dot(a: Tensor, b: Tensor) -> Tensor:
    """a . b of two vectors: element-wise products, then :func:`fixed_sum` (no BLAS)."""
    return fixed_sum((a * b).reshape(-1))
