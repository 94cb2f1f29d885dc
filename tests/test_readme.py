"""The README's "Using it from Python" example runs verbatim, with the values its comments state."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_api_example_runs_verbatim():
    text = README.read_text(encoding="utf-8")
    section = text.split("## Using it from Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the project's own example
    c, p, res = scope["c"], scope["p"], scope["res"]
    assert (c.omega(100), c.density(100)) == (19.0, 5.0)  # as the comment says: d/K - 1, K
    assert res.status == "finished"
    assert list(res.history.columns[:7]) == [
        "iteration",
        "grad_norm_sq",
        "loss",
        "bits_up",
        "bits_down",
        "oracle_calls",
        "time_s",
    ]
    assert res.history["iteration"].tolist() == [0, 100, 200, 300]
    assert res.params["p"] == 5 / p.dim  # zeta_Q / d (Corollary 2.1)
