"""The study's time regime on this machine: its clock, its round pace, its timeout (pure functions).

The paper's rounds took about half a minute (PySyft 0.2 sent hex text in several WebSocket messages per
round and its gate polled once a second); here a round takes tens of milliseconds. The ``paper`` regime
puts this machine where the paper's was, from the paper's stated facts only:

- each server's rounds last a pace of its own (idle time after its compute): mean ``PACE_S`` read off
  the paper's L=0, D=0 curve against this project's F1 per round, the servers' paces spread by
  ``PACE_SPREAD`` so that asynchronous runs at L=0 reach the largest staleness the paper reports (16);
  see ``bench/calibrate.py`` and docs/regime.md for why a spread between servers and not between rounds;
- the original's timeout: 60 s without a byte on the socket, then a reconnect;
- F1 every 15 s, runs of 40 minutes;
- TCP's minimum retransmission timeout (Linux's 200 ms) in proportion to a round.

``time_scale`` K divides every duration above (pace, timeout, evaluation interval, run length, minimum
RTO), so that a 40-minute run takes 40/K minutes with the same proportions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

# The paper's stated facts (Sections III-B, III-D, III-E and Fig. 3).
PAPER_DURATION_S = 40 * 60  # each run: 40 minutes
PAPER_EVAL_INTERVAL_S = 15.0  # F1 every 15 seconds
PAPER_TIMEOUT_S = 60.0  # "the default WebSocket timeout (60 s)": websocket-client's per-operation timeout
PAPER_LARGEST_STALENESS = 16  # "the maximum staleness achieved by asynchronous system is 16"
PAPER_N_SERVERS = 4
PAPER_F1_AT_MIN = ((5.0, 0.5), (15.0, 0.8), (35.0, 0.9))  # Fig. 3, L=0%, D=0: F1 read off at 5, 15, 35 min
LINUX_RTO_MIN_MS = 200.0  # TCP_RTO_MIN: what the paper's loopback TCP waited at least before a retransmission

# Calibrated by bench/calibrate.py from the facts above (the numbers and how are in docs/regime.md).
PACE_S = 30.0  # mean seconds per server round on the paper's clock
PACE_SPREAD = 0.10  # server paces evenly spread over (1 +- this) x PACE_S, assigned to servers by --seed

DEFAULT_TIME_SCALE = 10.0  # K: the paper's 40 minutes in 4


@dataclass(frozen=True)
class Regime:
    """A run's regime, always present (``resolve``): every duration it sets, on this machine's clock, and its
    policy. The paper regime's are the paper's divided by K; the fast regime paces nothing and keeps
    Linux's own timers (K = 1, no minimum RTO of its own)."""

    name: str
    time_scale: float  # K
    pace_s: float  # mean round pace over the servers
    pace_spread: float  # server paces evenly spread over (1 +- pace_spread) x pace_s
    round_timeout_s: float  # seconds without a byte on the socket before a round is abandoned
    eval_interval_s: float
    duration_s: float
    rto_min_ms: float  # per-route minimum TCP retransmission timeout on every server's link
    n_servers: int = PAPER_N_SERVERS

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def paced(self) -> bool:
        """The paper regime: rounds paced, every server in a namespace, the original's wire by default."""
        return self.name == "paper"

    def label(self) -> str:
        return f"paper regime K={self.time_scale:g}" if self.paced else "fast regime"

    def paces(self, rng: np.random.Generator, n_servers: int, compute_s: float = 0.0) -> list[float]:
        """Each server's round pace: the paper regime's spread over the servers (``server_paces``); the fast
        regime's is ``--compute-s`` (0: this machine's own compute)."""
        return server_paces(rng, n_servers, self.pace_s, self.pace_spread) if self.paced else [compute_s] * n_servers

    def defaults(self) -> dict:
        """The client settings this regime sets when the user leaves them unset (the [regime] flags)."""
        return client_defaults(self.name, self.time_scale)


def fast_regime() -> Regime:
    return Regime("fast", 1.0, 0.0, 0.0, 60.0, 15.0, 60.0, 0.0)


def resolve(name: str, time_scale: float = DEFAULT_TIME_SCALE, pace_spread: float = PACE_SPREAD) -> Regime:
    """The regime a run's settings name, resolved once: every other module asks it, never its name."""
    return paper_regime(time_scale, pace_spread) if name == "paper" else fast_regime()


def paper_regime(time_scale: float = DEFAULT_TIME_SCALE, pace_spread: float = PACE_SPREAD) -> Regime:
    if not (1.0 <= time_scale <= 100.0):
        raise ValueError(f"--time-scale must be in [1, 100], got {time_scale:g}")
    if not (0.0 <= pace_spread < 1.0):
        raise ValueError(f"--pace-spread must be in [0, 1), got {pace_spread:g}")
    k = float(time_scale)
    return Regime("paper", k, PACE_S / k, float(pace_spread), PAPER_TIMEOUT_S / k, PAPER_EVAL_INTERVAL_S / k,
                  PAPER_DURATION_S / k, LINUX_RTO_MIN_MS / k)


def recorded_time_scale(config: dict) -> float | None:
    """K of a run from its config.json (``regime_record``'s), None for an unpaced run (and runs from before
    the regimes existed, which were all fast)."""
    r = config.get("regime") or {"name": "fast"}
    return float(r["time_scale"]) if r.get("name") == "paper" else None


def pace_spread_of(paces_s: list[float]) -> float:
    """The spread ``server_paces`` drew these paces with: (largest - smallest) / (largest + smallest)."""
    lo, hi = min(paces_s), max(paces_s)
    return (hi - lo) / (hi + lo) if hi + lo > 0 else 0.0


def regime_record(regime: Regime, infos: list[dict]) -> dict:
    """config.json's ``regime``: the client's durations, and the paces the servers say they keep (their
    spread is a server flag, so it is read from them, not assumed); the fast regime's name alone."""
    if not regime.paced:
        return {"name": regime.name}
    record = regime.to_dict()
    record.pop("pace_spread", None)  # the client's Regime holds only the default
    paces = [info.get("pace_s") for info in infos]
    if paces and all(paces):
        record.update(paces_s=paces, pace_spread=round(pace_spread_of(paces), 6))
    return record


def client_defaults(name: str, time_scale: float = DEFAULT_TIME_SCALE) -> dict:
    """The client settings a regime sets when the user leaves them unset (the [regime] flags)."""
    if name == "paper":
        r = paper_regime(time_scale)
        return {"duration_s": r.duration_s, "eval_interval_s": r.eval_interval_s, "eval_every_rounds": 1,
                "eval_samples": 2000, "round_timeout_s": r.round_timeout_s, "timeout_on": "silence",
                "evaluator_nice": 10, "eval_cpu_frac": 0.0, "wire": "original",
                "profiler": "yappi"}  # the paper's profiler: its cost stays in the client as the original's did
    return {"duration_s": 60.0, "eval_interval_s": 15.0, "eval_every_rounds": 0, "eval_samples": 0,
            "round_timeout_s": 60.0, "timeout_on": "round", "evaluator_nice": 0, "eval_cpu_frac": 0.05, "wire": "modern",
            "profiler": "timers"}


def server_paces(rng: np.random.Generator, n_servers: int, mean_s: float, spread: float) -> list[float]:
    """Each server's round pace: evenly spaced over [(1 - spread), (1 + spread)] x ``mean_s``, in an order
    drawn from ``rng`` (which server is slow changes with the seed, like the paper's repeats)."""
    if mean_s < 0 or not 0 <= spread < 1:
        raise ValueError("a pace needs mean >= 0 and 0 <= spread < 1")
    factors = np.linspace(1 - spread, 1 + spread, n_servers) if n_servers > 1 else np.ones(1)
    return [float(mean_s * f) for f in rng.permutation(factors)]


def paced_idle_s(compute_s: float, pace_s: float, speed_ratio: float = 1.0) -> float:
    """Idle time after a round's compute so that the round lasts ``speed_ratio`` times the larger of its
    compute and its pace (pace 0: ``speed_ratio`` times the compute, the ``--speeds`` rule alone)."""
    return max(0.0, speed_ratio * max(compute_s, pace_s) - compute_s)


def simulate_largest_staleness(paces: list[float] | np.ndarray, duration: float, jitter_cv: float = 0.0,
                               rng: np.random.Generator | None = None) -> int:
    """Largest staleness (a server's completed rounds minus the smallest) of an asynchronous run of
    ``duration`` seconds in which server i's rounds last ``paces[i]``, each round's length multiplied by
    a gamma-distributed factor of mean 1 and coefficient of variation ``jitter_cv`` (0: exact)."""
    paces = np.asarray(paces, dtype=float)
    n_max = int(duration / paces.min() * 3 + 50)
    factors = np.ones((len(paces), n_max))
    if jitter_cv > 0:
        shape = 1.0 / jitter_cv**2
        factors = (rng or np.random.default_rng()).gamma(shape, 1.0 / shape, size=factors.shape)
    ends = np.cumsum(paces[:, None] * factors, axis=1)
    times = np.sort(ends[ends <= duration])
    if len(times) == 0:
        return 0
    # Completed rounds of every server at every completion: how many of its ends came by then.
    counts = np.stack([np.searchsorted(e, times, side="right") for e in ends])
    return int((counts.max(axis=0) - counts.min(axis=0)).max())
