"""Tests of the date -> position kernel shared by training, evaluation and inference."""

from __future__ import annotations

import numpy as np
import pytest

from crop2seg_pipeline.kernels import windows
from crop2seg_pipeline.kernels.dates import DATE_ENCODINGS, date_positions, position_range


def test_days_since_reference_drop_the_time_of_day():
    dates = np.array(["2021-09-01T10:30", "2022-03-01T00:00", "2021-08-31T23:59"], dtype="datetime64[ns]")
    assert date_positions(dates, "2021-09-01").tolist() == [0.0, 181.0, -1.0]
    assert date_positions(dates, "2021-09-01", "days").dtype == np.float32
    assert windows.date_positions is date_positions  # one function, re-exported for inference


def test_day_of_year_is_one_based_and_independent_of_the_year_and_reference():
    dates = np.array(["2021-01-01", "2021-12-31", "2024-12-31", "2024-02-29", "2018-09-01"], dtype="datetime64[D]")
    doy = date_positions(dates, "1999-01-01", "doy")
    assert doy.tolist() == [1.0, 365.0, 366.0, 60.0, 244.0]
    again = date_positions(dates, "2030-09-01", "doy")
    np.testing.assert_array_equal(doy, again)
    # the same calendar day of two years gets the same position (outside leap-year shifts)
    assert date_positions(["2019-05-10", "2023-05-10"], "2018-09-01", "doy").tolist() == [130.0, 130.0]


def test_position_range_covers_every_day_between_first_and_last():
    assert position_range("2021-09-15", "2022-10-15", "2021-09-01", "days") == (14.0, 409.0)
    assert position_range("2021-09-15", "2022-10-15", "2021-09-01", "doy") == (1.0, 365.0)  # crosses Jan 1st
    assert position_range("2022-03-01", "2022-06-30", "2021-09-01", "doy") == (60.0, 181.0)
    assert position_range("2022-06-30", "2022-03-01", "2021-09-01", "doy") == (60.0, 181.0)  # either order


def test_unknown_encoding_is_refused():
    assert DATE_ENCODINGS == ("days", "doy")
    with pytest.raises(ValueError, match="unknown date encoding 'months'"):
        date_positions(["2021-01-01"], "2020-09-01", "months")
