"""Rounds per second of every method on simulated workers, next to the sparse mat-vec floor.

For each (data set, n) it prints, in the same run:

- floor: one sparse A x plus one A^T r over the whole data (int32 CSR tensors, A and A^T stored
  separately in their best layout): best of R, and timed again after every method round;
- the parts of a round: ``problem.local_grads`` (all n local gradients: A x and the lifted
  A^T w), ``problem.lazy_local_grads`` (the lazy rows of :mod:`marina.lazy_rows`: A x and the row
  weights only), reading K = 1 entry per worker of a difference of two such points, the
  compressor's ``compress_decompress`` on a dense (n, d) matrix and ``compress_sum`` on lazy
  rows, one keyed ``Randomness`` call;
- each method with randk:1 and its theory defaults: median and min wall time of one round (the
  method's ``step``, built as ``marina.run`` builds it; no metric evaluation), rounds/s and the
  ratios to the floor; for MARINA, DIANA and QGD the target (median ratio <= 1.3 at n = 5 and
  <= 2 at n = 1000) and whether this run meets it. RandK rounds read only the K sent entries
  of the local gradients (MARINA's compressed rounds, QGD, DIANA, PP-MARINA), so they can
  cost less than the floor: the whole A^T w product is skipped;
- the successors EF21, EF21-PP, EF21-SGD (with topk:1: TopK reads every entry, so an EF21
  round materialises the dense local gradients, A x and the whole A^T w: a dense gradient per
  round is inherent to EF21, about the floor; EF21-SGD only a minibatch), DASHA, DASHA-PAGE
  and DASHA-MVR (randk:1; DASHA keeps h_i = grad f_i dense, so it too costs a dense gradient
  a round), no target;
- VR-MARINA with every round compressed (p forced to 1e-12) for growing b': the time of a
  compressed round grows with b', not with m (O(b') oracle cost), next to a dense round.

Run: ``python benchmarks/simulation.py [--rounds K] [--threads T] [--cases a9a:5 w8a:1000]``
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from pathlib import Path

import torch

from marina import compressors, data, methods, problems
from marina.network import SimulatedNetwork
from marina.rng import Randomness

# best_of and csr are shared with the problems benchmark beside this file
_spec = importlib.util.spec_from_file_location("bench_problems", Path(__file__).with_name("problems.py"))
_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_bench)
best_of, csr = _bench.best_of, _bench.csr

METHODS = ["gd", "qgd", "diana", "vr-diana", "marina", "vr-marina", "pp-marina"]
METHODS += ["ef21", "ef21-pp", "ef21-sgd", "ef21-sgdm", "dasha", "dasha-page", "dasha-mvr"]
COMPRESSOR = {"ef21": "topk:1", "ef21-pp": "topk:1", "ef21-sgd": "topk:1", "ef21-sgdm": "topk:1"}
"""The compressor of each method's row (randk:1 where absent): EF21 with the contractive TopK."""
TARGETS = {5: 1.3, 1000: 2.0}  # median x floor for MARINA, DIANA and QGD, by number of workers
TARGETED = ("marina", "diana", "qgd")


def floor_fn(name: str, device: torch.device | str = "cpu"):
    """One sparse A x plus one A^T r over the whole data set (the floor of a round), on ``device``."""
    X = data.load(name).X.tocsr()
    A, AT = csr(X).to(device), csr(X.T.tocsr()).to(device)
    x = torch.full((X.shape[1],), 0.01, dtype=torch.float64, device=device)
    r = torch.full((X.shape[0],), 0.5, dtype=torch.float64, device=device)
    return lambda: (A @ x, AT @ r)


def method_time(prob, floor, method: str, rounds: int, compressor: str = "randk:1", **params):
    """Per-round times of ``method`` (its ``step``; metrics never evaluated) interleaved with
    the floor, so that load from other processes hits both alike.

    Built exactly as :func:`marina.run` builds a run, on the problem's device (CUDA is
    synchronised around every timed call). Returns (median step, median floor, min step, min
    floor): the medians include preemptions by other processes, the mins estimate the
    uncontended cost of the most frequent kind of round."""
    sync = (lambda: torch.cuda.synchronize(prob.device)) if prob.device.type == "cuda" else lambda: None
    cls = methods.get(method)
    Q = compressors.get(compressor, workers=prob.n_workers)
    net = SimulatedNetwork(prob.n_workers, 0, device=prob.device)
    algo = cls(prob, net, Q, cls.resolve(methods.Setting.build(prob, net, Q, rounds), params))
    algo.start(prob.initial_point())
    steps, floors = [], []
    sync()
    for _ in range(rounds):
        t0 = time.perf_counter()
        algo.step()
        sync()
        t1 = time.perf_counter()
        floor()
        sync()
        t2 = time.perf_counter()
        steps.append(t1 - t0)
        floors.append(t2 - t1)
    return statistics.median(steps), statistics.median(floors), min(steps), min(floors)


def report_case(name: str, n: int, args: argparse.Namespace) -> None:
    """Floor, parts of a round and every method's round time on data set ``name`` with n workers."""
    prob = problems.libsvm(name, workers=n)
    floor = floor_fn(name)
    x = torch.full((prob.dim,), 0.01, dtype=torch.float64)
    X = torch.randn(prob.n_workers, prob.dim, dtype=torch.float64)
    Q = compressors.get("randk:1")
    ids = torch.arange(prob.n_workers)
    diff = prob.lazy_local_grads(x) - prob.lazy_local_grads(2 * x)
    one = Randomness(0, "compress", 1, ids).sample_without_replacement(prob.dim, 1)
    parts = {
        "floor (A x + A^T r)": floor,
        "local_grads": lambda: prob.local_grads(x),
        "lazy_local_grads": lambda: prob.lazy_local_grads(x),
        "1 entry/worker of a diff": lambda: diff.gather(1, one),
        "randk:1 on dense rows": lambda: Q.compress_decompress(X, Randomness(0, "compress", 1, ids)),
        "randk:1 on lazy rows": lambda: Q.compress_sum(diff, Randomness(0, "compress", 1, ids)),
        "one Randomness call": lambda: Randomness(0, "coin", 1, ids).uniform(1),
    }
    times = dict(zip(parts, best_of(list(parts.values()), args.repeats), strict=True))
    fl = times["floor (A x + A^T r)"]
    print(f"\n{name}, n = {n}: {prob}")
    for label, t in times.items():
        note = f"(best of {args.repeats})" if t is fl else f"({t / fl:.2f} x floor)"
        print(f"  {label:26s} {t * 1e3:8.3f} ms   {note}")
    target = TARGETS.get(n)
    print(
        f"  {'method':10s} {'comp':7s} {'med ms':>8s} {'rounds/s':>9s} {'med floor':>9s} {'x floor':>8s} "
        f"{'min ms':>8s} {'min floor':>9s} {'x floor':>8s}  target"
    )
    for method in args.methods:
        spec = COMPRESSOR.get(method, "randk:1")
        med, fmed, low, flow = method_time(prob, floor, method, args.rounds, spec)
        verdict = ""
        if target is not None and method in TARGETED:
            verdict = f"<= {target}: {'met' if med / fmed <= target else 'MISSED'}"
        print(
            f"  {method:10s} {spec:7s} {med * 1e3:8.3f} {1 / med:9.1f} {fmed * 1e3:9.3f} {med / fmed:8.2f} "
            f"{low * 1e3:8.3f} {flow * 1e3:9.3f} {low / flow:8.2f}  {verdict}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: stable on a shared machine)")
    ap.add_argument("--cases", nargs="+", default=["a9a:5", "w8a:1000"])
    ap.add_argument("--methods", nargs="+", default=METHODS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {args.rounds} rounds per run")
    for case in args.cases:
        name, n = case.split(":")
        report_case(name, int(n), args)
    # VR-MARINA: compressed rounds cost O(b'), dense rounds O(m)
    name, n = args.cases[0].split(":")
    prob = problems.libsvm(name, workers=int(n))
    floor = floor_fn(name)
    m = int(prob.sizes.min())
    print(f"\nVR-MARINA on {name}, n = {n}, m = {m}, randk:1, every round compressed (p = 1e-12):")
    print(f"  {'b_prime':>8s} {'med ms':>8s} {'min ms':>8s}")
    for bp in sorted({b for b in (1, 10, 100, 1000) if b < m} | {m}):
        med, _, low, _ = method_time(prob, floor, "vr-marina", args.rounds, p=1e-12, batch_size=bp)
        print(f"  {bp:8d} {med * 1e3:8.3f} {low * 1e3:8.3f}")
    med, _, low, _ = method_time(prob, floor, "vr-marina", args.rounds, p=1.0, batch_size=1)
    print(f"  dense rounds (p = 1): median {med * 1e3:.3f} ms, min {low * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
