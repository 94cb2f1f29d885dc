"""PermK: workers keep disjoint blocks of one shared random permutation (correlated).

Szlendak, Tyurin, Richtarik 2022, "Permutation compressors for provably faster distributed
nonconvex optimization" (ICLR 2022), Definition 2 (d >= n) and Definition 3 (d <= n) (numbers
unverified: only the paper's abstract was reachable; see :mod:`marina.theory`), made
exact for every d and n by assigning the pieces to workers with a second shared permutation.

Each call draws, from the SHARED key, a permutation pi of the d coordinates and a permutation
sigma of the n workers; worker i takes piece t = sigma[i].

- d >= n: piece t is the block B_t = pi[floor(t d/n) .. floor((t+1) d/n)) (floor(d/n) or
  ceil(d/n) coordinates); Q_i(x) = n x restricted to B_{sigma[i]}. Every coordinate lies in
  worker i's block with probability 1/n (pi and sigma uniform), so Q_i is unbiased with
  E||Q_i(x)||^2 = n ||x||^2: omega = n - 1 for every d >= n. The blocks partition the
  coordinates, so (1/n) sum_i Q_i(x) = x exactly.
- d < n: with n = q d + r (0 <= r < d), piece t is the coordinate pi[t mod d], held by
  c_s = q + 1 workers if s = t mod d < r, else q; Q_i(x) = (n/c_s) x_{pi[s]} e_{pi[s]}. Every
  coordinate is covered and the (1/n)-average of its c_s copies is x_j: exact again. Worker i
  sits in slot s with probability c_s/n and pi[s] is uniform, so E[Q_i(x)] = x and
  E||Q_i(x)||^2 = (n/d) (r/(q+1) + (d-r)/q) ||x||^2: omega = (n/d)(r/(q+1) + (d-r)/q) - 1
  (= d - 1 when d divides n, the paper's Definition 3).

The AB inequality of Szlendak et al. (Definition 1), E||(1/n) sum_i Q_i(a_i) - abar||^2 <=
A (1/n) sum_i ||a_i||^2 - B ||abar||^2, holds with equality and A = B = kappa, where kappa is
derived as follows. Coordinate j of (1/n) sum_i Q_i(a_i) is the mean of a_ij over the c workers
holding j: a uniformly random c-subset of the n workers (sigma uniform), with c = 1 for d >= n,
and for d < n c = q + 1 with probability r/d, else q (pi uniform). Sampling c of n without
replacement, that mean has variance s_j^2 (n - c)/(c (n - 1)), s_j^2 = (1/n) sum_i (a_ij -
abar_j)^2, and sum_j s_j^2 = (1/n) sum_i ||a_i||^2 - ||abar||^2. So kappa = E_c[(n - c)/(c (n -
1))] = omega/(n - 1): 1 for d >= n, (d - 1)/(n - 1) when d divides n, and in general
((r/d)(n - q - 1)/(q + 1) + ((d - r)/d)(n - q)/q)/(n - 1) (``ab_constants``; tested against an
exact enumeration of every (pi, sigma) and the compressor's own draws). No smaller A holds (take
abar = 0), nor B > A (take a_i all equal). ``density(d)`` = max(1, d/n), the expected block size.

It needs the total number of workers n: ``get("permk", workers=n)``. Worker ids must lie in
0..n-1; any subset of them can be hosted (rows keep the pieces of their global ids).

Randomness: pi then sigma are drawn from ``rng.shared()`` (keys (seed, stream, round, SHARED,
call = rng.calls) and call + 1), then ``rng`` is advanced by two calls: two drawing calls per
compress, and the same permutations in every process. Cost O(d log d + n log n) once per call.

Wire encoding per worker: the values of its piece at the wire precision, in permutation order,
and no index bits: ``bits = |piece| w``. The receiver regenerates the permutations: ``unpack``
needs ``rng``, a Randomness with the senders' seed, stream and round at the call counter the
senders had when compressing (e.g. a fresh ``Randomness(seed, stream, round, ids)`` when the
compress was the first drawing call of that stream and round).
"""

from __future__ import annotations

import torch
from torch import Tensor

from marina.compressors.base import Compressor, Message, register
from marina.compressors.wire import bytes_to_values, values_to_bytes
from marina.errors import ConfigError
from marina.rng import Randomness

__all__ = ["PermK"]


@register
class PermK(Compressor):
    """Correlated permutation sparsifier (see the module docstring).

    Message fields: ``values`` (n, ceil(d/n)) at the wire dtype (zero padded past the piece),
    ``indices`` (n, ceil(d/n)) int64 coordinates (padding repeats a valid index with value 0),
    ``sizes`` (n,) int64 piece sizes.

    Args:
        arg: None (``"permk"`` takes no parameter).
        value_dtype: wire precision of the values (see :class:`Compressor`).
        workers: total number of workers n: the permutation is cut into n pieces, one per
            worker (required before compressing; :func:`get` passes the run's n).
    """

    name = "permk"
    correlated = True
    regenerates = True
    fixed_size = True  # per worker when n divides d or d < n; see message_bits
    omega_formula = "n - 1 (d >= n); (n/d)(r/(q+1) + (d-r)/q) - 1 for d < n, n = q d + r"
    density_formula = "max(1, d/n)"
    wire_formula = "floor or ceil(d/n) values (1 if d < n), no indices (shared permutations)"

    def wire_format(self, d: int) -> str:
        n, w = self._n(), self.wire_bits_per_value
        lo, hi = max(1, d // n), max(1, -(-d // n))
        sizes = f"{lo}" if lo == hi else f"{lo} or {hi}"
        return (
            f"{sizes} values x {w} bits, no index bits (shared permutations) = {lo * w}"
            + ("" if lo == hi else f" or {hi * w}")
            + " bits"
        )

    def _n(self) -> int:
        if self.workers is None:
            raise ConfigError(
                "permk: the total number of workers n is needed, build it with "
                "marina.compressors.get('permk', workers=n)"
            )
        return self.workers

    def message_bits(self, d: int, worker_ids: Tensor, rng: Randomness | None = None) -> Tensor | None:
        """|piece| w bits per worker (no index bits) when every piece has the same size (n divides
        d, or d < n: one coordinate); None otherwise, since the blocks of floor(d/n) and ceil(d/n)
        coordinates go to the workers by the round's shared permutation sigma."""
        d, n = self._check_d(d), self._n()
        if d > n and d % n:
            return None
        size = d // n if d >= n else 1
        return torch.full((int(worker_ids.numel()),), size * self.wire_bits_per_value, dtype=torch.int64)

    def omega(self, d: int) -> float:
        d = self._check_d(d)
        n = self._n()
        if d >= n:
            return n - 1.0
        q, r = divmod(n, d)
        return n / d * (r / (q + 1) + (d - r) / q) - 1.0

    def density(self, d: int) -> float:
        d = self._check_d(d)
        return max(1.0, d / self._n())

    def ab_constants(self, d: int, n: int) -> tuple[float, float]:
        """A = B = omega/(n - 1), exact (module docstring): 1 for d >= n, (d - 1)/(n - 1) when d
        divides n, E_c[(n - c)/(c (n - 1))] for any d < n (n = 1: A = B = 1, any value holds)."""
        if n != self._n():
            raise ConfigError(f"permk: n == {n} but the compressor was built for workers == {self._n()}")
        d = self._check_d(d)
        if d >= n:
            return 1.0, 1.0
        kappa = self.omega(d) / (n - 1)
        return kappa, kappa

    def expected_bits(self, d: int) -> float:
        """w times the expected piece size, max(1, d/n) (every piece size is equally likely)."""
        return self.density(d) * self.wire_bits_per_value

    def _positions(self, rng: Randomness, ids: Tensor, d: int) -> tuple[Tensor, Tensor, Tensor]:
        """(indices (rows, width), sizes (rows,), count (rows,) workers sharing each piece's
        coordinates, 1 when d >= n); draws pi and sigma, advances rng by 2."""
        n = self._n()
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= n):
            raise ConfigError(f"permk: worker ids {ids.tolist()} must lie in 0..{n - 1} (workers == {n})")
        shared = rng.shared()
        perm = shared.permutation(d)[0].to(ids.device)
        piece = shared.permutation(n)[0].to(ids.device)[ids]  # t = sigma[i]
        rng.advance(2)
        ones = torch.ones_like(ids)
        if d < n:
            q, r = divmod(n, d)
            slot = piece % d
            return perm[slot][:, None], ones, torch.where(slot < r, q + 1, q)
        width = -(-d // n)
        if d % n == 0:  # equal blocks: contiguous slices of the permutation
            return perm.view(n, width)[piece], torch.full_like(ids, width), ones
        starts = piece * d // n
        sizes = (piece + 1) * d // n - starts
        cols = torch.arange(width, device=ids.device)
        pos = starts[:, None] + torch.minimum(cols[None, :], (sizes - 1)[:, None])
        return perm[pos], sizes, ones

    def _scale(self, count: Tensor, dtype: torch.dtype) -> Tensor:
        """n/c: n for blocks (d >= n), n over the coordinate's number of holders (d < n)."""
        return (self._n() / count.to(torch.float64)).to(dtype).reshape(-1, 1)

    def _mask(self, sizes: Tensor, width: int) -> Tensor:
        return torch.arange(width, device=sizes.device)[None, :] < sizes[:, None]

    def _compress(self, X: Tensor, rng: Randomness, amax: float) -> Message:
        n, d = X.shape
        idx, sizes, count = self._positions(rng, rng.worker_ids, d)
        scale = self._scale(count, X.dtype)
        self._check_wire_range(amax, X.dtype, float(scale.max()) if n else 1.0)
        vals = X.gather(1, idx).mul_(scale)
        if d % self._n() and d > self._n():
            vals.masked_fill_(~self._mask(sizes, idx.shape[1]), 0.0)
        data = {"values": vals.to(self.value_dtype), "indices": idx, "sizes": sizes}
        bits = sizes * self.wire_bits_per_value
        return Message(self.spec, d, X.dtype, rng.worker_ids, bits, data, {"workers": self.workers})

    def _decompress(self, msg: Message) -> Tensor:
        v = msg.data["values"]
        out = torch.zeros((v.shape[0], msg.d), dtype=msg.dtype, device=v.device)
        # padded entries repeat the block's last index with value 0: scatter_add leaves it intact
        return out.scatter_add_(1, msg.data["indices"], v.to(msg.dtype))

    def _pack_rows(self, msg: Message) -> tuple[Tensor, Tensor]:
        return values_to_bytes(msg.data["values"]), (msg.bits + 7) // 8

    def _unpack_rows(self, rows, lengths, d, worker_ids, dtype, rng) -> Message:
        if rng is None:
            raise ConfigError(
                "permk: unpack needs rng, a Randomness(seed, stream, round, ...) at the senders' call "
                "counter, to regenerate the shared permutations (no indices travel)"
            )
        idx, sizes, _ = self._positions(rng, worker_ids, d)
        width = idx.shape[1]
        nbytes = width * self.wire_bits_per_value // 8
        if rows.shape[1] < nbytes:
            rows = torch.nn.functional.pad(rows, (0, nbytes - rows.shape[1]))
        values = bytes_to_values(rows, width, self.value_dtype)
        values = values.masked_fill(~self._mask(sizes, width), 0.0)
        bits = sizes * self.wire_bits_per_value
        data = {"values": values, "indices": idx, "sizes": sizes}
        return Message(self.spec, d, dtype, worker_ids, bits, data, {"workers": self.workers})
