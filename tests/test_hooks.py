"""The DDP communication hook (marina.torch.hooks) on 2 real gloo processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from marina.errors import ConfigError
from marina.testing import close_group, local_launch
from marina.torch.hooks import CompressionHookState

WORLD, STEPS = 2, 3


def _model() -> torch.nn.Module:
    model = torch.nn.Linear(10, 3)
    with torch.no_grad():  # a fixed start, no global generator
        model.weight.copy_(torch.sin(torch.arange(30, dtype=torch.float32)).reshape(3, 10))
        model.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    return model


def _data(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    X = torch.cos(torch.arange(80, dtype=torch.float32).reshape(8, 10) * (0.3 + rank))
    y = torch.sin(torch.arange(24, dtype=torch.float32).reshape(8, 3) * (1.0 + rank))
    return X, y


def _train(hook_state, hook) -> tuple[list, list]:  # noqa: ANN001
    """STEPS SGD steps of DDP with ``hook``; the (bucket index, input, output) of every call."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    rank = dist.get_rank()
    ddp = DDP(_model())
    calls = []

    def recording(state, bucket):  # noqa: ANN001, ANN202
        inp = bucket.buffer().clone()
        fut = hook(state, bucket)
        calls.append((int(bucket.index()), inp, fut.wait().clone()))
        return fut

    ddp.register_comm_hook(hook_state, recording)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    X, y = _data(rank)
    for _ in range(STEPS):
        opt.zero_grad()
        torch.nn.functional.mse_loss(ddp(X), y).backward()
        opt.step()
    return [p.detach().clone() for p in ddp.parameters()], calls


def _job(out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    from marina import compressors
    from marina.rng import Randomness
    from marina.torch.hooks import compression_hook

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    report: dict = {}
    ref, _ = _train(None, default_hooks.allreduce_hook)
    mine, _ = _train(CompressionHookState("identity", "qgd"), compression_hook)
    report["identity_equal"] = all(torch.equal(a, b) for a, b in zip(ref, mine))
    for method in ("qgd", "diana"):
        state = CompressionHookState("randk:3", method, seed=5)
        _, calls = _train(state, compression_hook)
        # independent check: every rank's inputs, compressed here with the documented keys
        ok = []
        shifts: dict = {}
        for k, (index, inp, got) in enumerate(calls):
            everyone = [torch.empty_like(inp) for _ in range(WORLD)]
            dist.all_gather(everyone, inp)
            d = inp.numel()
            Q = compressors.get("randk:3")
            h_loc, h = shifts.get(index, (torch.zeros(WORLD, d), torch.zeros(d)))
            sent = torch.stack(everyone) - (h_loc if method == "diana" else 0)
            msg = Q.compress(sent, Randomness(5, f"ddp-bucket{index}", k, list(range(WORLD))))
            dec = Q.decompress(msg)
            mean = dec.sum(dim=0) / WORLD
            if method == "diana":
                alpha = 1 / (1 + Q.omega(d))
                want = h + mean
                shifts[index] = (h_loc + alpha * dec, h + alpha * mean)
            else:
                want = mean
            ok.append(bool(torch.equal(got, want)))
        report[method] = {
            "ok": ok,
            "bits_up": state.bits_up,
            "messages": state.messages,
            "rounds": state.rounds,
            "d": [c[1].numel() for c in calls],
        }
    if rank == 0:
        Path(out).write_text(json.dumps(report))
    close_group()  # the DDP models freed first


def test_hook_on_two_gloo_processes(tmp_path):
    out = tmp_path / "report.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), *sys.path]))
    procs = local_launch([sys.executable, __file__, str(out)], WORLD, env=env, stderr=subprocess.PIPE)
    errs = [p.communicate(timeout=240)[1].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), errs
    report = json.loads(out.read_text())
    # identity equals DDP's allreduce_hook, parameters bit for bit after 3 steps
    assert report["identity_equal"]
    for method in ("qgd", "diana"):
        r = report[method]
        assert r["ok"] and all(r["ok"]), method  # the mean of the decompressed messages
        (d,) = set(r["d"])  # one bucket of 33 parameters
        assert d == 33 and r["rounds"] == STEPS and r["messages"] == STEPS * WORLD
        assert r["bits_up"] == STEPS * WORLD * 3 * (32 + 6)  # 3 values + 3 indices of ceil(log2 33) bits


def test_bad_hook_states_are_refused():
    with pytest.raises(ConfigError, match="method == 'marina'"):
        CompressionHookState("randk:3", "marina")
    with pytest.raises(ConfigError, match="biased"):
        CompressionHookState("topk:3")
    with pytest.raises(ConfigError, match=r"must be in \(0%, 100%\]"):
        CompressionHookState("randk:150%")
    assert CompressionHookState("randk:1%").compressor_for(1000).spec == "randk:10"
    assert CompressionHookState("randk:1%").compressor_for(5).spec == "randk:1"
    # a composition's RandK share, resolved per bucket: round(2.5% of 1000) = 25 values of 2 bits
    assert CompressionHookState("randk:2.5%+qsgd:2").compressor_for(1000).spec == "randk:25+qsgd:2"


if __name__ == "__main__":
    _job(sys.argv[1])
