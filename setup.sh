#!/usr/bin/env bash
# Create .venv in the repository root, install requirements.txt and the asyncfl package (editable) into it.
# Idempotent: a second call costs a hash of requirements.txt and nothing else.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

PYTHON=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 10))' \
    || { echo "setup.sh: Python 3.10 or newer is needed (3.11 is tested); set PYTHON=/path/to/python3.11" >&2; exit 1; }
  "$PYTHON" -m venv .venv
fi
# Network emulation (per-server loss, delay, rate) uses iproute2 and, where the kernel lacks netem,
# nftables. As root on Debian/Ubuntu, install what is missing; otherwise say what runs with loss need.
if ! command -v ip > /dev/null || ! command -v nft > /dev/null; then
  if [[ $EUID == 0 ]] && command -v apt-get > /dev/null && [[ -z ${ASYNCFL_NO_APT:-} ]]; then
    echo "setup.sh: installing iproute2 and nftables for network emulation (ASYNCFL_NO_APT=1 skips this)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 nftables > /dev/null
  else
    echo "setup.sh: note: runs with network loss need iproute2 and nftables (apt-get install iproute2 nftables, as root); with them, a user without root gets namespaces of their own where user namespaces are allowed (docs/cluster.md)"
  fi
fi

# The paper's grid runs on Fashion-MNIST (6,000 samples a class, as MNIST): Debian packages it offline.
if [[ ! -d /usr/share/datasets/fashion-mnist ]]; then
  if [[ $EUID == 0 ]] && command -v apt-get > /dev/null && [[ -z ${ASYNCFL_NO_APT:-} ]]; then
    echo "setup.sh: installing dataset-fashion-mnist (the paper grid's dataset; ASYNCFL_NO_APT=1 skips this)"
    { apt-get install -y -qq dataset-fashion-mnist > /dev/null 2>&1 \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist > /dev/null; }; } \
      || echo "setup.sh: note: dataset-fashion-mnist could not be installed; --dataset fashion-mnist will try to download"
  else
    echo "setup.sh: note: --dataset fashion-mnist reads Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)"
  fi
fi

stamp=.venv/.requirements.sha256
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [[ ! -f $stamp || $(<"$stamp") != "$want" ]]; then
  echo "setup.sh: installing requirements.txt and the asyncfl package into .venv (torch is large: a few minutes the first time)"
  .venv/bin/python -m pip install --disable-pip-version-check -q -r requirements.txt
  # The package itself, editable: `python -m asyncfl.<module>` runs this checkout's code.
  .venv/bin/python -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
  echo "$want" > "$stamp"
fi
