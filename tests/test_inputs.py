"""The analysis tools on inputs a user gets wrong: each is one line naming the file (and row), exit 2; a
cut last row is dropped and counted; a run its user stopped is analysed and plotted as what it is."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from asyncfl.analysis import inputs
from tests.test_analysis import make_run

TOOLS = ("analyze", "plot", "collect", "sensitivity", "verdicts", "backends", "realnet")


def tool(name: str, *args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"asyncfl.analysis.{name}", *map(str, args)], capture_output=True,
                          text=True, timeout=120, cwd=cwd)


def one_line_exit_2(result: subprocess.CompletedProcess, *fragments: str) -> str:
    err = result.stderr.strip()
    assert result.returncode == 2, (result.returncode, err)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err
    return err


@pytest.mark.parametrize("name", ["analyze", "plot", "collect", "sensitivity", "realnet"])
def test_a_missing_folder_is_one_line(tmp_path, name):
    args = (tmp_path / "nosuch", tmp_path / "dest") if name == "collect" else (tmp_path / "nosuch",)
    one_line_exit_2(tool(name, *args), "nosuch", "no runs/" if name == "realnet" else "no such")


@pytest.mark.parametrize("name", ["verdicts", "backends"])
def test_a_missing_runs_csv_is_one_line(tmp_path, name):
    args = (tmp_path / "nosuch.csv",) if name == "verdicts" else (tmp_path / "a", tmp_path / "b")
    one_line_exit_2(tool(name, *args), "nosuch" if name == "verdicts" else str(tmp_path / "a"))


@pytest.mark.parametrize("name", ["analyze", "plot", "collect", "sensitivity"])
def test_an_empty_folder_is_one_line(tmp_path, name):
    (tmp_path / "empty").mkdir()
    args = (tmp_path / "empty", tmp_path / "dest") if name == "collect" else (tmp_path / "empty",)
    if name == "sensitivity":  # a base grid exists; the folder has no variants
        base = tmp_path / "base.csv"
        base.write_text("loss,stdev,staleness,seed\n0%,0,0,0\n")
        args = (*args, "--base", base)
    one_line_exit_2(tool(name, *args), "empty")
    assert not (tmp_path / "empty" / "verdicts.md").exists() and not (tmp_path / "dest").exists()


def run_with_f1(tmp_path, text: str):
    run = make_run(tmp_path / "run", 0, 0, [(0, 0.1)], [3, 3])
    (run / "f1_time.csv").write_text(text)
    return run


@pytest.mark.parametrize("text, fragments", [
    ("", ("f1_time.csv", "empty")),
    ("time_", ("f1_time.csv", "not even a header", "cut")),
    ("time_s,f\n", ("f1_time.csv", "header", "lacks f1")),
    ("time_s,f1\n0,0.1\n15,0.3x\n30,0.5\n", ("f1_time.csv, line 3", "'0.3x'", "not a number")),
    ("time_s,f1\n0,0.1\n15,0.3,7\n30,0.5\n", ("f1_time.csv, line 3", "3 values for 2 columns")),
])
@pytest.mark.parametrize("name", ["analyze", "plot"])
def test_a_malformed_f1_time_names_file_and_row(tmp_path, name, text, fragments):
    run = run_with_f1(tmp_path, text)
    one_line_exit_2(tool(name, run), *fragments)
    assert not (run / "summary.csv").exists() and not (run / "run.png").exists()


def test_a_cut_last_row_is_dropped_and_counted(tmp_path):
    # The run was killed while writing "30,0.95": the file ends in "30,0.9" without its newline.
    run = run_with_f1(tmp_path, "time_s,f1\n0,0.1\n15,0.5\n30,0.9")
    table = inputs.read_csv(run / "f1_time.csv")
    assert list(table["f1"]) == [0.1, 0.5] and table.attrs["cut_rows"] == 1
    assert inputs.read_csv(run_with_f1(tmp_path / "b", "time_s,f1\n0,0.1\n") / "f1_time.csv").attrs["cut_rows"] == 0
    result = tool("analyze", run)
    assert result.returncode == 0, result.stderr
    assert "1 cut last row" in result.stderr
    row = pd.read_csv(run / "runs.csv").iloc[0]
    assert row["final_f1"] == 0.5 and row["cut_rows"] == 1


def test_a_stopped_run_is_analysed_and_plotted_as_what_it_is(tmp_path):
    run = make_run(tmp_path / "run", 0, 0, [(0, 0.1), (4, 0.5)], [2, 2])
    config = json.loads((run / "config.json").read_text())
    config["finished"].update(stop_reason="interrupted", training_s=4.2)
    (run / "config.json").write_text(json.dumps(config))
    result = tool("plot", run)
    assert result.returncode == 0, result.stderr
    assert (run / "run.png").stat().st_size > 10_000
    result = tool("analyze", run)
    assert result.returncode == 0 and "stopped by its user after 4.2 s" in result.stderr
    row = pd.read_csv(run / "runs.csv").iloc[0]
    assert row["stop_reason"] == "interrupted" and row["duration_s"] == 4.2
    # ...and collect, which fills results/, leaves it out.
    result = tool("collect", tmp_path, tmp_path / "dest")
    assert "0 finished runs" in result.stdout and not (tmp_path / "dest" / "runs" / "run").exists()


def test_a_config_that_is_not_json_is_one_line(tmp_path):
    run = make_run(tmp_path / "run", 0, 0, [(0, 0.1)], [3, 3])
    (run / "config.json").write_text('{"args": {')
    one_line_exit_2(tool("analyze", run), "config.json", "not JSON")
