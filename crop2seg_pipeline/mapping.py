"""Crop code -> class id tables: the mapping from a parcel file's crop codes to the nomenclature.

The mapping is data, not code: a CSV with columns ``crop_code``, ``class_id`` (``crop_name``
optional). The package ships the Czech table ``crop2seg_pipeline/data/crop_mapping_cz.csv``;
a user's own table replaces it (``--mapping``). Codes unknown to the table become
Not classified (14).
"""

from __future__ import annotations

import csv
import importlib.resources
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import ParcelError, ReadError
from .nomenclature import CLASS_NAMES, NOT_CLASSIFIED

logger = logging.getLogger(__name__)

__all__ = ["CropMapping", "MISSING_CODE", "normalize_codes"]

#: Largest class id a mapping may assign (14, Not classified, is for unknown codes).
_MAX_MAPPED_CLASS = NOT_CLASSIFIED - 1
#: Key under which parcels without a crop code are reported in ``unmapped_codes``.
MISSING_CODE = "<missing>"


# --------------------------------------------------------------------------------------------
# Crop mapping
# --------------------------------------------------------------------------------------------
def _normalize_code(value: Any) -> str | None:
    """One crop code as a stripped string; integral numbers lose their ``.0``; None if missing."""
    if value is None:
        return None
    if isinstance(value, (float, np.floating)):
        if np.isnan(value):
            return None
        if float(value).is_integer():
            return str(int(value))
    elif isinstance(value, (bool, np.bool_)):
        return str(value)
    elif isinstance(value, (int, np.integer)):
        return str(int(value))
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    text = str(value).strip()
    return text or None


def normalize_codes(codes: pd.Series) -> pd.Series:
    """Crop codes as stripped strings (object dtype), None where missing."""
    return pd.Series(
        [_normalize_code(v) for v in codes.to_numpy(dtype=object)], index=codes.index, dtype=object
    )


@dataclass(frozen=True)
class CropMapping:
    """Crop code -> class id table (data, not code).

    Parameters
    ----------
    codes : dict of str to int
        Crop code (stripped string) -> class id in 0..13.
    names : dict of str to str
        Crop code -> crop name, for reports; may be empty.
    source : str
        Where the table came from (a path, or ``"<memory>"``).
    """

    codes: dict[str, int]
    names: dict[str, str] = field(default_factory=dict)
    source: str = "<memory>"

    @classmethod
    def read(cls, path: str | os.PathLike | None = None) -> "CropMapping":
        """Read a mapping CSV with columns ``crop_code``, ``class_id`` (``crop_name`` optional).

        Parameters
        ----------
        path : str or path-like, optional
            CSV file (UTF-8, comma separated). None reads the table shipped with the package,
            ``crop2seg_pipeline/data/crop_mapping_cz.csv``.

        Returns
        -------
        CropMapping

        Raises
        ------
        ReadError
            If the file cannot be read.
        ParcelError
            If a required column is missing, a class id is not an integer in 0..13, a code is
            empty, or a code is listed twice with different class ids.
        """
        if path is None:
            resource = importlib.resources.files("crop2seg_pipeline").joinpath(
                "data/crop_mapping_cz.csv"
            )
            source = str(resource)
            try:
                text = resource.read_text(encoding="utf-8-sig")
            except OSError as exc:  # pragma: no cover - broken installation
                raise ReadError(f"cannot read the shipped crop mapping {source}: {exc}") from exc
        else:
            source = os.fspath(path)
            try:
                text = Path(source).read_text(encoding="utf-8-sig")
            except FileNotFoundError as exc:
                raise ReadError(f"crop mapping file not found: {source}") from exc
            except (OSError, UnicodeDecodeError) as exc:
                raise ReadError(
                    f"cannot read crop mapping {source}: {exc}. It must be a UTF-8 CSV file."
                ) from exc
        return cls._parse(text, source)

    @classmethod
    def _parse(cls, text: str, source: str) -> "CropMapping":
        reader = csv.DictReader(text.splitlines())
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in ("crop_code", "class_id") if c not in columns]
        if missing:
            raise ParcelError(
                f"crop mapping {source} lacks column(s) {missing}; it has {columns}. "
                "A mapping is a CSV with columns crop_code,class_id (crop_name optional)."
            )
        codes: dict[str, int] = {}
        names: dict[str, str] = {}
        first_line: dict[str, int] = {}
        problems: list[str] = []
        for line, row in enumerate(reader, start=2):  # line 1 is the header
            row = {(k or "").strip(): (v or "") for k, v in row.items() if k is not None}
            code = row.get("crop_code", "").strip()
            raw_id = row.get("class_id", "").strip()
            if not code and not raw_id and not row.get("crop_name", "").strip():
                continue  # blank line
            if not code:
                problems.append(f"line {line}: empty crop_code")
                continue
            try:
                class_id = int(raw_id)
            except ValueError:
                problems.append(f"line {line} ({code}): class_id {raw_id!r} is not an integer")
                continue
            if not 0 <= class_id <= _MAX_MAPPED_CLASS:
                problems.append(
                    f"line {line} ({code}): class_id {class_id} is not in 0..{_MAX_MAPPED_CLASS}"
                )
                continue
            if code in codes and codes[code] != class_id:
                problems.append(
                    f"lines {first_line[code]} and {line}: crop_code {code!r} maps to both "
                    f"{codes[code]} and {class_id}"
                )
                continue
            codes.setdefault(code, class_id)
            first_line.setdefault(code, line)
            name = row.get("crop_name", "").strip()
            if name:
                names.setdefault(code, name)
        if problems:
            shown = "; ".join(problems[:10]) + (" ..." if len(problems) > 10 else "")
            raise ParcelError(
                f"invalid crop mapping {source}: {shown}. Class ids are integers 0..13 "
                f"({', '.join(f'{i}={n}' for i, n in enumerate(CLASS_NAMES[:-1]))}); "
                "unknown crops become Not classified (14) automatically."
            )
        if not codes:
            raise ParcelError(f"crop mapping {source} has no rows")
        logger.debug("read %d crop codes from %s", len(codes), source)
        return cls(codes=codes, names=names, source=source)

    def map(self, codes: pd.Series) -> pd.Series:
        """Class ids of crop codes.

        Parameters
        ----------
        codes : pandas.Series
            Crop codes of any dtype; compared as stripped strings, so the integer 123 (or
            123.0) matches a ``"123"`` row.

        Returns
        -------
        pandas.Series
            uint8 class ids with the index of ``codes``; unknown or missing codes are
            ``NOT_CLASSIFIED`` (14).
        """
        codes = codes if isinstance(codes, pd.Series) else pd.Series(codes)
        normalized = normalize_codes(codes)
        mapped = normalized.map(self.codes)
        return mapped.fillna(NOT_CLASSIFIED).astype(np.uint8)
