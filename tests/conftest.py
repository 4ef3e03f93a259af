"""Shared fixtures: small models written to a temporary model folder, test images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nncompress.modelfile import save_model
from nncompress.models.histogram import HistogramConfig, HistogramModel

REPO = Path(__file__).resolve().parent.parent
VAL_DIR = REPO.parent / "shared" / "data" / "photos" / "val"
MNIST = REPO.parent / "shared" / "data" / "mnist" / "mnist_5k.npz"


def random_image(mode: str, width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth-ish random image (so models have something to predict)."""
    rng = np.random.default_rng(seed)
    c = {"L": 1, "RGB": 3}[mode]
    base = rng.integers(0, 256, size=(height, width, c))
    noise = rng.integers(-8, 9, size=(height, width, c))
    arr = np.clip(base // 4 * 2 + 64 + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(arr[:, :, 0] if c == 1 else arr, mode)


def fitted_histogram(channels: int, seed: int = 0) -> HistogramModel:
    rng = np.random.default_rng(seed)
    m = HistogramModel(HistogramConfig(channels))
    m.fit([rng.integers(0, 256, size=(channels, 16, 16), dtype=np.uint8)])
    return m


@pytest.fixture
def model_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A model folder searched first, holding 'hist-rgb' and 'hist-grey' (16x16 tiles), and
    'pcnn-tiny' (random-init tiny PixelCNN++, 8x8 tiles) when that family exists."""
    d = tmp_path / "models"
    d.mkdir()
    from nncompress.quant.convert import to_integer

    for name, ch in (("hist-rgb", 3), ("hist-grey", 1)):
        model = to_integer(fitted_histogram(ch))
        save_model(model, d / f"{name}.safetensors", info={"tile": [16, 16]})
    monkeypatch.setenv("NNCOMPRESS_MODEL_DIR", str(d))
    return d


def tiny_pixelcnn(channels: int = 3, seed: int = 0):
    from nncompress.models import build_model

    torch.manual_seed(seed)
    m = build_model(
        "pixelcnnpp",
        {
            "channels": channels,
            "nr_resnet": 1,
            "nr_filters": 8,
            "nr_logistic_mix": 2,
            "dropout": 0.0,
        },
    )
    return m.eval()


def model_part(data: bytes):
    """The one model part of a .nnc file: (its format-4 style header, its coder streams),
    the streams byte-identical to what format 4 stored as the payload."""
    from nncompress import files
    from nncompress.container import file as fmt

    f = files.parse(data)
    found = [d for e, d in f.parts() if e.method == "model"]
    assert len(found) == 1, f"one model part expected: {[p.method for p in f.header.parts]}"
    mode = "L" if f.header.mode in ("L", "LA") else "RGB"
    return fmt.unpack_model_part(found[0], mode, f.header.width, f.header.height)


def forged(data: bytes, **change) -> bytes:
    """A format-5 file with header fields changed and its header CRC recomputed (a crafted
    file: the part bytes are as they were)."""
    import dataclasses

    from nncompress import files
    from nncompress.container import file as fmt

    f = files.parse(data)
    return fmt.pack(fmt.File(dataclasses.replace(f.header, **change), f.data))
