"""Your own model, DataLoader, lr schedule and checkpoints, trained with marina.torch.VRMARINA.

Online VR-MARINA (Algorithm 3 of Gorbunov et al. 2021): on rounds whose coin c_k is 1 the loop
feeds a large batch (b samples), otherwise a small one (b'), on which the optimizer evaluates the
closure at x^{k+1} and at x^k. Each torchrun rank is one worker with its own DistributedSampler
shard; without torchrun the script is one worker.

    torchrun --nproc-per-node 2 examples/train_torch.py --steps 300 --ckpt /tmp/vrm.pt
    torchrun --nproc-per-node 2 examples/train_torch.py --steps 300 --ckpt /tmp/vrm.pt --resume
    python examples/train_torch.py --steps 100        # one worker, no torchrun

Data: Fashion-MNIST from --data-dir, else the system copy, else the subset bundled with marina.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import marina.torch as mt
from marina.nets.datasets import load_fashion_mnist


class Net(nn.Module):
    """A user's model: two convolutions, batch norm and dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.drop = nn.Dropout(0.1)
        self.fc = nn.Linear(32 * 7 * 7, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(self.drop(x.flatten(1)))


def batches(loader: DataLoader, sampler: DistributedSampler | None):
    """Endless iterator over a loader, one epoch after another (sampler epochs set)."""
    epoch = 0
    while True:
        if sampler is not None:
            sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16, help="b', the small batch")
    ap.add_argument("--large-batch", type=int, default=256, help="b, the batch of c_k = 1 rounds")
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--compressor", default="randk:10%")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--ckpt", default=None, help="checkpoint file (written every --ckpt-every steps)")
    ap.add_argument("--ckpt-every", type=int, default=50)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.set_num_threads(1)
    distributed = "RANK" in os.environ
    if distributed:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if distributed else 0

    data = load_fashion_mnist(args.data_dir)
    norm = data.normalizer()
    train = TensorDataset(norm(data.train_images), data.train_labels)
    test_x, test_y = norm(data.test_images), data.test_labels
    sampler = DistributedSampler(train, seed=args.seed) if distributed else None
    small = DataLoader(train, args.batch, sampler=sampler, shuffle=sampler is None, drop_last=True)
    large = DataLoader(train, args.large_batch, sampler=sampler, shuffle=sampler is None, drop_last=True)

    torch.manual_seed(args.seed)
    model = Net()
    opt = mt.VRMARINA(
        model.parameters(),
        compressor=args.compressor,
        lr=args.lr,
        seed=args.seed,
        batch_size=args.batch,
        dense_batch_size=args.large_batch,
        module=model,  # batch-norm statistics advance once per step
    )
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.steps)
    start = 0
    if args.resume and args.ckpt and os.path.exists(args.ckpt):
        ckpt = torch.load(args.ckpt, weights_only=False)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["rng"][rank])
        start = ckpt["step"]
        if rank == 0:
            print(f"resumed at step {start}")

    small_it, large_it = batches(small, sampler), batches(large, sampler)
    model.train()
    t0 = time.perf_counter()
    for step in range(start, args.steps):
        x, y = next(large_it) if opt.coin else next(small_it)

        def closure(x=x, y=y):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        loss = opt.step(closure)
        sched.step()
        if rank == 0 and (step % 50 == 0 or step == args.steps - 1):
            print(
                f"step {step:4d}  loss {float(loss):.4f}  lr {sched.get_last_lr()[0]:.4f}  "
                f"bits_up/n {opt.bits_up / 8e6:.3f} MB  wire {opt.wire_bytes / 1e6:.2f} MB  "
                f"{time.perf_counter() - t0:.1f} s",
                flush=True,
            )
        if args.ckpt and ((step + 1) % args.ckpt_every == 0 or step + 1 == args.steps):
            rng = torch.get_rng_state()
            rngs = [torch.empty_like(rng) for _ in range(dist.get_world_size())] if distributed else [rng]
            if distributed:
                dist.all_gather(rngs, rng)
            state = {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "rng": rngs,
                "step": step + 1,
            }
            if rank == 0:
                torch.save(state, args.ckpt)

    model.eval()
    with torch.no_grad():
        acc = float((model(test_x).argmax(1) == test_y).float().mean())
    if rank == 0:
        print(f"test accuracy {acc:.3f}  rounds {opt.rounds}  bits_up/n {opt.bits_up:.0f}")
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
