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

# The pysyft backend (--backend pysyft): the study's own stack, PySyft 0.2.3 on torch 1.4, in .venv-pysyft
# from pysyft/requirements.lock. It needs a Python 3.7 (PYTHON37=..., python3.7 on PATH, or pyenv's).
if [[ -z ${ASYNCFL_NO_PYSYFT:-} ]]; then
  py37=
  # The first that runs and is 3.7 (a pyenv shim on PATH may name a version that is not selected).
  for candidate in ${PYTHON37:-} "$(command -v python3.7 || true)" "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.7*/bin/python3.7; do
    if [[ -n $candidate && -x $candidate ]] \
        && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 7))' > /dev/null 2>&1; then
      py37=$candidate
      break
    fi
  done
  if [[ -z $py37 ]]; then
    echo "setup.sh: note: no Python 3.7 found, so --backend pysyft is not installed (pyenv install 3.7.16, or PYTHON37=/path/to/python3.7 ./setup.sh)"
  else
    stamp37=.venv-pysyft/.requirements.sha256
    want37=$(cat pysyft/requirements.lock | sha256sum | cut -d' ' -f1)
    if [[ ! -f $stamp37 || $(<"$stamp37") != "$want37" ]]; then
      echo "setup.sh: installing PySyft 0.2.3 and torch 1.4.0 into .venv-pysyft with $py37 (a few minutes the first time)"
      [[ -x .venv-pysyft/bin/python ]] || "$py37" -m venv .venv-pysyft
      .venv-pysyft/bin/python -m pip install --disable-pip-version-check -q --no-deps -r pysyft/requirements.lock 2>&1 \
        | grep -v "^WARNING: Location" || true
      .venv-pysyft/bin/python -c 'import syft' || { echo "setup.sh: .venv-pysyft: import syft failed" >&2; exit 1; }
      echo "$want37" > "$stamp37"
    fi
  fi
fi
