"""Acquisition dates -> the positions a temporal-attention model is fed (pure numpy).

*The* one place where positions are computed: the torch ``Dataset`` (training and evaluation)
and whole-tile inference all call :func:`date_positions` with the settings saved in the model's
``model.json`` (``reference_date`` and ``date_encoding``), so a model is fed its dates exactly
the way it was trained.

Encodings (``model.json["date_encoding"]``, ``"days"`` when absent):

``days``
    whole days since ``reference_date`` (U-TAE / PASTIS: days since 2018-09-01; here the
    September 1st before the first training date). A model learns the season's calendar.
``doy``
    day of the year, 1 .. 366 (Crop2Seg's ``--use_doy``): independent of the year, so a model
    trained on one season can be applied to another; ``reference_date`` is not used. A season
    that crosses January 1st wraps from 365/366 back to 1.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import numpy as np

__all__ = ["DATE_ENCODINGS", "DEFAULT_DATE_ENCODING", "check_date_encoding", "date_positions", "position_range"]

#: The date encodings a model can be trained with.
DATE_ENCODINGS: tuple[str, ...] = ("days", "doy")
#: The encoding of weights whose ``model.json`` has no ``date_encoding`` (all weights before it).
DEFAULT_DATE_ENCODING = "days"


def check_date_encoding(encoding: str) -> str:
    """``encoding`` if it is one of :data:`DATE_ENCODINGS`, else ``ValueError``."""
    if encoding not in DATE_ENCODINGS:
        raise ValueError(f"unknown date encoding {encoding!r}: choose one of {', '.join(DATE_ENCODINGS)}")
    return encoding


def date_positions(dates: Sequence | np.ndarray, reference_date: str | dt.date | np.datetime64,
                   encoding: str = DEFAULT_DATE_ENCODING) -> np.ndarray:
    """The model's ``batch_positions`` for ``dates``, as float32 (one value per date).

    Parameters
    ----------
    dates
        Acquisition dates (anything ``numpy.datetime64`` accepts); times of day are dropped
        (``datetime64[D]``) first.
    reference_date
        ISO date (``model.json["reference_date"]``); used by the ``days`` encoding.
    encoding
        ``"days"`` (days since ``reference_date``) or ``"doy"`` (day of the year, 1-based).
    """
    check_date_encoding(encoding)
    d = np.asarray(dates).astype("datetime64[D]")
    if encoding == "doy":
        return ((d - d.astype("datetime64[Y]").astype("datetime64[D]")).astype(np.int64) + 1).astype(np.float32)
    ref = np.datetime64(str(reference_date)[:10], "D")
    return (d - ref).astype(np.float32)


def position_range(first: str | np.datetime64, last: str | np.datetime64,
                   reference_date: str | dt.date | np.datetime64,
                   encoding: str = DEFAULT_DATE_ENCODING) -> tuple[float, float]:
    """Smallest and largest position of any day from ``first`` to ``last`` (inclusive).

    With ``days`` these are the positions of ``first`` and ``last``; with ``doy`` a period that
    crosses January 1st covers 1 .. 366.
    """
    a, b = np.datetime64(str(first)[:10], "D"), np.datetime64(str(last)[:10], "D")
    if b < a:
        a, b = b, a
    p = date_positions(np.arange(a, b + np.timedelta64(1, "D")), reference_date, encoding)
    return float(p.min()), float(p.max())
