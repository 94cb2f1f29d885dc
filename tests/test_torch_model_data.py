"""Your own model and data on the problem API: Datasets, kept weights, a result back in a module."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parameters_to_vector
from torch.utils.data import Dataset, TensorDataset

import marina
import marina.problems.torch_data as torch_data
from marina.errors import ConfigError
from marina.nets import FASHION_MNIST_BUNDLED, fashion_mnist, keyed_init_, small_cnn
from marina.problems import TorchModelProblem
from test_torch_model import N_WORKERS, M, _bn_cnn, _data, _mlp
from test_torch_model_run import _one_thread  # noqa: F401 (autouse fixture)


class Pairs(Dataset):
    """A map-style dataset of (tensor, int) pairs that counts its reads; ``targets`` optional."""

    def __init__(self, x, y, with_targets: bool = False):
        self.x, self.y, self.reads = x, y, 0
        if with_targets:
            self.targets = y.tolist()

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        self.reads += 1
        return self.x[i], int(self.y[i])


def test_a_dataset_gives_the_problem_of_its_tensors_reading_only_the_hosted_samples(seed):
    x, y = _data(seed, N_WORKERS * M + 2, (12,))
    ref = TorchModelProblem(_mlp(), (x, y), workers=N_WORKERS, split="shuffled", seed=seed)
    data = Pairs(x, y)
    part = TorchModelProblem(
        _mlp(), data, workers=N_WORKERS, split="shuffled", seed=seed, hosted_workers=[0, 2], init_seed=0
    )
    assert data.reads == 2 * M  # one read per kept sample, none for the dropped or the other worker's
    full = TorchModelProblem(_mlp(), Pairs(x, y), workers=N_WORKERS, split="shuffled", seed=seed, init_seed=0)
    keyed = TorchModelProblem(_mlp(), (x, y), workers=N_WORKERS, split="shuffled", seed=seed, init_seed=0)
    assert torch.equal(full._x, ref._x) and torch.equal(full._y, ref._y) and full._y.dtype == torch.int64
    point = keyed.initial_point()
    torch.testing.assert_close(full.local_grads(point), keyed.local_grads(point), rtol=0, atol=0)
    torch.testing.assert_close(part.local_grads(point), keyed.local_grads(point)[[0, 2]], rtol=0, atol=0)
    # a TensorDataset is its tensors; a test Dataset gives the test accuracy of its tensors
    tensors = TorchModelProblem(_mlp(), TensorDataset(x, y), workers=N_WORKERS, init_seed=0)
    with_test = TorchModelProblem(_mlp(), (x, y), workers=N_WORKERS, test=Pairs(x[:9], y[:9]), init_seed=0)
    plain_test = TorchModelProblem(_mlp(), (x, y), workers=N_WORKERS, test=(x[:9], y[:9]), init_seed=0)
    assert torch.equal(tensors._x, plain_test._x)
    assert with_test.extra_metrics(point) == plain_test.extra_metrics(point)


def test_a_dirichlet_split_reads_labels_from_targets_or_from_one_full_pass(seed):
    x, y = _data(seed, N_WORKERS * M, (12,))
    options = dict(workers=N_WORKERS, split="dirichlet", seed=seed, hosted_workers=[1], init_seed=0)
    ref = TorchModelProblem(_mlp(), (x, y), **options)
    labelled, unlabelled = Pairs(x, y, with_targets=True), Pairs(x, y)
    a = TorchModelProblem(_mlp(), labelled, **options)
    b = TorchModelProblem(_mlp(), unlabelled, **options)
    assert labelled.reads == M  # labels from .targets: only worker 1's samples are read
    assert unlabelled.reads == N_WORKERS * M  # one full pass for the labels, none after
    assert torch.equal(a._x, ref._x) and torch.equal(b._x, ref._x) and torch.equal(b._y, ref._y)


def test_the_memory_estimate_is_checked_before_reading(monkeypatch):
    x, y = _data(0, N_WORKERS * M + 2, (12,))
    rows = N_WORKERS * M
    need = rows * (12 * 4 + 8)  # float32 (12,) input + int64 target per kept sample
    assert torch_data.estimate_bytes((x[0], torch.tensor(1)), rows) == need
    monkeypatch.setattr(torch_data, "available_memory", lambda device: need - 1)
    data = Pairs(x, y)
    with pytest.raises(ConfigError) as err:
        TorchModelProblem(_mlp(), data, workers=N_WORKERS)
    message = str(err.value)
    assert f"needs about {need} bytes" in message and f"only {need - 1} bytes is available on cpu" in message
    assert "materialising 30 samples (input (12,) torch.float32, target () torch.int64)" in message
    assert data.reads == 1  # the first sample only
    monkeypatch.setattr(torch_data, "available_memory", lambda device: need)
    TorchModelProblem(_mlp(), Pairs(x, y), workers=N_WORKERS)  # fits exactly
    assert torch_data.available_memory(torch.device("cpu")) > 0  # the real host figure is readable


class Items(Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


@pytest.mark.parametrize(
    "items, message",
    [
        ([torch.zeros(12)] * 6, "data set item 0 is a Tensor, must be a pair"),
        ([(torch.zeros(12), 0)] * 5 + [(torch.zeros(11), 0)], r"item 5 has a input of shape \(11,\)"),
        ([(object(), 0)] * 6, "returned a object as input, which is not a tensor"),
        ([], "workers"),
    ],
)
def test_bad_datasets_are_named(items, message):
    with pytest.raises(ConfigError, match=message):
        TorchModelProblem(_mlp(), Items(items), workers=2)
    with pytest.raises(ConfigError, match=r"must be \(inputs, targets\) tensors or a torch.utils.data"):
        TorchModelProblem(_mlp(), [1, 2, 3], workers=2)


def test_a_given_model_keeps_its_weights_and_init_seed_redraws_them():
    x, y = _data(0, N_WORKERS * M, (2, 5, 5))
    model = _bn_cnn()
    own = parameters_to_vector(model.parameters()).detach().clone()
    kept = TorchModelProblem(model, (x, y), workers=N_WORKERS)
    assert torch.equal(kept.initial_point(), own)
    keyed = TorchModelProblem(model, (x, y), workers=N_WORKERS, init_seed=4)
    expected = parameters_to_vector(keyed_init_(copy.deepcopy(model), 4).parameters()).detach()
    assert torch.equal(keyed.initial_point(), expected) and not torch.equal(expected, own)
    assert torch.equal(parameters_to_vector(model.parameters()).detach(), own)  # caller's module untouched


def test_ready_made_tasks_keep_their_keyed_start_and_a_passed_model_its_weights():
    default = fashion_mnist(2, data_dir=FASHION_MNIST_BUNDLED, train_samples=20)
    keyed = parameters_to_vector(keyed_init_(small_cnn(num_classes=10), 0).parameters()).detach()
    assert torch.equal(default.initial_point(), keyed)
    mine = small_cnn(num_classes=10)
    own = parameters_to_vector(mine.parameters()).detach().clone()
    passed = fashion_mnist(2, data_dir=FASHION_MNIST_BUNDLED, train_samples=20, model=mine)
    assert torch.equal(passed.initial_point(), own)


def test_a_result_loads_back_into_a_model_with_batch_norm_statistics_at_that_point(seed):
    x, y = _data(seed, N_WORKERS * M, (2, 5, 5))
    xt, yt = _data(seed + 1, 11, (2, 5, 5))
    model = _bn_cnn()
    prob = TorchModelProblem(model, (x, y), workers=N_WORKERS, test=(xt, yt), eval_chunk_size=10_000)
    res = marina.run(method="gd", problem=prob, stepsize=0.5, iterations=3, seed=seed, log_every=3)
    target = _bn_cnn()
    assert prob.load_into(target, res) is target and target.training  # mode left as it was
    assert torch.equal(parameters_to_vector(target.parameters()).detach(), res.x)
    # running statistics by hand: the conv output of all training data at x, one chunk
    with torch.no_grad():
        h = target[0](x)
    bn = target[1]
    torch.testing.assert_close(bn.running_mean, h.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(bn.running_var, h.transpose(0, 1).reshape(4, -1).var(dim=1, unbiased=True))
    assert int(bn.num_batches_tracked) == 1
    target.eval()
    with torch.no_grad():
        acc = float((target(xt).argmax(dim=1) == yt).float().mean())
        train_loss = float(F.cross_entropy(target(x), y))
    assert acc == pytest.approx(res.history["test_acc"].iloc[-1])
    assert train_loss == pytest.approx(res.history["train_loss"].iloc[-1], rel=1e-5)
    fresh = prob.model_at(res.x)
    assert not fresh.training and fresh is not model
    with torch.no_grad():
        assert torch.equal(fresh(xt), target(xt))
    assert torch.equal(parameters_to_vector(model.parameters()).detach(), prob.initial_point())
    with pytest.raises(ConfigError, match=r"parameters \(name, shape\) differ"):
        prob.load_into(_mlp(), res.x)
    with pytest.raises(ConfigError, match="x has shape"):
        prob.load_into(target, res.x[:-1])


def test_import_marina_exposes_the_documented_entry_points():
    assert callable(marina.distributed.run) and marina.problems.TorchModelProblem is TorchModelProblem
    assert marina.torch.VRMARINA.__module__ == "marina.torch.optim"
    assert "torch" not in marina.__all__  # ``from marina import *`` keeps the user's torch
