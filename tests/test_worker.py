"""A data owner's training step and request handling, without networking."""

import threading
import time

import numpy as np
import pytest
import torch

from asyncfl.core.model import initial_weights
from asyncfl.core.protocol import TrainConfig
from asyncfl.core.task import BatchStream, ShardTrainer
from asyncfl.net import wire
from asyncfl.server.wires.modern import handle_frame


def make_worker(n=64, speed_ratio=1.0):
    gen = torch.Generator().manual_seed(0)
    return ShardTrainer("server-0", "toy", torch.randn(n, 1, 28, 28, generator=gen),
                       torch.randint(0, 10, (n,), generator=gen), speed_ratio=speed_ratio)


def test_fit_trains_the_weights_it_is_sent():
    # Prepare
    worker, weights = make_worker(), initial_weights(0)
    # Execute
    result = worker.fit("toy", TrainConfig(batch_size=16, max_nr_batches=2), weights)
    # Assert
    assert result.n_samples == 32
    assert np.isfinite(result.loss) and result.compute_s > 0
    assert set(result.weights) == set(weights)
    changed = [k for k in weights if not torch.equal(result.weights[k], weights[k])]
    assert changed == list(weights)  # SGD moved every tensor


def test_warm_up_in_another_thread_leaves_the_model_and_its_next_round_as_they_were():
    # Prepare: each connection's thread warms up once (its first training call is slow), maybe while
    # another connection's round is out; the round must train exactly what it would have otherwise.
    weights, config = initial_weights(0), TrainConfig(batch_size=16, max_nr_batches=2)
    expected = make_worker().fit("toy", config, weights).weights
    worker = make_worker()
    # Execute
    thread = threading.Thread(target=worker.warm_up)
    thread.start()
    thread.join()
    grads_left = [n for n, p in worker.model.named_parameters() if p.grad is not None]
    result = worker.fit("toy", config, weights)
    # Assert
    assert grads_left == []
    assert all(torch.equal(result.weights[k], expected[k]) for k in weights)


def test_fit_refuses_an_unknown_dataset_key():
    with pytest.raises(ValueError, match="dataset_key"):
        make_worker().fit("mnist", TrainConfig(), initial_weights(0))


def test_speed_ratio_makes_a_round_last_that_multiple_of_its_compute():
    # The wall clock around the call, not the worker's own report of its idle time: a lower bound only,
    # since the sleep lasts at least what was asked.
    worker = make_worker(speed_ratio=3.0)
    t = time.perf_counter()
    result = worker.fit("toy", TrainConfig(batch_size=32, max_nr_batches=3), initial_weights(0))
    wall_s = time.perf_counter() - t
    assert wall_s >= 3.0 * result.compute_s > 0


def test_empty_shard_returns_the_weights_unchanged():
    worker = ShardTrainer("server-0", "toy", torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.int64))
    weights = initial_weights(0)
    result = worker.fit("toy", TrainConfig(), weights)
    assert result.n_samples == 0 and np.isnan(result.loss)
    assert all(torch.equal(result.weights[k], weights[k]) for k in weights)


def test_batch_stream_covers_every_sample_once_per_epoch():
    stream = BatchStream(10, np.random.default_rng(0))
    epoch1 = np.concatenate([stream.next(4, True) for _ in range(3)])  # 4 + 4 + 2
    epoch2 = np.concatenate([stream.next(4, True) for _ in range(3)])
    assert sorted(epoch1) == list(range(10)) and sorted(epoch2) == list(range(10))
    assert not np.array_equal(epoch1, epoch2)
    assert list(BatchStream(5, np.random.default_rng(0)).next(5, False)) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    "config",
    [{"batch_size": 0}, {"batch_size": "32"}, {"lr": -1.0}, {"lr": float("inf")}, {"max_nr_batches": 0},
     {"optimizer": "Adam"}, {"shuffle": "yes"}, {"momentum": 0.9}],
)
def test_bad_train_configs_are_refused(config):
    with pytest.raises(ValueError):
        TrainConfig.from_dict(config)


def test_handle_frame_answers_hello_fit_and_errors():
    worker = make_worker()
    reply, refused = handle_frame(worker, wire.encode({"type": "hello"}), {})
    hello, _ = wire.decode(b"".join(reply))
    assert refused is None and hello["type"] == "hello_ok" and hello["n_samples"] == 64
    assert hello["protocol"] == wire.PROTOCOL_VERSION and hello["fits"] == 0

    fit = wire.encode({"type": "fit", "dataset_key": "toy", "train_config": {"batch_size": 8}}, initial_weights(1))
    header, weights = wire.decode(b"".join(handle_frame(worker, fit, {})[0]))
    assert header["type"] == "fit_ok" and header["n_samples"] == 8 and weights is not None
    assert worker.fits == 1

    bad_shape = {k: v for k, v in initial_weights(0).items()}
    bad_shape["fc2.bias"] = torch.zeros(11)
    nan = {k: v.clone() for k, v in initial_weights(0).items()}
    nan["fc1.weight"][0, 0] = float("nan")
    for frame in (b"junk", wire.encode({"type": "nope"}),
                  wire.encode({"type": "fit", "dataset_key": "toy", "train_config": {}}, bad_shape),
                  wire.encode({"type": "fit", "dataset_key": "toy", "train_config": {}}, nan),
                  wire.encode({"type": "fit", "dataset_key": "toy", "train_config": {}}),
                  wire.encode({"type": "fit", "dataset_key": "toy", "train_config": {}, "extra": 1}, initial_weights(0)),
                  wire.encode({"type": "fit", "dataset_key": 7, "train_config": {}}, initial_weights(0)),
                  wire.encode({"type": "fit", "dataset_key": "toy", "train_config": {"batch_size": True}}, initial_weights(0)),
                  wire.encode({"type": "hello"}, initial_weights(0)),
                  "a text frame",
                  b"\x00\x80\x00\x00" + b"[" * 32768):  # nested JSON deep enough for a RecursionError
        reply, refused = handle_frame(worker, frame, {})
        header, weights = wire.decode(b"".join(reply))
        assert header["type"] == "error" and weights is None and refused == header["message"]
    assert worker.fits == 1  # none of them trained

