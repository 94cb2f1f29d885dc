"""Methods defined outside the package (``marina.methods.register``): examples/custom_method.py as
the user types it, and a toy method in marina.run, sweeps, ``marina theory``/``plot`` and on 2 gloo
ranks (equal to the simulation)."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import marina
from marina import compressors, experiments, methods, plotting
from marina.cli import main as cli_main
from marina.errors import ConfigError
from marina.testing import free_port

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "tests" / "toy_method.py"


@pytest.fixture
def toy(monkeypatch):
    """The toy method registered from tests/toy_method.py through the environment variable."""
    monkeypatch.setenv(methods.PLUGINS_ENV, str(TOY))
    cls = methods.get("toy-cgd")
    yield cls
    methods.METHODS.pop("toy-cgd", None)
    methods._loaded_plugins.discard(str(TOY))


def test_the_example_as_typed_compares_ef14_with_marina(tmp_path):
    out = tmp_path / "results"
    cmd = [sys.executable, "examples/custom_method.py", "--out", str(out), "--iterations", "20"]
    env = {k: v for k, v in os.environ.items() if k != methods.PLUGINS_ENV}
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(env, OMP_NUM_THREADS="1"), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["method", "runs", "final", "||grad", "f||^2", "bits/n"]
    printed = {line.split()[0]: line.split()[1:] for line in lines[1:3]}
    assert set(printed) == {"EF14", "MARINA"} and all(v[0] == "2" for v in printed.values())
    df = experiments.results.load_results(out)
    last = df[df["iteration"] == 20]
    for method, label in (("ef14", "EF14"), ("marina", "MARINA")):
        rows = last[last["method"] == method]
        assert float(printed[label][1]) == pytest.approx(rows["grad_norm_sq"].mean(), rel=1e-4)
    # EF14 sends one randk:5 message per worker and round: K times its exact size
    d = int(marina.problems.get("phishing", workers=5).dim)
    bits = compressors.get("randk:5", workers=5).expected_bits(d)
    assert float(printed["EF14"][2]) == pytest.approx(20 * bits, rel=1e-4)
    assert lines[-1] == f"figure: {out}/ef14-vs-marina.png"
    assert (out / "ef14-vs-marina.png").stat().st_size > 0


def test_the_examples_ef14_is_gd_with_the_identity(seed):
    """C = identity: c_i = p_i, so e_i = 0 and x^{k+1} = x^k - gamma mean_i grad f_i(x^k) (GD; up to
    the float32 wire, which rounds gamma grad f_i in EF14 and grad f_i in GD)."""
    runpy.run_path(str(ROOT / "examples" / "custom_method.py"), run_name="custom_method")
    try:
        kw = {"problem": "phishing", "compressor": "identity", "workers": 3, "iterations": 6, "seed": seed}
        ef14 = marina.run(method="ef14", stepsize=0.5, **kw)
        gd = marina.run(method="gd", stepsize=0.5, **kw)
    finally:
        methods.METHODS.pop("ef14")
    assert ef14.status == "finished"
    expected = gd.history["grad_norm_sq"].tolist()
    assert ef14.history["grad_norm_sq"].tolist() == pytest.approx(expected, rel=1e-5)
    assert ef14.history["bits_up"].tolist() == gd.history["bits_up"].tolist()


def test_a_registered_method_runs_and_is_checked_like_the_built_in_ones(toy, seed):
    kw = {"problem": "phishing", "workers": 3, "iterations": 5, "seed": seed}
    res = marina.run(method="toy-cgd", compressor="identity", p=0.5, **kw)
    gd = marina.run(method="gd", compressor="identity", **kw)
    assert res.params["stepsize"] == pytest.approx(0.5 * gd.params["stepsize"])
    assert res.params["p"] == 0.5 and res.config["method"] == "toy-cgd"
    with pytest.raises(ConfigError, match="'topk:2' is biased; toy-cgd needs an unbiased compressor"):
        marina.run(method="toy-cgd", compressor="topk:2", **kw)
    with pytest.raises(ConfigError, match="toy-cgd: unknown parameter.*alpha"):
        marina.run(method="toy-cgd", compressor="identity", alpha=0.5, **kw)
    assert "toy-cgd" in marina.parameters.by_name("p").methods
    assert marina.parameters.of_method("toy-cgd") == ("stepsize", "stepsize_multiplier", "p")


def test_register_refuses_a_taken_name_and_unknown_parameters():
    class Clash(methods.Method):
        name = "marina"

    class Unknown(methods.Method):
        name = "toy-unknown"
        takes = ("gamma2",)

    with pytest.raises(ConfigError, match="'marina' is already registered"):
        methods.register(Clash)
    with pytest.raises(ConfigError, match="unknown parameter 'gamma2'"):
        methods.register(Unknown)
    with pytest.raises(ConfigError, match="must be a subclass"):
        methods.register(object)


def test_a_registered_method_in_a_sweep_theory_and_plot(toy, tmp_path, seed, capsys):
    spec = experiments.parse_sweep(
        {"problems": "phishing", "workers": 3, "iterations": 4, "seeds": seed, "compressors": "identity"}
        | {"grid": [{"methods": "toy-cgd", "p": 0.5}, {"methods": "gd"}]}
    )
    configs = experiments.validate(experiments.expand(spec))
    experiments.run_sweep(configs, tmp_path / "out", quiet=True)
    df = experiments.results.load_results(tmp_path / "out")
    assert sorted(df["method"].unique()) == ["gd", "toy-cgd"]
    labels = [c.label for c in plotting.curves(df)]
    assert labels[0].startswith("Toy CGD") and labels[1].startswith("GD")  # its label, its plot_order
    assert cli_main(["plot", str(tmp_path / "out"), "-o", str(tmp_path / "toy.png")]) == 0
    assert (tmp_path / "toy.png").stat().st_size > 0
    # marina theory: the toy's row (p = 1 by default: GD's stepsize) predicts GD's rounds
    capsys.readouterr()
    argv = ["theory", "--problem", "phishing", "--workers", "3", "--compressor", "identity", "--eps", "0.01"]
    assert cli_main([*argv, "--json"]) == 0
    t = json.loads(capsys.readouterr().out)
    rows = {r["label"]: r for r in t["methods"]}
    assert rows["toy-cgd"]["rounds"] == rows["gd"]["rounds"]
    assert rows["toy-cgd"]["stepsize"] == rows["gd"]["stepsize"]
    assert [r["label"] for r in t["methods"]][-1] == "toy-cgd"  # its declared order comes last


def test_a_registered_method_on_two_gloo_ranks_equals_the_simulation(toy, tmp_path, seed):
    options = ["--problem", "phishing", "--workers", "4", "--method", "toy-cgd", "--compressor", "randk:3"]
    options += ["--iterations", "6", "--seed", str(seed), "--quiet"]
    assert cli_main(["run", *options, "--out", str(tmp_path / "sim")]) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    cmd += ["--master-addr", "127.0.0.1"]
    cmd += ["--master-port", str(free_port()), "-m", "marina", "run", "--backend", "torch-distributed"]
    cmd += [*options, "--out", str(tmp_path / "dist")]
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    dist = pd.read_parquet(tmp_path / "dist" / "results.parquet")
    sim = pd.read_parquet(tmp_path / "sim" / "results.parquet")
    assert dist["run_id"].tolist() == sim["run_id"].tolist() and len(sim) == 7
    rel = ((dist["grad_norm_sq"] - sim["grad_norm_sq"]).abs() / sim["grad_norm_sq"]).max()
    assert rel <= 1e-10
    assert dist["bits_up"].tolist() == sim["bits_up"].tolist()
    (record,) = json.loads((tmp_path / "dist" / "runs.json").read_text())
    assert set(dist["method"]) == {"toy-cgd"} and record["backend"] == "torch-distributed"


def test_the_compressor_rule_is_one_method_answer_in_every_entry_point():
    """marina.run, sweep validation and marina theory ask Method.accepts; the message is its answer."""
    topk = compressors.get("topk:2")
    reason = methods.MARINA.accepts(topk)
    assert reason.startswith("'topk:2' is biased; marina needs an unbiased compressor")
    assert methods.EF21.accepts(topk) is None and methods.DASHA.accepts(compressors.get("sign")) is not None
    with pytest.raises(ConfigError) as run_err:
        marina.run(method="marina", problem="phishing", compressor="topk:2", workers=3, iterations=2)
    assert str(run_err.value) == f"compressor {reason}"
    spec = experiments.parse_sweep(
        {"problems": "phishing", "workers": 3, "iterations": 2, "methods": "marina", "compressors": "topk:2"}
    )
    with pytest.raises(ConfigError) as sweep_err:
        experiments.validate(experiments.expand(spec))
    assert str(sweep_err.value) == f"sweep: compressors = {reason}"  # where, key, the answer
