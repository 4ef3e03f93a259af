"""The Python API: compress and decompress images, score them, sample from a model.

    >>> from nncompress import api
    >>> data = api.compress(Image.open("photo.png"))       # bytes of a .nnc file
    >>> image = api.decompress(data)                         # identical pixels

Images may be given as Pillow images, uint8 numpy arrays (HxW, HxWx3, HxWx4) or paths; other
types raise TypeError. Images (and .nnc headers) with more than ``max_pixels`` pixels
(default: images.DEFAULT_MAX_PIXELS, Pillow's limit) are refused before any work.

Many images given together are coded in one schedule (their tiles share each batch step),
which is much faster on a GPU than one by one. Each image still gets its own file.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
import torch
from PIL import Image

from . import __version__, container
from .codec import (
    DecodeJob,
    EncodeJob,
    SampleJob,
    TileGrid,
    TileJob,
    chunk_ranges,
    plan_batches,
    run_schedule,
)
from .errors import (
    FormatError,
    IntegrityError,
    ModelMismatchError,
    UnsupportedImageError,
)
from .images import (
    DEFAULT_MAX_PIXELS,
    Picture,
    as_image,
    check_pixel_count,
    to_picture,
)
from .modelfile import LoadedModel
from .runtime import coding_context, default_cpu_threads, resolve_device
from .zoo import default_model_name
from .zoo import load_model as _zoo_load

DEFAULT_TILE = 32
# Most tiles per batch step: bounds the stepper's caches (memory; pixelcnnpp-photo needs
# ~3 MB per 32x32 tile). On a GPU a step costs about the same for 384 tiles as for 2048
# (measured on an H200: 2.3 vs 6.2 ms, the range coder taking most of the latter), so
# larger batches code many images faster; on a CPU the cost grows with the batch.
DEFAULT_MAX_BATCH = MappingProxyType({"cpu": 512, "cuda": 2048})
#: Tiles per coder stream (FORMAT.md: a chunk's tiles share one batch of the decoder, so
#: this is also the smallest batch a decoder needs; ~4 bytes of stream end per chunk).
CHUNK_TILES = 256

ProgressFactory = Callable[[int, str], Callable[[int], None]]  # (total steps, label) -> update
# What the entry points take as an image (see images.as_image).
ImageInput = Image.Image | np.ndarray | str | Path


def _not_one_image(images: object) -> None:
    """TypeError for one image given where a sequence is expected (an array or a path would
    otherwise be taken apart row by row or character by character)."""
    if isinstance(images, (Image.Image, np.ndarray, str, Path, bytes)):
        raise TypeError(
            f"expected a sequence of images, not one {type(images).__name__} "
            "(put it in a list, or use compress() for a single image)"
        )


def _image_list(images: object, max_pixels: int | None) -> list[Image.Image]:
    """A sequence of images (see ImageInput) as Pillow images."""
    _not_one_image(images)
    try:
        items = list(images)  # type: ignore[call-overload]
    except TypeError:
        raise TypeError(f"expected a sequence of images, not {type(images).__name__}") from None
    return [as_image(im, max_pixels) for im in items]


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


def load_model(name_or_path: str | Path | LoadedModel) -> LoadedModel:
    """A model by name (``nncompress models``), by path, or passed through if loaded."""
    if isinstance(name_or_path, LoadedModel):
        return name_or_path
    return _zoo_load(name_or_path)


def _model_for(
    model: str | Path | LoadedModel | None, channels: int, device_type: str = "cuda"
) -> LoadedModel:
    lm = load_model(model if model is not None else default_model_name(channels, device_type))
    if lm.model.channels != channels:
        kind = "greyscale" if channels == 1 else "colour"
        raise UnsupportedImageError(
            f"model {lm.name!r} codes {lm.model.channels}-channel images; "
            f"this {kind} image has {channels} (choose another --model)"
        )
    return lm


def model_tile(lm: LoadedModel, tile: int | tuple[int, int] | None = None) -> tuple[int, int]:
    """The tile size to code with: the model's fixed tile, else ``tile``, else the size the
    model was trained/evaluated for (its info), else DEFAULT_TILE."""
    fixed = lm.model.fixed_tile
    if tile is not None:
        th, tw = (tile, tile) if isinstance(tile, int) else tile
        if fixed is not None and (th, tw) != tuple(fixed):
            raise UnsupportedImageError(f"model {lm.name!r} codes {fixed[0]}x{fixed[1]} tiles only")
        if not (1 <= th <= container.MAX_TILE and 1 <= tw <= container.MAX_TILE):
            raise UnsupportedImageError(f"tile size must be 1..{container.MAX_TILE}")
        return th, tw
    if fixed is not None:
        return tuple(fixed)
    th, tw = lm.info.get("tile", (DEFAULT_TILE, DEFAULT_TILE))
    return int(th), int(tw)


def _progress_for(progress: ProgressFactory | None, steps: int, label: str):
    return progress(steps, label) if progress is not None else None


def _steps(jobs: Sequence[TileJob], max_batch: int, tile: tuple[int, int]) -> int:
    return len(plan_batches(jobs, max_batch)) * tile[0] * tile[1]


def _encoder_label(device: torch.device) -> str:
    """Informational: what wrote a file (not needed to decode it)."""
    return f"nncompress {__version__} {device.type}"[: container.MAX_ENCODER_BYTES]


@dataclass
class EncodeResult:
    """What compressing one image produced."""

    data: bytes  # the .nnc file
    header: container.Header
    subpixels: int
    info_bits: float  # -log2 p(x) under the coding PMFs: what the payload ideally costs

    @property
    def bits_per_subpixel(self) -> float:
        return 8 * len(self.data) / self.subpixels

    @property
    def model_bits_per_subpixel(self) -> float:
        return self.info_bits / self.subpixels


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
) -> list[EncodeResult]:
    """Compress images (Pillow images, uint8 arrays or paths); images needing the same
    model are coded in one schedule, in batches of at most ``max_batch`` tiles (default:
    DEFAULT_MAX_BATCH of the device). An image of more than ``max_pixels`` pixels (None:
    the format's limit only) raises UnsupportedImageError before any coding. ``verify``:
    decode every file just written and compare its pixels (IntegrityError if any differ)."""
    pictures = [to_picture(im) for im in _image_list(images, max_pixels)]
    dev = resolve_device(device)
    if max_batch is None:
        max_batch = DEFAULT_MAX_BATCH[dev.type]
    results: list[EncodeResult | None] = [None] * len(pictures)
    # One schedule per model: images of other channel counts use other default models.
    by_model: dict[bytes, tuple[LoadedModel, list[int]]] = {}
    models: dict[int, LoadedModel] = {}  # by channels: load (and hash) each file once
    for i, pic in enumerate(pictures):
        if pic.channels not in models:
            models[pic.channels] = _model_for(model, pic.channels, dev.type)
        lm = models[pic.channels]
        by_model.setdefault(lm.digest, (lm, []))[1].append(i)
    for lm, idx in by_model.values():
        group = _encode_group(lm, [pictures[i] for i in idx], dev, tile, max_batch, progress)
        if verify:
            _verify(lm, [pictures[i] for i in idx], group, dev, max_batch, progress)
        for i, res in zip(idx, group):
            results[i] = res
    return [r for r in results if r is not None]


def _verify(lm, pictures, results, dev, max_batch, progress) -> None:
    """Decode what was just encoded and compare pixels, as ``flac --verify`` does."""
    back = decompress_many(
        [r.data for r in results],
        lm,
        dev.type,
        progress or False,
        max_pixels=None,
        max_batch=max_batch,
    )
    for pic, im in zip(pictures, back, strict=True):
        if (
            im.mode != pic.mode
            or im.size != (pic.width, pic.height)
            or (im.tobytes() != pic.to_pil().tobytes())
        ):
            raise IntegrityError(
                "verification failed: the file just written does not decode to the image "
                "(a bug in nncompress: please report it)"
            )


def _encode_group(
    lm: LoadedModel,
    pictures: list[Picture],
    dev: torch.device,
    tile: int | tuple[int, int] | None,
    max_batch: int,
    progress: ProgressFactory | None,
) -> list[EncodeResult]:
    _require_integer(lm)
    th, tw = model_tile(lm, tile)
    per_image = []  # the jobs (chunks) of each picture
    for p in pictures:
        grid = _grid(p, th, tw)
        chunk = chunk_tiles(grid.tile_h, grid.tile_w, max_batch)
        tiles = grid.split(p.planes)
        ranges = chunk_ranges(grid.count, min(chunk, grid.count))
        per_image.append([EncodeJob(grid, r, tiles[r.start : r.stop]) for r in ranges])
    model = lm.model.to(dev).eval()
    _run_by_tile(model, [j for js in per_image for j in js], dev, max_batch, progress, "encode")
    out = []
    for chunks, pic in zip(per_image, pictures):
        canvas = chunks[0].grid.join(np.concatenate([j.tiles for j in chunks]))
        if not np.array_equal(canvas, pic.planes):
            raise IntegrityError("internal error: the encoder's canvas differs from the image")
        payload = container.join_streams([j.encoder.finish() for j in chunks])
        crc = _content_crc(pic)
        header = container.Header(
            model_name=lm.name,
            model_digest=lm.digest,
            mode=pic.mode,
            width=pic.width,
            height=pic.height,
            tile_h=chunks[0].grid.tile_h,
            tile_w=chunks[0].grid.tile_w,
            chunk_tiles=chunks[0].count,
            pixel_crc32=crc,
            payload_crc32=zlib.crc32(payload),
            encoder=_encoder_label(dev),
        )
        data = container.pack(header, payload)
        bits = sum(j.info_bits for j in chunks)
        out.append(EncodeResult(data, header, pic.subpixels, bits))
    return out


def _grid(pic: Picture, th: int, tw: int) -> TileGrid:
    """The tiles of a picture: a tile larger than the image would only add steps (and
    FORMAT.md does not allow it), so it is clamped to the image."""
    return TileGrid(pic.height, pic.width, min(th, pic.height), min(tw, pic.width))


def _run_by_tile(model, jobs: list[TileJob], dev, max_batch: int, progress, label: str) -> None:
    """run_schedule over ``jobs``, one schedule per tile size (a batch has one)."""
    by_tile: dict[tuple[int, int], list[TileJob]] = {}
    for j in jobs:
        by_tile.setdefault((j.grid.tile_h, j.grid.tile_w), []).append(j)
    steps = sum(_steps(js, max_batch, t) for t, js in by_tile.items())
    bar = _progress_for(progress, steps, label)
    with coding_context(dev, default_cpu_threads()):
        for (th, tw), js in by_tile.items():
            run_schedule(model, js, th, tw, max_batch, bar)


def chunk_tiles(tile_h: int, tile_w: int, max_batch: int) -> int:
    """Tiles per coder stream: CHUNK_TILES, fewer for small batches and wide tiles."""
    caps = (container.MAX_CHUNK_PIXELS // (tile_h * tile_w), container.MAX_CHUNK_COLUMNS // tile_w)
    return max(1, min(CHUNK_TILES, max_batch, *caps))


def _content_crc(pic: Picture) -> int:
    return container.content_crc32(pic.mode, pic.width, pic.height, 8, pic.to_pil().tobytes())


def _require_integer(lm: LoadedModel) -> None:
    """Format-4 files are coded with integer models only (their tables are the same on
    every machine); a float model's would decode only where they were made."""
    if not getattr(lm.model.distribution, "integer_tables", False):
        raise ModelMismatchError(
            f"model {lm.name!r} ({lm.family}) uses float arithmetic, whose files would decode "
            "only on the machine that wrote them; use an integer model (nncompress models "
            "lists them; `nncompress quantize` converts a trained PixelCNN++, MADE or histogram)"
        )


def compress_many(
    images: Sequence[ImageInput],
    model: str | Path | LoadedModel | None = None,
    device: str = "auto",
    tile: int | tuple[int, int] | None = None,
    progress: bool | ProgressFactory = False,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> list[bytes]:
    """Compress images (Pillow images, uint8 arrays or paths) to .nnc bytes (one file
    each), coded together in one schedule."""
    factory = _tqdm_factory if progress is True else (progress or None)
    results = compress_detailed(
        images, model, device, tile, progress=factory, max_pixels=max_pixels
    )
    return [r.data for r in results]


def compress(
    image: ImageInput,
    model: str | Path | LoadedModel | None = None,
    device: str = "auto",
    tile: int | tuple[int, int] | None = None,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> bytes:
    """Compress one image to the bytes of a .nnc file. ``image``: a Pillow image, a uint8
    numpy array (HxW greyscale, HxWx3 RGB, HxWx4 RGBA with opaque alpha) or a path (str or
    pathlib.Path) to an image file; anything else raises TypeError."""
    one = as_image(image, max_pixels)  # here, so that a TypeError speaks of one image
    return compress_many([one], model, device, tile, max_pixels=max_pixels)[0]


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
    """Decode .nnc files (bytes, or paths to files) on ``device`` ("auto": CUDA if there
    is one), whatever device wrote them. Files with the same model and tile size are
    decoded together, in batches of at most ``max_batch`` tiles. A header claiming more
    than ``max_pixels`` pixels (None: no limit but the format's) raises
    UnsupportedImageError before anything is decoded. ``names``: the files' names, for
    messages."""
    factory = _tqdm_factory if progress is True else (progress or None)
    parsed = [container.unpack(b) for b in _blob_list(blobs)]
    for h, _ in parsed:
        check_pixel_count(h.width, h.height, max_pixels)
    given = load_model(model) if model is not None else None
    dev = resolve_device(device)
    if max_batch is None:
        max_batch = DEFAULT_MAX_BATCH[dev.type]
    out: list[Image.Image | None] = [None] * len(parsed)
    # A tile's tables depend on nothing but the model and its own pixels: files sharing a
    # model decode together in any batches (one schedule per tile size), on any device.
    groups: dict[bytes, list[int]] = {}
    for i, (h, _) in enumerate(parsed):
        groups.setdefault(h.model_digest, []).append(i)
    for idx in groups.values():
        h0 = parsed[idx[0]][0]
        lm = _decode_model(h0, given)
        _require_integer(lm)
        per_file = []
        for i in idx:
            h, payload = parsed[i]
            _check_against(h, lm)
            grid = TileGrid(h.height, h.width, h.tile_h, h.tile_w)
            streams = container.split_streams(h, payload)
            ranges = chunk_ranges(grid.count, h.chunk_tiles)
            per_file.append([DecodeJob(grid, r, st) for r, st in zip(ranges, streams)])
        model_ = lm.model.to(dev).eval()
        _run_by_tile(model_, [j for js in per_file for j in js], dev, max_batch, factory, "decode")
        for i, chunks in zip(idx, per_file):
            h = parsed[i][0]
            planes = chunks[0].grid.join(np.concatenate([j.tiles for j in chunks]))
            image = Picture(planes, h.mode).to_pil()
            crc = container.content_crc32(h.mode, h.width, h.height, h.bit_depth, image.tobytes())
            if crc != h.pixel_crc32:
                raise IntegrityError(_crc_message(names[i] if names else None))
            out[i] = image
    return [im for im in out if im is not None]


def _crc_message(name: str | None) -> str:
    """The payload's own checksum matched, so the coding computation differed: a bug."""
    what = f"{name}: " if name else ""
    return (
        f"{what}decoded pixels do not match the stored checksum although the payload is "
        "intact: this is a bug in nncompress, please report it with the file"
    )


def _decode_model(h: container.Header, given: LoadedModel | None) -> LoadedModel:
    lm = given if given is not None else _zoo_load(h.model_name)
    _check_against(h, lm)
    return lm


def _check_against(h: container.Header, lm: LoadedModel) -> None:
    """The file's model digest and coded channels against the model's."""
    if lm.digest != h.model_digest:
        raise ModelMismatchError(
            f"file was encoded with model {h.model_name!r} (digest {h.model_digest.hex()[:12]}), "
            f"but model {lm.name!r} has digest {lm.digest.hex()[:12]}"
        )
    # The digest fixes the model, not the mode byte: a header claiming another channel
    # count would otherwise fail inside Pillow with an untyped error.
    if lm.model.channels != h.channels_coded:
        raise FormatError(
            f"file says mode {h.mode} ({h.channels_coded} coded channels), but its model "
            f"{lm.name!r} codes {lm.model.channels} (damaged or forged header)"
        )


def decompress(
    data: bytes | str | Path,
    model: str | Path | LoadedModel | None = None,
    device: str = "auto",
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Decode one .nnc file (its bytes, or a path to it) to a Pillow image with the original
    pixels and mode."""
    return decompress_many([_blob(data)], model, device, max_pixels=max_pixels)[0]


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
            models[pic.channels] = _model_for(model, pic.channels, dev.type)
        lm = models[pic.channels]
        th, tw = model_tile(lm, tile)
        grid = _grid(pic, th, tw)
        th, tw = grid.tile_h, grid.tile_w
        net = lm.model.to(dev).eval()
        tiles = torch.from_numpy(grid.split(pic.planes, net.padding))
        bits = []
        with torch.no_grad():
            for s in range(0, len(tiles), max_batch):
                lp = net.log_prob(tiles[s : s + max_batch].to(dev))  # (b, C, th, tw) nats
                bits.append((-lp.sum(1) / math.log(2)).float().cpu())
        bmap = grid.join(torch.cat(bits).unsqueeze(1).numpy())[0]
        yield ScoreResult(float(bmap.sum() / pic.subpixels), bmap, pic.subpixels, lm.name, (th, tw))


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
    with coding_context(dev, default_cpu_threads()):
        run_schedule(net, jobs, h, w, max(1, n), _progress_for(factory, h * w, "sample"))
    return [Picture(job.tiles[0], mode).to_pil() for job in jobs]


def _tqdm_factory(total: int, label: str) -> Callable[[int], None]:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=label, unit="step", leave=False, mininterval=0.5)

    def update(k: int) -> None:
        bar.update(k)
        if bar.n >= total:
            bar.close()

    return update
