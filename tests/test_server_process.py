"""A real server/main.py process: readiness line, hello, a remote fit, clean stop on SIGTERM."""

import signal

import pytest
import torch

from asyncfl.client.remote import RemoteError, RemoteServer
from asyncfl.core.model import initial_weights
from asyncfl.core.protocol import TrainConfig
from tests.helpers import kill_session, start_servers, wait_session_gone


@pytest.fixture
def servers(tmp_path):
    proc, uris = start_servers(tmp_path, "--n-servers", "2", "--stdev", "10000")
    yield proc, uris
    kill_session(proc)


def test_hello_fit_and_clean_stop(servers):
    proc, uris = servers
    # Prepare
    workers = [RemoteServer(uri, f"server-{i}") for i, uri in enumerate(uris)]
    infos = [w.connect(timeout_s=10) for w in workers]
    weights = initial_weights(0)
    # Execute
    result = workers[0].fit(dataset_key="mnist-5k", train_config=TrainConfig(batch_size=16), weights=weights)
    # Assert: the shards partition the 4,000 training digits, D=10000 leaves some class out somewhere.
    assert sum(i["n_samples"] for i in infos) == 4000
    assert [i["index"] for i in infos] == [0, 1]
    assert any(0 in i["class_counts"] for i in infos)
    assert result.n_samples == min(16, infos[0]["n_samples"])
    assert not torch.equal(result.weights["fc2.bias"], weights["fc2.bias"])
    with pytest.raises(RemoteError, match="dataset_key"):
        workers[1].fit(dataset_key="mnist", train_config=TrainConfig(), weights=weights)

    for w in workers:
        w.close()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    assert wait_session_gone(proc.pid) == []  # no server process outlives server/main.py
