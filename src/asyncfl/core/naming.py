"""Names: run folders (one function for the launcher's, the client's and the sweep's) and settings' flags.

``L<loss>-D<stdev>-S<staleness>`` (the study's dimensions), then ``-speeds_<ratios>-r<repeat>`` in a sweep
or ``-<timestamp>`` for a single run; a rule or a split other than the study's prefixes its slug, so
runs of the study's rule and split keep the names they always had (older sweeps still resume).
"""

from __future__ import annotations

from datetime import datetime


def slug(entry: str) -> str:
    """A rule or partition entry as a name part: 'fedbuff --buffer-size 4' -> 'fedbuff_buffer-size-4'."""
    return entry.replace(" --", "_").replace("--", "").replace(" ", "-")


def run_name(link: str, stdev: float | str | None, staleness: int, *, speeds: str | None = None, repeat: int | None = None,
             rule: str = "ssp", partition: str = "gaussian", when: datetime | None = None) -> str:
    """``link`` is the link part without its 'L' for a loss ('0', '0_0_10_20') or 'links<k>' for a sweep's
    k-th LINK_SETS entry; ``stdev`` None means owners serving their own data."""
    d = "own" if stdev is None else stdev if isinstance(stdev, str) else f"{stdev:g}"
    name = f"{link if link.startswith('links') else 'L' + link}-D{d}-S{staleness}"
    if speeds is not None:
        name += f"-speeds_{speeds.replace(' ', '_').replace(':', '-')}"
    if repeat is not None:
        name += f"-r{repeat}"
    if when is not None:
        name += f"-{when:%Y%m%d-%H%M%S}"
    for entry, study in ((rule, "ssp"), (partition, "gaussian")):
        if entry != study:
            name = f"{slug(entry)}-{name}"
    return name


def single_run_dir(link: str, stdev: float | str | None, staleness: int, rule: str = "ssp", partition: str = "gaussian") -> str:
    """A single run's default folder, ``out/<name>-<timestamp>``; ``staleness`` is the S the gate uses
    (the rule's: fedavg's is 0 whatever was asked)."""
    return "out/" + run_name(link, stdev, staleness, rule=rule, partition=partition, when=datetime.now())


def flag(field: str) -> str:
    """A setting's command-line flag: 'base_port' -> '--base-port'."""
    return "--" + field.replace("_", "-")

