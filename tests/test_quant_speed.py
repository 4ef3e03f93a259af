"""The integer path's fast kernels change no integer: coded payloads pinned from the code
before any of them existed (sha256 of the coded streams of small images with tiny integer
models, and of a crop with the shipped small photo model), and each exact kernel checked
against the plain arithmetic it replaces, at the extremes of its domain."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, random_image
from test_quant import integer_tiny_model

from nncompress import api
from nncompress.container import unpack
from nncompress.modelfile import save_model
from nncompress.quant import distributions as qd
from nncompress.quant.fixed import elu_table, sigmoid_table
from nncompress.quant.pixelcnnpp import IntPixelCNNpp, IntPixelCNNppConfig
from nncompress.quant.pixelcnnpp import table_sizes as _sizes


def int_model(
    channels: int, nr_resnet: int, filters: int, mix: int, *, seed: int, w_max: int, shift: int
) -> IntPixelCNNpp:
    """An integer PixelCNN++ of integers from numpy's PCG64 stream (weights in [-w_max,
    w_max], every hidden layer shifted by ``shift``): large weights with a small shift
    drive the activations to +-ACT_MAX, the ends of every exact kernel's domain."""
    m = IntPixelCNNpp(IntPixelCNNppConfig(channels, nr_resnet, filters, mix))
    rng = np.random.default_rng(seed)
    for name, mod in m.named_modules():
        if not hasattr(mod, "shift"):
            continue
        w = rng.integers(-w_max, w_max + 1, mod.w.shape).astype(np.int16)
        mod.w.copy_(torch.from_numpy(w))
        mod.b.copy_(torch.from_numpy(rng.integers(-(2**20), 2**20, mod.b.shape)))
        first = name in ("u_init", "ul_init_top", "ul_init_left")
        mod.shift.fill_(2 if first else shift)
    frac = np.full(m.out.shift.shape, qd.LOGIT_FRAC)
    block = 3 if channels == 3 else 2
    for c in range(channels):
        at = mix + c * block * mix
        frac[at : at + mix] = qd.MEAN_FRAC
        if block == 3:
            frac[at + 2 * mix : at + 3 * mix] = qd.COEF_IN_FRAC
    m.out.shift.copy_(torch.from_numpy(shift + 12 - frac))
    tables = {"elu": elu_table(), "sigmoid": sigmoid_table(), **qd.build_tables()}
    for name in _sizes():
        setattr(m, f"t_{name}", torch.from_numpy(tables[name]))
    return m.eval()


# name -> (model maker, image mode, width, height, tile, sha256 of the coded payload), the
# digests computed with the code before the integer path's fast kernels.
CASES = {
    "tiny-rgb": (
        lambda: integer_tiny_model(3),
        "RGB",
        20,
        13,
        8,
        "cf30fdf604b2778f0a8c042cb5349b5cc5f5e5ec7f24062f0923602c93b189b0",
    ),
    "saturating-grey": (
        lambda: int_model(1, 2, 16, 3, seed=11, w_max=2**15 - 1, shift=16),
        "L",
        19,
        17,
        16,
        "2c1f71d28170a126c65c0a846fda698ec3bdede2c0a5bb6d38c1ae0932e3e16c",
    ),
    "odd-rgb": (
        lambda: int_model(3, 1, 5, 1, seed=12, w_max=3000, shift=13),
        "RGB",
        11,
        9,
        8,
        "4eed1412c81348c8fcb7af2d77ea468bc3179fea1989764592288e5c347c3c90",
    ),
    "no-resnet-rgb": (
        lambda: int_model(3, 0, 24, 4, seed=13, w_max=6000, shift=14),
        "RGB",
        9,
        10,
        8,
        "04b719858d554afc89cc3e7a510b29f386d55066715dda00b0f96873ded0fd6a",
    ),
}


def _payload_digest(data: bytes) -> str:
    return hashlib.sha256(unpack(data)[1]).hexdigest()


@pytest.mark.parametrize("case", sorted(CASES))
def test_coded_payloads_are_pinned(tmp_path: Path, case: str):
    make, mode, w, h, tile, digest = CASES[case]
    path = tmp_path / "m.safetensors"
    save_model(make(), path)
    im = random_image(mode, w, h, seed=4)
    data = api.compress(im, path, "cpu", tile=tile)
    assert _payload_digest(data) == digest
    assert api.decompress(data, path, "cpu").tobytes() == im.tobytes()


SMALL = REPO / "pretrained" / "pixelcnnpp-photo-small-int.safetensors"
SMALL_DIGEST = "86ef157b52b79c3e8f1e1037c177a2522cb5fceb73386ebd294347d9ed5bb4f8"


@pytest.mark.pretrained
@pytest.mark.skipif(not SMALL.is_file(), reason="pretrained small model not present")
def test_shipped_small_model_payload_is_pinned():
    im = random_image("RGB", 40, 36, seed=9)
    data = api.compress(im, SMALL, "cpu", tile=32)
    assert _payload_digest(data) == SMALL_DIGEST
