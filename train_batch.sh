#!/usr/bin/env bash
# Sweep a grid of configurations with train.sh, one run folder (and log) per combination, all in one
# sweep folder. The grid is the variables below: edit them, or override the scalars from the environment
# (DURATION_S=120 STALENESS="0 9999" ./train_batch.sh), the lists too, one entry per line (RULES=$'ssp\nfedavg'). `./train_batch.sh --dry-run` lists the runs without starting them.
# An interrupted sweep resumes: run it again with the same SWEEP_DIR and finished runs are skipped.
# A grid file holds a grid as these variables, one NAME=value line each: `./train_batch.sh grids/paper.env`
# (the environment still wins: `STALENESS=0 ./train_batch.sh grids/paper.env`); results/ name theirs.
#
# The paper's grid: L in {0%, 10%, 20%}, D in {0, 600, 10000}, S in {0, 6, 12, inf}, 3 repeats, 40 min
# each. Here S=inf is 9999. REGIME=paper runs each on the paper's clock compressed by TIME_SCALE (40/K
# minutes); REGIME=fast (default) runs 60 s at this machine's own pace. Every run of a sweep uses one
# transport (TRANSPORT=netns: each server in its own namespace, weights over TCP, at every L including 0)
# and one split (the original's, --split-seed 42): repeats differ only in --seed (initial model, batch
# order, which server is slow). D is in the paper's units, samples of an MNIST class of 6,000: on mnist-5k
# (400 a class) the split uses D x 400/6000. The loop, resume and Slurm array: src/asyncfl/launch/sweep.py.
set -euo pipefail
ME=train_batch.sh
grid_file= dry=()
for arg in "$@"; do
  case $arg in
    --dry-run) dry=(--dry-run) ;;
    -h|--help) help=1 ;;
    -*) echo "$ME: unknown option '$arg' (--dry-run, --help, or a grid file such as grids/paper.env)" >&2; exit 2 ;;
    *) [[ -z $grid_file ]] || { echo "$ME: one grid file at a time (got '$grid_file' and '$arg')" >&2; exit 2; }
       [[ -f $arg ]] || { echo "$ME: no grid file '$arg' (see grids/)" >&2; exit 2; }
       grid_file=$(realpath "$arg") ;;
  esac
done
cd "$(dirname "${BASH_SOURCE[0]}")"
VARIABLES=" $(sed -n '/^## The study/,/^usage()/p' "$0" | sed -nE 's/^(list )?([A-Z_]+)[= ].*/\2/p' | tr '\n' ' ') "
if [[ -n $grid_file ]]; then  # NAME=value lines; the environment wins, so one variable can change for one sweep
  n=0
  while IFS= read -r line || [[ -n $line ]]; do
    n=$((n + 1))
    [[ $line =~ ^[[:space:]]*(#|$) ]] && continue
    name=${line%%=*}
    [[ $line == *=* && $VARIABLES == *" $name "* ]] || {
      echo "$ME: $grid_file, line $n: not a NAME=value line of one of train_batch.sh's variables: $line" >&2; exit 2; }
    [[ -n ${!name+set} ]] || eval "$line"
  done < "$grid_file"
fi

list() {  # list NAME DEFAULT...: an array, from the environment one entry per line (RULES=$'ssp\nfedavg'), else DEFAULT
  if [[ -n ${!1+set} ]]; then mapfile -t "$1" <<< "${!1}"; else local -n _list=$1; _list=("${@:2}"); fi
}

## The study's grid: S, D, L (every combination, REPEATS times)
STALENESS="${STALENESS:-0 6 12 9999}"  # SSP staleness threshold S, in rounds (9999 = the paper's S=inf)
STDEVS="${STDEVS:-0 600 10000}"  # data imbalance D, in the paper's units (samples of an MNIST class of 6,000)
LOSSES="${LOSSES:-0% 10% 20%}"   # network loss L on every link (see docs/network.md)
REPEATS=${REPEATS:-3}            # runs per combination (seeds 0, 1, 2, ...)
## The run
REGIME=${REGIME:-fast}           # fast: this machine's pace; paper: the study's clock (docs/regime.md)
TIME_SCALE=${TIME_SCALE:-10}     # REGIME=paper: K, every duration of the paper divided by K
DURATION_S=${DURATION_S:-}       # training time per run, seconds (empty: 60, or 2400/K with REGIME=paper)
DATASET=${DATASET:-mnist-5k}     # mnist-5k (offline), mnist, fashion-mnist
N_SERVERS=${N_SERVERS:-4}        # data servers per run
list SPEED_SETS "1 1 1 1"        # per-server speed ratios (one entry per server), e.g. ("1 1 1 1" "1 1 1 4"), or
                                 #   "halfnormal:SD" (each 1 + |N(0, SD)|, drawn from the run's seed)
SPLIT_SEED=${SPLIT_SEED:-42}     # one split for the whole sweep (the original's seed)
EVAL_INTERVAL_S=${EVAL_INTERVAL_S:-}  # seconds between time-wise evaluations (empty: 15, or 15/K)
BACKEND=${BACKEND:-native}       # native: this project's stack; pysyft: the study's own, PySyft 0.2.3 (docs/pysyft.md)
## The network
TRANSPORT=${TRANSPORT:-netns}    # netns: every server in a namespace at every L (root or user namespaces); loopback: L=0 grids
list LINK_SETS                   # more per-server link conditions, each "losses;delays_ms;rates_mbit",
                                 #   e.g. ("0 0 10 20;0 0 0 0;0 0 0 0" "0 0 0 0;0 0 50 200;0 0 100 10")
## The rules and partitions
list RULES ssp                   # aggregation rules (src/asyncfl/core/rules/), each "rule [its client flags]", e.g.
                                 #   ("ssp" "fedavg" "fedasync --alpha 0.6 --staleness-fn polynomial --staleness-a 0.5"
                                 #   "fedbuff --buffer-size 4 --server-lr 1"); fedavg runs once per cell (no S), and
                                 #   an entry with "--staleness-threshold X" once, at X
list PARTITIONS gaussian         # splits, each "partition [its server flags]", e.g. ("gaussian"
                                 #   "dirichlet --alpha-dirichlet 0.3" "shards --shards-per-server 2");
                                 #   only gaussian uses STDEVS (the others run with the first D)
## Where the runs go and how many at once
JOBS=${JOBS:-}                   # configurations run at once (empty: 1); slurm: the array's %limit if set
SWEEP_DIR=${SWEEP_DIR:-}         # where the run folders go (empty: sweeps/<date>-<time>)
DONE_IN=${DONE_IN:-}             # a results folder (analysis.collect's): runs collected there are skipped, so a
                                 #   sweep resumes from committed results on another machine or in a fresh clone
LAUNCHER=${LAUNCHER:-local}      # local: run here, JOBS at a time; slurm: one sbatch --array over the runs (docs/cluster.md)
CPUS_PER_TASK=${CPUS_PER_TASK:-2}  # LAUNCHER=slurm: cores each run asks for (its timings are the measurement)
EXCLUSIVE=${EXCLUSIVE:-0}        # LAUNCHER=slurm: 1 = a whole node per run (sbatch --exclusive), for timing-sensitive regimes
SBATCH_ARGS=${SBATCH_ARGS:-}     # LAUNCHER=slurm: more sbatch options, e.g. "--partition=short --time=00:10:00"
## The rest
EXTRA_ARGS=${EXTRA_ARGS:-}       # more train.sh flags for every run, e.g. "--eval-samples 500" (./train.sh --help)

usage() {  # the header, then every variable of the block above: NAME=default, what it is, by group
  sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'
  echo; echo "Variables (set them in the environment; shown with their defaults):"
  sed -n '/^## The study/,/^usage()/p' "$0" | sed -E \
    -e 's/^## (.*)/\n\1:/' \
    -e 's/^([A-Z_0-9]+)="?\$\{[A-Z_0-9]+:-([^}]*)\}"? *# (.*)/  \1=\2\t\3/' \
    -e 's/^list ([A-Z_]+) *# (.*)/  \1=\t\2/' -e 's/^list ([A-Z_]+) (("[^"]*"|[^ #]+) ?)+ *# (.*)/  \1=\3\t\4/' \
    -e 's/^ +#   (.*)/  \t  \1/' | grep -v '^usage()' | awk -F'\t' 'NF < 2 { print; next } { printf "%-30s %s\n", $1, $2 }'
}

[[ -z ${help:-} ]] || { usage; exit 0; }
[[ $EXCLUSIVE == 1 ]] && dry+=(--exclusive)
[[ -z $JOBS || $JOBS =~ ^[1-9][0-9]*$ ]] || { echo "train_batch.sh: JOBS must be a positive integer, not '$JOBS'" >&2; exit 2; }
each() { printf '%s\n' "$@"; }
exec .venv/bin/python -m asyncfl.launch.sweep --losses="$LOSSES" --link-sets="$(each ${LINK_SETS[@]+"${LINK_SETS[@]}"})" \
  --stdevs="$STDEVS" --staleness="$STALENESS" --speed-sets="$(each "${SPEED_SETS[@]}")" --rules="$(each "${RULES[@]}")" \
  --partitions="$(each "${PARTITIONS[@]}")" --repeats="$REPEATS" --n-servers="$N_SERVERS" --regime="$REGIME" --backend="$BACKEND" \
  --time-scale="$TIME_SCALE" --duration-s="$DURATION_S" --dataset="$DATASET" --eval-interval-s="$EVAL_INTERVAL_S" \
  --split-seed="$SPLIT_SEED" --transport="$TRANSPORT" --launcher="$LAUNCHER" --jobs="${JOBS:-0}" \
  --cpus-per-task="$CPUS_PER_TASK" --sbatch-args="$SBATCH_ARGS" --extra-args="$EXTRA_ARGS" --sweep-dir="$SWEEP_DIR" --done-in="$DONE_IN" \
  --grid-file="$grid_file" ${dry[@]+"${dry[@]}"}
