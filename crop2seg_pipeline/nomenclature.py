"""Fixed vocabularies: Sentinel-2 bands, SCL classes and the crop class nomenclature.

These are the data contracts of ``shared/DESIGN.md``; everything else refers to them by name.
"""

from __future__ import annotations

#: The 10 reflectance bands in PASTIS order: the band axis of every cube, store and model.
BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
#: Native ground sampling distance (m) of each band we read.
NATIVE_RESOLUTION: dict[str, int] = {
    "B02": 10, "B03": 10, "B04": 10, "B08": 10,
    "B05": 20, "B06": 20, "B07": 20, "B8A": 20, "B11": 20, "B12": 20,
    "SCL": 20,
}
BANDS_10M: tuple[str, ...] = tuple(b for b in BANDS if NATIVE_RESOLUTION[b] == 10)
BANDS_20M: tuple[str, ...] = tuple(b for b in BANDS if NATIVE_RESOLUTION[b] == 20)
#: Scene classification layer asset name.
SCL = "SCL"

#: Sen2Cor scene classification values.
SCL_CLASSES: dict[int, str] = {
    0: "no_data",
    1: "saturated_or_defective",
    2: "dark_area_pixels",
    3: "cloud_shadows",
    4: "vegetation",
    5: "not_vegetated",
    6: "water",
    7: "unclassified",
    8: "cloud_medium_probability",
    9: "cloud_high_probability",
    10: "thin_cirrus",
    11: "snow",
}
#: SCL values that are *not* clear sky by default (nodata, defective, shadow, clouds, cirrus, snow).
DEFAULT_UNCLEAR_SCL: tuple[int, ...] = (0, 1, 3, 8, 9, 10, 11)

#: Class ids -> names (Crop2Seg S2TSCzCrop nomenclature).
CLASS_NAMES: tuple[str, ...] = (
    "Background",
    "Permanent grassland",
    "Annual fruit & vegetable",
    "Summer cereals",
    "Winter cereals",
    "Rapeseed",
    "Maize",
    "Annual forage crops",
    "Sugar beet",
    "Flax & hemp",
    "Permanent fruit",
    "Hopyards",
    "Vineyards",
    "Other crops",
    "Not classified",
)
BACKGROUND = 0
NOT_CLASSIFIED = 14
N_CLASSES = len(CLASS_NAMES)  # 15, class 14 ignored in loss and metrics

#: RGB colours for maps and quicklooks, one per class id.
CLASS_COLORS: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0),
    (112, 168, 0),
    (255, 127, 80),
    (255, 235, 130),
    (214, 157, 0),
    (255, 255, 0),
    (255, 170, 0),
    (170, 255, 127),
    (168, 0, 132),
    (115, 178, 255),
    (137, 68, 101),
    (0, 115, 76),
    (128, 0, 128),
    (190, 190, 190),
    (255, 255, 255),
)
