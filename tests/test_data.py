"""Dataset sources: the offline mnist-5k split, idx parsing, normalisation and the download failure."""

import gzip
import struct

import numpy as np
import pytest
import torch

from asyncfl.core import data


def test_mnist_5k_is_a_fixed_stratified_4000_1000_split():
    a, b = data.load("mnist-5k"), data.load("mnist-5k")
    assert a.train_images.shape == (4000, 28, 28) and a.test_images.shape == (1000, 28, 28)
    assert (np.bincount(a.train_labels) == 400).all() and (np.bincount(a.test_labels) == 100).all()
    assert np.array_equal(a.train_labels, b.train_labels) and np.array_equal(a.test_images, b.test_images)
    # No image is in both sets (the digits are distinct real samples).
    train_rows = {bytes(x) for x in a.train_images.reshape(4000, -1)}
    assert not any(bytes(x) in train_rows for x in a.test_images.reshape(1000, -1))


def test_read_idx_reads_what_was_written(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "x-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 2, 3, 4) + images.tobytes())
    assert np.array_equal(data.read_idx(path), images)
    (tmp_path / "bad").write_bytes(bytes([1, 0, 8, 1]) + struct.pack(">I", 5))
    with pytest.raises(ValueError):
        data.read_idx(tmp_path / "bad")


def test_to_tensor_normalises_like_torchvision():
    images = np.array([[[0, 255]]], dtype=np.uint8)
    x = data.to_tensor(images, "mnist")
    assert x.shape == (1, 1, 1, 2)
    assert torch.allclose(x.flatten(), torch.tensor([(0 - 0.1307) / 0.3081, (1 - 0.1307) / 0.3081]))


def test_failed_download_names_the_offline_choices(monkeypatch, tmp_path):
    import torchvision.datasets

    def no_network(*args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(torchvision.datasets, "MNIST", no_network)
    with pytest.raises(data.DatasetUnavailable, match="mnist-5k"):
        data.load("mnist", tmp_path)


def test_unknown_dataset_is_refused():
    with pytest.raises(data.DatasetUnavailable, match="unknown dataset"):
        data.load("cifar")


def test_a_registered_dataset_shapes_the_model_and_the_tensors():
    # Prepare: a throwaway entry for 32x32 grey images of 5 classes
    import torch

    from asyncfl.core import datasets
    from asyncfl.core.model import Net, initial_weights, weight_spec
    from asyncfl.settings import ClientArgs

    rng = np.random.default_rng(0)

    def toy(data_dir):
        return data.Dataset("toy-32", "generated", rng.integers(0, 256, (20, 32, 32), dtype=np.uint8),
                            rng.integers(0, 5, 20), rng.integers(0, 256, (10, 32, 32), dtype=np.uint8), rng.integers(0, 5, 10))

    datasets.register(datasets.DatasetSpec("toy-32", "generated", toy, 0.5, 0.25, image_shape=(32, 32), n_classes=5))
    try:
        # Execute
        ds = data.load("toy-32")
        net = Net.for_dataset("toy-32")
        # Assert: the model's sizes, the tensors' shape and the dataset's class count come from the entry
        assert ds.n_classes == 5 and net.fc2.out_features == 5 and net.fc1.in_features == 5 * 5 * 50
        assert net(data.to_tensor(ds.test_images, "toy-32")).shape == (10, 5)
        assert weight_spec("toy-32")["fc2.weight"][0] == (5, 500) and initial_weights(0)["fc2.weight"].shape == (10, 500)
        assert torch.isclose(data.to_tensor(np.full((1, 32, 32), 255, np.uint8), "toy-32"), torch.tensor(2.0)).all()
        assert "mnist-5k" in datasets.NAMES and ClientArgs().dataset == datasets.DEFAULT
    finally:
        del datasets.REGISTRY["toy-32"]
