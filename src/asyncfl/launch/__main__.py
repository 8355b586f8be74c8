"""``python -m asyncfl.launch`` (train.sh): one run, data owners and model owner (see launch/main.py).

Its flags are settings.LaunchArgs'; ``--help`` shows them by group (settings.LAUNCH_GROUPS)."""

import sys

import tyro

from asyncfl import settings
from asyncfl.launch import main as entry

parsed = tyro.cli(settings.grouped(), prog="./train.sh", description=entry.__doc__)
sys.exit(entry.main(settings.flatten(parsed)))
