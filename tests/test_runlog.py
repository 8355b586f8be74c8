"""Run files: CsvLog rows as the analysis reads them back."""

import pytest

from asyncfl.process.runlog import CsvLog, read_rows


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
    misses = [s for s in stats if profiling.is_stat_of(s, profiling.write_csv)]
    yappi.clear_stats()
    # Assert: the one that ran is found with its calls, the other not; the columns' functions are real ones
    assert sum(s.ncall for s in hits) == 5 and misses == []
    assert all(callable(fn) and fn.__code__.co_filename.endswith(".py") for fn in profiling.FUNCTIONS.values())
