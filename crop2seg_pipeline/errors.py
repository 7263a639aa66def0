"""Exception family of crop2seg-pipeline.

Every error a user can cause derives from :class:`Crop2SegError` and says what to change.
"""

from __future__ import annotations


class Crop2SegError(Exception):
    """Base class of all errors raised for bad input or configuration."""


class ItemError(Crop2SegError):
    """A STAC item is malformed or lacks something the pipeline needs (band, projection)."""


class MissingBandError(ItemError):
    """An item lacks one of the bands the pipeline needs."""


class ReadError(Crop2SegError):
    """A raster or vector file could not be read (missing, corrupt, unreachable)."""


class CRSError(Crop2SegError):
    """Inputs are in coordinate reference systems that cannot be combined as asked."""


class EmptySelectionError(Crop2SegError):
    """Nothing is left after filtering (no item in bbox/dates, no parcel in the scene...)."""


class ParcelError(Crop2SegError):
    """The parcel (LPIS) file is unusable: empty, missing attributes, disjoint from the scene."""


class StoreError(Crop2SegError):
    """A patch store path holds something else, or a store is incomplete/inconsistent."""


class ReportError(Crop2SegError):
    """A report cannot be made from this input (neither a patch store nor a prediction) or into this folder."""
