"""Sentinel-2 L2A SAFE products (folders or zips) as STAC items, and the SAFE layout itself.

A product as ESA and the Copernicus Data Space ship it::

    S2B_MSIL2A_20220302T100029_N0400_R122_T33UWQ_20220302T120000.SAFE/
        MTD_MSIL2A.xml                      product metadata: time, baseline, cloud cover,
                                            BOA_QUANTIFICATION_VALUE, BOA_ADD_OFFSET per band,
                                            footprint, the list of image files
        manifest.safe
        GRANULE/L2A_T33UWQ_A026000_20220302T100500/
            MTD_TL.xml                      tile metadata: CRS, size and origin per resolution
            IMG_DATA/R10m/T33UWQ_20220302T100029_B02_10m.jp2  (B02 B03 B04 B08, ...)
            IMG_DATA/R20m/T33UWQ_20220302T100029_B05_20m.jp2  (B05 B06 B07 B8A B11 B12 SCL, ...)
            IMG_DATA/R60m/...

:func:`index_safe` reads the two XML files (nothing else: no JPEG2000 is opened) and returns one
STAC item per product whose band assets point at the JP2s, read later by GDAL (``/vsizip/`` for
zips). :class:`SafeWriter` writes the same layout (used by the demo scene, ``--format safe``).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ItemError, ReadError
from .grid import Grid
from .nomenclature import BANDS, NATIVE_RESOLUTION, SCL

__all__ = ["SafeNames", "SafeWriter", "index_safe", "find_products", "is_safe_source"]

log = logging.getLogger(__name__)

#: ``band_id`` of BOA_ADD_OFFSET / Spectral_Information: the 13 physical bands in this order.
PHYSICAL_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
PRODUCT_RE = re.compile(
    r"^(?P<sat>S2[A-D])_MSIL2A_(?P<start>\d{8}T\d{6})_N(?P<baseline>\d{4})_R(?P<orbit>\d{3})_"
    r"T(?P<tile>\d{2}[A-Z]{3})_(?P<disc>\d{8}T\d{6})$"
)
_JP2_TYPE = "image/jp2"


def _ns_strip(root: ET.Element) -> ET.Element:
    """Drop XML namespaces (ESA changes the PSD version in them) so paths stay simple."""
    for el in root.iter():
        if isinstance(el.tag, str) and "}" in el.tag:
            el.tag = el.tag.split("}", 1)[1]
    return root


# ----------------------------------------------------------------------------- names


@dataclass(frozen=True)
class SafeNames:
    """The names of one L2A product's folders and files (the real SAFE conventions).

    Parameters
    ----------
    sat : str
        ``S2A``, ``S2B``...
    start : datetime.datetime
        Sensing start (UTC).
    baseline : str
        Processing baseline, ``"04.00"``.
    orbit : int
        Relative orbit.
    tile : str
        MGRS tile id, ``"33UWQ"``.
    generated : datetime.datetime
        Product discriminator (generation time).
    absolute_orbit : int
        Absolute orbit number (in the granule folder name).
    """

    sat: str
    start: dt.datetime
    baseline: str
    orbit: int
    tile: str
    generated: dt.datetime
    absolute_orbit: int

    @property
    def product(self) -> str:
        return (f"{self.sat}_MSIL2A_{self.start:%Y%m%dT%H%M%S}_N{self.baseline.replace('.', '')}_"
                f"R{self.orbit:03d}_T{self.tile}_{self.generated:%Y%m%dT%H%M%S}")

    @property
    def granule(self) -> str:
        return f"L2A_T{self.tile}_A{self.absolute_orbit:06d}_{self.start:%Y%m%dT%H%M%S}"

    def image_file(self, band: str, resolution: int | None = None) -> str:
        """Path of a band's image inside the product, without ``.jp2`` (as in MTD_MSIL2A.xml)."""
        res = resolution or NATIVE_RESOLUTION[band]
        return (f"GRANULE/{self.granule}/IMG_DATA/R{res}m/"
                f"T{self.tile}_{self.start:%Y%m%dT%H%M%S}_{band}_{res}m")


# ----------------------------------------------------------------------------- writing


class SafeWriter:
    """Write one L2A product in the SAFE layout: band JP2s (lossless), MTD_MSIL2A.xml, MTD_TL.xml.

    Parameters
    ----------
    folder : path-like
        Where the ``<product>.SAFE`` folder is created.
    names : SafeNames
    grid : Grid
        The 10 m grid of the product (20 m bands share its origin).
    """

    def __init__(self, folder: str | os.PathLike, names: SafeNames, grid: Grid) -> None:
        self.names = names
        self.grid = grid
        self.root = Path(folder) / f"{names.product}.SAFE"

    def write_band(self, band: str, data: np.ndarray) -> Path:
        """Write one band (uint16 DN, SCL uint8) at its native resolution as lossless JPEG2000."""
        import rasterio
        from affine import Affine

        res = NATIVE_RESOLUTION[band]
        path = self.root / (self.names.image_file(band) + ".jp2")
        path.parent.mkdir(parents=True, exist_ok=True)
        g = self.grid
        profile = {"driver": "JP2OpenJPEG", "width": data.shape[1], "height": data.shape[0], "count": 1,
                   "dtype": data.dtype.name, "crs": f"EPSG:{g.epsg}",
                   "transform": Affine(res, 0.0, g.x0, 0.0, -res, g.y0),
                   "QUALITY": "100", "REVERSIBLE": "YES", "YCBCR420": "NO"}
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data, 1)
        aux = path.with_name(path.name + ".aux.xml")  # GDAL's side file: not part of a product
        if aux.exists():
            aux.unlink()
        return path

    def finish(self, *, cloud_cover: float, nodata_pct: float, boa_offset: int, footprint_lonlat: Sequence,
               spacecraft: str) -> Path:
        """Write the metadata files (last: a product without MTD_MSIL2A.xml is incomplete)."""
        n = self.names
        g = self.grid
        start = f"{n.start:%Y-%m-%dT%H:%M:%S}.{n.start.microsecond // 1000:03d}Z"
        tl = _tile_xml(n, g, start)
        (self.root / "GRANULE" / n.granule / "MTD_TL.xml").write_text(tl, encoding="utf-8")
        (self.root / "manifest.safe").write_text(_manifest_xml(n), encoding="utf-8")
        mtd = _product_xml(n, start, cloud_cover, nodata_pct, boa_offset, footprint_lonlat, spacecraft)
        tmp = self.root / "MTD_MSIL2A.xml.tmp"
        tmp.write_text(mtd, encoding="utf-8")
        os.replace(tmp, self.root / "MTD_MSIL2A.xml")
        return self.root

    def zip(self, remove_folder: bool = True) -> Path:
        """Pack the product as ``<product>.zip`` holding ``<product>.SAFE/`` (as downloads come)."""
        import shutil

        out = self.root.parent / f"{self.names.product}.zip"
        tmp = out.with_suffix(".zip.tmp")
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as z:
            for p in sorted(self.root.rglob("*")):
                if p.is_file():
                    z.write(p, f"{self.root.name}/{p.relative_to(self.root).as_posix()}")
        os.replace(tmp, out)
        if remove_folder:
            shutil.rmtree(self.root)
        return out


def _el(parent: ET.Element, tag: str, text: Any = None, **attrs: Any) -> ET.Element:
    e = ET.SubElement(parent, tag, {k: str(v) for k, v in attrs.items()})
    if text is not None:
        e.text = str(text)
    return e


def _to_text(root: ET.Element) -> str:
    ET.indent(root, space="  ")
    return '<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _product_xml(n: SafeNames, start: str, cloud: float, nodata_pct: float, boa_offset: int,
                 footprint: Sequence, spacecraft: str) -> str:
    root = ET.Element("n1:Level-2A_User_Product", {
        "xmlns:n1": "https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-2A.xsd",
        "xmlns:xsi": "http://www.w3.org/2001/XMLSchema-instance"})
    gi = _el(root, "n1:General_Info")
    pi = _el(gi, "Product_Info")
    _el(pi, "PRODUCT_START_TIME", start)
    _el(pi, "PRODUCT_STOP_TIME", start)
    _el(pi, "PRODUCT_URI", f"{n.product}.SAFE")
    _el(pi, "PROCESSING_LEVEL", "Level-2A")
    _el(pi, "PRODUCT_TYPE", "S2MSI2A")
    _el(pi, "PROCESSING_BASELINE", n.baseline)
    _el(pi, "GENERATION_TIME", f"{n.generated:%Y-%m-%dT%H:%M:%S}.000000Z")
    dtk = _el(pi, "Datatake", datatakeIdentifier=f"G{n.sat}_{n.start:%Y%m%dT%H%M%S}_{n.absolute_orbit:06d}_N{n.baseline}")
    _el(dtk, "SPACECRAFT_NAME", spacecraft)
    _el(dtk, "DATATAKE_TYPE", "INS-NOBS")
    _el(dtk, "DATATAKE_SENSING_START", start)
    _el(dtk, "SENSING_ORBIT_NUMBER", n.orbit)
    _el(dtk, "SENSING_ORBIT_DIRECTION", "DESCENDING")
    org = _el(pi, "Product_Organisation")
    gl = _el(org, "Granule_List")
    gr = _el(gl, "Granule", datastripIdentifier=f"{n.sat}_OPER_MSI_L2A_DS_SYNT_{n.generated:%Y%m%dT%H%M%S}_N{n.baseline}",
             granuleIdentifier=f"{n.sat}_OPER_MSI_L2A_TL_SYNT_{n.generated:%Y%m%dT%H%M%S}_A{n.absolute_orbit:06d}_T{n.tile}_N{n.baseline}",
             imageFormat="JPEG2000")
    for band in sorted([*BANDS, SCL], key=lambda b: (NATIVE_RESOLUTION[b], b)):
        _el(gr, "IMAGE_FILE", n.image_file(band))
    ic = _el(gi, "Product_Image_Characteristics")
    for text, index in (("NODATA", 0), ("SATURATED", 65535)):
        sv = _el(ic, "Special_Values")
        _el(sv, "SPECIAL_VALUE_TEXT", text)
        _el(sv, "SPECIAL_VALUE_INDEX", index)
    q = _el(ic, "QUANTIFICATION_VALUES_LIST")
    _el(q, "BOA_QUANTIFICATION_VALUE", 10000, unit="none")
    _el(q, "AOT_QUANTIFICATION_VALUE", "1000.0", unit="none")
    _el(q, "WVP_QUANTIFICATION_VALUE", "1000.0", unit="cm")
    if boa_offset:
        ol = _el(ic, "BOA_ADD_OFFSET_VALUES_LIST")
        for i, _ in enumerate(PHYSICAL_BANDS):
            _el(ol, "BOA_ADD_OFFSET", -int(boa_offset), band_id=i)
    sil = _el(ic, "Spectral_Information_List")
    for i, b in enumerate(PHYSICAL_BANDS):
        _el(sil, "Spectral_Information", bandId=i, physicalBand=b.replace("B0", "B"))
    geo = _el(root, "n1:Geometric_Info")
    fp = _el(_el(_el(geo, "Product_Footprint"), "Product_Footprint"), "Global_Footprint")
    _el(fp, "EXT_POS_LIST", " ".join(f"{lat:.7f} {lon:.7f}" for lon, lat in footprint))
    crs = _el(geo, "Coordinate_Reference_System")
    _el(crs, "GEO_TABLES", "EPSG", version="1")
    _el(crs, "HORIZONTAL_CS_TYPE", "GEOGRAPHIC")
    qi = _el(root, "n1:Quality_Indicators_Info")
    _el(qi, "Cloud_Coverage_Assessment", f"{cloud:.6f}")
    ici = _el(qi, "Image_Content_QI")
    _el(ici, "NODATA_PIXEL_PERCENTAGE", f"{nodata_pct:.6f}")
    _el(ici, "CLOUDY_PIXEL_PERCENTAGE", f"{cloud:.6f}")
    return _to_text(root)


def _tile_xml(n: SafeNames, g: Grid, start: str) -> str:
    root = ET.Element("n1:Level-2A_Tile_ID", {
        "xmlns:n1": "https://psd-14.sentinel2.eo.esa.int/PSD/S2_PDI_Level-2A_Tile_Metadata.xsd"})
    gi = _el(root, "n1:General_Info")
    _el(gi, "TILE_ID", f"{n.sat}_OPER_MSI_L2A_TL_SYNT_{n.generated:%Y%m%dT%H%M%S}_A{n.absolute_orbit:06d}_T{n.tile}_N{n.baseline}",
        metadataLevel="Brief")
    _el(gi, "SENSING_TIME", start, metadataLevel="Standard")
    geo = _el(root, "n1:Geometric_Info")
    tg = _el(geo, "Tile_Geocoding", metadataLevel="Brief")
    zone = int(n.tile[:2])
    _el(tg, "HORIZONTAL_CS_NAME", f"WGS84 / UTM zone {zone}{'N' if g.epsg < 32700 else 'S'}")
    _el(tg, "HORIZONTAL_CS_CODE", f"EPSG:{g.epsg}")
    for res in (10, 20, 60):
        size = _el(tg, "Size", resolution=res)
        _el(size, "NROWS", g.height * 10 // res)
        _el(size, "NCOLS", g.width * 10 // res)
    for res in (10, 20, 60):
        gp = _el(tg, "Geoposition", resolution=res)
        _el(gp, "ULX", f"{g.x0:.0f}")
        _el(gp, "ULY", f"{g.y0:.0f}")
        _el(gp, "XDIM", res)
        _el(gp, "YDIM", -res)
    return _to_text(root)


def _manifest_xml(n: SafeNames) -> str:
    root = ET.Element("xfdu:XFDU", {"xmlns:xfdu": "urn:ccsds:schema:xfdu:1", "version": "esa/safe/sentinel/1.1/sentinel-2/msi/archive_l2a_user_product"})
    info = _el(root, "informationPackageMap")
    _el(info, "xfdu:contentUnit", unitType="Product_Level-2A", textInfo="SENTINEL-2 MSI Level-2A User Product",
        ID=n.product)
    return _to_text(root)


# ----------------------------------------------------------------------------- reading


def is_safe_source(location: str | os.PathLike) -> bool:
    """True for a ``.SAFE`` folder, a ``.zip`` file, or a folder whose entries are SAFE products."""
    p = Path(location)
    if p.suffix.lower() == ".zip" and p.is_file():
        return True
    if p.is_dir():
        if (p / "MTD_MSIL2A.xml").is_file() or p.suffix.upper() == ".SAFE":
            return True
        return any(_is_product_entry(c) for c in p.iterdir())
    return False


def _is_product_entry(p: Path) -> bool:
    return (p.is_dir() and p.suffix.upper() == ".SAFE") or (p.is_file() and p.suffix.lower() == ".zip")


def find_products(locations: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand folders holding products into the products (``.SAFE`` folders and ``.zip`` files)."""
    out: list[Path] = []
    for loc in locations:
        p = Path(loc).expanduser()
        if not p.exists():
            raise ReadError(f"SAFE product {str(p)!r} does not exist")
        if p.is_dir() and not ((p / "MTD_MSIL2A.xml").is_file() or p.suffix.upper() == ".SAFE"):
            found = sorted(c for c in p.iterdir() if _is_product_entry(c))
            if not found:
                raise ReadError(f"{str(p)!r} holds no .SAFE folder or .zip product")
            out.extend(found)
        else:
            out.append(p)
    return out


class _Product:
    """Access to the files of one product, in a folder or in a zip."""

    def __init__(self, path: Path) -> None:
        self.path = path.resolve()
        self.zip: zipfile.ZipFile | None = None
        if self.path.is_file():
            try:
                self.zip = zipfile.ZipFile(self.path)
            except (zipfile.BadZipFile, OSError) as e:
                raise ReadError(
                    f"{str(path)!r} is not a readable zip archive ({e}); the download is probably incomplete or "
                    "corrupt: download the product again"
                ) from None
            mtd = [n for n in self.zip.namelist() if n.endswith("MTD_MSIL2A.xml") and n.count("/") <= 1]
            if not mtd:
                raise ReadError(f"{str(path)!r} holds no MTD_MSIL2A.xml: not a Sentinel-2 L2A SAFE product")
            self.prefix = mtd[0][: -len("MTD_MSIL2A.xml")]
        else:
            if not (self.path / "MTD_MSIL2A.xml").is_file():
                raise ReadError(f"{str(path)!r} holds no MTD_MSIL2A.xml: not a Sentinel-2 L2A SAFE product")
            self.prefix = ""

    def read(self, rel: str) -> bytes:
        try:
            if self.zip is not None:
                return self.zip.read(self.prefix + rel)
            return (self.path / rel).read_bytes()
        except (KeyError, OSError, zipfile.BadZipFile) as e:
            raise ReadError(f"SAFE product {str(self.path)!r}: cannot read {rel} ({e})") from None

    def exists(self, rel: str) -> bool:
        if self.zip is not None:
            try:
                self.zip.getinfo(self.prefix + rel)
                return True
            except KeyError:
                return False
        return (self.path / rel).is_file()

    def href(self, rel: str, relative_to: Path | None) -> str:
        base = self.path if relative_to is None else Path(os.path.relpath(self.path, relative_to))
        if self.zip is not None:
            return f"/vsizip/{base.as_posix()}/{self.prefix}{rel}"
        return (base / rel).as_posix()

    def xml(self, rel: str) -> ET.Element:
        try:
            return _ns_strip(ET.fromstring(self.read(rel)))
        except ET.ParseError as e:
            raise ReadError(f"SAFE product {str(self.path)!r}: {rel} is not valid XML ({e})") from None

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()


def _text(root: ET.Element, path: str, product: Path, required: bool = True) -> str | None:
    el = root.find(path)
    if el is None or el.text is None or not el.text.strip():
        if required:
            raise ItemError(f"SAFE product {str(product)!r}: MTD is missing {path.split('/')[-1]}")
        return None
    return el.text.strip()


def index_safe(
    locations: str | os.PathLike | Iterable[str | os.PathLike],
    relative_to: str | os.PathLike | None = None,
) -> list[dict]:
    """STAC items of Sentinel-2 L2A SAFE products (folders or zips), one per product.

    Parameters
    ----------
    locations
        ``.SAFE`` folders, ``.zip`` files, or folders that hold them.
    relative_to
        Write hrefs relative to this folder (where the items JSON will live); default absolute.

    Returns
    -------
    list of dict
        STAC items (sorted by datetime) with the 10 bands and SCL at native resolution as JP2
        assets (``/vsizip/`` paths for zips), ``proj:code``/``proj:shape``/``proj:transform`` from
        MTD_TL.xml, ``raster:scale``/``raster:offset`` from the quantification value and
        BOA_ADD_OFFSET, datetime, platform, cloud cover, tile and processing baseline.

    Raises
    ------
    ReadError
        A product is missing, not a zip, or lacks its metadata or band files.
    """
    if isinstance(locations, (str, os.PathLike)):
        locations = [locations]
    rel = None if relative_to is None else Path(relative_to).expanduser().resolve()
    items = []
    for path in find_products(locations):
        prod = _Product(path)
        try:
            items.append(_item(prod, rel))
        finally:
            prod.close()
    items.sort(key=lambda it: (it["properties"]["datetime"], it["id"]))
    return items


def _item(prod: _Product, rel: Path | None) -> dict:
    from .s2tiles import parse_tile

    mtd = prod.xml("MTD_MSIL2A.xml")
    where = prod.path
    uri = _text(mtd, "General_Info/Product_Info/PRODUCT_URI", where)
    name = uri[:-5] if uri.upper().endswith(".SAFE") else uri
    m = PRODUCT_RE.match(name)
    if not m:
        raise ItemError(f"SAFE product {str(where)!r}: PRODUCT_URI {uri!r} is not an L2A product name")
    start = _text(mtd, "General_Info/Product_Info/PRODUCT_START_TIME", where)
    baseline = _text(mtd, "General_Info/Product_Info/PROCESSING_BASELINE", where)
    spacecraft = _text(mtd, "General_Info/Product_Info/Datatake/SPACECRAFT_NAME", where, required=False) or m["sat"]
    orbit = _text(mtd, "General_Info/Product_Info/Datatake/SENSING_ORBIT_NUMBER", where, required=False)
    cloud = _text(mtd, "Quality_Indicators_Info/Cloud_Coverage_Assessment", where, required=False)
    nodata = _text(mtd, "Quality_Indicators_Info/Image_Content_QI/NODATA_PIXEL_PERCENTAGE", where, required=False)
    quant = float(_text(mtd, "General_Info/Product_Image_Characteristics/QUANTIFICATION_VALUES_LIST/"
                             "BOA_QUANTIFICATION_VALUE", where, required=False) or 10000.0)
    offsets = {PHYSICAL_BANDS[int(e.get("band_id", -1))]: int(float(e.text))
               for e in mtd.findall("General_Info/Product_Image_Characteristics/BOA_ADD_OFFSET_VALUES_LIST/BOA_ADD_OFFSET")
               if e.text and 0 <= int(e.get("band_id", -1)) < len(PHYSICAL_BANDS)}
    files = [e.text.strip() for e in mtd.findall("General_Info/Product_Info/Product_Organisation/Granule_List/Granule/IMAGE_FILE")
             if e.text]
    if not files:  # some older products list IMAGE_ID instead
        files = [e.text.strip() for e in mtd.findall(".//IMAGE_ID") if e.text]
    tile = m["tile"]
    granule = next((f.split("/")[1] for f in files if f.startswith("GRANULE/")), None)
    if granule is None:
        raise ItemError(f"SAFE product {str(where)!r}: MTD_MSIL2A.xml lists no GRANULE image files")
    tl = prod.xml(f"GRANULE/{granule}/MTD_TL.xml")
    epsg_text = _text(tl, "Geometric_Info/Tile_Geocoding/HORIZONTAL_CS_CODE", where)
    epsg = int(epsg_text.split(":")[-1])
    sizes = {int(e.get("resolution")): (int(_text(e, "NROWS", where)), int(_text(e, "NCOLS", where)))
             for e in tl.findall("Geometric_Info/Tile_Geocoding/Size")}
    origins = {int(e.get("resolution")): (float(_text(e, "ULX", where)), float(_text(e, "ULY", where)))
               for e in tl.findall("Geometric_Info/Tile_Geocoding/Geoposition")}

    assets: dict[str, dict] = {}
    for band in (*BANDS, SCL):
        res = NATIVE_RESOLUTION[band]
        suffix = f"_{band}_{res}m"
        cands = [f for f in files if f.endswith(suffix) and f"/R{res}m/" in f]
        if not cands:
            raise ItemError(f"SAFE product {str(where)!r}: no {band} image at {res} m in MTD_MSIL2A.xml")
        rel_file = cands[0] + ".jp2"
        if not prod.exists(rel_file):
            raise ReadError(f"SAFE product {str(where)!r}: {rel_file} is listed but missing; the product is incomplete")
        if res not in sizes or res not in origins:
            raise ItemError(f"SAFE product {str(where)!r}: MTD_TL.xml has no {res} m Size/Geoposition")
        x0, y0 = origins[res]
        asset = {
            "href": prod.href(rel_file, rel),
            "type": _JP2_TYPE,
            "roles": ["data"],
            "gsd": res,
            "proj:code": f"EPSG:{epsg}",
            "proj:shape": list(sizes[res]),
            "proj:transform": [float(res), 0.0, x0, 0.0, -float(res), y0],
            "bands": [{"name": band}],
        }
        if band != SCL:
            asset["raster:scale"] = 1.0 / quant
            asset["raster:offset"] = offsets.get(band, 0) / quant
        assets[band] = asset

    footprint = _text(mtd, "Geometric_Info/Product_Footprint/Product_Footprint/Global_Footprint/EXT_POS_LIST",
                      where, required=False)
    if footprint:
        v = [float(x) for x in footprint.split()]
        ring = [[v[i + 1], v[i]] for i in range(0, len(v) - 1, 2)]
        if ring[0] != ring[-1]:
            ring.append(ring[0])
    else:
        ring = _ring_from_grid(epsg, *origins[10], *sizes[10])
    lons, lats = [p[0] for p in ring], [p[1] for p in ring]
    when = dt.datetime.fromisoformat(start.replace("Z", "+00:00")).astimezone(dt.timezone.utc).replace(tzinfo=None)
    props = {
        "datetime": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "platform": spacecraft.lower(),
        "constellation": "sentinel-2",
        "instruments": ["msi"],
        "eo:cloud_cover": None if cloud is None else float(cloud),
        "proj:code": f"EPSG:{epsg}",
        "grid:code": f"MGRS-{tile}",
        "s2:mgrs_tile": parse_tile(tile).name,
        "s2:processing_baseline": baseline,
        "s2:product_type": "S2MSI2A",
        "s2:product_uri": uri,
        "crop2seg:source": "SAFE",
    }
    if orbit is not None:
        props["sat:relative_orbit"] = int(orbit)
    if nodata is not None:
        props["s2:nodata_pixel_percentage"] = float(nodata)
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "id": name,
        "collection": "sentinel-2-l2a",
        "bbox": [min(lons), min(lats), max(lons), max(lats)],
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": props,
        "links": [],
        "assets": assets,
    }


def _ring_from_grid(epsg: int, x0: float, y0: float, h: int, w: int) -> list[list[float]]:
    import pyproj

    t = pyproj.Transformer.from_crs(epsg, 4326, always_xy=True)
    xs = [x0, x0 + 10 * w, x0 + 10 * w, x0, x0]
    ys = [y0, y0, y0 - 10 * h, y0 - 10 * h, y0]
    lon, lat = t.transform(xs, ys)
    return [[float(a), float(b)] for a, b in zip(lon, lat)]
