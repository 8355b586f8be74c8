"""``python -m asyncfl.server``: the data owners of one split (see server/main.py)."""

import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per process before torch is imported

import tyro  # noqa: E402

from asyncfl.server import main as entry  # noqa: E402
from asyncfl.settings import ServerArgs  # noqa: E402

sys.exit(entry.main(tyro.cli(ServerArgs, prog="python -m asyncfl.server", description=entry.__doc__)))
