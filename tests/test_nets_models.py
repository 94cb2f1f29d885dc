"""Architectures and keyed initialisation of marina.nets (counts checked by hand arithmetic)."""

import math

import pytest
import torch
from torch import nn

from marina.errors import ConfigError
from marina.nets import keyed_init_, resnet18, small_cnn


def _conv(c_in: int, c_out: int, k: int, bias: bool = False) -> int:
    return c_in * c_out * k * k + (c_out if bias else 0)


def _resnet18_count(num_classes: int) -> int:
    """ResNet-18, CIFAR variant, counted from the architecture (He et al. 2016, Table 1)."""
    bn = lambda c: 2 * c  # weight and bias per channel
    total = _conv(3, 64, 3) + bn(64)  # 3x3 stem, no max-pool
    c_in = 64
    for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for block in range(2):
            total += _conv(c_in, c_out, 3) + bn(c_out) + _conv(c_out, c_out, 3) + bn(c_out)
            if block == 0 and (stride != 1 or c_in != c_out):
                total += _conv(c_in, c_out, 1) + bn(c_out)  # projection shortcut
            c_in = c_out
    return total + 512 * num_classes + num_classes


def test_resnet18_parameter_count_and_output_shape():
    assert _resnet18_count(100) == 11_220_132
    for norm in ("batch", "group"):
        model = resnet18(num_classes=100, norm=norm)
        assert sum(p.numel() for p in model.parameters()) == 11_220_132
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(3, 3, 32, 32))
    assert out.shape == (3, 100)
    assert sum(p.numel() for p in resnet18(num_classes=10).parameters()) == _resnet18_count(10)


def test_resnet18_structure_is_the_cifar_variant():
    model = resnet18()
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert model.linear.out_features == 100


def test_small_cnn_count_and_shape():
    expected = _conv(1, 16, 5, bias=True) + _conv(16, 32, 5, bias=True) + 32 * 7 * 7 * 10 + 10
    model = small_cnn()
    assert sum(p.numel() for p in model.parameters()) == expected == 28_938
    assert model(torch.zeros(4, 1, 28, 28)).shape == (4, 10)


def test_bad_architecture_arguments():
    with pytest.raises(ConfigError, match="norm == 'layer'"):
        resnet18(norm="layer")
    with pytest.raises(ConfigError, match="num_classes == 0"):
        small_cnn(num_classes=0)


def test_keyed_init_reproducible_and_seed_dependent():
    a = keyed_init_(small_cnn(), 7)
    b = keyed_init_(small_cnn(), 7)
    c = keyed_init_(small_cnn(), 8)
    for pa, pb, pc in zip(a.parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb)
        assert not torch.equal(pa, pc)


def test_keyed_init_follows_pytorch_default_distribution(seed):
    """Linear weight ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)): moments within 6 sigma (any seed)."""
    model = keyed_init_(small_cnn(), seed)
    for w, fan_in in (
        (model.linear.weight, 32 * 49),
        (model.conv2.weight, 16 * 25),
        (model.conv2.bias, 16 * 25),
    ):
        w = w.detach().double().reshape(-1)
        b = 1.0 / math.sqrt(fan_in)
        n = w.numel()
        assert float(w.abs().max()) <= b
        assert abs(float(w.mean())) <= 6 * b / math.sqrt(3 * n), seed
        sd_sq = math.sqrt(4.0 / 45.0) * b * b / math.sqrt(n)  # sd of w^2 for U(-b, b)
        assert abs(float((w * w).mean()) - b * b / 3) <= 6 * sd_sq, seed


def test_keyed_init_norm_layers_and_unknown_modules():
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.GroupNorm(2, 4), nn.LayerNorm([4]))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.5)
        model[1].running_mean.fill_(3.0)
    keyed_init_(model, 0)
    for norm in model[1:]:
        assert torch.equal(norm.weight, torch.ones(4)) and torch.equal(norm.bias, torch.zeros(4))
    assert torch.equal(model[1].running_mean, torch.zeros(4))
    with pytest.raises(ConfigError, match="Embedding"):
        keyed_init_(nn.Sequential(nn.Embedding(5, 3)), 0)
