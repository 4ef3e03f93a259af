"""A varied test corpus for nncompress, built by code, deterministically.

    python benchmarks/corpus.py OUT_DIR [--photos ../shared/data/photos/val] [--small]

Writes about 30 images to OUT_DIR (PNG unless stated) and OUT_DIR/corpus.json describing each
(name, kind, mode, bit depth, size, frames, the metadata it carries, the photo it came from).
Kinds: UI screenshots, charts, logos (4 colours; RGBA), palette and bilevel images, noise,
greyscale and RGB photo crops, 16-bit RGB and grey, RGBA and LA photos with soft alpha, an
animated GIF and an APNG, a PNG carrying ICC/EXIF/XMP/text/dpi, a JPEG with EXIF and ICC,
and two tiny edge cases. Everything is drawn with fixed seeds; the same inputs give the same
bytes on every run (the ICC profile's creation date is pinned). Photo-based kinds need the
photos folder; without it they are skipped (listed under "skipped" in corpus.json), and the
metadata carriers fall back to a synthetic picture.

``--small`` (``build(..., small=True)``) draws everything at a quarter of the size: the same
kinds in a fraction of a second, for tests.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageCms, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

CORPUS_JSON = "corpus.json"
CORPUS_VERSION = 1
PHOTO_SUFFIXES = (".png", ".webp", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm")
SMALL_SCALE = 0.25
SUPERSAMPLE = 2  # charts and soft shapes: drawn at 2x, reduced with LANCZOS
PNG_LEVEL = 9
JPEG_QUALITY = 90
DPI = 300
ORIENTATION_TAG = 0x0112
MAKE_TAG, SOFTWARE_TAG = 0x010F, 0x0131
PINNED_ICC_DATE = (2024, 1, 1, 0, 0, 0)  # the ICC header's creation date, else "now"
GIF_DURATIONS = [100, 200, 150, 300, 120]  # ms; GIF stores 10 ms units
APNG_DURATIONS = [80, 120, 160, 240]
XMP_PACKET = (
    '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
    'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/">'
    "<dc:creator><rdf:Seq><rdf:li>nncompress corpus</rdf:li></rdf:Seq></dc:creator>"
    "</rdf:Description></rdf:RDF></x:xmpmeta>\n"
    '<?xpacket end="w"?>'
)
TEXT_CHUNKS = {  # key -> (value, chunk type)
    "Title": ("Corpus metadata carrier", "tEXt"),
    "Author": ("nncompress benchmarks", "tEXt"),
    "Description": ("zTXt: compressed Latin-1 text, " * 4, "zTXt"),
    "Comment": ("写真 — φωτογραφία — фотография — 사진", "iTXt"),
}
FONT_SIZES = {"small": 11, "text": 13, "title": 16, "big": 28}


@dataclass(frozen=True)
class Ctx:
    out: Path
    scale: float
    photos: list[Path]  # ranked: largest first, then by name

    def px(self, n: float) -> int:
        """A length of the full-size corpus at this scale (at least 1)."""
        return max(1, round(n * self.scale))

    def font(self, size: float) -> ImageFont.ImageFont:
        return ImageFont.load_default(size=max(6, round(size * self.scale)))

    def photo(self, index: int) -> tuple[Image.Image, str]:
        path = self.photos[index % len(self.photos)]
        with Image.open(path) as img:
            return img.convert("RGB"), path.name


# --- small helpers -------------------------------------------------------------------------


def _gradient(w: int, h: int, top: tuple, bottom: tuple, horizontal: bool = False) -> np.ndarray:
    """(h, w, 3) uint8 linear gradient between two RGB colours."""
    n = w if horizontal else h
    t = np.linspace(0.0, 1.0, n)[:, None]
    line = np.asarray(top, float) * (1 - t) + np.asarray(bottom, float) * t
    line = np.round(line).astype(np.uint8)
    if horizontal:
        return np.ascontiguousarray(np.broadcast_to(line[None, :, :], (h, w, 3)))
    return np.ascontiguousarray(np.broadcast_to(line[:, None, :], (h, w, 3)))


def _crop(img: Image.Image, w: int, h: int, shift: float = 0.5) -> Image.Image:
    """A w x h window (clipped to the image), placed at ``shift`` (0..1) along both axes."""
    w, h = min(w, img.width), min(h, img.height)
    left = round((img.width - w) * shift)
    top = round((img.height - h) * shift)
    return img.crop((left, top, left + w, top + h))


def _pinned_icc() -> bytes:
    """LittleCMS' sRGB profile with a fixed creation date (and ID, if it carries one)."""
    icc = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    icc[24:36] = b"".join(v.to_bytes(2, "big") for v in PINNED_ICC_DATE)
    if any(icc[84:100]):  # a profile ID is the MD5 of the profile with these fields zeroed
        probe = bytearray(icc)
        probe[44:48] = probe[64:68] = bytes(4)
        probe[84:100] = bytes(16)
        icc[84:100] = hashlib.md5(bytes(probe)).digest()
    return bytes(icc)


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    exif[MAKE_TAG] = "nncompress"
    exif[SOFTWARE_TAG] = "benchmarks/corpus.py"
    return exif.tobytes()


def _smooth_field(w: int, h: int, c: int, seed: int, amplitude: float) -> np.ndarray:
    """(h, w, c) float: a few low-frequency sines, different per channel."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    out = np.zeros((h, w, c))
    for ch in range(c):
        for _ in range(3):
            fx, fy = rng.uniform(0.5, 3.0, size=2) * 2 * np.pi
            phase = rng.uniform(0, 2 * np.pi)
            out[:, :, ch] += np.sin(fx * xx / max(w, 1) + fy * yy / max(h, 1) + phase)
    return out / 3 * amplitude


def _save_png(img: Image.Image, path: Path, **options: Any) -> None:
    img.save(path, format="PNG", compress_level=PNG_LEVEL, **options)


# --- screenshots -----------------------------------------------------------------------------


def _window(
    ctx: Ctx, draw: ImageDraw.ImageDraw, box: tuple, title: str, accent: tuple, img: Image.Image
) -> tuple[int, int, int, int]:
    """A window frame with title bar and its three buttons; returns the client area."""
    x0, y0, x1, y1 = box
    bar = ctx.px(24)
    draw.rectangle((x0 + 3, y0 + 3, x1 + 3, y1 + 3), fill=(40, 40, 48))  # hard shadow
    draw.rectangle(box, fill=(246, 246, 246), outline=(120, 120, 130))
    grad = _gradient(x1 - x0 - 1, bar, accent, tuple(min(255, v + 60) for v in accent), True)
    img.paste(Image.fromarray(grad), (x0 + 1, y0 + 1))
    draw.text(
        (x0 + ctx.px(8), y0 + ctx.px(5)),
        title,
        font=ctx.font(FONT_SIZES["title"] - 2),
        fill=(255, 255, 255),
    )
    b = ctx.px(14)
    for i, (glyph, colour) in enumerate(
        (("x", (220, 70, 60)), ("□", (90, 90, 90)), ("_", (90, 90, 90)))
    ):
        bx = x1 - (i + 1) * (b + ctx.px(6))
        draw.rectangle((bx, y0 + ctx.px(5), bx + b, y0 + ctx.px(5) + b), fill=colour)
        draw.text(
            (bx + ctx.px(3), y0 + ctx.px(4)),
            glyph,
            font=ctx.font(FONT_SIZES["small"]),
            fill=(255, 255, 255),
        )
    return x0 + 1, y0 + bar + 1, x1 - 1, y1 - 1


def _button(ctx: Ctx, draw: ImageDraw.ImageDraw, xy: tuple, label: str, default: bool) -> None:
    x, y = xy
    w, h = ctx.px(72), ctx.px(24)
    fill = (52, 120, 220) if default else (230, 230, 232)
    draw.rounded_rectangle(
        (x, y, x + w, y + h), radius=ctx.px(5), fill=fill, outline=(100, 100, 110)
    )
    draw.text(
        (x + w // 2, y + h // 2),
        label,
        font=ctx.font(FONT_SIZES["text"]),
        anchor="mm",
        fill=(255, 255, 255) if default else (20, 20, 20),
    )


WORDS = (
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut "
    "labore et dolore magna aliqua image lossless range coder model pixel tile entropy"
).split()


def _sentence(rng: np.random.Generator, n: int) -> str:
    return " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), size=n))


def _client_text(ctx: Ctx, draw, area: tuple, rng: np.random.Generator, lines: int) -> None:
    x0, y0, x1, _ = area
    font = ctx.font(FONT_SIZES["text"])
    for i in range(lines):
        draw.text(
            (x0 + ctx.px(10), y0 + ctx.px(10 + 18 * i)),
            _sentence(rng, 6),
            font=font,
            fill=(30, 30, 30),
        )


def screenshot_desktop(ctx: Ctx) -> Image.Image:
    w, h = ctx.px(800), ctx.px(600)
    rng = np.random.default_rng(11)
    img = Image.fromarray(_gradient(w, h, (36, 84, 150), (120, 60, 140)))
    draw = ImageDraw.Draw(img)
    # desktop icons
    for i in range(4):
        x, y = ctx.px(20), ctx.px(20 + 80 * i)
        draw.rounded_rectangle(
            (x, y, x + ctx.px(44), y + ctx.px(44)),
            radius=ctx.px(6),
            fill=[(240, 200, 60), (90, 200, 120), (230, 230, 230), (220, 90, 80)][i],
        )
        draw.text(
            (x + ctx.px(22), y + ctx.px(54)),
            ["Files", "Term", "Trash", "Mail"][i],
            font=ctx.font(FONT_SIZES["small"]),
            anchor="mm",
            fill=(255, 255, 255),
        )
    area = _window(
        ctx,
        draw,
        (ctx.px(110), ctx.px(40), ctx.px(560), ctx.px(380)),
        "Document - Editor",
        (40, 90, 170),
        img,
    )
    _client_text(ctx, draw, area, rng, 15)
    area = _window(
        ctx,
        draw,
        (ctx.px(420), ctx.px(230), ctx.px(770), ctx.px(540)),
        "Settings",
        (60, 130, 80),
        img,
    )
    x0, y0, x1, _ = area
    for i in range(6):  # a list with alternating rows
        y = y0 + ctx.px(8 + 24 * i)
        draw.rectangle(
            (x0 + ctx.px(8), y, x1 - ctx.px(8), y + ctx.px(22)),
            fill=(255, 255, 255) if i % 2 else (232, 238, 248),
        )
        draw.rectangle(
            (x0 + ctx.px(14), y + ctx.px(5), x0 + ctx.px(26), y + ctx.px(17)),
            outline=(80, 80, 80),
            fill=(52, 120, 220) if i % 3 == 0 else None,
        )
        draw.text(
            (x0 + ctx.px(34), y + ctx.px(4)),
            _sentence(rng, 3),
            font=ctx.font(FONT_SIZES["text"]),
            fill=(20, 20, 20),
        )
    bar_w = x1 - x0 - ctx.px(16)
    prog = Image.fromarray(
        _gradient(bar_w * 2 // 3, ctx.px(12), (60, 180, 90), (30, 120, 60), True)
    )
    draw.rectangle(
        (x0 + ctx.px(8), y0 + ctx.px(160), x0 + ctx.px(8) + bar_w, y0 + ctx.px(172)),
        outline=(100, 100, 100),
        fill=(220, 220, 220),
    )
    img.paste(prog, (x0 + ctx.px(8), y0 + ctx.px(160)))
    _button(ctx, draw, (x1 - ctx.px(170), y0 + ctx.px(220)), "Cancel", False)
    _button(ctx, draw, (x1 - ctx.px(90), y0 + ctx.px(220)), "OK", True)
    # taskbar
    draw.rectangle((0, h - ctx.px(32), w, h), fill=(30, 30, 36))
    _button(ctx, draw, (ctx.px(4), h - ctx.px(28)), "Start", True)
    draw.text(
        (w - ctx.px(50), h - ctx.px(24)),
        "12:34",
        font=ctx.font(FONT_SIZES["text"]),
        fill=(230, 230, 230),
    )
    return img


def screenshot_dialog(ctx: Ctx) -> Image.Image:
    w, h = ctx.px(400), ctx.px(300)
    rng = np.random.default_rng(12)
    img = Image.new("RGB", (w, h), (200, 200, 205))
    draw = ImageDraw.Draw(img)
    area = _window(
        ctx,
        draw,
        (ctx.px(4), ctx.px(4), w - ctx.px(8), h - ctx.px(8)),
        "Export image",
        (150, 60, 60),
        img,
    )
    x0, y0, x1, y1 = area
    font = ctx.font(FONT_SIZES["text"])
    for i, label in enumerate(("File name:", "Format:", "Quality:", "Folder:")):
        y = y0 + ctx.px(16 + 34 * i)
        draw.text((x0 + ctx.px(12), y + ctx.px(4)), label, font=font, fill=(20, 20, 20))
        draw.rectangle(
            (x0 + ctx.px(100), y, x1 - ctx.px(14), y + ctx.px(24)),
            fill=(255, 255, 255),
            outline=(130, 130, 140),
        )
        draw.text(
            (x0 + ctx.px(106), y + ctx.px(4)), _sentence(rng, 2), font=font, fill=(40, 40, 40)
        )
    slider_y = y0 + ctx.px(160)
    draw.line(
        (x0 + ctx.px(20), slider_y, x1 - ctx.px(20), slider_y),
        fill=(90, 90, 90),
        width=max(1, ctx.px(3)),
    )
    draw.ellipse(
        (x0 + ctx.px(180), slider_y - ctx.px(8), x0 + ctx.px(196), slider_y + ctx.px(8)),
        fill=(52, 120, 220),
    )
    _button(ctx, draw, (x1 - ctx.px(170), y1 - ctx.px(36)), "Cancel", False)
    _button(ctx, draw, (x1 - ctx.px(90), y1 - ctx.px(36)), "Save", True)
    return img


def screenshot_editor(ctx: Ctx) -> Image.Image:
    """A dark code editor: line numbers, syntax colours, a highlighted line."""
    w, h = ctx.px(640), ctx.px(480)
    rng = np.random.default_rng(13)
    img = Image.new("RGB", (w, h), (30, 32, 38))
    draw = ImageDraw.Draw(img)
    font = ctx.font(FONT_SIZES["text"])
    gutter = ctx.px(40)
    draw.rectangle((0, 0, gutter, h), fill=(40, 42, 50))
    draw.rectangle((0, 0, w, ctx.px(22)), fill=(50, 52, 62))
    draw.text((ctx.px(8), ctx.px(4)), "corpus.py — editor", font=font, fill=(200, 200, 200))
    colours = [(198, 120, 221), (97, 175, 239), (152, 195, 121), (229, 192, 123), (171, 178, 191)]
    line_h = ctx.px(18)
    for i in range((h - ctx.px(30)) // line_h):
        y = ctx.px(28) + i * line_h
        if i == 7:
            draw.rectangle((gutter, y - 1, w, y + line_h - 2), fill=(44, 48, 58))
        draw.text((gutter - ctx.px(6), y), str(i + 1), font=font, anchor="ra", fill=(90, 96, 110))
        x = gutter + ctx.px(10) + int(rng.integers(0, 4)) * ctx.px(16)
        for _ in range(int(rng.integers(1, 6))):
            word = WORDS[int(rng.integers(0, len(WORDS)))]
            colour = colours[int(rng.integers(0, len(colours)))]
            draw.text((x, y), word, font=font, fill=colour)
            x += int(draw.textlength(word + " ", font=font))
    return img


# --- charts ------------------------------------------------------------------------------------


def _axes(ctx: Ctx, draw, w: int, h: int, s: int, title: str, ylabels: list[str]) -> tuple:
    """Axes with ticks and labels on a canvas drawn at s times; returns the plot box."""
    left, top, right, bottom = 70 * s, 40 * s, w - 20 * s, h - 50 * s
    left, top = ctx.px(left), ctx.px(top)
    right, bottom = w - ctx.px(20 * s), h - ctx.px(50 * s)
    font = ctx.font(FONT_SIZES["text"] * s)
    draw.text(
        (w // 2, ctx.px(12 * s)),
        title,
        font=ctx.font(FONT_SIZES["title"] * s),
        anchor="mt",
        fill=(20, 20, 20),
    )
    n = len(ylabels)
    for i, label in enumerate(ylabels):
        y = bottom - (bottom - top) * i // (n - 1)
        draw.line((left, y, right, y), fill=(225, 225, 225), width=s)
        draw.line((left - ctx.px(6 * s), y, left, y), fill=(40, 40, 40), width=s)
        draw.text((left - ctx.px(10 * s), y), label, font=font, anchor="rm", fill=(40, 40, 40))
    draw.line((left, top, left, bottom), fill=(40, 40, 40), width=2 * s)
    draw.line((left, bottom, right, bottom), fill=(40, 40, 40), width=2 * s)
    return left, top, right, bottom, font


def chart_line(ctx: Ctx) -> Image.Image:
    s = SUPERSAMPLE
    w, h = ctx.px(600) * s, ctx.px(400) * s
    rng = np.random.default_rng(21)
    img = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    left, top, right, bottom, font = _axes(
        ctx, draw, w, h, s, "Bits per subpixel by month", [f"{v:.1f}" for v in np.linspace(0, 5, 6)]
    )
    months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    xs = np.linspace(left + ctx.px(10 * s), right - ctx.px(10 * s), len(months))
    for x, m in zip(xs, months):
        draw.line((x, bottom, x, bottom + ctx.px(6 * s)), fill=(40, 40, 40), width=s)
        draw.text((x, bottom + ctx.px(10 * s)), m, font=font, anchor="mt", fill=(40, 40, 40))
    for k, colour in enumerate(((220, 60, 50), (40, 110, 200), (50, 160, 80))):
        ys = np.clip(2.5 + k * 0.6 + np.cumsum(rng.normal(0, 0.35, len(months))), 0.2, 4.8)
        pts = [(float(x), bottom - (bottom - top) * float(y) / 5) for x, y in zip(xs, ys)]
        draw.line(pts, fill=colour, width=3 * s, joint="curve")
        for x, y in pts:
            r = ctx.px(4 * s)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour, outline=(255, 255, 255))
        lx, ly = right - ctx.px(120 * s), top + ctx.px((10 + 18 * k) * s)
        draw.line((lx, ly, lx + ctx.px(20 * s), ly), fill=colour, width=3 * s)
        draw.text(
            (lx + ctx.px(26 * s), ly),
            ["model A", "model B", "PNG"][k],
            font=font,
            anchor="lm",
            fill=(20, 20, 20),
        )
    return img.resize((w // s, h // s), Image.Resampling.LANCZOS)


def chart_bar(ctx: Ctx) -> Image.Image:
    s = SUPERSAMPLE
    w, h = ctx.px(600) * s, ctx.px(400) * s
    rng = np.random.default_rng(22)
    img = Image.new("RGB", (w, h), (250, 250, 252))
    draw = ImageDraw.Draw(img)
    left, top, right, bottom, font = _axes(
        ctx, draw, w, h, s, "Compressed size (KiB)", [str(v) for v in range(0, 501, 100)]
    )
    names = ["PNG", "WebP", "JXL", "nnc", "QOI", "J2K", "JPLS", "BMP"]
    values = rng.uniform(80, 480, len(names))
    slot = (right - left) / len(names)
    for i, (name, v) in enumerate(zip(names, values)):
        x0 = left + slot * i + slot * 0.2
        x1 = left + slot * (i + 1) - slot * 0.2
        y = bottom - (bottom - top) * v / 500
        colour = (70, 130, 180) if name != "nnc" else (230, 120, 40)
        draw.rectangle((x0, y, x1, bottom), fill=colour, outline=(30, 30, 30), width=s)
        draw.text(
            ((x0 + x1) / 2, y - ctx.px(4 * s)),
            f"{v:.0f}",
            font=font,
            anchor="mb",
            fill=(20, 20, 20),
        )
        draw.text(
            ((x0 + x1) / 2, bottom + ctx.px(10 * s)),
            name,
            font=font,
            anchor="mt",
            fill=(40, 40, 40),
        )
    return img.resize((w // s, h // s), Image.Resampling.LANCZOS)


# --- logos -------------------------------------------------------------------------------------


LOGO_COLOURS = [(255, 255, 255), (20, 60, 140), (240, 170, 30), (200, 40, 60)]


def _logo(ctx: Ctx, size: int) -> Image.Image:
    """Exactly four colours: aliased shapes, text drawn without anti-aliasing."""
    n = ctx.px(size)
    bg, blue, gold, red = LOGO_COLOURS
    img = Image.new("RGB", (n, n), bg)
    draw = ImageDraw.Draw(img)
    draw.fontmode = "1"
    u = n / 16
    draw.ellipse((2 * u, 1 * u, 14 * u, 13 * u), fill=blue)
    draw.polygon([(8 * u, 2.5 * u), (12.5 * u, 10 * u), (3.5 * u, 10 * u)], fill=gold)
    draw.rectangle((6.5 * u, 6 * u, 9.5 * u, 9 * u), fill=red)
    draw.text(
        (8 * u, 14.6 * u),
        "NNC",
        font=ImageFont.load_default(size=max(6, round(2.6 * u))),
        anchor="mm",
        fill=blue,
    )
    return img


def logo_4colour_256(ctx: Ctx) -> Image.Image:
    return _logo(ctx, 256)


def logo_4colour_512(ctx: Ctx) -> Image.Image:
    return _logo(ctx, 512)


def logo_rgba(ctx: Ctx) -> Image.Image:
    """Transparent background, soft (anti-aliased) edges, a semi-transparent ring."""
    s = SUPERSAMPLE * 2
    n = ctx.px(512) * s
    img = Image.new("RGBA", (n, n), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    u = n / 16
    draw.ellipse((1 * u, 1 * u, 15 * u, 15 * u), outline=(20, 60, 140, 140), width=round(u))
    draw.rounded_rectangle(
        (4 * u, 4 * u, 12 * u, 12 * u), radius=round(2 * u), fill=(240, 170, 30, 255)
    )
    draw.polygon([(8 * u, 5 * u), (11 * u, 11 * u), (5 * u, 11 * u)], fill=(200, 40, 60, 255))
    draw.text(
        (8 * u, 13.4 * u),
        "nnc",
        font=ImageFont.load_default(size=max(6, round(1.8 * u))),
        anchor="mm",
        fill=(20, 60, 140, 255),
    )
    return img.resize((n // s, n // s), Image.Resampling.LANCZOS)


# --- palette and bilevel -----------------------------------------------------------------------


PIXEL_PALETTE = [
    (20, 20, 30),
    (40, 90, 40),
    (70, 150, 60),
    (120, 200, 90),
    (40, 60, 160),
    (70, 120, 220),
    (140, 180, 250),
    (120, 80, 40),
    (180, 130, 70),
    (230, 200, 120),
    (200, 60, 50),
    (250, 220, 60),
    (160, 160, 170),
    (220, 220, 230),
    (255, 255, 255),
    (90, 40, 100),
]


def palette_pixelart(ctx: Ctx) -> Image.Image:
    """A 16-colour tile map (terrain, water, houses), drawn at 4x with nearest neighbour."""
    block = 4
    w, h = ctx.px(400) // block, ctx.px(300) // block
    rng = np.random.default_rng(31)
    yy, xx = np.mgrid[0:h, 0:w]
    height = np.sin(xx / 9.0) + np.cos(yy / 7.0) + rng.normal(0, 0.25, (h, w))
    idx = np.select(
        [height < -0.8, height < -0.3, height < 0.4, height < 1.0], [4, 5, 2, 1], default=3
    ).astype(np.uint8)
    for _ in range(max(1, w * h // 300)):  # houses: roof, wall
        x, y = int(rng.integers(1, max(2, w - 4))), int(rng.integers(1, max(2, h - 4)))
        idx[y : y + 1, x : x + 3] = 10
        idx[y + 1 : y + 3, x : x + 3] = 9
        idx[y + 2, x + 1] = 7
    img = Image.fromarray(idx, "P")
    img.putpalette([v for c in PIXEL_PALETTE for v in c])
    return img.resize((w * block, h * block), Image.Resampling.NEAREST)


def palette_transparent(ctx: Ctx) -> Image.Image:
    """Sprites on a transparent palette index (tRNS chunk)."""
    w, h = ctx.px(320), ctx.px(240)
    img = Image.new("P", (w, h), 0)
    img.putpalette([v for c in [(255, 0, 255), *PIXEL_PALETTE[:15]] for v in c])
    draw = ImageDraw.Draw(img)
    rng = np.random.default_rng(32)
    for _ in range(12):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        r = ctx.px(int(rng.integers(10, 40)))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=int(rng.integers(1, 16)))
        draw.rectangle(
            (x - r // 3, y - r // 3, x + r // 3, y + r // 3), fill=int(rng.integers(1, 16))
        )
    img.info["transparency"] = 0
    return img


def palette_photo(ctx: Ctx) -> tuple[Image.Image, str]:
    photo, src = ctx.photo(10)
    crop = _crop(photo, ctx.px(480), ctx.px(320))
    return crop.quantize(256, dither=Image.Dither.FLOYDSTEINBERG), src


def bilevel_text(ctx: Ctx) -> Image.Image:
    """A 'scanned' text page: text, a rule, speckles, thresholded to mode 1."""
    w, h = ctx.px(640), ctx.px(800)
    rng = np.random.default_rng(41)
    page = Image.new("L", (w, h), 250)
    draw = ImageDraw.Draw(page)
    draw.text((ctx.px(40), ctx.px(30)), "Chapter 3. Range coding", font=ctx.font(26), fill=10)
    draw.line(
        (ctx.px(40), ctx.px(70), w - ctx.px(40), ctx.px(70)), fill=10, width=max(1, ctx.px(2))
    )
    font = ctx.font(14)
    for i in range((h - ctx.px(120)) // ctx.px(20)):
        draw.text((ctx.px(40), ctx.px(90 + 20 * i)), _sentence(rng, 9), font=font, fill=15)
    arr = np.asarray(page, dtype=np.int16) + rng.normal(0, 30, (h, w)).astype(np.int16)
    speckle = rng.random((h, w)) < 0.002
    arr[speckle] = 0
    return (
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        .point(lambda v: 255 if v > 128 else 0)
        .convert("1", dither=Image.Dither.NONE)
    )


def bilevel_dither(ctx: Ctx) -> tuple[Image.Image, str]:
    photo, src = ctx.photo(11)
    return _crop(photo, ctx.px(480), ctx.px(360)).convert("L").convert("1"), src


# --- noise -------------------------------------------------------------------------------------


def noise_uniform(ctx: Ctx) -> Image.Image:
    n = ctx.px(256)
    rng = np.random.default_rng(51)
    return Image.fromarray(rng.integers(0, 256, size=(n, n, 3), dtype=np.uint8))


def noise_gauss_gradient(ctx: Ctx) -> Image.Image:
    w, h = ctx.px(400), ctx.px(300)
    rng = np.random.default_rng(52)
    base = _gradient(w, h, (30, 200, 90), (220, 40, 160), True).astype(float)
    base += _gradient(w, h, (0, 0, 0), (-20, 30, 40))  # second, vertical gradient
    return Image.fromarray(
        np.clip(np.round(base + rng.normal(0, 10, base.shape)), 0, 255).astype(np.uint8)
    )


# --- photos --------------------------------------------------------------------------------


def _grey_photo(index: int, shift: float) -> Callable[[Ctx], tuple[Image.Image, str]]:
    def make(ctx: Ctx) -> tuple[Image.Image, str]:
        photo, src = ctx.photo(index)
        return _crop(photo, ctx.px(512), ctx.px(384), shift).convert("L"), src

    return make


def _rgb_photo(index: int, w: int, h: int) -> Callable[[Ctx], tuple[Image.Image, str]]:
    def make(ctx: Ctx) -> tuple[Image.Image, str]:
        photo, src = ctx.photo(index)
        return _crop(photo, ctx.px(w), ctx.px(h), 0.4), src

    return make


def _photo16(ctx: Ctx, index: int, grey: bool, seed: int) -> tuple[np.ndarray, str]:
    """value * 257 plus smooth detail of +-100 (so the low byte carries information)."""
    photo, src = ctx.photo(index)
    crop = _crop(photo, ctx.px(384), ctx.px(256))
    if grey:
        crop = crop.convert("L")
    arr = np.asarray(crop, dtype=np.float64)
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    h, w, c = arr.shape
    out = np.clip(np.round(arr * 257 + _smooth_field(w, h, c, seed, 100.0)), 0, 65535)
    out = out.astype(np.uint16)
    return np.ascontiguousarray(out[:, :, 0] if grey else out), src


def photo_rgba_softmask(ctx: Ctx) -> tuple[Image.Image, str]:
    """An anti-aliased circle of alpha 255 fading to 0; outside it, alpha 0 over the photo's
    own (nonzero) RGB, which a lossless coder must keep."""
    photo, src = ctx.photo(9)
    crop = _crop(photo, ctx.px(384), ctx.px(288))
    w, h = crop.size
    s = SUPERSAMPLE * 2
    mask = Image.new("L", (w * s, h * s), 0)
    r = min(w, h) * s * 0.42
    cx, cy = w * s / 2, h * s / 2
    ImageDraw.Draw(mask).ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    mask = mask.resize((w, h), Image.Resampling.LANCZOS)
    rgb = np.asarray(crop).copy()
    rgb[rgb.sum(axis=2) == 0] = (1, 1, 1)  # nonzero RGB everywhere, under alpha 0 too
    rgba = np.dstack([rgb, np.asarray(mask)])
    return Image.fromarray(rgba, "RGBA"), src


def photo_la(ctx: Ctx) -> tuple[Image.Image, str]:
    """Greyscale with a linear alpha ramp (mode LA)."""
    photo, src = ctx.photo(8)
    grey = _crop(photo, ctx.px(320), ctx.px(240), 0.7).convert("L")
    w, h = grey.size
    alpha = np.round(np.linspace(0, 255, w))[None, :].repeat(h, axis=0).astype(np.uint8)
    return Image.fromarray(np.dstack([np.asarray(grey), alpha]), "LA"), src


# --- multi-frame ---------------------------------------------------------------------------


def _anim_frames(ctx: Ctx, n: int, seed: int, rgba: bool) -> list[Image.Image]:
    w, h = ctx.px(320), ctx.px(240)
    rng = np.random.default_rng(seed)
    bg = _gradient(w, h, (250, 240, 200), (120, 180, 230))
    frames = []
    for i in range(n):
        if rgba:
            alpha = np.full((h, w, 1), 255, np.uint8)
            alpha[:, : w // 4] = 0  # a transparent band (RGB kept)
            frame = Image.fromarray(np.dstack([bg, alpha]), "RGBA")
        else:
            frame = Image.fromarray(bg.copy())
        draw = ImageDraw.Draw(frame)
        x = ctx.px(30 + 60 * i)
        y = ctx.px(40 + 30 * abs(2 - i))
        r = ctx.px(28)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=(220, 60, 50))
        draw.rectangle(
            (ctx.px(10), h - ctx.px(40), w - ctx.px(10), h - ctx.px(10)), fill=(60, 60, 70)
        )
        draw.text(
            (ctx.px(20), h - ctx.px(36)),
            f"frame {i + 1}/{n}",
            font=ctx.font(16),
            fill=(255, 255, 255),
        )
        for _ in range(3):  # per-frame confetti, so no two frames are alike
            cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h - ctx.px(50)))
            draw.rectangle(
                (cx, cy, cx + ctx.px(6), cy + ctx.px(6)),
                fill=tuple(int(v) for v in rng.integers(0, 256, 3)),
            )
        frames.append(frame)
    return frames


def anim_gif(ctx: Ctx, path: Path) -> dict:
    frames = _anim_frames(ctx, len(GIF_DURATIONS), 61, rgba=False)
    palette_src = frames[0].quantize(64, dither=Image.Dither.NONE)
    pframes = [f.quantize(palette=palette_src, dither=Image.Dither.NONE) for f in frames]
    pframes[0].save(
        path,
        format="GIF",
        save_all=True,
        append_images=pframes[1:],
        duration=GIF_DURATIONS,
        loop=0,
        disposal=1,
        optimize=False,
    )
    return {"mode": "P", "durations_ms": GIF_DURATIONS, "loop": 0}


def anim_apng(ctx: Ctx, path: Path) -> dict:
    frames = _anim_frames(ctx, len(APNG_DURATIONS), 62, rgba=True)
    _save_png(
        frames[0], path, save_all=True, append_images=frames[1:], duration=APNG_DURATIONS, loop=0
    )
    return {"mode": "RGBA", "durations_ms": APNG_DURATIONS, "loop": 0}


# --- metadata carriers ---------------------------------------------------------------------


def _synthetic_picture(ctx: Ctx, w: int, h: int) -> Image.Image:
    base = _gradient(ctx.px(w), ctx.px(h), (200, 120, 60), (40, 90, 180)).astype(float)
    base += _smooth_field(ctx.px(w), ctx.px(h), 3, 71, 30.0)
    return Image.fromarray(np.clip(np.round(base), 0, 255).astype(np.uint8))


def _picture(ctx: Ctx, index: int, w: int, h: int) -> tuple[Image.Image, str | None]:
    if not ctx.photos:
        return _synthetic_picture(ctx, w, h), None
    photo, src = ctx.photo(index)
    return _crop(photo, ctx.px(w), ctx.px(h), 0.3), src


def meta_png(ctx: Ctx, path: Path) -> dict:
    img, src = _picture(ctx, 12, 384, 256)
    info = PngInfo()
    for key, (value, chunk) in TEXT_CHUNKS.items():
        if chunk == "iTXt":
            info.add_itxt(key, value, lang="und", tkey=key)
        else:
            info.add_text(key, value, zip=chunk == "zTXt")
    info.add_itxt("XML:com.adobe.xmp", XMP_PACKET)
    _save_png(img, path, pnginfo=info, icc_profile=_pinned_icc(), exif=_exif(6), dpi=(DPI, DPI))
    return {
        "source": src,
        "exif_orientation": 6,
        "dpi": DPI,
        "text_keys": [*TEXT_CHUNKS, "XML:com.adobe.xmp"],
    }


def meta_jpeg(ctx: Ctx, path: Path) -> dict:
    img, src = _picture(ctx, 13, 512, 384)
    img.save(path, format="JPEG", quality=JPEG_QUALITY, exif=_exif(8), icc_profile=_pinned_icc())
    return {"source": src, "exif_orientation": 8, "quality": JPEG_QUALITY}


# --- edge cases ----------------------------------------------------------------------------


def tiny_rgb(ctx: Ctx) -> Image.Image:
    rng = np.random.default_rng(81)
    return Image.fromarray(rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8))


def strip_rgb(ctx: Ctx) -> Image.Image:
    return Image.fromarray(_gradient(ctx.px(1024), 3, (0, 0, 0), (255, 128, 0), True))


# --- the corpus ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    name: str
    kind: str
    make: Callable
    photo: bool = False  # needs the photos folder
    writer: str = "pil"  # pil: make returns an image; png16: a uint16 array; file: writes path


def _photo16_maker(index: int, grey: bool, seed: int) -> Callable:
    return lambda ctx: _photo16(ctx, index, grey, seed)


SPECS: list[Spec] = [
    Spec("screenshot_desktop.png", "screenshot", screenshot_desktop),
    Spec("screenshot_dialog.png", "screenshot", screenshot_dialog),
    Spec("screenshot_editor.png", "screenshot", screenshot_editor),
    Spec("chart_line.png", "chart", chart_line),
    Spec("chart_bar.png", "chart", chart_bar),
    Spec("logo_4colour_256.png", "logo", logo_4colour_256),
    Spec("logo_4colour_512.png", "logo", logo_4colour_512),
    Spec("logo_rgba_512.png", "logo", logo_rgba),
    Spec("palette_pixelart.png", "palette", palette_pixelart),
    Spec("palette_transparent.png", "palette", palette_transparent),
    Spec("palette_photo.png", "palette", palette_photo, photo=True),
    Spec("bilevel_text.png", "bilevel", bilevel_text),
    Spec("bilevel_dither.png", "bilevel", bilevel_dither, photo=True),
    Spec("noise_uniform_256.png", "noise", noise_uniform),
    Spec("noise_gauss_gradient.png", "noise", noise_gauss_gradient),
    *(
        Spec(f"grey_photo_{i + 1}.png", "grey-photo", _grey_photo(i, 0.5 - 0.1 * i), photo=True)
        for i in range(4)
    ),
    Spec("photo_256x256.png", "photo", _rgb_photo(5, 256, 256), photo=True),
    Spec("photo_384x256.png", "photo", _rgb_photo(6, 384, 256), photo=True),
    Spec("photo_512x384.png", "photo", _rgb_photo(4, 512, 384), photo=True),
    Spec("photo16_rgb.png", "16-bit", _photo16_maker(7, False, 91), photo=True, writer="png16"),
    Spec("photo16_grey.png", "16-bit", _photo16_maker(3, True, 92), photo=True, writer="png16"),
    Spec("photo_rgba_softmask.png", "alpha", photo_rgba_softmask, photo=True),
    Spec("photo_la_ramp.png", "alpha", photo_la, photo=True),
    Spec("anim.gif", "multi-frame", anim_gif, writer="file"),
    Spec("anim_apng.png", "multi-frame", anim_apng, writer="file"),
    Spec("meta_png.png", "metadata", meta_png, writer="file"),
    Spec("meta_jpeg.jpg", "metadata", meta_jpeg, writer="file"),
    Spec("tiny_7x5.png", "edge", tiny_rgb),
    Spec("strip_1024x3.png", "edge", strip_rgb),
]


def _rank_photos(photos_dir: Path | None) -> tuple[list[Path], str | None]:
    """Photos largest first (then by name), or the reason there are none."""
    if photos_dir is None:
        return [], "no photos folder given"
    if not photos_dir.is_dir():
        return [], f"photos folder {photos_dir} does not exist"
    files = sorted(p for p in photos_dir.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
    if not files:
        return [], f"no photos in {photos_dir}"
    sizes = {}
    for p in files:
        with Image.open(p) as img:
            sizes[p] = img.size[0] * img.size[1]
    return sorted(files, key=lambda p: (-sizes[p], p.name)), None


def _png_facts(data: bytes) -> tuple[int, int]:
    """(bit depth, colour type) from a PNG's IHDR."""
    return data[24], data[25]


def _metadata_of(path: Path) -> list[str]:
    """The metadata a written file carries, read back with Pillow."""
    with Image.open(path) as img:
        img.load()
        found = []
        if img.info.get("icc_profile"):
            found.append("icc")
        if len(img.getexif()):
            found.append("exif")
        if img.info.get("xmp"):
            found.append("xmp")
        if getattr(img, "text", None):
            found.append("text")
        if "dpi" in img.info:
            found.append("dpi")
        if getattr(img, "n_frames", 1) > 1:
            found.append("animation")
        if "transparency" in img.info:
            found.append("transparency")
    return found


def _describe(path: Path, spec: Spec, extra: dict) -> dict:
    data = path.read_bytes()
    with Image.open(path) as img:
        width, height = img.size
        frames = getattr(img, "n_frames", 1)
        mode = img.mode
        fmt = img.format
    bit_depth = 1 if mode == "1" else 8
    if fmt == "PNG":
        depth, colour = _png_facts(data)
        if depth == 16:
            bit_depth = 16
            mode = {0: "L", 2: "RGB", 4: "LA", 6: "RGBA"}[colour]
    entry = {
        "name": spec.name,
        "kind": spec.kind,
        "format": fmt,
        "mode": mode,
        "bit_depth": bit_depth,
        "width": width,
        "height": height,
        "frames": frames,
        "metadata": _metadata_of(path),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    entry.update({k: v for k, v in extra.items() if v is not None})
    return entry


def _write(ctx: Ctx, spec: Spec) -> dict:
    path = ctx.out / spec.name
    extra: dict[str, Any] = {}
    if spec.writer == "file":
        extra = spec.make(ctx, path)
    else:
        made = spec.make(ctx)
        made, extra["source"] = made if isinstance(made, tuple) else (made, None)
        if spec.writer == "png16":
            import imagecodecs

            path.write_bytes(imagecodecs.png_encode(made, level=PNG_LEVEL))
        else:
            options = {}
            if made.mode == "P" and "transparency" in made.info:
                options["transparency"] = made.info["transparency"]
            _save_png(made, path, **options)
    return _describe(path, spec, extra)


def build(
    out_dir: str | Path,
    photos_dir: str | Path | None = None,
    small: bool = False,
    scale: float | None = None,
) -> list[dict]:
    """Write the corpus to ``out_dir`` (created), return its entries (also in corpus.json).
    ``small``: a quarter of the size, for tests; ``scale``: any other factor (overrides
    ``small``). Photo-based kinds need ``photos_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    photos, why_none = _rank_photos(Path(photos_dir) if photos_dir is not None else None)
    if scale is None:
        scale = SMALL_SCALE if small else 1.0
    ctx = Ctx(out=out, scale=scale, photos=photos)
    entries, skipped = [], []
    for spec in SPECS:
        if spec.photo and not photos:
            skipped.append({"name": spec.name, "kind": spec.kind, "reason": why_none})
            continue
        entries.append(_write(ctx, spec))
    doc = {
        "version": CORPUS_VERSION,
        "scale": scale,
        "photos_dir": None if photos_dir is None else str(photos_dir),
        "photos": len(photos),
        "images": entries,
        "skipped": skipped,
    }
    (out / CORPUS_JSON).write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    return entries


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", help="folder to write the corpus to (created)")
    ap.add_argument(
        "--photos",
        default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "photos" / "val"),
        help="folder of photos for the photo-based kinds (default: %(default)s)",
    )
    ap.add_argument("--small", action="store_true", help="quarter size (tests)")
    args = ap.parse_args(argv)
    import time

    start = time.perf_counter()
    entries = build(args.out_dir, args.photos, small=args.small)
    doc = json.loads((Path(args.out_dir) / CORPUS_JSON).read_text())
    for e in entries:
        meta = ",".join(e["metadata"]) or "-"
        print(
            f"{e['name']:28s} {e['kind']:12s} {e['width']:4d}x{e['height']:<4d} "
            f"{e['mode']:5s} {e['bit_depth']:2d}-bit {e['frames']} frame(s) "
            f"{e['bytes']:8d} B  meta: {meta}"
        )
    for s in doc["skipped"]:
        print(f"skipped {s['name']}: {s['reason']}")
    print(f"{len(entries)} images in {time.perf_counter() - start:.1f} s -> {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
