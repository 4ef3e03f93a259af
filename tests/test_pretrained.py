"""End-to-end with the shipped models in pretrained/: real weights, small crops (CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import MNIST, VAL_DIR, model_part
from PIL import Image

from nncompress import api
from nncompress.cli import main

pytestmark = pytest.mark.pretrained
SHIPPED = {
    "histogram-photo",
    "histogram-mnist",
    "made-mnist",
    "made-mnist-int",
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
    r = CliRunner().invoke(main, ["encode", str(src), "--device", "cpu", "--method", "model"])
    assert r.exit_code == 0, r.output
    header, _ = model_part((tmp_path / "crop.nnc").read_bytes())
    assert header.model_name == "pixelcnnpp-photo-small-int"
    r = CliRunner().invoke(
        main, ["decode", str(tmp_path / "crop.nnc"), "-o", str(tmp_path / "d.png")]
    )
    assert r.exit_code == 0, r.output
    assert np.array_equal(np.asarray(Image.open(tmp_path / "d.png")), np.asarray(Image.open(src)))
    # a grey image gets the photo model too (its red channel coded, G = B = R)
    grey = tmp_path / "grey.png"
    val_crop(19, 11, index=2).convert("L").save(grey)
    r = CliRunner().invoke(main, ["encode", str(grey), "--device", "cpu", "--method", "model"])
    assert r.exit_code == 0, r.output
    header, _ = model_part((tmp_path / "grey.nnc").read_bytes())
    assert header.model_name == "pixelcnnpp-photo-small-int" and header.mode == "L"
    out = tmp_path / "g.png"
    r = CliRunner().invoke(main, ["decode", str(tmp_path / "grey.nnc"), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert Image.open(out).tobytes() == Image.open(grey).tobytes()


@needs_photos
def test_small_photo_model_payload_tracks_its_nll():
    im = val_crop(64, 64, index=3)  # 12,288 subpixels, 4 tiles
    res = api.compress_detailed([im], "pixelcnnpp-photo-small-int", "cpu", method="model")[0]
    nll = api.score([im], "pixelcnnpp-photo-small-int", "cpu")[0]
    payload = model_part(res.data)[1]
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
    data = api.compress(im, "pixelcnnpp-photo-int", "cpu", method="model")
    assert np.array_equal(np.asarray(api.decompress(data, device="cpu")), np.asarray(im))


@needs_photos
def test_histogram_photo_round_trip():
    im = val_crop(50, 30, index=7)
    data = api.compress(im, "histogram-photo-int", "cpu", method="model")
    assert np.array_equal(np.asarray(api.decompress(data)), np.asarray(im))


@pytest.mark.skipif(not MNIST.is_file(), reason="shared MNIST not present")
def test_made_mnist_int_round_trips_within_1pc_of_the_float_model_and_below_histogram():
    """20 held-out digits as one 112x140 image: 20 MADE tiles in one coder stream, so the
    stream's end is ~0.5% of the payload. The integer MADE's coded bits are within 1% of the
    float MADE's NLL, and below the order-0 model's."""
    from nncompress.errors import ModelMismatchError

    digits = np.load(MNIST)["images"][4980:5000]
    mosaic = digits.reshape(4, 5, 28, 28).transpose(0, 2, 1, 3).reshape(112, 140)
    im = Image.fromarray(np.ascontiguousarray(mosaic), "L")
    float_nll = api.score([im], "made-mnist", "cpu")[0]
    res = api.compress_detailed([im], "made-mnist-int", "cpu", method="model")[0]
    header, payload = model_part(res.data)
    assert res.model_name == header.model_name == "made-mnist-int"
    assert (header.tile_h, header.tile_w) == (28, 28)
    payload_bits = 8 * len(payload) / res.subpixels
    # scoring (parallel pass) and coding (stepper) use the same integer tables
    assert res.model_bits_per_subpixel == pytest.approx(
        api.score([im], "made-mnist-int", "cpu")[0], rel=1e-6
    )
    assert abs(res.model_bits_per_subpixel / float_nll - 1) < 0.01
    assert abs(payload_bits / float_nll - 1) < 0.01
    hist = api.compress_detailed([im], "histogram-mnist-int", "cpu", method="model")[0]
    assert payload_bits < 8 * len(model_part(hist.data)[1]) / hist.subpixels
    assert res.bits_per_subpixel < hist.bits_per_subpixel  # whole files too
    out = api.decompress(res.data, device="cpu")
    assert np.array_equal(np.asarray(out), mosaic)
    assert np.array_equal(np.asarray(api.decompress(hist.data, device="cpu")), mosaic)
    with pytest.raises(ModelMismatchError, match="float arithmetic"):
        api.compress(Image.fromarray(digits[0], "L"), "made-mnist", "cpu")
