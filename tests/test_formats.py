"""The .nnc format end to end: what an image file holds comes back exactly.

Round trips of 16-bit, RGBA with transparency, LA, multi-frame and metadata-carrying images
through the CLI, checked with readers independent of nncompress's own (libpng through
imagecodecs, Pillow); the API on 16-bit arrays and animations; the method choice on a
screenshot, a logo, a photo crop and noise against the classical codecs run directly; and
a fuzz-style pass that truncates and flips bytes of files of every method and expects the
exact original content or a typed error (nncompress.errors.NncError), nothing else.

Small images only, so that the whole module runs in seconds on 2 CPU cores; models: the
tests' histogram models (conftest.model_dir) where a forced model part is enough, the
pretrained small photo model (the default of method "auto" on the CPU) on a few small
images.
"""

from __future__ import annotations

import dataclasses
import io
import json
import zlib
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import VAL_DIR
from PIL import Image, ImageCms, ImageDraw, ImageSequence, PngImagePlugin

from nncompress import api, files
from nncompress import metadata as meta
from nncompress.cli import main
from nncompress.container import file as fmt
from nncompress.content import read_content
from nncompress.errors import (
    FormatError,
    IntegrityError,
    ModelFileError,
    ModelMismatchError,
    NncError,
    UnsupportedImageError,
)

TYPED = (FormatError, IntegrityError, ModelMismatchError, UnsupportedImageError)
CPU = "cpu"

XMP = (
    '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
    'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
    'xmlns:dc="http://purl.org/dc/elements/1.1/" dc:format="image/png"/>'
    '</rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
)
TITLE = "plain Latin-1 title, café"
RUSSIAN = "Привет, мир"  # a plain keyword with non-Latin text: an iTXt without lang
JAPANESE = "日本語のテキスト"  # an iTXt with a language tag and a translated keyword


# --- helpers --------------------------------------------------------------------------------


def cli(*args: str, ok: bool = True):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def encode_decode(src: Path, out: Path, *extra: str) -> tuple[Path, Path]:
    nnc = src.with_name(src.stem + ".nnc")
    cli("encode", str(src), "-o", str(nnc), "--device", CPU, *extra)
    cli("decode", str(nnc), "-o", str(out), "--device", CPU)
    return nnc, out


def srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def exif_orientation(n: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = n
    exif[0x010F] = "nncompress tests"  # Make
    return exif.tobytes()


def smooth_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 5 + y * 2, y * 6 + 20, (x + y) * 3 + 60], axis=2)
    return np.clip(base + rng.integers(-6, 7, size=(h, w, 3)), 0, 255).astype(np.uint8)


def only_part(data: bytes) -> bytes:
    """The bytes of a file's one pixel part (a still image coded whole, no metadata)."""
    f = files.parse(data)
    pixel = [d for e, d in f.parts() if e.method != "meta"]
    assert len(pixel) == 1, f.header.parts
    return pixel[0]


def one_line(message: str) -> None:
    assert message.strip() and "\n" not in message.strip(), message
    assert "Traceback" not in message, message


# --- 1. round trips through the CLI -----------------------------------------------------------




@pytest.mark.parametrize(
    "shape, quiet",
    [
        ((24, 32, 3), False),
        ((24, 32), False),
        ((24, 32), True),  # no report line: the round trip itself
    ],
    ids=["rgb16", "grey16", "grey16-quiet"],
)
def test_cli_16bit_png_round_trip(tmp_path: Path, shape, quiet: bool) -> None:
    rng = np.random.default_rng(1)
    a = rng.integers(0, 65536, size=shape, dtype=np.uint16)
    a[:4] = 0x1234  # some structure, and values whose two bytes differ
    a[-1] = 65535
    src = tmp_path / "deep.png"
    src.write_bytes(bytes(imagecodecs.png_encode(a)))
    assert imagecodecs.png_decode(src.read_bytes()).dtype == np.uint16
    nnc, out = encode_decode(src, tmp_path / "back.png", *(["--quiet"] if quiet else []))
    assert files.parse(nnc.read_bytes()).header.bit_depth == 16
    back = imagecodecs.png_decode(out.read_bytes())
    assert back.dtype == np.uint16
    assert back.shape == a.shape
    assert np.array_equal(back, a)
    assert out.read_bytes()[24] == 16  # IHDR bit depth


def test_to_png_of_read_16bit_grey() -> None:
    """The bug above without the CLI: a 16-bit greyscale Content as read cannot be written."""
    from nncompress.content import to_png

    a = np.arange(20, dtype=np.uint16).reshape(4, 5) * 3000
    back = imagecodecs.png_decode(to_png(read_content(a)))
    assert back.dtype == np.uint16 and np.array_equal(back, a)


def _mode_round_trip(tmp_path: Path, a: np.ndarray, mode: str) -> None:
    """``a`` saved as a PNG of ``mode``, encoded and decoded through the CLI: the file
    keeps the mode, the decoded PNG has it and every sample."""
    src = tmp_path / f"{mode.lower()}.png"
    Image.fromarray(a, mode).save(src)
    nnc, out = encode_decode(src, tmp_path / "back.png")
    assert files.parse(nnc.read_bytes()).header.mode == mode
    with Image.open(out) as im:
        assert im.mode == mode
        assert np.array_equal(np.asarray(im), a)


def test_cli_rgba_transparent_pixels_keep_their_colour(tmp_path: Path) -> None:
    a = np.zeros((24, 32, 4), np.uint8)
    a[..., :3] = smooth_rgb(24, 32, seed=2)
    a[..., 3] = 255
    a[:, :10, 3] = 0  # fully transparent, colour nonzero underneath
    a[5:9, 12:20, 3] = 128
    assert a[:, :10, :3].min() > 0 or a[:, :10, :3].max() > 0
    _mode_round_trip(tmp_path, a, "RGBA")


def test_cli_la_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    a = np.zeros((20, 28, 2), np.uint8)
    a[..., 0] = np.clip(np.arange(28)[None, :] * 9 + rng.integers(0, 5, (20, 28)), 0, 255)
    a[..., 1] = 255
    a[:6, :, 1] = 0  # transparent rows, grey values nonzero
    a[10:, 20:, 1] = 77
    _mode_round_trip(tmp_path, a, "LA")


def _frames(path: Path) -> tuple[list[np.ndarray], list[int]]:
    with Image.open(path) as im:
        frames, durations = [], []
        for fr in ImageSequence.Iterator(im):
            frames.append(np.asarray(fr.convert("RGBA")).copy())
            durations.append(int(fr.info.get("duration", 0)))
    return frames, durations


def _animation_frames(n: int, h: int = 24, w: int = 32) -> list[np.ndarray]:
    out = []
    for k in range(n):
        a = np.full((h, w, 3), (20 + 40 * k, 200 - 30 * k, 90), np.uint8)
        a[4 + 3 * k : 12 + 3 * k, 5 * k : 5 * k + 10] = (250, 250, 10 * k)
        out.append(a)
    return out


def test_cli_animated_gif_to_apng(tmp_path: Path) -> None:
    durations = [100, 40, 250, 70]
    images = [Image.fromarray(a).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
              for a in _animation_frames(4)]  # fmt: skip
    src = tmp_path / "anim.gif"
    images[0].save(src, save_all=True, append_images=images[1:], duration=durations, loop=0)
    want, want_d = _frames(src)
    assert len(want) == 4 and want_d == durations
    nnc, out = encode_decode(src, tmp_path / "back.png")
    h = files.parse(nnc.read_bytes()).header
    assert h.frames == 4 and list(h.durations) == durations
    with Image.open(out) as im:
        assert im.format == "PNG" and getattr(im, "n_frames", 1) == 4
    got, got_d = _frames(out)
    assert got_d == durations
    for k, (x, y) in enumerate(zip(want, got)):
        assert np.array_equal(x, y), f"frame {k}"


def test_cli_apng_round_trip(tmp_path: Path) -> None:
    durations = [30, 500, 120]
    arrays = []
    for k, a in enumerate(_animation_frames(3)):
        rgba = np.dstack([a, np.full(a.shape[:2], 255, np.uint8)])
        rgba[: 2 + 2 * k, :, 3] = 0  # transparency differing per frame (colour kept)
        arrays.append(rgba)
    images = [Image.fromarray(a, "RGBA") for a in arrays]
    src = tmp_path / "anim.png"
    images[0].save(
        src,
        save_all=True,
        append_images=images[1:],
        duration=durations,
        loop=2,
        disposal=0,
        blend=0,
    )
    want, want_d = _frames(src)
    assert len(want) == 3 and want_d == durations
    nnc, out = encode_decode(src, tmp_path / "back.png")
    assert files.parse(nnc.read_bytes()).header.frames == 3
    got, got_d = _frames(out)
    assert len(got) == 3 and got_d == durations
    for k, (x, y) in enumerate(zip(want, got)):
        assert np.array_equal(x, y), f"frame {k}"
    with Image.open(out) as im:
        assert im.info.get("loop") == 2


def _metadata_png(path: Path, icc: bytes) -> np.ndarray:
    a = smooth_rgb(24, 32, seed=4)
    info = PngImagePlugin.PngInfo()
    info.add_text("Title", TITLE)
    info.add_itxt("Comment", RUSSIAN)
    info.add_itxt("Description", JAPANESE, lang="ja", tkey="説明")
    info.add_itxt("XML:com.adobe.xmp", XMP)
    Image.fromarray(a).save(
        path, icc_profile=icc, exif=exif_orientation(6), dpi=(300, 300), pnginfo=info
    )
    return a


def test_cli_metadata_round_trip(tmp_path: Path) -> None:
    icc = srgb_icc()
    src = tmp_path / "meta.png"
    a = _metadata_png(src, icc)
    nnc, out = encode_decode(src, tmp_path / "back.png")
    with Image.open(out) as im:
        im.load()
        assert np.array_equal(np.asarray(im), a)
        assert im.info["icc_profile"] == icc
        assert im.getexif()[0x0112] == 6
        assert im.getexif()[0x010F] == "nncompress tests"
        assert im.info["XML:com.adobe.xmp"] == XMP
        assert im.text["Title"] == TITLE
        assert im.text["Comment"] == RUSSIAN
        desc = im.text["Description"]
        assert desc == JAPANESE
        assert (desc.lang, desc.tkey) == ("ja", "説明")
        dpi = im.info["dpi"]
        assert dpi == pytest.approx((300, 300), abs=0.01)

    # info --json: the method and one line per metadata item.
    r = cli("info", "--json", str(nnc))
    (row,) = json.loads(r.stdout)
    assert row["method"] in files.METHODS and row["method"] != "auto"
    assert row["mode"] == "RGB" and row["bit_depth"] == 8
    lines = row["metadata"]
    assert any(line.startswith(f"icc: {len(icc)} bytes") for line in lines), lines
    assert any(line.startswith("exif: ") and "orientation 6" in line for line in lines), lines
    assert any(line.startswith("xmp: ") for line in lines), lines
    # 300 dpi in a PNG is 11811 pixels per metre: 299.9994 dpi, as the file states it.
    dpi_lines = [line for line in lines if line.startswith("dpi: ")]
    assert len(dpi_lines) == 1, lines
    x, y = (float(v) for v in dpi_lines[0].removeprefix("dpi: ").split(" x "))
    assert x == pytest.approx(300, abs=0.01) and y == pytest.approx(300, abs=0.01)
    assert any(line.startswith("text Title:") for line in lines), lines
    assert any(line.startswith("text Comment:") and RUSSIAN in line for line in lines), lines
    assert any(line.startswith("text Description [ja] 説明:") for line in lines), lines
    assert row["parts"][-1].startswith("meta none frame 0"), row["parts"]
    text = cli("info", str(nnc)).stdout
    assert "orientation 6" in text and row["method"] in text


def test_cli_strip_keeps_only_the_colour_description(tmp_path: Path) -> None:
    """--strip drops EXIF, XMP, text and dpi; it keeps the colour description (ICC profile,
    gAMA, cHRM, sRGB: metadata.strip), so the pixels still mean the same colours."""
    icc = srgb_icc()
    src = tmp_path / "meta.png"
    a = _metadata_png(src, icc)
    nnc, out = encode_decode(src, tmp_path / "back.png", "--strip")
    kinds = {it.kind for it in api.decompress_content(nnc, device=CPU).metadata}
    assert kinds == {"icc"}
    with Image.open(out) as im:
        im.load()
        assert np.array_equal(np.asarray(im), a)
        assert im.info.get("icc_profile") == icc
        assert not im.getexif()
        assert "XML:com.adobe.xmp" not in im.info
        assert not im.text
        assert "dpi" not in im.info
    (row,) = json.loads(cli("info", "--json", str(nnc)).stdout)
    assert len(row["metadata"]) == 1 and row["metadata"][0].startswith("icc:")
    # What strip keeps, in general.
    items = [meta.Item(k, "", v) for k, v in (
        ("icc", icc), ("exif", exif_orientation(1)), ("xmp", XMP.encode()),
        ("gamma", (45455).to_bytes(4, "big")), ("srgb", b"\x00"),
    )] + [meta.Item("text", "Title", b"x")]  # fmt: skip
    assert [it.kind for it in meta.strip(items)] == ["icc", "gamma", "srgb"]


def _jpeg(path: Path) -> bytes:
    a = smooth_rgb(32, 32, seed=5)
    Image.fromarray(a).save(path, quality=90, exif=exif_orientation(3))
    return path.read_bytes()


def test_cli_jpeg_comes_back_byte_identical(tmp_path: Path) -> None:
    src = tmp_path / "photo.jpg"
    jpeg = _jpeg(src)
    nnc = tmp_path / "photo.nnc"
    r = cli("encode", str(src), "-o", str(nnc), "--device", CPU)
    assert "(jpeg)" in r.output
    assert files.parse(nnc.read_bytes()).header.method_summary() == "jpeg"
    (row,) = json.loads(cli("info", "--json", str(nnc)).stdout)
    assert row["method"] == "jpeg"
    back = tmp_path / "back.jpg"
    cli("decode", str(nnc), "-o", str(back), "--device", CPU)
    assert back.read_bytes() == jpeg
    # Default output name: IN.jpg.
    cli("decode", str(nnc), "--device", CPU)
    assert (tmp_path / "photo.jpg").read_bytes() == jpeg  # existed: IN.decoded.jpg written
    assert (tmp_path / "photo.decoded.jpg").read_bytes() == jpeg
    # -o x.png: a one-line error, nothing written.
    r = cli("decode", str(nnc), "-o", str(tmp_path / "x.png"), "--device", CPU, ok=False)
    assert r.exit_code != 0
    one_line(r.output)
    assert "jpg" in r.output.lower()
    assert not (tmp_path / "x.png").exists()


# --- 2. the API --------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(20, 24), (20, 24, 3)], ids=["HxW", "HxWx3"])
def test_api_uint16_arrays(shape) -> None:
    rng = np.random.default_rng(6)
    a = rng.integers(0, 65536, size=shape, dtype=np.uint16)
    ramp = (np.arange(shape[1], dtype=np.uint16) * 2000).reshape(
        (1, shape[1]) + (1,) * (len(shape) - 2)
    )
    a[::3] = ramp  # some structure next to the noise
    data = api.compress(a, device=CPU)
    c = api.decompress_content(data, device=CPU)
    assert c.bit_depth == 16 and c.mode == ("L" if len(shape) == 2 else "RGB")
    assert c.frames[0].dtype == np.uint16
    assert np.array_equal(c.frames[0].reshape(shape), a)
    assert api.same_content(read_content(a), c)
    # One sample changed: not the same content.
    other = a.copy()
    other.flat[7] ^= 0x100
    assert not api.same_content(read_content(other), c)
    if len(shape) == 2:
        im = api.decompress(data, device=CPU)
        assert im.mode == "I;16" and np.array_equal(np.asarray(im), a)
    else:
        with pytest.raises(UnsupportedImageError):
            api.decompress(data, device=CPU)


def test_api_animation_content_but_no_pillow_image(tmp_path: Path) -> None:
    images = [Image.fromarray(a) for a in _animation_frames(3, 16, 16)]
    buf = io.BytesIO()
    images[0].save(buf, format="PNG", save_all=True, append_images=images[1:],
                   duration=[10, 20, 30], loop=0)  # fmt: skip
    data = api.compress(buf.getvalue(), device=CPU, method="png")
    with pytest.raises(UnsupportedImageError, match="frames"):
        api.decompress(data, device=CPU)
    c = api.decompress_content(data, device=CPU)
    assert len(c.frames) == 3 and c.durations == (10, 20, 30)
    assert api.same_content(read_content(buf.getvalue()), c)
    for x, y in zip(c.frames, _animation_frames(3, 16, 16)):
        assert np.array_equal(x, y)


# --- 3. the method choice ----------------------------------------------------------------------


def _screenshot() -> np.ndarray:
    im = Image.new("RGB", (96, 64), (236, 236, 236))
    d = ImageDraw.Draw(im)
    d.rectangle((0, 0, 95, 11), fill=(40, 70, 140))
    d.text((3, 0), "File  Edit  View", fill=(255, 255, 255))
    d.rectangle((4, 16, 60, 28), fill=(255, 255, 255), outline=(120, 120, 120))
    d.text((7, 17), "hello, world", fill=(0, 0, 0))
    d.rectangle((64, 16, 91, 28), fill=(200, 60, 60))
    d.text((67, 17), "OK", fill=(255, 255, 255))
    for k in range(3):
        d.text((4, 34 + 9 * k), f"line {k}: 0x{k * 4919:04x}", fill=(30, 30, 30))
    return np.asarray(im).copy()


def _logo() -> np.ndarray:
    im = Image.new("RGB", (64, 64), (255, 255, 255))
    d = ImageDraw.Draw(im)
    d.ellipse((6, 6, 57, 57), fill=(220, 40, 40))
    d.rectangle((20, 20, 43, 43), fill=(20, 40, 160))
    d.polygon([(32, 24), (40, 40), (24, 40)], fill=(250, 200, 0))
    a = np.asarray(im).copy()
    assert len(np.unique(a.reshape(-1, 3), axis=0)) == 4
    return a


def _references(a: np.ndarray) -> dict[str, int]:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG", compress_level=9)
    return {
        "png (Pillow 9)": len(buf.getvalue()),
        "webp (100, m6)": len(imagecodecs.webp_encode(a, level=100, lossless=True, method=6)),
        "jxl (e7)": len(imagecodecs.jpegxl_encode(a, lossless=True, distance=0, effort=7)),
    }


@pytest.mark.parametrize("make", [_screenshot, _logo], ids=["screenshot", "logo"])
def test_method_choice_synthetic_gets_a_classical_codec(make) -> None:
    a = make()
    res = api.compress_detailed([a], device=CPU)[0]
    assert res.method in ("jxl", "webp", "png"), (res.method, res.candidates)
    assert res.model_name is None
    part = only_part(res.data)
    overhead = len(res.data) - len(part)
    assert overhead < 48, overhead
    refs = _references(a)
    assert len(part) <= min(refs.values()), (res.candidates, refs)
    assert len(res.data) <= min(refs.values()) + overhead
    assert len(part) == min(v for k, v in res.candidates.items() if "predicted" not in k)
    assert np.array_equal(api.decompress_content(res.data, device=CPU).frames[0], a)


def _photo_crop() -> np.ndarray:
    photos = sorted(VAL_DIR.glob("*")) if VAL_DIR.is_dir() else []
    if not photos:
        pytest.skip(f"no photos in {VAL_DIR}")
    with Image.open(photos[0]) as im:
        rgb = np.asarray(im.convert("RGB"))
    h, w = rgb.shape[:2]
    y, x = max(0, h // 2 - 32), max(0, w // 2 - 32)
    return np.ascontiguousarray(rgb[y : y + 64, x : x + 64])


def test_method_choice_photo_crop_is_the_smallest_candidate() -> None:
    a = _photo_crop()
    res = api.compress_detailed([a], device=CPU)[0]
    coded = {k: v for k, v in res.candidates.items() if "predicted" not in k}
    assert {"jxl", "webp", "png", "store"} & set(coded), res.candidates
    if "model (predicted)" in res.candidates:  # the model was not tried: it could not win
        assert res.candidates["model (predicted)"] >= min(coded.values())
    chosen = sum(len(d) for e, d in files.parse(res.data).parts() if e.method != "meta")
    assert chosen == min(coded.values()), (res.method, res.candidates)
    assert np.array_equal(api.decompress_content(res.data, device=CPU).frames[0], a)

    forced = api.compress_detailed([a], device=CPU, method="model")[0]
    assert forced.method == "model" and forced.model_name
    back = api.decompress_content(forced.data, device=CPU)
    assert api.same_content(read_content(a), back)


def test_method_choice_noise_is_never_much_larger_than_raw() -> None:
    a = np.random.default_rng(7).integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
    res = api.compress_detailed([a], device=CPU)[0]
    assert len(res.data) <= a.size + 64, (len(res.data), res.candidates)
    assert np.array_equal(api.decompress_content(res.data, device=CPU).frames[0], a)


@pytest.mark.parametrize("method", ["jxl", "webp", "png", "store", "model"])
def test_forced_method_round_trips(model_dir: Path, method: str) -> None:
    a = smooth_rgb(20, 24, seed=8)
    model = "hist-rgb" if method == "model" else None
    res = api.compress_detailed([a], model, device=CPU, method=method)[0]
    assert res.method == method
    assert [e.method for e in files.parse(res.data).header.parts] == [method]
    back = api.decompress_content(res.data, device=CPU)
    assert api.same_content(read_content(a), back)


@pytest.mark.parametrize("method", ["webp", "model"])
def test_forced_method_refuses_16_bit(model_dir: Path, method: str) -> None:
    a = np.random.default_rng(9).integers(0, 65536, size=(8, 8, 3), dtype=np.uint16)
    model = "hist-rgb" if method == "model" else None
    with pytest.raises(UnsupportedImageError) as e:
        api.compress(a, model, device=CPU, method=method)
    one_line(str(e.value))
    assert "16" in str(e.value)


def test_forced_webp_on_16_bit_is_one_line_in_the_cli(tmp_path: Path) -> None:
    src = tmp_path / "deep.png"
    src.write_bytes(bytes(imagecodecs.png_encode(np.full((8, 8, 3), 4000, np.uint16))))
    r = cli("encode", str(src), "-o", str(tmp_path / "x.nnc"), "--device", CPU,
            "--method", "webp", ok=False)  # fmt: skip
    assert r.exit_code == 1
    one_line(r.output)
    assert not (tmp_path / "x.nnc").exists()


# --- 4. fuzz-style: truncations and byte flips ---------------------------------------------


def _fuzz_seed(kind: str, tmp_path: Path) -> tuple[bytes, object]:
    """(file bytes, what it must decode to: a Content, or the JPEG bytes)."""
    rgb = smooth_rgb(12, 16, seed=10)
    if kind == "model":
        return api.compress(rgb, "hist-rgb", device=CPU, method="model"), rgb
    if kind == "model+alpha":
        rgba = np.dstack([rgb, np.where(np.arange(16) < 5, 0, 255).astype(np.uint8)[None]
                          .repeat(12, 0)])  # fmt: skip
        return api.compress(rgba, "hist-rgb", device=CPU, method="model"), rgba
    if kind in ("jxl", "webp", "png", "store"):
        return api.compress(rgb, device=CPU, method=kind), rgb
    if kind == "jpeg":
        jpeg = _jpeg(tmp_path / "s.jpg")
        return api.compress(jpeg, device=CPU, method="jpeg"), jpeg
    if kind == "meta":
        src = tmp_path / "m.png"
        _metadata_png(src, srgb_icc())
        return api.compress(src.read_bytes(), device=CPU, method="png"), src.read_bytes()
    if kind == "animation":
        images = [Image.fromarray(a) for a in _animation_frames(3, 12, 16)]
        buf = io.BytesIO()
        images[0].save(buf, format="PNG", save_all=True, append_images=images[1:],
                       duration=[10, 20, 30], loop=0)  # fmt: skip
        return api.compress(buf.getvalue(), device=CPU, method="webp"), buf.getvalue()
    if kind == "grey16":
        a = np.random.default_rng(11).integers(0, 65536, size=(10, 12), dtype=np.uint16)
        return api.compress(a, device=CPU, method="jxl"), a
    raise AssertionError(kind)


def _check(blob: bytes, want, what: str) -> str:
    """'ok' (the exact original) or the typed error's class name; fails on anything else."""
    try:
        got = api.decompress_content(blob, device=CPU)
    except TYPED as e:
        one_line(str(e))
        return type(e).__name__
    except ModelFileError as e:  # a damaged model name: "unknown model 'hist-rgK'"
        one_line(str(e))
        return type(e).__name__
    except NncError as e:  # another of ours, but not one a damaged file should give
        pytest.fail(f"{what}: {type(e).__name__}: {e}")
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"{what}: untyped {type(e).__name__}: {e}")
    if isinstance(want, bytes) and want.startswith(b"\xff\xd8"):
        assert got.jpeg == want, f"{what}: a different JPEG"
    else:
        assert api.same_content(read_content(want), got), f"{what}: silently different content"
    return "ok"


def _recrc(blob: bytes, part: int, pos: int, value: int) -> bytes:
    """The file with byte ``pos`` of part ``part`` set to ``value`` and both CRCs
    recomputed: what only the content CRC and the codecs' own checks can catch."""
    f = files.parse(blob)
    data = list(f.data)
    b = bytearray(data[part])
    b[pos] = value
    data[part] = bytes(b)
    crc = 0
    for d in data:
        crc = zlib.crc32(d, crc)
    return fmt.pack(fmt.File(dataclasses.replace(f.header, parts_crc32=crc), tuple(data)))


FUZZ_KINDS = ["model", "model+alpha", "jxl", "webp", "png", "store", "jpeg", "meta",
              "animation", "grey16"]  # fmt: skip


@pytest.mark.parametrize("kind", FUZZ_KINDS)
def test_fuzz_truncations_and_flips(model_dir: Path, tmp_path: Path, kind: str) -> None:
    blob, want = _fuzz_seed(kind, tmp_path)
    assert _check(blob, want, "the seed") == "ok"
    outcomes: dict[str, int] = {}

    def record(mutated: bytes, what: str) -> None:
        r = _check(mutated, want, f"{kind}: {what}")
        outcomes[r] = outcomes.get(r, 0) + 1

    # Every truncation of the header area and of the first bytes of the parts, a dense
    # sample of the rest.
    _, at = fmt.read_header(blob)
    lengths = set(range(0, min(len(blob), at + 64)))
    lengths |= set(range(at + 64, len(blob), max(1, (len(blob) - at) // 64)))
    lengths |= {len(blob) - 1, len(blob) - 2}
    for n in sorted(lengths):
        if n < len(blob):
            record(blob[:n], f"truncated to {n}")
    rng = np.random.default_rng(2024)
    for _ in range(200):
        pos = int(rng.integers(len(blob)))
        flipped = bytearray(blob)
        flipped[pos] ^= int(rng.integers(1, 256))
        record(bytes(flipped), f"byte {pos} changed")
    # Inside any part, with the CRCs made to match again: the codecs' own checks, the
    # metadata layout's and the content CRC (format 6: over the metadata items too) must
    # catch it.
    f = files.parse(blob)
    pixel = [k for k, e in enumerate(f.header.parts) if e.length]
    for _ in range(60):
        k = pixel[int(rng.integers(len(pixel)))]
        pos = int(rng.integers(len(f.data[k])))
        value = f.data[k][pos] ^ int(rng.integers(1, 256))
        record(_recrc(blob, k, pos, value), f"part {k} byte {pos} -> {value} (CRCs redone)")
    print(kind, len(blob), "bytes:", outcomes)
    assert outcomes.get("ok", 0) < sum(outcomes.values()), outcomes
