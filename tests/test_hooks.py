"""The DDP communication hook (marina.torch.hooks) on real gloo processes (1 and 2 ranks)."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import sys
import time
from pathlib import Path

import pytest
import torch

import marina.torch
from marina.errors import ConfigError
from marina.testing import close_group, run_ranks
from marina.torch.hooks import FINGERPRINT_BYTES, CompressionHookState, compression_hook

STEPS = 4
FORMULA_CASES = (
    ("qgd", "randk:3"),
    ("diana", "randk:3:seeded"),
    ("ef21", "topk:3"),
    ("ef21-sgdm", "topk:3"),
    ("diana", "bernoulli:0.5"),
)
ETA = 0.4
"""EF21-SGDM's momentum in the formula and training cases."""
REBUILD_STEPS = 8
REBUILD_CASES = (("qgd", "randk:10%"), ("diana", "randk:1%"), ("ef21", "topk:1%"), ("ef21-sgdm", "topk:1%"))
REBUILD_LR = 0.0005  # plain SGD on the 28 k-parameter regression below (EF21 topk:1% diverges at 0.002)


def _state(spec: str, method: str, seed: int = 0, **kwargs) -> CompressionHookState:
    """The hook state of ``method`` (EF21-SGDM with momentum ETA unless given)."""
    if method == "ef21-sgdm":
        kwargs.setdefault("momentum", ETA)
    return CompressionHookState(spec, method, seed=seed, **kwargs)


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


class _Rebuilt(torch.nn.Module):
    """Linear(5, 4000)-tanh-Linear(4000, 1) plus a Linear(5, 1) branch: with bucket_cap_mb=0.02
    DDP's first bucket holds all 28 007 entries, the rebuilt buckets 8 007 and 20 000."""

    def __init__(self) -> None:
        super().__init__()
        self.deep = torch.nn.Sequential(torch.nn.Linear(5, 4000), torch.nn.Tanh(), torch.nn.Linear(4000, 1))
        self.skip = torch.nn.Linear(5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.deep(x) + self.skip(x)


def _ddp_train(state, hook, rank: int, slow_rank: bool = False):
    """STEPS SGD steps of DDP with ``hook`` registered as users do; the final parameters."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    ddp = DDP(_model())
    ddp.register_comm_hook(state, hook)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    X, y = _data(rank)
    for step in range(STEPS):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(ddp(X), y)
        if slow_rank and step == STEPS - 1:
            time.sleep(0.5)  # the other ranks' hooks return before this rank sends anything
        loss.backward()
        opt.step()
    return [p.detach().clone() for p in ddp.parameters()]


def _recorded(state: CompressionHookState, rank: int, slow_rank: bool = False) -> list:
    """(bucket index, input, output, future done when the hook returned, the bucket's
    parameters) of every call."""
    calls = []

    def recording(state, bucket):
        inp = bucket.buffer().clone()
        fut = compression_hook(state, bucket)
        done = fut.done()

        def keep(f):
            calls.append((int(bucket.index()), inp, f.value().clone(), done, bucket.parameters()))
            return f.value()

        return fut.then(keep)

    _ddp_train(state, recording, rank, slow_rank)
    return calls


def _topk(x: torch.Tensor, k: int) -> torch.Tensor:
    """TopK by hand: the k entries of largest magnitude of each row kept, the rest zero."""
    out = torch.zeros_like(x)
    idx = x.abs().topk(k, dim=1).indices
    return out.scatter(1, idx, x.gather(1, idx))


def _expected(method: str, spec: str, seed: int, world: int, calls: list) -> list[bool]:
    """Each call's output against the method's formula, from every rank's inputs; the memory
    (h_r, h or e_r, e, and EF21-SGDM's v_r) of each parameter follows it when DDP reorders its
    bucket (it does after the first pass: (weight, bias), then (bias, weight))."""
    import torch.distributed as dist

    from marina import compressors
    from marina.rng import Randomness

    ok, memory = [], {}
    for k, (index, inp, got, _, params) in enumerate(calls):
        everyone = [torch.empty_like(inp) for _ in range(world)]
        dist.all_gather(everyone, inp)
        G, d = torch.stack(everyone), inp.numel()
        zeros = [
            (torch.zeros(world, p.numel()), torch.zeros(p.numel()), torch.zeros(world, p.numel()))
            for p in params
        ]
        held = [memory.get(id(p), z) for p, z in zip(params, zeros)]
        local, mean = torch.cat([h[0] for h in held], dim=1), torch.cat([h[1] for h in held])
        v = torch.cat([h[2] for h in held], dim=1)
        if method in ("ef21", "ef21-sgdm"):
            # the first call dense (v_r = e_r = g_r), then v_r = (1 - eta) v_r + eta g_r (EF21-SGDM;
            # EF21: v_r = g_r) and c_r = TopK(v_r - e_r)
            v = G if k == 0 or method == "ef21" else torch.add(v * (1 - ETA), G, alpha=ETA)
            c = G if k == 0 else _topk(v - local, int(spec.split(":")[1]))
            local, mean = local + c, mean + c.sum(dim=0) / world
            want = mean
        else:
            Q = compressors.get(spec)
            sent = G - local if method == "diana" else G
            dec = Q.decompress(Q.compress(sent, Randomness(seed, f"ddp-bucket{index}", k, range(world))))
            avg = dec.sum(dim=0) / world
            if method == "diana":
                alpha = 1 / (1 + Q.omega(d))
                want = mean + avg
                # h + alpha Delta, rounded as the hook's in-place update (torch.add(alpha=))
                local, mean = torch.add(local, dec, alpha=alpha), torch.add(mean, avg, alpha=alpha)
            else:
                want = avg
        sizes = [p.numel() for p in params]
        memory.update(
            zip(map(id, params), zip(local.split(sizes, dim=1), mean.split(sizes), v.split(sizes, dim=1)))
        )
        ok.append(bool(torch.equal(got, want)))
    return ok


def _rebuild_run(method: str, spec: str, seed: int, rank: int, world: int) -> dict:
    """REBUILD_STEPS steps of plain SGD on _Rebuilt under DDP(bucket_cap_mb=0.02)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.manual_seed(seed)  # DDP broadcasts rank 0's parameters anyway
    ddp = DDP(_Rebuilt(), bucket_cap_mb=0.02)
    state = _state(spec, method, seed)
    ddp.register_comm_hook(state, marina.torch.compression_hook)
    opt = torch.optim.SGD(ddp.parameters(), lr=REBUILD_LR)
    X = torch.randn(32 * world, 5, generator=torch.Generator().manual_seed(seed))
    y = torch.sin(X[:, :1]) + 0.5 * X[:, 1:2]
    losses = []
    for _ in range(REBUILD_STEPS):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(ddp(X[rank::world]), y[rank::world])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    layouts = sorted(state._plans)
    del ddp, opt
    return {"losses": losses, "layouts": layouts, "rounds": state.rounds}


def _readme_example(rank: int) -> dict:
    """The README's DDP hook example, run verbatim on a DDP model, then STEPS SGD steps."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    code = next(c for c in re.findall(r"```python\n(.*?)```", text, re.S) if "register_comm_hook" in c)
    scope = {"marina": marina, "ddp": DDP(_model())}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the project's own example
    ddp, state = scope["ddp"], scope["state"]
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    X, y = _data(rank)
    for _ in range(STEPS):
        opt.zero_grad()
        torch.nn.functional.mse_loss(ddp(X), y).backward()
        opt.step()
    moved = max(float((a - b).abs().max()) for a, b in zip(ddp.parameters(), _model().parameters()))
    return {"method": state.method, "rounds": state.rounds, "moved": moved}


def _main_job(out: str, seed: int) -> None:
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    report: dict = {}
    # registered directly; identity QGD equals DDP's allreduce bit for bit, EF21 up to rounding
    ref = _ddp_train(None, default_hooks.allreduce_hook, rank)
    qgd = _ddp_train(CompressionHookState("identity", "qgd"), compression_hook, rank)
    ef21 = _ddp_train(CompressionHookState("identity", "ef21"), compression_hook, rank)
    report["identity_equal"] = all(torch.equal(a, b) for a, b in zip(ref, qgd))
    report["ef21_identity_close"] = all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(ref, ef21))
    # EF21-SGDM with eta = 1: v_r = g_r, so EF21 with the identity: DDP's gradients up to rounding
    sgdm = _ddp_train(_state("identity", "ef21-sgdm", momentum=1.0), compression_hook, rank)
    report["sgdm_identity_close"] = all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(ref, sgdm))
    report["ef21_identity_moved"] = max(
        float((a - b).abs().max()) for a, b in zip(ref, _model().parameters())
    )
    for method, spec in FORMULA_CASES:
        state = _state(spec, method, seed)
        overlapped = spec != "bernoulli:0.5"  # sizes vary: exchanged synchronously
        calls = _recorded(state, rank, slow_rank=overlapped and rank == world - 1 and world > 1)
        report[f"{method} {spec}"] = {
            "ok": _expected(method, spec, seed, world, calls),
            "returned_pending": [not c[3] for c in calls],
            "bits_up": state.bits_up,
            "bits_up_all_ranks": state.bits_up_all_ranks,
            "wire_bytes": state.wire_bytes,
            "messages": state.messages,
            "rounds": state.rounds,
            "d": [c[1].numel() for c in calls],
        }
    for method, spec in REBUILD_CASES:
        report[f"rebuild-{method}"] = _rebuild_run(method, spec, seed, rank, world)
    report["readme"] = _readme_example(rank)
    try:  # a plain dict as state: a clear error at the first call, before any exchange
        _ddp_train({"compressor": "randk:3"}, compression_hook, rank)
    except ConfigError as err:
        report["dict_state"] = str(err)
    if world == 2:
        report["disagree"] = _disagreements(seed, rank)
    Path(f"{out}.{rank}").write_text(json.dumps(report))
    close_group()  # the DDP models freed first


def _disagreements(seed: int, rank: int) -> dict:
    """On 2 ranks, every case a mismatch between the ranks: the error each rank raised."""
    cases = {
        "compressor": (("randk:3", "qgd"), ("randk:4", "qgd")),
        "method": (("randk:3", "qgd"), ("randk:3", "diana")),
        "alpha": (("randk:3", "diana", seed, 0.5), ("randk:3", "diana", seed, 0.25)),
        "momentum": (
            ("topk:3", "ef21-sgdm", seed, None, None, 0.5),
            ("topk:3", "ef21-sgdm", seed, None, None, 0.25),
        ),
        "seed": (("randk:3", "qgd", seed), ("randk:3", "qgd", seed + 1)),
    }
    report: dict = {}
    for name, configs in cases.items():
        try:
            _ddp_train(CompressionHookState(*configs[rank]), compression_hook, rank)
            report[name] = "no error"
        except Exception as err:  # noqa: BLE001 - reported to the test
            report[name] = f"{type(err).__name__}: {err}"

    class Bucket:  # a bucket of another size on each rank (DDP itself would refuse the model)
        def __init__(self, d: int) -> None:
            self.params = [torch.zeros(d)]

        def buffer(self) -> torch.Tensor:
            return torch.ones(self.params[0].numel())

        def index(self) -> int:
            return 0

        def parameters(self) -> list:
            return self.params

        def is_last(self) -> bool:
            return True

    try:
        compression_hook(CompressionHookState("randk:3", "qgd"), Bucket(33 + rank)).wait()
        report["d"] = "no error"
    except Exception as err:  # noqa: BLE001
        report["d"] = f"{type(err).__name__}: {err}"
    # a non-finite gradient on rank 1 only: both ranks stop alike, nobody hangs
    bucket = Bucket(33)
    if rank == 1:
        bucket.buffer = lambda: torch.full((33,), float("nan"))  # type: ignore[method-assign]
    try:
        compression_hook(CompressionHookState("randk:3", "qgd"), bucket).wait()
        report["nan"] = "no error"
    except Exception as err:  # noqa: BLE001
        report["nan"] = f"{type(err).__name__}: {err}"
    return report


@pytest.fixture(scope="module", params=[1, 2], ids=["1rank", "2ranks"])
def main_reports(request, tmp_path_factory) -> tuple[int, int, list[dict]]:
    """Every rank's report of one launch of _main_job on 1 or 2 gloo ranks (the seed as the
    ``seed`` fixture draws it, shared by the module's tests, printed in their failures)."""
    seed = int(os.environ.get("MARINA_TEST_SEED") or random.SystemRandom().randrange(2**31))
    world = request.param
    out = tmp_path_factory.mktemp(f"hook{world}") / "report"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), *sys.path]))
    run_ranks([sys.executable, __file__, str(out), str(seed)], world, env=env, timeout=240)
    return world, seed, [json.loads(Path(f"{out}.{r}").read_text()) for r in range(world)]


def test_registered_directly_equals_allreduce(main_reports):
    world, seed, reports = main_reports
    for r in reports:
        assert r["identity_equal"], seed  # parameters bit for bit after STEPS steps
        # EF21 with the identity keeps e_r = g_r: DDP's gradients up to float rounding
        assert r["ef21_identity_close"] and r["ef21_identity_moved"] > 1e-3, seed
        assert r["sgdm_identity_close"], seed  # EF21-SGDM with eta = 1 as well


def test_outputs_follow_each_methods_formula(main_reports):
    world, seed, reports = main_reports
    for r in reports:
        for method, spec in FORMULA_CASES:
            got = r[f"{method} {spec}"]
            assert len(got["ok"]) == STEPS and all(got["ok"]), (method, spec, seed, got["ok"])
            assert set(got["d"]) == {33}  # one bucket of 33 parameters


def test_the_hook_returns_before_the_exchange_completes(main_reports):
    world, seed, reports = main_reports
    if world == 1:
        pytest.skip("one rank: nothing to wait for")
    # the last rank sleeps 0.5 s before its last backward pass: rank 0's future cannot be
    # complete when its hook returns unless the hook waited for the exchange itself (the first
    # call waits for the fingerprints, so the last one is checked)
    for case in ("qgd randk:3", "diana randk:3:seeded", "ef21 topk:3", "ef21-sgdm topk:3"):
        assert reports[0][case]["returned_pending"][-1], case


def test_counters_by_hand(main_reports):
    world, seed, reports = main_reports
    for r in reports:
        got = r["qgd randk:3"]
        bits = 3 * (32 + 6)  # randk:3 of d = 33: 3 values and 3 indices of ceil(log2 33) bits
        assert got["rounds"] == STEPS and got["messages"] == STEPS
        assert got["bits_up"] == STEPS * bits  # per worker, as the optimizers' bits_up
        assert got["bits_up_all_ranks"] == world * STEPS * bits
        # this rank sends its ceil(114 / 8) = 15 bytes and the fingerprint to each other rank
        assert got["wire_bytes"] == (world - 1) * (STEPS * 15 + FINGERPRINT_BYTES)
        dense = 32 * 33  # EF21's first exchange sends the gradient dense
        assert r["ef21 topk:3"]["bits_up"] == dense + (STEPS - 1) * bits
        assert r["ef21-sgdm topk:3"]["bits_up"] == dense + (STEPS - 1) * bits  # the same messages


def test_training_survives_bucket_rebuilds(main_reports):
    world, seed, reports = main_reports
    for r in reports:
        for method, _ in REBUILD_CASES:
            got = r[f"rebuild-{method}"]
            # DDP rebuilt its buckets after the first pass: 28007 entries, then 8007 and 20000
            assert sorted(d for _, d in got["layouts"]) == [8007, 20000, 28007], got["layouts"]
            assert got["rounds"] == REBUILD_STEPS
            losses = got["losses"]
            assert losses[-1] < 0.8 * losses[0], (method, seed, losses)


def test_the_readme_registration_runs_verbatim(main_reports):
    world, seed, reports = main_reports
    for r in reports:
        got = r["readme"]
        assert got["method"] == "ef21" and got["rounds"] == STEPS and got["moved"] > 1e-3, got


def test_plain_dict_state_is_refused_at_the_first_call(main_reports):
    world, seed, reports = main_reports
    for r in reports:
        assert "state is a dict, not a CompressionHookState" in r["dict_state"]


def test_ranks_that_disagree_raise_the_same_clear_error(main_reports):
    world, seed, reports = main_reports
    if world == 1:
        pytest.skip("one rank: nobody to disagree with")
    reports = [r["disagree"] for r in reports]
    want = {
        "compressor": "compressor: rank 0 has randk:3, rank 1 has randk:4",
        "method": "method: rank 0 has qgd, rank 1 has diana",
        "alpha": "alpha: rank 0 has 0.5, rank 1 has 0.25",
        "momentum": "momentum: rank 0 has 0.5, rank 1 has 0.25",
        "seed": f"seed: rank 0 has {seed}, rank 1 has {seed + 1}",
        "d": "d: rank 0 has 33, rank 1 has 34",
    }
    for name, text in want.items():
        errors = [r[name] for r in reports]
        assert errors[0] == errors[1], name  # one error, the same on every rank
        assert errors[0].startswith("ConfigError: compression_hook: the ranks disagree"), errors[0]
        assert text in errors[0], errors[0]
    for r in reports:
        assert "ValueRangeError" in r["nan"] and "rank(s) [1]" in r["nan"], r["nan"]


def test_bad_hook_states_are_refused():
    with pytest.raises(ConfigError, match="method == 'marina'"):
        CompressionHookState("randk:3", "marina")
    with pytest.raises(ConfigError, match="biased"):
        CompressionHookState("topk:3")  # qgd needs an unbiased compressor
    with pytest.raises(ConfigError, match="biased"):
        CompressionHookState("topk:3", "diana")
    assert CompressionHookState("topk:1%", "ef21").compressor_for(1000).spec == "topk:10"
    with pytest.raises(ConfigError, match=r"alpha == 0.5 is a parameter of method='diana' only"):
        CompressionHookState("randk:3", "qgd", alpha=0.5)
    with pytest.raises(ConfigError, match=r"alpha == 0.5 is a parameter of method='diana' only"):
        CompressionHookState("topk:3", "ef21", alpha=0.5)
    for method in ("qgd", "diana", "ef21"):
        with pytest.raises(ConfigError, match=r"momentum == 0.5 is a parameter of method='ef21-sgdm' only"):
            CompressionHookState("randk:3", method, momentum=0.5)
    with pytest.raises(ConfigError, match=r"method='ef21-sgdm' needs momentum=eta in \(0, 1\]"):
        CompressionHookState("topk:3", "ef21-sgdm")
    for eta in (0, 1.5, "0.5", True, float("nan")):
        with pytest.raises(ConfigError, match=r"momentum == .*, must be a number in \(0, 1\]"):
            CompressionHookState("topk:3", "ef21-sgdm", momentum=eta)
    assert CompressionHookState("topk:1%", "ef21-sgdm", momentum=0.1).compressor_for(1000).spec == "topk:10"
    for alpha in (0, 1.5, "0.5", True, float("nan")):
        with pytest.raises(ConfigError, match="alpha =="):
            CompressionHookState("randk:3", "diana", alpha=alpha)
    with pytest.raises(ConfigError, match="seed =="):
        CompressionHookState("randk:3", seed="0")
    with pytest.raises(ConfigError, match="group == 'world'"):
        CompressionHookState("randk:3", group="world")
    with pytest.raises(ConfigError, match=r"must be in \(0%, 100%\]"):
        CompressionHookState("randk:150%")
    with pytest.raises(ConfigError, match="unknown compressor"):
        CompressionHookState("randq:3")
    assert CompressionHookState("randk:1%").compressor_for(1000).spec == "randk:10"
    assert CompressionHookState("randk:1%").compressor_for(5).spec == "randk:1"
    # a composition's RandK share, resolved per bucket: round(2.5% of 1000) = 25 values of 2 bits
    assert CompressionHookState("randk:2.5%+qsgd:2").compressor_for(1000).spec == "randk:25+qsgd:2"


def test_the_configuration_is_frozen():
    state = CompressionHookState("randk:3", "diana", seed=4, alpha=0.5)
    assert (state.compressor, state.method, state.seed, state.alpha) == ("randk:3", "diana", 4, 0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.config.method = "qgd"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        state.method = "qgd"  # type: ignore[misc]
    sgdm = CompressionHookState("topk:3", "ef21-sgdm", momentum=0.2)
    assert sgdm.momentum == 0.2 and sgdm.config.parameters == {"momentum": 0.2}
    assert sgdm.config.fingerprint(33, torch.float32)["momentum"] == "0.2"


if __name__ == "__main__":
    _main_job(sys.argv[1], int(sys.argv[2]))


@pytest.mark.parametrize("scale", [1.0, 0.375])
def test_ef21_entries_update_equals_the_dense_update(seed, scale):
    """The hook's entry path (e_r += c_r, e += (1/W) sum_r c_r at the messages' entries) equals
    the dense updates bit for bit on memory without -0.0, messages of two ranks sharing entries
    included; a -0.0 in e_r is where the two differ (-0.0 + 0 is 0.0), which is why the hook takes
    the entry path only once e_r and e are known to hold none."""
    from marina.compressors.sparse import sparse_rows, sparse_sum
    from marina.torch.hooks import _Memory

    print("seed", seed)
    g = torch.Generator().manual_seed(seed)
    d, K, W = 40, 6, 2
    state = CompressionHookState("topk:6", "ef21")
    state._world = W
    idx = torch.stack([torch.randperm(d, generator=g)[:K].sort().values for _ in range(W)])
    idx[1, :2] = idx[0, :2]  # two entries both ranks send
    values = torch.randn(W, K, generator=g)
    values[0, 3] = -0.0
    local, mean = torch.randn(1, d, generator=g), torch.randn(1, d, generator=g)
    memory = _Memory(local.clone(), mean.clone(), fresh=False, clean=True)
    state._add_entries(memory, (idx, values), (idx[1:2], values[1:2]), scale)
    own = sparse_rows(idx[1:2], values[1:2], d)
    avg = sparse_sum(idx, values, d) / W
    if scale != 1.0:
        own, avg = own * scale, avg * scale
    assert torch.equal(memory.local, local + own) and torch.equal(memory.mean, mean + avg)
    assert torch.equal(memory.zeros, torch.zeros(d))  # zero again for the next round
    local[0, 0] = -0.0  # not an entry of rank 1's message: the dense update makes it 0.0
    memory = _Memory(local.clone(), mean.clone(), fresh=False, clean=True)
    state._add_entries(memory, (idx, values), (idx[1:2], values[1:2]), scale)
    if 0 not in idx[1].tolist():
        assert memory.local[0, 0].signbit() and not (local + own)[0, 0].signbit()
