"""``python -m asyncfl.launch`` (train.sh): one run, data owners and model owner (see launch/main.py)."""

import sys

import tyro

from asyncfl.launch import main as entry
from asyncfl.settings import LaunchArgs

sys.exit(entry.main(tyro.cli(LaunchArgs, prog="./train.sh", description=entry.__doc__)))
