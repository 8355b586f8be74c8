"""What the data owners and the model owner share: the study's LeNet, its scripted loss, the run
folder's CSV rows, and reading a process's CPU time from the kernel."""

from __future__ import annotations

import csv
import json
import os
import socket
import threading

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

TCP_CONGESTION = getattr(socket, "TCP_CONGESTION", 13)

# The run folder's columns, as the 3.11 side writes them (src/asyncfl/client/runfolder.py); the end-to-end
# test checks that both agree.
ROUNDS_HEADER = ["time_s", "server", "round", "staleness", "updates_behind", "loss", "round_s", "compute_s",
                 "idle_s", "retrans_segs", "rtos", "max_backoff", "rto_ms", "srtt_ms", "stall_s", "start_s",
                 "applied_s"]
EVENTS_HEADER = ["time_s", "server", "event", "detail", "silence_s", "round_s"]


class Net(nn.Module):
    """The paper's network (the original's base_model.py): conv 20, conv 50, fc 800 -> 500 -> classes."""

    def __init__(self, image_shape=(28, 28), n_classes=10):
        super().__init__()
        h, w = ((((d - 4) // 2) - 4) // 2 for d in image_shape)
        self.conv1 = nn.Conv2d(1, 20, 5, 1)
        self.conv2 = nn.Conv2d(20, 50, 5, 1)
        self.fc1 = nn.Linear(h * w * 50, 500)
        self.fc2 = nn.Linear(500, n_classes)
        self.flat = h * w * 50

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2, 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2, 2)
        x = F.relu(self.fc1(x.view(-1, self.flat)))
        return F.log_softmax(self.fc2(x), dim=1)


# Scripted before syft.TorchHook runs (the hook breaks scripting F.nll_loss), as the original's
# base_model.py was imported before its client hooked torch.
@torch.jit.script
def loss_fn(pred, target):
    return F.nll_loss(input=pred, target=target)


def load_npz(path: str) -> dict:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def read_spec(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def write_json(path: str, obj: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)  # readers never see half a file


class CsvLog:
    """A CSV written row by row under a lock, each row flushed: a run cut short keeps every whole row."""

    def __init__(self, path: str, header: list):
        self._f = open(path, "w", newline="")
        self._w = csv.writer(self._f, lineterminator="\n")  # the native CsvLog's rows
        self._lock = threading.Lock()
        self.width = len(header)
        self.write(*header)

    def write(self, *row) -> None:
        if len(row) != self.width:
            raise ValueError("expected %d values, got %d" % (self.width, len(row)))
        with self._lock:
            if not self._f.closed:
                self._w.writerow(row)
                self._f.flush()

    def close(self) -> None:
        with self._lock:
            self._f.close()


def schedstat(pid: int):
    """{thread id: (ns on a CPU, ns waiting for one)} of a live process, None once it is gone."""
    out = {}
    try:
        tasks = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return None
    for tid in tasks:
        try:
            with open("/proc/%d/task/%s/schedstat" % (pid, tid)) as f:
                run_ns, wait_ns, _ = f.read().split()
        except (OSError, ValueError):
            continue
        out[int(tid)] = (int(run_ns), int(wait_ns))
    return out


def cpu_shares(before: dict, after: dict, wall_s: float) -> dict:
    """Per process: CPU seconds and share of the wall clock, run-queue wait and its share (config.json's
    ``finished.cpu``, as the native client records it)."""
    out = {}
    for name, end in after.items():
        if end is None:
            continue
        start = before.get(name) or {}
        run = sum(r - start.get(t, (0, 0))[0] for t, (r, _) in end.items()) / 1e9
        wait = sum(w - start.get(t, (0, 0))[1] for t, (_, w) in end.items()) / 1e9
        out[name] = {"cpu_s": round(run, 3), "cpu_frac": round(run / wall_s, 4), "wait_s": round(wait, 3),
                     "wait_frac": round(wait / wall_s, 4)}
    return out
