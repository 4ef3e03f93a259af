"""Shared helpers of the benchmark scripts: images, the classical-codec registry, timing,
lossless checks, environment and tables.

Classical codecs come from their libraries (Pillow, pyoxipng, imagecodecs), never
re-implemented here; a codec whose library is missing stays in the registry with the
reason, so reports can say what was skipped and why.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".png", ".webp", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm", ".pgm")
OPAQUE = 255
MEGA = 1e6
BITS_PER_BYTE = 8
PNG_LEVEL = 9  # zlib's maximum
OXIPNG_LEVEL = 6  # oxipng's highest preset
WEBP_QUALITY = 100  # in lossless mode: maximum compression effort
WEBP_METHOD = 6  # slowest, smallest
JXL_EFFORTS = (7, 9)  # 7: libjxl's default; 9: the slowest non-experimental effort
ONE_THREAD = 1
# pyoxipng parallelises through rayon, whose global pool reads this when first used.
RAYON_THREADS_ENV = "RAYON_NUM_THREADS"


# --- images -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One benchmark image. image: Pillow, mode L or RGB; array: (H, W, C) uint8 in
    [0, 255], C = 1 (L) or 3 (RGB), the same pixels."""

    name: str
    image: Image.Image
    array: np.ndarray

    @property
    def height(self) -> int:
        return int(self.array.shape[0])

    @property
    def width(self) -> int:
        return int(self.array.shape[1])

    @property
    def channels(self) -> int:
        return int(self.array.shape[2])

    @property
    def pixels(self) -> int:
        return self.height * self.width

    @property
    def subpixels(self) -> int:
        return int(self.array.size)


class BenchmarkError(Exception):
    """Bad input to a benchmark script (unreadable folder, unsupported image, bad option)."""


def normalize_image(image: Image.Image, name: str = "image") -> Image.Image:
    """Any Pillow image -> mode L or RGB with the same pixels. Opaque alpha is dropped,
    palettes expand, bilevel becomes L; transparency and 16-bit modes raise BenchmarkError."""
    mode = image.mode
    if mode == "1":
        return image.convert("L")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("LA", "RGBA", "PA"):
        if mode == "PA":
            image, mode = image.convert("RGBA"), "RGBA"
        alpha = np.asarray(image.getchannel("A"))
        if not (alpha == OPAQUE).all():
            raise BenchmarkError(f"{name}: transparent images are not supported")
        return image.convert(mode[:-1])
    if mode not in ("L", "RGB"):
        raise BenchmarkError(f"{name}: unsupported image mode {mode!r} (need 8-bit L or RGB)")
    return image


def image_to_array(image: Image.Image) -> np.ndarray:
    """L or RGB Pillow image -> (H, W, C) uint8, C = 1 or 3."""
    arr = np.asarray(image, dtype=np.uint8)
    return np.ascontiguousarray(arr[:, :, None] if arr.ndim == 2 else arr)


def array_to_image(arr: np.ndarray) -> Image.Image:
    """(H, W, C) uint8, C = 1 or 3 -> Pillow image of mode L or RGB."""
    return Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)


def make_sample(name: str, image: Image.Image) -> Sample:
    image = normalize_image(image, name)
    image.load()
    return Sample(name=name, image=image, array=image_to_array(image))


def center_crop(image: Image.Image, width: int, height: int) -> Image.Image:
    """The centered width x height window, clipped to the image where it is smaller."""
    w, h = min(width, image.width), min(height, image.height)
    left, top = (image.width - w) // 2, (image.height - h) // 2
    return image.crop((left, top, left + w, top + h))


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name. BenchmarkError if none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BenchmarkError(f"not a folder: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise BenchmarkError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files


def load_sample(path: Path) -> Sample:
    try:
        with Image.open(path) as img:
            img.load()
            return make_sample(path.name, img.copy())
    except OSError as e:
        raise BenchmarkError(f"cannot read {path}: {e}") from None


# --- lossless check ------------------------------------------------------------------------


def pixel_mismatch(original: np.ndarray, decoded: np.ndarray) -> str | None:
    """None if ``decoded`` holds exactly the pixels of ``original`` ((H, W, C) uint8), else
    what differs. Accepted shapes: (H, W, C), and (H, W) for C = 1; a grayscale original
    may come back as (H, W, 3) with three identical channels (WebP and QOI store gray as
    RGB), which loses nothing."""
    decoded = np.asarray(decoded)
    if decoded.dtype != np.uint8:
        return f"decoded dtype {decoded.dtype}, expected uint8"
    if decoded.ndim == 2:
        decoded = decoded[:, :, None]
    h, w, c = original.shape
    if decoded.ndim != 3 or decoded.shape[:2] != (h, w):
        return f"decoded shape {decoded.shape}, expected {original.shape}"
    if decoded.shape[2] != c:
        if not (c == 1 and decoded.shape[2] == 3):
            return f"decoded shape {decoded.shape}, expected {original.shape}"
        original = np.repeat(original, 3, axis=2)
    diff = decoded.astype(np.int16) - original.astype(np.int16)
    wrong = int(np.count_nonzero(diff))
    if wrong:
        return f"{wrong} of {diff.size} subpixels differ (max |diff| {int(np.abs(diff).max())})"
    return None


# --- classical codecs ----------------------------------------------------------------------


@dataclass(frozen=True)
class Codec:
    """A lossless codec. encode: Sample -> file bytes; decode: bytes -> (H, W, C) uint8
    (or (H, W) for gray). ``unavailable`` is the reason it cannot run, or None."""

    name: str
    label: str
    encode: Callable[[Sample], bytes]
    decode: Callable[[bytes], np.ndarray]
    threads: str = "1"
    unavailable: str | None = None


def _missing(name: str, label: str, reason: str) -> Codec:
    def never(*_: Any) -> Any:
        raise RuntimeError(f"{name} is unavailable: {reason}")

    return Codec(name, label, never, never, threads="-", unavailable=reason)


def _pillow_save(fmt: str, **options: Any) -> Callable[[Sample], bytes]:
    def encode(sample: Sample) -> bytes:
        buf = io.BytesIO()
        sample.image.save(buf, format=fmt, **options)
        return buf.getvalue()

    return encode


def _pillow_decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return np.asarray(img)


def _as_rgb(sample: Sample) -> np.ndarray:
    """(H, W, 3) uint8: gray replicated, for codecs without a gray mode."""
    arr = sample.array
    return np.ascontiguousarray(np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr)


def _squeezed(sample: Sample) -> np.ndarray:
    """(H, W) for gray, (H, W, 3) for RGB: the layout imagecodecs expects."""
    arr = sample.array
    return np.ascontiguousarray(arr[:, :, 0]) if arr.shape[2] == 1 else arr


def _png_codecs() -> list[Codec]:
    return [
        Codec(
            "png",
            f"PNG (Pillow, level {PNG_LEVEL})",
            _pillow_save("PNG", compress_level=PNG_LEVEL),
            _pillow_decode,
        ),
        Codec(
            "png-optimize",
            "PNG optimized (Pillow optimize)",
            _pillow_save("PNG", compress_level=PNG_LEVEL, optimize=True),
            _pillow_decode,
        ),
    ]


def _oxipng_codec() -> Codec:
    name, label = "oxipng", f"PNG optimized by oxipng (level {OXIPNG_LEVEL})"
    try:
        import oxipng
    except ImportError as e:
        return _missing(name, label, f"pyoxipng not installed ({e})")

    def encode(sample: Sample) -> bytes:
        color = oxipng.ColorType.grayscale() if sample.channels == 1 else oxipng.ColorType.rgb()
        raw = oxipng.RawImage(sample.array.tobytes(), sample.width, sample.height, color_type=color)
        return bytes(raw.create_optimized_png(level=OXIPNG_LEVEL))

    threads = os.environ.get(RAYON_THREADS_ENV, "rayon default")
    return Codec(name, label, encode, _pillow_decode, threads=threads)


def _imagecodecs_codecs() -> list[Codec]:
    labels = {
        "webp": f"WebP lossless (method {WEBP_METHOD}, level {WEBP_QUALITY})",
        **{f"jxl-e{e}": f"JPEG-XL lossless, effort {e}" for e in JXL_EFFORTS},
        "jpegls": "JPEG-LS",
        "jpeg2k": "JPEG 2000 lossless (reversible, JP2)",
        "qoi": "QOI",
    }
    try:
        import imagecodecs as ic
    except ImportError as e:
        return [_missing(n, lab, f"imagecodecs not installed ({e})") for n, lab in labels.items()]

    def usable(attr: str) -> str | None:
        codec = getattr(ic, attr, None)
        if codec is None or not getattr(codec, "available", False):
            return f"imagecodecs {ic.__version__} was built without {attr}"
        return None

    out: list[Codec] = []

    def add(name: str, attr: str, encode: Callable, decode: Callable) -> None:
        reason = usable(attr)
        if reason:
            out.append(_missing(name, labels[name], reason))
        else:
            out.append(Codec(name, labels[name], encode, decode))

    add(
        "webp",
        "WEBP",
        lambda s: ic.webp_encode(
            _as_rgb(s), level=WEBP_QUALITY, lossless=True, method=WEBP_METHOD, numthreads=ONE_THREAD
        ),
        ic.webp_decode,
    )
    for effort in JXL_EFFORTS:
        add(
            f"jxl-e{effort}",
            "JPEGXL",
            lambda s, e=effort: ic.jpegxl_encode(
                _squeezed(s), lossless=True, distance=0, effort=e, numthreads=ONE_THREAD
            ),
            lambda d: ic.jpegxl_decode(d, numthreads=ONE_THREAD),
        )
    add("jpegls", "JPEGLS", lambda s: ic.jpegls_encode(_squeezed(s)), ic.jpegls_decode)
    add(
        "jpeg2k",
        "JPEG2K",
        lambda s: ic.jpeg2k_encode(_squeezed(s), reversible=True, numthreads=ONE_THREAD),
        lambda d: ic.jpeg2k_decode(d, numthreads=ONE_THREAD),
    )
    add("qoi", "QOI", lambda s: ic.qoi_encode(_as_rgb(s)), ic.qoi_decode)
    return out


def classical_codecs() -> dict[str, Codec]:
    """A fresh registry: codec name -> Codec, in report order (unavailable ones included)."""
    codecs = [*_png_codecs(), _oxipng_codec(), *_imagecodecs_codecs()]
    order = ["png", "png-optimize", "oxipng", "webp", "jxl-e7", "jxl-e9", "jpegls", "jpeg2k"]
    order += [c.name for c in codecs if c.name not in order]
    by_name = {c.name: c for c in codecs}
    return {n: by_name[n] for n in order}


def select_codecs(registry: dict[str, Codec], spec: str | None) -> dict[str, Codec]:
    """``spec``: None (all), "none", or comma-separated registry names."""
    if spec is None:
        return dict(registry)
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if names == ["none"]:
        return {}
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise BenchmarkError(f"unknown codec(s) {', '.join(unknown)}; known: {', '.join(registry)}")
    return {n: registry[n] for n in names}


# --- timing and numbers --------------------------------------------------------------------


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """(fn's result, wall seconds)."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def mp_per_s(pixels: int, seconds: float) -> float | None:
    return pixels / MEGA / seconds if seconds > 0 else None


def median_or_none(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def fmt_speed(value: float | None) -> str:
    """MP/s with about three significant digits."""
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 1:
        return f"{value:.3g}"
    return f"{value:.2g}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# --- environment ---------------------------------------------------------------------------


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


def environment(device: str | None = None) -> dict[str, Any]:
    """What the numbers were measured on. ``device``: the torch device used for models."""
    env: dict[str, Any] = {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pillow": Image.__version__,
        "imagecodecs": _version("imagecodecs"),
        "pyoxipng": _version("pyoxipng"),
        RAYON_THREADS_ENV: os.environ.get(RAYON_THREADS_ENV),
    }
    try:
        import torch

        env["torch"] = torch.__version__
        env["torch_threads"] = torch.get_num_threads()
        if device is not None:
            env["device"] = device
            if device.startswith("cuda") and torch.cuda.is_available():
                env["gpu"] = torch.cuda.get_device_name(torch.device(device))
                env["cuda"] = torch.version.cuda
    except ImportError:
        env["torch"] = None
    return env


# --- nncompress ---------------------------------------------------------------------------


def import_api() -> tuple[Any, str | None]:
    """(nncompress.api module or None, reason it cannot be used or None)."""
    try:
        from nncompress import api
    except ImportError as e:
        return None, f"nncompress.api is not importable ({e})"
    return api, None


def resolve_device_name(device: str) -> str:
    """'auto' -> 'cuda' or 'cpu', as nncompress resolves it (fallback: torch's view)."""
    try:
        from nncompress.runtime import resolve_device

        return str(resolve_device(device))
    except ImportError:
        import torch

        if device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return device


DEFAULT_MODEL = "default"  # --models name meaning "nncompress's own default model"


def load_model(api: Any, spec: str) -> tuple[str, Any]:
    """(display name, model argument for the api): a LoadedModel, or None for the default."""
    if spec == DEFAULT_MODEL:
        return DEFAULT_MODEL, None
    loaded = api.load_model(spec)
    return str(loaded.name), loaded


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Torch's intra-op CPU threads for the duration (None: leave as is). On a busy machine
    more threads than free cores make each of the coder's many tiny steps wait on the
    others: timings then swing by 100x, so measure CPU speed with 1 thread there."""
    if threads is None:
        yield
        return
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def weighted_nll(scores: Sequence[float], subpixels: Sequence[int]) -> float:
    """Subpixel-weighted mean of per-image bits/subpixel."""
    return float(np.dot(scores, subpixels) / np.sum(subpixels))


def nnc_file_info(blob: bytes) -> dict[str, Any]:
    """What a .nnc file records: its method ("model", "png", "model+png", ...) and, when
    the model coded a part, the model name and the payload size (the model parts' coder
    streams, without their fields); {} if unreadable here."""
    try:
        from nncompress import files
        from nncompress.container import file as fmt

        f = files.parse(blob)
        h = f.header
        mode = "L" if h.mode in ("L", "LA") else "RGB"
        models = [
            fmt.unpack_model_part(d, mode, h.width, h.height)
            for e, d in f.parts()
            if e.method == "model"
        ]
    except Exception:
        return {}
    info: dict[str, Any] = {"method": h.method_summary()}
    if models:
        info["model_name"] = models[0][0].model_name
        info["payload_bytes"] = sum(len(payload) for _, payload in models)
    return info


EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


def exit_status(failures: Sequence[str]) -> int:
    """Print the failures (lossless or library errors) to stderr; the script's exit code."""
    if not failures:
        return EXIT_OK
    print(f"\n{len(failures)} FAILURE(S):", file=sys.stderr)
    for f in failures:
        print(f"  {f}", file=sys.stderr)
    return EXIT_FAILURE
