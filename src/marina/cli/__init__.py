"""The ``marina`` command line.

Each subcommand lives in its own module of this package and exposes
``register(subparsers)``, which adds its parser and sets ``func`` (taking the parsed
namespace, returning an exit status). Only the module of the subcommand being run is imported
(``marina --version`` and ``marina --help`` import neither torch nor any subcommand).

Exit status: 0 success; 1 a run failed (an error inside it); 2 bad input (a
:class:`marina.errors.MarinaError`, printed as one line, never a traceback); 3 a run diverged
(``marina run``) or a sweep holds diverged runs and no failed one; 130 interrupted. Errors of the
file system (read-only or full disk, permissions) are printed as one line with the cause and the
path, status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
import warnings
from types import ModuleType

from marina import __version__
from marina.errors import MarinaError, MarinaWarning

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


def load_module(module: str) -> ModuleType:
    """``marina.<module>``, imported when a command first needs it: the parsers import neither
    torch nor pandas, so every ``--help`` prints at once."""
    return importlib.import_module(f"marina.{module}")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """marina's own warnings as one line on stderr; others as Python shows them."""
    if issubclass(category, MarinaWarning):
        print(f"marina: warning: {one_line(message)}", file=sys.stderr if file is None else file)
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


_python_show_warning = warnings.showwarning


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    with warnings.catch_warnings():  # each of marina's warnings once per command, as one line
        warnings.simplefilter("default", MarinaWarning)
        warnings.showwarning = _show_warning
        return _main(argv)


def _main(argv: list[str]) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return EXIT_OK
    try:
        return int(args.func(args) or 0)
    except MarinaError as err:
        print(f"marina {args.command}: error: {one_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as err:
        print(interrupted_text(args.command, argv, err), file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `marina ... | head`: the reader left
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as err:  # read-only or full disk, permissions, ...: the path and the cause
        print(f"marina {args.command}: error: {one_line(os_error_text(err))}", file=sys.stderr)
        return EXIT_USAGE


RESUMABLE = ("run", "sweep", "demo")
"""Commands that, started again the same way, go on where they stopped."""


def interrupted_text(command: str, argv: list[str], err: KeyboardInterrupt) -> str:
    """What Ctrl-C prints: the round reached and the checkpoint (a run's
    :class:`marina.errors.RunInterrupted`), and the command that resumes."""
    text = f"marina {command}: {err}" if str(err) else f"marina {command}: interrupted"
    kept = command != "run" or getattr(err, "checkpoint_round", None) is not None
    if command in RESUMABLE:
        again = "resume with the same command" if kept else "nothing to resume from; start again with"
        text += f"\n{again}: " + shlex.join(["marina", *argv])
    return text


def one_line(message: object) -> str:
    """``message`` as one line (line breaks of quoted input shown as ``\\n``)."""
    return str(message).replace("\r", "\\r").replace("\n", "\\n")


def os_error_text(err: OSError) -> str:
    """One line for an OSError: the cause, then the path (``read-only file system: 'DIR/x'``)."""
    cause = err.strerror or str(err) or type(err).__name__
    path = err.filename if err.filename is not None else ""
    if err.filename2 is not None:
        path = f"{path} -> {err.filename2}"
    return f"{cause.lower()}: {str(path)!r}" if path != "" else cause.lower()


if __name__ == "__main__":
    raise SystemExit(main())
