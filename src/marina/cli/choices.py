"""Names and defaults that the parsers show in ``--help``, importable without torch, pandas or
matplotlib (so that every ``marina ... --help`` returns at once). Each is a copy of a value its
owning module defines; ``tests/test_cli_help.py`` checks that they agree."""

from __future__ import annotations

CHECKPOINT_EVERY = 1000
""":data:`marina.experiments.DEFAULT_CHECKPOINT_EVERY`."""

X_AXES = ("rounds", "bits", "epochs", "time", "link_time")
"""The keys of :data:`marina.plotting.X_AXES`."""

BANDS = ("minmax", "std", "ci95")
"""The keys of :data:`marina.plotting.BANDS`."""

COLOR_BY = ("auto", "method", "compressor")
""":data:`marina.plotting.COLOR_BY`."""

SPLIT_KINDS = ("contiguous", "shuffled", "dirichlet")
""":data:`marina.data.splits.KINDS`."""

WIRE_DTYPES = ("float16", "bfloat16", "float32", "float64")
"""The names in :data:`marina.compressors.WIRE_DTYPES`."""

BUNDLED_DATA = ("a9a", "a9a.t", "w8a", "mushrooms", "phishing", "ijcnn1", "ijcnn1.t")
""":func:`marina.data.bundled_names`."""
