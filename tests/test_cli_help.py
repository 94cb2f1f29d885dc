"""Every ``--help`` prints without importing torch (nor pandas or matplotlib), and the names the
parsers offer without them agree with the modules that own them."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from marina import data, plotting
from marina.cli import COMMANDS, choices
from marina.compressors import WIRE_DTYPES
from marina.data.splits import KINDS
from marina.experiments import DEFAULT_CHECKPOINT_EVERY

HEAVY = ("torch", "pandas", "matplotlib")


def test_every_help_prints_without_importing_torch():
    """One fresh interpreter prints `marina --help` and `marina COMMAND --help` for every command
    in turn; after each, none of torch, pandas, matplotlib is in sys.modules."""
    script = textwrap.dedent(
        f"""
        import contextlib, io, sys
        from marina.cli import COMMANDS, main
        for argv in [["--help"], *([name, "--help"] for name in COMMANDS)]:
            text = io.StringIO()
            with contextlib.redirect_stdout(text), contextlib.suppress(SystemExit):
                main(argv)
            assert text.getvalue().startswith("usage: marina"), (argv, text.getvalue())
            loaded = [m for m in {HEAVY!r} if m in sys.modules]
            print(" ".join(argv), "loaded:", ",".join(loaded) or "-")
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert len(lines) == 1 + len(COMMANDS), out
    assert all(line.endswith("loaded: -") for line in lines), out


def test_help_choices_agree_with_their_owners():
    assert choices.CHECKPOINT_EVERY == DEFAULT_CHECKPOINT_EVERY
    assert choices.X_AXES == tuple(plotting.X_AXES)
    assert choices.BANDS == tuple(plotting.BANDS)
    assert choices.COLOR_BY == plotting.COLOR_BY
    assert choices.SPLIT_KINDS == tuple(KINDS)
    assert choices.WIRE_DTYPES == tuple(WIRE_DTYPES.values())
    assert choices.BUNDLED_DATA == tuple(data.bundled_names())
