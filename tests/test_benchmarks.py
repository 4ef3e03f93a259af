"""benchmarks/compare.py and decode_speed.py: the whole path on tiny images, and that the
lossless check really catches a codec that corrupts pixels."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks import common, compare, decode_speed
from nncompress.modelfile import save_model
from nncompress.models.histogram import HistogramConfig, HistogramModel
from nncompress.quant.convert import to_integer

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
UNIFORM_BITS = 8.0  # an unfitted histogram model gives every value p = 1/256
# name -> (mode, width, height): quick mode crops each to at most QUICK_CROP square
TINY = {"a.png": ("RGB", 60, 50), "b.png": ("L", 20, 30), "c.webp": ("RGB", 33, 17)}


def _image(mode: str, width: int, height: int, seed: int) -> Image.Image:
    """Smooth gradient plus noise: compressible, but not trivially."""
    rng = np.random.default_rng(seed)
    c = 1 if mode == "L" else 3
    yy, xx = np.mgrid[0:height, 0:width]
    base = (xx * 3 + yy * 2)[:, :, None] + np.arange(c) * 40
    arr = np.clip(base + rng.integers(-6, 7, size=(height, width, c)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr[:, :, 0] if c == 1 else arr)


def _write_images(folder: Path, specs: dict[str, tuple[str, int, int]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for seed, (name, (mode, w, h)) in enumerate(specs.items()):
        img = _image(mode, w, h, seed)
        if name.endswith(".webp"):
            img.save(folder / name, lossless=True)
        else:
            img.save(folder / name)
    return folder


def _expected_subpixels(specs: dict[str, tuple[str, int, int]]) -> int:
    crop = compare.QUICK_CROP
    return sum(min(w, crop) * min(h, crop) * (1 if m == "L" else 3) for m, w, h in specs.values())


def _run(tmp_path: Path, *extra: str, registry=None) -> tuple[int, dict, Path]:
    images = _write_images(tmp_path / "img", TINY)
    out = tmp_path / "out"
    rc = compare.main([str(images), "--quick", "--out", str(out), *extra], registry=registry)
    results = json.loads((out / "results.json").read_text())
    return rc, results, out


def _rows(results: dict) -> dict[str, dict]:
    return {r["name"]: r for r in results["codecs"]}


def test_quick_mode_runs_every_available_codec_losslessly(tmp_path: Path) -> None:
    rc, results, out = _run(tmp_path)
    assert rc == 0
    registry = common.classical_codecs()
    rows = _rows(results)
    assert list(rows) == list(registry)
    # The codecs the task names are all in the registry (skipped only if a library is missing).
    assert {"png", "oxipng", "webp", "jxl-e7", "jxl-e9", "jpegls", "jpeg2k"} <= set(registry)
    subpixels = _expected_subpixels(TINY)
    assert results["total_subpixels"] == subpixels
    samples = compare.load_samples(str(tmp_path / "img"), quick=True)
    for name, codec in registry.items():
        row = rows[name]
        if codec.unavailable:
            assert row["status"] == "skipped" and row["reason"] == codec.unavailable
            continue
        assert row["status"] == "ok" and row["lossless"] is True, name
        assert [r["image"] for r in row["per_image"]] == list(TINY)
        assert all(r["lossless"] for r in row["per_image"])
        assert row["total_subpixels"] == subpixels
        assert row["bits_per_subpixel"] == pytest.approx(row["total_bytes"] * 8 / subpixels)
        assert row["encode_mps"] > 0 and row["decode_mps"] > 0
    # Sizes are those of the real encoded files.
    assert rows["png"]["per_image"][1]["bytes"] == len(registry["png"].encode(samples[1]))
    assert results["failures"] == []
    assert results["environment"]["cpu"] and results["environment"]["torch"]
    for plot in results["plots"]["files"]:
        assert (out / plot).read_bytes().startswith(PNG_MAGIC)
    assert len(results["plots"]["files"]) == 2
    table = (out / "results.md").read_text()
    assert all(registry[n].label in table for n in registry if not registry[n].unavailable)


def _flip_first_subpixel(decode):
    def broken(data: bytes) -> np.ndarray:
        arr = np.array(decode(data))
        arr.flat[0] ^= 1
        return arr

    return broken


def _drop_last_row(decode):
    return lambda data: np.asarray(decode(data))[:-1]


def _raise(_: bytes) -> np.ndarray:
    raise ValueError("codec library exploded")


@pytest.mark.parametrize(
    ("make_decode", "stderr_says", "json_says"),
    [
        (_flip_first_subpixel, "LOSSLESS FAILURE", "1 of"),
        (_drop_last_row, "LOSSLESS FAILURE", "decoded shape"),
        (lambda _: _raise, "ERROR", "codec library exploded"),
    ],
)
def test_a_codec_that_corrupts_pixels_fails_loudly(
    tmp_path: Path, capsys: pytest.CaptureFixture, make_decode, stderr_says: str, json_says: str
) -> None:
    png = common.classical_codecs()["png"]
    broken = dataclasses.replace(
        png, name="broken", label="Broken PNG", decode=make_decode(png.decode)
    )
    rc, results, _ = _run(tmp_path, registry={"png": png, "broken": broken})
    assert rc == common.EXIT_FAILURE
    rows = _rows(results)
    assert rows["png"]["status"] == "ok" and rows["png"]["lossless"] is True
    assert rows["broken"]["status"] == "failed" and rows["broken"]["lossless"] is False
    assert json_says in json.dumps(rows["broken"])
    err = capsys.readouterr().err
    assert f"{stderr_says}: codec broken, image a.png" in err
    assert any("broken" in f and "a.png" in f for f in results["failures"])
    assert "**NO**" in (tmp_path / "out" / "results.md").read_text()


def test_missing_library_is_reported_as_skipped(tmp_path: Path) -> None:
    png = common.classical_codecs()["png"]
    gone = common._missing("gone", "Gone codec", "libgone not installed")
    rc, results, out = _run(tmp_path, registry={"png": png, "gone": gone})
    assert rc == 0
    assert _rows(results)["gone"] == {
        "name": "gone",
        "label": "Gone codec",
        "kind": "classical",
        "device": "cpu",
        "threads": "-",
        "speed_basis": "median over images",
        "status": "skipped",
        "reason": "libgone not installed",
    }
    assert "Gone codec: skipped (libgone not installed)" in (out / "results.md").read_text()


def test_codec_selection_and_bad_names(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc, results, _ = _run(tmp_path, "--codecs", "qoi,png")
    assert rc == 0 and list(_rows(results)) == ["qoi", "png"]
    images = tmp_path / "img"
    assert compare.main([str(images), "--codecs", "nope", "--out", str(tmp_path / "o2")]) == 2
    assert "unknown codec(s) nope" in capsys.readouterr().err
    assert compare.main([str(tmp_path / "missing"), "--out", str(tmp_path / "o3")]) == 2
    with pytest.raises(SystemExit):
        compare.main([str(images), "--torch-threads", "0"])
    assert "must be at least 1, not 0" in capsys.readouterr().err


def test_pixel_mismatch() -> None:
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    gray = rgb[:, :, :1].copy()
    assert common.pixel_mismatch(rgb, rgb.copy()) is None
    assert common.pixel_mismatch(gray, gray[:, :, 0]) is None
    assert common.pixel_mismatch(gray, np.repeat(gray, 3, axis=2)) is None
    as_rgb = np.repeat(gray, 3, axis=2)
    as_rgb[1, 2, 1] += 5
    assert common.pixel_mismatch(gray, as_rgb) == "1 of 18 subpixels differ (max |diff| 5)"
    assert "decoded shape (3, 2, 3)" in common.pixel_mismatch(rgb, rgb.transpose(1, 0, 2))
    assert "dtype uint16" in common.pixel_mismatch(rgb, rgb.astype(np.uint16))


def test_normalize_image_modes() -> None:
    rgba = Image.new("RGBA", (4, 3), (1, 2, 3, 255))
    assert common.normalize_image(rgba).mode == "RGB"
    assert common.normalize_image(Image.new("1", (4, 3))).mode == "L"
    with pytest.raises(common.BenchmarkError, match="transparent"):
        common.normalize_image(Image.new("RGBA", (4, 3), (1, 2, 3, 7)))
    with pytest.raises(common.BenchmarkError, match="unsupported image mode 'I;16'"):
        common.normalize_image(Image.new("I;16", (4, 3)))


# --- nncompress rows -----------------------------------------------------------------------


@pytest.fixture
def histogram_file(tmp_path: Path) -> Path:
    """A random-init (uniform) 3-channel histogram model with small tiles."""
    path = tmp_path / "hist-uniform.safetensors"
    model = to_integer(HistogramModel(HistogramConfig(channels=3)))
    save_model(model, path, info={"tile": [8, 8]})
    return path


# Torch threads beyond the free cores of a busy test machine slow the coder's tiny steps 100x.
ONE_THREAD = ("--torch-threads", "1")
RGB_TINY = {"a.png": ("RGB", 12, 10), "b.png": ("RGB", 9, 7)}


def test_compare_codes_through_the_api(
    tmp_path: Path, histogram_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    images = _write_images(tmp_path / "img", RGB_TINY)
    argv = [str(images), "--quick", "--codecs", "png", "--models", str(histogram_file)]
    argv += ["--device", "cpu", *ONE_THREAD]
    # --method auto: what a user gets; a uniform model never wins there, and the file is
    # the smallest classical one.
    assert compare.main([*argv, "--method", "auto", "--out", str(tmp_path / "auto")]) == 0
    auto = _rows(json.loads((tmp_path / "auto" / "results.json").read_text()))
    auto_row = auto["nnc:hist-uniform"]
    assert auto_row["status"] == "ok" and auto_row["lossless"] is True
    assert "model_names" not in auto_row and "payload_bits_per_subpixel" not in auto_row
    assert all(r["method"] != "model" for r in auto_row["per_image"])
    assert auto_row["label"] == "nncompress hist-uniform (auto)"
    # The default: the model's own accounting, the model forced for every image.
    out = tmp_path / "out"
    threads = torch.get_num_threads()
    assert compare.main([*argv, "--out", str(out)]) == 0
    assert torch.get_num_threads() == threads  # restored
    results = json.loads((out / "results.json").read_text())
    row = _rows(results)["nnc:hist-uniform"]
    assert row["status"] == "ok" and row["lossless"] is True and row["device"] == "cpu"
    assert row["model_names"] == ["hist-uniform"]
    assert all(r["method"] == "model" for r in row["per_image"])
    assert auto_row["bits_per_subpixel"] < row["bits_per_subpixel"]  # auto: the smaller
    assert row["nll_bits_per_subpixel"] == pytest.approx(UNIFORM_BITS, abs=1e-5)
    # Coded size is at least the NLL (headers, coder flush), and the overhead says how much.
    assert row["bits_per_subpixel"] > UNIFORM_BITS
    assert row["overhead_pct"] == pytest.approx(100 * (row["bits_per_subpixel"] / 8 - 1))
    assert row["payload_bits_per_subpixel"] < row["bits_per_subpixel"]
    assert all(r["payload_bytes"] < r["bytes"] for r in row["per_image"])
    assert row["encode_mps"] > 0 and row["decode_mps"] > 0
    assert "nncompress hist-uniform" in (out / "results.md").read_text()


def test_compare_catches_a_model_path_that_corrupts_pixels(
    tmp_path: Path, histogram_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nncompress import api

    real = api.decompress_many

    def corrupting(blobs, **kw):
        out = real(blobs, **kw)
        arr = np.array(out[-1])
        arr[0, 0, 0] ^= 128
        return [*out[:-1], Image.fromarray(arr)]

    monkeypatch.setattr(api, "decompress_many", corrupting)
    images = _write_images(tmp_path / "img", RGB_TINY)
    out = tmp_path / "out"
    argv = [str(images), "--quick", "--codecs", "none", "--models", str(histogram_file)]
    argv += ["--out", str(out), "--device", "cpu", *ONE_THREAD]
    assert compare.main(argv) == common.EXIT_FAILURE
    row = json.loads((out / "results.json").read_text())["codecs"][0]
    assert row["lossless"] is False
    assert [r["lossless"] for r in row["per_image"]] == [True, False]


# --- decode_speed --------------------------------------------------------------------------


def test_pick_photo_crops_the_first_large_enough_image_else_resizes(tmp_path: Path) -> None:
    folder = _write_images(
        tmp_path / "v", {"a.png": ("RGB", 10, 8), "b.png": ("RGB", 30, 20), "c.png": ("L", 40, 40)}
    )
    sample, how = decode_speed.pick_photo(folder, 24, 16)
    assert how == "center crop 24x16 of b.png"
    full = common.image_to_array(Image.open(folder / "b.png").convert("RGB"))
    np.testing.assert_array_equal(sample.array, full[2:18, 3:27])
    sample, how = decode_speed.pick_photo(folder, 50, 50)
    assert (sample.width, sample.height) == (50, 50)
    assert how.startswith("a.png (10x8) resized to 50x50") and "large enough" in how


def test_measure_repeats_within_budget() -> None:
    calls = []
    result, times = decode_speed.measure(lambda: calls.append(1) or len(calls), 3, 1e9)
    assert result == 3 and len(times) == 3
    result, times = decode_speed.measure(lambda: calls.append(1) or len(calls), 3, 0.0)
    assert result == 4 and len(times) == 1  # at least one run, then over budget


def test_decode_speed_end_to_end(tmp_path: Path, histogram_file: Path) -> None:
    folder = _write_images(tmp_path / "img", RGB_TINY)
    out = tmp_path / "out"
    argv = ["--models", str(histogram_file), "--device", "cpu", "--image", str(folder / "a.png")]
    argv += ["--all", str(folder), "--repeats", "2", "--out", str(out), *ONE_THREAD]
    assert decode_speed.main(argv) == 0
    results = json.loads((out / "decode_speed.json").read_text())
    photo, batch = results["results"]
    assert results["photo"] == "a.png as is"
    assert (photo["width"], photo["height"]) == (12, 10)
    assert len(photo["encode_s"]) == len(photo["decode_s"]) == 2
    assert photo["decode_over_score"] > 0 and photo["lossless"] is True
    assert photo["nll_bits_per_subpixel"] == pytest.approx(UNIFORM_BITS, abs=1e-5)
    assert photo["payload_bits"] < photo["file_bits"]
    assert photo["model_name"] == "hist-uniform"
    assert batch["images"] == 2 and batch["pixels"] == 12 * 10 + 9 * 7
    assert "hist-uniform" in (out / "decode_speed.md").read_text()


def test_wavefront_plan_lag_is_one_chunk_row_exactly_when_chunks_outreach_the_model():
    from benchmarks import wavefront_plan as wp

    # reads up to 10 columns right in the two rows above, 5 left in the current row
    spans = {0: [-5, -1], -1: [-5, 10], -2: [-7, 10]}
    sup = wp.support(spans, 40)
    assert (-1, 10) in sup and (0, 0) not in sup and (-40, 10) in sup
    assert wp.min_lag(sup, 10) is None  # a pixel would wait for one to its right
    assert wp.min_lag(sup, 11) == 11 and wp.min_lag(sup, 16) == 16
    s = wp.schedule(512, 768, 64, 16, 16)  # 8 strips of 48 chunks
    assert s == {"steps": 64 * 16 + 47 * 16, "batch": 8 * 48, "busy": round(64 / 111, 3)}


def test_model_reach_sees_only_the_past():
    from conftest import tiny_pixelcnn

    from benchmarks import model_reach

    model = tiny_pixelcnn(3, seed=1).eval()
    r = model_reach.reach(model, 12, 24, [(11, 12), (10, 13)])
    spans = r["spans"]
    assert spans[0][1] == -1  # the current row: strictly to the left
    assert max(spans) == 0 and min(spans) < 0 and spans[-1][1] >= 1  # the row above, right
    assert abs(sum(r["mass"].values()) - 1.0) < 1e-9
