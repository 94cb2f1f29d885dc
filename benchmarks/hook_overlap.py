"""How much of the DDP hook's exchange hides behind the backward pass (``marina.torch.compression_hook``).

W local gloo processes (default 2, one torch thread each, ``marina.testing.run_ranks``), an MLP
of ``--width`` (default 512-512-512-512-512-512-512-10: 1.58 M parameters) under
``DistributedDataParallel(bucket_cap_mb=--bucket-mb)`` (default 1 MB: several buckets, so the
early ones can travel while the backward pass computes the rest), a batch of ``--batch`` rows per
rank. For each method (``qgd identity``: the dense exchange, where communication weighs most;
``qgd randk:1%``, ``diana randk:1%``, ``ef21 topk:1%``) every rank times,
interleaved (blocks of ``--steps`` steps of each variant in turn, ``--reps`` times, a barrier
before each block), every single step of

- ``backward alone``: zero_grad, forward, backward of the same DDP model with a hook that returns
  the bucket as it is (DDP's bucket copies, nothing sent): the floor;
- ``exchange alone``: the hook on every bucket of that model (the gradients of a backward pass
  recorded, the same bucket layout), called back to back outside any backward pass, until the
  last future completes: compression, the all-gathers and the decoding;
- ``backward + hook``: the hook (``marina.torch.compression_hook``, wrapped only to note when each
  bucket's call returns and when its decoding ends): the collective launched with
  ``async_op=True`` and decoded in ``.then``; the count of buckets decoded before the last
  bucket was launched shows the overlap without any timing comparison;
- ``backward + hook, waited``: the same hook wrapped to wait for its future before returning
  (what a synchronous hook does: nothing overlaps);
- ``backward + allreduce``: DDP's default all-reduce, for reference.

Figures (medians, rank 0; rank 1's alongside): hidden = backward + exchange - (backward + hook),
the exchange time the overlap saved, as a share of the exchange alone; how long the hook calls of
the exchange alone take to return; the buckets decoded before the last bucket was launched; the
waited variant's time over the asynchronous one; bytes this rank sends and bits_up per step.
The cores are shared by the ranks (and on a busy machine by other jobs): the compression runs
in the hook, on the backward's thread, and cannot overlap; the all-gather and the decoding run
on gloo's threads, which overlap only where a core is free. Compare figures of one run only.

Run: ``python benchmarks/hook_overlap.py [--ranks 2] [--steps 5] [--reps 6]``
"""

# no "from __future__ import annotations": DDP reads _noop_hook's annotations as objects

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

import marina.torch as mt
from marina.testing import close_group, run_ranks

METHODS = (("qgd", "identity"), ("qgd", "randk:1%"), ("diana", "randk:1%"), ("ef21", "topk:1%"))
VARIANTS = (
    "exchange alone",
    "backward alone",
    "backward + hook",
    "backward + hook, waited",
    "backward + allreduce",
)


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def _mlp(widths: list[int]) -> torch.nn.Module:
    layers: list[torch.nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1])
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5)
    return model


class _RecordedBucket:
    """A DDP bucket seen by the hook, replayed outside the backward pass."""

    def __init__(self, bucket: dist.GradBucket) -> None:
        self._index, self._last = int(bucket.index()), bool(bucket.is_last())
        self._grads, self._params = bucket.buffer().clone(), bucket.parameters()
        self._buffer = self._grads.clone()

    def reset(self) -> None:
        """The recorded gradients back in the buffer (the hook writes its result there)."""
        self._buffer.copy_(self._grads)

    def buffer(self) -> torch.Tensor:
        return self._buffer

    def index(self) -> int:
        return self._index

    def parameters(self) -> list[torch.Tensor]:
        return self._params

    def is_last(self) -> bool:
        return self._last


def _noop_hook(state: None, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """The bucket returned as it is: DDP's bucketing without any exchange."""
    fut: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    fut.set_result(bucket.buffer())
    return fut


def measure(method: str, spec: str, args: argparse.Namespace, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Every variant's step times for one method (see the module doc)."""
    widths = [int(w) for w in args.width.split("-")]
    models = {v: DistributedDataParallel(_mlp(widths), bucket_cap_mb=args.bucket_mb) for v in VARIANTS[1:]}
    state = mt.CompressionHookState(spec, method, seed=0)
    events: list[tuple[str, float]] = []  # ("launched" | "decoded", time) of the hooked passes

    def timed(state, bucket):  # the hook, its events noted
        fut = mt.compression_hook(state, bucket)
        events.append(("launched", time.perf_counter()))

        def decoded(f):
            events.append(("decoded", time.perf_counter()))
            return f.value()

        return fut.then(decoded)

    models["backward + hook"].register_comm_hook(state, timed)
    recorded: dict[int, _RecordedBucket] = {}  # the last backward pass's buckets, by index

    def waited(state, bucket):  # the hook, made synchronous
        recorded[int(bucket.index())] = _RecordedBucket(bucket)
        fut = mt.compression_hook(state, bucket)
        fut.wait()
        return fut

    models["backward + hook, waited"].register_comm_hook(mt.CompressionHookState(spec, method), waited)
    models["backward alone"].register_comm_hook(None, _noop_hook)
    replay = mt.CompressionHookState(spec, method, seed=0)
    in_hook: list[float] = []  # exchange alone: seconds until every hook call has returned
    early: list[int] = []  # backward + hook: buckets decoded before the last bucket's launch

    def step(variant: str) -> float:
        if variant == "exchange alone":
            buckets = [recorded[i] for i in sorted(recorded)]
            for b in buckets:
                b.reset()
            t0 = time.perf_counter()
            futures = [mt.compression_hook(replay, b) for b in buckets]
            in_hook.append(time.perf_counter() - t0)
            torch.futures.wait_all(futures)
            return time.perf_counter() - t0
        ddp = models[variant]
        t0 = time.perf_counter()
        ddp.zero_grad()
        F.cross_entropy(ddp(x), y).backward()
        elapsed = time.perf_counter() - t0
        if variant == "backward + hook":  # buckets decoded before the last one was launched
            last = max(t for kind, t in events if kind == "launched")
            early.append(sum(kind == "decoded" and t < last for kind, t in events))
            events.clear()
        return elapsed

    for _ in range(3):  # warm-up: DDP rebuilds its buckets after the first pass
        for v in VARIANTS:
            step(v)
    in_hook.clear()
    early.clear()
    start = (state.rounds, state.wire_bytes, state.bits_up)  # after the dense/fingerprint start
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for rep in range(args.reps):
        order = VARIANTS[rep % len(VARIANTS) :] + VARIANTS[: rep % len(VARIANTS)]
        for v in order:
            dist.barrier()
            times[v] += [step(v) for _ in range(args.steps)]
    return {
        "times": times,
        "in_hook": in_hook,
        "early": early,
        "buckets": [recorded[i].buffer().numel() for i in sorted(recorded)],
        "d": sum(p.numel() for p in models["backward + hook"].parameters()),
        "wire_bytes_per_step": (state.wire_bytes - start[1]) / (state.rounds - start[0]),
        "bits_up_per_step": (state.bits_up - start[2]) / (state.rounds - start[0]),
    }


def rank_main(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    widths = [int(w) for w in args.width.split("-")]
    gen = torch.Generator().manual_seed(1 + rank)
    x = torch.randn(args.batch, widths[0], generator=gen)
    y = torch.randint(widths[-1], (args.batch,), generator=gen)
    report: dict = {"rank": rank, "world": world, "methods": {}}
    for method, spec in METHODS:
        report["methods"][f"{method} {spec}"] = measure(method, spec, args, x, y)
    Path(args.out, f"rank{rank}.json").write_text(json.dumps(report))
    close_group()


def summarise(reports: list[dict], args: argparse.Namespace) -> None:
    r0 = reports[0]
    first = next(iter(r0["methods"].values()))
    print(
        f"MLP {args.width} (d = {first['d']}), {r0['world']} gloo ranks, batch {args.batch} per rank, "
        f"bucket_cap_mb={args.bucket_mb}; medians over {args.steps * args.reps} steps (ms)"
    )
    for name, got in r0["methods"].items():
        med = {v: _median(got["times"][v]) * 1e3 for v in VARIANTS}
        others = [{v: _median(r["methods"][name]["times"][v]) * 1e3 for v in VARIANTS} for r in reports[1:]]
        print(
            f"\n{name}: buckets of {got['buckets']} entries; this rank sends "
            f"{got['wire_bytes_per_step']:.0f} bytes/step ({got['bits_up_per_step']:.0f} bits_up/step)"
        )
        for v in VARIANTS:
            rest = ", ".join(f"{o[v]:.2f}" for o in others)
            print(f"  {v:<26}{med[v]:>9.2f}   (other ranks: {rest})")
        bw, ex, hook = med["backward alone"], med["exchange alone"], med["backward + hook"]
        inside = _median(got["in_hook"]) * 1e3
        print(
            f"  exchange alone: the hook calls returned after {inside:.2f} ms (compression and launch "
            "on the calling thread, and the decoding of exchanges already complete, which runs inline)"
        )
        hidden = bw + ex - hook
        counts = sorted(got["early"])
        print(
            f"  backward + hook: buckets decoded before the last bucket was launched, per pass: "
            f"median {counts[len(counts) // 2]} of {len(got['buckets'])} (min {counts[0]}, max {counts[-1]})"
        )
        print(
            f"  hidden = backward + exchange - (backward + hook) = {hidden:.2f} ms "
            f"({100 * hidden / ex:.0f}% of the exchange alone); "
            f"waited / async = {med['backward + hook, waited'] / hook:.2f}; "
            f"hook / allreduce = {hook / med['backward + allreduce']:.2f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--width", default="512-512-512-512-512-512-512-10")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--bucket-mb", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("--rank-job", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rank_job:
        rank_main(args)
        return
    with tempfile.TemporaryDirectory() as out:
        run_ranks(
            [sys.executable, __file__, *sys.argv[1:], "--rank-job", "--out", out], args.ranks, timeout=1800
        )
        reports = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(args.ranks)]
    summarise(reports, args)


if __name__ == "__main__":
    main()
