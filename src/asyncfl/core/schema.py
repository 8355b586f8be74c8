"""The run folder's schema: every file a run writes, and every CSV's header, for the writers (client,
launcher, twin) and the readers (analysis) alike. See docs/options.md, "Outputs", for each column.

    from asyncfl.core import schema
    CsvLog(out_dir / schema.ROUNDS, schema.ROUNDS_HEADER)
"""

CONFIG = "config.json"  # every setting at the start; ``finished`` added at the end
F1_TIME = "f1_time.csv"  # time-wise F1
F1_EPOCH = "f1_epoch.csv"  # round-wise F1
EVENTS = "events.csv"  # abandoned rounds, reconnections, thread deaths, the machine's load
ROUNDS = "rounds.csv"  # one row per applied update
YAPPI = "yappi.csv"  # per server thread: the profile of its round loop
CLIENT_LOG = "client.log"
SERVERS_LOG = "servers.log"
MODEL = "model.safetensors"  # the final global model
FIGURE = "run.png"  # analysis/plot.py's figure of one run
SERVERS_READY = "servers.ready"  # the launcher's readiness signal from server/main.py
SWEEP = "sweep.json"  # a sweep folder's grid file, variables and commit
SUMMARY = "summary.csv"  # analysis/analyze.py: one row per configuration
RUNS = "runs.csv"  # analysis/analyze.py: one row per run

F1_TIME_HEADER = ["time_s", "f1"]
YAPPI_HEADER = ["server", "thread", "rounds", "loop_total_s", "loop_mean_s", "fit_total_s", "fit_mean_s",
                "gate_total_s", "gate_mean_s", "gate_frac", "max_staleness"]
F1_EPOCH_HEADER = ["epoch", "f1"]
EVENTS_HEADER = ["time_s", "server", "event", "detail", "silence_s", "round_s"]  # the last two: abandoned rounds
ROUNDS_HEADER = ["time_s", "server", "round", "staleness", "updates_behind", "loss", "round_s", "compute_s", "idle_s",
                 # the client socket's TCP over the round (empty off TCP): see client/remote.RoundTcp
                 "retrans_segs", "rtos", "max_backoff", "rto_ms", "srtt_ms", "stall_s", "start_s", "applied_s"]
# analysis/twin.py's replays keep what a simulated round has: no wall time of its own, no socket.
TWIN_ROUNDS_HEADER = [c for c in ROUNDS_HEADER if c in ("time_s", "server", "round", "staleness", "updates_behind",
                                                        "loss", "start_s")]
TWINS = ("twin-formula", "twin-replay")  # analysis/twin.py's folders inside a run
# What results/ keep of a run (analysis/collect.py): small, and enough for every analysis and figure.
SMALL_FILES = (CONFIG, F1_TIME, F1_EPOCH, EVENTS, ROUNDS, YAPPI)
NAMES = (CONFIG, F1_TIME, F1_EPOCH, EVENTS, ROUNDS, YAPPI, CLIENT_LOG, SERVERS_LOG, MODEL, FIGURE, SERVERS_READY, SWEEP,
         SUMMARY, RUNS)
