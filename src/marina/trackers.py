"""Experiment trackers fed from the rows of a run's history: TensorBoard, MLflow, Weights & Biases.

``marina.run(..., loggers=["tensorboard", "mlflow"])`` (or ``marina run/sweep --log
tensorboard,mlflow,wandb``) sends every history row (the same rows as ``Result.history``, at
step = round) to each tracker, with the configuration and the parameters used at the start and
the status at the end. Each tracker is an optional extra (``pip install 'marina-opt[trackers]'``):

=============  ==========================================  =====================================
name           writes (``root``: the results directory,     library
               else the working directory)
=============  ==========================================  =====================================
tensorboard    ``root/tensorboard/<run>/`` event files       ``torch.utils.tensorboard`` (tensorboard)
mlflow         ``root/mlruns`` local file store, experiment  ``mlflow`` (mlflow-skinny is enough);
               ``marina``; ``$MLFLOW_TRACKING_URI`` wins     ``MLFLOW_ALLOW_FILE_STORE`` set to true
wandb          ``root/wandb/``, project ``marina``, offline  ``wandb``; ``$WANDB_MODE`` wins
               (upload later with ``wandb sync``)
=============  ==========================================  =====================================

Any object with ``start(config)``, ``log(row, step)`` and ``finish(status, message)`` may be
passed in ``loggers`` too.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from marina.errors import ConfigError

__all__ = ["TRACKERS", "MLflow", "Session", "TensorBoard", "Tracker", "WandB", "make", "names", "run_name"]


class Tracker:
    """Base of the built-in trackers: ``root`` (folder of its files), ``run_name``.

    Args:
        root: the folder its files go under (default: the working directory).
        run_name: the run's name in the tracker (default: :func:`run_name` of the configuration).
    """

    name = ""
    module = ""
    """The module that must import (checked by :func:`names`)."""

    def __init__(self, root: str | os.PathLike | None = None, run_name: str | None = None) -> None:
        self.root = Path(root) if root is not None else Path.cwd()
        self.run_name = run_name

    def start(self, config: Mapping[str, Any]) -> None:
        """A run begins: ``config`` holds its configuration and ``params`` (parameters used)."""

    def log(self, row: Mapping[str, float], step: int) -> None:
        """One history row, at round ``step``."""

    def finish(self, status: str, message: str) -> None:
        """The run ended with ``status`` (finished, diverged, failed)."""


def _metrics(row: Mapping[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if k != "iteration"}


def _flat(config: Mapping[str, Any]) -> dict[str, str | float | int | bool]:
    """``config`` with ``params`` flattened to ``params.<name>`` and values made plain."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update({f"{key}.{k}": v for k, v in _flat(value).items()})
        elif isinstance(value, (bool, int, float, str)) or value is None:
            flat[key] = "" if value is None else value
        else:
            flat[key] = str(value)
    return flat


def run_name(config: Mapping[str, Any], run_id: str | None = None) -> str:
    """A run's name in the trackers: problem, method, compressor and seed, then the run id when
    given (runs that differ only in other parameters stay apart), e.g.
    ``a9a-marina-randk5-seed0-3f1c9a0e5b7d2c48``. Safe as a folder name: ``fashion-mnist:DIR``
    is named ``fashion-mnist``, a path by its last part; characters other than letters, digits
    and ``._+=-`` go.

    Args:
        config: the run's configuration (``problem``, ``method``, ``compressor``, ``seed``).
        run_id: the run's id, appended when given.
    """
    problem = str(config.get("problem"))
    problem = problem.split(":")[0] if re.match(r"[\w-]+:", problem) else problem.rstrip("/\\")
    parts = [
        re.split(r"[/\\]", problem)[-1],
        config.get("method"),
        config.get("compressor"),
        f"seed{config.get('seed')}",
        *([run_id] if run_id else []),
    ]
    return "-".join(re.sub(r"[^\w.+=-]", "", str(p)) for p in parts)


class TensorBoard(Tracker):
    """Event files in ``root/tensorboard/<run_name>`` (scalars ``marina/<column>``, config as text).

    Args:
        root: the folder of ``tensorboard/`` (default: the working directory).
        run_name: the run's folder name (default: :func:`run_name` of the configuration).
    """

    name, module = "tensorboard", "tensorboard"

    def start(self, config: Mapping[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(
            log_dir=str(self.root / "tensorboard" / (self.run_name or run_name(config)))
        )
        self.writer.add_text("config", "```\n" + json.dumps(_flat(config), indent=1, default=str) + "\n```")

    def log(self, row: Mapping[str, float], step: int) -> None:
        for key, value in _metrics(row).items():
            self.writer.add_scalar(f"marina/{key}", value, step)

    def finish(self, status: str, message: str) -> None:
        self.writer.add_text("status", f"{status}: {message}")
        self.writer.close()


class MLflow(Tracker):
    """A run of experiment ``marina`` in ``root/mlruns`` (or ``$MLFLOW_TRACKING_URI``): the
    configuration as parameters, every row as metrics, ``marina.status`` as a tag.

    Args:
        root: the folder of ``mlruns/`` (default: the working directory).
        run_name: the MLflow run's name (default: :func:`run_name` of the configuration).
    """

    name, module = "mlflow", "mlflow"

    def start(self, config: Mapping[str, Any]) -> None:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 warns off file stores
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI") or (self.root / "mlruns").resolve().as_uri()
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name("marina")
        experiment = found.experiment_id if found else self.client.create_experiment("marina")
        name = self.run_name or run_name(config)
        self.run_id = self.client.create_run(experiment, run_name=name).info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in _flat(config).items()]
        self.client.log_batch(self.run_id, params=params)

    def log(self, row: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(1000 * time.time())
        metrics = [Metric(k, v, now, int(step)) for k, v in _metrics(row).items() if math.isfinite(v)]
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, status: str, message: str) -> None:
        self.client.set_tag(self.run_id, "marina.status", status)
        self.client.set_terminated(self.run_id, "FINISHED" if status != "failed" else "FAILED")


class WandB(Tracker):
    """A Weights & Biases run of project ``marina`` under ``root/wandb``, offline unless
    ``$WANDB_MODE`` says otherwise (``wandb sync`` uploads it later).

    Args:
        root: the folder of ``wandb/`` (default: the working directory).
        run_name: the W&B run's name (default: :func:`run_name` of the configuration).
    """

    name, module = "wandb", "wandb"

    def start(self, config: Mapping[str, Any]) -> None:
        import wandb

        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "marina"),
            dir=str(self.root),
            name=self.run_name or run_name(config),
            config=_flat(config),
            mode=os.environ.get("WANDB_MODE", "offline"),
            reinit="create_new",
        )

    def log(self, row: Mapping[str, float], step: int) -> None:
        self.run.log(_metrics(row), step=int(step))

    def finish(self, status: str, message: str) -> None:
        self.run.summary["marina.status"] = status
        self.run.finish(exit_code=1 if status == "failed" else 0)


TRACKERS: dict[str, type[Tracker]] = {t.name: t for t in (TensorBoard, MLflow, WandB)}
"""Tracker name (as ``--log`` and ``loggers=`` take it) -> class."""


def names(spec: str | Iterable[Any] | None, option: str = "loggers") -> list[str]:
    """The tracker names of ``spec`` (``"tensorboard,mlflow"`` or a list), each checked to be
    known and its library installed (ConfigError naming the value otherwise).

    Args:
        spec: comma-separated names, a list of names, or None (no trackers).
        option: how the errors name the option (``loggers``, ``--log``).
    """
    if spec is None:
        return []
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out = []
    for item in items:
        name = str(item).strip().lower()
        if name not in TRACKERS:
            raise ConfigError(f"{option} {str(item)!r}: unknown tracker; allowed: {', '.join(TRACKERS)}")
        if importlib.util.find_spec(TRACKERS[name].module) is None:
            raise ConfigError(
                f"{option} {name}: the {TRACKERS[name].module} package is not installed "
                f"(pip install 'marina-opt[{name}]')"
            )
        if name not in out:
            out.append(name)
    return out


def make(
    loggers: str | Iterable[Any] | None, root: str | os.PathLike | None = None, run_name: str | None = None
) -> list[Any]:
    """Tracker objects for ``loggers``: names (see :func:`names`) become built-in trackers
    writing under ``root``; other objects are kept as they are.

    Args:
        loggers: tracker names (comma-separated or a list), tracker objects, or None.
        root: the folder the built-in trackers write under (default: the working directory).
        run_name: the run's name in every built-in tracker (default: from its configuration).
    """
    if loggers is None:
        return []
    items = loggers.split(",") if isinstance(loggers, str) else list(loggers)
    built = []
    for item in items:
        if isinstance(item, str):
            built += [TRACKERS[n](root, run_name) for n in names(item)]
        else:
            built.append(item)
    return built


class Session:
    """The trackers of one run: started with its configuration, fed through :meth:`wrap`.

    Args:
        loggers: as :func:`make` takes them.
        config: the run's configuration, handed to every tracker's ``start``.
    """

    def __init__(self, loggers: Any, config: Mapping[str, Any]) -> None:
        self.trackers = make(loggers)
        for t in self.trackers:
            t.start(config)

    def wrap(
        self, progress: Callable[[dict[str, float], int], None] | None
    ) -> Callable[[dict[str, float], int], None] | None:
        """``progress`` that also hands each row to every tracker."""
        if not self.trackers:
            return progress

        def on_row(row: dict[str, float], total: int) -> None:
            for t in self.trackers:
                t.log(row, int(row["iteration"]))
            if progress is not None:
                progress(row, total)

        return on_row

    def close(self, status: str, message: str = "") -> None:
        for t in self.trackers:
            t.finish(status, message)
        self.trackers = []
