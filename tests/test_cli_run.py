"""`marina run`, `marina theory`, progress bars, and configuration errors at the command line."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
import types

import pandas as pd
import pytest

import marina
from marina import compressors, problems, theory
from marina.cli import main
from marina.experiments import results
from marina.progress import ProgressDisplay

NON_TIME = [c for c in results.HISTORY_COLUMNS if c not in results.TIME_COLUMNS]
TINY = ["--problem", "synthetic", "--workers", "3"]


def test_run_writes_results_equal_to_marina_run(tmp_path, capsys):
    out = tmp_path / "out"
    args = [
        "run",
        *TINY,
        "--threads",
        "1",
        "--method",
        "marina",
        "--compressor",
        "randk:2",
        "--iterations",
        "50",
        "--seed",
        "1",
    ]
    assert main([*args, "--p", "0.3", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "finished: marina: 50 rounds finished" in printed and f"written to {out}" in printed
    df = pd.read_parquet(out / "results.parquet")
    direct = marina.run(
        method="marina", compressor="randk:2", problem="synthetic", workers=3, iterations=50, seed=1, p=0.3
    )
    assert len(df) == 51  # log_every defaults to max(1, iterations // 200)
    pd.testing.assert_frame_equal(df[NON_TIME], direct.history[NON_TIME])
    row = df.iloc[0]
    assert (row.problem, row.workers, row.method, row.compressor, row.seed, row.p) == (
        "synthetic",
        3,
        "marina",
        "randk:2",
        1,
        0.3,
    )
    assert df.m.eq(20.0).all()
    (record,) = json.loads((out / "runs.json").read_text())
    assert record["status"] == "finished" and record["params"]["p"] == 0.3
    assert record["params"]["stepsize"] == pytest.approx(direct.params["stepsize"], rel=1e-15)
    assert record["backend"] == "simulated" and record["device"] == "cpu"

    # the same command again does not run again; --force does
    before = results.read_run_record(out, record["run_id"])
    assert main([*args, "--p", "0.3", "--out", str(out), "--quiet"]) == 0
    assert "already holds this run" in capsys.readouterr().out
    assert results.read_run_record(out, record["run_id"]) == before
    assert main([*args, "--p", "0.3", "--out", str(out), "--quiet", "--force"]) == 0
    assert results.read_run_record(out, record["run_id"])["started_at"] != before["started_at"]
    # another configuration adds to the same directory
    assert main([*args[:-2], "--seed", "2", "--out", str(out), "--quiet"]) == 0
    assert sorted(pd.read_parquet(out / "results.parquet").groupby("run_id").seed.first()) == [1, 2]


def test_run_without_out_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", *TINY, "--method", "gd", "--iterations", "5", "--quiet"]) == 0
    assert "round 5: |grad f|^2 = " in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_theory_matches_marina_theory(capsys):
    assert main(["theory", *TINY, "--compressor", "randk:2", "--eps", "0.01", "--json"]) == 0
    t = json.loads(capsys.readouterr().out)
    prob = problems.get("synthetic", workers=3)
    d = 10
    # hand values for randk:2 on d = 10: omega = d/K - 1, zeta = K, K (32 + ceil(log2 10)) bits
    assert (t["d"], t["omega"], t["zeta"], t["message_bits"]) == (d, 4.0, 2.0, 2 * (32 + 4))
    assert t["L"] == pytest.approx(prob.L, rel=1e-12) and t["L_f"] == pytest.approx(prob.L_f, rel=1e-12)
    assert t["L_max"] == pytest.approx(float(prob.L_i.max()), rel=1e-12)
    f0 = prob.loss(prob.initial_point())
    assert t["delta0"] == pytest.approx(f0 + prob.nonconvexity * d, rel=1e-12)  # f >= -c d
    rows = {r["label"]: r for r in t["methods"]}
    assert rows["marina"]["p"] == pytest.approx(2 / d)  # zeta_Q / d
    assert rows["diana"]["alpha"] == pytest.approx(1 / 5)  # 1 / (1 + omega)
    assert rows["pp-marina"]["clients"] == 2  # ceil(n / 2)
    for label, name, kwargs in [
        ("gd", "gd", {}),
        ("qgd", "qgd", {}),
        ("diana", "diana", {}),
        ("vr-diana", "vr-diana", {"batch_size": 1}),
        ("marina", "marina", {}),
        ("vr-marina", "vr-marina", {"batch_size": 1}),
        ("vr-marina online", "vr-marina-online", {"batch_size": 1, "dense_batch_size": 10}),
        ("pp-marina", "pp-marina", {"clients": 2}),
    ]:
        expected = theory.predict(
            name,
            eps=0.01,
            delta0=f0 + prob.nonconvexity * d,
            d=d,
            n=3,
            m=20,
            L=prob.L,
            L_f=prob.L_f,
            L_max=float(prob.L_i.max()),
            L_avg=prob.L_avg,
            omega=4.0,
            zeta=2.0,
            message_bits=72,
            wire_bits=32,
            **kwargs,
        )
        got = rows[label]
        assert got["rounds"] == expected.rounds, label
        for key in ("stepsize", "bits_per_worker", "oracle_calls"):
            assert got[key] == pytest.approx(getattr(expected, key), rel=1e-12), (label, key)
    assert main(["theory", *TINY, "--compressor", "randk:2", "--eps", "0.01"]) == 0
    table = capsys.readouterr().out
    assert "omega = 4, zeta_Q = 2, 72 bits per message (exact" in table
    assert f"{rows['marina']['rounds']:.4g}" in table


def test_theory_gives_the_expected_bits_of_variable_size_compressors(capsys):
    assert main(["theory", *TINY, "--compressor", "bernoulli:0.5", "--json"]) == 0
    t = json.loads(capsys.readouterr().out)
    assert t["message_bits_measured"] is False
    assert t["message_bits"] == 1 + 0.5 * 10 * 32  # the flag, and d values half of the time
    assert compressors.get("bernoulli:0.5").omega(10) == t["omega"] == 1.0
    rows = {r["label"]: r for r in t["methods"]}
    # both choices of p: zeta_Q/d = q and bits = (1 + q d w)/(d w)
    assert rows["marina"]["p"] == 0.5 and rows["marina bits"]["p"] == pytest.approx(161 / 320)
    assert rows["marina bits"]["bits_per_worker"] > 0 and rows["marina bits"]["rounds"] >= 1


def test_theory_refuses_pp_marina_with_permk_and_shows_the_ab_constants(capsys):
    assert main(["theory", *TINY, "--compressor", "permk", "--json"]) == 0
    t = json.loads(capsys.readouterr().out)
    assert t["correlated"] and t["ab"] == [1.0, 1.0] and t["omega_eff"] == t["workers"]
    rows = {r["label"]: r for r in t["methods"]}
    assert "correlated" in rows["pp-marina"]["refused"]
    assert rows["marina"]["stepsize"] == pytest.approx(
        1 / (t["L_f"] + math.sqrt((1 - rows["marina"]["p"]) / rows["marina"]["p"]) * t["L_pm"])
    )


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bars_draw_on_terminals_only():
    term = FakeTerminal()
    display = ProgressDisplay(stream=term, min_interval=0.0)
    assert display.enabled
    display.set_header("sweep", 4, done=1)
    display.add("a", "a9a n=5 marina randk:1 seed=0", 100)
    callback = display.callback("a")
    callback({"iteration": 0, "grad_norm_sq": 0.5}, 100)
    callback({"iteration": 50, "grad_norm_sq": 0.01}, 100)
    text = term.getvalue()
    assert "sweep [" in text and "1/4 runs" in text
    assert "50/100 rounds" in text and "rounds/s" in text and "|grad f|^2 1.000e-02" in text
    assert "[###############...............]" in text or "#" * 10 in text
    display.message("diverged: something")
    display.close()
    assert term.getvalue().endswith("\x1b[J") or "\x1b[" in term.getvalue().rsplit("diverged", 1)[1]

    plain = io.StringIO()  # not a terminal (nohup, SLURM): plain lines, no escape codes
    display = ProgressDisplay(stream=plain, line_interval=0.0)
    assert display.mode == "lines"
    display.set_header("sweep", 2)
    display.add("a", "x", 10)
    display.update("a", 0, 0.5)
    display.update("a", 5, 0.1)
    display.message("note")
    display.remove("a")
    display.advance_header()
    display.close()
    lines = plain.getvalue().splitlines()
    assert lines[0] == "x: 0/10 rounds, |grad f|^2 5.000e-01"
    assert lines[1].startswith("x: 5/10 rounds, ") and lines[1].endswith("rounds/s, |grad f|^2 1.000e-01")
    assert lines[2] == "note" and lines[3].startswith("sweep: 1/2 runs, 0:00:0")
    assert "\x1b" not in plain.getvalue()

    slow = io.StringIO()  # one line per run every line_interval seconds at most
    display = ProgressDisplay(stream=slow, line_interval=60.0)
    display.add("a", "x", 10)
    for k in range(10):
        display.update("a", k, 1.0)
    assert slow.getvalue() == ""

    quiet = io.StringIO()
    display = ProgressDisplay(stream=quiet, enabled=False)
    assert not display.enabled and display.mode == "off"
    display.add("a", "x", 10)
    display.update("a", 5, 0.1)
    display.message("note")
    assert quiet.getvalue() == "note\n"


def test_progress_uses_tqdm_in_notebooks(monkeypatch):
    pytest.importorskip("tqdm")
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    out = io.StringIO()
    display = ProgressDisplay(stream=out)
    assert display.mode == "tqdm"
    display.add("a", "a9a marina", 100)
    display.update("a", 40, 0.25)
    assert display._tqdm["a"].n == 40
    display.remove("a")
    display.close()
    assert "a9a marina" in out.getvalue()


# -- configuration errors: one line on stderr, exit status 2, no traceback -----------------------
BAD_TOML = """
problems = "synthetic"
workers = 3
iterations = 10
methods = "marina"
compressors = "randk:1"
stepsizes = 0.1
"""


def test_bad_configurations_in_a_subprocess(tmp_path):
    (tmp_path / "bad.toml").write_text(BAD_TOML)
    marina_cli = [sys.executable, "-m", "marina"]
    cases = [
        (
            ["run", *TINY, "--compressor", "randk:11"],
            "--compressor = 'randk:11' on synthetic: randk:11: K == 11 exceeds the dimension d == 10, "
            "must be <= d",
        ),
        (
            ["sweep", str(tmp_path / "bad.toml"), "--out", str(tmp_path / "o")],
            "bad.toml: unknown key 'stepsizes'; allowed: problems,",
        ),
        (
            ["plot", str(tmp_path / "missing")],
            f"results directory {str(tmp_path / 'missing')!r} does not exist",
        ),
    ]
    procs = [
        subprocess.Popen([*marina_cli, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for args, _ in cases
    ]
    for proc, (args, message) in zip(procs, cases):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, (args, err)
        assert "Traceback" not in err and out == ""
        assert err.startswith(f"marina {args[0]}: error: {message}"), err
        assert err.count("\n") == 1
    assert not (tmp_path / "o").exists()  # nothing ran


@pytest.mark.parametrize(
    "args,message",
    [
        (["--iterations", "0"], "--iterations = 0, must be >= 1"),
        (["--stepsize", "-0.5"], "marina: stepsize == -0.5, must be a finite number > 0"),
        (["--method", "pp-marina", "--clients", "4"], "pp-marina: clients == 4, must be in [1, 3]"),
        (["--method", "diana", "--alpha", "0"], "diana: alpha == 0.0, must be in (0, 1]"),
        (["--method", "vr-marina", "--batch-size", "21"], "vr-marina: batch_size == 21, must be in [1, 20]"),
        (
            ["--method", "gd", "--p", "0.5"],
            "--p = 0.5 is not a parameter of gd (it takes: stepsize, stepsize_multiplier)",
        ),
        (
            ["--stepsize", "0.1", "--stepsize-multiplier", "2"],
            "give stepsize or stepsize_multiplier, not both",
        ),
        (["--workers", "0"], "--workers = 0, must be >= 1"),
        (["--p", "1.5"], "marina: p == 1.5, must be in (0, 1]"),
        (["--method", "sgd"], "--method = 'sgd': unknown method; allowed: gd, qgd, diana, vr-diana, marina,"),
        (["--problem", "nope.svm"], "--problem = 'nope.svm': data set 'nope.svm': no such file"),
    ],
)
def test_bad_run_options(tmp_path, capsys, args, message):
    base = {"--problem": "synthetic", "--workers": "3"}
    given = dict(zip(args[::2], args[1::2]))
    argv = (
        ["run"] + [x for k, v in {**base, **given}.items() for x in (k, v)] + ["--out", str(tmp_path / "o")]
    )
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("marina run: error: ") and message in err, err
    assert not (tmp_path / "o").exists()


def test_bad_plot_requests(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", *TINY, "--method", "gd", "--iterations", "3", "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["plot", str(out), "--y", "accuracy"]) == 2
    err = capsys.readouterr().err
    expected = (
        "--y 'accuracy' is not a numeric history column of these results; available: grad_norm_sq, loss,"
    )
    assert expected in err
    assert main(["plot", str(out), "-o", str(tmp_path / "f.jpeg")]) == 2
    assert "unknown figure format '.jpeg'; allowed: .png, .pdf, .svg" in capsys.readouterr().err
    assert main(["plot", str(out), "--method", "marina"]) == 2
    assert "--method 'marina' is not in these results; available: gd" in capsys.readouterr().err
    assert math.isfinite(pd.read_parquet(out / "results.parquet").grad_norm_sq.iloc[-1])


def test_ctrl_c_says_round_checkpoint_and_the_command_that_resumes(tmp_path):
    """SIGINT to `marina run --out DIR` after its first checkpoint: exit 130 and a message with the
    round reached, the round and path of the checkpoint on disk (read back from the file), and
    the command line itself as the one that resumes."""
    import os
    import shlex
    import signal
    import time

    import torch

    out = tmp_path / "out dir"  # a space: the printed command must quote it
    argv = ["run", *TINY, "--iterations", "100000000", "--log-every", "10", "--checkpoint-every", "20"]
    argv += ["--threads", "1", "--out", str(out)]
    # Ctrl-C raises KeyboardInterrupt even where this test runs with SIGINT ignored (a background job)
    start = (
        "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); import marina.cli; "
    )
    start += "sys.exit(marina.cli.main())"
    proc = subprocess.Popen(
        [sys.executable, "-c", start, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob("runs/*/checkpoint.pt")):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    (ckpt,) = out.glob("runs/*/checkpoint.pt")
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)["method_state"]["k"]
    last = err.strip().splitlines()[-2:]
    head = "marina run: interrupted at round "
    assert last[0].startswith(head) and "Traceback" not in err, err
    reached = int(last[0][len(head) :].split()[0])
    assert saved % 20 == 0 and 20 <= saved <= reached, err
    assert last[0] == f"{head}{reached} of 100000000; checkpoint of round {saved} in {os.fspath(ckpt)}"
    assert last[1] == "resume with the same command: " + shlex.join(["marina", *argv])
    assert shlex.split(last[1].split(": ", 1)[1]) == ["marina", *argv]


def test_the_first_line_comes_before_the_data_is_loaded(monkeypatch, capsys):
    """`marina run` on a terminal names what it loads on stderr before it loads the problem (so
    the screen is not blank while torch and the data set load); not in pipes and logs, where
    errors stay one line."""
    import marina.cli.run
    from marina.experiments import loading

    assert main(["run", *TINY, "--iterations", "5"]) == 0
    assert "loading" not in capsys.readouterr().err  # stderr is no terminal here
    monkeypatch.setattr(marina.cli.run, "terminal_enabled", lambda stream, quiet=False: not quiet)

    seen: list[str] = []
    original = loading.load_problem

    def load_problem(*args, **kwargs):
        seen.append(capsys.readouterr().err)
        return original(*args, **kwargs)

    monkeypatch.setattr(loading, "load_problem", load_problem)
    assert main(["run", *TINY, "--iterations", "5", "--method", "diana", "--compressor", "randk:2"]) == 0
    assert seen and seen[0] == "marina run: loading synthetic (n = 3, diana, randk:2) ...\n"
