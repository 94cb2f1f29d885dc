"""Distributed first-order methods, each as explicit state + ``step`` (see :mod:`.base`).

=============  =======================================  ==========================================
name           class                                    reference
=============  =======================================  ==========================================
``gd``         :class:`~marina.methods.gd.GD`           gradient descent (dense)
``qgd``        :class:`~marina.methods.dcgd.QGD`        compressed GD (DCGD), Khaled & Richtarik 2020
``diana``      :class:`~marina.methods.diana.DIANA`     Mishchenko et al. 2019; Horvath et al. 2019
``vr-diana``   :class:`~marina.methods.diana.VRDIANA`   Horvath et al. 2019, L-SVRG estimator
``marina``     :class:`~marina.methods.marina.MARINA`   Algorithm 1, Theorems 2.1 / 2.2
``vr-marina``  :class:`~marina.methods.marina.VRMARINA` Algorithms 2 and 3, Theorems 3.1 / 3.2
``pp-marina``  :class:`~marina.methods.marina.PPMARINA` Algorithm 4, Theorem 4.1
``ef21``       :class:`~marina.methods.ef21.EF21`       Richtarik, Sokolov, Fatkhullin 2021, Thm 1
``ef21-pp``    :class:`~marina.methods.ef21.EF21PP`     Fatkhullin et al. 2021, partial participation
``ef21-sgd``   :class:`~marina.methods.ef21.EF21SGD`    Fatkhullin et al. 2021, minibatch gradients
``ef21-sgdm``  :class:`~marina.methods.ef21.EF21SGDM`   Fatkhullin, Tyurin, Richtarik 2023, momentum
``dasha``      :class:`~marina.methods.dasha.DASHA`     Tyurin & Richtarik 2023, Theorem 6.1
``dasha-page`` :class:`~marina.methods.dasha.DASHAPAGE` Tyurin & Richtarik 2023, Theorem 6.4
``dasha-mvr``  :class:`~marina.methods.dasha.DASHAMVR`  Tyurin & Richtarik 2023, Theorem 6.7
=============  =======================================  ==========================================

A method outside the package is a :class:`Method` subclass made known with :func:`register`;
other processes (pool workers, torchrun ranks, ``marina`` commands) find it when the environment
variable ``MARINA_METHODS`` names the module or ``.py`` file that registers it (``os.pathsep``
separated). :func:`plan` assembles a run: compressor, compatibility, network, constants, parameters.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from marina import compressors, memory, parameters
from marina.compressors.base import Compressor, CompressorSpec
from marina.errors import ConfigError
from marina.methods.base import Method, Setting, TheoryRow
from marina.methods.dasha import DASHA, DASHAMVR, DASHAPAGE
from marina.methods.dcgd import QGD
from marina.methods.diana import DIANA, VRDIANA
from marina.methods.ef21 import EF21, EF21PP, EF21SGD, EF21SGDM
from marina.methods.gd import GD
from marina.methods.marina import MARINA, PPMARINA, VRMARINA
from marina.network.base import Network
from marina.network.simulated import SimulatedNetwork
from marina.problems.base import Problem

__all__ = [
    "Method",
    "Setting",
    "TheoryRow",
    "METHODS",
    "PLUGINS_ENV",
    "Plan",
    "get",
    "plan",
    "register",
    "GD",
    "QGD",
    "DIANA",
    "VRDIANA",
    "MARINA",
    "VRMARINA",
    "PPMARINA",
    "EF21",
    "EF21PP",
    "EF21SGD",
    "EF21SGDM",
    "DASHA",
    "DASHAPAGE",
    "DASHAMVR",
]

METHODS: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (GD, QGD, DIANA, VRDIANA, MARINA, VRMARINA, PPMARINA)
    + (EF21, EF21PP, EF21SGD, EF21SGDM, DASHA, DASHAPAGE, DASHAMVR)
}
"""Every known method by name, in registration order (the built-in ones first)."""

PLUGINS_ENV = "MARINA_METHODS"
"""Environment variable: modules or ``.py`` files (``os.pathsep`` separated) imported on the first
lookup of an unknown name; each registers its methods with :func:`register`."""

UNKNOWN_HINT = f" (a method of your own: marina.methods.register, or {PLUGINS_ENV}=its_module.py)"
"""Ends the message about an unknown method name."""

_loaded_plugins: set[str] = set()


def register(cls: type[Method]) -> type[Method]:
    """Make ``cls`` known by ``cls.name`` to :func:`get`, hence to :func:`marina.run`, sweep files,
    ``marina run``/``sweep``/``theory``/``plot`` (usable as a class decorator), and in the processes
    this one starts (its module, or the script's file, is added to :data:`PLUGINS_ENV`). Its ``takes`` must
    name parameters of :data:`marina.parameters.PARAMETERS`. Registering the same class again is
    allowed; another class under a taken name is refused (ConfigError)."""
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise ConfigError(f"register({cls!r}): must be a subclass of marina.methods.Method")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name or name != name.strip().lower() or "_" in name:
        raise ConfigError(f"{cls.__name__}.name == {name!r}, must be a lower-case name without '_' or spaces")
    for key in cls.takes:
        parameters.by_name(key)  # ConfigError naming the known ones
    known = METHODS.get(name)
    if known is not None and known is not cls and _qualname(known) != _qualname(cls):
        raise ConfigError(
            f"method {name!r} is already registered ({_qualname(known)}), cannot register {cls!r}"
        )
    METHODS[name] = cls
    _export(cls)
    return cls


def _export(cls: type[Method]) -> None:
    """Name where ``cls`` is defined in :data:`PLUGINS_ENV` (its module, or the file of a script
    run as ``__main__``), so that processes started from this one (sweep pool workers, ranks
    launched from it) register it too."""
    module = sys.modules.get(cls.__module__)
    if module is None or cls.__module__.startswith("marina."):
        return
    entry = getattr(module, "__file__", None) if cls.__module__ == "__main__" else cls.__module__
    if not entry or entry.startswith("marina_plugin_"):
        return  # loaded from the environment already
    entries = [e for e in os.environ.get(PLUGINS_ENV, "").split(os.pathsep) if e]
    if entry not in entries:
        os.environ[PLUGINS_ENV] = os.pathsep.join([*entries, entry])
    _loaded_plugins.add(entry)


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _load_plugins() -> None:
    """Import what :data:`PLUGINS_ENV` names (once each)."""
    for entry in os.environ.get(PLUGINS_ENV, "").split(os.pathsep):
        entry = entry.strip()
        if not entry or entry in _loaded_plugins:
            continue
        _loaded_plugins.add(entry)
        try:
            if entry.endswith(".py"):
                path = Path(entry).resolve()
                module_name = f"marina_plugin_{path.stem}"
                spec = importlib.util.spec_from_file_location(module_name, path)
                if spec is None or spec.loader is None or not path.is_file():
                    raise FileNotFoundError(str(path))
                module = importlib.util.module_from_spec(spec)
                sys.modules[module_name] = module
                spec.loader.exec_module(module)
            else:
                importlib.import_module(entry)
        except (ImportError, OSError) as err:
            raise ConfigError(f"{PLUGINS_ENV}: cannot import {entry!r}: {err}") from None


def get(name: str) -> type[Method]:
    """The method class registered under ``name`` (case-insensitive; '_' accepted for '-').

    Args:
        name: a method name (``"marina"``, ``"vr_marina"``, ...); one registered by a module that
            :data:`PLUGINS_ENV` names is found too.

    Returns:
        The :class:`Method` subclass; ConfigError listing the known names when there is none.
    """
    if not isinstance(name, str):
        raise ConfigError(f"method == {name!r}, must be one of {', '.join(METHODS)}")
    key = name.strip().lower().replace("_", "-")
    if key not in METHODS:
        _load_plugins()
    try:
        return METHODS[key]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}; known: {', '.join(METHODS)}{UNKNOWN_HINT}") from None


@dataclass
class Plan:
    """A validated run, before the method allocates anything: build it with :meth:`build`.

    Attributes:
        method: the method class.
        problem: the problem (its workers' local oracles).
        compressor: the compressor object.
        network: the network hosting the workers.
        setting: the constants of the theory defaults.
        params: the parameters the run uses (:meth:`Method.resolve`).
    """

    method: type[Method]
    problem: Problem
    compressor: Compressor
    network: Network
    setting: Setting
    params: dict[str, Any]

    def build(self) -> Method:
        """The method on the plan's problem, network and compressor (not started)."""
        return self.method(self.problem, self.network, self.compressor, self.params)


def plan(
    method: str | type[Method],
    problem: Problem,
    compressor: CompressorSpec,
    *,
    iterations: int,
    overrides: dict[str, Any] | None = None,
    network: Network | None = None,
    seed: int = 0,
    check_memory: bool = True,
    compressor_key: str = "compressor ",
) -> Plan:
    """Assemble a run of ``method`` on ``problem``: the compressor (a spec for all the problem's
    workers, or an object), the method's compressor check (:meth:`Method.accepts`), the network
    (default: a simulated one hosting every worker, keyed by ``seed``), the constants
    (:meth:`Setting.build`), the parameters (:meth:`Method.resolve` of ``overrides``) and the
    memory check (:func:`marina.memory.check_run`). ConfigError names the bad value.

    Args:
        method: a method name or :class:`Method` subclass.
        problem: the problem, all its workers.
        compressor: a compressor spec (``"randk:1%"``, a dict) or object.
        iterations: the number of rounds K (theory defaults depend on it).
        overrides: the method's parameters to set (:mod:`marina.parameters`); the others come
            from theory.
        network: the network hosting the workers (None: a simulated one hosting every worker).
        seed: the key of the simulated network's random draws.
        check_memory: whether to refuse a run whose state would not fit in memory.
        compressor_key: starts the compressor's messages (how the caller's user wrote it).

    Returns:
        The :class:`Plan`; :meth:`Plan.build` makes the method.
    """
    cls = method if isinstance(method, type) else get(method)
    n_total = int(getattr(problem, "total_workers", problem.n_workers))
    if isinstance(compressor, str):
        Q = compressors.get(compressor, workers=n_total)
    else:
        Q = compressors.get(compressor)
    reason = cls.accepts(Q)
    if reason is not None:
        raise ConfigError(compressor_key + reason)
    net = network if network is not None else SimulatedNetwork(n_total, seed, device=problem.device)
    if net.n != n_total:
        raise ConfigError(f"the network has {net.n} workers but the problem has {n_total}")
    setting = Setting.build(problem, net, Q, iterations)
    used = cls.resolve(setting, dict(overrides or {}))
    if check_memory:
        memory.check_run(problem, cls.name, used)  # before the method allocates its state
    return Plan(cls, problem, Q, net, setting, used)
