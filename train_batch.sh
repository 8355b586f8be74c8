#!/usr/bin/env bash
# Sweep a grid of configurations with train.sh, one run folder (and log) per combination, all in one
# sweep folder. The grid is the arrays below: edit them, or override the scalars from the environment
# (DURATION_S=120 STALENESS="0 9999" ./train_batch.sh). `./train_batch.sh --dry-run` lists the runs without starting them.
# An interrupted sweep resumes: run it again with the same SWEEP_DIR and finished runs are skipped.
#
# The paper's grid: L in {0%, 10%, 20%}, D in {0, 600, 10000}, S in {0, 6, 12, inf}, 3 repeats, 40 min
# each. Here S=inf is 9999. REGIME=paper runs each on the paper's clock compressed by TIME_SCALE (40/K
# minutes); REGIME=fast (default) runs 60 s at this machine's own pace. Every run of a sweep uses one
# transport (TRANSPORT=netns: each server in its own namespace, weights over TCP, at every L including 0)
# and one split (the original's, --split-seed 42): repeats differ only in --seed (initial model, batch
# order, which server is slow). D is in the paper's units, samples of an MNIST class of 6,000: on mnist-5k
# (400 a class) the split uses D x 400/6000. JOBS runs that many configurations at once.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

read -r -a LOSSES <<< "${LOSSES:-0% 10% 20%}"  # network loss L on every link (see docs/network.md)
LINK_SETS=()                     # more per-server link conditions, each "losses;delays_ms;rates_mbit",
                                 #   e.g. ("0 0 10 20;0 0 0 0;0 0 0 0" "0 0 0 0;0 0 50 200;0 0 100 10")
read -r -a STDEVS <<< "${STDEVS:-0 600 10000}"  # data imbalance D, in the paper's units (samples of an MNIST class of 6,000)
read -r -a STALENESS <<< "${STALENESS:-0 6 12 9999}"  # SSP staleness threshold S, in rounds
SPEED_SETS=("1 1 1 1")           # per-server speed ratios (one entry per server), e.g. ("1 1 1 1" "1 1 1 4")
RULES=("ssp")                    # aggregation rules, each "rule [its client flags]", e.g. ("ssp" "fedavg"
                                 #   "fedasync --alpha 0.6 --staleness-fn polynomial --staleness-a 0.5"
                                 #   "fedbuff --buffer-size 4 --server-lr 1"); fedavg runs once per cell (no S)
PARTITIONS=("gaussian")          # splits, each "partition [its server flags]", e.g. ("gaussian"
                                 #   "dirichlet --alpha-dirichlet 0.3" "shards --shards-per-server 2");
                                 #   only gaussian uses STDEVS (the others run with the first D)
REPEATS=${REPEATS:-3}            # runs per combination (seeds 0, 1, 2, ...)
N_SERVERS=${N_SERVERS:-4}        # data servers per run
REGIME=${REGIME:-fast}           # fast: this machine's pace; paper: the study's clock (docs/regime.md)
TIME_SCALE=${TIME_SCALE:-10}     # REGIME=paper: K, every duration of the paper divided by K
DURATION_S=${DURATION_S:-}       # training time per run, seconds (empty: 60, or 2400/K with REGIME=paper)
DATASET=${DATASET:-mnist-5k}     # mnist-5k (offline), mnist, fashion-mnist
EVAL_INTERVAL_S=${EVAL_INTERVAL_S:-}  # seconds between time-wise evaluations (empty: 15, or 15/K)
SPLIT_SEED=${SPLIT_SEED:-42}     # one split for the whole sweep (the original's seed)
TRANSPORT=${TRANSPORT:-netns}    # netns: every server in a namespace at every L (root); loopback: L=0 grids without root
LAUNCHER=${LAUNCHER:-local}      # local: run here, JOBS at a time; slurm: one sbatch --array over the runs (docs/multihost.md)
[[ -n ${JOBS:-} ]] && jobs_set=1 || jobs_set=0
JOBS=${JOBS:-1}                  # configurations run at once (each with its own ports and namespaces); slurm: the array's %limit if set
CPUS_PER_TASK=${CPUS_PER_TASK:-2}  # LAUNCHER=slurm: cores each run asks for (its timings are the measurement)
EXCLUSIVE=${EXCLUSIVE:-0}        # LAUNCHER=slurm: 1 = a whole node per run (sbatch --exclusive), for timing-sensitive regimes
SBATCH_ARGS=${SBATCH_ARGS:-}     # LAUNCHER=slurm: more sbatch options, e.g. "--partition=short --time=00:10:00"
EXTRA_ARGS=${EXTRA_ARGS:-}       # more train.sh/client flags for every run, e.g. "--eval-samples 500"
SWEEP_DIR=${SWEEP_DIR:-sweeps/$(date +%Y%m%d-%H%M%S)}  # where the run folders go

dry_run=0
case ${1:-} in
  --dry-run) dry_run=1 ;;
  "") ;;
  -h|--help) sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "train_batch.sh: unknown argument '$1' (edit the arrays at the top instead)" >&2; exit 2 ;;
esac

case $TRANSPORT in
  netns) transport_flags=(--netns always --no-shared-memory) ;;
  loopback) transport_flags=(--netns never --no-shared-memory)
    if printf '%s\n' "${LOSSES[@]}" | grep -qv '^0%\?$' || [[ ${#LINK_SETS[@]} -gt 0 ]]; then
      echo "train_batch.sh: TRANSPORT=loopback cannot emulate LOSSES or LINK_SETS: use TRANSPORT=netns (root)" >&2; exit 2
    fi ;;
  *) echo "train_batch.sh: TRANSPORT is netns or loopback, not '$TRANSPORT'" >&2; exit 2 ;;
esac
[[ $REGIME == fast || $REGIME == paper ]] || { echo "train_batch.sh: REGIME is fast or paper, not '$REGIME'" >&2; exit 2; }
[[ $JOBS =~ ^[1-9][0-9]*$ ]] || { echo "train_batch.sh: JOBS must be a positive integer, not '$JOBS'" >&2; exit 2; }
[[ $LAUNCHER == local || $LAUNCHER == slurm ]] || { echo "train_batch.sh: LAUNCHER is local or slurm, not '$LAUNCHER'" >&2; exit 2; }
[[ $CPUS_PER_TASK =~ ^[1-9][0-9]*$ ]] || { echo "train_batch.sh: CPUS_PER_TASK must be a positive integer" >&2; exit 2; }
if [[ $LAUNCHER == slurm && $dry_run == 0 ]] && ! command -v sbatch > /dev/null; then
  echo "train_batch.sh: LAUNCHER=slurm needs sbatch (Slurm's client tools) on this machine" >&2; exit 2
fi
PY=.venv/bin/python
if [[ $EUID != 0 && $TRANSPORT == netns && $dry_run == 0 ]]; then
  # Without root every run puts itself in user and network namespaces of its own (netem/rootless.py).
  if ! why=$("$PY" -c 'from asyncfl import rootless; print(rootless.unavailable() or "")') || [[ -n $why ]]; then
    echo "train_batch.sh: TRANSPORT=netns puts every server in a network namespace: that needs root or user" \
      "namespaces, and $why; or TRANSPORT=loopback LOSSES=0% for a grid without loss" >&2
    exit 2
  fi
fi

# The link dimension: "L<loss>" for every value of LOSSES, "links<k>" for the k-th entry of LINK_SETS.
links=()
for loss in "${LOSSES[@]}"; do links+=("L${loss%\%}"); done
for k in "${!LINK_SETS[@]}"; do links+=("links$k"); done

# Repeat by repeat: a sweep cut short holds whole repeats of the grid, not a few cells with all repeats.
runs=()
for ((rep = 0; rep < REPEATS; rep++)); do
  for loss in "${links[@]}"; do for part in "${PARTITIONS[@]}"; do for stdev in "${STDEVS[@]}"; do
    [[ ${part%% *} != gaussian && $stdev != "${STDEVS[0]}" ]] && continue
    for speeds in "${SPEED_SETS[@]}"; do for rule in "${RULES[@]}"; do for staleness in "${STALENESS[@]}"; do
      [[ ${rule%% *} == fedavg && $staleness != "${STALENESS[0]}" ]] && continue
      runs+=("$loss|$part|$stdev|$speeds|$rule|$staleness|$rep")
    done; done; done
  done; done; done
done

# A run's folder name from a rule or partition entry: "fedbuff --buffer-size 4" -> "fedbuff_buffer-size-4".
slug() { local s=${1// --/_}; s=${s//--/}; echo "${s// /-}"; }

timing=(--regime "$REGIME" --time-scale "$TIME_SCALE")
[[ -z $DURATION_S ]] || timing+=(--duration-s "$DURATION_S")
[[ -z $EVAL_INTERVAL_S ]] || timing+=(--eval-interval-s "$EVAL_INTERVAL_S")
describe=$(awk -v r="$REGIME" -v k="$TIME_SCALE" -v d="$DURATION_S" 'BEGIN {
  s = d != "" ? d : (r == "paper" ? 2400 / k : 60); printf "%g s each, %s regime%s", s, r, (r == "paper" ? " K=" k : "") }')
echo "train_batch.sh: ${#runs[@]} runs of $describe on $DATASET (D in the paper's units), transport $TRANSPORT," \
  "split seed $SPLIT_SEED, $JOBS at a time, into $SWEEP_DIR"
[[ $DATASET == mnist-5k ]] && echo "train_batch.sh: mnist-5k has 400 samples a class: D=600 splits as 40, D=10000 as 667"
[[ $dry_run == 1 ]] || mkdir -p "$SWEEP_DIR"

# One configuration, its output in $SWEEP_DIR/$name.log; prints one line when done.
run_one() {
  local name=$1; shift
  local status=0
  ./train.sh "$@" --out-dir "$SWEEP_DIR/$name" > "$SWEEP_DIR/$name.log" 2>&1 || status=$?
  if [[ $status != 0 ]]; then
    echo "  $name failed (exit $status); see $SWEEP_DIR/$name.log"
    return "$status"
  fi
  "$PY" - "$SWEEP_DIR/$name" <<'PYEOF'
import csv, json, sys
from pathlib import Path
run = Path(sys.argv[1])
f = json.loads((run / "config.json").read_text())["finished"]
final = list(csv.DictReader(open(run / "f1_time.csv")))[-1]
cpu = ", ".join(f"{n} {100 * s['cpu_frac']:.0f}%" for n, s in f.get("cpu", {}).items())
warn = f"; STARVED: {', '.join(f['starved'])}" if f.get("starved") else ""
print(f"  {run.name}: final f1 {final['f1']} at {final['time_s']} s; rounds {f['rounds_per_server']}, "
      f"largest staleness {max(f['max_staleness_per_server'])}, abandoned {sum(f['retries_per_server'])}; cpu {cpu}{warn}")
PYEOF
}

failed=0 running=0 interrupted=0 pending=()
trap 'interrupted=1; kill -TERM $(jobs -p) 2>/dev/null || true' INT TERM
reap() {  # wait for one of the running configurations; count a failure
  local status=0
  wait -n || status=$?
  running=$((running - 1))
  if [[ $status == 130 || $interrupted == 1 ]]; then interrupted=1; elif [[ $status != 0 ]]; then failed=$((failed + 1)); fi
}
for i in "${!runs[@]}"; do
  [[ $interrupted == 1 ]] && break
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
  # shellcheck disable=SC2206  # EXTRA_ARGS splits into words on purpose
  args=(--n-servers "$N_SERVERS" "${link_flags[@]}" "${transport_flags[@]}" --stdev "$stdev"
    --stdev-units paper --split-seed "$SPLIT_SEED" --staleness-threshold "$staleness"
    --partition "${part%% *}" ${part_flags[@]+"${part_flags[@]}"} --aggregation "${rule%% *}"
    ${rule_flags[@]+"${rule_flags[@]}"} --speeds "$speeds" "${timing[@]}" --dataset "$DATASET"
    --seed "$rep" --base-port 0 --no-live $EXTRA_ARGS)
  if [[ $LAUNCHER == slurm ]]; then
    pending+=("$name"$'\t'"$(printf '%q ' "${args[@]}")")
    continue
  fi
  rm -rf "${SWEEP_DIR:?}/$name"  # what an interrupted attempt left
  while ((running >= JOBS)); do reap; done
  [[ $interrupted == 1 ]] && break
  run_one "$name" "${args[@]}" &
  running=$((running + 1))
done
if [[ $LAUNCHER == slurm && $dry_run == 0 ]]; then
  # One array task per unfinished run, each reading its line of runs.txt (the sweep folder must be on a
  # filesystem the compute nodes share, as must this repository and its .venv).
  if ((${#pending[@]} == 0)); then echo "train_batch.sh: every run has finished already"; exit 0; fi
  printf '%s\n' "${pending[@]}" > "$SWEEP_DIR/runs.txt"
  sweep=$(cd "$SWEEP_DIR" && pwd) repo=$(pwd)
  cat > "$SWEEP_DIR/slurm-task.sh" <<TASK
#!/usr/bin/env bash
# One task of the array train_batch.sh submitted: the run on line SLURM_ARRAY_TASK_ID + 1 of runs.txt.
set -euo pipefail
cd "$repo"
line=\$(sed -n "\$((SLURM_ARRAY_TASK_ID + 1))p" "$sweep/runs.txt")
name=\${line%%\$'\\t'*}
if grep -qs '"stop_reason": "duration"' "$sweep/\$name/config.json"; then echo "\$name: done already"; exit 0; fi
rm -rf "$sweep/\$name"
eval "args=(\${line#*\$'\\t'})"
echo "\$name on \$(hostname), \${SLURM_CPUS_PER_TASK:-?} cores"
exec ./train.sh "\${args[@]}" --out-dir "$sweep/\$name" > "$sweep/\$name.log" 2>&1
TASK
  chmod +x "$SWEEP_DIR/slurm-task.sh"
  limit=""; [[ $jobs_set == 1 ]] && limit="%$JOBS"
  exclusive=(); [[ $EXCLUSIVE == 1 ]] && exclusive=(--exclusive)
  # shellcheck disable=SC2086  # SBATCH_ARGS splits into options on purpose
  job=$(sbatch --parsable --job-name=asyncfl-sweep --array="0-$((${#pending[@]} - 1))$limit" \
    --cpus-per-task="$CPUS_PER_TASK" ${exclusive[@]+"${exclusive[@]}"} --output="$sweep/slurm-%A_%a.out" \
    $SBATCH_ARGS "$SWEEP_DIR/slurm-task.sh")
  echo "train_batch.sh: submitted ${#pending[@]} runs as Slurm array job $job ($CPUS_PER_TASK cores each);" \
    "watch: squeue -j ${job%%;*}; then: $PY -m asyncfl.analyze $SWEEP_DIR; resubmit the same command to finish what failed"
  exit 0
fi
while ((running > 0)); do reap; done
if [[ $interrupted == 1 ]]; then echo "train_batch.sh: interrupted; run again with SWEEP_DIR=$SWEEP_DIR to resume"; exit 130; fi
[[ $dry_run == 1 ]] && exit 0
echo "train_batch.sh: done, $failed failed; results in $SWEEP_DIR"
"$PY" - "$SWEEP_DIR" <<'PYEOF'
import json, sys
from pathlib import Path
runs = [json.loads(p.read_text()) for p in Path(sys.argv[1]).glob("*/config.json")]
starved = [r for r in runs if r.get("finished", {}).get("starved")]
if starved:
    print(f"train_batch.sh: warning: in {len(starved)} of {len(runs)} runs a process waited for a core >= 5% of the "
          "time: runs disturbed each other or the machine was busy (lower JOBS; see finished.cpu in config.json)")
PYEOF
[[ $failed == 0 ]]
