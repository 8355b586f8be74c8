#!/usr/bin/env bash
# Sweep a grid of configurations with train.sh, one run folder (and log) per combination, all in one
# sweep folder. The grid is the arrays below: edit them, or override the scalars from the environment
# (DURATION_S=120 ./train_batch.sh). `./train_batch.sh --dry-run` lists the runs without starting them.
# An interrupted sweep resumes: run it again with the same SWEEP_DIR and finished runs are skipped.
#
# The paper's grid: L in {0%, 10%, 20%}, D in {0, 600, 10000}, S in {0, 6, 12, inf}, 3 repeats, 40 min
# each. Here S=inf is 9999, and the default duration reaches mnist-5k's plateau in a minute.
# L is applied per server link in network namespaces (see README, "Network conditions").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

LOSSES=(0% 10% 20%)              # network loss L on every link (non-zero needs root: see README)
LINK_SETS=()                     # more per-server link conditions, each "losses;delays_ms;rates_mbit",
                                 #   e.g. ("0 0 10 20;0 0 0 0;0 0 0 0" "0 0 0 0;0 0 50 200;0 0 100 10")
STDEVS=(0 600 10000)             # data imbalance D, in samples (on mnist-5k, 40 is what 600 is on MNIST)
STALENESS=(0 6 12 9999)          # SSP staleness threshold S, in rounds
SPEED_SETS=("1 1 1 1")           # per-server speed ratios (one entry per server), e.g. ("1 1 1 1" "1 1 1 4")
RULES=("ssp")                    # aggregation rules, each "rule [its client flags]", e.g. ("ssp" "fedavg"
                                 #   "fedasync --alpha 0.6 --staleness-fn polynomial --staleness-a 0.5"
                                 #   "fedbuff --buffer-size 4 --server-lr 1"); fedavg runs once per cell (no S)
PARTITIONS=("gaussian")          # splits, each "partition [its server flags]", e.g. ("gaussian"
                                 #   "dirichlet --alpha-dirichlet 0.3" "shards --shards-per-server 2");
                                 #   only gaussian uses STDEVS (the others run with the first D)
REPEATS=3                        # runs per combination (seeds 0, 1, 2, ...)
N_SERVERS=${N_SERVERS:-4}        # data servers per run
DURATION_S=${DURATION_S:-60}     # training time per run, seconds
DATASET=${DATASET:-mnist-5k}     # mnist-5k (offline), mnist, fashion-mnist
EVAL_INTERVAL_S=${EVAL_INTERVAL_S:-15}  # seconds between time-wise evaluations
SWEEP_DIR=${SWEEP_DIR:-sweeps/$(date +%Y%m%d-%H%M%S)}  # where the run folders go

dry_run=0
case ${1:-} in
  --dry-run) dry_run=1 ;;
  "") ;;
  -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "train_batch.sh: unknown argument '$1' (edit the arrays at the top instead)" >&2; exit 2 ;;
esac

if [[ $EUID != 0 ]] && { printf '%s\n' "${LOSSES[@]}" | grep -qv '^0%\?$' || [[ ${#LINK_SETS[@]} -gt 0 ]]; }; then
  echo "train_batch.sh: LOSSES or LINK_SETS ask for network conditions, which need root; run as root or set LOSSES=(0%) LINK_SETS=()" >&2
  exit 2
fi

# The link dimension: "L<loss>" for every value of LOSSES, "links<k>" for the k-th entry of LINK_SETS.
links=()
for loss in "${LOSSES[@]}"; do links+=("L${loss%\%}"); done
for k in "${!LINK_SETS[@]}"; do links+=("links$k"); done

runs=()
for loss in "${links[@]}"; do for part in "${PARTITIONS[@]}"; do for stdev in "${STDEVS[@]}"; do
  [[ ${part%% *} != gaussian && $stdev != "${STDEVS[0]}" ]] && continue
  for speeds in "${SPEED_SETS[@]}"; do for rule in "${RULES[@]}"; do for staleness in "${STALENESS[@]}"; do
    [[ ${rule%% *} == fedavg && $staleness != "${STALENESS[0]}" ]] && continue
    for ((rep = 0; rep < REPEATS; rep++)); do runs+=("$loss|$part|$stdev|$speeds|$rule|$staleness|$rep"); done
  done; done; done
done; done; done

# A run's folder name from a rule or partition entry: "fedbuff --buffer-size 4" -> "fedbuff_buffer-size-4".
slug() { local s=${1// --/_}; s=${s//--/}; echo "${s// /-}"; }

echo "train_batch.sh: ${#runs[@]} runs of ${DURATION_S} s into $SWEEP_DIR"
[[ $dry_run == 1 ]] || mkdir -p "$SWEEP_DIR"
failed=0
for i in "${!runs[@]}"; do
  IFS='|' read -r loss part stdev speeds rule staleness rep <<< "${runs[$i]}"
  [[ ${rule%% *} == fedavg ]] && staleness=0  # its barrier: the S it runs with, in its name too
  name="${loss}-D${stdev}-S${staleness}-speeds_${speeds// /_}-r${rep}"
  # Runs of the study's rule and split keep the names they always had, so older sweeps still resume.
  [[ $rule == ssp ]] || name="$(slug "$rule")-$name"
  [[ $part == gaussian ]] || name="$(slug "$part")-$name"
  rule_flags=() part_flags=()
  if [[ $rule == *" "* ]]; then read -r -a rule_flags <<< "${rule#* }"; fi
  if [[ $part == *" "* ]]; then read -r -a part_flags <<< "${part#* }"; fi
  if [[ $loss == links* ]]; then
    IFS=';' read -r losses delays_ms rates_mbit <<< "${LINK_SETS[${loss#links}]}"
    link_flags=(--losses "$losses" --delays-ms "$delays_ms" --rates-mbit "$rates_mbit")
  else
    link_flags=(--loss "${loss#L}%")
  fi
  echo "[$((i + 1))/${#runs[@]}] $name"
  [[ $dry_run == 1 ]] && continue
  # Resume: a run that already finished its whole duration in this sweep folder is not run again.
  if grep -qs '"stop_reason": "duration"' "$SWEEP_DIR/$name/config.json"; then echo "  done already"; continue; fi
  status=0
  ./train.sh --n-servers "$N_SERVERS" "${link_flags[@]}" --stdev "$stdev" --staleness-threshold "$staleness" \
    --partition "${part%% *}" ${part_flags[@]+"${part_flags[@]}"} --aggregation "${rule%% *}" \
    ${rule_flags[@]+"${rule_flags[@]}"} \
    --speeds "$speeds" --duration-s "$DURATION_S" --dataset "$DATASET" --eval-interval-s "$EVAL_INTERVAL_S" \
    --seed "$rep" --out-dir "$SWEEP_DIR/$name" > "$SWEEP_DIR/$name.log" 2>&1 || status=$?
  if [[ $status == 130 ]]; then echo "train_batch.sh: interrupted"; exit 130; fi
  if [[ $status != 0 ]]; then
    echo "  failed (exit $status); see $SWEEP_DIR/$name.log"
    failed=$((failed + 1))
  else
    tail -n 1 "$SWEEP_DIR/$name/f1_time.csv" | awk -F, '{printf "  final f1 %s at %s s\n", $2, $1}'
  fi
done
[[ $dry_run == 1 ]] && exit 0
echo "train_batch.sh: done, $failed failed; results in $SWEEP_DIR"
[[ $failed == 0 ]]
