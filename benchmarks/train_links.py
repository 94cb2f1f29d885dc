"""Time to a target quality on real shaped links: DDP, PowerSGD and marina, W ranks.

Tasks (every size a flag; ``--smoke`` makes them tiny):

- ``lm``: a byte-level causal transformer (pre-norm blocks, ``--lm-width`` x ``--lm-layers``,
  ``--lm-heads`` heads, context ``--lm-context``; 2.5 M parameters by default) on the Python
  standard library's ``.py`` sources (sorted, concatenated, first ``--corpus-mb`` MB; the last 10 %
  is the validation text); quality = validation loss in nats per byte, target ``--lm-target``.
- ``resnet``: a small ResNet with batch norm (3x3 stem, three stages of ``--resnet-blocks``
  :class:`marina.nets.models.BasicBlock` with ``--resnet-width`` x 1, 2, 4 channels, average pool,
  linear head) on Fashion-MNIST (:func:`marina.nets.load_fashion_mnist`: the full set where
  installed, else the bundled subset); quality = test accuracy, target ``--resnet-target``.

Every rank draws its batches of ``--batch`` from its own shard of the training data.

Contenders (each with an lr grid, ``--lr-grid``):

- ``ddp``: ``DistributedDataParallel`` (default buckets), all-reduce, with the task's optimizer
  (SGD momentum 0.9 for the ResNet, AdamW for the transformer); ``ddp-sgd``: the same with plain
  SGD on the marina lr grid (the lr at which plain SGD trains, the reference of the compressors);
- ``powersgd-rR``: the same with torch's ``powerSGD_hook`` (rank R of ``--powersgd-ranks``,
  ``start_powerSGD_iter=2``, error feedback and warm start on) and ONE bucket
  (``bucket_cap_mb`` above the model's size: on gloo, two buckets crashed the hook with
  ``gloo::EnforceNotMet ... op.preamble.length <= op.nbytes``);
- ``hook-qgd``, ``hook-ef21``: DDP with ``marina.torch.compression_hook`` (``--qgd-compressor``,
  ``--ef21-compressor``), default buckets, the task's optimizer; ``hook-ef21-sgdm`` (where the
  hook has that method; eta = ``--sgdm-momentum``) with plain SGD, the hook holding the momentum;
- ``ef21-sgd``, ``vr-marina``, ``ef21-sgdm`` (where marina.torch has it; eta =
  ``--sgdm-momentum``): marina's optimizers (no DDP; the model on every rank, batch-norm
  statistics local to each rank). VR-MARINA (online, b = b' = ``--batch``) takes p = its
  compressor's wire bits over float32's, at most 1/2 (:func:`vr_p`).
- ``BASE@SPEC``: contender BASE with compressor SPEC: ``hook-qgd@Q`` and ``vr-marina@Q`` for each
  unbiased Q of ``--unbiased`` (natural compression, natural dithering, many-level QSGD, RandK
  composed with natural: which of them train at SGD's lr), ``hook-ef21@C`` and ``hook-ef21-sgdm@C``
  for each C of ``--topk``; any such name is also accepted by ``--contenders``.

MARINA itself is not a contender: its every step needs the full local gradient (a pass over the
rank's shard), which costs tens of minibatch steps here; VR-MARINA is its minibatch form.

Measurement (the issue's method): steps to target from runs on the loopback interface (the
trajectory does not depend on the link): every ``--eval-every`` steps rank 0 evaluates; the first
evaluated step at the target counts. Then, in network namespaces behind a bridge (:mod:`netns`),
``tc tbf`` on every veth at each rate of ``--rates``: every contender at its best lr runs
``--warmup-steps`` then ``--timed-steps`` steps between two barriers; stages (one rate, every
contender, one process per rank) are repeated ``--repeats`` times, rates and contenders rotated
(interleaved), and the median seconds per step is kept; bytes per step are what the ranks' veths
sent (``/proc/net/dev``, mean over ranks, gloo's TCP framing included). Seconds to target = steps
x seconds per step. The script prints a table, each compressor's omega (or alpha) and bits per
entry, the 1-minute load average at each stage's start, the winner per task and link, and whether
the issue's targets are met (marina's best sooner than the best PowerSGD at 10 and 100 Mbit/s and
no later than DDP at 1 Gbit/s; EF21-SGDM in no more steps than DDP), and draws quality against
wall-clock per link (``--out``). Needs root (``ip netns``, ``tc``) and exits with status 2 otherwise;
``--loopback-only`` runs the step counting alone, without root. Only the contenders that reached
the target are timed on the links (``--time-all``: every one).

Run: ``python benchmarks/train_links.py --smoke --out /tmp/links.png`` (as root), or without
``--smoke`` for the full sizes.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shutil
import statistics
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import netns  # benchmarks/netns.py, beside this script
import torch
import torch.nn.functional as F
from torch import Tensor, nn

TASKS = ("lm", "resnet")
RATES = ("1gbit", "100mbit", "10mbit")
BASE = {"lm": "AdamW", "resnet": "SGD momentum 0.9"}
# lr grids: (task, family); family "ddp" = DDP with the task's optimizer (also PowerSGD and the
# hooks), "marina" = marina's optimizers (plain steps, no momentum)
LR_GRID = {
    ("lm", "ddp"): (1e-3, 3e-3),
    ("lm", "marina"): (0.3, 1.0),
    ("resnet", "ddp"): (0.05, 0.2),
    ("resnet", "marina"): (0.1, 0.3),
}
FULL = {
    "corpus_mb": 4.0,
    "lm_width": 256,
    "lm_layers": 3,
    "lm_heads": 4,
    "lm_context": 64,
    "lm_target": 2.8,
    "val_batches": 8,
    "resnet_width": 16,
    "resnet_blocks": 1,
    "resnet_target": 0.55,
    "test_size": 10_000,
    "batch": 8,
    "max_steps": 150,
    "eval_every": 10,
    "warmup_steps": 2,
    "timed_steps": 4,
    "repeats": 3,
}
SMOKE = {
    "corpus_mb": 0.1,
    "lm_width": 32,
    "lm_layers": 1,
    "lm_heads": 2,
    "lm_context": 32,
    "lm_target": 5.0,
    "val_batches": 2,
    "resnet_width": 4,
    "resnet_blocks": 1,
    "resnet_target": 0.2,
    "test_size": 200,
    "batch": 8,
    "max_steps": 12,
    "eval_every": 3,
    "warmup_steps": 3,
    "timed_steps": 2,
    "repeats": 1,
}


# -- models and data -----------------------------------------------------------------------------
class Block(nn.Module):
    """Pre-norm transformer block: causal self-attention, then a 4x MLP, each residual."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: Tensor) -> Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(self.ln2(x))


class ByteLM(nn.Module):
    """Byte embeddings + learned positions, pre-norm blocks, final norm, a 256-way head."""

    def __init__(self, width: int, layers: int, heads: int, context: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(256, width)
        self.pos = nn.Parameter(torch.randn(context, width) * 0.02)
        self.blocks = nn.Sequential(*[Block(width, heads) for _ in range(layers)])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 256, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x) + self.pos[: x.shape[1]]
        return self.head(self.norm(self.blocks(h)))


class SmallResNet(nn.Module):
    """3x3 stem, stages of ``blocks`` basic blocks at width x (1, 2, 4) (strides 1, 2, 2), batch norm."""

    def __init__(self, width: int, blocks: int, num_classes: int = 10) -> None:
        from marina.nets.models import BasicBlock

        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        layers, planes = [], width
        for mult, stride in ((1, 1), (2, 2), (4, 2)):
            for s in [stride] + [1] * (blocks - 1):
                layers.append(BasicBlock(planes, width * mult, s, nn.BatchNorm2d))
                planes = width * mult
        self.stages = nn.Sequential(*layers)
        self.linear = nn.Linear(planes, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.stages(self.stem(x))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def stdlib_corpus(megabytes: float) -> bytes:
    """The standard library's ``.py`` files, sorted by path, concatenated up to ``megabytes``."""
    root = Path(sysconfig.get_paths()["stdlib"])
    limit, parts, size = int(megabytes * 2**20), [], 0
    for path in sorted(root.rglob("*.py")):
        if "site-packages" in path.parts or size >= limit:
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        parts.append(data)
        size += len(data)
    return b"".join(parts)[:limit]


def build_model(task: str, args: dict, seed: int) -> nn.Module:
    """The task's model, initialised from ``seed`` (the same start on every rank)."""
    torch.manual_seed(seed)
    if task == "lm":
        return ByteLM(args["lm_width"], args["lm_layers"], args["lm_heads"], args["lm_context"])
    return SmallResNet(args["resnet_width"], args["resnet_blocks"])


class Task:
    """One task's data, model and quality on this rank (``rank`` of ``world``)."""

    def __init__(self, name: str, args: dict, rank: int, world: int) -> None:
        self.name, self.args, self.rank, self.world = name, args, rank, world
        if name == "lm":
            raw = torch.frombuffer(bytearray(stdlib_corpus(args["corpus_mb"])), dtype=torch.uint8).long()
            cut = int(0.9 * len(raw))
            n = cut // world
            self.train, self.val = raw[rank * n : (rank + 1) * n], raw[cut:]
            ctx = args["lm_context"]
            if n <= ctx + 1 or len(self.val) <= ctx + 1:
                raise SystemExit(f"--corpus-mb {args['corpus_mb']} is too small for --lm-context {ctx}")
        else:
            from marina.nets import load_fashion_mnist

            data = load_fashion_mnist()
            norm = data.normalizer()
            self.images = norm(data.train_images[rank::world])
            self.labels = data.train_labels[rank::world]
            self.test_images = norm(data.test_images[: args["test_size"]])
            self.test_labels = data.test_labels[: args["test_size"]]
            self.source = data.source
        self.higher_is_better = name == "resnet"

    def model(self, seed: int) -> nn.Module:
        return build_model(self.name, self.args, seed)

    def batch(self, gen: torch.Generator, size: int) -> tuple[Tensor, Tensor]:
        if self.name == "lm":
            ctx = self.args["lm_context"]
            starts = torch.randint(0, len(self.train) - ctx - 1, (size,), generator=gen)
            rows = self.train[starts[:, None] + torch.arange(ctx + 1)]
            return rows[:, :-1], rows[:, 1:]
        idx = torch.randint(0, len(self.labels), (size,), generator=gen)
        return self.images[idx], self.labels[idx]

    @staticmethod
    def loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        out = model(x)
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))

    @torch.no_grad()
    def quality(self, model: nn.Module) -> float:
        """Validation loss (nats per byte) or test accuracy, on fixed data."""
        was = model.training
        model.eval()
        try:
            if self.name == "lm":
                ctx, count = self.args["lm_context"], self.args["val_batches"] * self.args["batch"]
                starts = torch.linspace(0, len(self.val) - ctx - 1, count).long()
                rows = self.val[starts[:, None] + torch.arange(ctx + 1)]
                losses = [
                    float(self.loss(model, r[:, :-1], r[:, 1:])) for r in rows.split(self.args["batch"])
                ]
                return sum(losses) / len(losses)
            correct = sum(
                int((model(x).argmax(1) == y).sum())
                for x, y in zip(self.test_images.split(256), self.test_labels.split(256))
            )
            return correct / len(self.test_labels)
        finally:
            model.train(was)

    def reached(self, quality: float) -> bool:
        target = self.args[f"{self.name}_target"]
        return quality >= target if self.higher_is_better else quality <= target


# -- contenders ----------------------------------------------------------------------------------
def hook_methods() -> tuple[str, ...]:
    from marina.torch import hooks

    return tuple(hooks.HOOK_METHODS)


def contenders(args: dict) -> tuple[list[str], list[str]]:
    """The contenders to run, and a note for each one this marina version lacks.

    A name ``BASE@SPEC`` is contender BASE with compressor SPEC in place of its default (item 3
    of the issue: ``--unbiased`` adds ``hook-qgd@Q`` and ``vr-marina@Q`` for each Q; ``--topk``
    adds ``hook-ef21@C`` and ``hook-ef21-sgdm@C``)."""
    import marina.torch as mt

    names = ["ddp", "ddp-sgd", *[f"powersgd-r{r}" for r in args["powersgd_ranks"]], "hook-qgd"]
    names += [f"hook-qgd@{q}" for q in args["unbiased"]]
    names += ["hook-ef21", *[f"hook-ef21@{c}" for c in args["topk"]]]
    notes = []
    if "ef21-sgdm" in hook_methods():
        names.append("hook-ef21-sgdm")
        names += [f"hook-ef21-sgdm@{c}" for c in args["topk"]]
    else:
        notes.append("hook-ef21-sgdm skipped: the DDP hook has no method 'ef21-sgdm' in this version")
    names += ["ef21-sgd", "vr-marina", *[f"vr-marina@{q}" for q in args["unbiased"]]]
    if hasattr(mt, "EF21SGDM"):
        names.append("ef21-sgdm")
    else:
        notes.append("ef21-sgdm skipped: marina.torch has no EF21SGDM optimizer in this version")
    wanted = args.get("contenders")
    if wanted:
        names = [n for n in names if n in wanted] + [n for n in wanted if n not in names]
    return names, notes


OPTIMIZERS = ("ef21-sgd", "vr-marina", "ef21-sgdm")
"""The contenders that are marina.torch optimizers (no DDP)."""
BASES = ("ddp", "ddp-sgd", "powersgd-r", "hook-qgd", "hook-ef21", "hook-ef21-sgdm", *OPTIMIZERS)
"""Every contender's name is one of these (``powersgd-rR`` with its rank), then ``@SPEC`` or nothing."""


def base_of(contender: str) -> str:
    """The contender without its ``@compressor`` part."""
    return contender.partition("@")[0]


def compressor_of(contender: str, args: dict) -> str | None:
    """The compressor spec a contender runs with (None: DDP and PowerSGD, no marina compressor)."""
    base, _, spec = contender.partition("@")
    if spec:
        return spec
    if base in ("hook-qgd", "vr-marina"):
        return args["qgd_compressor"] if base == "hook-qgd" else args["vr_compressor"]
    return (
        args["ef21_compressor"] if base in ("hook-ef21", "hook-ef21-sgdm", "ef21-sgd", "ef21-sgdm") else None
    )


def check_contender(contender: str) -> str | None:
    """Why ``contender`` is not a contender's name (None when it is)."""
    from marina.errors import ConfigError
    from marina.torch.optim import compressor_for

    base, at, spec = contender.partition("@")
    known = base in BASES or (base.startswith("powersgd-r") and base[10:].isdigit() and int(base[10:]) >= 1)
    if not known or base == "powersgd-r":
        return f"{contender!r}: the part before '@' must be one of {', '.join(BASES)} (powersgd-rR: R >= 1)"
    if at and (base in ("ddp", "ddp-sgd") or base.startswith("powersgd-r")):
        return f"{contender!r}: {base} takes no compressor (no '@SPEC')"
    if at:
        contractive = base_of(contender) not in ("hook-qgd", "vr-marina")
        try:
            compressor_for(spec, 10_000, 2, contractive, user=base)
        except ConfigError as err:
            return f"{contender!r}: {err}"
    return None


def is_marina(contender: str) -> bool:
    """Whether a contender runs marina's compressors (its hook or its optimizers)."""
    base = base_of(contender)
    return base.startswith("hook-") or base in OPTIMIZERS


def family(contender: str) -> str:
    """The lr grid: "marina" for plain steps (marina's optimizers; DDP with plain SGD; the ef21-sgdm
    hook, whose user optimizer is plain SGD since the hook holds the momentum), "ddp" for the
    task's optimizer."""
    return "marina" if base_of(contender) in (*OPTIMIZERS, "hook-ef21-sgdm", "ddp-sgd") else "ddp"


def how_run(contender: str, task: str, args: dict) -> str:
    """One line saying how a contender was run."""
    base, comp = BASE[task], compressor_of(contender, args)
    name = base_of(contender)
    if name == "ddp":
        return f"DDP, default buckets, all-reduce; {base}"
    if name == "ddp-sgd":
        return "DDP, default buckets, all-reduce; plain SGD (no momentum): the lr plain SGD trains at"
    if name.startswith("powersgd-r"):
        return (
            f"DDP, one bucket, torch powerSGD_hook rank {name[10:]}, start_powerSGD_iter=2, "
            f"error feedback + warm start; {base}"
        )
    if name.startswith("hook-"):
        method = name[5:]
        if method == "ef21-sgdm":
            comp, base = f"{comp} momentum={args['sgdm_momentum']}", "plain SGD"
        return f"DDP, default buckets, marina.torch.compression_hook method={method!r} {comp}; {base}"
    extra = f", batch_size=dense_batch_size={args['batch']}" if name == "vr-marina" else ""
    if name == "ef21-sgdm":
        extra = f", momentum={args['sgdm_momentum']}"
    momentum = "" if name == "ef21-sgdm" else ", no momentum"
    return f"marina.torch optimizer {name} {comp}{extra} (no DDP{momentum})"


DIVERGED_LOSS = 1e3
"""A training loss above this (or not finite) ends a trajectory as diverged."""


class Diverged(Exception):
    """Raised on every rank together when a trajectory diverges."""


def vr_p(spec: str, model: nn.Module) -> float:
    """VR-MARINA's p: the compressor's expected wire bits over a float32 message's, at most
    b'/(b + b') = 1/2 (Corollary 3.2's p = min(zeta_Q/d, b'/(b + b')) counts non-zeros, so a
    quantizer that sends every entry would get p = 1, every round dense; its bits ratio is the
    same balance of dense and compressed rounds' communication)."""
    from marina.torch.optim import compressor_for

    d = sum(p.numel() for p in model.parameters())
    return min(0.5, compressor_for(spec, d, 2).expected_bits(d) / (32 * d))


class Trainer:
    """One contender at one lr on this rank: ``step()`` is one optimizer step (one round)."""

    def __init__(self, task: Task, contender: str, lr: float, args: dict) -> None:
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        import marina.torch as mt

        self.task, self.contender, self.args = task, contender, args
        name, comp = base_of(contender), compressor_of(contender, args)
        self.optimizer_form = name in OPTIMIZERS
        self.guarded = False
        self.model = task.model(args["seed"])
        self.gen = torch.Generator().manual_seed(1000 * args["seed"] + dist.get_rank())
        self.opt: torch.optim.Optimizer
        if self.optimizer_form:
            self.net = self.model
            common = {"lr": lr, "seed": args["seed"], "batch_size": args["batch"], "module": self.model}
            if name == "vr-marina":
                self.opt = mt.VRMARINA(
                    self.model.parameters(),
                    comp,
                    dense_batch_size=args["batch"],
                    p=vr_p(comp, self.model),
                    **common,
                )
            elif name == "ef21-sgd":
                self.opt = mt.EF21SGD(self.model.parameters(), comp, **common)
            else:
                self.opt = mt.EF21SGDM(
                    self.model.parameters(), comp, momentum=args["sgdm_momentum"], **common
                )
            return
        if name.startswith("powersgd-r"):
            from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as powersgd

            size_mb = sum(p.numel() * p.element_size() for p in self.model.parameters()) / 2**20
            self.net = DistributedDataParallel(self.model, bucket_cap_mb=size_mb + 1)
            state = powersgd.PowerSGDState(
                process_group=None,
                matrix_approximation_rank=int(name[10:]),
                start_powerSGD_iter=2,
                random_seed=args["seed"],
            )
            self.net.register_comm_hook(state, powersgd.powerSGD_hook)
        else:
            self.net = DistributedDataParallel(self.model)
            if name.startswith("hook-"):
                method = name[5:]
                extra = {"momentum": args["sgdm_momentum"]} if method == "ef21-sgdm" else {}
                state = mt.CompressionHookState(compressor=comp, method=method, seed=args["seed"], **extra)
                self.net.register_comm_hook(state, mt.compression_hook)
        if name in ("hook-ef21-sgdm", "ddp-sgd"):  # the ef21-sgdm hook's direction carries the momentum
            self.opt = torch.optim.SGD(self.net.parameters(), lr=lr)
        elif task.name == "lm":
            self.opt = torch.optim.AdamW(self.net.parameters(), lr=lr)
        else:
            self.opt = torch.optim.SGD(self.net.parameters(), lr=lr, momentum=0.9)

    def guard(self, loss: Tensor) -> None:
        """With ``self.guarded``: raise :class:`Diverged` on every rank together when any rank's
        loss is not finite or above ``DIVERGED_LOSS`` (before backward: a non-finite gradient
        would stop one rank in marina's compressor while the others wait in the exchange)."""
        if not self.guarded:
            return
        import torch.distributed as dist

        bad = torch.tensor([0.0 if math.isfinite(float(loss)) and float(loss) < DIVERGED_LOSS else 1.0])
        dist.all_reduce(bad)
        if float(bad):
            raise Diverged

    def step(self) -> float:
        x, y = self.task.batch(self.gen, self.args["batch"])
        if self.optimizer_form:

            def closure() -> Tensor:
                self.opt.zero_grad()
                loss = self.task.loss(self.model, x, y)
                self.guard(loss)
                loss.backward()
                return loss

            loss = self.opt.step(closure)
            return float(loss) if loss is not None else math.nan
        self.opt.zero_grad()
        loss = self.task.loss(self.net, x, y)
        self.guard(loss)
        loss.backward()
        self.opt.step()
        return float(loss)


# -- the rank jobs -------------------------------------------------------------------------------
def trajectory(task: Task, contender: str, lr: float, args: dict) -> dict:
    """Steps until the target (None: not within ``max_steps``, or diverged) and the curve."""
    import torch.distributed as dist

    trainer = Trainer(task, contender, lr, args)
    trainer.guarded = True
    curve, steps, t0 = [], None, time.perf_counter()
    for step in range(args["max_steps"] + 1):
        if step % args["eval_every"] == 0 or step == args["max_steps"]:
            q = torch.tensor(
                [task.quality(trainer.model) if dist.get_rank() == 0 else 0.0], dtype=torch.float64
            )
            dist.broadcast(q, 0)
            curve.append((step, float(q)))
            if not math.isfinite(float(q)):
                break
            if task.reached(float(q)):
                steps = step
                break
        if step == args["max_steps"]:
            break
        try:
            trainer.step()
        except Diverged:
            curve.append((step + 1, math.nan))
            break
    return {"steps": steps, "curve": curve, "seconds": time.perf_counter() - t0}


def timing(task: Task, contender: str, lr: float, args: dict) -> dict:
    """Seconds and veth bytes of ``timed_steps`` steps after ``warmup_steps`` (between barriers)."""
    import torch.distributed as dist

    trainer = Trainer(task, contender, lr, args)
    for _ in range(args["warmup_steps"]):
        trainer.step()
    dev = os.environ.get("GLOO_SOCKET_IFNAME", "lo")
    dist.barrier()
    b0, t0 = netns.tx_bytes(dev), time.perf_counter()
    for _ in range(args["timed_steps"]):
        trainer.step()
    dist.barrier()
    t1, b1 = time.perf_counter(), netns.tx_bytes(dev)
    return {"s": (t1 - t0) / args["timed_steps"], "bytes": (b1 - b0) / args["timed_steps"]}


def rank_job(spec_file: str) -> None:
    """Inside one rank: every job of the spec in turn; writes ``{key: result}`` to out-rank<r>.json."""
    import torch.distributed as dist

    spec = json.loads(Path(spec_file).read_text())
    args = spec["args"]
    torch.set_num_threads(args["threads"])
    dist.init_process_group("gloo", timeout=timedelta(seconds=args["job_timeout"]))
    rank, world = dist.get_rank(), dist.get_world_size()
    tasks: dict[str, Task] = {}
    out = {}
    for task_name, contender, lr in spec["jobs"]:
        if task_name not in tasks:
            tasks[task_name] = Task(task_name, args, rank, world)
        run = trajectory if spec["mode"] == "trajectory" else timing
        out[f"{task_name} {contender} {lr}"] = run(tasks[task_name], contender, lr, args)
        gc.collect()
    Path(spec["out"].format(rank=rank)).write_text(json.dumps(out))
    from marina.testing import close_group

    close_group()


def launch(mode: str, jobs: list, args: argparse.Namespace, tmp: Path, spaces: bool) -> list[dict]:
    """One process per rank running ``jobs``; in the namespaces when ``spaces``, else on loopback.
    A shaped stage whose ranks fail is started again on another port (twice at most)."""
    from marina.testing import free_port
    from marina.testing import rank_environ as loopback_environ

    attempts = 3 if spaces else 1  # connection set-up through a freshly shaped link is occasionally refused
    for attempt in range(attempts):
        port = free_port()
        tag = f"{mode}-{port}"
        spec = {"mode": mode, "jobs": jobs, "args": vars(args), "out": str(tmp / f"{tag}-rank{{rank}}.json")}
        spec_file = tmp / f"{tag}.json"
        spec_file.write_text(json.dumps(spec))
        commands = []
        for r in range(args.ranks):
            argv = [sys.executable, str(Path(__file__).resolve()), "--rank-job", str(spec_file)]
            if spaces:
                commands.append(
                    (netns.rank_command(r, argv), {**os.environ, **netns.rank_environ(r, args.ranks, port)})
                )
            else:
                commands.append(
                    (argv, loopback_environ(r, args.ranks, port, {**os.environ, "OMP_NUM_THREADS": "1"}))
                )
        codes = netns.wait_ranks(
            commands, [tmp / f"{tag}-rank{r}.log" for r in range(args.ranks)], args.job_timeout
        )
        if not any(codes):
            return [json.loads((tmp / f"{tag}-rank{r}.json").read_text()) for r in range(args.ranks)]
        logs = "\n".join((tmp / f"{tag}-rank{r}.log").read_text()[-3000:] for r in range(args.ranks))
        print(f"{mode} stage failed ({codes}), attempt {attempt + 1} of {attempts}:\n{logs}", file=sys.stderr)
    raise RuntimeError(f"the {mode} stage failed ({attempts} attempts)")


# -- the table and the figure --------------------------------------------------------------------
def fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if abs(value) >= 10 ** (digits + 2):
        return f"{value:.3g}"
    return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"


def format_table(rows: list[dict], rates: list[str]) -> str:
    """A markdown table: one row per (task, contender, lr); per rate s/step and s to target.

    ``rows``: dicts with task, contender, lr, steps (None: not reached), best (bool), bytes
    (per step, or None) and ``s/step <rate>`` for each rate (or None)."""
    head = ["task", "contender", "lr", "steps to target", "bytes/step"]
    for rate in rates:
        head += [f"s/step {rate}", f"s to target {rate}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        steps = row["steps"]
        cells = [
            row["task"],
            row["contender"],
            f"{row['lr']:g}" + (" *" if row.get("best") else ""),
            "never" if steps is None else str(steps),
            fmt(row.get("bytes")),
        ]
        for rate in rates:
            s = row.get(f"s/step {rate}")
            cells += [fmt(s), "-" if s is None or steps is None else fmt(steps * s)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def winners(rows: list[dict], rates: list[str]) -> list[str]:
    """Per task and rate, the contender with the least seconds to target."""
    out = []
    for task in sorted({r["task"] for r in rows}):
        for rate in rates:
            done = [
                (r["steps"] * r[f"s/step {rate}"], r["contender"], r["lr"])
                for r in rows
                if r["task"] == task and r["steps"] is not None and r.get(f"s/step {rate}") is not None
            ]
            if done:
                s, who, lr = min(done)
                out.append(f"{task} at {rate}: {who} (lr {lr:g}) reaches the target first, {s:.3g} s")
            else:
                out.append(f"{task} at {rate}: no contender reached the target")
    return out


def compressor_lines(tasks: list[str], names: list[str], args: dict) -> list[str]:
    """Per task and marina contender: its compressor's omega (or alpha) and expected bits per
    entry over the whole model taken as one vector (a hook compresses each bucket, so close)."""
    from marina.torch.optim import compressor_for

    out = []
    for task in tasks:
        d = sum(p.numel() for p in build_model(task, args, 0).parameters())
        for c in names:
            spec = compressor_of(c, args)
            if spec is None:
                continue
            Q = compressor_for(spec, d, args["ranks"], contractive=True)
            theory = f"omega {Q.omega(d):.3g}" if Q.unbiased else f"alpha {Q.alpha(d):.3g}"
            out.append(
                f"{task} {c}: {Q.spec} on d = {d}: {theory}, {Q.expected_bits(d) / d:.3g} bits per entry "
                f"(float32: 32), {Q.expected_bits(d) / 8:.3g} bytes per message"
            )
    return out


def best_seconds(
    rows: list[dict], task: str, rate: str, pick: Callable[[str], bool]
) -> tuple[float, str] | None:
    """The least seconds to target (and who) among ``task``'s rows whose contender ``pick`` accepts."""
    done = [
        (r["steps"] * r[f"s/step {rate}"], f"{r['contender']} (lr {r['lr']:g})")
        for r in rows
        if r["task"] == task
        and pick(r["contender"])
        and r["steps"] is not None
        and r.get(f"s/step {rate}") is not None
    ]
    return min(done) if done else None


def outcome(mine: float | None, theirs: float | None, strictly: bool) -> str:
    """ "met" when ``mine`` is below ``theirs`` (or equal, unless ``strictly``); None = never reached."""
    if mine is None or theirs is None:
        return "undecided" if mine is None and theirs is None else "met" if theirs is None else "NOT met"
    return "met" if mine < theirs or (mine == theirs and not strictly) else "NOT met"


def verdicts(rows: list[dict], rates: list[str]) -> list[str]:
    """The issue's targets per task: marina's best sooner than the best PowerSGD at 10 and 100
    Mbit/s and no later than DDP at 1 Gbit/s; EF21-SGDM (either form, any lr) in no more steps than
    DDP with the task's momentum optimizer (its best lr)."""
    out = []
    for task in sorted({r["task"] for r in rows}):
        for rate, peer, pick, sooner in (
            ("10mbit", "PowerSGD", lambda c: c.startswith("powersgd-r"), True),
            ("100mbit", "PowerSGD", lambda c: c.startswith("powersgd-r"), True),
            ("1gbit", "DDP", lambda c: c == "ddp", False),
        ):
            if rate not in rates:
                continue
            mine, theirs = best_seconds(rows, task, rate, is_marina), best_seconds(rows, task, rate, pick)
            verdict = outcome(mine and mine[0], theirs and theirs[0], sooner)
            if mine is None or theirs is None:
                who = "no marina contender" if mine is None else f"no {peer} contender"
                out.append(f"target {task} {rate}: {who} reached the target: {verdict}")
                continue
            out.append(
                f"target {task} {rate}: marina's best {mine[1]} {mine[0]:.3g} s vs best {peer} {theirs[1]} "
                f"{theirs[0]:.3g} s: {verdict}"
            )
        sgdm = [
            r["steps"] for r in rows if r["task"] == task and "ef21-sgdm" in r["contender"] and r["steps"]
        ]
        ddp = [r["steps"] for r in rows if r["task"] == task and r["contender"] == "ddp" and r["steps"]]
        mine, theirs = min(sgdm, default=None), min(ddp, default=None)
        verdict = outcome(mine, theirs, strictly=False)
        out.append(f"target {task} steps: EF21-SGDM {mine or 'never'} vs DDP {theirs or 'never'}: {verdict}")
    return out


def draw(path: str, curves: dict, per_step: dict, rates: list[str], args: argparse.Namespace) -> None:
    """Quality against wall-clock (steps x s/step) per task and link, best lr of each contender."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    tasks = sorted({t for t, _ in curves})
    cols = rates or ["loopback steps"]
    names = sorted({c for _, c in curves})
    ncol = 4
    legend_in = 0.16 * -(-len(names) // ncol) + 0.2  # inches below the panels for the legend
    fig = Figure(figsize=(4.2 * len(cols), 3.4 * len(tasks) + legend_in))
    axes = fig.subplots(len(tasks), len(cols), squeeze=False)
    for i, task in enumerate(tasks):
        for j, rate in enumerate(cols):
            ax = axes[i][j]
            for (t, contender), curve in sorted(curves.items()):
                if t != task:
                    continue
                s = per_step.get((task, contender, rate)) if rates else 1.0
                if s is None:
                    continue
                style = ("-", "--", ":")[names.index(contender) // 10 % 3]  # 10 colours, then dashes
                ax.plot([k * s for k, _ in curve], [q for _, q in curve], style, label=contender, marker=".")
            ax.axhline(getattr(args, f"{task}_target"), color="gray", linestyle=":")
            ax.set_title(f"{task}, {rate}")
            ax.set_xlabel("seconds" if rates else "steps")
            ax.set_ylabel("validation loss (nats/byte)" if task == "lm" else "test accuracy")
    labels: dict[str, object] = {}  # every contender drawn anywhere, once, below the panels
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            labels.setdefault(label, handle)
    bottom = legend_in / fig.get_figheight()
    fig.legend(list(labels.values()), list(labels), loc="lower center", ncol=ncol, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, bottom, 1, 1))
    fig.savefig(path, dpi=80)


# -- main ----------------------------------------------------------------------------------------
def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, end to end in a few minutes")
    ap.add_argument("--loopback-only", action="store_true", help="steps to target only (no root needed)")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--rates", nargs="+", default=list(RATES))
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    ap.add_argument("--contenders", nargs="+", default=None, help="a subset of the contenders")
    ap.add_argument("--powersgd-ranks", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--qgd-compressor", default="randk:10%")
    ap.add_argument("--ef21-compressor", default="topk:1%")
    ap.add_argument("--vr-compressor", default="randk:10%")
    ap.add_argument(
        "--unbiased",
        nargs="*",
        default=["natural", "natural-dithering:16", "qsgd:256", "randk:10%+natural"],
        metavar="SPEC",
        help="unbiased compressors tried as hook-qgd@SPEC and vr-marina@SPEC (none: pass the flag alone)",
    )
    ap.add_argument(
        "--topk",
        nargs="*",
        default=["topk:10%"],
        metavar="SPEC",
        help="contractive compressors tried as hook-ef21@SPEC and hook-ef21-sgdm@SPEC",
    )
    ap.add_argument(
        "--time-all", action="store_true", help="also time the contenders that never reached the target"
    )
    ap.add_argument("--sgdm-momentum", type=float, default=0.1, help="EF21-SGDM's eta (hook and optimizer)")
    ap.add_argument(
        "--lr-grid",
        nargs="+",
        default=[],
        metavar="TASK:FAMILY=LR,LR",
        help="override an lr grid, e.g. lm:ddp=1e-3,3e-3 (families: ddp, marina)",
    )
    for key, value in FULL.items():
        ap.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    ap.add_argument("--job-timeout", type=float, default=1800)
    ap.add_argument("--out", default="train_links.png", help="the figure's path")
    ap.add_argument("--json", default=None, help="also write the rows and curves to this file")
    args = ap.parse_args(argv)
    for key, value in (SMOKE if args.smoke else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    grids = {f"{t}:{f}": list(v) for (t, f), v in LR_GRID.items()}
    if args.smoke:
        grids = {k: v[-1:] for k, v in grids.items()}  # the largest: few steps
    for item in args.lr_grid:
        key, _, values = item.partition("=")
        if key not in grids or not values:
            ap.error(
                f"--lr-grid {item!r}: must be TASK:FAMILY=LR[,LR...] with TASK:FAMILY in {sorted(grids)}"
            )
        grids[key] = [float(v) for v in values.split(",")]
    args.grids = grids
    named = [*(args.contenders or []), *[f"vr-marina@{q}" for q in args.unbiased]]
    for name in named + [f"hook-ef21-sgdm@{c}" for c in args.topk]:
        why = check_contender(name)
        if why:
            ap.error(f"--contenders {why}")
    if args.ranks < 2:
        ap.error(f"--ranks {args.ranks}: must be >= 2")
    if args.loopback_only:
        args.rates = []
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse(argv)
    if not args.loopback_only:
        netns.require_root(
            "benchmarks/train_links.py", " (or pass --loopback-only for the step counts alone)"
        )
    previous = netns.exit_on_signals()
    names, notes = contenders(vars(args))
    jobs = [[task, c, lr] for task in args.tasks for c in names for lr in args.grids[f"{task}:{family(c)}"]]
    tmp = Path(tempfile.mkdtemp(prefix="marina-train-links-"))
    per_step: dict[tuple[str, str, str], float] = {}
    sent: dict[tuple[str, str], float] = {}
    loads: list[float] = []  # 1-minute load averages at the start of each stage
    try:
        t0 = time.perf_counter()
        loads.append(os.getloadavg()[0])
        traj = launch("trajectory", jobs, args, tmp, spaces=False)[0]
        loads.append(os.getloadavg()[0])
        print(f"steps to target on loopback: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        for key, res in traj.items():
            print(
                f"  {key}: steps {res['steps']}, {res['seconds']:.1f} s, curve {res['curve']}",
                file=sys.stderr,
            )
        best: dict[tuple[str, str], float] = {}
        for task, c, lr in jobs:
            s = traj[f"{task} {c} {lr}"]["steps"]
            key = (task, c)
            old = best.get(key)
            old_s = traj[f"{task} {c} {old}"]["steps"] if old is not None else None
            if old is None or (s is not None and (old_s is None or s < old_s)):
                best[key] = lr
        if args.rates:
            timed = [
                [t, c, lr] for (t, c), lr in best.items() if args.time_all or traj[f"{t} {c} {lr}"]["steps"]
            ]
            stages: dict[tuple[str, str, str], list[dict]] = {}
            with netns.Namespaces(args.ranks) as spaces:
                for rep in range(args.repeats):
                    for i in range(len(args.rates)):
                        rate = args.rates[(rep + i) % len(args.rates)]
                        order = timed[rep % len(timed) :] + timed[: rep % len(timed)]
                        spaces.shape(rate)
                        loads.append(os.getloadavg()[0])
                        t0 = time.perf_counter()
                        results = launch("timing", order, args, tmp, spaces=True)
                        print(
                            f"timing at {rate}, repeat {rep + 1}: {time.perf_counter() - t0:.0f} s",
                            file=sys.stderr,
                        )
                        for t, c, lr in order:
                            per_rank = [res[f"{t} {c} {lr}"] for res in results]
                            stages.setdefault((t, c, rate), []).append(
                                {
                                    "s": per_rank[0]["s"],
                                    "bytes": statistics.mean(r["bytes"] for r in per_rank),
                                }
                            )
            for (t, c, rate), measured in stages.items():
                per_step[(t, c, rate)] = statistics.median(m["s"] for m in measured)
            for t, c, _ in timed:  # the bytes of a step do not depend on the rate: every stage counts
                sent[(t, c)] = statistics.median(
                    m["bytes"] for (t2, c2, _), ms in stages.items() if (t2, c2) == (t, c) for m in ms
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        netns.restore_signals(previous)
    rows = []
    for task, c, lr in jobs:
        row = {
            "task": task,
            "contender": c,
            "lr": lr,
            "steps": traj[f"{task} {c} {lr}"]["steps"],
            "best": best[(task, c)] == lr,
            "bytes": sent.get((task, c)),
        }
        for rate in args.rates:
            row[f"s/step {rate}"] = per_step.get((task, c, rate))
        rows.append(row)
    loads.append(os.getloadavg()[0])
    print(f"{args.ranks} ranks, {os.cpu_count()} CPU cores, {args.threads} torch thread(s) per rank")
    print(
        f"1-minute load average at the {len(loads)} stage starts: min {min(loads):.2f}, "
        f"median {statistics.median(loads):.2f}, max {max(loads):.2f}"
    )
    print(f"targets: lm validation loss <= {args.lm_target}, resnet test accuracy >= {args.resnet_target}")
    print(format_table(rows, args.rates))
    print("* = the lr timed on the links (fewest steps); s/step and bytes/step are measured at it")
    for task in args.tasks:
        for c in names:
            print(f"{task} {c}: {how_run(c, task, vars(args))}")
    for line in compressor_lines(args.tasks, names, vars(args)):
        print(line)
    for line in notes + winners(rows, args.rates) + verdicts(rows, args.rates):
        print(line)
    curves = {(t, c): traj[f"{t} {c} {lr}"]["curve"] for (t, c), lr in best.items()}
    draw(args.out, curves, per_step, args.rates, args)
    print(f"figure: {args.out}")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"rows": rows, "curves": {f"{t} {c}": v for (t, c), v in curves.items()}})
        )
    return rows


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--rank-job":
        rank_job(sys.argv[2])
    else:
        main()
