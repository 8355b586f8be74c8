"""A sweep's grid: train_batch.sh's variables (``SweepArgs``), every run they make (``grid``) with its train.sh
flags, and the checks that refuse a bad variable before the first run starts (``problems``: each entry of
a numeric variable, then every flag value as train.sh itself would parse and check it).

    from asyncfl.launch.grid import SweepArgs, grid, problems
    runs = grid(SweepArgs(losses="0% 20%", staleness="0 9999")) if not problems(a) else ...
"""

from __future__ import annotations

import contextlib
import io
import itertools
import shlex
from dataclasses import dataclass

import tyro

from asyncfl.core import rules
from asyncfl.core.naming import run_name

ME = "train_batch.sh"

@dataclass
class SweepArgs:
    """A grid of train.sh runs (train_batch.sh passes its variables here)."""

    losses: str = "0% 10% 20%"  # network loss L on every link, one run per value
    link_sets: str = ""  # more per-server link conditions, one per line, each "losses;delays_ms;rates_mbit"
    stdevs: str = "0 600 10000"  # data imbalance D, in the paper's units (samples of an MNIST class of 6,000)
    staleness: str = "0 6 12 9999"  # SSP staleness threshold S, in rounds
    speed_sets: str = "1 1 1 1"  # per-server speed ratios, one set per line
    rules: str = "ssp"  # aggregation rules, one per line, each "rule [its client flags]"; a rule with its own barrier (fedavg) runs once per cell
    partitions: str = "gaussian"  # splits, one per line, each "partition [its server flags]"; only gaussian uses STDEVS
    repeats: int = 3  # runs per combination (seeds 0, 1, 2, ...)
    n_servers: int = 4  # data servers per run
    regime: str = "fast"  # fast: this machine's pace; paper: the study's clock
    backend: str = "native"  # native: this project's stack; pysyft: the study's own (PySyft 0.2.3 on Python 3.7)
    time_scale: float = 10  # --regime paper: K, every duration of the paper divided by K
    duration_s: str = ""  # training time per run, in seconds (empty: the regime's)
    dataset: str = "mnist-5k"  # a registered dataset (core/datasets.py)
    eval_interval_s: str = ""  # seconds between time-wise evaluations (empty: the regime's)
    split_seed: int = 42  # one split for the whole sweep (the original's seed)
    transport: str = "netns"  # netns: every server in a namespace at every L; loopback: L=0 grids without namespaces
    launcher: str = "local"  # local: run here, JOBS at a time; slurm: one sbatch --array
    jobs: int = 0  # configurations run at once (0 = 1; slurm: 0 = no %limit on the array)
    cpus_per_task: int = 2  # slurm: cores each run asks for
    exclusive: bool = False  # slurm: a whole node per run
    sbatch_args: str = ""  # slurm: more sbatch options, e.g. "--partition=short --time=00:10:00"
    extra_args: str = ""  # more train.sh flags for every run, e.g. "--eval-samples 500"
    sweep_dir: str = ""  # where the run folders go (empty: sweeps/<timestamp>)
    done_in: str = ""  # a results folder analysis.collect fills (e.g. results/rules-real-net): a run collected there is not run again
    grid_file: str = ""  # the grid file these variables came from (train_batch.sh grids/NAME.env), recorded in SWEEP_DIR/sweep.json
    dry_run: bool = False  # list the runs without starting them
    slurm_task: int = -1  # set by the array's task script: run line N of SWEEP_DIR/runs.json


@dataclass(frozen=True)
class Run:
    name: str
    args: tuple[str, ...]


def lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


NUMBERS = (  # variable, its text, the type of each entry, allowed?, what is allowed
    ("STALENESS", "staleness", int, lambda v: v >= 0, "whole numbers of rounds, 0 or more (9999 = S=inf)"),
    ("STDEVS", "stdevs", float, lambda v: v >= 0, "numbers of samples, 0 or more"),
    ("DURATION_S", "duration_s", float, lambda v: v > 0, "a positive number of seconds, or empty"),
    ("EVAL_INTERVAL_S", "eval_interval_s", float, lambda v: v > 0, "a positive number of seconds, or empty"),
)
# Which variable a train.sh flag comes from, to name it when the flag is refused (the rest: EXTRA_ARGS).
FLAG_VARIABLES = {"--loss": "LOSSES", "--losses": "LINK_SETS", "--delays-ms": "LINK_SETS", "--rates-mbit": "LINK_SETS",
                  "--stdev": "STDEVS", "--staleness-threshold": "STALENESS", "--speeds": "SPEED_SETS",
                  "--aggregation": "RULES", "--partition": "PARTITIONS", "--dataset": "DATASET",
                  "--n-servers": "N_SERVERS", "--time-scale": "TIME_SCALE", "--duration-s": "DURATION_S",
                  "--eval-interval-s": "EVAL_INTERVAL_S", "--split-seed": "SPLIT_SEED", "--backend": "BACKEND"}


def value_problems(a: SweepArgs) -> list[str]:
    """The numeric variables, entry by entry, before any run is named after them."""
    found = []
    for var, field, kind, ok, allowed in NUMBERS:
        for word in getattr(a, field).split():
            try:
                good = ok(kind(word))
            except ValueError:
                good = False
            if not good:
                found.append(f"{var} has {word!r}: {allowed}")
    found += [f"{var} is empty: give at least one value" for var, text in (("STALENESS", a.staleness),
              ("STDEVS", a.stdevs)) if not text.split()]
    found += [f"{var} is empty: give at least one entry" for var, text in (("SPEED_SETS", a.speed_sets),
              ("RULES", a.rules), ("PARTITIONS", a.partitions)) if not lines(text)]
    if not a.losses.split() and not lines(a.link_sets):
        found.append("LOSSES and LINK_SETS are both empty: give at least one link condition")
    return found


def one_line(text: str) -> str:
    """tyro's boxed error as one line: the box, its title and the pointer to --help dropped."""
    words = [line.strip(" │|─-—╭╮╰╯┌┐└┘") for line in text.splitlines()]
    words = [w for w in words if w and not w.startswith("For full helptext")]
    text = " ".join(words[1:] if len(words) > 1 else words)
    return text.split(" Argument helptext:")[0]


def flag_problems(args: list[str]) -> list[str]:
    """What train.sh would refuse in one run's flags, before anything starts: tyro's parse and
    settings.problems, the checks every run makes (--help stays fast: nothing here imports PyTorch)."""
    from asyncfl.settings import LaunchArgs
    from asyncfl.settings import problems as flag_checks

    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            parsed = tyro.cli(LaunchArgs, args=args, prog="train.sh")
    except SystemExit:
        return [one_line(out.getvalue())]
    found = flag_checks(parsed)
    if not found and parsed.backend == "pysyft":
        from asyncfl.launch import pysyft

        found = [why] if (why := pysyft.refusal(parsed)) else []
    return found


def covering(runs: list[Run]) -> list[Run]:
    """Few runs that between them hold every flag value of the grid: each is checked once, not per run."""
    seen: set[tuple[str, str]] = set()
    out = []
    for run in runs:
        pairs = set(zip(run.args, run.args[1:]))
        if not pairs <= seen:
            seen |= pairs
            out.append(run)
    return out


def run_problems(runs: list[Run]) -> list[str]:
    """Every problem train.sh would report in some run of the grid, named by the variable it comes from."""
    found: list[str] = []
    for run in covering(runs):
        for why in flag_problems(list(run.args)):
            flag = next((w for w in why.replace("'", " ").replace(":", " ").split() if w.startswith("--")), None)
            line = f"{FLAG_VARIABLES.get(flag, 'EXTRA_ARGS')}: {why}"
            if line not in found:
                found.append(line)
    return found


def setting_problems(a: SweepArgs) -> list[str]:
    """What is wrong with the grid's choices (regime, transport, rules, counts), named by its variables."""
    found = [f"{var} is {' or '.join(allowed)}, not {value!r}" for var, value, allowed in (
        ("REGIME", a.regime, ("fast", "paper")), ("TRANSPORT", a.transport, ("netns", "loopback")),
        ("LAUNCHER", a.launcher, ("local", "slurm")), ("BACKEND", a.backend, ("native", "pysyft")))
        if value not in allowed]
    found += [f"{flag} must be a positive integer" for flag, v in (("JOBS", a.jobs + 1), ("REPEATS", a.repeats),
             ("CPUS_PER_TASK", a.cpus_per_task), ("N_SERVERS", a.n_servers)) if v < 1]
    if a.transport == "loopback" and (any(loss.rstrip("%") not in ("0", "") for loss in a.losses.split()) or lines(a.link_sets)):
        found.append("TRANSPORT=loopback cannot emulate LOSSES or LINK_SETS: use TRANSPORT=netns (root)")
    for entry in lines(a.rules):
        if entry.split()[0] not in rules.REGISTRY:
            found.append(f"RULES: unknown rule {entry.split()[0]!r}; choose from {' '.join(rules.NAMES)}")
    return found


def link_flags(link: str, link_sets: list[str]) -> list[str]:
    """train.sh's flags for a link entry: 'L20' (one loss) or 'links<k>' (LINK_SETS' k-th entry)."""
    if link.startswith("L"):
        return ["--loss", link[1:] + "%"]
    values = [v.strip() for v in link_sets[int(link[5:])].split(";")]
    return [x for flag, v in zip(("--losses", "--delays-ms", "--rates-mbit"), values) for x in (flag, v)]


def pinned(rule: str) -> tuple[str, str | None]:
    """A RULES entry may pin its own S ("fedasync --staleness-threshold 9999 --alpha 0.6": an asynchronous
    rule run only asynchronously): the entry without that flag, and the S (None: the grid's)."""
    words = rule.split()
    if "--staleness-threshold" not in words:
        return rule, None
    at = words.index("--staleness-threshold")
    return " ".join(words[:at] + words[at + 2:]), words[at + 1]


def grid(a: SweepArgs) -> list[Run]:
    """Every run of the grid, repeat by repeat, with its train.sh flags. Only gaussian splits take every
    D (the others the first); a rule with a barrier of its own runs at S=0 only, a rule entry that pins
    its S at that S only."""
    link_sets, stdevs = lines(a.link_sets), a.stdevs.split()
    links = [f"L{loss.rstrip('%')}" for loss in a.losses.split()] + [f"links{k}" for k in range(len(link_sets))]
    fixed = ["--netns", "always" if a.transport == "netns" else "never", "--no-shared-memory",
             "--regime", a.regime, "--time-scale", f"{a.time_scale:g}", "--backend", a.backend,
             *(["--duration-s", a.duration_s] if a.duration_s else []),
             *(["--eval-interval-s", a.eval_interval_s] if a.eval_interval_s else []),
             "--dataset", a.dataset, "--n-servers", str(a.n_servers), "--stdev-units", "paper",
             "--split-seed", str(a.split_seed), "--base-port", "0", "--no-live"]
    runs = []
    for rep, link, part, stdev, speeds, rule, s in itertools.product(
            range(a.repeats), links, lines(a.partitions), stdevs, lines(a.speed_sets), lines(a.rules), a.staleness.split()):
        rule, pin = pinned(rule)
        once = pin is not None or not rules.get(rule.split()[0]).has_threshold
        if (part.split()[0] != "gaussian" and stdev != stdevs[0]) or (once and s != a.staleness.split()[0]):
            continue
        s = pin if pin is not None else s if rules.get(rule.split()[0]).has_threshold else "0"
        name = run_name(link[1:] if link.startswith("L") else link, stdev, int(s), speeds=speeds, repeat=rep,
                        rule=rule, partition=part)
        args = [*link_flags(link, link_sets), *fixed, "--stdev", stdev, "--staleness-threshold", s,
                "--partition", *part.split(), "--aggregation", *rule.split(), "--speeds", speeds,
                "--seed", str(rep), *shlex.split(a.extra_args)]
        runs.append(Run(name, tuple(args)))
    return runs


def problems(a: SweepArgs) -> list[str]:
    """Everything wrong with the grid, named by train_batch.sh's variables: its choices and numbers, then
    (when the runs can be named) what train.sh would refuse in any run."""
    bad = setting_problems(a) + value_problems(a)
    if bad:
        return bad
    runs = grid(a)
    return run_problems(runs) if runs else ["the grid has no runs (REPEATS, or every entry of a list left out)"]
