"""``python -m asyncfl.netem --cleanup``: remove the namespaces and tables left by runs that were killed."""

import sys

from asyncfl.netem.lab import cleanup_stale

if sys.argv[1:] != ["--cleanup"]:
    print("usage: python -m asyncfl.netem --cleanup   (remove namespaces left by runs that were killed)")
    sys.exit(2)
for name in cleanup_stale():
    print(f"removed {name}")
