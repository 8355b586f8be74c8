"""One data owner on PySyft 0.2.3: a ``WebsocketServerWorker`` hosting its shard under the key the
client fits on, started by the 3.11 launcher (inside the owner's network namespace when it has one).

    .venv-pysyft/bin/python -m syftstudy.owner SPEC.json

SPEC names the shard (.npz: images uint8 [n, H, W], labels), the dataset's normalisation, where to
listen, the round pace and the TCP congestion control. Once listening it writes READY (JSON: port, pid,
the listening socket's congestion control) and serves until SIGTERM. Everything PySyft decides (the one
shared queue of received messages, its producer and consumer per connection, training inside the event
loop, the replies) is PySyft's own; the subclass changes only what the original's custom_server.py
changed (no keep-alive pings, no close timeout) plus the paper regime's pace after a fit's compute.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import socket
import sys
import time

import torch
from torchvision import transforms

from syftstudy import common  # scripts the loss before the hook, as the original's servers imported it


def die_with_parent() -> None:
    """SIGTERM when the launcher dies, however it dies (prctl PR_SET_PDEATHSIG)."""
    ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)


def paced_idle_s(compute_s: float, pace_s: float, speed_ratio: float) -> float:
    """The native owner's rule (src/asyncfl/core/regime.py): the fit lasts speed x max(compute, pace)."""
    return max(0.0, speed_ratio * max(compute_s, pace_s) - compute_s)


def make_owner(spec: dict):
    import syft as sy
    import websockets
    from syft.workers.websocket_server import WebsocketServerWorker

    class Owner(WebsocketServerWorker):
        def fit(self, dataset_key, device="cpu", **kwargs):
            t0 = time.perf_counter()
            loss = super().fit(dataset_key, device=device, **kwargs)
            compute_s = time.perf_counter() - t0
            idle_s = paced_idle_s(compute_s, spec["pace_s"], spec["speed_ratio"])
            if idle_s > 0:
                time.sleep(idle_s)  # in the event loop, where PySyft runs a fit: nothing else is served meanwhile
            self.fits.write(round(time.time(), 6), round(compute_s, 6), round(idle_s, 6), float(loss))
            return loss

        def start(self):
            """custom_server.py's start (1d4d9e4): no pings, no close timeout, any message size; on a socket
            of our own so that its congestion control is set before the first connection is accepted."""
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if spec["tcp_cc"]:
                sock.setsockopt(socket.IPPROTO_TCP, common.TCP_CONGESTION, spec["tcp_cc"].encode())
            sock.bind((self.host, int(self.port)))
            serving = websockets.serve(self._handler, sock=sock, max_size=None, ping_interval=None,
                                       ping_timeout=None, close_timeout=None)
            asyncio.get_event_loop().run_until_complete(serving)
            cc = sock.getsockopt(socket.IPPROTO_TCP, common.TCP_CONGESTION, 16).split(b"\0")[0].decode()
            common.write_json(spec["ready_file"], {"port": sock.getsockname()[1], "pid": os.getpid(),
                                                   "cc": cc})
            asyncio.get_event_loop().run_forever()

    hook = sy.TorchHook(torch)
    owner = Owner(hook=hook, id=spec["name"], host=spec["host"], port=spec["port"])
    owner.fits = common.CsvLog(spec["fits_log"], ["wall_time", "compute_s", "idle_s", "loss"])
    shard = common.load_npz(spec["shard"])
    dataset = sy.BaseDataset(
        data=torch.from_numpy(shard["images"]),
        targets=torch.from_numpy(shard["labels"].astype("int64")),
        transform=transforms.Compose([transforms.ToTensor(), transforms.Normalize((spec["mean"],), (spec["std"],))]),
    )
    owner.add_dataset(dataset, key=spec["dataset_key"])
    return owner


def main(argv: list) -> int:
    spec = common.read_spec(argv[1])
    die_with_parent()
    torch.set_num_threads(1)
    torch.manual_seed(spec["seed"])  # the batch order (PySyft draws it from torch's generator)
    owner = make_owner(spec)
    print("%s serving %d samples on %s:%s" % (spec["name"], len(owner.datasets[spec["dataset_key"]]), spec["host"],
                                            spec["port"]), flush=True)
    owner.start()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
