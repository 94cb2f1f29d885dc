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
"""

from __future__ import annotations

from marina.errors import ConfigError
from marina.methods.base import Method, Setting
from marina.methods.dasha import DASHA, DASHAMVR, DASHAPAGE
from marina.methods.dcgd import QGD
from marina.methods.diana import DIANA, VRDIANA
from marina.methods.ef21 import EF21, EF21PP, EF21SGD, EF21SGDM
from marina.methods.gd import GD
from marina.methods.marina import MARINA, PPMARINA, VRMARINA

__all__ = [
    "Method",
    "Setting",
    "METHODS",
    "get",
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


def get(name: str) -> type[Method]:
    """The method class registered under ``name`` (case-insensitive; '_' accepted for '-')."""
    if not isinstance(name, str):
        raise ConfigError(f"method == {name!r}, must be one of {', '.join(METHODS)}")
    key = name.strip().lower().replace("_", "-")
    try:
        return METHODS[key]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}; known: {', '.join(METHODS)}") from None
