"""--json outputs, exit statuses (0, 1, 2, 3) and a fast `marina --version` / `--help`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from marina.cli import COMMANDS, build_parser, main

SRC = str(Path(__file__).resolve().parents[1] / "src")
TINY = ["--problem", "synthetic", "--workers", "3", "--iterations", "30", "--quiet"]
DIVERGING = ["--compressor", "randk:3", "--workers", "5", "--stepsize", "1000", "--log-every", "2"]


def run_json(capsys, *argv: str) -> tuple[int, object]:
    code = main(list(argv))
    return code, json.loads(capsys.readouterr().out)


def test_run_json_holds_the_documented_keys(tmp_path, capsys):
    code, obj = run_json(capsys, "run", *TINY, "--out", str(tmp_path), "--json")
    assert code == 0
    keys = {"run_id", "status", "message", "config", "params", "final", "out", "skipped", "exit_code"}
    assert set(obj) == keys
    assert obj["status"] == "finished" and obj["exit_code"] == 0 and obj["skipped"] is False
    assert obj["config"]["problem"] == "synthetic" and obj["config"]["iterations"] == 30
    assert obj["params"]["stepsize"] > 0 and obj["final"]["iteration"] == 30
    assert (tmp_path / "runs" / obj["run_id"] / "run.json").is_file()
    code, again = run_json(capsys, "run", *TINY, "--out", str(tmp_path), "--json")
    assert code == 0 and again["skipped"] is True and again["run_id"] == obj["run_id"]


def test_a_diverged_run_exits_3_with_a_cli_hint(capsys):
    code = main(["run", "--problem", "synthetic", "--iterations", "500", "--quiet", *DIVERGING])
    out = capsys.readouterr().out
    assert code == 3 and out.startswith("diverged: ")
    assert "--stepsize-multiplier 0.5 or --stepsize 500" in out and "stepsize_multiplier=" not in out
    code, obj = run_json(
        capsys, "run", "--problem", "synthetic", "--iterations", "500", "--quiet", *DIVERGING, "--json"
    )
    assert code == 3 and obj["status"] == "diverged" and obj["exit_code"] == 3


def test_bad_input_exits_2_with_one_line(capsys):
    assert main(["run", *TINY, "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("marina run: error: --workers")
    assert main(["run", *TINY, "--log", "comet"]) == 2
    assert "--log 'comet': unknown tracker; allowed: tensorboard, mlflow, wandb" in capsys.readouterr().err
    assert main(["sweep", "nowhere.toml", "--out", "x", "--shard", "3/2"]) == 2
    assert "--shard '3/2', must be I/N with integers 1 <= I <= N" in capsys.readouterr().err


def test_sweep_with_diverged_runs_exits_3_with_a_summary(tmp_path, capsys):
    (tmp_path / "d.toml").write_text(
        'problems = "synthetic"\nworkers = 5\niterations = 200\nlog_every = 2\nmethods = "marina"\n'
        'compressors = "randk:3"\nstepsize = [0.01, 1000.0]\n'
    )
    code = main(["sweep", str(tmp_path / "d.toml"), "--out", str(tmp_path / "out"), "--quiet"])
    captured = capsys.readouterr()
    assert code == 3
    assert "2 of 2 runs complete, 1 diverged" in captured.out
    assert "diverged: " in captured.err and "stepsize=1000" in captured.err


def test_sweep_dry_run_json(tmp_path, capsys):
    (tmp_path / "s.toml").write_text(
        'problems = "synthetic"\nworkers = 3\niterations = 10\nmethods = ["marina", "diana"]\n'
        'compressors = "randk:1"\nseeds = [0, 1]\n'
    )
    code, obj = run_json(
        capsys, "sweep", str(tmp_path / "s.toml"), "--out", str(tmp_path / "o"), "--dry-run", "--json"
    )
    assert code == 0
    assert {"sweep", "dir", "shard", "total", "done", "missing", "runs"} <= set(obj)
    assert obj["total"] == obj["missing"] == 4 and obj["done"] == 0 and obj["shard"] is None
    assert {"run_id", "status", "description", "config"} == set(obj["runs"][0])
    code, half = run_json(
        capsys,
        "sweep",
        str(tmp_path / "s.toml"),
        "--out",
        str(tmp_path / "o"),
        "--dry-run",
        "--json",
        "--shard",
        "2/2",
    )
    assert half["shard"] == [2, 2] and half["total"] == 2
    assert {r["run_id"] for r in half["runs"]} < {r["run_id"] for r in obj["runs"]}


def test_datasets_and_compress_json(capsys):
    code, table = run_json(capsys, "datasets", "--json")
    assert code == 0 and {"a9a", "mushrooms"} <= {r["name"] for r in table}
    assert set(table[0]) == {"name", "rows", "features", "labels", "density", "bytes"}
    assert 0 < table[0]["density"] <= 1
    code, split = run_json(capsys, "datasets", "mushrooms", "--workers", "4", "--json")
    assert split["workers"] == 4 and len(split["shards"]) == 4
    assert sum(s["rows"] for s in split["shards"]) == split["kept"]
    code, c = run_json(capsys, "compress", "randk:5", "--dim", "100", "--workers", "3", "--json")
    assert code == 0 and c["omega"] == 19.0 and len(c["per_worker"]) == 3
    assert c["total_bits"] == sum(w["bits"] for w in c["per_worker"])
    code, listing = run_json(capsys, "compress", "--list", "--json")
    assert "randk:K" in {r["spec"] for r in listing}


def test_version_and_help_are_fast_and_do_not_import_torch():
    env = {**os.environ, "PYTHONPATH": SRC}
    probe = (
        "import sys, runpy\n"
        "sys.argv = ['marina', sys.argv[1]]\n"
        "try:\n    runpy.run_module('marina', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n"
    )
    for flag in ("--version", "--help"):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", probe, flag], env=env, capture_output=True, text=True)
        elapsed = time.perf_counter() - t0
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip().endswith("NO-TORCH"), out.stdout
        assert elapsed < 5.0  # typically 0.1 s; torch alone takes seconds (generous on a busy machine)


def test_top_level_help_lists_every_command_with_its_own_help():
    parser = build_parser()  # every subcommand registered: their help is the table's
    sub = next(a for a in parser._actions if a.dest == "command")
    assert [c.dest for c in sub._choices_actions] == list(COMMANDS)
    assert {c.dest: c.help for c in sub._choices_actions} == COMMANDS


def test_problem_help_lists_every_accepted_form(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for form in ("a9a", "mushrooms", "LibSVM file path", "fashion-mnist", "cifar100", "synthetic"):
        assert form in text
