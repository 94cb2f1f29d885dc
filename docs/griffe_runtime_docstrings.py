"""Griffe extension for the API reference: a class's docstring as Python has it after import.

Some docstrings are completed when the class is created: the method classes get the constructor
arguments of :class:`marina.methods.Method` (``Method.__init_subclass__``), the optimizers of
:mod:`marina.torch` their ``Args:`` (``marina.torch.optim.documented``). mkdocstrings reads the
source, which lacks those sections; for the classes of the modules named in ``modules`` this
extension takes the docstring from the imported class instead. Only those modules are imported
(importing the whole package would run ``marina.__main__``).
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import griffe


class RuntimeDocstrings(griffe.Extension):
    def __init__(self, modules: list[str]) -> None:
        self.modules = tuple(modules)

    def on_class(self, *, cls: griffe.Class, **kwargs: Any) -> None:
        module = cls.module.path
        if cls.docstring is None or not any(module == m or module.startswith(m + ".") for m in self.modules):
            return
        runtime = getattr(importlib.import_module(module), cls.name, None)
        doc = getattr(runtime, "__doc__", None)
        if isinstance(doc, str) and doc.strip():
            cls.docstring.value = inspect.cleandoc(doc.rstrip())
