"""Messages in command-line syntax: hints written for Python rewritten for the shell."""

from __future__ import annotations

import re

from marina import parameters

__all__ = ["cli_syntax"]


def cli_syntax(text: str, extra: dict[str, str] | None = None) -> str:
    """Hints in ``text`` written for Python (``stepsize_multiplier=0.5``) in command-line syntax
    (``--stepsize-multiplier 0.5``); ``extra`` maps more literal spellings."""
    for prm in parameters.PARAMETERS:
        text = re.sub(rf"(?<![\w.-]){prm.name}=([^\s,;)]+)", rf"{prm.flag} \1", text)
    for python, cli in (extra or {}).items():
        text = text.replace(python, cli)
    return text
