"""Every public class and function documents its arguments: for each callable in the ``__all__``
of the public modules, the Google-style docstring (the class docstring for a class, whose
constructor arguments it describes) has an ``Args:`` section naming every parameter of the
signature (``self``, ``*args`` and ``**kwargs`` aside) and no parameter the signature lacks.
The fields of a dataclass may be documented under ``Attributes:`` instead (they are its
constructor's arguments). This is what the API reference (mkdocstrings, Google style) renders.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pydoc
import re

import pytest

import marina.torch

PUBLIC_MODULES = (
    "marina",
    "marina.torch",
    "marina.methods",
    "marina.compressors",
    "marina.problems",
    "marina.network",
    "marina.distributed",
    "marina.experiments",
    "marina.nets",
    "marina.parameters",
    "marina.theory",
    "marina.trackers",
    "marina.errors",
    "marina.rng",
    "marina.data",
    "marina.plotting",
)
"""The package, its public subpackages (``marina.__all__``, marina.methods and marina.theory
included), marina.torch and the modules users import directly (errors, keyed randomness, data
sets, plotting). A method class documents its constructor's arguments (problem, network,
compressor, params: :class:`marina.methods.Method`'s, appended by ``Method.__init_subclass__``);
its own parameters (p, alpha, ...) are documented in :mod:`marina.parameters`' table."""

_SECTION = re.compile(r"^(\w[\w ]*):\s*$")
_ENTRY = re.compile(r"^(\*{0,2}\w+)(?:\s*\([^)]*\))?\s*:")


def documented_args(doc: str, sections: tuple[str, ...] = ("Args", "Arguments")) -> list[str]:
    """The names of the entries of ``doc``'s ``sections`` (Google style: ``name: text`` or
    ``name (type): text`` one indentation level below the section header)."""
    names: list[str] = []
    lines = inspect.cleandoc(doc).splitlines()
    i = 0
    while i < len(lines):
        head = _SECTION.match(lines[i].strip())
        if head and head.group(1) in sections:
            base = len(lines[i]) - len(lines[i].lstrip())
            entry_indent = None
            i += 1
            while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > base):
                line = lines[i]
                indent = len(line) - len(line.lstrip())
                if line.strip() and (entry_indent is None or indent == entry_indent):
                    entry_indent = indent
                    m = _ENTRY.match(line.strip())
                    if m:
                        names.append(m.group(1).lstrip("*"))
                i += 1
            continue
        i += 1
    return names


def public_callables() -> list[tuple[str, object]]:
    out = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                out.append((f"{module_name}.{name}", obj))
    return out


def problems_of(obj: object) -> list[str]:
    """What the docstring of ``obj`` lacks or has too many, one line each."""
    doc = obj.__doc__ or ""
    if inspect.isclass(obj):
        if issubclass(obj, BaseException) and obj.__init__ is BaseException.__init__:
            return []
        if obj.__init__ is object.__init__:
            return []
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return []
    params = [
        p.name
        for p in signature.parameters.values()
        if p.name not in ("self", "cls") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    variadic = {p.name for p in signature.parameters.values() if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    sections = ("Args", "Arguments")
    if inspect.isclass(obj) and dataclasses.is_dataclass(obj):
        sections += ("Attributes",)
    documented = documented_args(doc, sections)
    out = [f"argument {p!r} not documented" for p in params if p not in documented]
    if not (inspect.isclass(obj) and dataclasses.is_dataclass(obj)):  # Attributes may list properties
        out += [
            f"documents {d!r}, which the signature lacks"
            for d in documented
            if d not in params and d not in variadic
        ]
    return out


@pytest.mark.parametrize("name, obj", public_callables(), ids=lambda v: v if isinstance(v, str) else "")
def test_arguments_documented(name: str, obj: object):
    assert problems_of(obj) == [], name


def test_help_of_an_optimizer_shows_its_arguments():
    text = pydoc.render_doc(marina.torch.MARINA, renderer=pydoc.plaintext)
    args = text[text.index("Args:") :]
    for name in ("params", "compressor", "lr", "p", "seed", "process_group", "local_size", "module"):
        assert f"{name}: " in args, name


def test_a_method_subclass_gets_the_constructor_arguments():
    """Method.__init_subclass__ appends Method's Args to a subclass with the same constructor only."""
    import marina.methods

    class Same(marina.methods.MARINA):
        """A variant."""

    class Own(marina.methods.MARINA):
        """A variant with an argument of its own."""

        def __init__(self, problem, network, compressor, params, extra=0):
            super().__init__(problem, network, compressor, params)

    assert documented_args(Same.__doc__) == ["problem", "network", "compressor", "params"]
    assert inspect.cleandoc(Same.__doc__).startswith("A variant.\n\nArgs:\n")
    assert documented_args(Own.__doc__) == []
    assert problems_of(Own)[-1] == "argument 'extra' not documented"


def test_the_parser_reads_google_sections():
    doc = """Summary.

    Args:
        a: first,
            continued.
        b (int): second.
        **options: the rest.

    Returns:
        c: not an argument.
    """
    assert documented_args(doc) == ["a", "b", "options"]


def test_a_missing_or_stale_argument_is_reported():
    def f(a: int, b: int, *rest: int, **options: int) -> None:
        """Summary.

        Args:
            a: documented.
            c: not an argument of f.
            **options: the rest.
        """

    assert problems_of(f) == ["argument 'b' not documented", "documents 'c', which the signature lacks"]


if __name__ == "__main__":  # the gaps, one line each
    for name, obj in public_callables():
        for problem in problems_of(obj):
            print(f"{name}: {problem}")
