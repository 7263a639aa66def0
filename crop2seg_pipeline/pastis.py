"""PASTIS in and out (placeholder until the reader lands)."""
from __future__ import annotations
from pathlib import Path

def is_pastis_folder(path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / "metadata.geojson").is_file() and (p / "DATA_S2").is_dir()

def open_pastis_training(*a, **k):
    raise NotImplementedError
