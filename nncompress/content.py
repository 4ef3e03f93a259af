"""What an image file holds, exactly: every frame's samples at their own bit depth, the
alpha channel, frame timing and metadata — read from a file (or a Pillow image, an array),
and written back as PNG.

``read_content`` stores everything it can carry and refuses (UnsupportedImageError, one
line, before any coding) what it cannot: CMYK, float or 32-bit samples, frames of different
sizes, 12-bit JPEGs, metadata it does not know (unless ``strip``). Bit depth comes from the
file's own header, not from what Pillow hands back (Pillow reads a 16-bit RGB PNG as 8-bit
RGB): 16-bit PNGs are read with imagecodecs (libpng), 16-bit greyscale through Pillow's
I;16 modes. Palette images keep their indices and palette (mode "P", the transparency folded
into RGBA palette entries), animated ones too where one palette of at most 256 entries holds
every frame's colours (see ``_palette_frames``); bilevel images keep mode "1".
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageSequence

from . import metadata as meta
from .errors import UnsupportedImageError
from .images import DEFAULT_MAX_PIXELS, check_pixel_count, open_image

CHANNELS = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}
MODES = {c: m for m, c in CHANNELS.items()}
#: Still palette images keep their indices and palette ("P"), bilevel ones their mode
#: ("1", samples 0 or 255).
CHANNELS.update({"P": 1, "1": 1})
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8\xff"
#: Pillow modes read as they are (8-bit), and those converted on the way in.
_DIRECT = ("L", "LA", "RGB", "RGBA")
_CONVERTED = {"1": "L", "PA": "RGBA"}
_SIXTEEN = ("I;16", "I;16L", "I;16B", "I;16N")


@dataclass(frozen=True)
class Content:
    """An image exactly: ``frames`` (H, W, C) arrays of ``bit_depth`` (uint8 / uint16)
    in ``mode`` (C = 1..4: L, LA, RGB, RGBA), frame durations (ms; () for a still image),
    the loop count (as Pillow reports it), metadata items, and for a JPEG input the file
    itself (``jpeg``)."""

    mode: str
    bit_depth: int
    frames: tuple[np.ndarray, ...]
    durations: tuple[int, ...] = ()
    loop: int = 0
    metadata: tuple[meta.Item, ...] = ()
    jpeg: bytes | None = field(default=None, repr=False)
    source_format: str | None = None
    source_bytes: int | None = None
    #: Metadata of a JPEG input that only the JPEG file itself carries (see files.py).
    uncarried: tuple[str, ...] = ()
    #: Mode "P": the palette, 4 bytes (R, G, B, A) per entry.
    palette: bytes | None = None

    @property
    def height(self) -> int:
        return int(self.frames[0].shape[0])

    @property
    def width(self) -> int:
        return int(self.frames[0].shape[1])

    @property
    def channels(self) -> int:
        return CHANNELS[self.mode]

    @property
    def samples(self) -> int:
        """Samples of all frames (the denominator of bits per subpixel)."""
        return self.width * self.height * self.channels * len(self.frames)

    @property
    def has_alpha(self) -> bool:
        return self.mode in ("LA", "RGBA")

    @property
    def colour_channels(self) -> int:
        """The channels but alpha: the planes a model part would code."""
        return self.channels - (1 if self.has_alpha else 0)

    def frame_bytes(self) -> list[bytes]:
        """Each frame's samples as the content CRC reads them (16-bit little-endian)."""
        dt = np.dtype("<u2") if self.bit_depth == 16 else np.uint8
        return [np.ascontiguousarray(f, dtype=dt).tobytes() for f in self.frames]

    def stripped(self) -> Content:
        """Without metadata (what --strip keeps: the colour description) or the JPEG."""
        return Content(
            self.mode, self.bit_depth, self.frames, self.durations, self.loop,
            tuple(meta.strip(self.metadata)), None, self.source_format, self.source_bytes,
            palette=self.palette,
        )



# --- reading -------------------------------------------------------------------------------


def read_content(
    obj: object,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    strip: bool = False,
    option: str = "max_pixels",
) -> Content:
    """Content of a path (str / os.PathLike), the bytes of an image file, a Pillow image
    or a numpy array (HxW or HxWxC, C in 1..4, uint8 or uint16). TypeError for other types;
    UnsupportedImageError for what cannot be stored exactly (see the module docstring).
    ``strip``: drop metadata instead of carrying it (and instead of refusing what cannot
    be carried)."""
    from .container import MAX_PIXELS

    limit = MAX_PIXELS if max_pixels is None else max_pixels
    if isinstance(obj, np.ndarray):
        return _from_array(obj, limit)
    if isinstance(obj, Image.Image):
        check_pixel_count(obj.width, obj.height, limit)
        return _from_pil(obj, None, strip)
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return _from_file(bytes(obj), limit, strip, option)
    if isinstance(obj, (str, os.PathLike)):
        try:
            data = Path(obj).read_bytes()
        except OSError as e:
            raise UnsupportedImageError(f"cannot read {obj}: {e.strerror or e}") from None
        return _from_file(data, limit, strip, option)
    raise TypeError(
        "expected an image: a PIL.Image.Image, a numpy array (HxW, HxWx3 or HxWx4, uint8 or "
        "uint16), a path (str or pathlib.Path) or the bytes of an image file, not "
        f"{type(obj).__module__}.{type(obj).__qualname__}"
    )


def _from_array(a: np.ndarray, limit: int) -> Content:
    shape = "x".join(map(str, a.shape)) or "()"
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in MODES):
        raise UnsupportedImageError(
            f"array of shape {shape} is not an image: expected HxW (greyscale), HxWx3 (RGB) "
            "or HxWx4 (RGBA), height first"
        )
    if a.dtype not in (np.uint8, np.uint16):
        raise UnsupportedImageError(
            f"array of dtype {a.dtype} is not supported: expected uint8 or uint16"
        )
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise UnsupportedImageError("image has no pixels")
    check_pixel_count(a.shape[1], a.shape[0], limit)
    hwc = np.array(a if a.ndim == 3 else a[:, :, None], order="C")  # fresh strides
    return Content(MODES[hwc.shape[2]], 16 if a.dtype == np.uint16 else 8, (hwc,))


def _from_file(data: bytes, limit: int, strip: bool, option: str = "max_pixels") -> Content:
    depth = meta.declared_bit_depth(data[: 1 << 16])
    if depth is not None and depth > 8 and data.startswith(_JPEG_SIGNATURE):
        raise UnsupportedImageError(f"{depth}-bit JPEG is not supported")
    image = open_image(data, limit, option)
    # The JPEG file itself may be kept (all its segments inside): not when stripping.
    # What a JPEG holds beyond the metadata we carry is refused only if it is not kept.
    jpeg = data if image.format == "JPEG" and not strip else None
    lost = meta.png_ignored_chunks(data)
    if depth == 16 and data.startswith(_PNG_SIGNATURE) and image.mode not in _SIXTEEN:
        content = _png16(data, image, strip, lost)
    else:
        content = _from_pil(image, depth, strip, lost, defer=jpeg is not None)
    return Content(
        content.mode, content.bit_depth, content.frames, content.durations, content.loop,
        content.metadata, jpeg, image.format, len(data), content.uncarried, content.palette,
    )


def _metadata(
    image: Image.Image, strip: bool, lost: list[str] | None = None, defer: bool = False
) -> tuple[tuple[meta.Item, ...], tuple[str, ...]]:
    """The items carried, and what cannot be (refused here unless ``defer``)."""
    items, unknown = meta.extract(image)
    unknown = list(unknown) + list(lost or ())
    if strip:
        return tuple(meta.strip(items)), ()
    if not defer:
        meta.require_carried(unknown)
    return tuple(items), tuple(unknown)


def _png16(data: bytes, image: Image.Image, strip: bool, lost: list[str]) -> Content:
    """A 16-bit PNG, read by libpng (imagecodecs) at its full depth."""
    import imagecodecs

    if getattr(image, "n_frames", 1) > 1:
        raise UnsupportedImageError("16-bit animated PNG is not supported")
    try:
        a = imagecodecs.png_decode(data)
    except Exception as e:  # noqa: BLE001 — the library's own exception types
        raise UnsupportedImageError(f"not a readable PNG ({e})") from None
    if a.dtype != np.uint16:
        raise UnsupportedImageError("PNG declares 16 bits but does not decode to them")
    hwc = np.ascontiguousarray(a if a.ndim == 3 else a[:, :, None])
    if hwc.shape[2] not in MODES:
        raise UnsupportedImageError(f"PNG with {hwc.shape[2]} channels is not supported")
    if "transparency" in image.info:
        raise UnsupportedImageError(
            "16-bit PNG with a tRNS transparent colour is not supported (convert it to RGBA)"
        )
    items, _ = _metadata(image, strip, lost)
    return Content(MODES[hwc.shape[2]], 16, (hwc,), metadata=items)


def _frame_mode(image: Image.Image) -> str:
    mode = image.mode
    if mode == "P":
        return "RGBA" if "transparency" in image.info or image.palette.mode == "RGBA" else "RGB"
    if mode in ("L", "RGB") and "transparency" in image.info:
        return mode + "A" if mode == "L" else "RGBA"
    if mode in _CONVERTED:
        return _CONVERTED[mode]
    if mode in _DIRECT:
        return mode
    if mode in _SIXTEEN:
        return "L;16"
    raise UnsupportedImageError(
        f"unsupported image mode {mode!r}: nncompress stores L, LA, RGB and RGBA at 8 or 16 "
        "bits, palette and bilevel images as RGB / L"
        + (" (converting CMYK to RGB would change the pixels)" if mode == "CMYK" else "")
    )


def _samples(image: Image.Image, mode: str) -> tuple[np.ndarray, int]:
    if mode == "L;16":
        a = np.asarray(image.convert("I;16") if image.mode != "I;16" else image)
        return np.array(a.astype(np.uint16)[:, :, None], order="C"), 16
    im = image if image.mode == mode else image.convert(mode)
    a = np.asarray(im, dtype=np.uint8)
    return np.ascontiguousarray(a if a.ndim == 3 else a[:, :, None]), 8


def _from_pil(
    image: Image.Image,
    declared: int | None,
    strip: bool,
    lost: list[str] | None = None,
    defer: bool = False,
) -> Content:
    if image.width < 1 or image.height < 1:
        raise UnsupportedImageError("image has no pixels")
    n = getattr(image, "n_frames", 1)
    if n == 1 and image.mode in ("P", "1"):
        items, uncarried = _metadata(image, strip, lost, defer)
        if image.mode == "1":
            a = np.asarray(image.convert("L"), dtype=np.uint8)[:, :, None]
            return Content("1", 8, (np.array(a, order="C"),), metadata=items,
                           uncarried=uncarried)  # fmt: skip
        idx, palette = _palette(image)
        return Content("P", 8, (idx,), metadata=items, uncarried=uncarried, palette=palette)
    if n == 1:
        mode = _frame_mode(image)
        hwc, depth = _samples(image, mode)
        if declared == 16 and depth != 16:
            raise UnsupportedImageError(
                "the file declares 16 bits per sample but reads as 8 (not supported)"
            )
        items, uncarried = _metadata(image, strip, lost, defer)
        return Content(
            MODES[hwc.shape[2]], depth, (hwc,), metadata=items, uncarried=uncarried
        )
    return _animation(image, n, strip, lost)


def _palette(image: Image.Image) -> tuple[np.ndarray, bytes]:
    """A P image's indices (H, W, 1) and its palette as RGBA entries (the transparency
    entry or tRNS alphas folded in)."""
    idx = np.array(np.asarray(image, dtype=np.uint8)[:, :, None], order="C")
    if image.palette is not None and image.palette.mode == "RGBA":
        rgba = np.frombuffer(bytes(image.getpalette("RGBA") or []), np.uint8).reshape(-1, 4)
    else:
        rgb = np.array(image.getpalette("RGB") or [], dtype=np.uint8).reshape(-1, 3)
        rgba = np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], axis=1)
        t = image.info.get("transparency")
        if isinstance(t, int) and 0 <= t < len(rgba):
            rgba[t, 3] = 0
        elif isinstance(t, (bytes, bytearray)):
            n = min(len(t), len(rgba))
            rgba[:n, 3] = np.frombuffer(bytes(t[:n]), np.uint8)
    if not 1 <= len(rgba) <= 256 or int(idx.max()) >= len(rgba):
        raise UnsupportedImageError("palette image whose indices exceed its palette")
    return idx, np.ascontiguousarray(rgba).tobytes()


def _animation(image: Image.Image, n: int, strip: bool, lost: list[str] | None) -> Content:
    """Every frame as Pillow composes it (full frames). A palette animation (Pillow's first
    frame is "P") stays "P" where ``_palette_frames`` finds one palette for all frames;
    otherwise every frame in one mode: RGBA if any frame has transparency, else the widest
    of the frames' modes."""
    from .container.file import MAX_FRAMES

    if n > MAX_FRAMES:
        raise UnsupportedImageError(f"{n} frames: a .nnc file holds at most {MAX_FRAMES}")
    check_pixel_count(image.width, image.height * n, DEFAULT_MAX_PIXELS * 4, "frames")
    metadata, _ = _metadata(image, strip, lost)
    frames, modes, durations = [], [], []
    indexed = _PaletteFrames() if image.mode == "P" else None
    for frame in ImageSequence.Iterator(image):
        mode = _frame_mode(frame)
        if mode == "L;16":
            raise UnsupportedImageError("16-bit animations are not supported")
        if frame.size != image.size:
            raise UnsupportedImageError("frames of different sizes are not supported")
        modes.append(mode)
        frames.append(frame.copy())
        durations.append(int(round(frame.info.get("duration", 0) or 0)))
        if indexed is not None and not indexed.add(frame):
            indexed = None
    loop = image.info.get("loop")
    timing = tuple(max(0, d) for d in durations), int(loop) if isinstance(loop, int) else 1
    if indexed is not None:
        return Content("P", 8, tuple(indexed.frames), *timing, metadata,
                       palette=indexed.palette())  # fmt: skip
    alpha = any(m.endswith("A") for m in modes)
    colour = any(m.startswith("RGB") for m in modes)
    mode = ("RGB" if colour else "L") + ("A" if alpha else "")
    arrays = [_samples(f, mode)[0] for f in frames]
    return Content(mode, 8, tuple(arrays), *timing, metadata)


class _PaletteFrames:
    """The frames of a palette animation as index planes into one palette.

    The palette is the first frame's (its transparency folded into RGBA entries); a frame
    that Pillow gives as "P" with that same palette keeps its indices, any other (a GIF's
    later frames come composed as RGB / RGBA) is mapped colour by colour (RGBA, as
    ``convert("RGBA")`` shows it) to the first entry of that colour, and colours the palette
    lacks are appended to it. ``add`` says False when that cannot be exact: more than
    MAX_PALETTE colours in all, or a "P" frame whose indices lie beyond its palette; the
    caller then stores RGB(A) frames instead."""

    def __init__(self) -> None:
        self.frames: list[np.ndarray] = []
        self.entries: list[int] = []  # RGBA entries, as native uint32 values
        self.first: dict[int, int] = {}  # entry value -> its first index
        self.base: bytes | None = None

    def add(self, frame: Image.Image) -> bool:
        from .container.file import MAX_PALETTE

        rgba = np.ascontiguousarray(np.asarray(frame.convert("RGBA"), dtype=np.uint8))
        if frame.mode == "P":
            try:
                idx, palette = _palette(frame)
            except UnsupportedImageError:
                return False
            table = np.frombuffer(palette, np.uint8).reshape(-1, 4)
            if not np.array_equal(table[idx[:, :, 0]], rgba):
                return False  # Pillow shows these pixels otherwise
            if self.base is None:
                self.base = palette
                self.entries = np.frombuffer(palette, np.uint32).tolist()
                for i, e in enumerate(self.entries):
                    self.first.setdefault(e, i)
            if palette == self.base:
                self.frames.append(idx)
                return True
        if self.base is None:
            return False
        values, inverse = np.unique(rgba.view(np.uint32).reshape(-1), return_inverse=True)
        if len(values) > MAX_PALETTE:
            return False
        lut = np.empty(len(values), np.uint8)
        for j, v in enumerate(values.tolist()):
            i = self.first.get(v)
            if i is None:
                if len(self.entries) >= MAX_PALETTE:
                    return False
                i = self.first[v] = len(self.entries)
                self.entries.append(v)
            lut[j] = i
        self.frames.append(np.ascontiguousarray(lut[inverse].reshape(rgba.shape[0], -1, 1)))
        return True

    def palette(self) -> bytes:
        return np.array(self.entries, np.uint32).view(np.uint8).tobytes()


# --- writing ---------------------------------------------------------------------------


def to_png(content: Content, level: int | None = None) -> bytes:
    """The content as one PNG file (an animated PNG for several frames), its metadata
    written into the PNG's chunks (nncompress.metadata.png_save_options). ``level``:
    the zlib level (default: Pillow's, 6; 16-bit: 9)."""
    options = meta.png_save_options(content.metadata) if content.metadata else {}
    if content.bit_depth == 16:
        return _png16_out(content, options, 9 if level is None else level)
    if level is not None:
        options = {**options, "compress_level": level}
    images = [_pil_frame(f, content.mode, content.bit_depth) for f in content.frames]
    buf = io.BytesIO()
    if content.mode == "P":
        # Every frame carries the palette and its alphas: the APNG writer compares frames
        # as RGBA (an APNG has one PLTE and tRNS, the first frame's).
        for k, im in enumerate(images):
            images[k], alpha = _with_palette(im, content.palette)
            if alpha is not None:
                images[k].info["transparency"] = alpha
        if alpha is not None:
            options = {**options, "transparency": alpha}
    if len(images) == 1:
        images[0].save(buf, format="PNG", **options)
    else:
        images[0].save(
            buf, format="PNG", save_all=True, append_images=images[1:],
            duration=list(content.durations), loop=content.loop,
            disposal=_disposals(content.frames), blend=0, default_image=False, **options,
        )
    return buf.getvalue()


def _disposals(frames: list[np.ndarray]) -> list[int]:
    """APNG dispose ops, 0 (none) but where a frame equals the one before it: there 2
    (previous) and 0 alternate, because Pillow's writer merges a frame equal to its
    predecessor (summing their durations) only when both have the same dispose op, and an
    animation must keep every frame. The writer codes each frame's rectangle against the
    canvas that op leaves, so what a decoder shows is every frame exactly. (Not 1,
    background: Pillow 13 cannot apply it to palette frames.)"""
    out = [0]
    for a, b in zip(frames, frames[1:]):
        out.append(2 if np.array_equal(a, b) and out[-1] == 0 else 0)
    return out


def _with_palette(im: Image.Image, palette: bytes) -> tuple[Image.Image, bytes | None]:
    """The P image with its palette, and the tRNS alphas if any entry is not opaque."""
    rgba = np.frombuffer(palette, np.uint8).reshape(-1, 4)
    im.putpalette(rgba[:, :3].tobytes(), "RGB")
    alpha = rgba[:, 3]
    if (alpha == 255).all():
        return im, None
    last = int(np.flatnonzero(alpha != 255)[-1]) + 1
    return im, alpha[:last].tobytes()


def _pil_frame(a: np.ndarray, mode: str, depth: int) -> Image.Image:
    if mode == "P":
        return Image.frombytes("P", (a.shape[1], a.shape[0]), a[:, :, 0].tobytes())
    if mode == "1":
        return Image.fromarray(a[:, :, 0]).convert("1", dither=Image.Dither.NONE)
    if depth == 16:
        return Image.fromarray(np.ascontiguousarray(a[:, :, 0], dtype=np.uint16))  # I;16
    return Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a, mode=mode)


def _png16_out(content: Content, options: dict, level: int) -> bytes:
    """16-bit PNG: libpng writes the pixels (Pillow has no 16-bit colour mode); the
    metadata chunks come from a 1x1 PNG that Pillow writes with the same options."""
    import imagecodecs

    if len(content.frames) != 1:
        raise UnsupportedImageError("16-bit animations are not supported")
    png = bytes(imagecodecs.png_encode(np.array(content.frames[0], order="C"), level=level))
    if not options:
        return png
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG", **options)
    extra = [c for c in _chunks(buf.getvalue()) if c[4:8] not in (b"IHDR", b"IDAT", b"IEND")]
    chunks = _chunks(png)
    return _PNG_SIGNATURE + chunks[0] + b"".join(extra) + b"".join(chunks[1:])


def _chunks(png: bytes) -> list[bytes]:
    """The chunks of a PNG written here (length, type, data, CRC each)."""
    out, at = [], len(_PNG_SIGNATURE)
    while at < len(png):
        n = int.from_bytes(png[at : at + 4], "big")
        out.append(png[at : at + 12 + n])
        at += 12 + n
    return out


def to_pil(content: Content) -> Image.Image:
    """The first and only frame as a Pillow image (16-bit greyscale as I;16), with its
    ICC profile, EXIF and dpi in ``info``. UnsupportedImageError for what a Pillow image
    cannot hold (animations, 16-bit colour): use the Content or to_png()."""
    if len(content.frames) > 1:
        raise UnsupportedImageError(
            f"the image has {len(content.frames)} frames; a Pillow image holds one "
            "(use api.decompress_content, or to_png for an animated PNG)"
        )
    if content.bit_depth == 16 and content.mode != "L":
        raise UnsupportedImageError(
            f"16-bit {content.mode} does not fit a Pillow image (use api.decompress_content)"
        )
    im = _pil_frame(content.frames[0], content.mode, content.bit_depth)
    if content.mode == "P":
        im, alpha = _with_palette(im, content.palette)
        if alpha is not None:
            im.info["transparency"] = alpha
    for item in content.metadata:
        if item.kind == "icc":
            im.info["icc_profile"] = item.value
        elif item.kind == "exif":
            im.info["exif"] = item.value
    return im
