"""``marina compress SPEC --dim D --workers N --seed S``: one compressor round trip through the wire.

Draws one random vector per worker (keyed randomness, stream ``"cli-input"``), compresses it as
the workers of round ``--round`` (stream ``"compress"``), packs the messages into bytes, unpacks
and decompresses them, and prints for each worker the exact bits and bytes sent and the relative
error ||Q(x) - x||^2 / ||x||^2 next to the compressor's theory (omega, density, wire encoding).
``marina compress --list`` (or no SPEC) lists the known compressors.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from typing import TYPE_CHECKING

from marina.cli import COMMANDS, choices, load_module
from marina.cli.syntax import cli_syntax
from marina.errors import ConfigError

if TYPE_CHECKING:
    import torch

INPUTS = ("gaussian", "uniform", "sparse", "constant")
DTYPES = choices.WIRE_DTYPES
EXAMPLE = {"K": "5", "q": "0.1", "s": "4"}
WIRE_HINTS = {f"value_dtype=torch.{name}": f"--wire {name}" for name in DTYPES}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compress",
        help=COMMANDS["compress"],
        description="Round trip of one compressor through the wire format (compress, pack to bytes, "
        "unpack, decompress) on random vectors, one per worker: exact bits per worker, relative "
        "error ||Q(x)-x||^2/||x||^2 against omega, density and the wire encoding. Without SPEC, "
        "list the known compressors.",
    )
    p.add_argument(
        "spec",
        nargs="?",
        default=None,
        help="compressor spec, e.g. randk:5, qsgd:4, natural, permk, terngrad, sign, randk:5+natural",
    )
    p.add_argument("--dim", "-d", type=int, default=1000, help="dimension d (default 1000)")
    p.add_argument("--workers", "-n", type=int, default=4, help="number of workers n (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the keyed randomness (default 0)")
    p.add_argument("--round", type=int, default=0, help="round k keying the compressor's draws (default 0)")
    p.add_argument(
        "--input", default="gaussian", choices=INPUTS, help="vectors to compress (default gaussian)"
    )
    p.add_argument("--dtype", default="float64", choices=["float32", "float64"], help="input dtype")
    p.add_argument("--wire", default="float32", choices=list(DTYPES), help="wire precision of values")
    p.add_argument("--list", action="store_true", help="list the known compressors and exit")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=main)


def list_compressors(as_json: bool = False) -> None:
    """Print the known compressors with their theory and wire encoding."""
    compressors_module = load_module("compressors")
    get, known = compressors_module.get, compressors_module.known

    rows = []
    for template in known():
        c = get(re.sub(r":([Kqs])\b", lambda m: ":" + EXAMPLE[m.group(1)], template))
        rows.append(
            (
                template,
                "yes" if c.unbiased else "no",
                c.omega_formula,
                c.density_formula,
                c.wire_formula,
                "correlated across workers" if c.correlated else "",
            )
        )
    if as_json:
        keys = ("spec", "unbiased", "omega", "density", "wire", "note")
        print(json.dumps([dict(zip(keys, (r[0], r[1] == "yes", *r[2:]))) for r in rows]))
        return
    head = ("spec", "unbiased", "omega(d)", "density(d)")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)) + "  wire (w = bits per value)")
    for r in rows:
        extra = f" [{r[5]}]" if r[5] else ""
        print("  ".join(v.ljust(w) for v, w in zip(r[:4], widths)) + f"  {r[4]}{extra}")
    print("\nexample: marina compress randk:5 --dim 1000 --workers 4 --seed 0")


def make_input(kind: str, n: int, d: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    """(n, d) vectors drawn from the keyed randomness (row i belongs to worker i)."""
    import torch

    Randomness = load_module("rng").Randomness

    rng = Randomness(seed, "cli-input", 0, range(n))
    u1, u2 = rng.uniform(d), rng.uniform(d)
    if kind == "gaussian":
        X = torch.sqrt(-2 * torch.log1p(-u1)) * torch.cos(2 * math.pi * u2)
    elif kind == "uniform":
        X = 2 * u1 - 1
    elif kind == "sparse":
        X = torch.where(u2 < 0.1, 2 * u1 - 1, torch.zeros_like(u1))
    else:
        X = torch.ones((n, d), dtype=torch.float64)
    return X.to(dtype)


def main(args: argparse.Namespace) -> int:
    try:
        return _main(args)
    except ConfigError as exc:  # hints written for Python (value_dtype=...) in this command's syntax
        raise ConfigError(cli_syntax(str(exc), WIRE_HINTS)) from None


def _main(args: argparse.Namespace) -> int:
    import torch

    memory = load_module("memory")
    compressors_module = load_module("compressors")
    WIRE_DTYPES, get = compressors_module.WIRE_DTYPES, compressors_module.get
    Randomness = load_module("rng").Randomness

    if args.list or args.spec is None:
        list_compressors(args.json)
        return 0
    n, d = args.workers, args.dim
    if n < 1:
        raise ConfigError(f"--workers == {n}, must be >= 1")
    if d < 1:
        raise ConfigError(f"--dim == {d}, must be >= 1")
    # inputs, messages, unpacked and decompressed copies, errors: a few (n, d) arrays
    memory.check({"(n, d) arrays": memory.state_bytes(n, d)}, f"compress with --dim {d} --workers {n}")
    c = get(args.spec, value_dtype={name: dt for dt, name in WIRE_DTYPES.items()}[args.wire], workers=n)
    X = make_input(args.input, n, d, args.seed, getattr(torch, args.dtype))
    ids = range(n)
    msg = c.compress(X, Randomness(args.seed, "compress", args.round, ids))
    payloads = c.pack(msg)
    back = c.unpack(
        payloads,
        d,
        worker_ids=msg.worker_ids,
        dtype=X.dtype,
        rng=Randomness(args.seed, "compress", args.round, ids),
    )
    X_hat = c.decompress(back)
    sq = (X.double() ** 2).sum(1)
    err = ((X_hat.double() - X.double()) ** 2).sum(1)
    rel = torch.where(sq > 0, err / torch.where(sq > 0, sq, 1.0), torch.zeros_like(sq))
    nnz = (X_hat != 0).sum(1)
    if args.json:
        per_worker = [
            {
                "worker": i,
                "bits": int(msg.bits[i]),
                "bytes": int(payloads[i].numel()),
                "nnz": int(nnz[i]),
                "relative_error": float(rel[i]),
            }
            for i in range(n)
        ]
        obj = {"spec": c.spec, "dim": d, "workers": n, "seed": args.seed, "round": args.round}
        obj.update(input=args.input, dtype=args.dtype, wire=args.wire, unbiased=bool(c.unbiased))
        obj.update(omega=c.omega(d) if c.unbiased else None, alpha=None if c.unbiased else c.alpha(d))
        obj.update(density=float(c.density(d)), wire_format=c.wire_format(d), per_worker=per_worker)
        obj.update(mean_relative_error=float(rel.mean()), total_bits=int(msg.bits.sum()))
        print(json.dumps(obj))
        return 0

    where = f"seed={args.seed}  round={args.round}  input={args.input} ({args.dtype})"
    print(f"{c.spec}  d={d}  workers={n}  {where}")
    if c.unbiased:
        omega = c.omega(d)
        theory = f"unbiased, omega(d) = {c.omega_formula} = {omega:.6g}"
    else:
        omega = None
        theory = (
            f"biased (contractive), alpha(d) = {c.alpha_formula} = {c.alpha(d):.6g}: "
            "||C(x)-x||^2 <= (1-alpha) ||x||^2"
        )
    print(f"theory: {theory}; density(d) = {c.density_formula} = {c.density(d):.6g} expected non-zeros")
    if c.correlated:
        print("        correlated across workers: one shared random permutation, disjoint blocks")
    print(f"wire:   {c.wire_format(d)} per worker (values as {args.wire})")
    print(
        f"{'worker':>6} {'bits':>10} {'bytes':>9} {'bits/coord':>10} {'nnz':>9} {'||Q(x)-x||^2/||x||^2':>22}"
    )
    for i in range(n):
        b = int(msg.bits[i])
        print(
            f"{i:>6} {b:>10} {payloads[i].numel():>9} {b / d:>10.4g} {int(nnz[i]):>9} {float(rel[i]):>22.6g}"
        )
    mean = float(rel.mean())
    if omega is not None:
        print(f"mean relative error {mean:.6g} vs omega {omega:.6g} (E||Q(x)-x||^2 <= omega ||x||^2)")
    else:
        print(f"mean relative error {mean:.6g} vs 1 - alpha = {1 - c.alpha(d):.6g}")
    total = int(msg.bits.sum())
    print(f"total {total} bits ({total / n:.6g} per worker, {32 * d} for d float32 values)")
    return 0
