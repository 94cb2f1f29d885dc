"""The ``marina`` command line.

Each subcommand lives in its own module of this package and exposes
``register(subparsers)``, which adds its parser and sets ``func`` (taking the parsed
namespace, returning an exit status). Errors the user can fix (:class:`marina.errors.MarinaError`)
are printed as one line and exit with status 2, never as a traceback; so are errors of the
file system (read-only or full disk, permissions: the cause and the path).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from marina import __version__
from marina.errors import MarinaError, MarinaWarning

# Subcommand modules, in the order ``marina --help`` lists them.
COMMANDS: list[str] = ["run", "sweep", "plot", "theory", "demo", "datasets", "compress"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="marina",
        description="Communication-compressed distributed non-convex optimization: MARINA, "
        "VR-MARINA, PP-MARINA and their baselines (GD, QGD, DIANA, VR-DIANA).",
    )
    parser.add_argument("--version", action="version", version=f"marina {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"marina.cli.{name}").register(sub)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """marina's own warnings as one line on stderr; others as Python shows them."""
    if issubclass(category, MarinaWarning):
        print(f"marina: warning: {one_line(message)}", file=sys.stderr if file is None else file)
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


_python_show_warning = warnings.showwarning


def main(argv: list[str] | None = None) -> int:
    with warnings.catch_warnings():  # each of marina's warnings once per command, as one line
        warnings.simplefilter("default", MarinaWarning)
        warnings.showwarning = _show_warning
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except MarinaError as err:
        print(f"marina {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"marina {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `marina ... | head`: the reader left
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as err:  # read-only or full disk, permissions, ...: the path and the cause
        print(f"marina {args.command}: error: {one_line(os_error_text(err))}", file=sys.stderr)
        return 2


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
