"""Transfer benchmark: what a lossy link does to request/reply exchanges, without training.

    .venv/bin/python bench/loss.py                                   # every cell, 3 repeats of 120 s
    .venv/bin/python bench/loss.py --losses "20" --ccs cubic --repeats 1 --duration-s 30 --jobs 2

Each run is one cell (where packets are dropped, congestion control, loss L, minimum RTO) for
``--duration-s``: a client in the calling namespace sends a ``--size-bytes`` request (a model's weights,
by default) over the project's own link (netem.NetworkLab: a veth into a namespace of its own, MTU 65535)
and transport (transport.Connection) to a server in that namespace, which answers with as many bytes at
once; the next request follows the reply. A request that waits ``--silence-s`` without a byte (the
original's websocket timeout) is abandoned and the client reconnects: at once under ``--faults original``
(the original's train_loop; its server then shares one queue of received messages among its connections,
server/pysyft.py), after a back-off under ``modern`` (today's: ``--backoff-s`` doubling to 16 times it).
Any other error (a reset, a close) is counted in ``errors``: under the original it would have ended that
server's thread; here the client reconnects and goes on, so that both behaviours are measured alike. Drop
placements: ``ingress`` (what runs use: the netdev ingress hook of both veth ends, silent to the sender)
and ``local`` (the old one, kept here for comparison only: the namespace's own input and output hooks,
which drop an outgoing packet inside its sender). At L=0 no rule exists in either placement, so a cell
of L=0 is run once and stands for both.

Every run executes in a private network namespace of its own (``unshare``), so ``nstat`` there counts the
client end's TCP and nothing else, and ``nstat`` in the server's namespace the server end's. Rows go to
``--out`` (loss_runs.csv, one per run, flushed as each ends); the table printed at the end (mean and
spread over repeats) is what docs/network.md holds. Needs root or user namespaces, ip, tc and nft.
"""

from __future__ import annotations

import csv
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro

from asyncfl.analysis import markdown
from asyncfl.core.conditions import LinkConditions
from asyncfl.net import tcp, transport, wsclient, wsserver
from asyncfl.netem import lab as netem
from asyncfl.netem import rootless
from asyncfl.server.pysyft import SharedQueue, shared_queue_session

ROOT = Path(__file__).resolve().parent.parent
MODEL_BYTES = 1_725_000  # a LeNet's weights as a fit request carries them (net/wire.py), to the nearest kB
NSTAT = ("TcpRetransSegs", "TcpExtTCPTimeouts", "TcpExtTCPLossProbes", "TcpExtTCPOFOQueue", "TcpExtTCPSACKReorder",
         "TcpExtTCPSpuriousRTOs", "TcpExtTCPLostRetransmit", "TcpExtTCPSynRetrans")
COLUMNS = ["placement", "cc", "faults", "loss_pct", "rto_min_ms", "repeat", "duration_s", "exchanges", "exchanges_per_min",
           "exchange_mean_s", "exchange_p50_s", "exchange_p99_s", "exchange_max_s", "stall_p50_s", "stall_p99_s",
           "stall_max_s", "timeouts", "errors", "connections", "dropped_to_server", "dropped_to_client",
           *[f"client_{k}" for k in NSTAT], *[f"server_{k}" for k in NSTAT]]


@dataclass
class Args:
    out: str = "out/loss_runs.csv"  # one row per run (cell x repeat), flushed as each ends
    duration_s: float = 120.0  # seconds per run
    repeats: int = 3  # runs per cell
    size_bytes: int = MODEL_BYTES  # bytes of each request and of each reply
    placements: str = "ingress local"  # where packets are dropped: ingress (runs) and/or local (the old, for comparison)
    ccs: str = "cubic bbr"  # congestion controls
    losses: str = "0 10 20"  # L in percent, each direction
    rto_mins_ms: str = "200 20"  # minimum RTO of both routes, ms (200: Linux's default; 20: the paper regime's at K=10)
    silence_s: float = 60.0  # a request that waits this long without a byte is abandoned, then a reconnect
    faults: str = "original"  # original: reconnect at once, servers share one queue; modern: back off first (both: "original modern")
    backoff_s: float = 0.05  # --faults modern: the first wait before reconnecting, doubling to 16x (0.5 s / K at K=10)
    jobs: int = 1  # runs at once (each has its own namespaces; L=0 runs keep a core busy: run those alone)
    cell: str = ""  # (internal) run this one cell, as JSON, in this process, and print its row


def nstat(netns: str | None = None) -> dict[str, int]:
    cmd = (["ip", "netns", "exec", netns] if netns else []) + ["nstat", "-asz", "--json"]
    out = json.loads(subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True).stdout)["kernel"]
    return {k: int(out.get(k, 0)) for k in NSTAT}


def serve(netns: str, address: str, cc: str, size: int, faults: str, ports) -> None:
    """The server process: in the link's namespace, answer every message with ``size`` bytes (with
    ``faults`` original, from one queue shared by all connections, as PySyft 0.2's server did)."""
    netem.enter_netns(netns)
    reply = bytes(size)
    shared = SharedQueue() if faults == "original" else None

    def handler(conn: transport.Connection) -> None:
        if shared is not None:
            shared_queue_session(conn, shared, lambda message: reply)
            return
        try:
            while True:
                conn.recv()
                conn.send(reply)
        except transport.ConnectionClosed:
            pass

    server = wsserver.Server(address, 0, handler, lambda headers, peer: None, 2 * size + (1 << 20), tcp_cc=cc)
    ports.put(server.socket.getsockname()[1])
    server.serve_forever()


def run_cell(cell: dict) -> dict:
    """One run: a link, a server, exchanges for the cell's duration; its row."""
    rootless.prepare()
    lab = netem.NetworkLab(drop_at=cell["placement"])
    ctx = mp.get_context("fork")
    ports = ctx.Queue()
    server = None
    try:
        (link,) = lab.create([LinkConditions(loss_pct=float(cell["loss_pct"]))], rto_min_ms=float(cell["rto_min_ms"]))
        server = ctx.Process(target=serve, args=(link.netns, link.ns_addr, cell["cc"], int(cell["size_bytes"]),
                                                 cell["faults"], ports), daemon=True)
        server.start()
        port = ports.get(timeout=30)
        client_before, server_before = nstat(), nstat(link.netns)
        seen = exchanges(f"ws://{link.ns_addr}:{port}", cell)
        client, server_end = nstat(), nstat(link.netns)
        dropped = lab.dropped()[0]
    finally:
        if server is not None:
            server.kill()
            server.join(5)
        lab.close()
    t, st = np.array(seen["times"] or [np.nan]), np.array(seen["stalls"] or [np.nan])
    row = {k: cell[k] for k in ("placement", "cc", "faults", "loss_pct", "rto_min_ms", "repeat", "duration_s")}
    row.update(exchanges=len(seen["times"]), exchanges_per_min=len(seen["times"]) * 60 / float(cell["duration_s"]),
               exchange_mean_s=np.nanmean(t), exchange_p50_s=np.nanmedian(t), exchange_p99_s=np.nanpercentile(t, 99),
               exchange_max_s=np.nanmax(t), stall_p50_s=np.nanmedian(st), stall_p99_s=np.nanpercentile(st, 99),
               stall_max_s=np.nanmax(st), timeouts=seen["timeouts"], errors=seen["errors"],
               connections=seen["connections"], dropped_to_server=dropped["to_server"],
               dropped_to_client=dropped["to_client"])
    row.update({f"client_{k}": client[k] - client_before[k] for k in NSTAT})
    row.update({f"server_{k}": server_end[k] - server_before[k] for k in NSTAT})
    return {k: (round(float(v), 4) if isinstance(v, (float, np.floating)) else v) for k, v in row.items()}


def exchanges(uri: str, cell: dict) -> dict:
    """Request and reply of the cell's size for its duration, reconnecting as its faults say; each
    exchange's time and longest stall, and the timeouts, errors and connections."""
    size, silence_s = int(cell["size_bytes"]), float(cell["silence_s"])
    request = bytes(size)
    seen = {"times": [], "stalls": [], "timeouts": 0, "errors": 0, "connections": 0}
    t_end = time.monotonic() + float(cell["duration_s"])
    conn, delay = None, 0.0
    while time.monotonic() < t_end:
        if conn is None:
            if delay:  # --faults modern: back off before reconnecting, doubling after each failure
                time.sleep(delay)
            try:
                conn = wsclient.connect(uri, {}, None, 2 * size + (1 << 20), silence_s, cell["cc"])
            except OSError:
                # A lost SYN or handshake: TCP itself waits 1 s, 2 s...; then again (at once, or backing off).
                delay = min(2 * delay, 16 * float(cell["backoff_s"])) if delay else 0.0
                continue
            seen["connections"] += 1
            conn.sock.settimeout(silence_s)
        conn.mark()
        try:
            conn.send(request)
            conn.recv()
        except (transport.Silence, transport.ConnectionClosed) as e:
            seen["timeouts" if isinstance(e, transport.Silence) else "errors"] += 1
            conn.close_socket()
            conn = None
            delay = float(cell["backoff_s"]) if cell["faults"] == "modern" else 0.0
            continue
        delay = 0.0
        seen["times"].append(time.monotonic() - conn.marked_at)
        seen["stalls"].append(max(conn.first_byte_at - conn.marked_at, conn.longest_gap_s))
    if conn is not None:
        conn.close_socket()
    return seen


def cells(args: Args) -> list[dict]:
    out = []
    for rep in range(args.repeats):
        for loss in args.losses.split():
            for placement in args.placements.split() if float(loss) else ["any"]:
                for cc in args.ccs.split():
                    for rto in args.rto_mins_ms.split():
                        for faults in args.faults.split():
                            out.append({"placement": placement, "cc": cc, "faults": faults, "loss_pct": float(loss),
                                        "rto_min_ms": float(rto), "repeat": rep, "duration_s": args.duration_s,
                                        "size_bytes": args.size_bytes, "silence_s": args.silence_s,
                                        "backoff_s": args.backoff_s})
    return out


def launch(cell: dict) -> dict:
    """Run one cell in a private network namespace; its row (or an error row)."""
    env = {**os.environ, rootless.ENV: "1", "PATH": os.environ.get("PATH", "") + ":/usr/sbin:/sbin",
           "PYTHONPATH": str(ROOT / "src")}
    cell = {**cell, "placement": "ingress" if cell["placement"] == "any" else cell["placement"],
            "shown_as": cell["placement"]}
    r = subprocess.run([*rootless.UNSHARE, "--", sys.executable, __file__, "--cell", json.dumps(cell)],
                       capture_output=True, text=True, timeout=float(cell["duration_s"]) + 300, env=env)
    lines = [line for line in r.stdout.splitlines() if line.startswith("{")]
    if r.returncode != 0 or not lines:
        raise RuntimeError(f"cell {cell} failed ({r.returncode}): {r.stderr.strip()[-800:]}")
    row = json.loads(lines[-1])
    row["placement"] = cell["shown_as"]
    return row


def table(rows: list[dict]) -> str:
    """Markdown: one line per cell, each figure the mean over repeats (min-max where it matters)."""
    keys = ("placement", "cc", "faults", "loss_pct", "rto_min_ms")
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    head = ["drops", "cc", "faults", "L %", "rto_min ms", "runs", "exchanges/min (min-max)", "mean s", "p99 s",
            "longest stall s", "timeouts", "other errors", "client retrans / RTOs / out-of-order",
            "server retrans / RTOs / out-of-order"]
    lines = []
    for key in sorted(groups, key=lambda k: (k[3], k[0], k[1], k[2], -k[4])):
        g = groups[key]
        m = {c: float(np.nanmean([r[c] for r in g])) for c in g[0] if isinstance(g[0][c], (int, float))}
        per_min = [r["exchanges_per_min"] for r in g]
        lines.append([
            key[0], key[1], key[2], f"{key[3]:g}", f"{key[4]:g}", len(g),
            f"{m['exchanges_per_min']:.1f} ({min(per_min):.1f}-{max(per_min):.1f})", f"{m['exchange_mean_s']:.2f}",
            f"{m['exchange_p99_s']:.2f}", f"{max(r['stall_max_s'] for r in g):.1f}", sum(int(r["timeouts"]) for r in g),
            sum(int(r["errors"]) for r in g),
            f"{m['client_TcpRetransSegs']:.0f} / {m['client_TcpExtTCPTimeouts']:.0f} / {m['client_TcpExtTCPOFOQueue']:.0f}",
            f"{m['server_TcpRetransSegs']:.0f} / {m['server_TcpExtTCPTimeouts']:.0f} / {m['server_TcpExtTCPOFOQueue']:.0f}"])
    return markdown.table(head, lines)


def main(args: Args) -> int:
    if args.cell:
        print(json.dumps(run_cell(json.loads(args.cell))), flush=True)
        return 0
    if bad := set(args.faults.split()) - {"original", "modern"}:
        print(f"bench/loss.py: --faults takes original and/or modern, not {' '.join(sorted(bad))}", file=sys.stderr)
        return 2
    for cc in args.ccs.split():
        if why := tcp.problem(cc):
            print(f"bench/loss.py: {why}", file=sys.stderr)
            return 2
    if why := rootless.unavailable():
        print(f"bench/loss.py: each run needs a network namespace of its own, and {why}", file=sys.stderr)
        return 2
    todo = cells(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = list(csv.DictReader(out.open())) if out.exists() else []
    finished = {(r["placement"], r["cc"], r.get("faults", "original"), float(r["loss_pct"]), float(r["rto_min_ms"]),
                 int(r["repeat"])) for r in done}
    todo = [c for c in todo if (c["placement"], c["cc"], c["faults"], c["loss_pct"], c["rto_min_ms"], c["repeat"])
            not in finished]
    print(f"bench/loss.py: {len(todo)} runs of {args.duration_s:g} s to go ({len(finished)} already in {out}), "
          f"{args.jobs} at a time", flush=True)
    new = not out.exists() or out.stat().st_size == 0
    rows = []
    with out.open("a", newline="") as f, ThreadPoolExecutor(max(1, args.jobs)) as pool:
        writer = csv.DictWriter(f, COLUMNS)
        if new:
            writer.writeheader()
        for future in as_completed([pool.submit(launch, c) for c in todo]):
            row = future.result()
            writer.writerow({k: row[k] for k in COLUMNS})
            f.flush()
            rows.append(row)
            print(f"  {row['placement']} {row['cc']} faults {row['faults']} L={row['loss_pct']:g}% rto_min {row['rto_min_ms']:g} ms "
                  f"r{row['repeat']}: {row['exchanges']} exchanges, {row['timeouts']} timeouts", flush=True)
    every = [{k: (v if k in ("placement", "cc", "faults") else float(v)) for k, v in r.items()}
             for r in csv.DictReader(out.open())]
    print(table(every))
    return 0


if __name__ == "__main__":
    sys.exit(main(tyro.cli(Args, prog="bench/loss.py", description=__doc__)))
