"""analysis/markdown.py: the one table builder of the analysis tools and bench scripts."""
import pandas as pd
import pytest

from asyncfl.analysis import markdown


def test_a_table_has_its_header_separator_and_rows():
    text = markdown.table(["rule", "rounds"], [["fedavg", 812], ("ssp", 7.5)])
    assert text.splitlines() == ["| rule | rounds |", "| --- | --- |", "| fedavg | 812 |", "| ssp | 7.5 |"]


def test_a_pipe_inside_a_cell_keeps_the_columns():
    line = markdown.table(["a", "b"], [["x|y", "z"]]).splitlines()[2]
    assert line == "| x\\|y | z |"


def test_a_row_of_the_wrong_width_is_refused():
    with pytest.raises(ValueError, match="2 cells under a header of 3"):
        markdown.table(["a", "b", "c"], [[1, 2]])


def test_a_frame_is_its_columns_and_rows():
    frame = pd.DataFrame({"S": ["0", "inf"], "F1": [0.5, 0.6]}, index=[7, 9])
    assert markdown.frame_table(frame).splitlines()[2:] == ["| 0 | 0.5 |", "| inf | 0.6 |"]
