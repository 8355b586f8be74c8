#!/usr/bin/env bash
# Run one configuration of the experiment: start the data servers, wait until they all listen, run the
# model owner (client) for --duration-s, then stop what this script started.
#
#   ./train.sh --n-servers 4 --stdev 600 --staleness-threshold 6 --duration-s 60 --dataset mnist-5k
#   ./train.sh --regime paper --loss 20% --dataset fashion-mnist        # the paper's clock, divided by 10
#
# Every flag of the servers and the client is a flag here: ./train.sh --help lists them with their units
# and defaults. Ctrl-C or SIGTERM stops training early; the results are still written.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
[[ -x .venv/bin/python ]] || { echo "train.sh: no .venv here; run ./setup.sh first" >&2; exit 2; }
exec .venv/bin/python -m asyncfl.launch "$@"
