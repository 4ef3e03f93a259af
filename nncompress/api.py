"""The Python API: compress and decompress images, score them, sample from a model.

    >>> from nncompress import api
    >>> data = api.compress("photo.png")                    # bytes of a .nnc file
    >>> image = api.decompress(data)                         # identical pixels

Images may be given as Pillow images, numpy arrays (HxW, HxWx3, HxWx4; uint8 or uint16),
paths or the bytes of an image file; other types raise TypeError. Images (and .nnc headers)
with more than ``max_pixels`` pixels (default: images.DEFAULT_MAX_PIXELS, Pillow's limit)
are refused before any work. Everything in the image is kept: bit depth, alpha, frames and
metadata (``strip=True`` drops the metadata); what cannot be kept is refused.

Each image is coded with the best of the learned model and the classical lossless codecs
(``method="auto"``, see nncompress.files). Many images given together share the model's
schedule (their tiles share each batch step), which is much faster on a GPU than one by
one. Each image still gets its own file.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from . import container, multidevice
from .codec import SampleJob, TileGrid, run_schedule
from .content import Content, read_content, to_pil
from .errors import (
    FormatError,
    IntegrityError,
    OutOfMemoryError,
    UnsupportedImageError,
    is_out_of_memory,
    out_of_memory,
)
from .files import Decoded, Encoded, decode_files, encode_contents
from .images import DEFAULT_MAX_PIXELS, Picture, as_image, to_picture
from .modelfile import LoadedModel
from .planes import (
    CHUNK_TILES,
    DEFAULT_MAX_BATCH,
    DEFAULT_TILE,
    ProgressFactory,
    chunk_tiles,
    load_model,
    model_for,
    model_tile,
    score_planes,
)
from .runtime import coding_context, default_cpu_threads, resolve_device

# What the entry points take as an image (see content.read_content).
ImageInput = Image.Image | np.ndarray | str | Path | bytes | Content
#: Kept names: the result of compress_detailed.
EncodeResult = Encoded
_model_for = model_for

__all__ = [
    "CHUNK_TILES",
    "DEFAULT_MAX_BATCH",
    "DEFAULT_TILE",
    "Content",
    "Decoded",
    "EncodeResult",
    "chunk_tiles",
    "compress",
    "compress_detailed",
    "compress_many",
    "decompress",
    "decompress_content",
    "decompress_detailed",
    "decompress_many",
    "load_model",
    "model_tile",
    "sample",
    "score",
    "score_detailed",
]


_F = TypeVar("_F", bound=Callable[..., Any])


def _memory_typed(doing: str) -> Callable[[_F], _F]:
    """An allocator failure inside the entry point (torch's, on a GPU or the CPU; numpy's)
    leaves it as nncompress.errors.OutOfMemoryError, not as torch's RuntimeError."""

    def wrap(fn: _F) -> _F:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except OutOfMemoryError:
                raise
            except Exception as e:
                if is_out_of_memory(e):
                    raise out_of_memory(e, doing) from e
                raise

        return inner  # type: ignore[return-value]

    return wrap


def _not_one_image(images: object) -> None:
    """TypeError for one image given where a sequence is expected (an array or a path would
    otherwise be taken apart row by row or character by character)."""
    if isinstance(images, (Image.Image, np.ndarray, str, Path, bytes, Content)):
        raise TypeError(
            f"expected a sequence of images, not one {type(images).__name__} "
            "(put it in a list, or use compress() for a single image)"
        )


def _content(obj: object, max_pixels: int | None, strip: bool) -> Content:
    if isinstance(obj, Content):
        return obj.stripped() if strip else obj
    return read_content(obj, max_pixels, strip)


def _contents(images: object, max_pixels: int | None, strip: bool) -> list[Content]:
    _not_one_image(images)
    try:
        items = list(images)  # type: ignore[call-overload]
    except TypeError:
        raise TypeError(f"expected a sequence of images, not {type(images).__name__}") from None
    return [_content(im, max_pixels, strip) for im in items]


def _blob_list(blobs: object) -> list[bytes]:
    """.nnc files as bytes: bytes-like objects as they are, paths (str / Path) read."""
    if isinstance(blobs, (bytes, bytearray, memoryview, str, Path)):
        raise TypeError(
            f"expected a sequence of .nnc files, not one {type(blobs).__name__} "
            "(use decompress() for a single file)"
        )
    try:
        items = list(blobs)  # type: ignore[call-overload]
    except TypeError:
        raise TypeError(f"expected a sequence of .nnc files, not {type(blobs).__name__}") from None
    return [_blob(b) for b in items]


def _blob(data: object) -> bytes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    if isinstance(data, (str, Path)):
        path = Path(data)
        if path.stat().st_size > container.MAX_FILE_BYTES:
            raise FormatError(f"{path}: larger than MAX_FILE_BYTES ({container.MAX_FILE_BYTES})")
        return path.read_bytes()
    raise TypeError(
        "expected the bytes of a .nnc file or a path to one (str or pathlib.Path), "
        f"not {type(data).__module__}.{type(data).__qualname__}"
    )


def _factory(progress: bool | ProgressFactory | None) -> ProgressFactory | None:
    return _tqdm_factory if progress is True else (progress or None)


@_memory_typed("encoding")
def compress_detailed(
    images: Sequence[ImageInput],
    model: str | Path | LoadedModel | None = None,
    device: str = "auto",
    tile: int | tuple[int, int] | None = None,
    max_batch: int | None = None,
    progress: ProgressFactory | None = None,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    verify: bool = False,
    method: str = "auto",
    strip: bool = False,
) -> list[Encoded]:
    """Compress images (see ImageInput), each with the best method (``method="auto"``) or
    the one given ("model", "jxl", "webp", "png", "store", "jpeg"). Model parts of images
    needing the same model are coded in one schedule, in batches of at most ``max_batch``
    tiles (default: DEFAULT_MAX_BATCH of the device). An image of more than ``max_pixels``
    pixels (None: the format's limit only) raises UnsupportedImageError before any coding.
    ``verify``: decode every file just written and compare (IntegrityError if it differs).
    ``strip``: leave the metadata out."""
    contents = _contents(images, max_pixels, strip)
    if multidevice.is_multi(device) and not multidevice.is_cpu_pool(device):
        return multidevice.run(
            device,
            contents,
            [c.samples for c in contents],
            "encode",
            model,
            tile=tile,
            max_batch=max_batch,
            verify=verify,
            method=method,
        )
    pool = _cpu_pool(device)
    dev = resolve_device("cpu" if pool is not None else device)
    given = load_model(model) if model is not None else None
    with pool or contextlib.nullcontext():
        results = encode_contents(contents, given, dev, tile, max_batch, progress, method, pool)
        if verify:
            _verify(contents, results, given, dev, max_batch, progress, pool)
    return results


def _cpu_pool(device: str) -> multidevice.ChunkPool | None:
    """The worker processes of ``cpu:N`` (None for any other device)."""
    if not multidevice.is_cpu_pool(device):
        return None
    return multidevice.ChunkPool(len(multidevice.workers(device)))


def _verify(contents, results, given, dev, max_batch, progress, pool=None) -> None:
    """Decode what was just encoded and compare, as ``flac --verify`` does."""
    back = decode_files(
        [r.data for r in results], given, dev, max_batch, progress, None, pool=pool
    )
    for c, d in zip(contents, back, strict=True):
        if not same_content(c, d.content):
            raise IntegrityError(
                "verification failed: the file just written does not decode to the image "
                "(a bug in nncompress: please report it)"
            )


def same_content(a: Content, b: Content) -> bool:
    """Whether two contents are the same image: samples, frames, timing, metadata (a
    JPEG kept as a file: the file's bytes)."""
    if b.jpeg is not None and not b.frames:
        return a.jpeg == b.jpeg
    return (
        a.mode == b.mode
        and a.bit_depth == b.bit_depth
        and len(a.frames) == len(b.frames)
        and all(np.array_equal(x, y) for x, y in zip(a.frames, b.frames))
        and a.durations == b.durations
        and a.palette == b.palette
        and (not a.durations or a.loop == b.loop)
        and tuple(a.metadata) == tuple(b.metadata)
    )


def compress_many(
    images: Sequence[ImageInput],
    model: str | Path | LoadedModel | None = None,
    device: str = "auto",
    tile: int | tuple[int, int] | None = None,
    progress: bool | ProgressFactory = False,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    method: str = "auto",
    strip: bool = False,
) -> list[bytes]:
    """Compress images (see ImageInput) to .nnc bytes (one file each)."""
    results = compress_detailed(
        images,
        model,
        device,
        tile,
        progress=_factory(progress),
        max_pixels=max_pixels,
        method=method,
        strip=strip,
    )
    return [r.data for r in results]


def compress(
    image: ImageInput,
    model: str | Path | LoadedModel | None = None,
    device: str = "auto",
    tile: int | tuple[int, int] | None = None,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    method: str = "auto",
    strip: bool = False,
) -> bytes:
    """Compress one image to the bytes of a .nnc file. ``image``: a Pillow image, a numpy
    array (HxW greyscale, HxWx3 RGB, HxWx4 RGBA; uint8 or uint16), a path (str or
    pathlib.Path) or the bytes of an image file; anything else raises TypeError."""
    one = _content(image, max_pixels, strip)  # here, so that a TypeError speaks of one image
    return compress_many([one], model, device, tile, method=method)[0]


@_memory_typed("decoding")
def decompress_detailed(
    blobs: Sequence[bytes | str | Path],
    model: str | Path | LoadedModel | None = None,
    device: str = "auto",
    progress: bool | ProgressFactory = False,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_batch: int | None = None,
    names: Sequence[str] | None = None,
) -> list[Decoded]:
    """Decode .nnc files (bytes, or paths to files) on ``device`` ("auto": CUDA if there
    is one), whatever device wrote them, to their header and Content. Model parts with
    the same model decode together, in batches of at most ``max_batch`` tiles. A header
    claiming more than ``max_pixels`` pixels (all frames; None: no limit but the format's)
    raises UnsupportedImageError before anything is decoded. ``names``: for messages."""
    parsed = _blob_list(blobs)
    if multidevice.is_multi(device) and not multidevice.is_cpu_pool(device):
        from .files import parse

        weights = [_claimed_samples(parse(b)) for b in parsed]
        return multidevice.run(
            device,
            parsed,
            weights,
            "decode",
            model,
            max_pixels=max_pixels,
            max_batch=max_batch,
            names=names,
        )
    given = load_model(model) if model is not None else None
    pool = _cpu_pool(device)
    dev = resolve_device("cpu" if pool is not None else device)
    with pool or contextlib.nullcontext():
        return decode_files(
            parsed, given, dev, max_batch, _factory(progress), max_pixels, names, pool
        )


def _claimed_samples(f: Any) -> int:
    h = f.header
    return h.width * h.height * max(1, getattr(h, "frames", 1))


def decompress_many(
    blobs: Sequence[bytes | str | Path],
    model: str | Path | LoadedModel | None = None,
    device: str = "auto",
    progress: bool | ProgressFactory = False,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    max_batch: int | None = None,
    names: Sequence[str] | None = None,
) -> list[Image.Image]:
    """decompress_detailed, each file as a Pillow image (see decompress)."""
    decoded = decompress_detailed(
        blobs, model, device, progress, max_pixels=max_pixels, max_batch=max_batch, names=names
    )
    return [_pil(d) for d in decoded]


def _pil(d: Decoded) -> Image.Image:
    if d.is_jpeg:
        import io

        im = Image.open(io.BytesIO(d.content.jpeg))
        im.load()
        return im
    return to_pil(d.content)


def decompress(
    data: bytes | str | Path,
    model: str | Path | LoadedModel | None = None,
    device: str = "auto",
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Decode one .nnc file (its bytes, or a path to it) to a Pillow image with the original
    pixels and mode (16-bit greyscale: mode I;16). Animations and 16-bit colour images do
    not fit a Pillow image: UnsupportedImageError, use decompress_content. A file that
    keeps a JPEG gives that JPEG, opened."""
    return decompress_many([_blob(data)], model, device, max_pixels=max_pixels)[0]


def decompress_content(
    data: bytes | str | Path,
    model: str | Path | LoadedModel | None = None,
    device: str = "auto",
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Content:
    """Decode one .nnc file to its Content: every frame's samples at their bit depth,
    durations, metadata (content.to_png writes it all as a PNG file)."""
    return decompress_detailed([_blob(data)], model, device, max_pixels=max_pixels)[0].content


@dataclass
class ScoreResult:
    """The model's cost of one image without coding: bits per subpixel, and per pixel."""

    bits_per_subpixel: float
    bits_map: np.ndarray  # (H, W) float32: bits of each pixel, channels summed
    subpixels: int  # height * width * coded channels (totals over many images weigh by it)
    model_name: str
    tile: tuple[int, int]


def iter_scores(
    images: Iterable[ImageInput],
    model: str | Path | LoadedModel | None = None,
    device: str = "auto",
    tile: int | tuple[int, int] | None = None,
    max_batch: int = 64,
) -> Iterator[ScoreResult]:
    """One parallel pass per image over the same tiles the coder would use (so the number
    predicts the coded size), in chunks of ``max_batch`` tiles; results as images come.
    Images: Pillow images, uint8 arrays or paths (see images.as_image)."""
    _not_one_image(images)
    dev = resolve_device(device)
    models: dict[int, LoadedModel] = {}  # by channels: load (and hash) each file once
    for im in images:
        pic = to_picture(im if isinstance(im, Image.Image) else as_image(im))
        if pic.channels not in models:
            models[pic.channels] = model_for(model, pic.channels, dev.type)
        lm = models[pic.channels]
        th, tw = model_tile(lm, tile)
        th, tw = min(th, pic.height), min(tw, pic.width)
        total, bmap = score_planes(lm, pic.planes, dev, (th, tw), max_batch)
        bmap = bmap.astype(np.float32)
        yield ScoreResult(total / pic.subpixels, bmap, pic.subpixels, lm.name, (th, tw))


@_memory_typed("scoring")
def score_detailed(
    images: Sequence[ImageInput],
    model: str | Path | LoadedModel | None = None,
    device: str = "auto",
    tile: int | tuple[int, int] | None = None,
    max_batch: int = 64,
) -> list[ScoreResult]:
    """``iter_scores`` as a list."""
    _not_one_image(images)
    return list(iter_scores(images, model, device, tile, max_batch))


def score(
    images: Sequence[ImageInput],
    model: str | Path | LoadedModel | None = None,
    device: str = "auto",
    tile: int | tuple[int, int] | None = None,
) -> list[float]:
    """The model's negative log-likelihood of each image in bits per subpixel (no coding)."""
    return [r.bits_per_subpixel for r in score_detailed(images, model, device, tile)]


@_memory_typed("sampling")
def sample(
    model: str | Path | LoadedModel,
    n: int,
    size: tuple[int, int] | None = None,
    device: str = "auto",
    seed: int = 0,
    progress: bool | ProgressFactory = False,
) -> list[Image.Image]:
    """Draw ``n`` images of ``size`` (h, w) from the model, pixel by pixel, with the same
    stepper and loop the coder uses."""
    factory = _tqdm_factory if progress is True else (progress or None)
    lm = load_model(model)
    h, w = size if size is not None else model_tile(lm)
    fixed = lm.model.fixed_tile
    if fixed is not None and (h, w) != tuple(fixed):
        raise UnsupportedImageError(f"model {lm.name!r} samples {fixed[0]}x{fixed[1]} images only")
    dev = resolve_device(device)
    rng = np.random.default_rng(seed)
    grid = TileGrid(h, w, h, w)
    jobs = [SampleJob(grid, rng) for _ in range(n)]
    net = lm.model.to(dev).eval()
    mode = "L" if net.channels == 1 else "RGB"
    bar = factory(h * w, "sample") if factory is not None else None
    with coding_context(dev, default_cpu_threads()):
        run_schedule(net, jobs, h, w, max(1, n), bar)
    return [Picture(job.tiles[0], mode).to_pil() for job in jobs]


def _tqdm_factory(total: int, label: str) -> Callable[[int], None]:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=label, unit="step", leave=False, mininterval=0.5)

    def update(k: int) -> None:
        bar.update(k)
        if bar.n >= total:
            bar.close()

    return update
