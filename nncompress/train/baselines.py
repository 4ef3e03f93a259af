"""Fit the histogram (order-0) baselines and write them with their cards.

``python -m nncompress.train.baselines`` writes ``pretrained/histogram-photo`` (RGB value
frequencies of the training photos, scored on photos/val) and ``pretrained/histogram-mnist``
(grey value frequencies of the 4,500 training digits, scored on the 500 held-out ones).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
from PIL import Image

from ..distributions import NUM_SYMBOLS
from ..modelfile import save_model
from ..models.histogram import PSEUDO_COUNT, HistogramConfig, HistogramModel
from .made import DEFAULT_MNIST, HELD_OUT_COUNT, TRAIN_COUNT, load_mnist, png_bits_per_subpixel

_REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PHOTOS_TRAIN = Path.home() / "photos" / "train"
DEFAULT_PHOTOS_VAL = _REPO_ROOT.parent / "shared" / "data" / "photos" / "val"
DEFAULT_OUT_DIR = _REPO_ROOT / "pretrained"
PHOTO_SUFFIX = ".webp"
PHOTO_TILE = [64, 64]
MNIST_TILE = [28, 28]


def photo_arrays(folder: Path) -> Iterator[np.ndarray]:
    """Every *.webp of ``folder`` (sorted) as a (3, H, W) uint8 RGB array."""
    files = sorted(folder.glob(f"*{PHOTO_SUFFIX}"))
    if not files:
        raise FileNotFoundError(f"no {PHOTO_SUFFIX} photos in {folder}")
    for path in files:
        with Image.open(path) as img:
            yield np.asarray(img.convert("RGB")).transpose(2, 0, 1)


def value_counts(images: Iterator[np.ndarray] | list[np.ndarray], channels: int) -> np.ndarray:
    """images: (C, H, W) uint8 arrays -> (C, 256) int64 counts of every value per channel."""
    counts = np.zeros((channels, NUM_SYMBOLS), dtype=np.int64)
    for planes in images:
        for c in range(channels):
            counts[c] += np.bincount(planes[c].ravel(), minlength=NUM_SYMBOLS)
    return counts


@torch.no_grad()
def histogram_bits(model: HistogramModel, counts: np.ndarray) -> float:
    """Model NLL in bits per subpixel of data with value ``counts`` (C, 256).

    The model is order 0, so the NLL of any set of images is its value counts dotted with
    the model's log-probabilities; these are read through the model's own distribution, as
    the coder reads them."""
    c = model.channels
    values = torch.arange(NUM_SYMBOLS, dtype=torch.uint8).view(1, 1, NUM_SYMBOLS, 1)
    logp = model.log_prob(values.expand(1, c, NUM_SYMBOLS, 1))  # (1, C, 256, 1) nats
    table = logp[0, :, :, 0].double().numpy()  # (C, 256)
    return float(-(counts * table).sum() / counts.sum() / math.log(2.0))


def fit_photo_histogram(
    train_dir: Path = DEFAULT_PHOTOS_TRAIN, val_dir: Path = DEFAULT_PHOTOS_VAL
) -> tuple[HistogramModel, dict[str, Any]]:
    """RGB histogram of the training photos, scored on the validation photos."""
    model = HistogramModel(HistogramConfig(channels=3))
    train = list(photo_arrays(train_dir))
    model.fit(train)
    train_counts = value_counts(train, 3)
    val_counts = value_counts(photo_arrays(val_dir), 3)
    info = {
        "data": f"{len(train)} training photos ({train_dir.name}/*{PHOTO_SUFFIX}, lossless "
        "RGB, built by shared/data/photos/recipe.sh), "
        f"{int(train_counts.sum()) // 3:,} pixels",
        "eval_data": f"photos/val: {len(list(val_dir.glob('*' + PHOTO_SUFFIX)))} photos, "
        f"{int(val_counts.sum()) // 3:,} pixels",
        "train_bits_per_subpixel": round(histogram_bits(model, train_counts), 5),
        "val_bits_per_subpixel": round(histogram_bits(model, val_counts), 5),
        "pseudo_count": PSEUDO_COUNT,
        "tile": PHOTO_TILE,
    }
    return model, info


def fit_mnist_histogram(npz: Path = DEFAULT_MNIST) -> tuple[HistogramModel, dict[str, Any]]:
    """Grey histogram of the 4,500 training digits, scored on the 500 held-out ones."""
    train, held_out = load_mnist(npz)
    model = HistogramModel(HistogramConfig(channels=1))
    train_np = list(train.numpy())
    model.fit(train_np)
    held_np = held_out.numpy()
    info = {
        "data": f"{npz.name}: MNIST digits (uint8 28x28), first {TRAIN_COUNT} train",
        "eval_data": f"held-out digits [{TRAIN_COUNT}, {TRAIN_COUNT + HELD_OUT_COUNT})",
        "train_bits_per_subpixel": round(histogram_bits(model, value_counts(train_np, 1)), 5),
        "heldout_bits_per_subpixel": round(histogram_bits(model, value_counts(held_np, 1)), 5),
        "png_bits_per_subpixel": round(png_bits_per_subpixel(held_np[:, 0]), 5),
        "pseudo_count": PSEUDO_COUNT,
        "tile": MNIST_TILE,
    }
    return model, info


def write_card(path: Path, title: str, info: dict[str, Any], eval_key: str, extra: str) -> None:
    """A short model card for a histogram baseline."""
    lines = [
        f"# {path.stem}",
        "",
        f"{title}: a fixed probability per value and channel, learned from data (an order-0 "
        f"model, Laplace smoothing with pseudo-count {info['pseudo_count']}). It ignores "
        "context, so it is the baseline every real model must beat, and it codes fast.",
        "",
        f"- data: {info['data']}",
        f"- scored on: {info['eval_data']}",
        f"- model NLL on the scored set: **{info[eval_key]:.4f} bits/subpixel** "
        f"(training set: {info['train_bits_per_subpixel']:.4f})",
        f"- tile used when coding: {info['tile'][0]}x{info['tile'][1]}",
        extra,
        "",
        "Reproduce: `python -m nncompress.train.baselines`",
        "",
    ]
    path.write_text("\n".join(lines))


@click.command()
@click.option(
    "--photos-train",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_PHOTOS_TRAIN,
    show_default=True,
    help="Folder of training photos (*.webp).",
)
@click.option(
    "--photos-val",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_PHOTOS_VAL,
    show_default=True,
    help="Folder of validation photos (*.webp).",
)
@click.option(
    "--mnist",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_MNIST,
    show_default=True,
    help="mnist_5k.npz (first 4,500 train, last 500 held out).",
)
@click.option(
    "--out-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_OUT_DIR,
    show_default=True,
    help="Where the model files and cards go.",
)
@click.option(
    "--only",
    type=click.Choice(["photo", "mnist"]),
    default=None,
    help="Fit one baseline only (default: both).",
)
def main(
    photos_train: Path, photos_val: Path, mnist: Path, out_dir: Path, only: str | None
) -> None:
    """Fit the histogram baselines and write their model files and cards."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if only in (None, "photo"):
        model, info = fit_photo_histogram(photos_train, photos_val)
        path = out_dir / "histogram-photo.safetensors"
        save_model(model, path, info=info)
        write_card(
            path.with_suffix(".md"),
            "Per-channel RGB value histogram of the training photos",
            info,
            "val_bits_per_subpixel",
            "- for scale: PNG optimized gives 3.745 and JPEG-XL lossless e9 2.551 bits/subpixel "
            "on photos/val (shared/data/README.md)",
        )
        click.echo(f"{path}: photos/val {info['val_bits_per_subpixel']:.4f} bits/subpixel")
    if only in (None, "mnist"):
        model, info = fit_mnist_histogram(mnist)
        path = out_dir / "histogram-mnist.safetensors"
        save_model(model, path, info=info)
        write_card(
            path.with_suffix(".md"),
            "Grey value histogram of the MNIST training digits",
            info,
            "heldout_bits_per_subpixel",
            f"- for scale: PNG (Pillow optimize=True, one file per digit) on the same held-out "
            f"digits: {info['png_bits_per_subpixel']:.4f} bits/subpixel",
        )
        click.echo(f"{path}: held-out {info['heldout_bits_per_subpixel']:.4f} bits/subpixel")


if __name__ == "__main__":
    main()
