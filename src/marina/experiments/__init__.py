"""Experiments: a run's configuration, grids of them, their execution, and the files they write.

=================  ==================================================================
module             what it holds
=================  ==================================================================
``config``         :class:`RunConfig`: one run's configuration and its ``run_id``
``grid``           sweep files: parsing, expansion, validation into run configurations
``loading``        :func:`load_problem`: the problem of a configuration (all entry points)
``execute``        :func:`execute`: one configuration run into a results directory
``pool``           :func:`run_sweep`: many configurations, in-process or a process pool
``distributed``    :func:`execute_distributed`: one configuration on torch.distributed ranks
``results``        results directories: per-run files, combined tables, schema version
=================  ==================================================================

``marina run``, ``marina sweep`` and ``marina demo`` are thin command lines over these.
"""

from __future__ import annotations

from marina.experiments import results
from marina.experiments.config import DEFAULT_CHECKPOINT_EVERY, RunConfig, default_log_every
from marina.experiments.distributed import execute_distributed
from marina.experiments.execute import execute, torch_threads
from marina.experiments.grid import (
    GRID_KEYS,
    PARAM_KEYS,
    Raw,
    SweepSpec,
    expand,
    load_sweep,
    parse_shard,
    parse_sweep,
    shard,
    validate,
)
from marina.experiments.loading import ProblemCache, load_problem
from marina.experiments.pool import SweepSummary, run_sweep

__all__ = [
    "DEFAULT_CHECKPOINT_EVERY",
    "GRID_KEYS",
    "PARAM_KEYS",
    "ProblemCache",
    "Raw",
    "RunConfig",
    "SweepSpec",
    "SweepSummary",
    "default_log_every",
    "execute",
    "execute_distributed",
    "expand",
    "load_problem",
    "load_sweep",
    "parse_shard",
    "parse_sweep",
    "results",
    "run_sweep",
    "shard",
    "torch_threads",
    "validate",
]
