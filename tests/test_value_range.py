"""Values out of the representable range raise ValueRangeError, and callers decide by its type.

A rank or the runner must tell a divergence (non-finite values, values beyond the wire format)
from any other error without reading the message: rewording a message must change nothing.
"""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.distributed as dist

from marina import compressors
from marina.compressors.identity import Identity
from marina.errors import ConfigError, ValueRangeError
from marina.lazy_rows import DenseRows
from marina.network.torch_distributed import (
    _FAILED,
    _NON_FINITE,
    _WIRE_RANGE,
    DistributedError,
    TorchDistributedNetwork,
    failure_code,
)
from marina.rng import Randomness

SPECS = ["identity", "randk:2", "bernoulli:0.5", "qsgd:2", "natural", "natural-dithering:2", "permk"]


def _rng(n: int = 2) -> Randomness:
    return Randomness(0, "compress", 0, range(n))


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_values_raise_a_value_range_error(spec, bad):
    c = compressors.get(spec, workers=2)
    X = torch.ones(2, 6, dtype=torch.float64)
    X[:, :] = bad  # every entry, so a sparsifier reads one too
    for rows in (X, DenseRows(X)):
        with pytest.raises(ValueRangeError) as info:
            c.compress_sum(rows, _rng())
        assert info.value.non_finite
        with pytest.raises(ValueRangeError):
            c.compress(rows, _rng())


@pytest.mark.parametrize("spec", SPECS)
def test_values_beyond_the_wire_format_raise_a_value_range_error(spec):
    c = compressors.get(spec, workers=2)  # float32 on the wire: largest value about 3.4e38
    X = torch.full((2, 6), 1e300, dtype=torch.float64)
    for rows in (X, DenseRows(X)):
        with pytest.raises(ValueRangeError) as info:
            c.compress_sum(rows, _rng())
        assert not info.value.non_finite


def test_value_range_errors_are_config_errors_and_survive_pickling():
    err = ValueRangeError("anything at all", non_finite=True)
    assert isinstance(err, ConfigError)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is ValueRangeError and back.non_finite and str(back) == "anything at all"
    assert not ValueRangeError("x").non_finite


def test_distributed_size_codes_follow_the_type_not_the_text():
    assert (
        failure_code(ValueRangeError("reworded: the numbers got out of hand", non_finite=True)) == _NON_FINITE
    )
    assert failure_code(ValueRangeError("reworded: too big for the wire")) == _WIRE_RANGE
    # the words the old text matching looked for mean nothing without the type
    assert failure_code(ConfigError("non-finite value beyond the wire range, the largest value")) == _FAILED
    assert failure_code(RuntimeError("non-finite")) == _FAILED


class _Refuses(Identity):
    """An identity whose compression raises ``error``, with sizes that vary (so they are exchanged)."""

    fixed_size = False

    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error

    def _compress(self, X, rng, amax):
        raise self.error


@pytest.fixture
def one_rank():
    """A real one-process gloo group (the size exchange and the error path run for real)."""
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield TorchDistributedNetwork(2, 0)
    finally:
        dist.destroy_process_group()


def test_a_rank_reraises_its_value_range_error_whatever_its_text(one_rank):
    X = torch.ones(2, 5, dtype=torch.float64)
    err = ValueRangeError("reworded, with none of the old words", non_finite=True)
    with pytest.raises(ValueRangeError) as info:
        one_rank.aggregate(_Refuses(err), X, 0)
    assert info.value is err
    with pytest.raises(ValueRangeError) as info:
        one_rank.aggregate(compressors.get("randk:2"), torch.full((2, 5), float("nan")), 0)
    assert info.value.non_finite
    # any other error is a failure, even when its text reads like a divergence
    with pytest.raises(DistributedError):
        one_rank.aggregate(_Refuses(ConfigError("non-finite value, wire range, largest value")), X, 0)


@pytest.mark.parametrize(("code", "non_finite"), [(_NON_FINITE, True), (_WIRE_RANGE, False)])
def test_ranks_whose_own_values_are_fine_raise_a_value_range_error_too(one_rank, code, non_finite):
    """Another rank's values left the range: this rank raises the same type, with the flag."""
    one_rank.world_size = 3  # as if two more ranks had sent their sizes
    sizes = torch.tensor([[100, 100], [code, code], [100, 100]])
    with pytest.raises(ValueRangeError, match=r"rank\(s\) 1") as info:
        one_rank._raise_compress_failure(compressors.get("randk:2"), sizes, None)
    assert info.value.non_finite is non_finite
    sizes[2] = _FAILED
    with pytest.raises(DistributedError, match=r"rank\(s\) 1, 2"):
        one_rank._raise_compress_failure(compressors.get("randk:2"), sizes, None)
