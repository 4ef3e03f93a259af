"""Image metadata carried through a .nnc file: read from the input, stored, written into the PNG.

Nothing is dropped silently: ``extract`` returns what it carries as ``Item`` s and, separately,
the names of the metadata entries it found but cannot carry, so that the caller can refuse the
input (unless the user asked for ``--strip``). Entries that only describe how the *file* was
stored (compression, interlacing, animation timing, JFIF version, ...) are neither: they are
ignored, because the pixels (and the caller's frame handling) already carry what they mean.

Call ``extract`` on an image after ``image.load()``: PNG text chunks after IDAT only appear then.

What is carried (``Item.kind``; ``key`` is "" except for text)
------------------------------------------------------------------
``icc``             the ICC profile, byte for byte (PNG iCCP, JPEG APP2, WebP ICCP, TIFF 34675).
``exif``            the EXIF block as a TIFF structure ("II*\\0" or "MM\\0*"), without the
                    "Exif\\0\\0" prefix that JPEG's APP1 (and Pillow's PNG reader) put in front.
                    PNG eXIf, JPEG APP1, WebP EXIF: byte for byte. TIFF has no EXIF block: its
                    content tags (ImageDescription, Make, Model, Orientation, Software,
                    DateTime, Artist, HostComputer, DocumentName, PageName, WhitePoint,
                    PrimaryChromaticities, Copyright and the Exif and GPS sub-IFDs) are
                    rewritten into one by Pillow's ``Image.Exif``. (Pillow 13 applies a TIFF's
                    Orientation to the pixels on ``load()`` and deletes the tag, so none is left
                    to carry: the pixels come upright.)
``xmp``             the XMP packet, UTF-8 (PNG iTXt "XML:com.adobe.xmp", JPEG APP1, WebP XMP,
                    TIFF 700).
``text``            a text entry: ``key`` is the PNG keyword (1-79 Latin-1 characters, no NUL),
                    "comment" for JPEG COM and GIF comment extensions; ``value`` the text in
                    UTF-8 (PNG tEXt/zTXt and JPEG/GIF comments are Latin-1 text, so their bytes
                    come back unchanged when written as tEXt).
``itxt``            a PNG iTXt entry with a language tag or translated keyword: ``value`` is
                    ``lang + b"\\0" + translated_keyword + b"\\0" + text``, all UTF-8. An iTXt
                    without either is an ordinary ``text`` item.
``dpi``             the physical pixel density exactly as the file stated it: 17 bytes,
                    ``unit`` (u8: 1 per inch, 2 per centimetre, 3 per metre) then x and y as
                    rationals ``>IIII`` (x_num, x_den, y_num, y_den; denominators non-zero).
                    JPEG JFIF density, TIFF XResolution/YResolution/ResolutionUnit, PNG pHYs and
                    BMP pixels per metre. A PNG stores whole pixels per metre, so a file's dpi
                    survives the PNG as ``pixels_per_metre(item)``; compare dpi items that way.
``gamma``           PNG gAMA: 4 bytes, big-endian u32, gamma times 100000.
``srgb``            PNG sRGB: 1 byte, the rendering intent 0-3.
``chromaticities``  PNG cHRM: 32 bytes, 8 big-endian u32 (white x, y, red x, y, green x, y,
                    blue x, y, times 100000).

Ignored as structural (per format, the ``image.info`` keys Pillow 13 produces)
------------------------------------------------------------------------------
all: ``transparency`` (alpha is coded with the pixels); animation: ``duration``, ``loop``,
``disposal``, ``blend``, ``default_image``, ``bbox``, ``timestamp``, ``background`` (the caller
handles frames); PNG ``interlace``; JPEG ``jfif``, ``jfif_version``, ``jfif_unit``,
``jfif_density`` (the density itself is carried as dpi), ``progressive``, ``progression``,
``adobe``, ``adobe_transform`` (colour transform of the JPEG coding), ``mpoffset``, and ``dpi``
without a JFIF density (Pillow fills it in from the EXIF, which is carried, or invents 72 x 72);
GIF ``version``, ``extension`` when it is the NETSCAPE2.0 loop block; TIFF/BMP ``compression``;
PFM ``scale``; TIFF tags that describe the raster (sizes, strips, tiles, samples, photometric,
planar configuration, predictor, colour map, YCbCr, page number, ...). A pixel aspect ratio
with square pixels (PNG pHYs unit 0, JPEG JFIF unit 0, TIFF ResolutionUnit 1 with x == y) says
nothing and is ignored too.

Reported as not carried
-----------------------
Anything else: a non-square pixel aspect ratio without a unit (Pillow's PNG writer cannot
write pHYs unit 0), JPEG ``photoshop`` (APP13, IPTC), ``flashpix`` (APP2 FPXR), ``mp`` (MPF:
further images, e.g. a gain map), application segments Pillow does not read (extended XMP,
APP12, ...) and any COM segment but the last (found through ``image.applist``); GIF application
extensions other than NETSCAPE2.0 (XMP, ICC); TIFF tags outside both lists (IPTC, Photoshop,
SubIFDs, private tags), named ``tiff:<number>``; an ICC profile Pillow could not reassemble, an
EXIF block that is not a TIFF structure, an XMP packet that is not UTF-8; a PNG sRGB chunk next
to an iCCP (Pillow's writer drops it); and every ``image.info`` key this module does not know.
Pillow itself skips some PNG chunks without a trace (tIME, bKGD, sBIT, cICP, ...):
``png_ignored_chunks(file_bytes)`` lists them for the caller to add. Pillow does not read BMP
ICC profiles or PNM comments at all; those cannot be detected here.

Byte layout of ``encode``
-------------------------
::

    u8      version (1)
    u8      flags: bit 0 = the body is deflated (zlib); other bits 0
    if deflated:  uvarint raw_length (<= MAX_METADATA_BYTES), then one zlib stream, nothing after
    else:         the body itself
    body:   uvarint count, then per item:
                u8 kind code (index in KINDS + 1), uvarint key length, key (UTF-8),
                uvarint value length, value

uvarint: unsigned LEB128, minimal (no redundant 0x80 groups), at most 9 bytes. The body is
deflated when that is smaller. Items are validated on both sides (see ``validate``): at most
one item of each non-text kind, text keys unique across ``text`` and ``itxt``.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction

from PIL import Image, PngImagePlugin

from .errors import FormatError, UnsupportedImageError

__all__ = [
    "KINDS",
    "MAX_METADATA_BYTES",
    "Item",
    "declared_bit_depth",
    "decode",
    "describe",
    "dots_per_inch",
    "encode",
    "extract",
    "pixels_per_metre",
    "png_ignored_chunks",
    "png_save_options",
    "require_carried",
    "strip",
    "validate",
]

VERSION = 1
FLAG_DEFLATED = 0x01
MAX_METADATA_BYTES = 64 * 1024 * 1024
KINDS: tuple[str, ...] = (
    "icc",
    "exif",
    "xmp",
    "dpi",
    "gamma",
    "chromaticities",
    "srgb",
    "text",
    "itxt",
)
TEXT_KINDS = frozenset({"text", "itxt"})
XMP_KEY = "XML:com.adobe.xmp"
COMMENT_KEY = "comment"

UNIT_INCH, UNIT_CM, UNIT_METRE = 1, 2, 3
_DPI = struct.Struct(">BIIII")
_U32_MAX = 2**32 - 1
_PNG_U31_MAX = 2**31 - 1
_EXIF_PREFIX = b"Exif\x00\x00"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TEXT_ZIP_THRESHOLD = 1024  # longer text is written compressed (zTXt / compressed iTXt)

# image.info keys that describe how the file was stored, not what it shows.
_STRUCTURAL = frozenset(
    {
        "transparency",
        "duration",
        "loop",
        "disposal",
        "blend",
        "default_image",
        "bbox",
        "timestamp",
        "background",
        "interlace",
        "jfif",
        "jfif_version",
        "jfif_unit",
        "jfif_density",
        "progressive",
        "progression",
        "adobe",
        "adobe_transform",
        "mpoffset",
        "version",
        "compression",
        "scale",
        "optimize",
        "bitmap",
    }
)
# TIFF tags about the raster itself.
_TIFF_STRUCTURAL = frozenset(
    {
        254, 255, 256, 257, 258, 259, 262, 263, 264, 265, 266, 273, 277, 278, 279, 280, 281,
        282, 283, 284, 286, 287, 290, 291, 292, 293, 296, 297, 317, 320, 321, 322, 323, 324,
        325, 338, 339, 340, 341, 347, 529, 530, 531, 532, 700, 32997, 32998, 34675,
    }
)  # fmt: skip
# TIFF tags with content carried in the ``exif`` item.
_TIFF_EXIF_TAGS = frozenset(
    {269, 270, 271, 272, 274, 285, 305, 306, 315, 316, 318, 319, 33432, 0x8769, 0x8825}
)
_TIFF_SUB_IFDS = (0x8769, 0x8825)
# PNG chunks Pillow reads into info (or that are structure); others are reported by
# png_ignored_chunks.
_PNG_KNOWN_CHUNKS = frozenset(
    {
        b"IHDR", b"PLTE", b"IDAT", b"IEND", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"iCCP",
        b"pHYs", b"tEXt", b"zTXt", b"iTXt", b"eXIf", b"acTL", b"fcTL", b"fdAT",
    }
)  # fmt: skip
# JPEG application segments Pillow turns into info entries (judged there), by prefix.
_JPEG_READ_SEGMENTS = (
    ("APP0", b"JFIF\x00"),
    ("APP0", b"JFXX\x00"),  # a thumbnail of the pixels: derived, not content
    ("APP1", b"Exif\x00\x00"),
    ("APP1", b"http://ns.adobe.com/xap/1.0/\x00"),
    ("APP2", b"ICC_PROFILE\x00"),
    ("APP2", b"FPXR\x00"),
    ("APP2", b"MPF\x00"),
    ("APP13", b"Photoshop 3.0\x00"),
    ("APP14", b"Adobe"),
)


@dataclass(frozen=True)
class Item:
    """One piece of metadata: ``kind`` in KINDS, ``key`` (text kinds only, else ""), raw ``value``
    in the encoding the module docstring gives for the kind."""

    kind: str
    key: str
    value: bytes


# --------------------------------------------------------------------------- validation


def validate(item: Item) -> None:
    """Raise ValueError unless ``item`` is well formed for its kind."""
    if not isinstance(item, Item):
        raise ValueError(f"not a metadata Item: {item!r}")
    kind, key, value = item.kind, item.key, item.value
    if kind not in KINDS:
        raise ValueError(f"unknown metadata kind {kind!r}")
    if not isinstance(key, str) or not isinstance(value, bytes):
        raise ValueError(f"metadata {kind}: key must be str and value bytes")
    if kind in TEXT_KINDS:
        _check_keyword(key)
        if kind == "text":
            _utf8(value, "text")
        else:
            parts = value.split(b"\x00", 2)
            if len(parts) != 3:
                raise ValueError("itxt: value must be lang NUL translated-keyword NUL text")
            for part in parts:
                _utf8(part, "itxt")
        return
    if key:
        raise ValueError(f"metadata {kind}: key must be empty")
    if kind == "icc":
        if not value:
            raise ValueError("icc: empty profile")
    elif kind == "exif":
        if len(value) < 8 or value[:4] not in _TIFF_MAGICS:
            raise ValueError("exif: not a TIFF structure (II*\\0 or MM\\0*)")
    elif kind == "xmp":
        if not value:
            raise ValueError("xmp: empty packet")
        _utf8(value, "xmp")
    elif kind == "dpi":
        if len(value) != _DPI.size:
            raise ValueError(f"dpi: {len(value)} bytes, expected {_DPI.size}")
        unit, _xn, xd, _yn, yd = _DPI.unpack(value)
        if unit not in (UNIT_INCH, UNIT_CM, UNIT_METRE):
            raise ValueError(f"dpi: unknown unit {unit}")
        if xd == 0 or yd == 0:
            raise ValueError("dpi: zero denominator")
        if max(_ppm_of(unit, value)) > _U32_MAX:
            raise ValueError("dpi: too large for a PNG pHYs chunk")
    elif kind == "gamma":
        if len(value) != 4 or not 0 < int.from_bytes(value, "big") <= _PNG_U31_MAX:
            raise ValueError("gamma: expected 4 bytes, 1 .. 2**31-1")
    elif kind == "srgb":
        if len(value) != 1 or value[0] > 3:
            raise ValueError("srgb: expected one byte 0..3")
    elif kind == "chromaticities":
        if len(value) != 32 or max(struct.unpack(">8I", value)) > _PNG_U31_MAX:
            raise ValueError("chromaticities: expected 8 u32 <= 2**31-1")


def _check_keyword(key: str) -> None:
    if not 1 <= len(key) <= 79 or "\x00" in key:
        raise ValueError(f"text: keyword must be 1-79 characters without NUL: {key!r}")
    try:
        key.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"text: keyword must be Latin-1: {key!r}") from None
    if key == XMP_KEY:
        raise ValueError(f"text: {XMP_KEY!r} is the xmp kind, not text")


def _utf8(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{what}: not valid UTF-8") from None


def _validate_all(items: Iterable[Item]) -> list[Item]:
    out = list(items)
    seen_kinds: set[str] = set()
    seen_keys: set[str] = set()
    for item in out:
        validate(item)
        if item.kind in TEXT_KINDS:
            if item.key in seen_keys:
                raise ValueError(f"text keyword {item.key!r} appears twice")
            seen_keys.add(item.key)
        else:
            if item.kind in seen_kinds:
                raise ValueError(f"metadata {item.kind} appears twice")
            seen_kinds.add(item.kind)
    return out


# --------------------------------------------------------------------------- dpi helpers


def _dpi_item(unit: int, x: Fraction, y: Fraction) -> Item:
    return Item("dpi", "", _DPI.pack(unit, x.numerator, x.denominator, y.numerator, y.denominator))


def _ppm_of(unit: int, value: bytes) -> tuple[int, int]:
    _, xn, xd, yn, yd = _DPI.unpack(value)
    scale = {UNIT_INCH: Fraction(10000, 254), UNIT_CM: Fraction(100), UNIT_METRE: Fraction(1)}
    return round(Fraction(xn, xd) * scale[unit]), round(Fraction(yn, yd) * scale[unit])


def pixels_per_metre(item: Item) -> tuple[int, int]:
    """The whole pixels per metre a PNG pHYs chunk stores for a dpi item (nearest)."""
    return _ppm_of(item.value[0], item.value)


def dots_per_inch(item: Item) -> tuple[float, float]:
    """A dpi item's density in dots per inch."""
    unit, xn, xd, yn, yd = _DPI.unpack(item.value)
    scale = {UNIT_INCH: 1.0, UNIT_CM: 2.54, UNIT_METRE: 0.0254}[unit]
    return xn / xd * scale, yn / yd * scale


def _fraction(value: object) -> Fraction | None:
    """A non-negative rational from a Pillow value (int, float, IFDRational); None if unusable."""
    try:
        num = getattr(value, "numerator", None)
        den = getattr(value, "denominator", None)
        if isinstance(num, int) and isinstance(den, int) and not isinstance(value, float):
            frac = Fraction(num, den)
        else:
            frac = Fraction(float(value)).limit_denominator(_U32_MAX)  # type: ignore[arg-type]
    except (TypeError, ValueError, ZeroDivisionError, OverflowError):
        return None
    if frac < 0 or frac.numerator > _U32_MAX or frac.denominator > _U32_MAX:
        return None
    return frac


# --------------------------------------------------------------------------- extract


def extract(image: Image.Image) -> tuple[list[Item], list[str]]:
    """The image's metadata as Items (in KINDS order, text in file order), and the names of the
    metadata entries found that cannot be carried. Reads ``image.info``, ``image.text`` (PNG),
    ``image.applist`` (JPEG) and the TIFF tags (``image.tag_v2``, ``image.getexif()``)."""
    info = dict(image.info)
    fmt = (image.format or "").upper()
    items: list[Item] = []
    lost: list[str] = []
    handled: set[str] = set()

    def take(key: str) -> object:
        handled.add(key)
        return info.get(key)

    # ICC profile.
    if "icc_profile" in info:
        icc = take("icc_profile")
        if isinstance(icc, bytes) and icc:
            items.append(Item("icc", "", icc))
        elif icc is not None and icc != b"":
            lost.append("icc_profile (unreadable)")
        elif icc is None and fmt == "JPEG":
            lost.append("icc_profile (incomplete APP2 segments)")

    # Text (PNG tEXt/zTXt/iTXt), found in image.text and mirrored in info.
    texts: dict[str, object] = {}
    if fmt == "PNG":
        texts = dict(getattr(image, "text", {}) or {})
    for key in texts:
        handled.add(key)

    # XMP.
    xmp = take("xmp") if "xmp" in info else None
    if xmp is None and XMP_KEY in texts:
        xmp = str(texts[XMP_KEY]).encode("utf-8")  # a tEXt/zTXt chunk with the XMP keyword
    texts.pop(XMP_KEY, None)
    handled.add(XMP_KEY)
    if isinstance(xmp, str):
        xmp = xmp.encode("utf-8")
    if isinstance(xmp, bytes) and xmp:
        try:
            xmp.decode("utf-8")
        except UnicodeDecodeError:
            lost.append("xmp (not UTF-8)")
        else:
            items.append(Item("xmp", "", xmp))
    elif xmp:
        lost.append("xmp (unreadable)")

    # EXIF.
    if fmt == "TIFF":
        exif_item, tiff_lost = _tiff_exif(image)
        if exif_item is not None:
            items.append(exif_item)
        lost.extend(tiff_lost)
    if "exif" in info:
        exif = take("exif")
        if isinstance(exif, bytes) and exif.startswith(_EXIF_PREFIX):
            exif = exif[len(_EXIF_PREFIX) :]
        if isinstance(exif, bytes) and len(exif) >= 8 and exif[:4] in _TIFF_MAGICS:
            if fmt != "TIFF":
                items.append(Item("exif", "", exif))
        elif "exif" not in texts:  # PNG: a tEXt "exif" chunk is carried as text
            lost.append("exif (not a TIFF structure)")

    # Physical density.
    dpi_item, dpi_lost = _density(image, info, fmt)
    handled.update({"dpi", "aspect", "resolution"})
    if dpi_item is not None:
        items.append(dpi_item)
    lost.extend(dpi_lost)

    # PNG colour chunks.
    if "gamma" in info:
        gamma = take("gamma")
        g = round(gamma * 100000) if isinstance(gamma, (int, float)) else -1
        if 0 < g <= _PNG_U31_MAX:
            items.append(Item("gamma", "", g.to_bytes(4, "big")))
        else:
            lost.append("gamma (out of range)")
    if "chromaticity" in info:
        chrm = take("chromaticity")
        try:
            vals = [round(v * 100000) for v in chrm]  # type: ignore[union-attr]
            if len(vals) != 8 or not all(0 <= v <= _PNG_U31_MAX for v in vals):
                raise ValueError
            items.append(Item("chromaticities", "", struct.pack(">8I", *vals)))
        except (TypeError, ValueError):
            lost.append("chromaticity (unreadable)")
    if "srgb" in info:
        srgb = take("srgb")
        if not isinstance(srgb, int) or not 0 <= srgb <= 3:
            lost.append("srgb (unknown rendering intent)")
        elif "icc_profile" in info and info["icc_profile"]:
            lost.append("srgb (next to an ICC profile; Pillow writes only one)")
        else:
            items.append(Item("srgb", "", bytes([srgb])))

    # Text entries.
    for key, value in texts.items():
        item = _text_item(key, value)
        if item is None:
            lost.append(f"text {_escape(key)} (unusable keyword)")
        else:
            items.append(item)
    if "comment" in info and "comment" not in texts:
        comment = take("comment")
        if isinstance(comment, str):
            comment = comment.encode("latin-1", "replace")
        if isinstance(comment, bytes):
            if comment:
                items.append(Item("text", COMMENT_KEY, comment.decode("latin-1").encode("utf-8")))
        else:
            lost.append("comment (unreadable)")

    # Format specifics.
    if fmt == "JPEG" or fmt == "MPO":
        lost.extend(_jpeg_segments_lost(image))
        for key in ("photoshop", "flashpix", "mp"):
            if key in info:
                handled.add(key)
                lost.append({"photoshop": "photoshop (APP13, IPTC)", "flashpix": "flashpix (APP2)",
                             "mp": "mp (MPF: further images)"}[key])  # fmt: skip
    if fmt == "GIF" and "extension" in info:
        handled.add("extension")
        ext = info["extension"]
        block = ext[0] if isinstance(ext, tuple) and ext else b""
        if not (isinstance(block, bytes) and block.startswith(b"NETSCAPE2.0")):
            name = block[:11] if isinstance(block, bytes) else b"?"
            lost.append(f"extension (GIF application extension {_escape(name.decode('latin-1'))})")

    for key in info:
        if key in handled or key in _STRUCTURAL:
            continue
        lost.append(_escape(str(key)))

    order = {kind: i for i, kind in enumerate(KINDS)}
    items.sort(key=lambda it: order[it.kind])  # stable: text stays in file order
    return _validate_all(items), lost


def _text_item(key: str, value: object) -> Item | None:
    try:
        _check_keyword(key)
    except ValueError:
        return None
    if isinstance(value, PngImagePlugin.iTXt) and (value.lang or value.tkey):
        lang = (value.lang or "").encode("utf-8")
        tkey = (value.tkey or "").encode("utf-8")
        if b"\x00" in lang or b"\x00" in tkey:
            return None
        return Item("itxt", key, lang + b"\x00" + tkey + b"\x00" + str(value).encode("utf-8"))
    return Item("text", key, str(value).encode("utf-8"))


def _density(image: Image.Image, info: dict, fmt: str) -> tuple[Item | None, list[str]]:
    """The dpi item and what density could not be carried (a pixel aspect ratio)."""
    if fmt == "JPEG" or fmt == "MPO":
        unit, dens = info.get("jfif_unit"), info.get("jfif_density")
        if not (isinstance(dens, tuple) and len(dens) == 2):
            return None, []  # no JFIF density; a "dpi" then comes from the EXIF or is made up
        x, y = Fraction(dens[0]), Fraction(dens[1])
        if unit in (1, 2):
            return _dpi_item(UNIT_INCH if unit == 1 else UNIT_CM, x, y), []
        if x == y:
            return None, []
        return None, ["jfif_density (pixel aspect ratio without unit)"]
    if fmt == "TIFF":
        tags = getattr(image, "tag_v2", None)
        if tags is None or 282 not in tags or 283 not in tags:
            return None, []
        x, y = _fraction(tags[282]), _fraction(tags[283])
        unit = tags.get(296, 2)
        if x is None or y is None or x.denominator == 0:
            return None, ["resolution (unreadable)"]
        if unit in (2, 3):
            return _dpi_item(UNIT_INCH if unit == 2 else UNIT_CM, x, y), []
        return (None, []) if x == y else (None, ["resolution (pixel aspect ratio without unit)"])
    lost: list[str] = []
    aspect = info.get("aspect")
    if isinstance(aspect, tuple) and len(aspect) == 2 and aspect[0] != aspect[1]:
        lost.append("aspect (pixel aspect ratio without unit)")
    dpi = info.get("dpi")
    if dpi is None:
        return None, lost
    try:
        # PNG: dpi = ppm * 0.0254; BMP: dpi = ppm / 39.3701. Both give back the file's integers.
        factor = 1 / 39.3701 if fmt == "BMP" else 0.0254
        ppm = [round(float(d) / factor) for d in dpi]
        if fmt not in ("PNG", "BMP"):
            raise ValueError  # another format's dpi: keep what Pillow reports, per inch
    except (TypeError, ValueError, OverflowError):
        try:
            fx, fy = (_fraction(d) for d in dpi)
        except (TypeError, ValueError):
            return None, [*lost, "dpi (unreadable)"]
        if fx is None or fy is None:
            return None, [*lost, "dpi (unreadable)"]
        return _dpi_item(UNIT_INCH, fx, fy), lost
    if len(ppm) != 2 or not all(0 <= p <= _U32_MAX for p in ppm):
        return None, [*lost, "dpi (out of range)"]
    return _dpi_item(UNIT_METRE, Fraction(ppm[0]), Fraction(ppm[1])), lost


def _tiff_exif(image: Image.Image) -> tuple[Item | None, list[str]]:
    """TIFF content tags rewritten as one EXIF block, and the tags that cannot be carried."""
    try:
        src = image.getexif()
    except Exception:  # noqa: BLE001 - Pillow raises many types on odd TIFFs
        return None, ["tiff tags (unreadable)"]
    out = Image.Exif()
    lost: list[str] = []
    for tag in sorted(src):
        if tag in _TIFF_EXIF_TAGS:
            try:
                out[tag] = src.get_ifd(tag) if tag in _TIFF_SUB_IFDS else src[tag]
            except Exception:  # noqa: BLE001
                lost.append(f"tiff:{tag} (unreadable)")
        elif tag not in _TIFF_STRUCTURAL:
            lost.append(f"tiff:{tag}")
    if not len(out):
        return None, lost
    data = out.tobytes()
    if data.startswith(_EXIF_PREFIX):
        data = data[len(_EXIF_PREFIX) :]
    return Item("exif", "", data), lost


def _jpeg_segments_lost(image: Image.Image) -> list[str]:
    """JPEG segments Pillow skips or keeps only the last of (judged from image.applist)."""
    lost: list[str] = []
    applist = getattr(image, "applist", None) or []
    comments = sum(1 for name, _ in applist if name == "COM")
    if comments > 1:
        lost.append(f"comment ({comments - 1} of {comments} COM segments; the last is carried)")
    for name, data in applist:
        if name == "COM":
            continue
        if not any(name == app and data.startswith(p) for app, p in _JPEG_READ_SEGMENTS):
            ident = data[:32].split(b"\x00", 1)[0].decode("latin-1")
            lost.append(f"{name} {_escape(ident)}".rstrip())
    return lost


def require_carried(lost: Sequence[str], strip: bool = False) -> None:
    """Raise UnsupportedImageError naming what would be dropped, unless ``strip`` or nothing."""
    if lost and not strip:
        raise UnsupportedImageError(
            "the image has metadata that cannot be carried: "
            + ", ".join(lost)
            + " (pass --strip to drop it)"
        )


def png_ignored_chunks(data: bytes) -> list[str]:
    """Ancillary chunk types in a PNG file that Pillow skips without a trace (tIME, bKGD, sBIT,
    cICP, ...), as "png:<type>", in file order, each once. [] for anything but a PNG."""
    if not data.startswith(_PNG_SIGNATURE):
        return []
    out: list[str] = []
    pos = len(_PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        ctype = data[pos + 4 : pos + 8]
        if ctype == b"IEND" or not ctype.isalpha():
            break
        name = "png:" + ctype.decode("ascii")
        if ctype not in _PNG_KNOWN_CHUNKS and name not in out:
            out.append(name)
        pos += 12 + length
    return out


# --------------------------------------------------------------------------- serialization


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_uvarint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    for i in range(9):
        if pos + i >= len(data):
            raise FormatError("metadata: truncated")
        byte = data[pos + i]
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            if byte == 0 and i > 0:
                raise FormatError("metadata: non-minimal length")
            return value, pos + i + 1
    raise FormatError("metadata: length too long")


def encode(items: Sequence[Item]) -> bytes:
    """Serialize items (layout in the module docstring). ValueError on invalid items."""
    checked = _validate_all(items)
    body = bytearray(_uvarint(len(checked)))
    for item in checked:
        key = item.key.encode("utf-8")
        body += bytes([KINDS.index(item.kind) + 1])
        body += _uvarint(len(key)) + key
        body += _uvarint(len(item.value)) + item.value
    if len(body) > MAX_METADATA_BYTES:
        raise ValueError(f"metadata: {len(body)} bytes, more than {MAX_METADATA_BYTES}")
    packed = _uvarint(len(body)) + zlib.compress(bytes(body), 9)
    if len(packed) < len(body):
        return bytes([VERSION, FLAG_DEFLATED]) + packed
    return bytes([VERSION, 0]) + bytes(body)


def decode(data: bytes) -> list[Item]:
    """Inverse of ``encode``. FormatError on anything malformed."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise FormatError("metadata: not bytes")
    data = bytes(data)
    if len(data) < 2:
        raise FormatError("metadata: truncated")
    if data[0] != VERSION:
        raise FormatError(f"metadata: unknown version {data[0]}")
    flags = data[1]
    if flags & ~FLAG_DEFLATED:
        raise FormatError(f"metadata: unknown flags {flags:#x}")
    if flags & FLAG_DEFLATED:
        raw_length, pos = _read_uvarint(data, 2)
        if raw_length > MAX_METADATA_BYTES:
            raise FormatError("metadata: inflated size over the limit")
        body = _inflate(data[pos:], raw_length)
    else:
        body = data[2:]
    count, pos = _read_uvarint(body, 0)
    if count > (len(body) - pos) // 3:  # every item takes at least 3 bytes
        raise FormatError("metadata: item count larger than the data")
    items: list[Item] = []
    for _ in range(count):
        if pos >= len(body):
            raise FormatError("metadata: truncated")
        code = body[pos]
        if not 1 <= code <= len(KINDS):
            raise FormatError(f"metadata: unknown kind code {code}")
        key_bytes, pos = _read_field(body, pos + 1)
        value, pos = _read_field(body, pos)
        try:
            key = key_bytes.decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError("metadata: key is not UTF-8") from None
        items.append(Item(KINDS[code - 1], key, value))
    if pos != len(body):
        raise FormatError("metadata: trailing bytes")
    try:
        return _validate_all(items)
    except ValueError as exc:
        raise FormatError(f"metadata: {exc}") from None


def _read_field(body: bytes, pos: int) -> tuple[bytes, int]:
    length, pos = _read_uvarint(body, pos)
    if length > len(body) - pos:
        raise FormatError("metadata: truncated")
    return body[pos : pos + length], pos + length


def _inflate(stream: bytes, raw_length: int) -> bytes:
    inflater = zlib.decompressobj()
    try:
        body = inflater.decompress(stream, raw_length + 1)
        if len(body) == raw_length and not inflater.eof:
            body += inflater.decompress(inflater.unconsumed_tail, 1)
    except zlib.error as exc:
        raise FormatError(f"metadata: bad deflate stream ({exc})") from None
    if len(body) != raw_length or not inflater.eof:
        raise FormatError("metadata: inflated size does not match")
    if inflater.unused_data or inflater.unconsumed_tail:
        raise FormatError("metadata: trailing bytes after the deflate stream")
    return body


# --------------------------------------------------------------------------- writing


def png_save_options(items: Sequence[Item]) -> dict:
    """Keyword arguments for ``Image.save(fp, format="PNG", **options)`` (also with
    ``save_all=True``) that write every item. ``icc_profile`` is always present (None when there
    is no ICC item) so that a profile left in ``image.info`` is not written by Pillow instead."""
    checked = _validate_all(items)
    options: dict = {"icc_profile": None}
    info = PngImagePlugin.PngInfo()
    for item in checked:
        if item.kind == "icc":
            options["icc_profile"] = item.value
        elif item.kind == "exif":
            options["exif"] = item.value
        elif item.kind == "xmp":
            info.add_itxt(XMP_KEY, item.value, zip=len(item.value) > _TEXT_ZIP_THRESHOLD)
        elif item.kind == "dpi":
            # Pillow writes int(dpi / 0.0254 + 0.5) pixels per metre: give it exactly ppm.
            options["dpi"] = tuple(p * 0.0254 for p in pixels_per_metre(item))
        elif item.kind == "gamma":
            info.add(b"gAMA", item.value)
        elif item.kind == "chromaticities":
            info.add(b"cHRM", item.value)
        elif item.kind == "srgb":
            info.add(b"sRGB", item.value)
        elif item.kind == "text":
            text = item.value.decode("utf-8")
            zipped = len(item.value) > _TEXT_ZIP_THRESHOLD
            try:
                latin = text.encode("latin-1")
            except UnicodeEncodeError:
                info.add_itxt(item.key, item.value, zip=zipped)
            else:
                info.add_text(item.key, latin.decode("latin-1"), zip=zipped)
        elif item.kind == "itxt":
            lang, tkey, text_bytes = item.value.split(b"\x00", 2)
            info.add_itxt(item.key, text_bytes, lang=lang, tkey=tkey,
                          zip=len(text_bytes) > _TEXT_ZIP_THRESHOLD)  # fmt: skip
    if info.chunks:
        options["pnginfo"] = info
    return options


def strip(items: Iterable[Item]) -> list[Item]:
    """What ``--strip`` keeps: nothing but the colour description (ICC, gamma, cHRM, sRGB)."""
    return [item for item in items if item.kind in ("icc", "gamma", "chromaticities", "srgb")]


# --------------------------------------------------------------------------- describe


def _escape(text: str) -> str:
    """``text`` with control and other non-printable characters as backslash escapes."""
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(ascii(ch)[1:-1])
    return "".join(out)


def describe(items: Sequence[Item]) -> list[str]:
    """One short line per item for ``nncompress info``; nothing from the file unescaped."""
    lines = []
    for item in items:
        n = len(item.value)
        if item.kind == "icc":
            name = _icc_description(item.value)
            lines.append(f"icc: {n} bytes" + (f" ({_escape(name)})" if name else ""))
        elif item.kind == "exif":
            orientation = _exif_orientation(item.value)
            extra = f", orientation {orientation}" if orientation is not None else ""
            lines.append(f"exif: {n} bytes{extra}")
        elif item.kind == "xmp":
            lines.append(f"xmp: {n} bytes")
        elif item.kind == "dpi" and n == _DPI.size:
            x, y = dots_per_inch(item)
            lines.append(f"dpi: {x:.6g} x {y:.6g}")
        elif item.kind == "gamma" and n == 4:
            lines.append(f"gamma: {int.from_bytes(item.value, 'big') / 100000:.5g}")
        elif item.kind == "srgb" and n == 1:
            intent = ("perceptual", "relative colorimetric", "saturation", "absolute colorimetric")
            lines.append(f"srgb: {intent[item.value[0]] if item.value[0] < 4 else item.value[0]}")
        elif item.kind == "chromaticities" and n == 32:
            vals = " ".join(f"{v / 100000:.5g}" for v in struct.unpack(">8I", item.value))
            lines.append(f"chromaticities: {vals}")
        elif item.kind in TEXT_KINDS:
            text = item.value.decode("utf-8", "replace")
            if item.kind == "itxt":
                lang, tkey, text = (text.split("\x00", 2) + ["", ""])[:3]
                head = f"text {_escape(item.key)} [{_escape(lang)}] {_escape(tkey)}".rstrip()
            else:
                head = f"text {_escape(item.key)}"
            preview = text if len(text) <= 40 else text[:39] + "…"
            lines.append(f"{head}: {n} bytes, {_escape(preview)!s}")
        else:
            lines.append(f"{_escape(item.kind)}: {n} bytes")
    return lines


def _icc_description(icc: bytes) -> str | None:
    """The profile's 'desc' text (ICC v2 textDescriptionType or v4 mluc), if easy to find."""
    try:
        count = int.from_bytes(icc[128:132], "big")
        for i in range(min(count, 100)):
            entry = 132 + 12 * i
            sig = icc[entry : entry + 4]
            off = int.from_bytes(icc[entry + 4 : entry + 8], "big")
            size = int.from_bytes(icc[entry + 8 : entry + 12], "big")
            if sig != b"desc" or off + size > len(icc) or size < 12:
                continue
            tag = icc[off : off + size]
            if tag[:4] == b"desc":
                length = int.from_bytes(tag[8:12], "big")
                return tag[12 : 12 + min(length, 200)].split(b"\x00", 1)[0].decode("latin-1")
            if tag[:4] == b"mluc" and int.from_bytes(tag[8:12], "big") >= 1:
                rec_len = int.from_bytes(tag[20:24], "big")
                rec_off = int.from_bytes(tag[24:28], "big")
                raw = tag[rec_off : rec_off + min(rec_len, 400)]
                return raw.decode("utf-16-be", "replace")
    except (IndexError, ValueError):
        return None
    return None


def _exif_orientation(exif: bytes) -> int | None:
    """Tag 0x0112 of IFD0, read directly from the TIFF structure; None if absent or odd."""
    if len(exif) < 8 or exif[:4] not in _TIFF_MAGICS:
        return None
    order = "little" if exif[:2] == b"II" else "big"
    ifd = int.from_bytes(exif[4:8], order)
    if ifd + 2 > len(exif):
        return None
    count = int.from_bytes(exif[ifd : ifd + 2], order)
    for i in range(count):
        entry = ifd + 2 + 12 * i
        if entry + 12 > len(exif):
            return None
        if int.from_bytes(exif[entry : entry + 2], order) == 0x0112:
            return int.from_bytes(exif[entry + 8 : entry + 10], order)
    return None


# --------------------------------------------------------------------------- bit depth


def declared_bit_depth(head: bytes) -> int | None:
    """Bits per sample the file's header declares (pass at least the first 64 KiB): PNG IHDR
    (8 for palette images), PNM maxval (1 for P1/P4, 16 above 255, 32 for PFM), TIFF
    BitsPerSample (largest sample; BigTIFF too), JPEG SOF precision, GIF/WebP/BMP 8. None when
    the format is not recognized or the header is cut or odd; never raises."""
    try:
        head = bytes(head)
        if head.startswith(_PNG_SIGNATURE):
            return _png_depth(head)
        if head[:2] in (b"P1", b"P2", b"P3", b"P4", b"P5", b"P6", b"P7", b"Pf", b"PF"):
            return _pnm_depth(head)
        if head[:4] in (*_TIFF_MAGICS, b"II+\x00", b"MM\x00+"):
            return _tiff_depth(head)
        if head.startswith(b"\xff\xd8"):
            return _jpeg_depth(head)
        if head[:6] in (b"GIF87a", b"GIF89a"):
            return 8
        if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            return 8
        if head[:2] == b"BM" and len(head) >= 18:
            return 8
    except (IndexError, ValueError, struct.error):
        return None
    return None


def _png_depth(head: bytes) -> int | None:
    if len(head) < 26 or head[12:16] != b"IHDR":
        return None
    depth, colour = head[24], head[25]
    allowed = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
    if depth not in allowed.get(colour, ()):
        return None
    return 8 if colour == 3 else depth


def _pnm_depth(head: bytes) -> int | None:
    magic = head[:2]
    if magic in (b"Pf", b"PF"):
        return 32
    if magic in (b"P1", b"P4"):
        return 1
    if magic == b"P7":
        for line in head[:4096].split(b"\n"):
            parts = line.split()
            if len(parts) == 2 and parts[0] == b"MAXVAL" and parts[1].isdigit():
                maxval = int(parts[1])
                return None if not 0 < maxval < 65536 else (16 if maxval > 255 else 8)
            if parts[:1] == [b"ENDHDR"]:
                return None
        return None
    tokens: list[bytes] = []
    pos, n = 2, min(len(head), 4096)
    while len(tokens) < 3 and pos < n:
        ch = head[pos : pos + 1]
        if ch == b"#":
            end = head.find(b"\n", pos)
            pos = n if end < 0 else end + 1
        elif ch.isspace():
            pos += 1
        else:
            start = pos
            while pos < n and not head[pos : pos + 1].isspace() and head[pos : pos + 1] != b"#":
                pos += 1
            tokens.append(head[start:pos])
    if len(tokens) < 3 or not tokens[2].isdigit() or pos >= n:
        return None
    maxval = int(tokens[2])
    if not 0 < maxval < 65536:
        return None
    return 16 if maxval > 255 else 8


def _tiff_depth(head: bytes) -> int | None:
    order = "<" if head[:2] == b"II" else ">"
    big = head[2:4] in (b"+\x00", b"\x00+")
    if big:
        (ifd,) = struct.unpack_from(order + "Q", head, 8)
        (count,) = struct.unpack_from(order + "Q", head, ifd)
        entries, size, inline, start = count, 20, 8, ifd + 8
    else:
        (ifd,) = struct.unpack_from(order + "I", head, 4)
        (count,) = struct.unpack_from(order + "H", head, ifd)
        entries, size, inline, start = count, 12, 4, ifd + 2
    for i in range(min(entries, 4096)):
        entry = start + size * i
        tag, typ = struct.unpack_from(order + "HH", head, entry)
        if tag != 258:
            continue
        if big:
            (n,) = struct.unpack_from(order + "Q", head, entry + 4)
            value_at = entry + 12
        else:
            (n,) = struct.unpack_from(order + "I", head, entry + 4)
            value_at = entry + 8
        width = {1: 1, 3: 2, 4: 4}.get(typ)
        if width is None or not 1 <= n <= 64:
            return None
        if n * width > inline:
            fmt = order + ("Q" if big else "I")
            (value_at,) = struct.unpack_from(fmt, head, value_at)
        code = {1: "B", 3: "H", 4: "I"}[typ]
        values = struct.unpack_from(order + code * n, head, value_at)
        depth = max(values)
        return depth if 1 <= depth <= 64 else None
    return 1 if entries and start + size * entries <= len(head) else None  # TIFF default


def _jpeg_depth(head: bytes) -> int | None:
    pos = 2
    while pos + 4 <= len(head):
        if head[pos] != 0xFF:
            return None
        marker = head[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):
            pos += 2
            continue
        if marker in (0xD9, 0xDA):
            return None
        length = int.from_bytes(head[pos + 2 : pos + 4], "big")
        if length < 2:
            return None
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if pos + 4 >= len(head):
                return None
            precision = head[pos + 4]
            return precision if 2 <= precision <= 16 else None
        pos += 2 + length
    return None
