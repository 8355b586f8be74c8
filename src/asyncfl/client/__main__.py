"""``python -m asyncfl.client``: the model owner (see client/main.py)."""

import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import tyro  # noqa: E402

from asyncfl.client import main as entry  # noqa: E402
from asyncfl.process.lifecycle import keep_freed_memory  # noqa: E402
from asyncfl.settings import ClientArgs  # noqa: E402

torch.set_num_threads(1)
keep_freed_memory()
sys.exit(entry.main(tyro.cli(ClientArgs, prog="python -m asyncfl.client", description=entry.__doc__)))
