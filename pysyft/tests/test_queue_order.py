"""PySyft 0.2.3's own server, live: what happens to a message whose connection ends right behind it.

The sequence the emulation (src/asyncfl/server/pysyft.py, ``--faults original``) is checked against
(tests/test_pysyft.py runs it there): connection A uploads an object and closes its socket as PySyft's
``WebsocketClientWorker.close`` does (no close frame); connection B then asks for that object. On PySyft
0.2.3, A's producer was first in line for the message, answers it on dying A, and B's reply is its own."""

import binascii
import json
import os
import subprocess
import sys
import tempfile
import time
import unittest

import numpy as np
import torch
from syftstudy import common  # noqa: F401 - the loss is scripted before the hook


class QueueOrderTest(unittest.TestCase):
    def test_b_gets_its_own_reply_after_a_closes_behind_its_upload(self):
        import syft as sy
        import websocket
        from syft.messaging.message import ObjectMessage, ObjectRequestMessage

        hook = sy.TorchHook(torch)  # noqa: F841 - PySyft's tensors need it
        with tempfile.TemporaryDirectory() as d:
            np.savez(os.path.join(d, "shard.npz"), images=np.zeros((64, 28, 28), np.uint8), labels=np.zeros(64, np.int64))
            spec = {"name": "server-0", "index": 0, "host": "127.0.0.1", "port": 0, "shard": os.path.join(d, "shard.npz"),
                    "dataset_key": "mnist-5k", "mean": 0.13, "std": 0.31, "pace_s": 0.0, "speed_ratio": 1.0,
                    "tcp_cc": "", "seed": 0, "ready_file": os.path.join(d, "ready"), "fits_log": os.path.join(d, "fits.csv")}
            common.write_json(os.path.join(d, "owner.json"), spec)
            owner = subprocess.Popen([sys.executable, "-m", "syftstudy.owner", os.path.join(d, "owner.json")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                deadline = time.monotonic() + 60
                while not os.path.exists(spec["ready_file"]):  # the owner's readiness signal
                    self.assertIsNone(owner.poll(), "the owner exited")
                    self.assertLess(time.monotonic(), deadline, "the owner never listened")
                    time.sleep(0.05)
                with open(spec["ready_file"]) as f:
                    url = "ws://127.0.0.1:%d" % json.load(f)["port"]

                def text(message):
                    return str(binascii.hexlify(sy.serde.serialize(message)))

                for trial in range(5):
                    t = torch.ones(100000)
                    t.id = 1000 + trial
                    a = websocket.create_connection(url, max_size=None, timeout=10)
                    a.send(text(ObjectMessage(t)))
                    a.shutdown()
                    b = websocket.create_connection(url, max_size=None, timeout=10)
                    b.send(text(ObjectRequestMessage((t.id, None, ""))))
                    reply = sy.serde.deserialize(binascii.unhexlify(b.recv()[2:-1]))
                    self.assertIsInstance(reply, torch.Tensor, "B's reply was %r: one step late" % (reply,))
                    self.assertEqual(tuple(reply.shape), (100000,))
                    b.shutdown()
            finally:
                owner.terminate()
                owner.wait(10)


if __name__ == "__main__":
    unittest.main()
