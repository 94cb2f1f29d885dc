"""Figure 2 of Gorbunov et al. (ICML 2021): VR-MARINA against VR-DIANA, ResNet-18 on CIFAR-100, RandK.

The paper's neural-network setting (Sec. 5): n = 5 workers, the CIFAR-100 training set split among
them (m samples each), ResNet-18, RandK compression, minibatches of b' about m/50, both methods at
the same stepsize; the figure plots the training loss and the test accuracy against the bits each
worker sent (#bits/n). Both methods run through ``marina.run`` on
:func:`marina.nets.cifar100` (keyed initialisation, batch norm with per-batch statistics; see
:mod:`marina.problems.torch_model`).

    python examples/figure2.py --data-dir DIR [--iterations 2000] [--k 100000] [--stepsize 0.1]

``DIR`` holds the official "python version" archive ``cifar-100-python.tar.gz`` (or its unpacked
folder); nothing is downloaded, and without it the script exits with status 2 saying where to
get it. Writes ``--out`` (a CSV of both histories) and, with matplotlib, ``--plot`` (a PNG).
A full-size run is GPU work (``--device cuda``); ``--train-samples`` runs a small version.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

import marina
from marina.errors import ConfigError

METHODS = ("vr-marina", "vr-diana")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=False, help="directory with cifar-100-python.tar.gz")
    ap.add_argument("--workers", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=2000)
    ap.add_argument("--k", type=int, default=100_000, help="RandK's K (default 100000, about 1%% of d)")
    ap.add_argument("--stepsize", type=float, default=0.1)
    ap.add_argument("--batch-size", type=int, default=None, help="b' (default round(m / 50))")
    ap.add_argument("--train-samples", type=int, default=None, help="use only the first N training images")
    ap.add_argument("--norm", default="batch", choices=("batch", "group", "none"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--out", default="figure2.csv")
    ap.add_argument("--plot", default="figure2.png")
    args = ap.parse_args(argv)
    try:
        prob = marina.nets.cifar100(
            args.workers,
            data_dir=args.data_dir,
            norm=args.norm,
            train_samples=args.train_samples,
            device=args.device,
        )
        bp = args.batch_size or max(1, round(prob.m / 50))
        rows = []
        for method in METHODS:
            res = marina.run(
                method=method,
                problem=prob,
                compressor=f"randk:{min(args.k, prob.dim)}",
                iterations=args.iterations,
                seed=args.seed,
                stepsize=args.stepsize,
                batch_size=bp,
                log_every=args.log_every,
            )
            history = res.history.assign(method=method, batch_size=bp, m=prob.m)
            rows.append(history)
            last = history.iloc[-1]
            loss, acc = last.get("train_loss", float("nan")), last.get("test_acc", float("nan"))
            print(
                f"{method}: {res.status}, {int(last['iteration'])} rounds, bits/n {last['bits_up']:.4g}, "
                f"train_loss {loss:.4f}, test_acc {acc:.4f}"
            )
    except ConfigError as err:
        print(f"figure2: {err}", file=sys.stderr)
        return 2
    table = pd.concat(rows, ignore_index=True)
    table.to_csv(args.out, index=False)
    print(f"histories -> {args.out} (d = {prob.dim}, m = {prob.m}, b' = {bp})")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return 0
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for method, part in table.groupby("method", sort=False):
        for ax, column in zip(axes, ("train_loss", "test_acc")):
            if column in part:
                ax.plot(part["bits_up"], part[column], label=method)
                ax.set_xlabel("#bits / n")
                ax.set_ylabel(column)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(Path(args.plot))
    print(f"plot -> {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
