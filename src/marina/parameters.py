"""The method parameters, each declared once.

Every override a method accepts is one :class:`Parameter` of :data:`PARAMETERS`: its name,
type, constraint and help text; the methods that take it are derived from their declarations
(:attr:`marina.methods.Method.takes`). Everything else is derived from
this table: validation (:meth:`Parameter.check`, used by :meth:`marina.methods.Method.resolve`),
the keys of sweep files, the columns of ``results.parquet`` (:meth:`Parameter.column_dtype`),
the ``marina run`` flags (:attr:`Parameter.flag`) and the legends of ``marina plot``.

Values are made canonical before anything is hashed (:meth:`Parameter.canonical`): a float
parameter given as ``1`` is ``1.0``, an integer given as ``4.0`` is ``4``, and strings or
booleans where numbers belong are refused, so one configuration has one run id.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import marina  # marina.methods loads on first use: the parsers' --help stays free of torch
from marina.errors import ConfigError

__all__ = ["PARAMETERS", "Parameter", "by_name", "names", "of_method"]

_DTYPES = {float: "float64", int: "Int64", bool: "boolean"}


@dataclass(frozen=True)
class Parameter:
    """One method parameter.

    Attributes:
        name: the keyword of :func:`marina.run` and the sweep-file key.
        kind: ``float``, ``int`` or ``bool``.
        domain: ``"positive"`` (finite, > 0), ``"probability"`` (in (0, 1]), ``"count"``
            (integer >= 1, at most ``bound``) or ``"flag"``.
        help: one line for ``--help``.
        legend: how ``marina plot`` names it when it varies between curves.
        bound: for counts, the :class:`marina.methods.Setting` attribute bounding it from above.
        bound_text: what that bound is, for messages.
    """

    name: str
    kind: type
    domain: str
    help: str
    legend: str
    bound: str | None = None
    bound_text: str = ""

    @property
    def methods(self) -> tuple[str, ...]:
        """The methods that take it (every known method's :meth:`~marina.methods.Method.parameter_names`)."""
        return tuple(
            name for name, cls in marina.methods.METHODS.items() if self.name in cls.parameter_names()
        )

    @property
    def flag(self) -> str:
        """The ``marina run`` option, e.g. ``--batch-size``."""
        return "--" + self.name.replace("_", "-")

    @property
    def column_dtype(self) -> str:
        """The pandas dtype of its ``results.parquet`` column (nullable: missing = theory default)."""
        return _DTYPES[self.kind]

    @property
    def columns(self) -> dict[str, str]:
        """Its ``results.parquet`` columns and their dtypes (one, unless it takes a rule too)."""
        return {self.name: self.column_dtype}

    def column_values(self, value: Any) -> dict[str, Any]:
        """The values of :attr:`columns` for a given ``value`` (None: not given)."""
        return {self.name: value}

    def constraint(self, upper: int | None = None) -> str:
        """What a value must be, e.g. ``in (0, 1]`` or ``in [1, 20]``."""
        if self.domain == "positive":
            return "a finite number > 0"
        if self.domain == "probability":
            return "in (0, 1]"
        if self.domain == "count":
            return f"in [1, {upper}]" if upper is not None else ">= 1"
        return "true or false"

    def canonical(self, value: Any) -> Any:
        """``value`` in this parameter's type (no range check): an integral number for an
        integer, any real number for a float, a bool for a flag; ConfigError otherwise
        (strings and booleans are never numbers)."""
        if self.kind is bool:
            ok = isinstance(value, bool)
        elif isinstance(value, (str, bool)):
            ok = False
        elif self.kind is float:
            ok = isinstance(value, numbers.Real)
        else:
            ok = isinstance(value, numbers.Real) and float(value).is_integer()
        if not ok:
            raise ConfigError(f"{self.name} == {value!r}, must be {_TYPE_PHRASES[self.domain]}")
        return self.kind(value)

    def check(self, value: Any, setting: Any = None) -> Any:
        """``value`` made canonical and checked against the constraint (a count against
        ``getattr(setting, bound)`` when a setting is given)."""
        v = self.canonical(value)
        if self.domain == "positive" and not (math.isfinite(v) and v > 0):
            raise ConfigError(f"{self.name} == {value!r}, must be {self.constraint()}")
        if self.domain == "probability" and not (0.0 < v <= 1.0):
            raise ConfigError(f"{self.name} == {value!r}, must be {self.constraint()}")
        if self.domain == "count":
            upper = None if self.bound is None or setting is None else int(getattr(setting, self.bound))
            if v < 1 or (upper is not None and v > upper):
                what = self.bound_text + ("" if upper is None else f" = {upper}")
                raise ConfigError(f"{self.name} == {v}, must be {self.constraint(upper)} ({what})")
        return v


_TYPE_PHRASES = {
    "positive": "a finite number > 0",
    "probability": "a number in (0, 1]",
    "count": "an integer >= 1",
    "flag": "true or false",
}


class _ProbabilityOrBits(Parameter):
    """A probability that also takes the word ``"bits"`` (MARINA's p: the theory chooses it from
    the compressor's expected message size, :func:`marina.theory.bits_p`).

    Results keep both kinds typed: the number in the float64 column ``p`` and the rule in the
    string column ``p_rule`` (``"bits"``; missing when a number or nothing was given)."""

    def canonical(self, value: Any) -> Any:
        return "bits" if value == "bits" else super().canonical(value)

    def check(self, value: Any, setting: Any = None) -> Any:
        return "bits" if value == "bits" else super().check(value, setting)

    @property
    def columns(self) -> dict[str, str]:
        return {self.name: "float64", self.name + "_rule": "string"}

    def column_values(self, value: Any) -> dict[str, Any]:
        if value == "bits":
            return {self.name: None, self.name + "_rule": "bits"}
        return {self.name: value, self.name + "_rule": None}

    @staticmethod
    def parse_arg(arg: str) -> float | str:
        """``--p`` on the command line: ``bits`` or a number."""
        return "bits" if arg == "bits" else float(arg)


PARAMETERS: tuple[Parameter, ...] = (
    Parameter("stepsize", float, "positive", "explicit stepsize gamma", "γ"),
    Parameter(
        "stepsize_multiplier",
        float,
        "positive",
        "gamma = multiplier x theory stepsize",
        "γ ×",
    ),
    _ProbabilityOrBits(
        "p",
        float,
        "probability",
        "probability of a dense round (MARINA family) or of a full gradient (DASHA-PAGE), in (0, 1], "
        "or (MARINA family) bits: expected message bits / dense bits",
        "p",
    ),
    Parameter("alpha", float, "probability", "DIANA shift stepsize, in (0, 1]", "α"),
    Parameter(
        "batch_size",
        int,
        "count",
        "b', minibatch of VR-MARINA / VR-DIANA / EF21-SGD / EF21-SGDM / DASHA-PAGE / DASHA-MVR "
        "(default m/100)",
        "b'",
        bound="m_min",
        bound_text="b', at most the smallest local data set m",
    ),
    Parameter(
        "clients",
        int,
        "count",
        "r, clients per compressed round of PP-MARINA",
        "r",
        bound="n",
        bound_text="r, at most the number of workers n",
    ),
    Parameter(
        "refresh_p",
        float,
        "probability",
        "VR-DIANA: probability of refreshing the reference point",
        "refresh p",
    ),
    Parameter("online", bool, "flag", "VR-MARINA: online (expectation) variant", "online"),
    Parameter(
        "dense_batch_size",
        int,
        "count",
        "VR-MARINA online / DASHA-MVR: b, minibatch of the dense rounds (drawn with replacement)",
        "b",
        bound_text="b, samples drawn with replacement",
    ),
    Parameter("mu", float, "positive", "MARINA: PL constant (stepsize of Theorem 2.2)", "μ"),
    Parameter(
        "participation",
        float,
        "probability",
        "EF21-PP: probability that a client takes part in a round",
        "q",
    ),
    Parameter(
        "momentum",
        float,
        "probability",
        "DASHA: momentum a of the compressed messages (default 1/(2 omega + 1)); EF21-SGDM: eta, the "
        "weight of the new minibatch gradient in the workers' momentum",
        "a / η",
    ),
    Parameter(
        "mvr_momentum",
        float,
        "probability",
        "DASHA-MVR: momentum b of the variance reduction",
        "b (MVR)",
    ),
)
"""Every method parameter, in the order of columns, flags and messages."""

_BY_NAME = {p.name: p for p in PARAMETERS}


def names() -> tuple[str, ...]:
    """Names of all parameters, in table order."""
    return tuple(_BY_NAME)


def by_name(name: str) -> Parameter:
    """The parameter called ``name`` (ConfigError naming the known ones otherwise).

    Args:
        name: a name of :data:`PARAMETERS` (``"p"``, ``"stepsize"``, ...).
    """
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ConfigError(f"unknown parameter {name!r}; known: {', '.join(_BY_NAME)}") from None


def of_method(method: str) -> tuple[str, ...]:
    """Names of the parameters ``method`` takes, in table order (ConfigError for an unknown method).

    Args:
        method: the method's name (``"marina"``, ...).
    """
    return marina.methods.get(method).parameter_names()
