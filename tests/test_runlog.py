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
