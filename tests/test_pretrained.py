"""End-to-end with the shipped models in pretrained/: real weights, small crops (CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import MNIST, VAL_DIR
from PIL import Image

from nncompress import api, container
from nncompress.cli import main

pytestmark = pytest.mark.pretrained
SHIPPED = {
    "histogram-photo",
    "histogram-mnist",
    "made-mnist",
    "pixelcnnpp-photo",
    "pixelcnnpp-photo-small",
    "histogram-photo-int",
    "histogram-mnist-int",
    "pixelcnnpp-photo-int",
    "pixelcnnpp-photo-small-int",
}
needs_photos = pytest.mark.skipif(not VAL_DIR.is_dir(), reason="shared photos not present")


def val_crop(w: int, h: int, index: int = 0) -> Image.Image:
    photo = Image.open(sorted(VAL_DIR.glob("*.webp"))[index]).convert("RGB")
    left, top = photo.width // 2 - w // 2, photo.height // 2 - h // 2
    return photo.crop((left, top, left + w, top + h))


def test_models_lists_every_shipped_model_without_errors():
    rows = json.loads(CliRunner().invoke(main, ["models", "--json"]).output)
    by_name = {r["name"]: r for r in rows}
    assert SHIPPED <= set(by_name)
    for name in SHIPPED:
        assert "error" not in by_name[name], by_name[name]
        assert len(by_name[name]["digest"]) == 64


@needs_photos
def test_cli_round_trip_with_the_default_cpu_photo_model(tmp_path):
    src = tmp_path / "crop.png"
    val_crop(37, 21).save(src)
    r = CliRunner().invoke(main, ["encode", str(src), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    header, _ = container.unpack((tmp_path / "crop.nnc").read_bytes())
    assert header.model_name == "pixelcnnpp-photo-small-int"
    r = CliRunner().invoke(
        main, ["decode", str(tmp_path / "crop.nnc"), "-o", str(tmp_path / "d.png")]
    )
    assert r.exit_code == 0, r.output
    assert np.array_equal(np.asarray(Image.open(tmp_path / "d.png")), np.asarray(Image.open(src)))


@needs_photos
def test_small_photo_model_payload_tracks_its_nll():
    im = val_crop(64, 64, index=3)  # 12,288 subpixels, 4 tiles
    res = api.compress_detailed([im], "pixelcnnpp-photo-small-int", "cpu")[0]
    nll = api.score([im], "pixelcnnpp-photo-small-int", "cpu")[0]
    payload = container.unpack(res.data)[1]
    # cached stepper vs parallel pass: the same integer tables, so the same cost
    assert abs(res.model_bits_per_subpixel / nll - 1) < 1e-6  # score sums in float32
    # the integer model within 0.5% of the float model it was converted from
    assert abs(nll / api.score([im], "pixelcnnpp-photo-small", "cpu")[0] - 1) < 0.005
    assert 8 * len(payload) / res.subpixels / nll - 1 < 0.01
    assert nll < 6.0  # a trained model, far below 8 bits of a uniform guess
    out = api.decompress(res.data, device="cpu")
    assert np.array_equal(np.asarray(out), np.asarray(im))


@needs_photos
def test_gpu_photo_model_round_trips_on_cpu_too():
    im = val_crop(11, 9, index=5)
    data = api.compress(im, "pixelcnnpp-photo-int", "cpu")
    assert np.array_equal(np.asarray(api.decompress(data, device="cpu")), np.asarray(im))


@needs_photos
def test_histogram_photo_round_trip():
    im = val_crop(50, 30, index=7)
    data = api.compress(im, "histogram-photo-int", "cpu")
    assert np.array_equal(np.asarray(api.decompress(data)), np.asarray(im))


@pytest.mark.skipif(not MNIST.is_file(), reason="shared MNIST not present")
def test_made_mnist_scores_below_histogram_but_has_no_integer_path_yet():
    from nncompress.errors import ModelMismatchError

    digits = np.load(MNIST)["images"][4998:5000]
    ims = [Image.fromarray(d, "L") for d in digits]
    assert sum(api.score(ims, "made-mnist", "cpu")) < sum(api.score(ims, "histogram-mnist-int"))
    with pytest.raises(ModelMismatchError, match="float arithmetic"):
        api.compress(ims[0], "made-mnist", "cpu")
    hist = api.compress_many(ims, "histogram-mnist-int", "cpu")
    for a, b in zip(api.decompress_many(hist, device="cpu"), ims):
        assert np.array_equal(np.asarray(a), np.asarray(b))
