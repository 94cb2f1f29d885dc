"""Issue 17 fuzz: randomly corrupted LibSVM files and sweep files end with exit status 2 and one
line naming the problem (never a traceback); randomly damaged per-run files of a results
directory are reported by path as one-line warnings and never stop a command. Every corruption
is drawn from keyed randomness (:class:`marina.rng.Randomness`, stream per kind, round = case)."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

from marina import memory
from marina.cli import main
from marina.rng import Randomness

CASES = 200


class Pick:
    """Keyed choices for one fuzz case."""

    def __init__(self, kind: str, case: int) -> None:
        self.rng = Randomness(17, f"fuzz-{kind}", case, [0])

    def int(self, high: int) -> int:
        return int(self.rng.integers(high, 1)[0, 0])

    def of(self, options):
        return options[self.int(len(options))]


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    try:
        rc = main(list(argv))
    except SystemExit as exc:  # argparse
        rc = exc.code
    _, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return rc, err


# -- LibSVM files -----------------------------------------------------------------------------------
GOOD = [b"1 1:0.5 3:0.25", b"-1 2:1 4:0.5", b"1 1:1 2:2 5:0.125", b"-1 3:0.5", b"1 4:2", b"-1 1:0.75 5:1"]
BAD_VALUES = [b"nan", b"inf", b"-inf", b"1e308", b"-1e40", b"abc", b"", b"0x1p", b"1..2"]
BAD_INDICES = [b"-1", b"abc", b"1000000000", b"0.5", b""]
BAD_LABELS = [b"x", b"nan", b"inf", b"-1e999", b"1:2"]


def corrupt_libsvm(pick: Pick) -> tuple[str, bytes]:
    """(file suffix, contents) of a LibSVM file that is certainly invalid."""
    lines = list(GOOD)
    r = pick.int(len(lines))
    tokens = lines[r].split()
    kind = pick.int(9)
    if kind == 0:  # a feature value
        t = 1 + pick.int(len(tokens) - 1)
        tokens[t] = tokens[t].split(b":")[0] + b":" + pick.of(BAD_VALUES)
    elif kind == 1:  # a feature index
        t = 1 + pick.int(len(tokens) - 1)
        tokens[t] = pick.of(BAD_INDICES) + b":" + tokens[t].split(b":")[1]
    elif kind == 2:  # the label
        tokens[0] = pick.of(BAD_LABELS)
    elif kind == 3:  # a token without its colon
        t = 1 + pick.int(len(tokens) - 1)
        tokens[t] = tokens[t].replace(b":", b" ", 1) if pick.int(2) else tokens[t].replace(b":", b"")
        if tokens[t].count(b" ") or tokens[t].isdigit():  # "3 0.25": 0.25 is no index:value
            tokens[t] = tokens[t].replace(b" ", b"") + b"x"
    elif kind == 4:  # indices not increasing
        tokens = [tokens[0], b"4:1", b"2:1"]
    elif kind == 5:  # one label value only
        lines = [b"1" + line[line.index(b" ") :] for line in lines]
    elif kind == 6:  # no data rows
        return ".svm", b"" if pick.int(2) else b"# only a comment\n\n"
    elif kind == 7:  # binary garbage line (starting with a letter: never a label)
        garbage = bytes(pick.int(256) for _ in range(1 + pick.int(40)))
        lines.insert(r, b"Z" + garbage.replace(b"\n", b"").replace(b"\r", b""))
    else:  # a truncated gzip file
        data = gzip.compress(b"\n".join(lines) + b"\n")
        return ".svm.gz", data[: 10 + pick.int(len(data) - 14)]
    if kind not in (5, 7):
        lines[r] = b" ".join(tokens)
    return ".svm", b"\n".join(lines) + b"\n"


def test_fuzz_libsvm_files(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(memory.ENV_VAR, "1G")  # an index of 10^9 is then absurd on any machine
    good = tmp_path / "good.svm"
    good.write_bytes(b"\n".join(GOOD) + b"\n")
    assert run_cli(capsys, "theory", "--problem", str(good), "--workers", "2")[0] == 0
    for case in range(CASES):
        suffix, data = corrupt_libsvm(Pick("libsvm", case))
        f = tmp_path / f"case{case}{suffix}"
        f.write_bytes(data)
        command = ["theory"] if case % 2 else ["run", "--iterations", "2", "--quiet"]
        rc, err = run_cli(capsys, *command, "--problem", str(f), "--workers", "1")
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and str(f) in lines[0], (case, data, err)


# -- sweep files ------------------------------------------------------------------------------------
SWEEP = """name = "fuzz"
problems = "synthetic"
workers = 2
seeds = [0, 1]
iterations = 5
[[grid]]
methods = "marina"
p = [0.5, 1.0]
compressors = "randk:1"
"""
BAD = {
    "workers": ["0", "-1", '"2"', "2.5", "true", "[]"],
    "seeds": ["-1", '"a"', "[0, 1.5]", "{}"],
    "iterations": ["0", '"20"', "-5", "1.5", "nan"],
    "p": ["0", "1.5", '"0.5"', "true", "-0.1", "nan", "inf", '[0.5, "0.5"]'],
    "methods": ['"nope"', "3", '""', "[]"],
    "compressors": ['"randk:0"', '"randk:x"', '"zz"', '"topk:1"', '"randk:1000"'],
    "problems": ['"/nonexistent/file"', '"."', "1"],
    "name": ["[1, 2]"],
}


def corrupt_sweep(pick: Pick, tmp_path: Path) -> bytes:
    text = SWEEP
    kind = pick.int(5)
    if kind == 0:  # truncated: the last line (a required key) is always cut or lost
        return text.encode()[: pick.int(len(text) - 3)]
    if kind == 1:  # one value made wrong
        key = pick.of(list(BAD))
        lines = text.splitlines()
        i = next(i for i, line in enumerate(lines) if line.startswith(f"{key} ="))
        lines[i] = f"{key} = {pick.of(BAD[key])}"
        return ("\n".join(lines) + "\n").encode()
    if kind == 2:  # a key no sweep has, or one a method does not take
        return (text + pick.of(["foo = 1\n", "alpha = 0.5\n", "stepsize = -1\n", "online = 3\n"])).encode()
    if kind == 3:  # bytes that are not UTF-8, or not TOML
        garbage = bytes(128 + pick.int(128) for _ in range(1 + pick.int(20)))
        return garbage if pick.int(2) else text.encode().replace(b"[[grid]]", b"[[grid]")
    return text.replace('"synthetic"', f'"{tmp_path}"').encode()  # a directory as the problem


def test_fuzz_sweep_files(tmp_path, capsys):
    good = tmp_path / "good.toml"
    good.write_text(SWEEP)
    out = str(tmp_path / "D")
    assert run_cli(capsys, "sweep", str(good), "--out", out, "--dry-run")[0] == 0
    for case in range(CASES):
        f = tmp_path / f"case{case}.toml"
        f.write_bytes(corrupt_sweep(Pick("sweep", case), tmp_path))
        rc, err = run_cli(capsys, "sweep", str(f), "--out", out, "--dry-run")
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("marina sweep: error:"), (case, err)
    rc, err = run_cli(capsys, "sweep", str(tmp_path), "--out", out)
    assert rc == 2 and "is a directory" in err


# -- per-run files ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def results_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("fuzz-results")
    (base / "s.toml").write_text(SWEEP)
    assert main(["sweep", str(base / "s.toml"), "--out", str(base / "D"), "--quiet"]) == 0
    return base


def damage(pick: Pick, data: bytes, json_file: bool) -> tuple[bytes, bool]:
    """(damaged contents, whether the damage certainly makes the file unreadable)."""
    kind = pick.int(6)
    if kind == 0:
        return data[: pick.int(len(data) - 1)], True  # truncated (a JSON or Parquet file never survives)
    if kind == 1:
        return b"", True
    if kind == 2:
        return bytes(pick.int(256) for _ in range(1 + pick.int(64))), False  # garbage; could be JSON "1"
    if kind == 3 and json_file:  # valid JSON of the wrong shape
        return pick.of([b"[]", b"3", b'{"run_id": 1}', b'"x"', b"null"]), True
    if kind == 4:  # bytes flipped: may go unnoticed (a digit of a number, a Parquet data page)
        b = bytearray(data)
        for _ in range(1 + pick.int(8)):
            b[pick.int(len(b))] ^= 1 + pick.int(255)
        return bytes(b), False
    return data + b"\x00trailing", not json_file  # JSON with trailing bytes is invalid; Parquet is not


def test_fuzz_per_run_files(results_dir, tmp_path, capsys):
    runs = sorted(p.name for p in (results_dir / "D" / "runs").iterdir())
    for case in range(CASES):
        pick = Pick("per-run", case)
        out = tmp_path / f"D{case}"
        shutil.copytree(results_dir / "D", out)
        run_id = pick.of(runs)
        name = pick.of(["run.json", "history.parquet", "runs.json", "results.parquet"])
        target = out / name if name in ("runs.json", "results.parquet") else out / "runs" / run_id / name
        data, certain = damage(pick, target.read_bytes(), name.endswith(".json"))
        target.write_bytes(data)
        rc, listing = 0, ""
        rc = main(["sweep", str(results_dir / "s.toml"), "--out", str(out), "--dry-run"])
        listing, err = capsys.readouterr()
        assert rc == 0 and "Traceback" not in err, (case, name, err)
        for line in err.strip().splitlines():  # warnings only, one line each, naming a file of out
            assert line.startswith(f"marina: warning: {out}"), (case, line)
        if certain and name in ("run.json", "history.parquet"):
            assert f"{run_id}  missing" in listing and str(target) in err, (case, name, listing, err)
        if case % 20 == 0:  # the sweep redoes what was lost; plot-side readers cope
            assert main(["sweep", str(results_dir / "s.toml"), "--out", str(out), "--quiet"]) == 0
            err = capsys.readouterr()[1]
            assert "Traceback" not in err
        shutil.rmtree(out)
