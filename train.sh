#!/usr/bin/env bash
# Run one configuration of the experiment: start the data servers, wait until they all listen, run the
# model owner (client) for --duration-s, then stop what this script started.
#
#   ./train.sh --n-servers 4 --stdev 600 --staleness-threshold 6 --duration-s 60 --dataset mnist-5k
#
# Flags not listed below are passed on to src/asyncfl/client.py (see: .venv/bin/python -m asyncfl.client --help).
# Ctrl-C or SIGTERM stops training early; the results are still written.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

n_servers=4          # data servers (one process each)
loss=0%              # network loss L on every server's link (the paper's 0%, 10%, 20%; needs root)
losses=""            # per-server loss in percent, e.g. "0 0 10 20" (instead of --loss)
delays_ms=""         # per-server added one-way delay in ms, e.g. "0 0 50 200" (needs the kernel's netem)
rates_mbit=""        # per-server bandwidth cap in Mbit/s, e.g. "0 0 100 10" (0 = unlimited)
netns=auto           # servers in their own network namespaces: auto (when a condition is set), always, never
stdev=0              # D: per-class share standard deviation (--partition gaussian), in --stdev-units
stdev_units=samples  # samples: D as given; paper: D in MNIST-class samples (of 6,000), scaled to the dataset's class size
split_seed=42        # seed of the split alone (the original's 42); --seed does not change it
min_shard_samples=32 # refuse a split that leaves a server fewer samples than this (one batch)
partition=gaussian   # split: gaussian (the study's D), dirichlet, shards
alpha_dirichlet=0.5  # --partition dirichlet: concentration (small = each class on few servers)
shards_per_server=2  # --partition shards: label-sorted shards per server
staleness=9999       # S: SSP staleness threshold in rounds (0 = sync, 9999 = async)
speeds=""            # per-server speed ratios, e.g. "1 1 1 4"
regime=fast          # fast: this machine's own pace; paper: the study's clock (see docs/regime.md)
time_scale=10        # --regime paper: K, the paper's durations divided by K (its 40-minute runs in 40/K)
duration_s=""        # training time, seconds (empty: 60, or 2400/K in the paper regime)
dataset=mnist-5k     # mnist-5k (offline), mnist (download), fashion-mnist
eval_interval_s=""   # seconds between time-wise evaluations (empty: 15, or 15/K in the paper regime)
seed=0               # initial model and batch order seed (the split has --split-seed)
base_port=8777       # server i listens on base_port + i (0 = free ports)
out_dir=""           # run folder; default out/L<loss>-D<stdev>-S<staleness>-<timestamp>
servers=""           # data owners elsewhere, ws[s]://host:port,... : start no local servers (server flags above then do not apply)
client_args=()

usage() {
  sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
  echo
  echo "Flags (default):"
  # Each setting's line above names its flag: the variable with _ -> - (staleness -> --staleness-threshold).
  grep -E '^[a-z_]+=.*# ' "$0" | sed -E 's/^staleness=/staleness_threshold=/; s/^([a-z_]+)=("[^"]*"|[^ ]*) *# (.*)$/  --\1 (\2): \3/' | tr '_' '-'
}
need() { [[ $# -ge 2 && -n $2 ]] || { echo "train.sh: $1 needs a value" >&2; exit 2; }; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --n-servers) need "$@"; n_servers=$2; shift 2 ;;
    --loss) need "$@"; loss=$2; shift 2 ;;
    --losses) need "$@"; losses=$2; shift 2 ;;
    --delays-ms) need "$@"; delays_ms=$2; shift 2 ;;
    --rates-mbit) need "$@"; rates_mbit=$2; shift 2 ;;
    --netns) need "$@"; netns=$2; shift 2 ;;
    --stdev) need "$@"; stdev=$2; shift 2 ;;
    --stdev-units) need "$@"; stdev_units=$2; shift 2 ;;
    --split-seed) need "$@"; split_seed=$2; shift 2 ;;
    --min-shard-samples) need "$@"; min_shard_samples=$2; shift 2 ;;
    --regime) need "$@"; regime=$2; shift 2 ;;
    --time-scale) need "$@"; time_scale=$2; shift 2 ;;
    --partition) need "$@"; partition=$2; shift 2 ;;
    --alpha-dirichlet) need "$@"; alpha_dirichlet=$2; shift 2 ;;
    --shards-per-server) need "$@"; shards_per_server=$2; shift 2 ;;
    --staleness-threshold) need "$@"; staleness=$2; shift 2 ;;
    --speeds) [[ $# -ge 2 ]] || { echo "train.sh: --speeds needs a value" >&2; exit 2; }; speeds=$2; shift 2 ;;
    --duration-s) need "$@"; duration_s=$2; shift 2 ;;
    --dataset) need "$@"; dataset=$2; shift 2 ;;
    --eval-interval-s) need "$@"; eval_interval_s=$2; shift 2 ;;
    --seed) need "$@"; seed=$2; shift 2 ;;
    --base-port) need "$@"; base_port=$2; shift 2 ;;
    --out-dir) need "$@"; out_dir=$2; shift 2 ;;
    --servers) need "$@"; servers=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) client_args+=("$1"); shift ;;
  esac
done

PY=.venv/bin/python
[[ -x $PY ]] || { echo "train.sh: no .venv here; run ./setup.sh first" >&2; exit 2; }
loss_pct=${loss%\%}
if [[ ! $loss_pct =~ ^[0-9]+([.][0-9]+)?$ ]]; then
  echo "train.sh: --loss takes a percentage such as 10% (got '$loss')" >&2; exit 2
fi
loss_name=${losses:+${losses// /_}}
[[ -n $out_dir ]] || out_dir="out/L${loss_name:-$loss_pct}-D${stdev}-S${staleness}-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out_dir"
ready="$out_dir/servers.ready"
rm -f "$ready"

servers_pid="" client_pid="" stopping=0
on_signal() {
  stopping=1
  trap '' INT TERM
  echo "train.sh: stopping"
  if [[ -n $client_pid ]]; then kill -TERM "$client_pid" 2>/dev/null || true; fi
  # The servers stop at the same time: the client cuts its rounds in flight anyway, and waiting for it
  # first would add their shutdown to the time an interrupted run takes.
  if [[ -n $servers_pid ]]; then kill -TERM "$servers_pid" 2>/dev/null || true; fi
}
cleanup() {
  # Only the processes this script started; servers.py stops its own server processes.
  if [[ -n $client_pid ]] && kill -0 "$client_pid" 2>/dev/null; then kill -TERM "$client_pid" 2>/dev/null || true; fi
  if [[ -n $servers_pid ]] && kill -0 "$servers_pid" 2>/dev/null; then
    kill -TERM "$servers_pid" 2>/dev/null || true
    wait "$servers_pid" 2>/dev/null || true
  fi
  rm -f "$ready"
  # Namespaces of runs whose servers.py was killed outright (its own exit removes its namespaces).
  if [[ $EUID == 0 ]] && command -v ip > /dev/null; then "$PY" -m asyncfl.netem --cleanup || true; fi
}
trap on_signal INT TERM
trap cleanup EXIT

if [[ -n $servers ]]; then
  # Data owners on other hosts (docs/multihost.md): nothing to start here; their
  # token, if they want one, comes from ASYNCFL_TOKEN.
  echo "$servers" > "$ready"
else
  # A fresh shared secret per run, unless the caller set one: only this run's client may use its servers.
  # It travels in the environment, which (unlike arguments) ps does not show.
  if [[ -z ${ASYNCFL_TOKEN:-} ]]; then ASYNCFL_TOKEN=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n'); fi
  export ASYNCFL_TOKEN

  "$PY" -m asyncfl.servers --n-servers "$n_servers" --stdev "$stdev" --stdev-units "$stdev_units" \
    --split-seed "$split_seed" --min-shard-samples "$min_shard_samples" --dataset "$dataset" --seed "$seed" \
    --regime "$regime" --time-scale "$time_scale" \
    --partition "$partition" --alpha-dirichlet "$alpha_dirichlet" --shards-per-server "$shards_per_server" \
    --speeds "$speeds" --loss "$loss" --losses "$losses" --delays-ms "$delays_ms" --rates-mbit "$rates_mbit" \
    --netns "$netns" --base-port "$base_port" --ready-file "$ready" --die-with-parent > "$out_dir/servers.log" 2>&1 &
  servers_pid=$!
  echo "train.sh: starting $n_servers servers (log: $out_dir/servers.log)"
  # Readiness signal: servers.py writes the ready file once every server listens.
  until [[ -e $ready ]]; do
    if [[ $stopping == 1 ]]; then exit 130; fi
    if ! kill -0 "$servers_pid" 2>/dev/null; then
      echo "train.sh: the servers failed to start:" >&2; tail -n 5 "$out_dir/servers.log" >&2; exit 1
    fi
    sleep 0.1
  done
fi

timing=(--regime "$regime" --time-scale "$time_scale")
[[ -z $duration_s ]] || timing+=(--duration-s "$duration_s")
[[ -z $eval_interval_s ]] || timing+=(--eval-interval-s "$eval_interval_s")
"$PY" -m asyncfl.client --servers "$(<"$ready")" --staleness-threshold "$staleness" "${timing[@]}" \
  --dataset "$dataset" --seed "$seed" --out-dir "$out_dir" --die-with-parent \
  ${client_args[@]+"${client_args[@]}"} &
client_pid=$!
# A signal interrupts `wait` while the client is still writing its results: wait again until the client
# is gone, so that the status is the client's own (0 done, 1 failed, 130 interrupted).
while :; do
  status=0
  wait "$client_pid" || status=$?
  kill -0 "$client_pid" 2>/dev/null || break
done
exit "$status"
