"""benchmarks/train_links.py without root: the loopback step counting on 2 gloo ranks against the
same training done here by hand, the table, and the refusal to run the shaped links without root."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import train_links  # noqa: E402

LR_DDP, LR_EF21, TARGET = 0.01, 1.0, 5.3
TINY = [
    "--smoke",
    "--loopback-only",
    "--tasks",
    "lm",
    "--contenders",
    "ddp",
    "ef21-sgd",
    "hook-qgd@identity",
    "ddp-sgd",
    "--ef21-compressor",
    "identity",
    "--lr-grid",
    f"lm:ddp={LR_DDP}",
    f"lm:marina={LR_EF21}",
    "--lm-target",
    str(TARGET),
    "--corpus-mb",
    "0.02",
    "--lm-width",
    "16",
    "--max-steps",
    "6",
    "--eval-every",
    "2",
    "--batch",
    "4",
]


def by_hand(args, optimizer: str) -> list[tuple[int, float]]:
    """Both ranks' steps in this process: each step the mean of the two ranks' batch gradients
    (what DDP's all-reduce and EF21 with the identity compressor deliver), then AdamW or x -= lr g."""
    tasks = [train_links.Task("lm", vars(args), r, 2) for r in range(2)]
    gens = [torch.Generator().manual_seed(1000 * args.seed + r) for r in range(2)]
    model = tasks[0].model(args.seed)
    params = list(model.parameters())
    adamw = torch.optim.AdamW(params, lr=LR_DDP) if optimizer == "adamw" else None
    curve = []
    for step in range(args.max_steps + 1):
        if step % args.eval_every == 0:
            curve.append((step, tasks[0].quality(model)))
        if step == args.max_steps:
            break
        grads = []
        for task, gen in zip(tasks, gens):
            model.zero_grad()
            task.loss(model, *task.batch(gen, args.batch)).backward()
            grads.append([p.grad.clone() for p in params])
        with torch.no_grad():
            for i, p in enumerate(params):
                p.grad = (grads[0][i] + grads[1][i]) / 2
                if adamw is None:
                    p -= LR_EF21 * p.grad
        if adamw is not None:
            adamw.step()
    return curve


def test_loopback_steps_to_target_match_training_by_hand(tmp_path, capsys):
    out = tmp_path / "curves.json"
    rows = train_links.main([*TINY, "--out", str(tmp_path / "fig.png"), "--json", str(out)])
    printed = capsys.readouterr().out
    curves = json.loads(out.read_text())["curves"]
    args = train_links.parse(TINY)
    cases = (("ddp", "adamw"), ("ef21-sgd", "sgd"), ("hook-qgd@identity", "adamw"), ("ddp-sgd", "sgd"))
    for contender, optimizer in cases:
        expected = by_hand(args, optimizer)
        got = curves[f"lm {contender}"]
        print(contender, got, expected)
        assert [s for s, _ in got] == [s for s, _ in expected[: len(got)]]
        assert [q for _, q in got] == pytest.approx([q for _, q in expected[: len(got)]], rel=1e-4)
        hit = next((s for s, q in expected if q <= TARGET), None)
        (row,) = [r for r in rows if r["contender"] == contender]
        assert row["steps"] == hit
        assert f"| lm | {contender} |" in printed
    assert (tmp_path / "fig.png").stat().st_size > 0


def test_table_by_hand():
    rows = [
        {"task": "lm", "contender": "ddp", "lr": 0.003, "steps": 40, "best": True, "bytes": 1.5e6,
         "s/step 1gbit": 0.25, "s/step 10mbit": 2.0},
        {"task": "lm", "contender": "ef21-sgd", "lr": 1.0, "steps": None, "best": False, "bytes": None,
         "s/step 1gbit": 0.5, "s/step 10mbit": None},
    ]  # fmt: skip
    table = train_links.format_table(rows, ["1gbit", "10mbit"]).splitlines()
    assert table[0] == (
        "| task | contender | lr | steps to target | bytes/step | s/step 1gbit | s to target 1gbit "
        "| s/step 10mbit | s to target 10mbit |"
    )
    assert table[2] == "| lm | ddp | 0.003 * | 40 | 1.5e+06 | 0.25 | 10 | 2 | 80 |"  # 40 x 0.25, 40 x 2
    assert table[3] == "| lm | ef21-sgd | 1 | never | - | 0.5 | - | - | - |"
    assert train_links.winners(rows, ["1gbit", "10mbit"]) == [
        "lm at 1gbit: ddp (lr 0.003) reaches the target first, 10 s",
        "lm at 10mbit: ddp (lr 0.003) reaches the target first, 80 s",
    ]


def test_contender_names_and_their_compressors():
    args = vars(train_links.parse(["--smoke", "--loopback-only"]))
    for name in (
        "ddp",
        "powersgd-r3",
        "hook-qgd@natural",
        "vr-marina@randk:10%+natural",
        "hook-ef21@topk:10%",
    ):
        assert train_links.check_contender(name) is None, name
    assert "before '@'" in train_links.check_contender("sgd")
    assert "before '@'" in train_links.check_contender("powersgd-r")
    assert "takes no compressor" in train_links.check_contender("ddp@natural")
    assert "biased" in train_links.check_contender("vr-marina@topk:1%")  # VR-MARINA needs an unbiased Q
    assert train_links.compressor_of("vr-marina@natural", args) == "natural"
    assert train_links.compressor_of("vr-marina", args) == args["vr_compressor"]
    assert train_links.compressor_of("hook-ef21-sgdm@topk:10%", args) == "topk:10%"
    assert train_links.compressor_of("powersgd-r2", args) is None
    assert [train_links.family(c) for c in ("hook-qgd@natural", "ddp-sgd", "vr-marina@natural")] == [
        "ddp",
        "marina",
        "marina",
    ]
    names, _ = train_links.contenders(args)
    for q in args["unbiased"]:
        assert f"hook-qgd@{q}" in names and f"vr-marina@{q}" in names
    with pytest.raises(SystemExit) as stop:
        train_links.parse(["--smoke", "--contenders", "ddp@natural"])
    assert stop.value.code == 2


def test_vr_marina_p_is_the_bits_ratio():
    model = torch.nn.Linear(99, 10)  # d = 1000
    assert train_links.vr_p("natural", model) == 9 / 32  # sign + 8 exponent bits of 32
    assert train_links.vr_p("randk:10", model) == 10 * (32 + 10) / (32 * 1000)  # value + ceil(log2 d) bits
    assert train_links.vr_p("identity", model) == 0.5  # b'/(b + b') with b = b'


def test_targets_by_hand():
    def row(contender, steps, s1g, s100m, s10m):
        return {"task": "lm", "contender": contender, "lr": 0.1, "steps": steps,
                "s/step 1gbit": s1g, "s/step 100mbit": s100m, "s/step 10mbit": s10m}  # fmt: skip

    rows = [
        row("ddp", 100, 0.1, 0.5, 4.0),  # 10, 50, 400 s
        row("powersgd-r4", 120, 0.2, 0.3, 0.5),  # 24, 36, 60 s
        row("hook-qgd@natural", 100, 0.1, 0.2, 1.0),  # 10, 20, 100 s
        row("ef21-sgdm", 150, 0.3, 0.3, 0.3),  # 45, 45, 45 s
        row("vr-marina", None, 0.1, 0.1, 0.1),  # never
    ]
    assert train_links.verdicts(rows, list(train_links.RATES)) == [
        "target lm 10mbit: marina's best ef21-sgdm (lr 0.1) 45 s vs best PowerSGD powersgd-r4 (lr 0.1) "
        "60 s: met",
        "target lm 100mbit: marina's best hook-qgd@natural (lr 0.1) 20 s vs best PowerSGD powersgd-r4 "
        "(lr 0.1) 36 s: met",
        "target lm 1gbit: marina's best hook-qgd@natural (lr 0.1) 10 s vs best DDP ddp (lr 0.1) 10 s: met",
        "target lm steps: EF21-SGDM 150 vs DDP 100: NOT met",
    ]
    rows = [
        row("ddp", 100, 0.1, 0.5, 4.0),
        row("powersgd-r2", None, 0.1, 0.1, 0.1),
        row("ef21-sgdm", None, 1, 1, 1),
    ]
    assert train_links.verdicts(rows, ["10mbit", "1gbit"]) == [
        "target lm 10mbit: no marina contender reached the target: undecided",  # nor did PowerSGD
        "target lm 1gbit: no marina contender reached the target: NOT met",
        "target lm steps: EF21-SGDM never vs DDP 100: NOT met",
    ]
    assert train_links.outcome(5.0, None, strictly=True) == "met"  # the peer never reached it
    assert [train_links.outcome(5.0, 5.0, strictly=s) for s in (True, False)] == ["NOT met", "met"]


def test_refuses_without_root(monkeypatch, capsys):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(SystemExit) as stop:
        train_links.main(["--smoke", "--out", "unused.png"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "needs root" in err and "not running as root" in err and "--loopback-only" in err
