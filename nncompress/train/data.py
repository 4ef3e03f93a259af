"""Training data: images held in memory as uint8, random crops cut on the model's device,
and validation over the independent tiles the coder codes.

Sources are folders (searched recursively for image files), single image files, and .npz
arrays (key ``images``: (N, H, W) or (N, H, W, C) uint8; ``FILE.npz[a:b]`` takes a slice).
Every image becomes planes (C, H, W) uint8 with the coder's mode rules
(:func:`nncompress.images.to_picture`), then is matched to the model's channel count.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..codec import TileGrid
from ..errors import NncError
from ..images import IMAGE_SUFFIXES, files_below, open_image, to_picture
from ..models.base import LikelihoodModel

NPZ_SUFFIX = ".npz"
NPZ_KEY = "images"
# "FILE.npz[a:b]": a slice of the arrays in FILE.npz (e.g. MNIST's first 4500 for training).
_NPZ_SLICE = re.compile(r"^(?P<path>.+\.npz)\[(?P<start>-?\d*):(?P<stop>-?\d*)\]$")
# What to do with an image whose channel count differs from the model's.
MISMATCH_POLICIES = ("error", "convert", "skip")
# What to do with an image smaller than the crop: replicate its edges, or leave it out.
SMALL_POLICIES = ("pad", "skip")
# The held-out split does not depend on the training seed, so runs with different seeds
# are validated on the same images and their numbers compare.
SPLIT_SEED = 20261122
MAX_LOAD_WORKERS = 8  # Pillow decodes outside the GIL: threads speed up loading folders
LN2 = math.log(2.0)


class DataError(NncError):
    """Training data is missing, unreadable or does not fit the model."""


@dataclass
class ImageSet:
    """images: list of (C, H, W) uint8 arrays; names: where each came from;
    notes: one line per thing worth telling the user (conversions, skipped files)."""

    images: list[np.ndarray]
    names: list[str]
    sources: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def subpixels(self) -> int:
        return int(sum(im.size for im in self.images))

    def describe(self) -> str:
        """One line: count, megapixels, channels, sources."""
        mp = sum(im.shape[1] * im.shape[2] for im in self.images) / 1e6
        ch = self.images[0].shape[0] if self.images else 0
        return f"{len(self)} images, {mp:.2f} MP, {ch} channel(s), from {', '.join(self.sources)}"

    def subset(self, indices: Sequence[int], sources: list[str] | None = None) -> ImageSet:
        return ImageSet(
            [self.images[i] for i in indices],
            [self.names[i] for i in indices],
            list(self.sources if sources is None else sources),
        )


def load_images(sources: Sequence[str | Path], channels: int, mismatch: str = "error") -> ImageSet:
    """Load every image of ``sources`` as (channels, H, W) uint8 planes.

    mismatch: "error" (DataError naming the file), "convert" (grey <-> colour through
    Pillow's luma), or "skip" — for images whose channel count differs from ``channels``
    and for images the coder cannot code (16-bit, transparent). DataError when nothing is found.
    """
    if mismatch not in MISMATCH_POLICIES:
        raise DataError(
            f"unknown mismatch policy {mismatch!r} (use {', '.join(MISMATCH_POLICIES)})"
        )
    out = ImageSet([], [], [str(s) for s in sources])
    ignored = 0
    files: list[Path] = []
    for src in sources:
        text = str(src)
        m = _NPZ_SLICE.match(text)
        path = Path(m["path"] if m and not Path(text).exists() else text)
        if path.is_dir():
            found, skipped = files_below(path, IMAGE_SUFFIXES)
            if not found:
                raise DataError(f"{path}: no image files found ({_suffix_list()})")
            files.extend(found)
            ignored += skipped
        elif path.suffix.lower() == NPZ_SUFFIX and path.is_file():
            _flush_files(files, channels, mismatch, out)
            files = []
            window = slice(_int_or_none(m["start"]), _int_or_none(m["stop"])) if m else slice(None)
            _load_npz(path, window, text, channels, mismatch, out)
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"{text}: no such file or folder")
    _flush_files(files, channels, mismatch, out)
    if ignored:
        out.notes.append(f"ignored {ignored} file(s) that are not images ({_suffix_list()})")
    if not out.images:
        raise DataError(f"no usable images in {', '.join(out.sources)}")
    return out


def _suffix_list() -> str:
    return " ".join(sorted(IMAGE_SUFFIXES))


def _int_or_none(text: str) -> int | None:
    return int(text) if text else None


def _flush_files(files: list[Path], channels: int, mismatch: str, out: ImageSet) -> None:
    """Decode ``files`` in parallel threads, then apply the policies in file order (so the
    first error reported does not depend on thread timing)."""
    if not files:
        return
    workers = max(1, min(MAX_LOAD_WORKERS, os.cpu_count() or 1, len(files)))
    with ThreadPoolExecutor(workers) as pool:
        decoded = list(pool.map(_decode_file, files))
    converted, skipped = [], []
    for path, (planes, problem) in zip(files, decoded, strict=True):
        if problem is not None:
            if problem.startswith("unreadable"):
                raise DataError(f"{path}: {problem}")
            if mismatch != "skip":
                raise DataError(f"{path}: {problem} (--mismatch skip leaves such images out)")
            skipped.append(path.name)
            continue
        planes = _match_channels(planes, channels, mismatch, str(path), converted, skipped)
        if planes is not None:
            out.images.append(planes)
            out.names.append(str(path))
    _note(out, converted, skipped, channels)


def _decode_file(path: Path) -> tuple[np.ndarray | None, str | None]:
    """(planes (C, H, W) uint8, None) or (None, why not)."""
    try:
        image = open_image(path)
    except NncError as e:
        return None, f"unreadable ({e})"
    try:
        return to_picture(image).planes, None
    except NncError as e:
        return None, str(e)


def _match_channels(
    planes: np.ndarray,
    channels: int,
    mismatch: str,
    name: str,
    converted: list[str],
    skipped: list[str],
) -> np.ndarray | None:
    """planes (C, H, W) uint8 -> (channels, H, W) uint8, or None if skipped."""
    have = planes.shape[0]
    if have == channels:
        return planes
    if mismatch == "error":
        raise DataError(
            f"{name}: has {have} channel(s), the model codes {channels} "
            "(use --mismatch convert or --mismatch skip)"
        )
    if mismatch == "skip":
        skipped.append(Path(name).name)
        return None
    converted.append(Path(name).name)
    if channels == 3:
        return np.ascontiguousarray(np.repeat(planes[:1], 3, axis=0))
    from PIL import Image

    grey = Image.fromarray(np.ascontiguousarray(planes.transpose(1, 2, 0)), "RGB").convert("L")
    return np.asarray(grey, dtype=np.uint8)[None].copy()


def _note(out: ImageSet, converted: list[str], skipped: list[str], channels: int) -> None:
    def few(names: list[str]) -> str:
        return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")

    kind = "colour" if channels == 3 else "greyscale"
    if converted:
        out.notes.append(f"converted {len(converted)} image(s) to {kind}: {few(converted)}")
    if skipped:
        out.notes.append(f"skipped {len(skipped)} image(s) that do not fit: {few(skipped)}")


def _load_npz(
    path: Path, window: slice, label: str, channels: int, mismatch: str, out: ImageSet
) -> None:
    try:
        with np.load(path, allow_pickle=False) as z:
            if NPZ_KEY not in z:
                raise DataError(f"{path}: no array named {NPZ_KEY!r} (has: {', '.join(z.files)})")
            arr = z[NPZ_KEY][window]
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from None
    if arr.dtype != np.uint8:
        raise DataError(f"{path}: {NPZ_KEY!r} has dtype {arr.dtype}, expected uint8")
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[3] not in (1, 3) or arr.shape[0] == 0:
        raise DataError(
            f"{label}: {NPZ_KEY!r} has shape {arr.shape}, expected (N, H, W) or (N, H, W, C) "
            "with N >= 1 and C in {1, 3}"
        )
    converted: list[str] = []
    skipped: list[str] = []
    planes_all = arr.transpose(0, 3, 1, 2)  # (N, C, H, W)
    for i, planes in enumerate(planes_all):
        name = f"{label}#{i}"
        kept = _match_channels(planes, channels, mismatch, name, converted, skipped)
        if kept is not None:
            out.images.append(np.ascontiguousarray(kept))
            out.names.append(name)
    if converted or skipped:
        _note(
            out,
            [f"{len(converted)} arrays of {label}"] if converted else [],
            [f"{len(skipped)} arrays of {label}"] if skipped else [],
            channels,
        )


def split_holdout(images: ImageSet, fraction: float) -> tuple[ImageSet, ImageSet]:
    """Hold out ``fraction`` of the images (at least one, at most all but one), chosen by a
    fixed seed. Returns (train, held-out)."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"validation fraction must be between 0 and 1, got {fraction}")
    n = len(images)
    if n < 2:
        raise DataError("need at least 2 images to hold some out for validation (or use --val)")
    k = min(n - 1, max(1, round(fraction * n)))
    order = np.random.default_rng(SPLIT_SEED).permutation(n)
    held = sorted(order[:k].tolist())
    kept = sorted(order[k:].tolist())
    what = f"{fraction:g} of {', '.join(images.sources)}"
    return images.subset(kept, [f"{1 - fraction:g} of {', '.join(images.sources)}"]), images.subset(
        held, [what]
    )


class CropSampler:
    """Random ``crop x crop`` crops (and horizontal flips) of images held in ``device`` memory.

    All images live in one flat uint8 buffer; a batch of crops is one gather with computed
    indices, so cutting crops costs a few kernels on the GPU, not a Python loop per crop.
    Images are drawn in proportion to their area (every pixel about equally likely).
    Images smaller than the crop are edge-padded ("pad", as the coder pads edge tiles) or
    left out ("skip").
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        crop: int,
        device: torch.device | str = "cpu",
        *,
        small: str = "pad",
        flip: bool = True,
        seed: int = 0,
    ) -> None:
        if small not in SMALL_POLICIES:
            raise DataError(f"unknown policy for small images {small!r} (use pad or skip)")
        if crop < 1:
            raise DataError(f"crop size must be >= 1, got {crop}")
        device = torch.device(device)
        small_ones = [im for im in images if im.shape[1] < crop or im.shape[2] < crop]
        if small == "skip":
            images = [im for im in images if im.shape[1] >= crop and im.shape[2] >= crop]
            if not images:
                raise DataError(f"every training image is smaller than the {crop}x{crop} crop")
        if not images:
            raise DataError("no training images")
        channels = {im.shape[0] for im in images}
        if len(channels) != 1:
            raise DataError(f"images have different channel counts: {sorted(channels)}")
        self.crop = crop
        self.channels = channels.pop()
        self.flip = flip
        self.device = device
        self.small_count = len(small_ones)
        self.small_policy = small
        sizes = np.array([im.shape[1:] for im in images], dtype=np.int64)  # (N, 2) H, W
        areas = sizes[:, 0] * sizes[:, 1]
        offsets = np.concatenate([[0], np.cumsum(areas * self.channels)[:-1]])
        flat = np.concatenate([im.reshape(-1) for im in images])
        self._buffer = torch.from_numpy(flat).to(device)  # (sum C*H*W,) uint8
        self._h = torch.from_numpy(sizes[:, 0]).to(device)
        self._w = torch.from_numpy(sizes[:, 1]).to(device)
        self._offset = torch.from_numpy(offsets).to(device)
        self._weight = torch.from_numpy(areas.astype(np.float64)).to(device)
        self._steps = torch.arange(crop, device=device)
        self._chan = torch.arange(self.channels, device=device)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    def __len__(self) -> int:
        return len(self._h)

    def sample(self, n: int) -> torch.Tensor:
        """(n, C, crop, crop) uint8 on the sampler's device."""
        g, dev, t = self.generator, self.device, self.crop
        idx = torch.multinomial(self._weight, n, replacement=True, generator=g)  # (n,)
        h, w = self._h[idx], self._w[idx]
        y0 = _uniform_below((h - t + 1).clamp_min(1), g, dev)  # top-left corner, (n,)
        x0 = _uniform_below((w - t + 1).clamp_min(1), g, dev)
        ys = torch.minimum(y0[:, None] + self._steps, h[:, None] - 1)  # (n, t); clamp = edge pad
        xs = torch.minimum(x0[:, None] + self._steps, w[:, None] - 1)
        if self.flip:
            flipped = torch.rand(n, generator=g, device=dev) < 0.5
            xs = torch.where(flipped[:, None], xs.flip(1), xs)
        plane = (h * w)[:, None, None, None]
        index = (
            self._offset[idx, None, None, None]
            + self._chan[None, :, None, None] * plane
            + ys[:, None, :, None] * w[:, None, None, None]
            + xs[:, None, None, :]
        )  # (n, C, t, t) int64 into the flat buffer
        return self._buffer[index]

    def describe(self) -> str:
        if not self.small_count:
            return f"{len(self)} images, random {self.crop}x{self.crop} crops"
        what = "edge-padded" if self.small_policy == "pad" else "left out"
        return (
            f"{len(self)} images, random {self.crop}x{self.crop} crops "
            f"({self.small_count} smaller than the crop {what})"
        )


def _uniform_below(bound: torch.Tensor, g: torch.Generator, device: torch.device) -> torch.Tensor:
    """bound: (n,) int64 >= 1 -> (n,) int64 uniform in [0, bound)."""
    u = torch.rand(bound.shape, generator=g, device=device, dtype=torch.float64)
    # float rounding can give u * bound == bound for the largest u: clamp.
    return torch.minimum((u * bound).long(), bound - 1)


@dataclass
class ValTiles:
    """Held-out images cut into independent tiles, as the coder cuts them.

    x: (N, C, T, T) uint8, padded the way the coder pads; valid: (N, 1, T, T) bool, False on
    padding (never coded, so never counted)."""

    x: torch.Tensor
    valid: torch.Tensor
    tile: int
    description: str

    @property
    def subpixels(self) -> int:
        return int(self.valid.sum()) * self.x.shape[1]

    def to(self, device: torch.device | str) -> ValTiles:
        return ValTiles(self.x.to(device), self.valid.to(device), self.tile, self.description)


def make_val_tiles(images: ImageSet, tile: int, padding: str = "edge") -> ValTiles:
    """Cut every image into ``tile x tile`` tiles (edge tiles padded with ``padding``)."""
    if tile < 1:
        raise DataError(f"validation tile size must be >= 1, got {tile}")
    xs, valid = [], []
    for planes in images.images:
        grid = TileGrid(planes.shape[1], planes.shape[2], tile, tile)
        xs.append(grid.split(planes, padding))
        ext = grid.extents()  # (count, 2) valid height, width of each tile
        r = np.arange(tile)
        valid.append(
            (r[None, :, None] < ext[:, 0, None, None]) & (r[None, None, :] < ext[:, 1, None, None])
        )
    x = torch.from_numpy(np.concatenate(xs))
    v = torch.from_numpy(np.concatenate(valid))[:, None]
    return ValTiles(x, v, tile, f"{images.describe()}, {tile}x{tile} tiles")


@torch.no_grad()
def evaluate_bpd(
    model: LikelihoodModel,
    tiles: ValTiles,
    batch: int,
    autocast: torch.dtype | None = None,
    rank: int = 0,
    world: int = 1,
) -> float:
    """Mean negative log-likelihood in bits per subpixel over the valid positions of
    ``tiles`` (which must be on the model's device). With ``world`` > 1 each rank scores
    tiles rank, rank + world, ... and the sums are all-reduced: every rank gets the result."""
    device = tiles.x.device
    total = torch.zeros(2, dtype=torch.float64, device=device)  # nats, counted subpixels
    mine = torch.arange(rank, len(tiles.x), world, device=device)
    was_training = model.training
    model.eval()
    try:
        for s in range(0, len(mine), batch):
            sel = mine[s : s + batch]
            x, v = tiles.x[sel], tiles.valid[sel]
            with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                lp = model.log_prob(x)  # (b, C, T, T) nats
            total[0] -= (lp.double() * v).sum()
            total[1] += v.sum() * x.shape[1]
    finally:
        model.train(was_training)
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(total)
    return float(total[0] / total[1].clamp_min(1) / LN2)
