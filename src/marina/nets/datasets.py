"""Image data sets for the neural-network experiments, read from local files only (no download).

- CIFAR-100 (Krizhevsky 2009), the data of the MARINA paper's ResNet-18 experiment: the official
  "python version" archive ``cifar-100-python.tar.gz`` (read in place, no extraction needed) or
  its extracted folder ``cifar-100-python/`` with the files ``train``, ``test``, ``meta``. Each
  file is a pickled dict (written by Python 2): ``b'data'`` a (N, 3072) uint8 array whose rows
  hold the 1024 red, then green, then blue values of a 32x32 image in row-major order;
  ``b'fine_labels'`` a list of N ints in [0, 100); ``meta`` has ``b'fine_label_names'``.
- Fashion-MNIST (Xiao, Rasul & Vollgraf 2017): the four IDX files
  ``{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (gzipped or plain). Looked up in an explicit
  ``data_dir``, then where Debian's ``dataset-fashion-mnist`` package installs them
  (``/usr/share/datasets/fashion-mnist``), then the small subset bundled with marina
  (``marina/data/fashion_mnist``, see its SOURCES.md). :attr:`ImageDataset.source` says which.

Safety: the CIFAR files are pickles, and unpickling runs code named in the file. They are read
with :class:`SafeUnpickler`, which resolves only the few globals a pickled numpy array needs
(``numpy.core.multiarray._reconstruct``, ``numpy.ndarray``, ``numpy.dtype``, numpy 2's
``_frombuffer`` and ``_codecs.encode`` used by Python 3 pickles of bytes); any other global
(``os.system``, ``builtins.eval``...) raises :class:`ConfigError`. Built-in containers, numbers
and strings need no global.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import logging
import pickle
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from marina.errors import ConfigError

__all__ = [
    "CIFAR100_URL",
    "CIFAR100_MD5",
    "FASHION_MNIST_BUNDLED",
    "FASHION_MNIST_SYSTEM",
    "FASHION_MNIST_CLASSES",
    "ImageDataset",
    "Normalize",
    "SafeUnpickler",
    "load_cifar100",
    "load_fashion_mnist",
    "read_idx",
    "write_idx",
]

log = logging.getLogger("marina.nets")

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
"""Page of the official archive (its "CIFAR-100 python version" link, 161 MB)."""
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
"""md5 of the official ``cifar-100-python.tar.gz`` (as checked by torchvision)."""
_CIFAR100_ARCHIVE = "cifar-100-python.tar.gz"
_CIFAR100_FOLDER = "cifar-100-python"

FASHION_MNIST_SYSTEM = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` package installs the four gzipped IDX files."""
FASHION_MNIST_BUNDLED = Path(__file__).resolve().parent.parent / "data" / "fashion_mnist"
"""The small class-balanced subset shipped with marina (2,000 train, 500 test images)."""
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


class Normalize:
    """uint8 images -> float32 ``(x / 255 - mean) / std`` per channel (mean, std of the train set).

    Args:
        mean: (C,) per-channel mean of the images scaled to [0, 1].
        std: (C,) per-channel standard deviation of the images scaled to [0, 1].
    """

    def __init__(self, mean: Tensor, std: Tensor) -> None:
        self.mean = mean.to(torch.float32).reshape(-1, 1, 1)
        self.std = std.to(torch.float32).reshape(-1, 1, 1)

    def __call__(self, x: Tensor) -> Tensor:
        if self.mean.device != x.device:
            self.mean, self.std = self.mean.to(x.device), self.std.to(x.device)
        return (x.to(torch.float32) * (1.0 / 255.0) - self.mean) / self.std

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"


@dataclass(frozen=True)
class ImageDataset:
    """Train and test images (uint8, (N, C, H, W)) with int64 labels, as read from disk.

    Attributes:
        name: the data set's name (``"cifar100"``, ``"fashion-mnist"``).
        train_images: (N, C, H, W) uint8 training images.
        train_labels: (N,) int64 training labels.
        test_images: (N_test, C, H, W) uint8 test images.
        test_labels: (N_test,) int64 test labels.
        classes: the class names, by label.
        source: where the files were read from (path and kind), printed with the results.
        extra: further details about the files, free form.
    """

    name: str
    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    classes: tuple[str, ...]
    source: str
    """Where the files were read from (path and kind), to be printed with the results."""
    extra: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def normalizer(self) -> Normalize:
        """Per-channel standardisation with the mean and std of the training images."""
        x = self.train_images.to(torch.float64) / 255.0
        dims = (0, 2, 3)
        return Normalize(x.mean(dim=dims), x.std(dim=dims))

    def __repr__(self) -> str:
        return (
            f"ImageDataset({self.name}: {len(self.train_labels)} train, {len(self.test_labels)} test, "
            f"{tuple(self.train_images.shape[1:])}, {self.num_classes} classes; from {self.source})"
        )


# ---------------------------------------------------------------------------------------------
# CIFAR-100
# ---------------------------------------------------------------------------------------------


def _numpy_reconstruct():
    try:  # numpy >= 2
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _numpy_frombuffer():
    try:
        from numpy._core.numeric import _frombuffer
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.numeric import _frombuffer
    return _frombuffer


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals needed to rebuild numpy arrays (see module doc)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy.core.numeric", "_frombuffer"): _numpy_frombuffer,
        ("numpy._core.numeric", "_frombuffer"): _numpy_frombuffer,
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
        ("_codecs", "encode"): lambda: codecs.encode,
    }

    def find_class(self, module: str, name: str):
        factory = self._ALLOWED.get((module, name))
        if factory is None:
            raise ConfigError(
                f"refusing to unpickle global {module}.{name}: only numpy arrays and built-in "
                "containers are allowed in a CIFAR-100 file"
            )
        return factory()


def _unpickle(raw: bytes, what: str) -> dict:
    try:
        obj = SafeUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except ConfigError as err:
        raise ConfigError(f"cifar100: {what}: {err}") from None
    except Exception as err:  # noqa: BLE001 - a corrupt or truncated file
        raise ConfigError(
            f"cifar100: {what} is not a readable pickle ({type(err).__name__}: {err})"
        ) from None
    if not isinstance(obj, dict):
        raise ConfigError(f"cifar100: {what} holds a {type(obj).__name__}, expected a dict")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _cifar_split(d: dict, what: str) -> tuple[Tensor, Tensor]:
    for key in ("data", "fine_labels"):
        if key not in d:
            raise ConfigError(f"cifar100: {what} has no key b'{key}' (keys: {sorted(d)})")
    data = np.asarray(d["data"])
    labels = np.asarray(d["fine_labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ConfigError(f"cifar100: {what} b'data' is {data.dtype} {data.shape}, expected uint8 (N, 3072)")
    if labels.shape != (data.shape[0],):
        raise ConfigError(f"cifar100: {what} has {labels.size} labels for {data.shape[0]} images")
    if labels.size and (labels.min() < 0 or labels.max() >= 100):
        raise ConfigError(
            f"cifar100: {what} labels span [{labels.min()}, {labels.max()}], must be in [0, 100)"
        )
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return images, torch.from_numpy(labels)


def _missing_cifar(where: str) -> ConfigError:
    return ConfigError(
        f"cifar100: {where}. marina does not download data at run time: get the CIFAR-100 "
        f"'python version' archive {_CIFAR100_ARCHIVE} (161 MB, md5 {CIFAR100_MD5}) from "
        f"{CIFAR100_URL}, put it (or the {_CIFAR100_FOLDER}/ folder it unpacks to) in a directory "
        "and pass that directory: --data-dir DIR, data_dir=DIR, or the problem spec cifar100:DIR"
    )


def load_cifar100(data_dir: str | Path | None) -> ImageDataset:
    """CIFAR-100 from ``data_dir``: the archive, the extracted folder, or the three files themselves.

    Looked up in this order: ``data_dir/cifar-100-python.tar.gz``, ``data_dir/cifar-100-python/``,
    ``data_dir`` itself (holding ``train``, ``test``, ``meta``); ``data_dir`` may also be the
    archive's path. The archive's md5 is compared with the official one and the result stated
    in :attr:`ImageDataset.source`. Images (N, 3, 32, 32) uint8, fine labels (100 classes).

    Args:
        data_dir: where the files are (None: an error saying where to get them).

    Raises:
        ConfigError: the files are missing, damaged or not CIFAR-100's.
    """
    if data_dir is None:
        raise _missing_cifar("no data directory given")
    root = Path(data_dir).expanduser()
    archive = root if root.is_file() else root / _CIFAR100_ARCHIVE
    raw: dict[str, bytes] = {}
    if archive.is_file():
        blob = archive.read_bytes()
        digest = hashlib.md5(blob).hexdigest()
        try:
            with tarfile.open(fileobj=io.BytesIO(blob), mode="r:*") as tar:
                for member in tar.getmembers():
                    base = member.name.rsplit("/", 1)[-1]
                    if member.isfile() and base in ("train", "test", "meta"):
                        raw[base] = tar.extractfile(member).read()
        except tarfile.TarError as err:
            raise ConfigError(f"cifar100: {archive} is not a readable tar archive ({err})") from None
        check = (
            "official archive, md5 verified"
            if digest == CIFAR100_MD5
            else f"md5 {digest}, not the official one"
        )
        source = f"{archive} ({check})"
        missing = [f for f in ("train", "test") if f not in raw]
        if missing:
            raise ConfigError(f"cifar100: archive {archive} has no member {', '.join(missing)}")
    else:
        folder = next((f for f in (root / _CIFAR100_FOLDER, root) if (f / "train").is_file()), None)
        if folder is None:
            raise _missing_cifar(
                f"found neither {archive} nor {root / _CIFAR100_FOLDER}/train nor {root / 'train'}"
            )
        for name in ("train", "test", "meta"):
            if (folder / name).is_file():
                raw[name] = (folder / name).read_bytes()
        if "test" not in raw:
            raise _missing_cifar(f"{folder} has a train file but no test file")
        source = f"{folder} (extracted folder)"
    train_x, train_y = _cifar_split(_unpickle(raw["train"], "train"), "train")
    test_x, test_y = _cifar_split(_unpickle(raw["test"], "test"), "test")
    classes: tuple[str, ...] = tuple(f"class_{i}" for i in range(100))
    if "meta" in raw:
        names = _unpickle(raw["meta"], "meta").get("fine_label_names")
        if names is not None and len(names) == 100:
            classes = tuple(n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names)
    log.info("cifar100: read %d train / %d test images from %s", len(train_y), len(test_y), source)
    return ImageDataset("cifar100", train_x, train_y, test_x, test_y, classes, source)


# ---------------------------------------------------------------------------------------------
# IDX files and Fashion-MNIST
# ---------------------------------------------------------------------------------------------

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (LeCun's MNIST format), gzipped (detected by its magic bytes) or plain.

    Header: two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), the number of dimensions, then each size as a big-endian
    uint32; then the values, big-endian, row-major.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise ConfigError(f"idx: {path} is a damaged gzip file ({err})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ConfigError(f"idx: {path} does not start with an IDX magic number")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ConfigError(f"idx: {path} is truncated inside its header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ConfigError(
            f"idx: {path} holds {len(raw) - header} bytes of data, expected {expected} for {shape}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray, compress: bool | None = None) -> None:
    """Write ``array`` as an IDX file; gzipped (mtime 0, reproducible) if ``compress`` or a .gz name."""
    path = Path(path)
    array = np.asarray(array)
    code = next((c for c, t in _IDX_TYPES.items() if np.dtype(t).newbyteorder("=") == array.dtype), None)
    if code is None:
        raise ConfigError(
            f"idx: dtype {array.dtype} cannot be written (uint8, int8, int16, int32, float32/64)"
        )
    big = array.astype(np.dtype(_IDX_TYPES[code]), copy=False)
    raw = bytes([0, 0, code, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    raw += big.tobytes(order="C")
    if compress if compress is not None else path.suffix == ".gz":
        raw = gzip.compress(raw, compresslevel=9, mtime=0)
    path.write_bytes(raw)


def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _fashion_from(folder: Path, source: str) -> ImageDataset:
    files = {key: _idx_file(folder, stem) for key, stem in _FASHION_FILES.items()}
    arrays = {key: read_idx(p) for key, p in files.items()}  # every file exists (checked by caller)
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
            raise ConfigError(f"fashion-mnist: {split} images in {folder} are {images.dtype} {images.shape}")
        if labels.shape != (images.shape[0],) or (labels.size and int(labels.max()) >= 10):
            raise ConfigError(f"fashion-mnist: {split} labels in {folder} do not match the images")
    to_images = lambda a: torch.from_numpy(a.copy()).unsqueeze(1)  # (N, 1, 28, 28)
    to_labels = lambda a: torch.from_numpy(a.astype(np.int64))
    return ImageDataset(
        "fashion-mnist",
        to_images(arrays["train_images"]),
        to_labels(arrays["train_labels"]),
        to_images(arrays["test_images"]),
        to_labels(arrays["test_labels"]),
        FASHION_MNIST_CLASSES,
        source,
    )


def _has_fashion(folder: Path) -> bool:
    return all(_idx_file(folder, stem) is not None for stem in _FASHION_FILES.values())


def load_fashion_mnist(data_dir: str | Path | None = None) -> ImageDataset:
    """Fashion-MNIST images (N, 1, 28, 28) uint8 and labels, from the first place that has them.

    1. ``data_dir`` when given (it must then hold the four files: an explicit directory that
       lacks them is an error, not a silent fallback);
    2. ``/usr/share/datasets/fashion-mnist`` (Debian/Ubuntu: ``apt-get install dataset-fashion-mnist``);
    3. the bundled subset (2,000 train / 500 test images, 200 / 50 per class).

    Args:
        data_dir: a directory holding the four IDX files (plain or ``.gz``), or None.
    """
    names = ", ".join(f"{stem}[.gz]" for stem in _FASHION_FILES.values())
    if data_dir is not None:
        folder = Path(data_dir).expanduser()
        for candidate in (folder, folder / "fashion-mnist"):
            if _has_fashion(candidate):
                data = _fashion_from(candidate, f"{candidate} (data_dir)")
                break
        else:
            raise ConfigError(f"fashion-mnist: {folder} does not hold the four IDX files ({names})")
    elif _has_fashion(FASHION_MNIST_SYSTEM):
        data = _fashion_from(
            FASHION_MNIST_SYSTEM, f"{FASHION_MNIST_SYSTEM} (Debian package dataset-fashion-mnist)"
        )
    elif _has_fashion(FASHION_MNIST_BUNDLED):
        data = _fashion_from(FASHION_MNIST_BUNDLED, f"{FASHION_MNIST_BUNDLED} (bundled subset)")
    else:  # pragma: no cover - broken installation
        raise ConfigError(f"fashion-mnist: no data found (looked for {names} in {FASHION_MNIST_SYSTEM})")
    log.info(
        "fashion-mnist: read %d train / %d test images from %s",
        len(data.train_labels),
        len(data.test_labels),
        data.source,
    )
    return data
