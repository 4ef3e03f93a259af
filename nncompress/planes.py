"""Model coding of 8-bit planes: the learned model's side of a file.

A *model part* (container.file.ModelPart) codes the colour planes of one frame — L (one
plane) or RGB (three) — cut into tiles and chunks (codec.py). Greyscale planes may be coded
by an RGB model: each pixel's red channel is coded with the model's red distribution, its
green and blue set equal to it (FORMAT.md, "Greyscale through an RGB model"), so a grey
photo gets the photo model, not a digit model.

Every model part of every image in a call that uses the same model is coded in one schedule
(their tiles share each batch step), which is what makes a GPU fast.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np
import torch

from . import container
from .codec import (
    DecodeJob,
    EncodeJob,
    TileGrid,
    TileJob,
    chunk_ranges,
    plan_batches,
    run_schedule,
)
from .container.file import ModelPart, pack_model_part
from .errors import FormatError, ModelMismatchError, UnsupportedImageError
from .modelfile import LoadedModel
from .runtime import coding_context, default_cpu_threads
from .zoo import default_model_name
from .zoo import load_model as _zoo_load

if TYPE_CHECKING:
    from .multidevice import ChunkPool

DEFAULT_TILE = 32
# Most tiles per batch step: bounds the stepper's caches (memory; pixelcnnpp-photo needs
# ~3 MB per 32x32 tile). On a GPU a step costs about the same for 384 tiles as for 2048
# (measured on an H200: 2.3 vs 6.2 ms, the range coder taking most of the latter), so
# larger batches code many images faster; on a CPU the cost grows with the batch.
DEFAULT_MAX_BATCH = MappingProxyType({"cpu": 512, "cuda": 2048})
#: Most tiles per coder stream (FORMAT.md: a chunk's tiles share one batch of the decoder, so
#: this is also the smallest batch a decoder needs; ~4 bytes of stream end per chunk).
CHUNK_TILES = 256
#: Chunks are the unit that ``cpu:N`` spreads over processes, so an image of at least
#: MIN_CHUNKS * MIN_CHUNK_TILES tiles gets at least MIN_CHUNKS chunks (a 768x512 photo in
#: 32x32 tiles: 8 x 48 tiles instead of 2 x 192). Measured here: ~5 bytes per extra chunk
#: (0.01% of that photo's file), and ~5 us of coder call per chunk and channel at every
#: step, noise on a CPU but felt by a GPU's host loop if chunks were much smaller.
MIN_CHUNKS = 8
MIN_CHUNK_TILES = 32

ProgressFactory = Callable[[int, str], Callable[[int], None]]  # (total steps, label) -> update


def load_model(name_or_path: str | Path | LoadedModel) -> LoadedModel:
    """A model by name (``nncompress models``), by path, or passed through if loaded."""
    if isinstance(name_or_path, LoadedModel):
        return name_or_path
    return _zoo_load(name_or_path)


def codes(lm: LoadedModel, channels: int) -> bool:
    """Whether ``lm`` codes planes of ``channels`` (1: also an RGB model, see above)."""
    return lm.model.channels == channels or (channels == 1 and lm.model.channels == 3)


def model_for(
    model: str | Path | LoadedModel | None, channels: int, device_type: str = "cuda"
) -> LoadedModel:
    """The model that codes ``channels`` planes: ``model``, else the default one."""
    lm = load_model(model if model is not None else default_model_name(channels, device_type))
    if not codes(lm, channels):
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


def require_integer(lm: LoadedModel) -> None:
    """Files are coded with integer models only (their tables are the same on every
    machine); a float model's would decode only where they were made."""
    if not getattr(lm.model.distribution, "integer_tables", False):
        raise ModelMismatchError(
            f"model {lm.name!r} ({lm.family}) uses float arithmetic, whose files would decode "
            "only on the machine that wrote them; use an integer model (nncompress models "
            "lists them; `nncompress quantize` converts a trained PixelCNN++, MADE or histogram)"
        )


def grid_for(height: int, width: int, th: int, tw: int) -> TileGrid:
    """The tiles of planes: a tile larger than the image would only add steps (and
    FORMAT.md does not allow it), so it is clamped to the image."""
    return TileGrid(height, width, min(th, height), min(tw, width))


def chunk_tiles(count: int, tile_h: int, tile_w: int, max_batch: int) -> int:
    """Tiles per coder stream of an image of ``count`` tiles (FORMAT.md, "Chunks and
    streams"): the fewest chunks of at most CHUNK_TILES (fewer for small batches and wide
    tiles), at least MIN_CHUNKS of at least MIN_CHUNK_TILES where the image has the tiles,
    and the tiles spread evenly over them. A function of the geometry (and of an explicit
    ``max_batch``) only, never of the machine or the worker count: the same image gives
    the same file everywhere."""
    caps = (container.MAX_CHUNK_PIXELS // (tile_h * tile_w), container.MAX_CHUNK_COLUMNS // tile_w)
    cap = max(1, min(CHUNK_TILES, max_batch, *caps))
    chunks = max(math.ceil(count / cap), min(MIN_CHUNKS, count // MIN_CHUNK_TILES), 1)
    return max(1, math.ceil(count / chunks))


def _replicated(planes: np.ndarray, model_channels: int) -> np.ndarray:
    """Grey planes (1, H, W) for an RGB model: (3, H, W) with G = B = R."""
    if planes.shape[0] == model_channels:
        return planes
    return np.ascontiguousarray(np.broadcast_to(planes, (model_channels,) + planes.shape[1:]))


def _by_tile(jobs: Sequence[TileJob]) -> dict[tuple[int, int], list[TileJob]]:
    by_tile: dict[tuple[int, int], list[TileJob]] = {}
    for j in jobs:
        by_tile.setdefault((j.grid.tile_h, j.grid.tile_w), []).append(j)
    return by_tile


def schedule_steps(jobs: Sequence[TileJob], max_batch: int) -> int:
    """Steps of run_jobs over ``jobs`` (its progress total)."""
    return sum(len(plan_batches(js, max_batch)) * t[0] * t[1] for t, js in _by_tile(jobs).items())


def run_jobs(model, jobs: list[TileJob], dev, max_batch: int, progress, label: str,
             replicate: bool = False) -> None:
    """run_schedule over ``jobs``, one schedule per tile size (a batch has one)."""
    steps = schedule_steps(jobs, max_batch)
    bar = progress(steps, label) if progress is not None and steps else None
    with coding_context(dev, default_cpu_threads()):
        for (th, tw), js in _by_tile(jobs).items():
            run_schedule(model, js, th, tw, max_batch, bar, replicate=replicate)


def _run_model_jobs(lm: LoadedModel, jobs: list[TileJob], dev, max_batch: int, progress,
                    label: str, replicate: bool, pool: ChunkPool | None) -> None:
    """run_jobs here, or over the worker processes of ``pool`` (cpu:N)."""
    if pool is not None:
        pool.run_jobs(lm, jobs, max_batch, progress, label, replicate)
    else:
        run_jobs(lm.model.to(dev).eval(), jobs, dev, max_batch, progress, label, replicate)


@dataclass
class Coded:
    """One model part as coded: its bytes and the model's information content."""

    data: bytes
    info_bits: float


def encode_planes(
    lm: LoadedModel,
    planes: Sequence[np.ndarray],
    dev: torch.device,
    tile: int | tuple[int, int] | None,
    max_batch: int,
    progress: ProgressFactory | None,
    pool: ChunkPool | None = None,
) -> list[Coded]:
    """Model parts of ``planes`` ((C, H, W) uint8 each, C the same for all), coded in one
    schedule per kind (grey-through-RGB planes in their own); ``pool``: its chunks over
    those CPU worker processes (cpu:N)."""
    require_integer(lm)
    th, tw = model_tile(lm, tile)
    out: list[Coded | None] = [None] * len(planes)
    for replicate in (False, True):
        idx = [i for i, p in enumerate(planes) if (p.shape[0] != lm.model.channels) == replicate]
        if not idx:
            continue
        per_image = []
        for i in idx:
            p = planes[i]
            grid = grid_for(p.shape[1], p.shape[2], th, tw)
            chunk = chunk_tiles(grid.count, grid.tile_h, grid.tile_w, max_batch)
            tiles = grid.split(_replicated(p, lm.model.channels))
            ranges = chunk_ranges(grid.count, chunk)
            per_image.append([EncodeJob(grid, r, tiles[r.start : r.stop]) for r in ranges])
        jobs = [j for js in per_image for j in js]
        _run_model_jobs(lm, jobs, dev, max_batch, progress, "encode", replicate, pool)
        for i, chunks in zip(idx, per_image):
            canvas = chunks[0].grid.join(np.concatenate([j.tiles for j in chunks]))
            if not np.array_equal(canvas[: planes[i].shape[0]], planes[i]):
                raise RuntimeError("internal error: the encoder's canvas differs from the image")
            part = ModelPart(
                lm.name,
                lm.digest,
                chunks[0].grid.tile_h,
                chunks[0].grid.tile_w,
                chunks[0].count,
                container.join_streams([j.finish() for j in chunks]),
            )
            out[i] = Coded(pack_model_part(part), sum(j.info_bits for j in chunks))
    return [c for c in out if c is not None]


def score_planes(
    lm: LoadedModel,
    planes: np.ndarray,
    dev: torch.device,
    tile: int | tuple[int, int] | None,
    max_batch: int = 64,
    every: int = 1,
) -> tuple[float, np.ndarray]:
    """The model's information content of ``planes`` (C, H, W) in bits, over the same
    tiles the coder would use, by one parallel pass (no coding), and the (H, W) map of
    bits per pixel. (Float models score too: their numbers are for comparison only.)
    ``every`` > 1: only every such tile is scored and the total extrapolated by pixel
    count (an estimate; the map then holds zeros elsewhere)."""
    th, tw = model_tile(lm, tile)
    grid = grid_for(planes.shape[1], planes.shape[2], th, tw)
    net = lm.model.to(dev).eval()
    grey = planes.shape[0] != net.channels
    tiles = torch.from_numpy(grid.split(_replicated(planes, net.channels), net.padding))
    keep = torch.arange(0, len(tiles), every)
    bits = []  # (b, th, tw) bits of each scored tile, padding included
    with torch.no_grad(), coding_context(dev, default_cpu_threads()):
        for s in range(0, len(keep), max_batch):
            lp = net.log_prob(tiles[keep[s : s + max_batch]].to(dev))  # (b, C, th, tw) nats
            lp = lp[:, :1] if grey else lp
            bits.append((-lp.sum(1) / math.log(2)).double().cpu())
    tile_bits = torch.cat(bits)
    if every == 1:
        bmap = grid.join(tile_bits.unsqueeze(1).numpy())[0]
        return float(bmap.sum()), bmap
    ext = grid.extents()[keep.numpy()]
    total = sum(float(t[:h, :w].sum()) for t, (h, w) in zip(tile_bits, ext))
    pixels = int((ext[:, 0] * ext[:, 1]).sum())
    return total * planes.shape[1] * planes.shape[2] / pixels, np.zeros(planes.shape[1:])


@dataclass
class PendingDecode:
    """A model part waiting for its schedule: its jobs, then its planes."""

    header: container.Header
    jobs: list[DecodeJob]
    channels: int

    def planes(self) -> np.ndarray:
        canvas = self.jobs[0].grid.join(np.concatenate([j.tiles for j in self.jobs]))
        return np.ascontiguousarray(canvas[: self.channels])


def check_against(h: container.Header, lm: LoadedModel) -> None:
    """A model part's model digest and planes against the model's."""
    if lm.digest != h.model_digest:
        raise ModelMismatchError(
            f"file was encoded with model {h.model_name!r} (digest {h.model_digest.hex()[:12]}), "
            f"but model {lm.name!r} has digest {lm.digest.hex()[:12]}"
        )
    if not codes(lm, h.channels_coded):
        raise FormatError(
            f"file says mode {h.mode} ({h.channels_coded} coded channels), but its model "
            f"{lm.name!r} codes {lm.model.channels} (damaged or forged header)"
        )


def decode_parts(
    parts: Sequence[tuple[container.Header, bytes]],
    given: LoadedModel | None,
    dev: torch.device,
    max_batch: int,
    progress: ProgressFactory | None,
    pool: ChunkPool | None = None,
) -> list[np.ndarray]:
    """The planes of model parts ((format-4 header, stream payload) each): parts sharing a
    model decode together, in any batches, on any device (``pool``: their chunks over
    those CPU worker processes)."""
    out: list[np.ndarray | None] = [None] * len(parts)
    groups: dict[tuple[bytes, bool], list[int]] = {}
    models: dict[bytes, LoadedModel] = {}
    for i, (h, _) in enumerate(parts):
        if h.model_digest not in models:
            models[h.model_digest] = given if given is not None else _zoo_load(h.model_name)
        lm = models[h.model_digest]
        check_against(h, lm)
        require_integer(lm)
        groups.setdefault((h.model_digest, h.channels_coded != lm.model.channels), []).append(i)
    for (digest, replicate), idx in groups.items():
        lm = models[digest]
        pending = []
        for i in idx:
            h, payload = parts[i]
            grid = TileGrid(h.height, h.width, h.tile_h, h.tile_w)
            streams = container.split_streams(h, payload)
            ranges = chunk_ranges(grid.count, h.chunk_tiles)
            jobs = [DecodeJob(grid, r, st) for r, st in zip(ranges, streams)]
            pending.append(PendingDecode(h, jobs, h.channels_coded))
        jobs = [j for p in pending for j in p.jobs]
        _run_model_jobs(lm, jobs, dev, max_batch, progress, "decode", replicate, pool)
        for i, p in zip(idx, pending):
            out[i] = p.planes()
    return [p for p in out if p is not None]
