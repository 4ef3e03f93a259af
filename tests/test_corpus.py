"""benchmarks/corpus.py and corpus_compare.py: the corpus builds deterministically, the
exactness checker catches what a lossless coder must not do, and the comparison runs (with
a stand-in for the nncompress CLI, so these tests do not depend on the model)."""

from __future__ import annotations

import io
import json
import shlex
import sys
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
from PIL import Image, ImageSequence
from PIL.PngImagePlugin import PngInfo

from benchmarks import corpus, corpus_compare

TEST_SCALE = 0.15  # the whole corpus in well under a second, classical codecs in seconds
PHOTO_SIZES = ((200, 150), (180, 160))

# Stands in for `nncompress`: encode stores the input, decode gives it back (FAKE_NNC=store),
# or gives back one changed pixel (flip), or encode fails (fail).
FAKE_NNC = """
import json, os, shutil, sys
from PIL import Image
cmd, args = sys.argv[1], sys.argv[2:]
mode = os.environ.get("FAKE_NNC", "store")
if cmd == "info":
    print(json.dumps({"method": "store", "version": 4}))
    sys.exit(0)
src, out = args[0], args[args.index("-o") + 1]
if cmd == "encode" and mode == "fail":
    print("Traceback (most recent call last):", file=sys.stderr)
    print("Error: no method for this image", file=sys.stderr)
    sys.exit(1)
if cmd == "decode" and mode == "flip":
    img = Image.open(src).convert("RGB")
    r, g, b = img.getpixel((0, 0))
    img.putpixel((0, 0), (255 - r, g, b))
    img.save(out, format="PNG")
else:
    shutil.copyfile(src, out)
"""


def _photos(folder: Path) -> Path:
    """Two synthetic 'photos': smooth colour fields with noise."""
    folder.mkdir(parents=True, exist_ok=True)
    for seed, (w, h) in enumerate(PHOTO_SIZES):
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], axis=2)
        base = base + 40 * np.sin(xx / 7.0 + seed)[:, :, None] + rng.normal(0, 6, (h, w, 3))
        Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(folder / f"p{seed}.png")
    return folder


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    out = root / "corpus"
    corpus.build(out, _photos(root / "photos"), scale=TEST_SCALE)
    return out


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_corpus_builds_deterministically(tmp_path: Path, small_corpus: Path) -> None:
    photos = _photos(tmp_path / "photos")
    a = corpus.build(tmp_path / "a", photos, small=True)
    b = corpus.build(tmp_path / "b", photos, small=True)
    assert a == b
    files_a, files_b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert files_a == files_b
    assert set(files_a) == {e["name"] for e in a} | {corpus.CORPUS_JSON}
    doc = json.loads(files_a[corpus.CORPUS_JSON])
    assert doc["skipped"] == [] and len(doc["images"]) == len(corpus.SPECS)
    kinds = {e["kind"] for e in a}
    assert {
        "screenshot",
        "chart",
        "logo",
        "palette",
        "bilevel",
        "noise",
        "grey-photo",
        "photo",
        "16-bit",
        "alpha",
        "multi-frame",
        "metadata",
    } <= kinds
    # corpus.json agrees with what the independent reader sees in each file
    for e in a:
        pic = corpus_compare.read_picture(tmp_path / "a" / e["name"])
        assert (pic.mode, pic.bit_depth, pic.n_frames) == (e["mode"], e["bit_depth"], e["frames"])
        assert pic.size == (e["width"], e["height"])
    by_name = {e["name"]: e for e in a}
    assert by_name["photo16_rgb.png"]["bit_depth"] == 16
    assert by_name["bilevel_text.png"]["mode"] == "1"
    assert by_name["palette_pixelart.png"]["mode"] == "P"
    assert set(by_name["meta_png.png"]["metadata"]) >= {"icc", "exif", "xmp", "text", "dpi"}
    assert set(by_name["meta_jpeg.jpg"]["metadata"]) >= {"icc", "exif"}
    assert by_name["anim.gif"]["frames"] >= 4 and by_name["anim_apng.png"]["frames"] >= 3
    # the 16-bit image's low byte is not a copy of the high byte
    arr = imagecodecs.png_decode((tmp_path / "a" / "photo16_rgb.png").read_bytes())
    assert arr.dtype == np.uint16 and np.count_nonzero((arr >> 8) != (arr & 0xFF)) > arr.size // 2
    # the logos have exactly four colours; the soft-mask photo keeps RGB under alpha 0
    logo = np.asarray(Image.open(tmp_path / "a" / "logo_4colour_256.png"))
    assert len(np.unique(logo.reshape(-1, 3), axis=0)) == 4
    rgba = np.asarray(Image.open(tmp_path / "a" / "photo_rgba_softmask.png"))
    clear = rgba[:, :, 3] == 0
    assert clear.any() and (rgba[clear][:, :3] != 0).any(axis=1).all()
    assert ((rgba[:, :, 3] > 0) & (rgba[:, :, 3] < 255)).any()


def test_corpus_without_photos_skips_photo_kinds(tmp_path: Path) -> None:
    entries = corpus.build(tmp_path / "c", tmp_path / "no-such-folder", scale=TEST_SCALE)
    doc = json.loads((tmp_path / "c" / corpus.CORPUS_JSON).read_text())
    skipped = {s["name"] for s in doc["skipped"]}
    assert skipped == {s.name for s in corpus.SPECS if s.photo}
    assert all("does not exist" in s["reason"] for s in doc["skipped"])
    names = {e["name"] for e in entries}
    assert {"meta_png.png", "meta_jpeg.jpg", "noise_uniform_256.png"} <= names


# --- the exactness checker ---------------------------------------------------------------------


def _check(original: Path, decoded: Path) -> corpus_compare.Check:
    return corpus_compare.compare_files(original, decoded)


def test_checker_accepts_identical_files(small_corpus: Path) -> None:
    for e in json.loads((small_corpus / corpus.CORPUS_JSON).read_text())["images"]:
        path = small_corpus / e["name"]
        check = _check(path, path)
        assert check.exact and check.metadata_ok, (e["name"], check)


def test_checker_detects_a_changed_pixel(small_corpus: Path, tmp_path: Path) -> None:
    src = small_corpus / "photo_256x256.png"
    img = Image.open(src)
    r, g, b = img.getpixel((3, 2))
    img.putpixel((3, 2), (r, g, b ^ 1))
    img.save(tmp_path / "x.png")
    check = _check(src, tmp_path / "x.png")
    assert not check.exact and "1 of" in check.problems[0]
    # a resave without the change is exact
    Image.open(src).save(tmp_path / "same.png", optimize=True)
    assert _check(src, tmp_path / "same.png").exact


def test_checker_detects_rgb_lost_under_alpha_0(small_corpus: Path, tmp_path: Path) -> None:
    src = small_corpus / "photo_rgba_softmask.png"
    arr = np.asarray(Image.open(src)).copy()
    arr[arr[:, :, 3] == 0, :3] = 0  # what a coder that premultiplies would do
    Image.fromarray(arr, "RGBA").save(tmp_path / "x.png")
    assert not _check(src, tmp_path / "x.png").exact


def test_checker_detects_a_missing_frame(small_corpus: Path, tmp_path: Path) -> None:
    src = small_corpus / "anim_apng.png"
    with Image.open(src) as img:
        frames = [f.copy() for f in ImageSequence.Iterator(img)]
    durations = corpus.APNG_DURATIONS[: len(frames) - 1]
    frames[0].save(
        tmp_path / "x.png", save_all=True, append_images=frames[1:-1], duration=durations, loop=0
    )
    check = _check(src, tmp_path / "x.png")
    assert not check.exact
    assert any(p.startswith(f"frames {len(frames)} -> {len(frames) - 1}") for p in check.problems)
    # the GIF decoded to one still image: frames and animation metadata are gone
    gif = small_corpus / "anim.gif"
    Image.open(gif).convert("RGB").save(tmp_path / "still.png")
    check = _check(gif, tmp_path / "still.png")
    assert not check.exact and any(p.startswith("frames") for p in check.problems)


def test_checker_detects_16_bit_reduced_to_8(small_corpus: Path, tmp_path: Path) -> None:
    src = small_corpus / "photo16_rgb.png"
    Image.open(src).save(tmp_path / "x.png")  # Pillow reads 16-bit RGB as 8-bit RGB
    check = _check(src, tmp_path / "x.png")
    assert not check.exact
    assert "bit depth 16 -> 8" in check.problems
    # the low byte zeroed, still 16-bit: pixels differ
    arr = imagecodecs.png_decode(src.read_bytes())
    (tmp_path / "y.png").write_bytes(imagecodecs.png_encode(arr & 0xFF00))
    check = _check(src, tmp_path / "y.png")
    assert not check.exact and "samples differ" in check.problems[0]
    grey = small_corpus / "photo16_grey.png"
    (tmp_path / "z.png").write_bytes(
        imagecodecs.png_encode((imagecodecs.png_decode(grey.read_bytes()) >> 8).astype(np.uint8))
    )
    assert "bit depth 16 -> 8" in _check(grey, tmp_path / "z.png").problems


def _resave_meta(src: Path, out: Path, drop: str) -> None:
    img = Image.open(src)
    img.load()
    info = PngInfo()
    for key, value in img.text.items():
        if key != corpus_compare.XMP_KEY or drop != "xmp":
            info.add_itxt(key, value) if not value.isascii() else info.add_text(key, value)
    if drop == "text-value":
        info.add_text("Title", "changed")
    options = {
        "pnginfo": info,
        "exif": img.info["exif"],
        "dpi": (300, 300),
        "icc_profile": img.info["icc_profile"],
    }
    if drop == "icc":
        del options["icc_profile"]
    if drop == "orientation":
        exif = img.getexif()
        exif[corpus.ORIENTATION_TAG] = 1
        options["exif"] = exif.tobytes()
    Image.fromarray(np.asarray(img)).save(out, **options)


def test_checker_detects_lost_metadata(small_corpus: Path, tmp_path: Path) -> None:
    src = small_corpus / "meta_png.png"
    _resave_meta(src, tmp_path / "keep.png", drop="")
    keep = _check(src, tmp_path / "keep.png")
    assert keep.exact and keep.metadata_ok, keep
    expected = {
        "icc": "icc",
        "xmp": "xmp",
        "orientation": "exif orientation (6 -> 1)",
        "text-value": "text 'Title' (differs)",
    }
    for drop, missing in expected.items():
        _resave_meta(src, tmp_path / f"{drop}.png", drop=drop)
        check = _check(src, tmp_path / f"{drop}.png")
        assert check.exact and missing in check.missing, (drop, check)
    # pixels only: everything is reported missing
    Image.fromarray(np.asarray(Image.open(src))).save(tmp_path / "bare.png")
    check = _check(src, tmp_path / "bare.png")
    assert {"icc", "exif", "xmp", "dpi"} <= set(check.missing)


def test_checker_on_jpeg_input(small_corpus: Path, tmp_path: Path) -> None:
    src = small_corpus / "meta_jpeg.jpg"
    img = Image.open(src)
    # decoded to PNG with the JPEG's pixels and metadata: exact
    img.save(
        tmp_path / "x.png",
        icc_profile=img.info["icc_profile"],
        exif=img.info["exif"],
        dpi=img.info["dpi"],
    )
    check = _check(src, tmp_path / "x.png")
    assert check.exact and check.metadata_ok, check
    # a JPEG output must be the same bytes
    data = bytearray(src.read_bytes())
    (tmp_path / "same.jpg").write_bytes(bytes(data))
    assert _check(src, tmp_path / "same.jpg").exact
    buf = io.BytesIO()
    img.save(
        buf,
        format="JPEG",
        quality=90,
        exif=img.info["exif"],
        icc_profile=img.info["icc_profile"],
        comment=b"re-encoded",
    )
    (tmp_path / "other.jpg").write_bytes(buf.getvalue())
    assert not _check(src, tmp_path / "other.jpg").exact


# --- the comparison --------------------------------------------------------------------------


def test_compare_without_nnc_writes_the_table(small_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "res"
    rc = corpus_compare.main([str(small_corpus), "--no-nnc", "--out", str(out)])
    assert rc == corpus_compare.EXIT_OK
    md = (out / "corpus.md").read_text()
    doc = json.loads((out / "corpus.json").read_text())
    names = [
        e["name"] for e in json.loads((small_corpus / corpus.CORPUS_JSON).read_text())["images"]
    ]
    assert [r["name"] for r in doc["images"]] == names
    assert "| image | kind | size |" in md and "WebP-LL" in md and "JXL-e7" in md
    assert all(f"| {n} |" in md for n in names)
    rows = {r["name"]: r for r in doc["images"]}
    for r in rows.values():
        assert r["min"] is not None and r["min"] == min(
            v["bytes"] for v in r["references"].values() if v["bytes"] is not None
        )
        assert r["references"]["png"]["bytes"] is not None  # PNG codes every image
    assert rows["photo16_rgb.png"]["references"]["webp"]["bytes"] is None
    assert "n/a" in md
    jpeg = rows["meta_jpeg.jpg"]["references"]
    assert jpeg["jpeg-jxl"]["bytes"] is not None
    assert rows["anim.gif"]["frames"] == len(corpus.GIF_DURATIONS)
    # incompressible noise: no reference beats raw pixels by much, nor exceeds them by much
    noise = rows["noise_uniform_256.png"]
    raw = noise["width"] * noise["height"] * 3
    assert 0.95 * raw < noise["min"] < 1.05 * raw + 1000


def _fake(tmp_path: Path) -> str:
    script = tmp_path / "fake_nnc.py"
    script.write_text(FAKE_NNC)
    return shlex.join([sys.executable, str(script)])


def _compare(small_corpus: Path, out: Path, fake: str, only: str) -> tuple[int, dict]:
    rc = corpus_compare.main([str(small_corpus), "--out", str(out), "--nnc", fake, "--only", only])
    return rc, {r["name"]: r for r in json.loads((out / "corpus.json").read_text())["images"]}


def test_compare_with_a_stand_in_nnc(
    small_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = _fake(tmp_path)
    only = "tiny_7x5.png,anim.gif,meta_png.png"
    # storing the input: exact, metadata kept, but larger than the best codec -> exit 2
    monkeypatch.setenv("FAKE_NNC", "store")
    rc, rows = _compare(small_corpus, tmp_path / "store", fake, only)
    assert rc == corpus_compare.EXIT_SIZE
    for r in rows.values():
        assert r["exact"] and r["metadata_ok"] and r["method"] == "store", r
        assert r["nnc_bytes"] == r["input_bytes"]
    assert rows["anim.gif"]["verdict"] == "SIZE"  # a GIF file is larger than JXL frames
    assert "SIZE" in (tmp_path / "store" / "corpus.md").read_text()
    # one wrong pixel -> exit 1
    monkeypatch.setenv("FAKE_NNC", "flip")
    rc, rows = _compare(small_corpus, tmp_path / "flip", fake, "tiny_7x5.png")
    assert rc == corpus_compare.EXIT_FAILURE
    assert rows["tiny_7x5.png"]["exact"] is False
    assert rows["tiny_7x5.png"]["verdict"].startswith("NOT EXACT")
    # a failing encode is recorded (its last line), not a crash
    monkeypatch.setenv("FAKE_NNC", "fail")
    rc, rows = _compare(small_corpus, tmp_path / "fail", fake, "tiny_7x5.png")
    assert rc == corpus_compare.EXIT_FAILURE
    row = rows["tiny_7x5.png"]
    assert (
        row["verdict"] == "ERROR" and row["nnc_error"] == "encode: Error: no method for this image"
    )
