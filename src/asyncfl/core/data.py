"""A dataset by name, as tensors: ``load`` reads its registry entry's source (datasets.py, loaders.py) and
``to_tensor`` normalises images as its entry says. Nothing is read at import time.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from asyncfl.core import datasets
from asyncfl.core.loaders import Dataset, DatasetUnavailable, read_idx, stratified_split

__all__ = ["Dataset", "DatasetUnavailable", "load", "read_idx", "stratified_split", "to_tensor"]


def load(name: str, data_dir: str | Path = "data") -> Dataset:
    """Load dataset ``name`` (a registry entry, see datasets.py); raises DatasetUnavailable with a one-line
    reason when it cannot."""
    spec = datasets.get(name)
    return replace(spec.loader(str(data_dir)), n_classes=spec.n_classes)


def to_tensor(images: np.ndarray, dataset_name: str) -> torch.Tensor:
    """uint8 [n, H, W] -> normalised float32 [n, 1, H, W], as torchvision's ToTensor+Normalize."""
    spec = datasets.get(dataset_name)
    mean, std = spec.mean, spec.std
    x = torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32).div_(255.0)
    return x.sub_(mean).div_(std).unsqueeze(1)
