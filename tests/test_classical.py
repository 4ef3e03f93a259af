"""nncompress.classical: exact round trips of every classical method on real arrays, the
choice of the smallest, refusal of malformed data (FormatError only), JPEG transcoding."""

from __future__ import annotations

import io
import os
import time
import tracemalloc

import imagecodecs
import numpy as np
import pytest
from PIL import Image

from nncompress import classical
from nncompress.classical import METHODS, best, can_code, decode, encode, sizes
from nncompress.errors import FormatError

MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


def _noise(h: int, w: int, c: int, dtype, seed: int = 0) -> np.ndarray:
    top = np.iinfo(dtype).max
    return np.random.default_rng(seed).integers(0, top, (h, w, c), dtype=dtype, endpoint=True)


def _gradient(h: int, w: int, c: int, dtype) -> np.ndarray:
    top = np.iinfo(dtype).max
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    planes = [(xx * (k + 1) + yy * (c - k)) / (w * (k + 1) + h * (c - k)) for k in range(c)]
    return np.round(np.stack(planes, -1) * top).astype(dtype)


def _palette(h: int, w: int, c: int, dtype) -> np.ndarray:
    """A screenshot-like image: flat rectangles of 5 colours and a few thin lines."""
    top = np.iinfo(dtype).max
    colours = np.array(
        [
            [0, 0, 0, top],
            [top, top, top, top],
            [top, 0, 0, top],
            [30, 90, 200, top // 2],
            [200, 200, 40, 0],
        ],
        dtype=np.int64,
    )
    colours = np.minimum(colours, top).astype(dtype)
    index = np.zeros((h, w), np.int64)
    index[h // 4 : h // 2, w // 5 : w - 3] = 1
    index[h // 2 :, : w // 3] = 2
    index[::7, :] = 3
    index[:, 5::11] = 4
    return np.ascontiguousarray(colours[index][:, :, :c])


def _transparent_colour(h: int, w: int, c: int, dtype, seed: int = 1) -> np.ndarray:
    """Noise with alpha 0 over half the pixels, the colour under it nonzero."""
    arr = _noise(h, w, c, dtype, seed)
    arr[:, :, :-1] |= 1
    arr[: h // 2, :, -1] = 0
    arr[h // 2 :, ::3, -1] = 0
    return arr


KINDS = {"noise": _noise, "gradient": _gradient, "palette": _palette}
SHAPES = [(1, 1), (1, 9), (9, 1), (13, 17), (24, 31)]
DTYPES = [np.uint8, np.uint16]


def _roundtrip_or_refused(method: str, arr: np.ndarray) -> bytes | None:
    if not can_code(method, arr.shape, arr.dtype):
        with pytest.raises(ValueError):
            encode(method, arr)
        return None
    data = encode(method, arr)
    back = decode(method, data, arr.shape, arr.dtype)
    assert back.dtype == arr.dtype and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)
    return data


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_method_exact_or_refused(kind, channels, dtype):
    for h, w in SHAPES:
        arr = KINDS[kind](h, w, channels, dtype)
        for method in METHODS:
            _roundtrip_or_refused(method, arr)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels", [2, 4])
def test_colour_under_transparent_alpha_survives(channels, dtype):
    smooth = _gradient(64, 64, channels, dtype)  # where flattening hidden colour would pay
    smooth[:, :, -1] = 0
    smooth[20:40, 10:50, -1] = np.iinfo(dtype).max
    for arr in (_transparent_colour(20, 23, channels, dtype), smooth):
        coded = [m for m in METHODS if _roundtrip_or_refused(m, arr) is not None]
        assert "jxl" in coded and "png" in coded
        assert ("webp" in coded) == (dtype == np.uint8)  # libwebp keeps colour under alpha 0


def test_webp_opaque_alpha_comes_back():
    """libwebp drops an all-255 alpha channel; decode still returns it."""
    arr = _noise(10, 12, 4, np.uint8)
    arr[:, :, 3] = 255
    data = encode("webp", arr)
    assert imagecodecs.webp_decode(data).shape == (10, 12, 3)
    np.testing.assert_array_equal(decode("webp", data, arr.shape, arr.dtype), arr)
    # and an RGB file is not an RGBA image's data the other way round
    rgba = _transparent_colour(10, 12, 4, np.uint8)
    with pytest.raises(FormatError):
        decode("webp", encode("webp", rgba), (10, 12, 3), np.uint8)


def test_webp_grey_must_be_grey():
    rgb = _noise(8, 8, 3, np.uint8)
    data = encode("webp", rgb)
    with pytest.raises(FormatError):
        decode("webp", data, (8, 8, 1), np.uint8)
    rgba = _transparent_colour(8, 8, 4, np.uint8)
    with pytest.raises(FormatError):
        decode("webp", encode("webp", rgba), (8, 8, 2), np.uint8)


def test_can_code_rules():
    assert can_code("webp", (4, 4, 3), np.uint8)
    assert not can_code("webp", (4, 4, 3), np.uint16)
    assert not can_code("webp", (16384, 4, 3), np.uint8)
    for method in ("jxl", "png", "store"):
        assert can_code(method, (4, 4, 1), np.uint16)
        assert can_code(method, (4, 4, 4), np.dtype(">u2"))
    for method in METHODS:
        assert not can_code(method, (4, 4, 5), np.uint8)
        assert not can_code(method, (4, 4, 0), np.uint8)
        assert not can_code(method, (0, 4, 3), np.uint8)
        assert not can_code(method, (4, 4), np.uint8)
        assert not can_code(method, (4, 4, 3), np.int16)
        assert not can_code(method, (4, 4, 3), np.float32)
    with pytest.raises(ValueError):
        can_code("gif", (4, 4, 3), np.uint8)


def test_encode_argument_errors():
    arr = _noise(4, 4, 3, np.uint8)
    with pytest.raises(ValueError):
        encode("jxl", arr, effort="slowest")
    with pytest.raises(ValueError):
        encode("gif", arr)
    with pytest.raises(ValueError):
        encode("png", arr.astype(np.float32))
    with pytest.raises(ValueError):
        encode("png", arr[:, :, 0])
    with pytest.raises(ValueError):
        best(arr, methods=("jxl", "gif"))


def test_store_is_raw_little_endian_and_big_endian_input_works():
    arr = _noise(3, 5, 2, np.uint16)
    assert encode("store", arr) == arr.astype("<u2").tobytes()
    swapped = arr.astype(">u2")
    for method in ("jxl", "png", "store"):
        back = decode(method, encode(method, swapped), arr.shape, np.uint16)
        np.testing.assert_array_equal(back, arr)
    with pytest.raises(FormatError):
        decode("store", encode("store", arr)[:-1], arr.shape, np.uint16)


@pytest.mark.parametrize("effort", classical.EFFORTS)
def test_efforts_exact(effort):
    arr = _gradient(40, 50, 3, np.uint8) ^ _noise(40, 50, 3, np.uint8) & 3
    for method in METHODS:
        data = encode(method, arr, effort)
        np.testing.assert_array_equal(decode(method, data, arr.shape, arr.dtype), arr)


def test_jxl_effort_rule():
    small, large = (1000, 1000, 3), (1000, 1001, 3)
    assert classical._jxl_effort(small, "default") == 9
    assert classical._jxl_effort(large, "default") == 7
    assert classical._jxl_effort(small, "max") == 10
    assert classical._jxl_effort(large, "max") == 9
    assert classical._jxl_effort(small, "fast") == 3


@pytest.mark.parametrize(
    "arr",
    [
        _noise(16, 20, 3, np.uint8),
        _gradient(30, 40, 3, np.uint8),
        _palette(30, 41, 4, np.uint8),
        _transparent_colour(17, 19, 2, np.uint8),
        _gradient(21, 22, 1, np.uint16),
        _noise(1, 1, 1, np.uint8),
    ],
    ids=["noise", "gradient", "palette-rgba", "la-transparent", "grey16", "1x1"],
)
def test_best_is_smallest_verified(arr):
    per_method = sizes(arr)
    assert "store" in per_method and "jxl" in per_method and "png" in per_method
    assert ("webp" in per_method) == (arr.dtype == np.uint8)
    method, data = best(arr)
    assert len(data) == min(per_method.values())
    assert all(len(data) <= size for size in per_method.values())
    # ties go to the earlier method
    assert method == min((size, METHODS.index(m), m) for m, size in per_method.items())[2]
    np.testing.assert_array_equal(decode(method, data, arr.shape, arr.dtype), arr)


def test_best_subset_and_fallback():
    arr = _gradient(12, 12, 3, np.uint16)
    method, data = best(arr, methods=("webp",))  # webp cannot code 16 bit: store it
    assert method == "store" and data == encode("store", arr)
    method, _ = best(arr, methods=("png", "store"))
    assert method == "png"
    # noise does not compress: raw storage wins
    assert best(_noise(32, 32, 3, np.uint8))[0] == "store"


def test_best_drops_a_candidate_that_is_not_exact(monkeypatch):
    arr = _gradient(16, 16, 3, np.uint8)
    real = classical._DECODERS["jxl"]

    def off_by_one(data, shape, dtype):
        back = real(data, shape, dtype).copy()
        back[0, 0, 0] ^= 1
        return back

    monkeypatch.setitem(classical._DECODERS, "jxl", off_by_one)
    assert "jxl" not in sizes(arr)
    assert best(arr)[0] != "jxl"


def test_decode_rejects_wrong_layout():
    arr = _gradient(9, 11, 3, np.uint8)
    for method in METHODS:
        data = encode(method, arr)
        for shape, dtype in [
            *([((11, 9, 3), np.uint8)] if method != "store" else []),  # raw: same size
            # an RGB WebP is also how libwebp stores an opaque RGBA image
            *([((9, 11, 4), np.uint8)] if method != "webp" else []),
            ((9, 11, 1), np.uint8),
            ((9, 11, 3), np.uint16),
            ((9, 11, 2), np.uint8),
        ]:
            with pytest.raises(FormatError):
                decode(method, data, shape, dtype)
        for shape, dtype in [((9, 11), np.uint8), ((9, 11, 3), np.float32), ((9, 11, 5), "u1")]:
            with pytest.raises(FormatError):
                decode(method, data, shape, dtype)
    with pytest.raises(FormatError):
        decode("gif", b"", (1, 1, 1), np.uint8)


def test_decode_refuses_a_huge_claimed_image_before_allocating():
    """A small file declaring a 3000x3000 image against a 2x2 expectation fails at once."""
    z = np.zeros((3000, 3000, 3), np.uint8)
    files = {
        "jxl": imagecodecs.jpegxl_encode(z, lossless=True, effort=1),
        "png": imagecodecs.png_encode(z),
        "webp": imagecodecs.webp_encode(z, lossless=True, method=0),
    }
    del z
    for method, data in files.items():
        tracemalloc.start()
        start = time.perf_counter()
        with pytest.raises(FormatError):
            decode(method, data, (2, 2, 3), np.uint8)
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert elapsed < 0.02, (method, elapsed)
        assert peak < 1 << 20, (method, peak)  # no 27 MB array was made


def _corruptions(data: bytes, seed: int, flips: int):
    """Truncations (every length for short data, else 60 spread ones) and `flips` copies with
    1..4 random bytes replaced."""
    rng = np.random.default_rng(seed)
    n = len(data)
    cuts = range(n) if n <= 60 else sorted(set(np.linspace(0, n - 1, 60).astype(int)))
    for cut in cuts:
        yield data[:cut]
    for _ in range(flips):
        buf = bytearray(data)
        for pos in rng.integers(0, n, rng.integers(1, 5)):
            buf[pos] = (buf[pos] + int(rng.integers(1, 256))) % 256
        yield bytes(buf)


@pytest.mark.parametrize("method", METHODS)
def test_fuzz_decode_gives_exact_shape_or_format_error(method):
    """Malformed data gives FormatError or (no checksum in jxl/webp/store) an array of the
    expected layout, never another exception; the container's CRC catches the latter."""
    arr = _palette(10, 13, 4, np.uint8)
    arr[:, :, :3] ^= _noise(10, 13, 3, np.uint8) & 7
    data = encode(method, arr)
    start = time.perf_counter()
    outcomes = {"error": 0, "exact": 0, "other pixels": 0}
    for bad in _corruptions(data, seed=METHODS.index(method), flips=150):
        try:
            back = decode(method, bad, arr.shape, arr.dtype)
        except FormatError:
            outcomes["error"] += 1
            continue
        assert back.shape == arr.shape and back.dtype == arr.dtype
        outcomes["exact" if np.array_equal(back, arr) else "other pixels"] += 1
    assert time.perf_counter() - start < 3
    assert outcomes["error"] > 0


def test_fuzz_jpeg_restore():
    data = classical.jpeg_transcode(_jpeg(_photo(32, 40)))
    assert data is not None
    for bad in _corruptions(data, seed=7, flips=100):
        try:
            out = classical.jpeg_restore(bad)
        except FormatError:
            continue
        assert isinstance(out, bytes)
    for bad in (b"", b"\xff\xd8\xff", b"JXL garbage" * 10, encode("jxl", _photo(8, 8))):
        with pytest.raises(FormatError):
            classical.jpeg_restore(bad)


# --- JPEG transcoding -------------------------------------------------------------------


def _photo(h: int, w: int) -> np.ndarray:
    """A smooth image with fine noise: what JPEG is used for."""
    return np.clip(
        _gradient(h, w, 3, np.uint8).astype(np.int64) + _noise(h, w, 3, np.uint8) % 24 - 12,
        0,
        255,
    ).astype(np.uint8)


def _jpeg(arr: np.ndarray, mode: str = "RGB", **options) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(
        buf, "JPEG", quality=options.pop("quality", 90), **options
    )
    return buf.getvalue()


def _exif() -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "nncompress test camera"
    exif[0x0132] = "2026:01:02 03:04:05"
    return exif.tobytes()


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"progressive": True},
        {"exif": "exif"},
        {"progressive": True, "exif": "exif"},
        {"mode": "L"},
        {"subsampling": 0, "quality": 95},
        {"optimize": True, "restart_marker_blocks": 4},
    ],
    ids=["baseline", "progressive", "baseline-exif", "progressive-exif", "grey", "444", "rst"],
)
def test_jpeg_transcode_restores_identical_bytes_and_is_smaller(options):
    options = dict(options)
    if options.get("exif") == "exif":
        options["exif"] = _exif()
    jpeg = _jpeg(_photo(96, 128), **options)
    data = classical.jpeg_transcode(jpeg)
    assert data is not None
    assert len(data) < 0.92 * len(jpeg)  # measured 0.80x .. 0.90x
    assert classical.jpeg_restore(data) == jpeg


def test_jpeg_transcode_keeps_trailing_bytes():
    jpeg = _jpeg(_photo(32, 32)) + b"after EOI"
    data = classical.jpeg_transcode(jpeg)
    assert data is not None and classical.jpeg_restore(data) == jpeg


def test_jpeg_transcode_refusals():
    photo = _photo(32, 40)
    assert classical.jpeg_transcode(_jpeg(photo, "CMYK")) is None
    assert (
        classical.jpeg_transcode(
            bytes(
                imagecodecs.jpeg8_encode(
                    photo[:, :, 0].astype(np.uint16) * 16, level=90, bitspersample=12
                )
            )
        )
        is None
    )
    assert classical.jpeg_transcode(bytes(imagecodecs.jpeg8_encode(photo, lossless=True))) is None
    assert classical.jpeg_transcode(b"") is None
    assert classical.jpeg_transcode(b"not a jpeg") is None
    assert classical.jpeg_transcode(_jpeg(photo)[:200]) is None  # truncated


def test_jpeg_transcode_refuses_when_reconstruction_differs(monkeypatch):
    jpeg = _jpeg(_photo(16, 16))
    monkeypatch.setattr(imagecodecs, "jpegxl_decode_jpeg", lambda data, **kw: jpeg[:-1] + b"\0")
    assert classical.jpeg_transcode(jpeg) is None


def test_codec_threads_follow_the_environment(monkeypatch):
    monkeypatch.setenv(classical.THREADS_ENV, "1")
    assert classical._threads() == 1
    monkeypatch.setenv(classical.THREADS_ENV, "x")
    assert classical._threads() == (os.cpu_count() or 1)
