"""What the Python API takes as an image or a file, and what it refuses (issue 13)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import forged, random_image
from PIL import Image

from nncompress import api, classical, files, planes
from nncompress.errors import UnsupportedImageError
from nncompress.images import DEFAULT_MAX_PIXELS, as_image


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image)


def test_the_default_limit_is_pillows():
    assert DEFAULT_MAX_PIXELS == 89_478_485 == int(1024 * 1024 * 1024 // 4 // 3)


def test_compress_takes_pil_images_arrays_and_paths(tmp_path, model_dir):
    rgb = random_image("RGB", 11, 7, seed=1)
    grey = random_image("L", 6, 5, seed=2)
    rgb.save(tmp_path / "rgb.png")
    from_pil = api.compress(rgb, "hist-rgb", "cpu")
    assert api.compress(pixels(rgb), "hist-rgb", "cpu") == from_pil
    assert api.compress(str(tmp_path / "rgb.png"), "hist-rgb", "cpu") == from_pil
    assert api.compress(tmp_path / "rgb.png", "hist-rgb", "cpu") == from_pil
    for array in (pixels(grey), pixels(grey)[:, :, None]):  # HxW and HxWx1: greyscale
        out = api.decompress(api.compress(array, "hist-grey", "cpu"))
        assert out.mode == "L" and np.array_equal(pixels(out), pixels(grey))
    rgba = np.concatenate([pixels(rgb), np.full((7, 11, 1), 255, np.uint8)], axis=2)
    out = api.decompress(api.compress(rgba, "hist-rgb", "cpu"))
    assert out.mode == "RGBA" and np.array_equal(pixels(out), rgba)
    # a strided view is fine too (copied to contiguous memory)
    wide = np.ascontiguousarray(np.repeat(pixels(rgb), 2, axis=1))
    assert api.compress(wide[:, ::2], "hist-rgb", "cpu") == from_pil
    blobs = api.compress_many([rgb, pixels(rgb), tmp_path / "rgb.png"], "hist-rgb", "cpu")
    assert [pixels(im).tobytes() for im in api.decompress_many(blobs)] == [rgb.tobytes()] * 3


def test_score_takes_arrays_and_paths(tmp_path, model_dir):
    rgb = random_image("RGB", 9, 9, seed=3)
    rgb.save(tmp_path / "s.png")
    want = api.score([rgb], "hist-rgb", "cpu")
    assert api.score([pixels(rgb), tmp_path / "s.png"], "hist-rgb", "cpu") == want * 2


@pytest.mark.parametrize(
    "array, needle",
    [
        (np.zeros((4, 4, 3), np.float32), "dtype float32"),
        (np.zeros((4, 4), np.int16), "dtype int16"),
        (np.zeros((4, 4), bool), "dtype bool"),
        (np.zeros((4, 4, 5), np.uint8), "shape 4x4x5"),
        (np.zeros((2, 4, 4, 3), np.uint8), "shape 2x4x4x3"),
        (np.zeros(7, np.uint8), "shape 7"),
        (np.zeros((0, 4), np.uint8), "no pixels"),
    ],
)
def test_arrays_that_are_not_images_are_refused_clearly(model_dir, array, needle):
    with pytest.raises(UnsupportedImageError, match=needle):
        api.compress(array, "hist-rgb", "cpu")


@pytest.mark.parametrize("shape", [(5, 4), (5, 4, 1), (5, 4, 3), (5, 4, 4)])
def test_16_bit_arrays_are_kept_exactly(model_dir, shape):
    rng = np.random.default_rng(len(shape))
    a = rng.integers(0, 2**16, size=shape, dtype=np.uint16)
    data = api.compress(a, "hist-rgb", "cpu")
    assert files.parse(data).header.bit_depth == 16
    back = api.decompress_content(data)
    assert back.bit_depth == 16 and back.frames[0].dtype == np.uint16
    assert np.array_equal(back.frames[0], a if a.ndim == 3 else a[:, :, None])
    with pytest.raises(UnsupportedImageError, match="8-bit"):  # the model codes 8 bits only
        api.compress(a, "hist-rgb", "cpu", method="model")


@pytest.mark.parametrize("method", ["auto", "model"])
def test_transparent_rgba_array_is_kept_exactly(model_dir, method):
    rgba = np.asarray(random_image("RGB", 6, 5, seed=4))
    rgba = np.concatenate([rgba, np.arange(30, dtype=np.uint8).reshape(5, 6, 1) * 8], axis=2)
    data = api.compress(rgba, "hist-rgb", "cpu", method=method)
    parts = files.parse(data).header.parts
    if method == "model":  # colour by the model, alpha by a classical codec
        assert [(p.method, p.planes) for p in parts][0] == ("model", "colour")
        assert parts[1].planes == "alpha" and parts[1].method in classical.METHODS
    out = api.decompress(data)
    assert out.mode == "RGBA" and np.array_equal(pixels(out), rgba)


def test_the_bytes_of_an_image_file_are_an_image(model_dir):
    im = random_image("RGB", 7, 5, seed=6)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    data = api.compress(buf.getvalue(), "hist-rgb", "cpu")
    assert data == api.compress(im, "hist-rgb", "cpu")
    assert api.decompress(data).tobytes() == im.tobytes()
    with pytest.raises(UnsupportedImageError, match="not a readable image"):
        api.compress(b"\x89PNG...", "hist-rgb", "cpu")


@pytest.mark.parametrize(
    "thing, needle",
    [
        (None, "NoneType"),
        (42, "int"),
        ([[1, 2], [3, 4]], "list"),
        (io.BytesIO(b"\x89PNG..."), "io.BytesIO"),
        (torch.zeros(3, 4, 4, dtype=torch.uint8), "Tensor"),
    ],
)
def test_anything_else_is_a_type_error(model_dir, thing, needle):
    with pytest.raises(TypeError, match="expected an image") as e:
        api.compress(thing, "hist-rgb", "cpu")
    assert needle in str(e.value) and "numpy array" in str(e.value) and "path" in str(e.value)
    with pytest.raises(TypeError, match="expected an image"):
        api.compress_many([thing], "hist-rgb", "cpu")


def test_one_image_where_a_sequence_is_expected_is_a_type_error(tmp_path, model_dir):
    array = pixels(random_image("RGB", 4, 4))
    for single in (array, Image.fromarray(array), str(tmp_path / "x.png"), tmp_path / "x.png"):
        with pytest.raises(TypeError, match="sequence of images"):
            api.compress_many(single, "hist-rgb", "cpu")
        with pytest.raises(TypeError, match="sequence of images"):
            api.score(single, "hist-rgb", "cpu")
    with pytest.raises(TypeError, match="sequence of images, not int"):
        api.compress_many(3, "hist-rgb", "cpu")


def test_a_missing_or_unreadable_path_is_an_unsupported_image(tmp_path, model_dir):
    with pytest.raises(UnsupportedImageError, match="cannot read"):
        api.compress(tmp_path / "missing.png", "hist-rgb", "cpu")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(UnsupportedImageError, match="not a readable image"):
        api.compress(str(tmp_path / "junk.png"), "hist-rgb", "cpu")


def test_max_pixels_refuses_large_images_before_any_work(tmp_path, model_dir, monkeypatch):
    def no_coding(*args, **kwargs):
        raise AssertionError("coding started")

    monkeypatch.setattr(api, "encode_contents", no_coding)
    monkeypatch.setattr(classical, "encode", no_coding)
    im = random_image("RGB", 10, 10)
    im.save(tmp_path / "big.png")
    for source in (im, pixels(im), tmp_path / "big.png", (tmp_path / "big.png").read_bytes()):
        with pytest.raises(UnsupportedImageError, match=r"100 pixels.*limit of 99 .*max_pixels"):
            api.compress(source, "hist-rgb", "cpu", max_pixels=99)
        with pytest.raises(UnsupportedImageError, match="limit of 99"):
            api.compress_many([source], "hist-rgb", "cpu", max_pixels=99)
    assert Image.MAX_IMAGE_PIXELS == DEFAULT_MAX_PIXELS  # Pillow's global is restored


def test_a_file_is_opened_lazily_so_the_pixels_are_not_read(tmp_path, monkeypatch):
    random_image("RGB", 10, 10).save(tmp_path / "big.png")
    loads = []
    real_load = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self: loads.append(1) or real_load(self))
    from PIL import ImageFile

    real_file_load = ImageFile.ImageFile.load
    monkeypatch.setattr(
        ImageFile.ImageFile, "load", lambda self: loads.append(1) or real_file_load(self)
    )
    with pytest.raises(UnsupportedImageError, match="limit of 99"):
        as_image(tmp_path / "big.png", max_pixels=99)
    assert loads == []
    assert as_image(tmp_path / "big.png", max_pixels=100).size == (10, 10)


def test_max_pixels_above_pillows_limit_is_honoured(tmp_path, monkeypatch):
    """Pillow's own bomb check (here lowered to 10 pixels) gives way to max_pixels."""
    random_image("RGB", 10, 10).save(tmp_path / "p.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    assert as_image(tmp_path / "p.png", max_pixels=1000).size == (10, 10)
    assert Image.MAX_IMAGE_PIXELS == 10


def test_none_lifts_the_limit_but_not_the_formats(model_dir):
    im = random_image("RGB", 30, 20)
    assert api.decompress(api.compress(im, "hist-rgb", "cpu", max_pixels=None)).size == (30, 20)
    big = Image.new("L", (1, 1))
    big._size = (1 << 15, (1 << 13) + 1)  # claims 2**28 + 2**15 pixels: the size comes first
    with pytest.raises(UnsupportedImageError, match="more than a .nnc file holds"):
        as_image(big, max_pixels=None)


@pytest.mark.parametrize("method", ["model", "png"])
def test_decompress_refuses_a_header_over_max_pixels_before_decoding(
    model_dir, monkeypatch, method
):
    data = api.compress(random_image("RGB", 8, 8), "hist-rgb", "cpu", method=method)
    big = forged(data, width=10000, height=9000)  # 90,000,000 > DEFAULT_MAX_PIXELS

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoding started")

    monkeypatch.setattr(planes, "decode_parts", no_decoding)
    monkeypatch.setattr(classical, "decode", no_decoding)
    with pytest.raises(UnsupportedImageError, match=r"10000x9000.*limit of 89,478,485"):
        api.decompress(big)
    with pytest.raises(UnsupportedImageError, match="limit of 63"):
        api.decompress_many([data], max_pixels=63)


def test_decompress_takes_bytes_and_paths_and_nothing_else(tmp_path, model_dir):
    im = random_image("RGB", 8, 6)
    data = api.compress(im, "hist-rgb", "cpu")
    (tmp_path / "a.nnc").write_bytes(data)
    for source in (data, bytearray(data), memoryview(data), tmp_path / "a.nnc"):
        assert api.decompress(source).tobytes() == im.tobytes()
    assert api.decompress_many([str(tmp_path / "a.nnc")])[0].tobytes() == im.tobytes()
    with pytest.raises(TypeError, match="bytes of a .nnc file or a path"):
        api.decompress(12)
    with pytest.raises(TypeError, match="sequence of .nnc files, not one bytes"):
        api.decompress_many(data)
    with pytest.raises(FileNotFoundError):
        api.decompress(Path(tmp_path / "missing.nnc"))


@pytest.mark.parametrize(
    "error",
    [
        MemoryError(),
        RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory: 9e9 bytes."),
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB."),
    ],
)
@pytest.mark.parametrize("entry", ["compress", "decompress"])
def test_running_out_of_memory_in_the_api_is_a_typed_error(model_dir, monkeypatch, error, entry):
    from nncompress.errors import NncError, OutOfMemoryError

    im = random_image("RGB", 8, 8, seed=4)
    data = api.compress(im, model="hist-rgb", method="model")

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(
        "nncompress.api." + ("encode_contents" if entry == "compress" else "decode_files"), fail
    )
    with pytest.raises(OutOfMemoryError, match="out of memory while (en|de)coding") as got:
        api.compress(im, model="hist-rgb") if entry == "compress" else api.decompress(data)
    assert isinstance(got.value, NncError) and isinstance(got.value, MemoryError)
    assert "max_batch" in str(got.value) and got.value.__cause__ is error


def test_other_errors_inside_the_api_are_not_taken_for_memory(model_dir, monkeypatch):
    data = api.compress(random_image("RGB", 8, 8, seed=4), model="hist-rgb", method="model")

    def fail(*args, **kwargs):
        raise RuntimeError("some other failure")

    monkeypatch.setattr("nncompress.api.decode_files", fail)
    with pytest.raises(RuntimeError, match="some other failure"):
        api.decompress(data)
