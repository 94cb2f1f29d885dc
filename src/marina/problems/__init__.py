"""Problems f(x) = (1/n) sum_i f_i(x) split among workers.

- :func:`libsvm`: the paper's non-convex logistic loss (eq. 11) on a bundled data set or a
  LibSVM file, split contiguous / shuffled / Dirichlet label-skewed.
- :func:`synthetic`: a small smooth non-convex family with exact constants and a
  heterogeneity knob.
- :class:`TorchModelProblem`: any ``torch.nn.Module`` + loss + tensors or ``Dataset`` (the
  ready-made image tasks are in :mod:`marina.nets`).
- :func:`get`: a Problem object (returned as is) or a spec string (bundled name or file path).

Every problem implements :class:`Problem` (``base.py``).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

from marina.errors import ConfigError
from marina.problems.base import Problem, ProblemSpec
from marina.problems.linear import LinearModelProblem
from marina.problems.logistic import PHI2_MAX, LogisticProblem, libsvm
from marina.problems.synthetic import SyntheticProblem, synthetic
from marina.problems.torch_model import TorchModelProblem

__all__ = [
    "PHI2_MAX",
    "LinearModelProblem",
    "LogisticProblem",
    "Problem",
    "ProblemSpec",
    "SyntheticProblem",
    "TorchModelProblem",
    "SPEC_BUILDERS",
    "get",
    "register_spec",
    "libsvm",
    "synthetic",
]


def get(
    spec: ProblemSpec,
    workers: int | None = None,
    seed: int = 0,
    **kwargs: Any,
) -> Problem:
    """A problem from a Problem object or a spec string.

    Args:
        spec: a :class:`Problem` (returned unchanged; ``workers``, when given, must equal its
            total number of workers and no other options are allowed), or a bundled data set
            name / LibSVM file path, built with :func:`libsvm`, or ``"synthetic"`` built with
            :func:`synthetic`.
        workers: number of workers n (default 1 for data sets, 5 for ``synthetic``).
        seed: keys random splits (and the synthetic data).
        **kwargs: passed to :func:`libsvm` / :func:`synthetic` (split, l2, bias, ...).
    """
    if isinstance(spec, Problem):
        total = int(getattr(spec, "total_workers", spec.n_workers))
        if workers is not None and int(workers) != total:
            raise ConfigError(f"workers == {workers}, but the given problem has {total} workers")
        if kwargs:
            raise ConfigError(
                f"problem options {sorted(kwargs)} apply to spec strings only, not to a Problem object"
            )
        return spec
    if not isinstance(spec, (str, os.PathLike)):
        raise ConfigError(f"problem == {spec!r}, must be a Problem, a bundled data set name or a file path")
    if os.fspath(spec) == "synthetic":
        return synthetic(workers=5 if workers is None else workers, seed=seed, **kwargs)
    name, sep, folder = os.fspath(spec).partition(":")
    build = _builder(name)  # fashion-mnist, cifar100[:DIR]
    if build is not None:
        if sep:
            if "data_dir" in kwargs:
                raise ConfigError(
                    f"problem {spec!r} names a directory, and data_dir == {kwargs['data_dir']!r} too"
                )
            kwargs["data_dir"] = folder
        return build(5 if workers is None else workers, seed=seed, **kwargs)
    return libsvm(spec, workers=1 if workers is None else workers, seed=seed, **kwargs)


SPEC_BUILDERS: dict[str, str | Callable[..., Problem]] = {
    "fashion-mnist": "marina.nets.tasks:fashion_mnist",
    "cifar100": "marina.nets.tasks:cifar100",
}
"""Spec names :func:`get` builds besides data sets and ``synthetic``: ``NAME`` or ``NAME:DIR``
(``DIR`` sets ``data_dir``), called as ``build(workers, seed=seed, **options)``; workers default
to 5 (the paper's neural-network experiment). A builder is a callable or ``"module:function"``,
imported when first used (the image tasks of :mod:`marina.nets` build on this package)."""


def register_spec(name: str, build: str | Callable[..., Problem]) -> None:
    """Make ``get(name)`` (and ``get("name:DIR")``) return ``build(workers, seed=..., **options)``.

    Args:
        name: the spec name (no ``:``).
        build: the builder, a callable or ``"module:function"`` imported when first used.
    """
    SPEC_BUILDERS[name] = build


def _builder(name: str) -> Callable[..., Problem] | None:
    build = SPEC_BUILDERS.get(name)
    if isinstance(build, str):
        module, _, attr = build.partition(":")
        build = SPEC_BUILDERS[name] = getattr(importlib.import_module(module), attr)
    return build
