"""Run files: CsvLog rows as the analysis reads them back; which runs ran their course."""

import json

import pytest

from asyncfl.process.runlog import CsvLog, ran_its_course, read_rows, stop_reason


def test_rows_are_flushed_whole_with_floats_to_six_digits_and_text_quoted(tmp_path):
    # Prepare
    log = CsvLog(tmp_path / "events.csv", ["time_s", "server", "event", "detail", "loss"])
    # Execute: each row must be on disk as soon as it is written (a killed run keeps it)
    log.write(1.23456789, 0, "round_abandoned", "recv: reset, retrying", float("nan"))
    on_disk = read_rows(tmp_path / "events.csv")
    log.write(2.0, "evaluator", "evaluator_died", 'exit code -9; "no" scores', float("inf"))
    log.close()
    # Assert
    assert on_disk == [{"time_s": "1.23457", "server": "0", "event": "round_abandoned",
                        "detail": "recv: reset, retrying", "loss": "nan"}]
    second = read_rows(tmp_path / "events.csv")[1]
    assert second["time_s"] == "2" and second["detail"] == 'exit code -9; "no" scores' and second["loss"] == "inf"
    with pytest.raises(ValueError, match="expected 5 values"):
        CsvLog(tmp_path / "x.csv", ["a"] * 5).write(1)


def test_profiling_finds_its_functions_by_reference():
    # Prepare: a thread that runs a function under yappi, as a server thread runs run_round
    import threading

    import yappi

    from asyncfl.client import profiling

    def busy():
        return sum(range(20000))

    yappi.clear_stats()
    profiling.start()
    t = threading.Thread(target=lambda: [busy() for _ in range(5)], name="probe")
    t.start()
    t.join()
    yappi.stop()
    # Execute: find the stats of busy and of a function that did not run
    stats = list(yappi.get_func_stats())
    hits = [s for s in stats if profiling.is_stat_of(s, busy)]
    misses = [s for s in stats if profiling.is_stat_of(s, profiling.write_yappi_csv)]
    yappi.clear_stats()
    # Assert: the one that ran is found with its calls, the other not; the columns' functions are real ones
    assert sum(s.ncall for s in hits) == 5 and misses == []
    assert all(callable(fn) and fn.__code__.co_filename.endswith(".py") for fn in profiling.yappi_functions().values())


REFUSED = "server-6: server refused fit: ValueError: tensor 'conv1.weight' has non-finite values"


@pytest.mark.parametrize("finished,reason,course", [
    ({"stop_reason": "duration", "errors": []}, "duration", True),
    ({"stop_reason": "diverged", "errors": [REFUSED]}, "diverged", True),
    ({"stop_reason": "error", "errors": [REFUSED, REFUSED.replace("server-6", "server-2")]}, "diverged", True),
    ({"stop_reason": "error", "errors": [REFUSED, "server-1: connection refused"]}, "error", False),
    ({"stop_reason": "error", "errors": []}, "error", False),
    ({"stop_reason": "interrupted", "errors": []}, "interrupted", False),
])
def test_a_run_that_diverged_ran_its_course_and_one_cut_short_did_not(tmp_path, finished, reason, course):
    # A run recorded before "diverged" existed says "error" with every error a refusal of a non-finite model.
    (tmp_path / "config.json").write_text(json.dumps({"finished": finished}))
    assert stop_reason(finished) == reason
    assert ran_its_course(tmp_path) is course


def test_a_run_without_results_has_not_run_its_course(tmp_path):
    assert not ran_its_course(tmp_path)  # no config.json: never started
    (tmp_path / "config.json").write_text(json.dumps({"args": {}}))
    assert not ran_its_course(tmp_path)  # started, still running or killed
    (tmp_path / "config.json").write_text("{")
    assert not ran_its_course(tmp_path)  # cut mid-write
