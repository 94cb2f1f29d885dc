"""The ``marina`` command line.

Each subcommand lives in its own module of this package and exposes
``register(subparsers)``, which adds its parser and sets ``func`` (taking the parsed
namespace, returning an exit status). Only the module of the subcommand being run is imported
(``marina --version`` and ``marina --help`` import neither torch nor any subcommand).

Exit status: 0 success; 1 a run failed (an error inside it); 2 bad input (a
:class:`marina.errors.MarinaError`, printed as one line, never a traceback); 3 a run diverged
(``marina run``) or a sweep holds diverged runs and no failed one; 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from marina import __version__
from marina.errors import MarinaError

# Subcommand modules with their one-line help, in the order ``marina --help`` lists them.
COMMANDS: dict[str, str] = {
    "run": "run one experiment (one method, compressor, problem, seed)",
    "sweep": "run a grid of experiments declared in a TOML file (parallel, resumable, shardable)",
    "collect": "rebuild a results directory's results.parquet and runs.json from its per-run files",
    "plot": "plot results: one curve per configuration, mean and a band over seeds",
    "theory": "theory constants, default parameters and predicted cost of every method",
    "demo": "MARINA vs DIANA on a9a: runs and paper-style figures in about a minute",
    "datasets": "list bundled data sets (rows, features, labels, density) or report a split",
    "compress": "compress random vectors with a compressor and report bits, error and theory",
}

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_DIVERGED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def _command_of(argv: list[str]) -> str | None:
    """The subcommand named in ``argv`` (its first non-option word), if any."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the subcommand ``argv`` names (every one if ``argv`` is None) is
    imported and fully registered, the others are listed by name and help."""
    parser = argparse.ArgumentParser(
        prog="marina",
        description="Communication-compressed distributed non-convex optimization: MARINA, "
        "VR-MARINA, PP-MARINA and their baselines (GD, QGD, DIANA, VR-DIANA).",
        epilog="exit status: 0 done, 1 a run failed, 2 bad input, 3 a run diverged, 130 interrupted",
    )
    parser.add_argument("--version", action="version", version=f"marina {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = COMMANDS if argv is None else [_command_of(argv)]
    for name, help_text in COMMANDS.items():
        if name in wanted:
            importlib.import_module(f"marina.cli.{name}").register(sub)
        else:
            sub.add_parser(name, help=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return EXIT_OK
    try:
        return int(args.func(args) or 0)
    except MarinaError as err:
        print(f"marina {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"marina {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
