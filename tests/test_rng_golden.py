"""Recorded draws of every public drawing method: changes to marina.rng must reproduce them.

``cases()`` names each program of draws (one ``Randomness`` object, many consecutive calls) over
seeds (large and negative ones too), streams (names and ints), rounds (-1 too) and worker id sets
(``SHARED``, 1 to 1000 rows, contiguous or not), so both the small-draw code (few rows, few
elements) and the tensor code are pinned. Each draw is stored as its shape, dtype, SHA-256 of
its bytes and its first values (so that a failure shows numbers).

``python tests/test_rng_golden.py`` records ``tests/data/rng_golden.json`` from the code as it
stands, and refuses to overwrite different draws under the same ``GENERATOR_VERSION``: a change
of any draw is a new generator, which must bump the version (it keys run ids).
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import marina.rng as R
from marina.rng import SHARED, Randomness

PATH = Path(__file__).parent / "data" / "rng_golden.json"
HEAD = 4  # first values stored with each hash

KEYS = (
    (0, "compress", 0),
    (2**63 + 12345, "minibatch", 7),
    (-5, 17, -1),
    (123456789, "coin", 10**6),
    (-(2**70) - 3, "init/layer.weight", 3),
)
WORKERS = {
    "shared": [SHARED],
    "one": [3],
    "five": list(range(5)),
    "sparse5": [0, 2, 5, 9, 11],
    "32": list(range(32)),
    "33": list(range(33)),
    "40-odd": list(range(1, 80, 2)),
    "1000": list(range(1000)),
}
FLOATS = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def _per_row(rows: int, values: list[int]) -> torch.Tensor:
    return torch.tensor([values[r % len(values)] for r in range(rows)])


def _program(rng: Randomness) -> list[torch.Tensor]:
    """Consecutive calls of every drawing method (the call counter moves through them)."""
    n = rng.n_rows
    out = []
    for cols in (1, 7, 129):
        out += [rng.uniform(cols, dtype) for dtype in FLOATS]
    out += [rng.uniform(3), rng.bits(3), rng.bits(40), rng.words32(5), rng.words32(200)]
    out += [rng.integers(1000, 5), rng.integers(2**40, 3), rng.integers(torch.tensor([7]), 3)]
    out += [rng.integers(_per_row(n, [3, 10**6, 17, 2**33]), 5)]
    out += [rng.bernoulli(0.3, 9), rng.bernoulli(0.5), rng.bernoulli(1, 2)]
    out += [rng.permutation(size) for size in (1, 6, 50)]
    for pop, k in (
        (1, 1),
        (123, 1),
        (50, 6),
        (10, 8),  # dense: 2k > population
        (4096, 2),  # dense: population <= 4096
        (4097, 2),  # sparse
        (5000, 1),
        (5000, 3),
        (5000, 2501),  # dense: 2k > population > 4096
        (10**6, 8),
        (10**6, 0),
    ):
        out.append(rng.sample_without_replacement(pop, k))
    pops = _per_row(n, [30, 5000, 10**6, 3000, 9000, 16])  # dense and sparse rows mixed
    out += [rng.sample_without_replacement(pops, k) for k in (1, 2, 3, 16)]
    e = rng.elements()  # read piecewise
    out += [torch.cat([e.uniform(0, 4, torch.float32), e.uniform(4, 150, torch.float32)], dim=1)]
    out += [e.uniform(0, 9, torch.float64), e.words(3, 40), e.words64(0, 11)]
    sh = rng.shared()
    out += [sh.uniform(4), sh.permutation(20), sh.sample_without_replacement(100, 5)]
    rng.advance(2)
    out += [rng.uniform(2), rng.shared().words32(3)]
    out.append(torch.tensor([rng.calls, sh.calls]))
    return out


def _long_rows(rng: Randomness) -> list[torch.Tensor]:
    """Rows long enough to cross the CPU chunk size (2^17 elements per chunk)."""
    return [rng.uniform(300_000, torch.float32), rng.uniform(200_000), rng.words32(140_000)]


def cases() -> dict[str, tuple[tuple, list[int], Callable[[Randomness], list[torch.Tensor]]]]:
    out = {}
    for seed, stream, rnd in KEYS:
        for name, ids in WORKERS.items():
            out[f"{seed}/{stream}/{rnd}/{name}"] = ((seed, stream, rnd), ids, _program)
    out["long/one"] = ((9, "long", 2), [4], _long_rows)
    out["long/five"] = ((9, "long", 2), [0, 1, 2, 3, 7], _long_rows)
    return out


def _digest(t: torch.Tensor) -> dict:
    t = t.detach().cpu().contiguous()
    raw = t.reshape(-1).view(torch.uint8) if t.numel() else t.reshape(-1).to(torch.uint8)
    head = t.reshape(-1)[:HEAD]
    head = head.tolist() if t.dtype != torch.bfloat16 else head.float().tolist()
    return {
        "shape": list(t.shape),
        "dtype": str(t.dtype).removeprefix("torch."),
        "sha256": hashlib.sha256(raw.numpy().tobytes()).hexdigest(),
        "head": head,
    }


def record_case(name: str, device: str | torch.device = "cpu") -> list[dict]:
    key, ids, program = cases()[name]
    return [_digest(t) for t in program(Randomness(*key, ids, device=device))]


def _load() -> dict:
    return json.loads(PATH.read_text())


_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
_DEVICES = ["cpu", pytest.param("cuda", marks=_CUDA)]


@pytest.fixture(scope="module")
def golden() -> dict:
    return _load()


def test_golden_file_is_this_generator(golden):
    assert set(golden["cases"]) == set(cases()), "cases changed: re-record (python tests/test_rng_golden.py)"
    assert golden["version"] == R.GENERATOR_VERSION, (
        f"GENERATOR_VERSION is {R.GENERATOR_VERSION}, the golden draws are of version {golden['version']}: "
        "re-record them (python tests/test_rng_golden.py)"
    )


@pytest.mark.parametrize("device", _DEVICES)
@pytest.mark.parametrize("name", sorted(cases()))
def test_draws_equal_recorded(golden, name, device):
    if golden["version"] != R.GENERATOR_VERSION:
        pytest.skip("recorded for another GENERATOR_VERSION (test_golden_file_is_this_generator fails)")
    want = golden["cases"][name]
    got = record_case(name, device)
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g == w, (
            f"{name}: draw {i} differs from the recorded one under GENERATOR_VERSION {R.GENERATOR_VERSION} "
            "(a deliberate change of the generator must bump GENERATOR_VERSION and re-record):\n"
            f"  recorded {w['dtype']} {w['shape']} {w['head']} ... sha256 {w['sha256'][:16]}\n"
            f"  drawn    {g['dtype']} {g['shape']} {g['head']} ... sha256 {g['sha256'][:16]}"
        )


def main() -> int:
    new = {"version": R.GENERATOR_VERSION, "cases": {name: record_case(name) for name in cases()}}
    if PATH.exists():
        old = _load()
        same_draws = {k: v for k, v in old["cases"].items() if k in new["cases"]}
        changed = [k for k, v in same_draws.items() if v != new["cases"][k]]
        if changed and old["version"] == new["version"]:
            print(f"draws of {len(changed)} cases changed (e.g. {changed[0]}) under the same generator")
            print(f"version {new['version']}: bump marina.rng.GENERATOR_VERSION first; nothing written")
            return 1
    compact = lambda v: json.dumps(v, separators=(",", ":"))
    lines = [f"{json.dumps(k)}: {compact(v)}" for k, v in sorted(new["cases"].items())]
    PATH.write_text(f'{{"version": {new["version"]}, "cases": {{\n' + ",\n".join(lines) + "\n}}\n")
    print(f"wrote {PATH} ({len(new['cases'])} cases, version {new['version']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
