"""Images in and out: Pillow images <-> planes (C, H, W) uint8, with the mode rules.

Supported: 8-bit L and RGB; LA and RGBA whose alpha is fully opaque (the alpha is not coded
and comes back as 255); palette images through RGB (or RGBA, same rule); bilevel ("1")
through L. Everything else is refused with UnsupportedImageError.

The API's inputs go through ``as_image``: a Pillow image, a uint8 numpy array (HxW, HxWx1,
HxWx2, HxWx3 or HxWx4) or a path; anything else is a TypeError.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import UnsupportedImageError

OPAQUE = 255
# Most pixels an image (or a .nnc header) may have unless the caller raises the limit
# (--max-pixels, max_pixels=): Pillow's default Image.MAX_IMAGE_PIXELS, about 89.5 million
# (a 0.25 GiB RGBA image). The format itself stops at container.MAX_PIXELS (2**28).
DEFAULT_MAX_PIXELS = 1024 * 1024 * 1024 // 4 // 3
# numpy arrays: the channel count of an HxWxC array -> its Pillow mode.
ARRAY_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
# File names taken as images where a folder is given (train, encode, score).
IMAGE_SUFFIXES = frozenset(
    {".png", ".webp", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".pnm"}
)
# Modes we store as is, and the planes the model codes for each.
CODED_CHANNELS = {"L": 1, "LA": 1, "RGB": 3, "RGBA": 3}
# Modes converted on the way in (the decoded image comes back in the target mode).
CONVERTED = {"1": "L", "P": "RGB", "PA": "RGBA"}


@dataclass(frozen=True)
class Picture:
    """planes: (C, H, W) uint8 — the coded channels (no alpha); mode: the image's mode."""

    planes: np.ndarray
    mode: str

    @property
    def height(self) -> int:
        return int(self.planes.shape[1])

    @property
    def width(self) -> int:
        return int(self.planes.shape[2])

    @property
    def channels(self) -> int:
        return int(self.planes.shape[0])

    @property
    def subpixels(self) -> int:
        return int(self.planes.size)

    def to_pil(self) -> Image.Image:
        hwc = np.ascontiguousarray(self.planes.transpose(1, 2, 0))
        if self.mode in ("LA", "RGBA"):
            alpha = np.full(hwc.shape[:2] + (1,), OPAQUE, dtype=np.uint8)
            hwc = np.concatenate([hwc, alpha], axis=2)
        if hwc.shape[2] == 1:
            hwc = hwc[:, :, 0]
        return Image.fromarray(hwc, mode=self.mode)


def files_below(folder: Path, suffixes: frozenset[str]) -> tuple[list[Path], int]:
    """Files under ``folder`` (recursive, sorted, hidden entries skipped) whose suffix is one
    of ``suffixes``, and the number of other files."""
    found, other = [], 0
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).parts
        if any(part.startswith(".") for part in rel) or not p.is_file():
            continue
        if p.suffix.lower() in suffixes:
            found.append(p)
        else:
            other += 1
    return found, other


def check_pixel_count(
    width: int, height: int, max_pixels: int | None, option: str = "max_pixels"
) -> None:
    """UnsupportedImageError when width x height exceeds ``max_pixels`` (None: no limit but
    the format's), naming the limit and ``option``, the setting that raises it."""
    from .container import MAX_PIXELS  # here: the container may come to import this module

    n = width * height
    if max_pixels is not None and n > max_pixels:
        raise UnsupportedImageError(
            f"image {width}x{height} has {n:,} pixels, more than the limit of {max_pixels:,} "
            f"(raise it with {option})"
        )
    if n > MAX_PIXELS:
        raise UnsupportedImageError(
            f"image {width}x{height} has {n:,} pixels, more than a .nnc file holds ({MAX_PIXELS:,})"
        )


def open_image(
    source: str | Path | bytes, max_pixels: int | None = None, option: str = "max_pixels"
) -> Image.Image:
    """Open an image file (or bytes) fully into memory; UnsupportedImageError if unreadable.

    With ``max_pixels``, the size in the file's header is checked against it (see
    ``check_pixel_count``) before the pixels are read, in place of Pillow's own
    decompression-bomb limit; without it, Pillow's limit applies.
    """
    if isinstance(source, bytes):
        # Left open (memory only): the frames of an animation are read when seeked to.
        return _open_fp(io.BytesIO(source), max_pixels, option)
    try:
        fp = open(source, "rb")  # noqa: SIM115
    except OSError as e:
        raise UnsupportedImageError(f"cannot read {source}: {e.strerror or e}") from None
    with fp:
        return _open_fp(fp, max_pixels, option)


def _open_fp(fp, max_pixels: int | None, option: str) -> Image.Image:
    try:
        if max_pixels is None:
            img = Image.open(fp)
            img.load()
        else:
            img = _open_limited(fp, max_pixels, option)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise UnsupportedImageError(f"not a readable image ({e})") from None
    return img


def _open_limited(fp, max_pixels: int, option: str) -> Image.Image:
    """Image.open (which reads the header only), our size check, then the pixels. Pillow's
    limit (a module global, restored after) is lifted for the open so that the check with
    its message comes first, and set to ``max_pixels`` for the load (frames of animations)."""
    saved = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None
        img = Image.open(fp)
        check_pixel_count(img.width, img.height, max_pixels, option)
        Image.MAX_IMAGE_PIXELS = max_pixels
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
    finally:
        Image.MAX_IMAGE_PIXELS = saved
    return img


def as_image(obj: object, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """A Pillow image from what the API accepts: a Pillow image, a numpy array (HxW or
    HxWxC with C in 1..4, uint8) or a path (str or os.PathLike) to an image file.

    TypeError for any other type; UnsupportedImageError for arrays of another dtype or
    shape, unreadable files, and images with more than ``max_pixels`` pixels (checked
    before an array is copied or a file's pixels are read).
    """
    if isinstance(obj, Image.Image):
        check_pixel_count(obj.width, obj.height, max_pixels)
        return obj
    if isinstance(obj, np.ndarray):
        return _array_image(obj, max_pixels)
    if isinstance(obj, (str, os.PathLike)):
        from .container import MAX_PIXELS

        return open_image(Path(obj), MAX_PIXELS if max_pixels is None else max_pixels)
    hint = ""
    if isinstance(obj, (bytes, bytearray, memoryview)):
        hint = " (for the bytes of an image file, pass Image.open(io.BytesIO(data)))"
    raise TypeError(
        "expected an image: a PIL.Image.Image, a numpy array (HxW, HxWx3 or HxWx4 uint8) "
        f"or a path (str or pathlib.Path), not {type(obj).__module__}.{type(obj).__qualname__}"
        + hint
    )


def _array_image(a: np.ndarray, max_pixels: int | None) -> Image.Image:
    shape = "x".join(map(str, a.shape)) or "()"
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in ARRAY_MODES):
        raise UnsupportedImageError(
            f"array of shape {shape} is not an image: expected HxW (greyscale), HxWx3 (RGB) "
            "or HxWx4 (RGBA), height first"
        )
    if a.dtype == np.uint16:
        raise UnsupportedImageError(
            "16-bit arrays (uint16) are not supported: nncompress codes 8-bit images only"
        )
    if a.dtype != np.uint8:
        raise UnsupportedImageError(
            f"array of dtype {a.dtype} is not supported: expected uint8 (8 bits per subpixel)"
        )
    h, w = a.shape[:2]
    if h < 1 or w < 1:
        raise UnsupportedImageError("image has no pixels")
    check_pixel_count(w, h, max_pixels)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    return Image.fromarray(np.ascontiguousarray(a))


def to_picture(image: Image.Image) -> Picture:
    """Pillow image -> Picture, applying the mode rules above."""
    mode = image.mode
    if mode == "P":
        mode = "RGBA" if "transparency" in image.info else "RGB"
        image = image.convert(mode)
    elif mode in CONVERTED:
        mode = CONVERTED[mode]
        image = image.convert(mode)
    if mode not in CODED_CHANNELS:
        hint = " (16-bit images are not supported)" if mode.startswith("I") else ""
        raise UnsupportedImageError(
            f"unsupported image mode {image.mode!r}{hint}; supported: 8-bit L, RGB, "
            "and LA/RGBA with opaque alpha"
        )
    if image.width < 1 or image.height < 1:
        raise UnsupportedImageError("image has no pixels")
    arr = np.asarray(image, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if mode in ("LA", "RGBA"):
        if not (arr[:, :, -1] == OPAQUE).all():
            raise UnsupportedImageError(
                f"{mode} image with transparency is not supported yet (only fully opaque alpha)"
            )
        arr = arr[:, :, :-1]
    planes = np.ascontiguousarray(arr.transpose(2, 0, 1))
    return Picture(planes=planes, mode=mode)
