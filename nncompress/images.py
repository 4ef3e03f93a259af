"""Images in and out: Pillow images <-> planes (C, H, W) uint8, with the mode rules.

Supported: 8-bit L and RGB; LA and RGBA whose alpha is fully opaque (the alpha is not coded
and comes back as 255); palette images through RGB (or RGBA, same rule); bilevel ("1")
through L. Everything else is refused with UnsupportedImageError.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import UnsupportedImageError

OPAQUE = 255
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

    def crc32(self) -> int:
        """CRC-32 of the pixels as Pillow's tobytes() in ``mode`` (alpha included)."""
        return pixel_crc32(self.to_pil())


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


def pixel_crc32(image: Image.Image) -> int:
    return zlib.crc32(image.tobytes()) & 0xFFFFFFFF


def open_image(source: str | Path | bytes) -> Image.Image:
    """Open an image file (or bytes) fully into memory; UnsupportedImageError if unreadable."""
    try:
        fp = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115
    except OSError as e:
        raise UnsupportedImageError(f"cannot read {source}: {e.strerror or e}") from None
    with fp:
        try:
            img = Image.open(fp)
            img.load()
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
            raise UnsupportedImageError(f"not a readable image ({e})") from None
    return img


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
