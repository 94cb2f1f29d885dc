"""Time and wire bytes per step: ``marina.torch.VRMARINA`` against ``torch.optim.SGD`` with DDP's allreduce.

W local gloo processes (default 2, one torch thread each, ``marina.testing.local_launch``), the
small CNN of :func:`marina.nets.small_cnn` on the bundled Fashion-MNIST subset, b' images per rank
and step. Each rank times, interleaved (blocks of ``--steps`` steps of every variant in turn,
``--reps`` times, a barrier before each block), every single step of

- ``fb``: the closure alone (zero_grad, forward, backward on the batch; no communication): the
  floor one forward/backward costs;
- ``sgd+ddp``: ``DistributedDataParallel`` forward/backward (its bucketed allreduce) + ``SGD.step``;
- ``vr-marina``: ``VRMARINA(compressor="randk:1%", batch_size=b')`` ``step(closure)`` on c_k = 0
  steps (two closure calls at x^{k+1} and x^k, RandK of the difference, the packed all-gathers);
  c_k = 1 steps (dense g, probability p) are reported apart;
- ``vr-marina, 1-rank group``: the same optimizer on a process group of this rank alone (nothing
  crosses): its computation without communication.

Figures (median and min over steps, rank 0; rank 1's medians alongside): the optimizer's own
overhead = t(vr-marina) - 2 t(fb), i.e. beyond the second forward/backward VR-MARINA needs by
design, as a fraction of a VR-MARINA step (target <= 10%), with and without communication; wire
bytes per step of VR-MARINA (its ``wire_bytes`` counter: payloads, size exchange and padding times
the W - 1 receivers) against DDP's ring allreduce of d float32 gradients (2 (W - 1) 4 d bytes all
ranks together, the standard count; DDP has no byte counter). The machine's cores are shared by the
ranks (and, on a busy machine, other jobs): compare medians taken in the same run.

``--own``: the optimizers' own work per step (step time minus the time inside its closures), next to
each method's algorithmic floor (:mod:`step_floors`, in the same rounds), for every marina.torch
optimizer next to ``torch.optim.SGD(momentum=0.9)``'s ``step()``, on a CNN of about 1.2 M parameters
(:func:`own_work_model`; ``--width 3400``: 10.8 M, about ResNet-18's size), interleaved (one step of
every optimizer in turn, ``--reps`` rounds), with the ratio (target <= 2). ``--ranks 1`` runs in
this process; more ranks go over gloo (the marina optimizers then communicate; SGD's step does not).
The DDP hook has no step of its own: whole DDP steps with SGD-momentum are timed with DDP's
allreduce and with the hook (qgd and diana randk:1%, ef21 topk:1%), and the hook's own work is the
difference (on one rank, a gloo group of this process; ``benchmarks/hook_overlap.py`` measures the
overlap). ``--against SRC`` times another checkout's optimizers and hooks in the same rounds;
``--cpu-clock`` uses the thread's CPU time (steadier on a shared machine).

Run: ``python benchmarks/torch_optim.py [--ranks 2] [--batch 32] [--steps 20] [--reps 10]``
or ``python benchmarks/torch_optim.py --own [--ranks 1|2] [--reps 30] [--cpu-clock] [--against SRC]``
``[--width H]``
or ``python benchmarks/torch_optim.py --floors [--reps 30] [--batch 8] [--cpu-clock]`` (the parts
that bound the own work: one pass over d, RandK's index draw, the RandK and TopK compressors and
the exact TopK selections alone, next to SGD-momentum; then every optimizer's algorithmic floor,
the fewest torch ops one step of its method needs for one worker, :mod:`step_floors`, timed as
``--own`` times the optimizers: each step right after a real closure, interleaved with
SGD-momentum's ``step()`` after its closure). Interleaved rounds alternate their order
(:func:`in_turn`).
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import step_floors  # benchmarks/step_floors.py, beside this script
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

import marina.torch as mt
from marina import memory
from marina.errors import MemoryBudgetError
from marina.nets import keyed_init_, load_fashion_mnist, small_cnn
from marina.testing import local_launch

VARIANTS = ("fb", "sgd+ddp", "vr-marina", "vr-marina, 1-rank group")

clock = time.perf_counter
"""The clock of every timing: wall time, or this thread's CPU time with ``--cpu-clock`` (on a
shared machine it leaves out the time the process waits for a core)."""


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed_closure(net, opt, x, y, inside: list[float]):
    """The closure of a step on (x, y); adds its seconds to ``inside[0]``."""

    def closure():
        t0 = clock()
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        inside[0] += clock() - t0
        return loss

    return closure


def rank_main(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    alone = [dist.new_group([r]) for r in range(world)][rank]  # every rank creates every group
    data = load_fashion_mnist(None)
    norm = data.normalizer()
    images, labels = norm(data.train_images).float(), data.train_labels
    per_rank = len(labels) // world
    images, labels = (
        images[rank * per_rank : (rank + 1) * per_rank],
        labels[rank * per_rank : (rank + 1) * per_rank],
    )
    batches = [
        (images[s : s + args.batch], labels[s : s + args.batch])
        for s in range(0, per_rank - args.batch + 1, args.batch)
    ]

    def model():
        return keyed_init_(small_cnn(num_classes=10), 0)

    plain, ddp_model, vr_model, vr1_model = model(), model(), model(), model()
    ddp = DistributedDataParallel(ddp_model)
    sgd = torch.optim.SGD(ddp.parameters(), lr=1e-4)
    vr = mt.VRMARINA(
        vr_model.parameters(), compressor="randk:1%", lr=1e-4, batch_size=args.batch, module=vr_model
    )
    vr1 = mt.VRMARINA(
        vr1_model.parameters(),
        compressor="randk:1%",
        lr=1e-4,
        batch_size=args.batch,
        process_group=alone,
        module=vr1_model,
    )
    d = sum(p.numel() for p in plain.parameters())

    inside = [0.0]  # seconds spent in closures since the last reset

    def closure_for(net, opt, x, y):
        return timed_closure(net, opt, x, y, inside)

    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    own: dict[str, list[float]] = {v: [] for v in VARIANTS[2:]}  # step time minus its closures'
    dense_times: list[float] = []
    vr_bytes: list[int] = []
    vr_dense_bytes: list[int] = []
    k = 0
    plain_opt = torch.optim.SGD(plain.parameters(), lr=1e-4)  # only for zero_grad
    for step in range(3):  # warm-up; VR-MARINA's step 0 (dense g^0) is not timed
        x, y = batches[step % len(batches)]
        closure_for(plain, plain_opt, x, y)()
        closure_for(ddp, sgd, x, y)()
        sgd.step()
        vr.step(closure_for(vr_model, vr, x, y))
        vr1.step(closure_for(vr1_model, vr1, x, y))
    for rep in range(args.reps):
        order = VARIANTS[rep % len(VARIANTS) :] + VARIANTS[: rep % len(VARIANTS)]
        for variant in order:
            dist.barrier()
            for _ in range(args.steps):
                x, y = batches[k % len(batches)]
                k += 1
                if variant == "fb":
                    t0 = time.perf_counter()
                    closure_for(plain, plain_opt, x, y)()
                    times[variant].append(time.perf_counter() - t0)
                elif variant == "sgd+ddp":
                    t0 = time.perf_counter()
                    closure_for(ddp, sgd, x, y)()
                    sgd.step()
                    times[variant].append(time.perf_counter() - t0)
                else:
                    opt, net = (vr, vr_model) if variant == "vr-marina" else (vr1, vr1_model)
                    dense, before = opt.coin, opt.wire_bytes
                    inside[0] = 0.0
                    t0 = time.perf_counter()
                    opt.step(closure_for(net, opt, x, y))
                    elapsed = time.perf_counter() - t0
                    if not dense:
                        own[variant].append(elapsed - inside[0])
                    if variant == "vr-marina":
                        (vr_dense_bytes if dense else vr_bytes).append(opt.wire_bytes - before)
                    (dense_times if dense and variant == "vr-marina" else times[variant]).append(elapsed)
    report = {
        "rank": rank,
        "world": world,
        "d": d,
        "K": vr.compressor.spec,
        "p": vr.method_params["p"],
        "times": times,
        "own": own,
        "dense_times": dense_times,
        "vr_bytes": vr_bytes,
        "vr_dense_bytes": vr_dense_bytes,
        "bits_up": vr.bits_up,
        "rounds": vr.rounds,
    }
    Path(args.out, f"rank{rank}.json").write_text(json.dumps(report))
    dist.destroy_process_group()


OWN_WIDTH = 360
"""The hidden units h of :func:`own_work_model` (``--width``): 360 gives d = 1,185,026; 3400 gives
d = 10,751,906, about ResNet-18's 11.2 M (the paper's network)."""


def own_work_model() -> torch.nn.Module:
    """conv5x5(32) - pool - conv5x5(64) - pool - linear(3136, h) - linear(h, 10), h = :data:`OWN_WIDTH`:
    d = 1,185,026 at h = 360."""
    nn = torch.nn
    h = OWN_WIDTH
    return nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(3136, h),
        nn.ReLU(),
        nn.Linear(h, 10),
    )


OWN = {
    "sgd-momentum": lambda m, ps: torch.optim.SGD(ps, lr=1e-3, momentum=0.9),
    "QGD": lambda m, ps: m.QGD(ps, compressor="randk:1%", lr=1e-3),
    "DIANA": lambda m, ps: m.DIANA(ps, compressor="randk:1%", lr=1e-3),
    "MARINA": lambda m, ps: m.MARINA(ps, compressor="randk:1%", lr=1e-3),
    "VRMARINA": lambda m, ps: m.VRMARINA(ps, compressor="randk:1%", lr=1e-3, batch_size=8),
    "PPMARINA": lambda m, ps: m.PPMARINA(ps, compressor="randk:1%", lr=1e-3),
    "EF21": lambda m, ps: m.EF21(ps, compressor="topk:1%", lr=1e-3),
    "EF21SGD": lambda m, ps: m.EF21SGD(ps, compressor="topk:1%", lr=1e-3, batch_size=8),
    "EF21SGDM": lambda m, ps: m.EF21SGDM(ps, compressor="topk:1%", lr=1e-3, momentum=0.1, batch_size=8),
    "DASHA": lambda m, ps: m.DASHA(ps, compressor="randk:1%", lr=1e-3),
    "DASHAMVR": lambda m, ps: m.DASHAMVR(ps, compressor="randk:1%", lr=1e-3, batch_size=8),
}
DDP_STEP = "DDP allreduce"
FLOOR = "floor "
"""Prefix of the algorithmic floors' rows in :func:`own_work`'s reports (:mod:`step_floors`)."""
OWN_SELECTOR = "sampled threshold on the bits (marina's)"
"""The TopK selection of the floors in ``--own`` (the cheapest measured by ``--floors``)."""
AGAINST = " (against)"
"""Suffix of the optimizers of ``--against``'s checkout in the reports."""


def load_against(src: str) -> ModuleType:
    """``marina.torch`` of another checkout (``src``/marina), imported as ``marina_against``: a
    copy whose absolute imports are renamed, so its optimizers and this checkout's run in one
    process, interleaved."""
    root = Path(tempfile.mkdtemp(prefix="marina_against_"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    shutil.copytree(Path(src, "marina"), root / "marina_against")
    for path in (root / "marina_against").rglob("*.py"):
        text = re.sub(r"\bmarina\.", "marina_against.", path.read_text())
        text = text.replace("from marina import", "from marina_against import")
        path.write_text(text)
    sys.path.insert(0, str(root))
    return importlib.import_module("marina_against.torch")


HOOKS = {
    DDP_STEP: None,
    "DDP hook qgd": ("randk:1%", "qgd"),
    "DDP hook diana": ("randk:1%", "diana"),
    "DDP hook ef21": ("topk:1%", "ef21"),
}
"""The DDP variants (whole steps: forward, backward with its communication, SGD-momentum's step):
DDP's own allreduce, and marina's hook with each (compressor, method); a hook's own work is its
step's time beyond :data:`DDP_STEP`'s."""


def _hook_runs(modules: list[tuple[str, ModuleType]]) -> dict[str, tuple]:
    """(DDP model, SGD-momentum) per :data:`HOOKS` entry (and checkout); without a process group,
    a gloo group of this process alone (made after the optimizers, which keep their own network)."""
    if not dist.is_initialized():
        store = dist.FileStore(tempfile.mktemp(prefix="marina_own_store_"), 1)
        dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    runs = {}
    for label, spec in HOOKS.items():
        for suffix, module in modules if spec else modules[:1]:
            torch.manual_seed(0)
            ddp = DistributedDataParallel(own_work_model())
            if spec:
                ddp.register_comm_hook(module.CompressionHookState(*spec), module.compression_hook)
            runs[label + suffix] = (ddp, torch.optim.SGD(ddp.parameters(), lr=1e-3, momentum=0.9))
    return runs


RUN_BUFFERS = 8
"""d-sized float32 buffers one run of ``--own`` holds, about (model, grads, optimizer state and
spares; measured: 12 GB for the 38 runs of ``--against`` at d = 10.8 M on one rank)."""


def check_own_memory(ranks: int, against: bool) -> None:
    """MemoryBudgetError (``marina.memory``) when ``--own`` would hold more than the budget: every
    run's model and state at once, on every rank of this machine."""
    d = sum(p.numel() for p in own_work_model().parameters())
    copies = 2 if against else 1
    runs = 1 + copies * (len(OWN) - 1) + 1 + copies * (len(HOOKS) - 1) + len(step_floors.FLOORS)
    memory.check(
        {f"{runs} runs x {RUN_BUFFERS} d-sized buffers x {ranks} ranks": ranks * runs * RUN_BUFFERS * 4 * d},
        f"torch_optim.py --own (d = {d}, --ranks {ranks})",
    )


def in_turn(runs: dict[str, tuple], rep: int) -> list[tuple[str, tuple]]:
    """The runs of round ``rep`` in turn: in order on even rounds, reversed on odd ones (a step
    costs more right after some others, e.g. first after SGD-momentum's: each run takes every
    position equally often; the same order on every rank)."""
    order = list(runs.items())
    return order if rep % 2 == 0 else order[::-1]


def own_work(reps: int, batch: int, against: str | None = None) -> dict[str, list[float]]:
    """Seconds of each optimizer's own work per step (step minus its closures), interleaved; with
    ``against``, the same optimizers of that checkout too (names suffixed :data:`AGAINST`). The
    :data:`HOOKS` rows are whole DDP steps (see :func:`summarise_own`)."""
    torch.manual_seed(0)
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    modules = [("", mt)] + ([(AGAINST, load_against(against))] if against else [])
    runs = {}
    for name, make in OWN.items():
        for suffix, module in modules if name != "sgd-momentum" else modules[:1]:
            torch.manual_seed(0)
            model = own_work_model()
            runs[name + suffix] = (model, make(module, model.parameters()))
    whole = _hook_runs(modules)
    runs.update(whole)
    inside = [0.0]
    floors_of = floor_runs(x, y, inside, step_floors.SELECTORS[OWN_SELECTOR])
    runs.update({FLOOR + name: run for name, run in floors_of.items()})
    own: dict[str, list[float]] = {name: [] for name in runs}
    for rep in range(reps + 3):  # 3 warm-up rounds (step 0's dense start among them) not kept
        for name, (model, opt) in in_turn(runs, rep):
            # a floor's step is a function; its closure zeroes the model's grads
            closure = timed_closure(model, model if name.startswith(FLOOR) else opt, x, y, inside)
            inside[0] = 0.0
            t0 = clock()
            if name == "sgd-momentum" or name in whole:
                closure()
                opt.step()
            elif name.startswith(FLOOR):
                opt(closure)  # a floor's step
            else:
                opt.step(closure)
            if rep >= 3:
                own[name].append(clock() - t0 - (0.0 if name in whole else inside[0]))
    return own


def floors(reps: int, batch: int) -> None:
    """What bounds the optimizers' own work, each part alone on the model's d, interleaved
    (``reps`` rounds), next to SGD-momentum's ``step()`` with the gradients given; then the
    algorithmic floor of every :data:`OWN` optimizer (:func:`algorithmic_floors`), its TopK
    selection the cheapest of :data:`step_floors.SELECTORS` measured here."""
    from marina import compressors
    from marina.rng import Randomness

    torch.manual_seed(0)
    model = own_work_model()
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    sgd = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    d = sum(p.numel() for p in model.parameters())
    k = max(1, round(d / 100))
    x, buf = torch.randn(1, d), torch.empty(1, d)
    randk, topk = compressors.get(f"randk:{k}"), compressors.get(f"topk:{k}")
    parts = {
        "sgd-momentum step()": lambda r: sgd.step(),
        "one pass over d (copy)": lambda r: buf.copy_(x),
        f"RandK index draw (K = {k})": lambda r: Randomness(0, "compress", r, [0]).sample_without_replacement(
            d, k
        ),
        "randk compress_sum": lambda r: randk.compress_sum(x, Randomness(0, "compress", r, [0])),
        "topk compress_sum": lambda r: topk.compress_sum(x, Randomness(0, "compress", r, [0])),
    }
    selectors = {f"abs + {name}": select for name, select in step_floors.SELECTORS.items()}
    for name, select in selectors.items():
        parts[name] = lambda r, select=select: select(torch.abs(x[0], out=buf[0]), k)
    times: dict[str, list[float]] = {name: [] for name in parts}
    for r in range(reps + 3):
        for name, run in parts.items():
            t0 = clock()
            run(r)
            if r >= 3:
                times[name].append(clock() - t0)
    floor = _percentile(times["sgd-momentum step()"], 0.5)
    print(
        f"parts alone, d = {d}, interleaved ({reps} rounds, {_clock_name()}): "
        "median ms, / SGD-momentum step()"
    )
    for name, values in times.items():
        med = _percentile(values, 0.5)
        print(f"{name:<42}{med * 1e3:>8.3f}{med / floor:>8.2f}")
    cheapest = min(selectors, key=lambda name: _percentile(times[name], 0.5))
    print()
    summarise_floors(algorithmic_floors(reps, batch, selectors[cheapest]), batch, cheapest)


def floor_runs(x: Tensor, y: Tensor, inside: list[float], select) -> dict[str, tuple]:
    """(model, step(closure)) of every :data:`step_floors.FLOORS` sequence on its own
    :func:`own_work_model`, started (step 0's dense work done); ``inside`` collects closure time."""
    d = sum(p.numel() for p in own_work_model().parameters())
    k = max(1, round(d / 100))
    idx = torch.randperm(d, generator=torch.Generator().manual_seed(0))[:k].sort().values
    omega = d / k - 1  # RandK's; the coefficients' values do not change the work
    coef = step_floors.Coefficients(
        gamma=1e-3, scale=d / k, alpha=1 / (1 + omega), a=1 / (2 * omega + 1), eta=0.1, b=0.1
    )
    runs = {}
    for name, make in step_floors.FLOORS.items():
        torch.manual_seed(0)
        model = own_work_model()
        floor = make(step_floors.Layout(model.parameters()), idx, coef, select)
        floor.start(timed_closure(model, model, x, y, inside))
        runs[name] = (model, floor.step)
    return runs


def algorithmic_floors(reps: int, batch: int, select) -> dict[str, list[float]]:
    """Seconds per step of every :data:`step_floors.FLOORS` sequence (its step minus its closures)
    and of SGD-momentum's ``step()``, each right after a real closure on its own
    :func:`own_work_model`, interleaved as :func:`own_work` (3 warm-up rounds, then ``reps``)."""
    torch.manual_seed(0)
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    inside = [0.0]
    torch.manual_seed(0)
    model = own_work_model()
    sgd = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    runs = {"sgd-momentum": (model, lambda closure: (closure(), sgd.step()))}
    runs.update(floor_runs(x, y, inside, select))
    times: dict[str, list[float]] = {name: [] for name in runs}
    for rep in range(reps + 3):
        for name, (model, step) in in_turn(runs, rep):
            closure = timed_closure(model, model, x, y, inside)
            inside[0] = 0.0
            t0 = clock()
            step(closure)
            if rep >= 3:
                times[name].append(clock() - t0 - inside[0])
    return times


def summarise_floors(times: dict[str, list[float]], batch: int, selector: str) -> None:
    d = sum(p.numel() for p in own_work_model().parameters())
    print(
        f"algorithmic floors, one worker, plain torch (benchmarks/step_floors.py): d = {d}, "
        f"K = {max(1, round(d / 100))}; each step right after a closure (batch {batch}),\n"
        f"interleaved ({len(times['sgd-momentum'])} rounds, {_clock_name()}), median; TopK: {selector}"
    )
    floor = _percentile(times["sgd-momentum"], 0.5)
    print(f"{'method':<14}{'floor ms':>9}{'/ SGD-m':>9}   ops counted")
    for name, values in times.items():
        med = _percentile(values, 0.5)
        ops = step_floors.FLOORS[name].ops if name in step_floors.FLOORS else "torch.optim.SGD step()"
        print(f"{name:<14}{med * 1e3:>9.3f}{med / floor:>9.2f}   {ops}")


def _clock_name() -> str:
    return "thread CPU time" if clock is time.thread_time else "wall time"


def summarise_own(reports: list[dict[str, list[float]]], ranks: int) -> None:
    d = sum(p.numel() for p in own_work_model().parameters())
    print(
        f"own work per step (step minus its closures), CNN d = {d}, {ranks} rank(s), interleaved, "
        f"{_clock_name()}"
    )
    floor = [_percentile(r["sgd-momentum"], 0.5) for r in reports]
    print(
        f"{'optimizer':<14}{'median ms':>10}{'min ms':>9}{'/ SGD-momentum':>16}{'its floor':>11}   "
        "other ranks' ratios"
    )
    hooks = [name for name in reports[0] if name.split(" (")[0] in HOOKS]
    for name in reports[0]:
        if name in hooks or name.startswith(FLOOR):
            continue
        med = [_percentile(r[name], 0.5) for r in reports]
        others = ", ".join(f"{m / f:.2f}" for m, f in zip(med[1:], floor[1:]))
        low = min(reports[0][name]) * 1e3
        own_floor = reports[0].get(FLOOR + name)
        at_floor = f"{_percentile(own_floor, 0.5) / floor[0]:.2f}" if own_floor else ""
        ratio = med[0] / floor[0]
        print(f"{name:<14}{med[0] * 1e3:>10.2f}{low:>9.2f}{ratio:>16.2f}{at_floor:>11}   {others}")
    print(
        "its floor: the method's algorithmic floor (benchmarks/step_floors.py; RandK's index draw not "
        f"included; TopK by {OWN_SELECTOR}), / SGD-momentum, in the same rounds"
    )
    base = [_percentile(r[DDP_STEP], 0.5) for r in reports]
    print(
        f"DDP + SGD-momentum whole steps (forward, backward, communication, step): {DDP_STEP} "
        f"{base[0] * 1e3:.2f} ms; a hook's own work = its step - that, / SGD-momentum's own step"
    )
    for name in hooks[1:]:
        extra = [_percentile(r[name], 0.5) - b for r, b in zip(reports, base)]
        others = ", ".join(f"{e / f:.2f}" for e, f in zip(extra[1:], floor[1:]))
        print(f"{name:<14}{extra[0] * 1e3:>10.2f}{'':>9}{extra[0] / floor[0]:>16.2f}   {others}")


def summarise(reports: list[dict], args: argparse.Namespace) -> None:
    r0 = reports[0]
    W, d = r0["world"], r0["d"]
    med = {v: _percentile(r0["times"][v], 0.5) for v in VARIANTS}
    low = {v: min(r0["times"][v]) for v in VARIANTS}
    print(f"small CNN (d = {d}), {W} gloo ranks, b' = {args.batch} per rank, {r0['K']}, p = {r0['p']:.4g}")
    print(f"{'variant':<26}{'median ms':>11}{'min ms':>9}   other ranks' medians (ms)   steps")
    for v in VARIANTS:
        others = ", ".join(f"{_percentile(r['times'][v], 0.5) * 1e3:.2f}" for r in reports[1:])
        print(f"{v:<26}{med[v] * 1e3:>11.2f}{low[v] * 1e3:>9.2f}   {others:<27} {len(r0['times'][v])}")
    if r0["dense_times"]:
        print(
            f"{'vr-marina c_k = 1 (dense)':<26}{_percentile(r0['dense_times'], 0.5) * 1e3:>11.2f}"
            f"{min(r0['dense_times']) * 1e3:>9.2f}   {'':<27} {len(r0['dense_times'])}"
        )
    print()
    for v in ("vr-marina", "vr-marina, 1-rank group"):
        paired = r0["own"][v]
        share = [o / t for o, t in zip(paired, r0["times"][v])]
        print(
            f"{v}: own time per step (step minus its two closures, paired): median "
            f"{_percentile(paired, 0.5) * 1e3:.2f} ms, min {min(paired) * 1e3:.2f} ms; "
            f"median share of the step {100 * _percentile(share, 0.5):.1f}% (target <= 10%)"
        )
        for label, t in (("median", med), ("min", low)):
            over = t[v] - 2 * t["fb"]
            print(
                f"    unpaired check, step - 2 fb ({label}s): {over * 1e3:.2f} ms = "
                f"{100 * over / t[v]:.1f}% of its step"
            )
    print(f"vr-marina step / (sgd+ddp step) (medians): {med['vr-marina'] / med['sgd+ddp']:.2f}")
    print()
    ddp_bytes = 2 * (W - 1) * 4 * d
    sparse = sorted(set(r0["vr_bytes"]))
    mean_sparse = sum(r0["vr_bytes"]) / max(1, len(r0["vr_bytes"]))
    print(
        f"wire bytes per step, all ranks: vr-marina c_k = 0: {mean_sparse:.0f} (values {sparse[:4]}); "
        f"DDP ring allreduce 2 (W-1) 4 d = {ddp_bytes}; ratio DDP / vr-marina = {ddp_bytes / mean_sparse:.1f}"
    )
    if r0["vr_dense_bytes"]:
        print(f"vr-marina c_k = 1 steps: {sum(r0['vr_dense_bytes']) / len(r0['vr_dense_bytes']):.0f} bytes")
    n = len(r0["vr_bytes"]) + len(r0["vr_dense_bytes"])
    mean_all = (sum(r0["vr_bytes"]) + sum(r0["vr_dense_bytes"])) / n
    print(f"vr-marina mean over all {n} timed steps: {mean_all:.0f} bytes = DDP / {ddp_bytes / mean_all:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32, help="b', images per rank and step (default 32)")
    ap.add_argument("--steps", type=int, default=20, help="steps per block (default 20)")
    ap.add_argument("--reps", type=int, default=10, help="blocks of every variant (default 10)")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--own", action="store_true", help="the optimizers' own work against SGD-momentum")
    ap.add_argument("--floors", action="store_true", help="the parts that bound the own work, alone")
    ap.add_argument(
        "--against",
        metavar="SRC",
        help="with --own: also time the optimizers of another checkout's SRC (its src/ folder), "
        "interleaved in the same rounds",
    )
    ap.add_argument(
        "--cpu-clock",
        action="store_true",
        help="time with this thread's CPU time instead of wall time (--own, --floors)",
    )
    ap.add_argument(
        "--width",
        type=int,
        default=360,
        help="--own, --floors: hidden units of the CNN (default 360: d = 1.2 M; 3400: d = 10.8 M)",
    )
    ap.add_argument("--rank-job", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    global clock, OWN_WIDTH
    if args.width < 1:
        ap.error(f"--width == {args.width}, must be >= 1")
    OWN_WIDTH = args.width
    if args.cpu_clock:
        clock = time.thread_time
    if args.floors:
        torch.set_num_threads(1)
        floors(args.reps, args.batch)
        return
    if args.own:
        torch.set_num_threads(1)
        if not args.rank_job:
            try:
                check_own_memory(args.ranks, args.against is not None)
            except MemoryBudgetError as err:
                ap.error(f"{err}; use a smaller --width or fewer --ranks")
        if args.rank_job:
            dist.init_process_group("gloo")
            own = own_work(args.reps, args.batch, args.against)
            Path(args.out, f"own{dist.get_rank()}.json").write_text(json.dumps(own))
            dist.barrier()
            dist.destroy_process_group()
            return
        if args.ranks == 1:
            summarise_own([own_work(args.reps, args.batch, args.against)], 1)
            return
    if args.rank_job:
        rank_main(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        argv = [sys.executable, __file__, "--rank-job", "--out", tmp]
        argv += ["--batch", str(args.batch), "--steps", str(args.steps), "--reps", str(args.reps)]
        argv += ["--own"] if args.own else []
        argv += ["--against", args.against] if args.against else []
        argv += ["--cpu-clock"] if args.cpu_clock else []
        argv += ["--width", str(args.width)]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        procs = local_launch(argv, args.ranks, env=env, stderr=subprocess.PIPE)
        errors = [p.communicate(timeout=args.timeout)[1].decode() for p in procs]
        if any(p.returncode for p in procs):
            raise SystemExit("a rank failed:\n" + "\n".join(e[-3000:] for e in errors))
        name = "own" if args.own else "rank"
        reports = [json.loads(Path(tmp, f"{name}{r}.json").read_text()) for r in range(args.ranks)]
    summarise_own(reports, args.ranks) if args.own else summarise(reports, args)


if __name__ == "__main__":
    main()
