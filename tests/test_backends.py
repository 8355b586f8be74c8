"""analysis/backends.py on run folders made here: the cells side by side, deaths by cause, F1 at paper-minutes."""

import json

import pandas as pd

from asyncfl.analysis import backends


def fake_grid(root, name, deaths):
    folder = root / name
    rows = []
    for loss, s in (("0%", 9999), ("20%", 0), ("20%", 9999)):
        run = f"L{loss[:-1]}-S{s}"
        d = folder / "runs" / run
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps({"regime": {"name": "paper", "time_scale": 10.0}}))
        # Scores every 1.5 s (15 paper-seconds at K=10), F1 rising 0.01 a score; the final score last.
        times = [i * 1.5 for i in range(160)] + [240.0]
        pd.DataFrame({"time_s": times, "f1": [min(1, 0.01 * i) for i in range(161)]}).to_csv(d / "f1_time.csv", index=False)
        events = [{"time_s": 1, "server": 0, "event": "thread_ended", "detail": f"{cause}: lost", "silence_s": "",
                   "round_s": ""} for cause in (deaths if loss == "20%" and s == 0 else [])]
        pd.DataFrame(events, columns=["time_s", "server", "event", "detail", "silence_s", "round_s"]).to_csv(
            d / "events.csv", index=False)
        rows.append({"run": run, "stdev": 0.0, "staleness": s, "loss": loss, "rounds_mean": 70.0 if loss == "0%" else 20.0,
                     "abandoned_rounds": 0 if loss == "0%" else 5, "thread_deaths": len(events),
                     "longest_flat_paper_min": 1.0, "f1_auc_frac": 0.7, "f1_last5": 0.9 if loss == "0%" else 0.45,
                     "starved": None})
    pd.DataFrame(rows).to_csv(folder / "runs.csv", index=False)
    return folder


def test_cells_side_by_side_with_deaths_by_cause_and_f1_at_paper_minutes(tmp_path, capsys):
    a = fake_grid(tmp_path, "pysyft", ["ConnectionResetError", "ConnectionResetError"])
    b = fake_grid(tmp_path, "native", ["ObjectRequestMessage(loss)"])
    assert backends.main(backends.Args((a, b))) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("| 0 | 20% |")]
    assert len(lines) == 2 and "| native |" in lines[0] and "| pysyft |" in lines[1]
    assert "2 (ConnectionResetError 2)" in lines[1] and "1 (ObjectRequestMessage(loss) 1)" in lines[0]
    cells = lines[1].split(" | ")
    # 5 paper-minutes at K=10 = 30 s: score 20 (0.20); 15 min = 90 s: 0.60; 35 min = 210 s: 1.00 (capped)
    assert cells[8:11] == ["0.20", "0.60", "1.00"]
    assert "0.50*" in lines[1]  # last-5 F1 over L=0's at another S, marked


def test_a_folder_without_runs_csv_is_one_line_and_exit_2(tmp_path, capsys):
    assert backends.main(backends.Args((tmp_path,))) == 2
    assert "no runs.csv" in capsys.readouterr().err
