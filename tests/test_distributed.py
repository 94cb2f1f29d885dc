"""torch.distributed backend: real processes (gloo, 127.0.0.1) against the simulation.

Ranks are real OS processes forked from a forkserver that imported torch and marina once (so a
job starts in a fraction of a second instead of re-importing torch per rank); each rank gets
torchrun's environment (:func:`marina.testing.rank_environ`) and a free port chosen at run
time. The torchrun test launches the documented command line itself.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

import marina
from marina import compressors, problems
from marina.cli import main as cli_main
from marina.distributed import ENV_VARS, launch_env
from marina.errors import ConfigError
from marina.network import SimulatedNetwork, copy_stream
from marina.network.link import DIRECT_MAX_BYTES
from marina.network.torch_distributed import SIZE_BYTES, worker_block
from marina.rng import Randomness
from marina.testing import free_port, rank_environ

WORLD = 3
RUNS = {
    name: (name.split()[0], name.split()[1] if " " in name else "randk:3")
    for name in (
        "marina",
        "vr-marina",
        "diana",
        "qgd",
        "pp-marina",
        "ef21",  # randk:3 scaled to a contractive compressor
        "ef21 topk:3",
        "ef21-pp topk:3",
        "ef21-sgd topk:3",
        "dasha",
        "dasha-page",
        "dasha-mvr",
    )
}
"""Runs compared with the simulation: name -> (method, compressor); topk:3 sends messages of
randk:3's size (3 values and their indices)."""
BERNOULLI_RUNS = tuple(
    (method, spec) for method in ("marina", "pp-marina") for spec in ("bernoulli:0.3", "bernoulli:0.3:seeded")
)
"""Plain against seeded Bernoulli (the flag on the wire, or the coin regenerated from the key)."""
PARTIAL = ("pp-marina", "ef21-pp")
"""Methods where only some clients send in a compressed round."""
SYNTHETIC = {"workers": 6, "dim": 40, "samples": 30, "seed": 3}
ITERATIONS = 30
CLI_SYNTHETIC = ["run", "--backend", "torch-distributed", "--problem", "synthetic", "--workers", "3"]


# -- launching ranks ----------------------------------------------------------------------------------
def _context():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(
        ["torch", "torch.distributed", "marina.runner", "marina.distributed", "marina.cli"]
    )
    return ctx


def _rank_main(rank: int, world: int, port: int, job: str, params: dict, out: str) -> None:
    """Entry of one rank: torchrun's environment, output into ``out/rank<r>.log``, run ``job``."""
    log = open(os.path.join(out, f"rank{rank}.log"), "w", buffering=1)  # noqa: SIM115 - the rank writes into it until it exits
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = log
    base = dict(os.environ)
    os.environ.clear()
    os.environ.update(rank_environ(rank, world, port, base))
    torch.set_num_threads(1)
    code = 1
    try:
        code = int(JOBS[job](rank, params, out) or 0)
    except BaseException as err:  # noqa: BLE001 - reported through the log and the exit code
        import traceback

        traceback.print_exc()
        print(f"job failed: {err}", flush=True)
    finally:
        log.flush()
        os._exit(code)


def _launch(job: str, params: dict, out: Path, world: int = WORLD, ranks=None):
    ctx = _context()
    port = free_port()
    procs = {}
    for rank in range(world) if ranks is None else ranks:
        p = ctx.Process(target=_rank_main, args=(rank, world, port, job, params, str(out)))
        p.start()
        procs[rank] = p
    return procs


def _join(procs, timeout: float) -> dict[int, int]:
    deadline = time.monotonic() + timeout
    for p in procs.values():
        p.join(max(0.1, deadline - time.monotonic()))
    codes = {}
    for rank, p in procs.items():
        if p.is_alive():
            p.kill()
            p.join()
        codes[rank] = p.exitcode
    return codes


def _logs(out: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()}" for p in sorted(out.glob("rank*.log")))


# -- jobs (run inside the ranks) --------------------------------------------------------------------------
def _job_equivalence(rank: int, params: dict, out: str) -> int:
    """Four methods on the synthetic problem, direct aggregations, and the launch checks."""
    from marina import distributed

    seed = params["seed"]
    report: dict = {"rank": rank, "runs": {}, "aggregations": [], "errors": {}}
    with distributed.init("cpu", timeout_s=30) as session:
        hosted = session.hosted_workers(SYNTHETIC["workers"])
        prob = problems.synthetic(**SYNTHETIC, hosted_workers=hosted)
        report["bernoulli"] = {}
        logged = [("runs", name, method, spec) for name, (method, spec) in RUNS.items()]
        logged += [("bernoulli", f"{method} {spec}", method, spec) for method, spec in BERNOULLI_RUNS]
        for part, name, method, spec in logged:
            res = distributed.run(
                method=method,
                problem=prob,
                workers=SYNTHETIC["workers"],
                compressor=spec,
                iterations=ITERATIONS,
                seed=seed,
                log_every=1,
                keep_log=True,
            )
            report[part][name] = {
                "history": res.history.to_dict(orient="list"),
                "x": res.x.tolist(),
                "counters": res.config["network"],
                "exchanges": res.config["exchanges"],
            }
        report["resumed"] = _interrupted_and_resumed(prob, seed, Path(out, f"checkpoint{rank}.pt"))
        linked = distributed.run(
            method="pp-marina",
            problem=prob,
            workers=SYNTHETIC["workers"],
            compressor="randk:3",
            iterations=10,
            seed=seed,
            log_every=1,
            keep_log=True,
            link="10mbit:1ms",
        )
        report["link"] = {
            "link_time_s": linked.history["link_time_s"].tolist(),
            "exchanges": linked.config["exchanges"],
        }
        report["aggregations"] = _direct_aggregations(session, seed)
        report["large"] = _large_aggregations(session, seed)
        report["failures"] = _failed_compressions(session, seed)
        # bad configurations raise the same clear error on every rank, without hanging
        try:
            session.network(4, seed)
        except ConfigError as err:
            report["errors"]["indivisible"] = str(err)
        try:
            session.network(6, seed + rank)
        except ConfigError as err:
            report["errors"]["seed"] = str(err)
        try:  # rank 0 starts elsewhere (a model each process initialised itself)
            x0 = prob.initial_point() + (1e-3 if rank == 0 else 0.0)
            distributed.run(method="gd", problem=prob, workers=SYNTHETIC["workers"], iterations=1, x0=x0)
        except ConfigError as err:
            report["errors"]["x0"] = str(err)
    Path(out, f"report{rank}.json").write_text(json.dumps(report))
    return 0


class _Stop(Exception):
    pass


def _interrupted_and_resumed(prob, seed: int, path: Path) -> dict:
    """MARINA stopped at round 15 on every rank (checkpoint at 10), then run again: resumes."""
    from marina import distributed

    def stop(row, total):
        if row["iteration"] == 15:
            raise _Stop

    options = dict(method="marina", problem=prob, workers=SYNTHETIC["workers"], compressor="randk:3")
    options.update(
        iterations=ITERATIONS, seed=seed, log_every=1, checkpoint_path=str(path), checkpoint_every=10
    )
    try:
        distributed.run(**options, progress=stop)
    except _Stop:
        pass
    res = distributed.run(**options)
    return {"history": res.history.to_dict(orient="list"), "counters": res.config["network"]}


ALL_SPECS = (
    "identity",
    "randk:2",
    "randk:2:seeded",
    "bernoulli:0.5",
    "bernoulli:0.3:seeded",
    "qsgd:4",
    "natural",
    "natural-dithering:4",
    "permk",
    "topk:3",
    "terngrad",
    "sign",
    "randk:3+natural",
    "randk:3+qsgd:2",
    "randk:2:seeded+natural",
)
EMPTY_RANKS = ([2, 0, 0, 0, 1, 3], [0, 1, 2, 0, 0, 0])  # rank 1, then rank 2, sends nothing


def _direct_aggregations(session, seed: int) -> list[dict]:
    """aggregate() on known data vs the simulation and vs the two-collective exchange (sizes
    first), with the bytes predicted from compress+pack; every compressor, with and without
    PP-MARINA multiplicities that leave a rank without any message."""
    n, d, W = SYNTHETIC["workers"], 17, session.world_size
    net = session.network(n, seed, keep_log=True)
    two = session.network(n, seed, keep_log=True, exchange_sizes=True)
    collectives = _count_collectives(net)
    X_all = torch.sin(torch.arange(n * d, dtype=torch.float64).reshape(n, d) * 0.37) * 3.0
    X_local = X_all[net.worker_ids]
    cases = [(spec, mult) for spec in ALL_SPECS for mult in (None, *EMPTY_RANKS)]
    rows = []
    for k, (spec, mult) in enumerate(cases):
        Q = compressors.get(spec, workers=n)
        counts = None if mult is None else torch.tensor(mult, dtype=torch.int64)
        before, calls = net.counters(), len(collectives)
        mean, local = net.aggregate_with_local(Q, X_local, 100 + k, multiplicity=counts)
        after, calls = net.counters(), len(collectives) - calls
        two_mean, two_local = two.aggregate_with_local(Q, X_local, 100 + k, multiplicity=counts)
        sim = SimulatedNetwork(n, seed)
        sim_mean, sim_local = sim.aggregate_with_local(Q, X_all, 100 + k, multiplicity=counts)
        # independent prediction: every message of every worker compressed and packed here
        c = torch.ones(n, dtype=torch.int64) if counts is None else counts
        per_rank, rank_bits = [0] * W, [0] * W
        for j in range(int(c.max())):
            ids = torch.nonzero(c > j).reshape(-1)
            msg = Q.compress(X_all[ids], Randomness(seed, copy_stream("compress", j), 100 + k, ids))
            for g, payload, b in zip(ids.tolist(), Q.pack(msg), msg.bits.tolist()):
                per_rank[g // (n // W)] += int(payload.numel())
                rank_bits[g // (n // W)] += b
        aligned = list(per_rank)  # every message byte aligned (the two-collective exchange)
        # one message per worker, all of the same size b < 4096 bits, not whole bytes: a rank's
        # messages travel back to back at bit level, ceil(its bits / 8) bytes
        everyone = torch.arange(n)  # bernoulli:q:seeded's sizes follow from the keyed coins
        sizes_vary = Q.message_bits(d, everyone, rng=Randomness(seed, "compress", 100 + k, everyone)) is None
        b0 = int(msg.bits[0])
        if mult is None and not sizes_vary and bool((msg.bits == b0).all()) and b0 % 8 and b0 <= 4096:
            per_rank = [math.ceil(b / 8) for b in rank_bits]  # n / W = 2 messages per rank
        slots = int(c.reshape(W, -1).sum(dim=1).max())  # the most messages a rank sends
        rows.append(
            {
                "spec": spec,
                "mult": mult,
                "equal_mean": bool(torch.equal(mean, sim_mean)),
                "equal_local": bool(torch.equal(local, sim_local[net.worker_ids])),
                "equal_two": bool(torch.equal(mean, two_mean) and torch.equal(local, two_local)),
                "bits": after["bits_up"] - before["bits_up"],
                "sim_bits": sim.bits_up,
                "two_bits": two.exchanges[-1]["payload_bytes"],
                "aligned": sum(aligned),
                "two_size": two.exchanges[-1]["size_bytes"],
                "payload": after["payload_bytes"] - before["payload_bytes"],
                "size": after["size_bytes"] - before["size_bytes"],
                "padding": after["padding_bytes"] - before["padding_bytes"],
                "wire": after["wire_bytes"] - before["wire_bytes"],
                "predicted_rank_bytes": per_rank,
                "slots": slots,
                "sizes_vary": sizes_vary,
                "logged": net.exchanges[-1],
                "collectives": calls,
            }
        )
        if mult is None:
            rows[-1].update(_in_place_rounds(net, Q, X_local, X_all, seed, 500 + 4 * k))
    return rows


def _in_place_rounds(net, Q, X_local, X_all, seed: int, round: int) -> dict:
    """Two rounds of aggregate_added (g + mean) and aggregate_moved (x - gamma mean, x entrusted)
    against the simulation's dense expressions, bit for bit (-0.0 in g and x); which calls wrote
    over their input (a sparsifier's rounds after the first: the entries only)."""
    from marina.methods.base import moved

    d = X_all.shape[1]
    sim = SimulatedNetwork(X_all.shape[0], seed)
    g = torch.cos(torch.arange(d, dtype=torch.float64))
    g[::4] = -0.0
    x = torch.sin(torch.arange(d, dtype=torch.float64))
    x[::3] = -0.0
    g_sim, x_sim = g.clone(), x.clone()
    net.entrust(x)
    in_place = []
    for r in (0, 1):
        before, x_before = g, x
        g = net.aggregate_added(g, Q, X_local, round + 2 * r)
        g_sim = g_sim + sim.aggregate(Q, X_all, round + 2 * r)
        x = net.aggregate_moved(x, 0.3, Q, X_local, round + 2 * r + 1)
        x_sim = moved(x_sim, sim.aggregate(Q, X_all, round + 2 * r + 1), 0.3)
        in_place += [g is before, x is x_before]
    same = torch.equal(g.view(torch.int64), g_sim.view(torch.int64))
    same = same and torch.equal(x.view(torch.int64), x_sim.view(torch.int64))
    # EF21's steps 4-6: e_i += c_i (hosted rows), g + mean; -0.0 in e and in the gradients
    e_all = torch.cos(torch.arange(X_all.numel(), dtype=torch.float64).reshape(X_all.shape) * 0.3)
    e_all[:, ::5] = -0.0
    e, e_sim = e_all[net.worker_ids].clone(), e_all.clone()
    g = e_all.mean(dim=0)
    g_sim = g.clone()
    for r in (0, 1):
        before = g
        g = net.aggregate_feedback(g, e, Q, X_local - e, round + 8 + r, 1.0, 1.0)
        mean, local = sim.aggregate_with_local(Q, X_all - e_sim, round + 8 + r)
        e_sim.add_(local)
        g_sim = g_sim + mean
        in_place.append(g is before)
    same = same and torch.equal(g.view(torch.int64), g_sim.view(torch.int64))
    same = same and torch.equal(e.view(torch.int64), e_sim[net.worker_ids].view(torch.int64))
    # DIANA's steps 3-7: h_i += alpha Delta_i, x - gamma (h + Delta), h + alpha Delta; x entrusted
    h_all = torch.zeros_like(X_all)
    h_all[:, 1::7] = -0.0  # the first round takes the full path, which clears them
    h, h_sim, hm = h_all[net.worker_ids].clone(), h_all.clone(), torch.zeros(d, dtype=torch.float64)
    hm_sim, x_sim = hm.clone(), x.clone()
    for r in (0, 1, 2):
        net.entrust(x)
        before = hm
        x, hm = net.aggregate_shifted(x, 0.3, h, hm, Q, X_local - h, round + 12 + r, 0.37)
        mean, local = sim.aggregate_with_local(Q, X_all - h_sim, round + 12 + r)
        h_sim.add_(local, alpha=0.37)
        x_sim = moved(x_sim, hm_sim + mean, 0.3)
        hm_sim = hm_sim + 0.37 * mean
        in_place.append(hm is before)
    for got, want in ((x, x_sim), (h, h_sim[net.worker_ids]), (hm, hm_sim)):
        same = same and torch.equal(got.view(torch.int64), want.view(torch.int64))
    return {"equal_in_place": same, "in_place": in_place}


def _large_aggregations(session, seed: int) -> dict[str, list]:
    """Chunks on either side of DIRECT_MAX_BYTES (a direct exchange up to it, the ring all-gather
    above): [equal to the simulation's mean, all_to_all calls made], identity messages of d
    float32 values, two workers a rank."""
    import torch.distributed as dist

    n = SYNTHETIC["workers"]
    net = session.network(n, seed)
    out, real = {}, dist.all_to_all
    for d in (DIRECT_MAX_BYTES // 8, DIRECT_MAX_BYTES // 8 + 1):  # 2 d x 4 bytes a rank
        calls = []
        dist.all_to_all = lambda *a, calls=calls, **k: (calls.append(1), real(*a, **k))[1]
        X_all = torch.cos(torch.arange(n * d, dtype=torch.float64).reshape(n, d) * 0.11)
        Q = compressors.get("identity", workers=n)
        mean = net.aggregate(Q, X_all[net.worker_ids], 7)
        dist.all_to_all = real
        out[str(d)] = [bool(torch.equal(mean, SimulatedNetwork(n, seed).aggregate(Q, X_all, 7))), len(calls)]
    return out


def _count_collectives(net) -> list[str]:
    """The network's collectives from now on, by what they were for (wraps ``net._all_gather``)."""
    made: list[str] = []
    gather = net._all_gather

    def counted(local, what):
        made.append(what)
        return gather(local, what)

    net._all_gather = counted
    return made


def _coin_rounds(seed: int, n: int, d: int) -> dict[str, int]:
    """Rounds (from 7 on) where bernoulli:0.3:seeded's coins send nothing at all, and where
    they send nothing from rank 1 (workers 2, 3) but something elsewhere."""
    Q, ids, found = compressors.get("bernoulli:0.3:seeded"), torch.arange(n), {}
    for k in range(7, 10_000):
        sent = Q.message_bits(d, ids, rng=Randomness(seed, "compress", k, ids)) > 0
        if not sent.any():
            found.setdefault("nobody", k)
        elif not sent[2:4].any():
            found.setdefault("rank 1 empty", k)
        if len(found) == 2:
            return found
    raise AssertionError(f"no such rounds for seed {seed}")


def _failed_compressions(session, seed: int) -> dict:
    """Rank 1's values are NaN, then too large for float32: every rank raises the same error,
    with one collective per healthy aggregation (no size exchange) before and after."""
    n, d = SYNTHETIC["workers"], 17
    net = session.network(n, seed)
    X_local = torch.ones(net.n_local, d, dtype=torch.float64)
    out = {}
    for label, bad in (("nan", float("nan")), ("range", 1e300)):
        X = X_local.clone()
        if session.rank == 1:
            X[0, 3] = bad
        cases = [(spec, 7) for spec in ("randk:2:seeded", "natural", "identity", "bernoulli:0.3:seeded")]
        # seeded Bernoulli where the failing rank, or every rank, has nothing to send
        cases += [(f"bernoulli:0.3:seeded {w}", k) for w, k in _coin_rounds(seed, n, d).items()]
        for case, k in cases:
            try:
                net.aggregate(compressors.get(case.split()[0]), X, k)
                out[f"{label} {case}"] = "no error"
            except Exception as err:  # noqa: BLE001 - the type is what the test checks
                out[f"{label} {case}"] = f"{type(err).__name__} {getattr(err, 'non_finite', None)}"
    # the group is still usable: a healthy aggregation afterwards
    out["after"] = float(net.aggregate(compressors.get("identity"), X_local, 8).sum())
    return out


def _job_cli(rank: int, params: dict, out: str) -> int:
    return cli_main(params["argv"])


def _job_join(rank: int, params: dict, out: str) -> int:
    from marina import distributed

    with distributed.init("cpu", timeout_s=params["timeout"]):
        return 0


JOBS = {"equivalence": _job_equivalence, "cli": _job_cli, "join": _job_join}


# -- trajectories and bytes --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def equivalence(tmp_path_factory):
    out = tmp_path_factory.mktemp("equivalence")
    seed = random.SystemRandom().randrange(2**31)
    print(f"random seed {seed} (module fixture: rerun with it by editing here)")
    codes = _join(_launch("equivalence", {"seed": seed}, out), timeout=240)
    assert all(code == 0 for code in codes.values()), f"exit codes {codes}\n{_logs(out)}"
    reports = [json.loads(Path(out, f"report{r}.json").read_text()) for r in range(WORLD)]
    return seed, reports


def _simulated(method: str, spec: str, seed: int):
    """The simulated run the ranks' run of (method, spec) must follow."""
    prob = problems.synthetic(**SYNTHETIC)
    return marina.run(
        method=method, problem=prob, compressor=spec, iterations=ITERATIONS, seed=seed, log_every=1
    )


@pytest.mark.parametrize("name", RUNS)
def test_three_processes_follow_the_simulated_trajectory(equivalence, name):
    seed, reports = equivalence
    expected = _simulated(*RUNS[name], seed).history
    for report in reports:  # every rank holds the same history
        got = pd.DataFrame(report["runs"][name]["history"])
        assert got["iteration"].tolist() == expected["iteration"].tolist()
        rel = ((got["grad_norm_sq"] - expected["grad_norm_sq"]).abs() / expected["grad_norm_sq"]).max()
        assert rel <= 1e-10, f"seed {seed}, rank {report['rank']}: relative difference {rel}"
        for column in ("bits_up", "bits_down", "oracle_calls"):
            assert got[column].tolist() == expected[column].tolist(), (seed, column)
        # the wire counters are history columns too (cumulative, equal on every rank)
        assert got["wire_bytes"].iloc[-1] == report["runs"][name]["counters"]["wire_bytes"]


@pytest.mark.parametrize("name", RUNS)
def test_bytes_on_the_wire_are_the_packed_messages_in_one_collective(equivalence, name):
    seed, reports = equivalence
    method = RUNS[name][0]
    run = reports[0]["runs"][name]
    W, n = WORLD, SYNTHETIC["workers"]
    n_local = n // W
    d = SYNTHETIC["dim"]
    dense_msg = d * 4  # identity at float32: 4 bytes a value
    randk_bits = 3 * (32 + math.ceil(math.log2(d)))  # 114: not whole bytes
    randk_msg = math.ceil(randk_bits / 8)
    total = {"payload_bytes": 0, "size_bytes": 0, "padding_bytes": 0, "wire_bytes": 0}
    for ex in run["exchanges"]:
        msg = dense_msg if ex["stream"] == "dense" else randk_msg
        per_rank = ex["rank_bytes"]
        assert not ex["size_exchange"] and ex["size_bytes"] == 0  # sizes follow from (randk:3, d)
        if method not in PARTIAL or ex["stream"] == "dense":  # one message per worker
            # a rank's randk messages back to back at bit level: ceil(2 x 114 / 8) = 29 < 2 x 15
            rank = n_local * dense_msg if ex["stream"] == "dense" else math.ceil(n_local * randk_bits / 8)
            assert per_rank == [rank] * W and ex["padding_bytes"] == 0
            assert ex["payload_bytes"] == W * rank and ex["slots"] == n_local
            assert ex["messages"] == n
        else:  # PP-MARINA's multiplicities: each message byte aligned
            assert sum(per_rank) == ex["payload_bytes"] == ex["messages"] * msg
            assert all(b % msg == 0 for b in per_rank)
            assert ex["slots"] == max(per_rank) // msg  # the largest number of messages of a rank
        assert ex["padding_bytes"] == W * max(per_rank) - sum(per_rank)
        assert ex["wire_bytes"] == (W - 1) * (ex["size_bytes"] + ex["payload_bytes"] + ex["padding_bytes"])
        for key in total:
            total[key] += ex[key]
    for key, value in total.items():
        assert run["counters"][key] == value
    # the accounted bits are the packed sizes up to the last partial byte of each message
    assert (
        run["counters"]["bits_up"]
        <= 8 * run["counters"]["payload_bytes"]
        < run["counters"]["bits_up"] + 8 * sum(ex["messages"] for ex in run["exchanges"])
    )
    if method in PARTIAL:  # clients not drawn send nothing: some rank had no message at all
        assert any(0 in ex["rank_bytes"] for ex in run["exchanges"] if ex["stream"] != "dense")


@pytest.mark.parametrize("method", ["marina", "pp-marina"])
def test_seeded_bernoulli_on_three_processes_equals_the_simulation_in_one_collective(equivalence, method):
    seed, reports = equivalence
    sims = {spec: _simulated(method, spec, seed) for spec in ("bernoulli:0.3", "bernoulli:0.3:seeded")}
    for report in reports:
        runs = {spec: report["bernoulli"][f"{method} {spec}"] for spec in sims}
        for spec, sim in sims.items():  # bit for bit: x^k, every history column, the bits
            got, what = pd.DataFrame(runs[spec]["history"]), (seed, report["rank"], spec)
            assert torch.equal(torch.tensor(runs[spec]["x"], dtype=sim.x.dtype), sim.x), what
            for column in sim.history.columns.drop("time_s"):
                assert got[column].tolist() == sim.history[column].tolist(), (*what, column)
        plain, seeded = runs["bernoulli:0.3"]["exchanges"], runs["bernoulli:0.3:seeded"]["exchanges"]
        assert [(e["round"], e["stream"]) for e in plain] == [(e["round"], e["stream"]) for e in seeded]
        assert runs["bernoulli:0.3:seeded"]["counters"]["size_bytes"] == 0
        compressed = 0
        for a, b in zip(plain, seeded):
            assert not b["size_exchange"] and b["size_bytes"] == 0  # one collective: the payloads
            if a["stream"] == "dense":
                assert a == b
                continue
            compressed += 1
            assert a["size_exchange"] and a["size_bytes"] == WORLD * a["slots"] * SIZE_BYTES
            # by hand: a plain message is d x 4 + 1 bytes when sent (the flag rounds up to a
            # byte), 1 byte when not; the seeded one d x 4 or 0 bytes: one byte less each
            assert a["payload_bytes"] - b["payload_bytes"] == a["messages"] == b["messages"]
            assert b["payload_bytes"] % (SYNTHETIC["dim"] * 4) == 0
            assert b["wire_bytes"] == (WORLD - 1) * WORLD * max(1, *b["rank_bytes"])
        assert compressed > 0
        if method == "pp-marina":  # clients not drawn, or coins that say no: ranks with nothing
            assert any(0 in ex["rank_bytes"] for ex in seeded if ex["stream"] != "dense")


def test_a_resumed_run_continues_the_trajectory_and_the_wire_counters(equivalence):
    _, reports = equivalence
    for report in reports:
        whole, resumed = report["runs"]["marina"], report["resumed"]
        for column in ("iteration", "grad_norm_sq", "bits_up", "wire_bytes", "payload_bytes"):
            assert resumed["history"][column] == whole["history"][column], column
        for key in ("bits_up", "wire_bytes", "payload_bytes", "size_bytes", "padding_bytes"):
            assert resumed["counters"][key] == whole["counters"][key], key


def test_direct_aggregations_equal_the_simulation_and_predicted_bytes(equivalence):
    seed, reports = equivalence
    W, n, d = WORLD, SYNTHETIC["workers"], 17  # d as in _aggregations
    for report in reports:
        for row in report["aggregations"]:
            what = f"seed {seed}, rank {report['rank']}, {row['spec']} multiplicity {row['mult']}"
            assert row["equal_mean"] and row["equal_local"], what
            # one collective gives what today's two (sizes, then payloads) give, bit for bit
            assert row["equal_two"], what
            assert row["bits"] == row["sim_bits"], what
            predicted = row["predicted_rank_bytes"]
            assert row["logged"]["rank_bytes"] == predicted, what
            size = W * row["slots"] * SIZE_BYTES
            assert row["two_size"] == size and row["two_bits"] == row["aligned"], what
            # sizes vary for Bernoulli, and for PermK where n does not divide d (block sizes follow
            # the round's permutation); every other compressor's follow from (compressor, d)
            # bernoulli:q:seeded's sizes follow from the keyed coins, which every rank regenerates
            seeded = row["spec"].endswith(":seeded")
            varies = (row["spec"].startswith("bernoulli") and not seeded) or (
                row["spec"] == "permk" and d % n != 0
            )
            assert row["sizes_vary"] is varies, what
            assert row["logged"]["size_exchange"] is varies, what
            # ONE collective without a size exchange (two with it)
            assert row["collectives"] == (2 if varies else 1), what
            if not varies:
                size = 0
            # seeded Bernoulli: one byte a rank even when no coin says sent (failures stay visible)
            chunk = max(max(predicted), 1 if row["spec"].startswith("bernoulli") and seeded else 0)
            assert row["payload"] == sum(predicted), what
            assert row["size"] == size, what
            assert row["padding"] == W * chunk - sum(predicted), what
            assert row["wire"] == (W - 1) * (size + W * chunk), what
            if row["mult"] is None:  # in place where a sparsifier's entries are known, same bits
                assert row["equal_in_place"], what
                sparse = row["spec"].split(":")[0] in ("randk", "topk") and "+" not in row["spec"]
                want = [False, True, True, True, False, True, False, True, True] if sparse else [False] * 9
                assert row["in_place"] == want, what
    rows = reports[0]["aggregations"]
    assert {row["spec"] for row in rows} == set(ALL_SPECS)
    # bit-level packing saved bytes where one message per worker is not whole bytes: randk:2
    # at d = 17 sends 2 (32 + 5) = 74 bits, ceil(148 / 8) = 19 bytes a rank instead of 2 x 10
    randk2 = next(row for row in rows if row["spec"] == "randk:2" and row["mult"] is None)
    assert randk2["predicted_rank_bytes"] == [19] * W and randk2["aligned"] == 20 * W
    for row in rows:
        if row["mult"] is not None:  # the empty rank of each multiplicity really sent nothing
            assert row["predicted_rank_bytes"][1 if row["mult"] == EMPTY_RANKS[0] else 2] == 0


def test_a_failed_compression_stops_every_rank_alike_without_a_size_exchange(equivalence):
    _, reports = equivalence
    for report in reports:
        failures = report["failures"]
        seeded = [f"bernoulli:0.3:seeded{w}" for w in ("", " nobody", " rank 1 empty")]
        for spec in ("randk:2:seeded", "natural", "identity", *seeded):
            assert failures[f"nan {spec}"] == "ValueRangeError True", (report["rank"], spec)
            assert failures[f"range {spec}"] == "ValueRangeError False", (report["rank"], spec)
        assert failures["after"] == 17.0  # the mean of rows of ones, summed over d = 17


def test_direct_and_ring_exchanges_give_the_same_aggregate(equivalence):
    _, reports = equivalence
    for report in reports:
        # equal either way; one direct exchange up to the limit, none (the ring) above it
        assert report["large"] == {
            str(DIRECT_MAX_BYTES // 8): [True, 1],
            str(DIRECT_MAX_BYTES // 8 + 1): [True, 0],
        }


def test_the_link_model_times_the_all_gathers_of_the_ranks(equivalence):
    """W = 3 ranks of two workers: each aggregation sends the largest rank's padded bytes (plus
    TCP/IP headers) to the W - 1 others at 10 Mbit/s, in one step of 1 ms (a direct exchange of
    small chunks); no size exchange for randk."""
    _, reports = equivalence
    for report in reports:
        got, exchanges = report["link"]["link_time_s"], report["link"]["exchanges"]
        hand = 0.0
        for ex in exchanges:
            chunk = max(ex["rank_bytes"])
            if chunk:
                assert chunk <= 1 << 16  # small: one step
                hand += (WORLD - 1) * (chunk + math.ceil(chunk / 1448) * 66) * 8 / 1e7 + 1e-3
        assert got[-1] == pytest.approx(hand, rel=1e-9)
        assert got == reports[0]["link"]["link_time_s"]  # the same on every rank


def test_bad_configurations_fail_alike_on_every_rank(equivalence):
    _, reports = equivalence
    for report in reports:
        assert "workers == 4 is not divisible by the world size 3" in report["errors"]["indivisible"]
        assert "ranks [1, 2] were started with a different workers and seed" in report["errors"]["seed"]
        assert "the ranks start from different points x^0" in report["errors"]["x0"]


# -- faults ---------------------------------------------------------------------------------------------
def _start_long_cli_run(tmp_path: Path, timeout_s: float):
    out = tmp_path / "results"
    argv = [
        *CLI_SYNTHETIC,
        "--iterations",
        "100000000",
        "--timeout",
        str(timeout_s),
        "--checkpoint-every",
        "0",
        "--quiet",
        "--out",
        str(out),
    ]
    procs = _launch("cli", {"argv": argv}, tmp_path)
    deadline = time.monotonic() + 120
    while not list(out.glob("runs/*/run.json")):  # rank 0 has started the run
        assert time.monotonic() < deadline, _logs(tmp_path)
        assert all(p.is_alive() for p in procs.values()), _logs(tmp_path)
        time.sleep(0.1)
    time.sleep(1.5)  # mid-run
    assert all(p.is_alive() for p in procs.values()), _logs(tmp_path)
    return procs, out


def _wait_others(procs, victim: int, limit: float) -> tuple[float, dict[int, int]]:
    t0 = time.monotonic()
    others = {r: p for r, p in procs.items() if r != victim}
    for p in others.values():
        p.join(limit + 30)
    elapsed = time.monotonic() - t0
    codes = _join(procs, timeout=1)
    return elapsed, codes


def test_a_killed_rank_stops_the_others_with_a_clear_error(tmp_path):
    timeout_s = 6.0
    procs, out = _start_long_cli_run(tmp_path, timeout_s)
    os.kill(procs[1].pid, signal.SIGKILL)
    elapsed, codes = _wait_others(procs, 1, timeout_s)
    logs = _logs(tmp_path)
    assert elapsed <= timeout_s, f"took {elapsed:.1f} s\n{logs}"
    assert codes[0] == 2 and codes[2] == 2, f"{codes}\n{logs}"
    for rank in (0, 2):
        text = (tmp_path / f"rank{rank}.log").read_text()
        assert "marina run: error: torch-distributed: rank" in text, logs
        assert "Rank(s) [1] did not check in" in text, logs
        assert "collective timeout 6 s" in text, logs
    record = json.loads(next(out.glob("runs/*/run.json")).read_text())
    assert record["status"] == "failed" and "Rank(s) [1]" in record["message"]


def test_a_hung_rank_stops_the_others_within_the_timeout(tmp_path):
    timeout_s = 4.0
    procs, _ = _start_long_cli_run(tmp_path, timeout_s)
    os.kill(procs[2].pid, signal.SIGSTOP)
    try:
        elapsed, codes = _wait_others(procs, 2, timeout_s)
    finally:
        if procs[2].exitcode is None:  # still stopped
            procs[2].kill()
            procs[2].join()
    logs = _logs(tmp_path)
    grace = min(5.0, timeout_s / 2)
    assert timeout_s - 0.5 <= elapsed <= timeout_s + grace + 3.0, f"took {elapsed:.1f} s\n{logs}"
    assert codes[0] == 2 and codes[1] == 2, f"{codes}\n{logs}"
    for rank in (0, 1):
        text = (tmp_path / f"rank{rank}.log").read_text()
        assert "Rank(s) [2] did not check in" in text and "collective timeout 4 s" in text, logs


def test_a_missing_rank_fails_the_rendezvous_within_the_timeout(tmp_path):
    t0 = time.monotonic()
    codes = _join(_launch("join", {"timeout": 3.0}, tmp_path, ranks=[0, 1]), timeout=60)
    elapsed = time.monotonic() - t0
    logs = _logs(tmp_path)
    assert codes == {0: 1, 1: 1} and elapsed < 3.0 + 10.0, f"{codes} {elapsed:.1f} s\n{logs}"
    assert "rank 0 could not complete the rendezvous" in logs and "all 3 ranks" in logs, logs
    assert "rank 1 could not" in logs, logs


# -- launch configuration --------------------------------------------------------------------------------
def test_missing_environment_variables_are_named():
    with pytest.raises(
        ConfigError, match="RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT not set.*torchrun"
    ):
        launch_env({})
    with pytest.raises(ConfigError, match="MASTER_PORT not set"):
        launch_env({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"RANK": "3"}, "RANK == 3, must be < WORLD_SIZE == 3"),
        ({"WORLD_SIZE": "two"}, "WORLD_SIZE == 'two', must be an integer >= 1"),
        ({"LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "2"}, "LOCAL_RANK == 2, must be < LOCAL_WORLD_SIZE == 2"),
        ({"LOCAL_WORLD_SIZE": "4"}, r"LOCAL_WORLD_SIZE == 4, must be in \[1, 3\]"),
        ({"MASTER_PORT": "70000"}, r"MASTER_PORT == 70000, must be in \[1, 65535\]"),
    ],
)
def test_inconsistent_environment_is_explained(changes, message):
    env = rank_environ(1, 3, 29500, base={})
    env.update(changes)
    with pytest.raises(ConfigError, match=message):
        launch_env(env)


def test_worker_blocks():
    assert [list(worker_block(6, 3, r)) for r in range(3)] == [[0, 1], [2, 3], [4, 5]]
    with pytest.raises(ConfigError, match=r"workers == 5 is not divisible by the world size 3.*\[1, 5\]"):
        worker_block(5, 3, 0)
    with pytest.raises(ConfigError, match="workers == 2 is not divisible by the world size 4"):
        worker_block(2, 4, 0)


def test_cli_without_torchrun_environment(monkeypatch, capsys):
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    code = cli_main([*CLI_SYNTHETIC, "--iterations", "2"])
    assert code == 2
    err = capsys.readouterr().err
    assert "marina run: error: torch-distributed: environment variable(s) RANK, WORLD_SIZE" in err
    assert "torchrun --nproc-per-node" in err


# -- the documented launch ------------------------------------------------------------------------------
def test_torchrun_job_writes_the_results_of_marina_run(tmp_path):
    options = ["--problem", "mushrooms", "--workers", "3", "--method", "marina", "--compressor", "randk:2"]
    options += ["--iterations", "20", "--log-every", "1", "--seed", "5", "--quiet"]
    port = free_port()
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "3",
        "--master-addr",
        "127.0.0.1",
    ]
    cmd += ["--master-port", str(port), "-m", "marina", "run", "--backend", "torch-distributed"]
    cmd += [*options, "--out", str(tmp_path / "dist")]
    cmd += ["--checkpoint-every", "5"]
    assert cli_main(["run", *options, "--out", str(tmp_path / "sim")]) == 0
    (run_id,) = [r["run_id"] for r in json.loads((tmp_path / "sim" / "runs.json").read_text())]
    # a stray checkpoint of one rank only: the ranks disagree, so all of them start afresh
    stray = tmp_path / "dist" / "runs" / run_id / "checkpoint.rank1-of-3.pt"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"not a checkpoint")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "checkpoints disagree (rounds [-1, -2, -1]); starting afresh" in proc.stderr
    dist_df = pd.read_parquet(tmp_path / "dist" / "results.parquet")
    sim_df = pd.read_parquet(tmp_path / "sim" / "results.parquet")
    assert dist_df["run_id"].tolist() == sim_df["run_id"].tolist()
    rel = ((dist_df["grad_norm_sq"] - sim_df["grad_norm_sq"]).abs() / sim_df["grad_norm_sq"]).max()
    assert rel <= 1e-10
    assert dist_df["bits_up"].tolist() == sim_df["bits_up"].tolist()
    assert {"wire_bytes", "payload_bytes"} <= set(dist_df.columns)
    runs = json.loads((tmp_path / "dist" / "runs.json").read_text())
    assert [r["backend"] for r in runs] == ["torch-distributed"] and runs[0]["status"] == "finished"
    assert not list((tmp_path / "dist").glob("runs/*/checkpoint*"))
