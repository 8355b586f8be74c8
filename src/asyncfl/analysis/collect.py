"""Copy the small files of a sweep's finished runs into a results folder, then summarise and draw it.

    python -m asyncfl.analysis.collect sweeps/20261128-143000 results/paper-regime

For every finished run in the sweep: config.json, f1_time.csv, f1_epoch.csv, events.csv, rounds.csv (its
stalls) and yappi.csv go to DEST/runs/<run>/ (with its twins' config.json, f1_time.csv and rounds.csv, if
analysis/twin.py made them) (the logs and the model stay in the sweep folder), and the sweep's sweep.json (its
grid file, variables and commit) to DEST/sweeps/<sweep>.json; then analysis/analyze.py writes
DEST/summary.csv and DEST/runs.csv and analysis/plot.py DEST/fig3..fig6. Run it as often as runs finish: it
copies only what is new or changed, so an interrupted sweep's committed results lose nothing.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import tyro

from asyncfl.analysis import analyze, inputs, plot
from asyncfl.core import schema


@dataclass
class Args:
    sweep: tyro.conf.Positional[Path]  # the sweep folder (train_batch.sh's SWEEP_DIR)
    dest: tyro.conf.Positional[Path]  # the results folder, e.g. results/paper-regime
    figures: bool = True  # draw Figs. 3-6 too (--no-figures: copy and summarise only, light while a sweep runs)


def main(args: Args) -> int:
    finished = inputs.find_runs([args.sweep], with_interrupted=False)  # results/ hold runs that ran their course
    if not finished and not any((d / schema.CONFIG).exists() for d in [args.sweep, *args.sweep.iterdir()]):
        raise inputs.InputError(f"{args.sweep}: no run folders in it (a sweep folder holds one per run)")
    copied = 0
    for run in finished:
        target = args.dest / "runs" / run.name
        target.mkdir(parents=True, exist_ok=True)
        for name in (*schema.SMALL_FILES, *(f"{twin}/{f}" for twin in schema.TWINS for f in (schema.CONFIG, schema.F1_TIME, schema.ROUNDS))):
            src, dst = run / name, target / name
            if src.exists() and (not dst.exists() or dst.read_bytes() != src.read_bytes()):
                dst.parent.mkdir(exist_ok=True)
                shutil.copyfile(src, dst)
                copied += 1
    if (args.sweep / schema.SWEEP).is_file():  # the grid file and commit that made these runs, one per sweep
        (args.dest / "sweeps").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.sweep / schema.SWEEP, args.dest / "sweeps" / f"{args.sweep.resolve().name}.json")
    print(f"collect: {len(finished)} finished runs, {copied} files copied into {args.dest / 'runs'}")
    if not finished:
        return 0
    status = analyze.main(analyze.Args((args.dest / "runs",), out=args.dest))
    if status or not args.figures:
        return status
    return plot.main(plot.Args((args.dest / "runs",), out=args.dest))


PROG = "python -m asyncfl.analysis.collect"

if __name__ == "__main__":
    sys.exit(inputs.guarded(main, tyro.cli(Args, prog=PROG, description=__doc__), PROG))
