"""Lazy local gradients (marina.lazy_rows): reading K entries equals reading the dense rows.

Every check here is bit for bit: the lazy path must not change a trajectory, only its cost.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

import marina
from marina import compressors, problems
from marina.compressors.sparse import sparse_sum
from marina.errors import ConfigError
from marina.lazy_rows import DenseRows, Elementwise, LazyRows, RowDifference, materialize
from marina.network import SimulatedNetwork
from marina.rng import Randomness

CASES = [  # (data set, workers, l2): few workers use the CSR transpose, many the CSC scatter
    ("mushrooms", 4, 0.0),
    ("mushrooms", 4, 0.05),
    ("phishing", 300, 0.0),
    ("phishing", 300, 0.02),
]


def _point(d: int, seed: int) -> torch.Tensor:
    return torch.randn(d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * 0.5


def _entries(n: int, d: int, k: int, seed: int) -> torch.Tensor:
    return Randomness(seed, "entries", 0, range(n)).sample_without_replacement(d, k)


@pytest.mark.parametrize(("name", "workers", "l2"), CASES)
def test_gathered_entries_equal_the_dense_local_gradients(seed, name, workers, l2):
    prob = problems.libsvm(name, workers=workers, l2=l2)
    assert prob._scatter == (workers == 300)
    x_old, x_new = _point(prob.dim, seed), _point(prob.dim, seed + 1)
    G_old, G_new = prob.local_grads(x_old), prob.local_grads(x_new)
    for k in (1, 3, prob.dim):
        idx = _entries(prob.n_workers, prob.dim, k, seed + k)
        lazy_new, lazy_old = prob.lazy_local_grads(x_new), prob.lazy_local_grads(x_old)
        assert isinstance(lazy_new, LazyRows) and not isinstance(lazy_new, DenseRows)
        assert torch.equal(lazy_new.gather(1, idx), G_new.gather(1, idx))
        # a difference of two lazy points (evaluated together), of a lazy and a dense one
        assert torch.equal((lazy_new - lazy_old).gather(1, idx), (G_new - G_old).gather(1, idx))
        assert torch.equal((lazy_new - G_old).gather(1, idx), (G_new - G_old).gather(1, idx))
        assert torch.equal(materialize(lazy_new - lazy_old), G_new - G_old)
        # a subset of the rows (PP-MARINA's sampled clients), lazy and after materialising
        rows = torch.tensor([prob.n_workers - 1, 0, 2])
        sub = (lazy_new - lazy_old).index_select(0, rows)
        assert torch.equal(sub.gather(1, idx[rows]), (G_new - G_old)[rows].gather(1, idx[rows]))
        assert torch.equal(sub.index_select(0, torch.tensor([2])).dense(), (G_new - G_old)[[2]])
        # after materialising, the stored rows serve the reads
        assert torch.equal(lazy_new.dense(), G_new)
        assert torch.equal((lazy_new - lazy_old).gather(1, idx), (G_new - G_old).gather(1, idx))


@pytest.mark.parametrize("l2", [0.0, 0.05])
def test_one_hosted_worker_reads_every_single_entry_as_the_dense_gradient(seed, l2):
    # one worker per process and K = 1 (the loopback benchmark's case): a running sum over one
    # slice of non-zeros, not index_add_; every column, empty ones included, at two points
    full = problems.libsvm("mushrooms", workers=3, l2=l2)
    prob = problems.libsvm("mushrooms", workers=3, l2=l2, hosted_workers=[1])
    x_old, x_new = _point(prob.dim, seed), _point(prob.dim, seed + 1)
    G_old, G_new = full.local_grads(x_old)[[1]], full.local_grads(x_new)[[1]]
    lazy_new, lazy_old = prob.lazy_local_grads(x_new), prob.lazy_local_grads(x_old)
    empty = 0
    for c in range(prob.dim):
        idx = torch.tensor([[c]])
        empty += int(G_new[0, c] == l2 * x_new[c])
        assert torch.equal(lazy_new.gather(1, idx), G_new.gather(1, idx)), c
        assert torch.equal((lazy_new - lazy_old).gather(1, idx), (G_new - G_old).gather(1, idx)), c
    assert empty > 0  # mushrooms has columns without a non-zero in some shard


def test_synthetic_problem_and_hosted_subsets_read_the_same_entries(seed):
    full = problems.synthetic(workers=6, dim=9, samples=15, seed=seed % 1000)
    part = problems.synthetic(workers=6, dim=9, samples=15, seed=seed % 1000, hosted_workers=[1, 4])
    x = _point(9, seed)
    idx = _entries(6, 9, 2, seed)
    got = full.lazy_local_grads(x).gather(1, idx)
    assert torch.equal(got, full.local_grads(x).gather(1, idx))
    assert torch.equal(part.lazy_local_grads(x).gather(1, idx[[1, 4]]), got[[1, 4]])


def test_bad_reads_are_named():
    prob = problems.libsvm("mushrooms", workers=3)
    lazy = prob.lazy_local_grads(prob.initial_point())
    with pytest.raises(ValueError, match="dim == 0, must be 1"):
        lazy.gather(0, torch.zeros((3, 1), dtype=torch.int64))
    with pytest.raises(ValueError, match=r"index has shape \(2, 1\), must be \(3, K\)"):
        lazy.gather(1, torch.zeros((2, 1), dtype=torch.int64))
    with pytest.raises(ValueError, match="cannot subtract rows of shape"):
        RowDifference(lazy, torch.zeros(2, prob.dim, dtype=torch.float64))


@pytest.mark.parametrize(
    "spec",
    ["randk:1", "randk:4", "qsgd:2", "natural", "identity", "randk:4+natural", "randk:3:seeded+qsgd:2"],
)
def test_compressors_read_lazy_rows_as_they_read_dense_ones(seed, spec):
    prob = problems.libsvm("phishing", workers=40, l2=0.01)
    lazy = prob.lazy_local_grads(_point(prob.dim, seed)) - prob.lazy_local_grads(_point(prob.dim, seed + 1))
    dense = materialize(lazy)
    c = compressors.get(spec)
    rng = lambda: Randomness(seed, "compress", 3, range(prob.n_workers))
    s_lazy, b_lazy, l_lazy = c.compress_sum(lazy, rng(), keep_local=True)
    s_dense, b_dense, l_dense = c.compress_sum(dense, rng(), keep_local=True)
    assert torch.equal(s_lazy, s_dense) and torch.equal(b_lazy, b_dense) and torch.equal(l_lazy, l_dense)
    m_lazy, m_dense = c.compress(lazy, rng()), c.compress(dense, rng())
    assert all(torch.equal(a, b) for a, b in zip(c.pack(m_lazy), c.pack(m_dense), strict=True))
    assert c.gathers == spec.startswith("randk")


def test_sparse_sums_add_each_coordinate_in_worker_order(seed):
    """The canonical sum of sparse messages: sequential in worker order, from 0, per coordinate."""
    g = torch.Generator().manual_seed(seed)
    n, d, k = 50, 7, 3
    idx = torch.sort(torch.rand(n, d, generator=g).argsort(dim=1)[:, :k], dim=1).values
    values = torch.randn(n, k, dtype=torch.float64, generator=g) * 10.0 ** torch.randint(
        -8, 8, (n, k), generator=g
    )
    expected = [0.0] * d
    for i in range(n):
        for j in range(k):
            expected[int(idx[i, j])] += float(values[i, j])  # Python floats: IEEE doubles in order
    assert sparse_sum(idx, values, d).tolist() == expected


def test_sparse_messages_sum_like_their_wire_form(seed):
    X = torch.randn(9, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    c = compressors.get("randk:5")
    total, bits, local = c.compress_sum(X, Randomness(seed, "compress", 0, range(9)))
    assert local is None
    msg = c.compress(X, Randomness(seed, "compress", 0, range(9)))
    back = c.unpack(c.pack(msg), 30, worker_ids=msg.worker_ids, dtype=X.dtype)
    assert torch.equal(total, c.sum_decompressed(back))
    assert torch.equal(bits, msg.bits)
    assert torch.allclose(total, c.decompress(back).sum(dim=0), rtol=1e-14, atol=1e-14)


def test_lazy_entries_are_checked_like_dense_rows():
    class Rows(LazyRows):
        def __init__(self, values):
            self.values, self.shape, self.dtype, self.device = (
                values,
                values.shape,
                values.dtype,
                values.device,
            )
            self.dense_reads = 0

        def dense(self):
            self.dense_reads += 1
            return self.values

        def _gather(self, idx):
            return self.values.gather(1, idx)

    X = torch.full((2, 4), float("nan"), dtype=torch.float64)
    with pytest.raises(ConfigError, match=r"non-finite value \(nan\)"):
        compressors.get("randk:4").compress_sum(Rows(X), Randomness(0, "compress", 0, [0, 1]))
    big = Rows(torch.full((2, 4), 1e38, dtype=torch.float64))
    with pytest.raises(ConfigError, match="exceeds"):  # scaled by d/K = 4: beyond float32
        compressors.get("randk:1").compress_sum(big, Randomness(0, "compress", 0, [0, 1]))
    assert big.dense_reads == 0  # RandK gathers
    compressors.get("qsgd:2").compress_sum(big, Randomness(0, "compress", 0, [0, 1]))
    assert big.dense_reads == 1  # everything else materialises


@pytest.mark.parametrize("method", ["marina", "qgd", "diana", "pp-marina", "dasha"])
def test_runs_with_lazy_gradients_equal_runs_with_dense_ones(seed, method):
    """The trajectory does not depend on whether the sparsifier's entries were read lazily."""
    histories = []
    for eager in (False, True):
        prob = problems.libsvm("mushrooms", workers=5, l2=0.01)
        if eager:  # the Problem default: every gradient computed at once
            prob.lazy_local_grads = lambda x, prob=prob: DenseRows(prob.local_grads(x))
        opts = {"p": 0.2} if "marina" in method else {}
        res = marina.run(
            method=method,
            compressor="randk:2",
            problem=prob,
            workers=5,
            iterations=40,
            seed=seed,
            log_every=10,
            **opts,
        )
        histories.append(res.history.drop(columns="time_s"))
    assert histories[0].equals(histories[1])


def test_elementwise_rows_gather_what_the_dense_expression_holds(seed):
    """DASHA's message h_new - h - a (g_i - h) read at K entries equals the dense expression's
    entries, and its dense value is computed once."""
    print("seed", seed)
    gen = torch.Generator().manual_seed(seed)
    h_new, h, est = (torch.randn(3, 50, generator=gen, dtype=torch.float32) for _ in range(3))
    calls = []

    def message(a, b, c):
        calls.append(a.shape)
        return a - b - 0.37 * (c - b)

    lazy = Elementwise(message, DenseRows(h_new), h, est)
    idx = _entries(3, 50, 7, seed)
    expected = (h_new - h - 0.37 * (est - h)).gather(1, idx)
    assert torch.equal(lazy.gather(1, idx), expected) and calls == [idx.shape]
    assert torch.equal(materialize(lazy), h_new - h - 0.37 * (est - h))
    materialize(lazy)
    assert calls == [idx.shape, h.shape]  # computed once, then kept
    with pytest.raises(ValueError, match="one shape"):
        Elementwise(message, h, h[:2], h)


def test_magnitudes_and_differences_write_into_the_given_buffer(seed):
    """``magnitudes(out)`` is |dense()| and ``minus_dense(other, out=out)`` the difference, both
    written into ``out`` (TopK's scratch row), for lazy rows of every kind."""
    prob = problems.libsvm("phishing", workers=4, l2=0.01)
    a, b = prob.lazy_local_grads(_point(prob.dim, seed)), _point(prob.dim, seed + 1).expand(4, -1)
    for lazy in (a - b, a, DenseRows(materialize(a)), Elementwise(torch.mul, a, b)):
        out = torch.empty(lazy.shape, dtype=lazy.dtype)
        assert lazy.magnitudes(out) is out and torch.equal(out, materialize(lazy).abs())
    out = torch.empty(a.shape, dtype=a.dtype)
    assert a.minus_dense(b, out=out) is out and torch.equal(out, materialize(a) - b)


def test_simulation_reads_lazy_rows_without_materialising():
    prob = problems.libsvm("phishing", workers=30)
    lazy = prob.lazy_local_grads(_point(prob.dim, 1))
    net = SimulatedNetwork(30, 0)
    net.aggregate(compressors.get("randk:1"), lazy, 0)
    assert lazy._G is None  # only the 30 gathered entries were evaluated
    net.aggregate_dense(lazy, 0, compressors.get("identity"))
    assert lazy._G is not None


def test_row_subsets_share_one_dense_evaluation(seed, monkeypatch):
    """Materialising several row subsets (PP-MARINA's copies with a dense compressor) computes the
    full product once, on the view of all hosted workers."""
    prob = problems.libsvm("mushrooms", workers=6)
    calls = []
    full = prob._grads_from
    monkeypatch.setattr(prob, "_grads_from", lambda w, x: calls.append(1) or full(w, x))
    x = _point(prob.dim, seed)
    lazy = prob.lazy_local_grads(x)
    first, second = lazy.index_select(0, torch.tensor([4, 1])), lazy.index_select(0, torch.tensor([0]))
    nested = first.index_select(0, torch.tensor([1]))
    G = prob.local_grads(x)
    assert torch.equal(first.dense(), G[[4, 1]])
    assert torch.equal(second.dense(), G[[0]])
    assert torch.equal(nested.dense(), G[[1]])
    assert torch.equal(lazy.dense(), G)
    assert len(calls) == 2  # once for the views (their root), once for local_grads above


REFUSED = {  # what a tensor would do, and how the lazy rows refuse it
    "rows.mean(0)": (lambda r, t: r.mean(0), AttributeError, r"tensor attribute \.mean"),
    "rows.sum()": (lambda r, t: r.sum(), AttributeError, r"tensor attribute \.sum"),
    "rows + t": (lambda r, t: r + t, TypeError, r"operator \+"),
    "t + rows": (lambda r, t: t + r, TypeError, r"operator \+"),
    "rows * 2": (lambda r, t: r * 2, TypeError, r"operator \*"),
    "t - rows": (lambda r, t: t - r, TypeError, r"operator - with lazy rows on the right"),
    "-rows": (lambda r, t: -r, TypeError, "negation"),
    "rows[0]": (lambda r, t: r[0], TypeError, r"indexing \(use index_select"),
    "torch.mean(rows)": (lambda r, t: torch.mean(r), TypeError, r"torch\.mean"),
    "torch.sub(t, rows)": (lambda r, t: torch.sub(t, r), TypeError, r"torch\.sub"),
    "torch.cat([rows])": (lambda r, t: torch.cat([r]), TypeError, r"torch\.cat"),
    "list(rows)": (lambda r, t: list(r), TypeError, "iteration"),
}


@pytest.mark.parametrize("what", list(REFUSED))
def test_lazy_rows_refuse_tensor_operations_and_say_how_to_materialise(what):
    """Held in a method's state, lazy rows must not silently act like (or fail unlike) a tensor."""
    prob = problems.libsvm("mushrooms", workers=3)
    x = _point(prob.dim, 0)
    dense = prob.local_grads(x)
    op, error, operation = REFUSED[what]
    for rows in (prob.lazy_local_grads(x), DenseRows(dense), prob.lazy_local_grads(x) - dense):
        with pytest.raises(error, match=operation) as info:
            op(rows, dense)
        assert f"{type(rows).__name__} (lazy rows" in str(info.value)
        assert "marina.lazy_rows.materialize(rows) or rows.dense()" in str(info.value)
        op(materialize(rows), dense)  # what materialising first makes possible


def test_lazy_rows_keep_the_python_protocols():
    rows = DenseRows(torch.ones(2, 3))
    assert not hasattr(rows, "no_such_attribute")  # an AttributeError, as getattr/hasattr expect
    assert getattr(rows, "mean", None) is None
    assert torch.equal(copy.copy(rows).dense(), rows.dense())
    assert torch.equal(pickle.loads(pickle.dumps(rows)).dense(), rows.dense())
    assert (rows.shape, rows.dim(), rows.dtype) == (torch.Size((2, 3)), 2, torch.float32)
