"""Format 6: palette animations, palette expansions, bare WebP parts, the content check
over metadata and timing, and version-5 files still read.

Small images only; classical methods (and the tests' histogram model for the one version-5
file with a model part), so the module runs in seconds on 2 CPU cores.
"""

from __future__ import annotations

import dataclasses
import io
import zlib
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
from conftest import VAL_DIR
from PIL import Image, ImageSequence, PngImagePlugin

from nncompress import api, classical, files
from nncompress import metadata as meta
from nncompress.container import file as fmt
from nncompress.content import read_content, to_png
from nncompress.errors import FormatError, IntegrityError

CPU = "cpu"
FORMAT5 = Path(__file__).parent / "data" / "format5"


# --- helpers ---------------------------------------------------------------------------------


def _replace_part(blob: bytes, k: int, data: bytes, **header) -> bytes:
    """The file with part ``k``'s bytes replaced (and header fields changed), its part
    table, parts CRC and header CRC recomputed: a crafted file whose CRCs all match."""
    f = files.parse(blob)
    parts = list(f.data)
    parts[k] = data
    entries = list(f.header.parts)
    entries[k] = dataclasses.replace(entries[k], length=len(data))
    crc = 0
    for d in parts:
        crc = zlib.crc32(d, crc)
    h = dataclasses.replace(f.header, parts=tuple(entries), parts_crc32=crc, **header)
    return fmt.pack(fmt.File(h, tuple(parts)))


def _rgba_frames(data: bytes) -> list[np.ndarray]:
    with Image.open(io.BytesIO(data)) as im:
        return [np.asarray(fr.convert("RGBA")).copy() for fr in ImageSequence.Iterator(im)]


def _gradient(h: int = 24, w: int = 32) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 7, y * 9, (x + y) * 4 + 40], axis=2).clip(0, 255).astype(np.uint8)


def _palette_image(indices: np.ndarray, palette_rgb: np.ndarray, **info) -> bytes:
    im = Image.frombytes("P", indices.shape[::-1], indices.astype(np.uint8).tobytes())
    im.putpalette(palette_rgb.astype(np.uint8).tobytes())
    buf = io.BytesIO()
    im.save(buf, format="PNG", **info)
    return buf.getvalue()


# --- palette animations ---------------------------------------------------------------------


def _palette_gif(transparent: bool) -> bytes:
    """Four frames, each quantized to its own palette (the GIF gets local palettes), one
    transparency index if asked."""
    frames = []
    for k in range(4):
        a = np.roll(_gradient(), 5 * k, axis=1)
        a[3 + 2 * k : 9 + 2 * k, 4:12] = (250, 30 * k, 10)
        frames.append(Image.fromarray(a).quantize(24 + 4 * k, dither=Image.Dither.NONE))
    buf = io.BytesIO()
    opts = {"transparency": 0} if transparent else {}
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:],
                   duration=[80, 30, 200, 50], loop=3, disposal=1, **opts)  # fmt: skip
    return buf.getvalue()


@pytest.mark.parametrize("transparent", [False, True], ids=["opaque", "transparency-index"])
def test_palette_gif_round_trip_keeps_mode_p(transparent: bool) -> None:
    gif = _palette_gif(transparent)
    with Image.open(io.BytesIO(gif)) as im:
        assert im.mode == "P" and im.n_frames == 4
        first_palette = im.getpalette("RGB")
    want = _rgba_frames(gif)
    blob = api.compress(gif, device=CPU)
    h = files.parse(blob).header
    assert h.mode == "P" and h.frames == 4 and h.durations == (80, 30, 200, 50) and h.loop == 3
    assert [p.method for p in h.parts][-1] == "palette"
    content = api.decompress_content(blob, device=CPU)
    assert api.same_content(read_content(gif), content)
    assert content.mode == "P" and len(content.frames) == 4
    png = to_png(content)
    with Image.open(io.BytesIO(png)) as out:
        assert out.format == "PNG" and out.mode == "P" and out.n_frames == 4
        assert out.info.get("loop") == 3
        durations = [fr.info.get("duration") for fr in ImageSequence.Iterator(out)]
        # the GIF's palette comes first; colours of the later frames' own palettes follow
        palette = out.getpalette("RGB")
        assert palette[: len(first_palette)] == first_palette
    assert durations == [80, 30, 200, 50]
    got = _rgba_frames(png)
    for k, (x, y) in enumerate(zip(want, got)):
        assert np.array_equal(x, y), f"frame {k}"
    if transparent:
        assert any((x[:, :, 3] == 0).any() for x in got)


def test_palette_apng_keeps_its_indices() -> None:
    rng = np.random.default_rng(3)
    palette = rng.integers(0, 256, size=(40, 3), dtype=np.uint8)
    images = []
    for _ in range(3):
        idx = rng.integers(0, 40, size=(12, 16), dtype=np.uint8)
        im = Image.frombytes("P", (16, 12), idx.tobytes())
        im.putpalette(palette.tobytes())
        images.append(im)
    buf = io.BytesIO()
    images[0].save(buf, format="PNG", save_all=True, append_images=images[1:],
                   duration=[10, 20, 30], loop=0, disposal=0, blend=0)  # fmt: skip
    c = read_content(buf.getvalue())
    assert c.mode == "P" and len(c.palette) == 4 * 40
    for im, frame in zip(images, c.frames):
        assert np.array_equal(np.asarray(im), frame[:, :, 0])
    back = api.decompress_content(api.compress(buf.getvalue(), device=CPU), device=CPU)
    assert api.same_content(c, back)


def test_palette_animation_with_too_many_colours_falls_back_to_rgb() -> None:
    """Frames whose palettes hold more than 256 colours together cannot share one
    palette: they are stored as RGB frames, exactly."""
    rng = np.random.default_rng(4)
    frames = []
    for _ in range(3):
        palette = rng.integers(0, 256, size=(200, 3), dtype=np.uint8)
        im = Image.frombytes("P", (20, 10), rng.integers(0, 200, (10, 20), np.uint8).tobytes())
        im.putpalette(palette.tobytes())
        frames.append(im)
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    gif = buf.getvalue()
    c = read_content(gif)
    assert c.mode == "RGB" and len(c.frames) == 3
    got = _rgba_frames(to_png(api.decompress_content(api.compress(gif, device=CPU), device=CPU)))
    for x, y in zip(_rgba_frames(gif), got):
        assert np.array_equal(x, y)


# --- palette expansions -----------------------------------------------------------------------


def _shuffled_palette_photo(duplicate: bool = False) -> tuple[bytes, np.ndarray]:
    """A 64x64 photo crop in 64 colours whose palette is in random order: its indices are
    noise to a codec's predictors, its colours are not (the expansion is 12% smaller).
    ``duplicate``: one more entry repeats entry 0's colour, and some pixels use it."""
    photos = sorted(VAL_DIR.glob("*")) if VAL_DIR.is_dir() else []
    if not photos:
        pytest.skip(f"no photos in {VAL_DIR}")
    with Image.open(photos[0]) as im:
        q = im.convert("RGB").crop((0, 0, 64, 64)).quantize(64)
    idx = np.asarray(q)
    palette = np.array(q.getpalette("RGB"), np.uint8).reshape(-1, 3)
    order = np.random.default_rng(5).permutation(len(palette))
    palette, idx = palette[order], np.argsort(order)[idx].astype(np.uint8)
    if duplicate:
        palette = np.concatenate([palette, palette[:1]])
        idx = idx.copy()
        idx[::3][idx[::3] == 0] = len(palette) - 1
    return _palette_image(idx, palette), idx


def test_palette_expansion_wins_and_maps_back_to_the_indices() -> None:
    png, idx = _shuffled_palette_photo()
    res = api.compress_detailed([png], device=CPU)[0]
    h = files.parse(res.data).header
    assert [(p.method, p.planes) for p in h.parts][0][1] == "expanded", res.candidates
    assert res.candidates[f"{h.parts[0].method} (expanded)"] < min(
        v for k, v in res.candidates.items() if "expanded" not in k
    )
    content = api.decompress_content(res.data, device=CPU)
    assert content.mode == "P" and np.array_equal(content.frames[0][:, :, 0], idx)
    assert api.same_content(read_content(png), content)


def test_palette_with_repeated_colours_never_uses_the_expansion() -> None:
    png, idx = _shuffled_palette_photo(duplicate=True)
    assert (idx == 64).any() and (idx == 0).any()  # two indices of one colour
    res = api.compress_detailed([png], device=CPU)[0]
    h = files.parse(res.data).header
    assert all(p.planes != "expanded" for p in h.parts)
    assert not any("expanded" in k for k in res.candidates)
    content = api.decompress_content(res.data, device=CPU)
    assert np.array_equal(content.frames[0][:, :, 0], idx)  # index 64, not 0, where it was


def test_expanded_colours_not_in_the_palette_are_a_format_error() -> None:
    """A crafted file: the palette part changed (an entry the pixels use), every CRC but
    the content check recomputed."""
    png, idx = _shuffled_palette_photo()
    blob = api.compress(png, device=CPU)
    f = files.parse(blob)
    assert f.header.parts[0].planes == "expanded"
    palette = bytearray(read_content(png).palette)
    used = int(idx[0, 0])
    palette[4 * used] ^= 0x55
    k = [p.method for p in f.header.parts].index("palette")
    forged = _replace_part(blob, k, files._pack_palette(bytes(palette)))
    with pytest.raises(FormatError, match="not in the palette"):
        api.decompress_content(forged, device=CPU)


def test_palette_part_is_coded_and_keeps_transparency() -> None:
    rng = np.random.default_rng(6)
    palette = rng.integers(0, 256, size=(200, 3), dtype=np.uint8)
    idx = rng.integers(0, 200, size=(9, 13), dtype=np.uint8)
    alphas = bytes([255, 0, 128] + [255] * 10)
    png = _palette_image(idx, palette, transparency=alphas)
    c = read_content(png)
    part = files._pack_palette(c.palette)
    assert part[0] == 199 and part[1] & 0x10  # 200 entries, RGBA
    assert files._unpack_palette(part) == c.palette
    opaque = _palette_image(idx, palette)
    part = files._pack_palette(read_content(opaque).palette)
    assert not part[1] & 0x10 and len(part) < 2 + 3 * 200 + 1
    back = api.decompress_content(api.compress(png, device=CPU), device=CPU)
    assert api.same_content(c, back)


# --- bare WebP parts and the fixed overhead ----------------------------------------------------


@pytest.mark.parametrize(
    "shape", [(3, 64, 3), (5, 7, 3), (5, 7, 4), (9, 11, 4), (1, 1, 3), (6, 10, 1), (4, 4, 2)]
)
def test_webp_parts_rebuild_libwebps_file_byte_for_byte(shape) -> None:
    rng = np.random.default_rng(sum(shape))
    for levels in (2, 17, 256):
        a = rng.integers(0, levels, size=shape, dtype=np.uint8)
        if shape[2] == 2:
            a[:, :, 0] = a[:, :, 0] // 2  # LA: alpha free
        full = classical.encode("webp", a)
        bare = classical.webp_bare(full)
        assert len(bare) == len(full) - 20 - len(bare) % 2
        assert classical.webp_riff(bare) == full
        assert np.array_equal(classical.decode("webp", bare, shape, np.uint8, bare_webp=True), a)
        blob = api.compress(a if shape[2] != 1 else a[:, :, 0], device=CPU, method="webp")
        (part,) = [d for e, d in files.parse(blob).parts() if e.method == "webp"]
        assert classical.webp_riff(part) == full


def test_webp_bare_refuses_other_layouts() -> None:
    full = classical.encode("webp", np.zeros((4, 4, 3), np.uint8))
    for bad in (full + b"\0\0", full[:-1], b"RIFF" + full[4:8] + b"WEBPVP8X" + full[16:], b""):
        with pytest.raises(ValueError):
            classical.webp_bare(bad)


def test_fixed_overhead_of_a_small_classical_file() -> None:
    """1024x3 RGB coded by WebP: magic 8, version 2, header length 1, header 17 (mode and
    depth 1, width 2, height 1, frames 1, two CRCs 8, part count 1, the part's row 2,
    encoder length 1), header CRC 4: 32 bytes besides the bare bitstream."""
    a = np.repeat(np.arange(1024, dtype=np.uint16)[None, :, None] // 4, 3, axis=0)
    a = np.repeat(a.astype(np.uint8), 3, axis=2)
    blob = api.compress(a, device=CPU, method="webp")
    f = files.parse(blob)
    assert len(blob) - f.header.parts[0].length == 32
    assert blob[8:10] == b"\x06\x00"


# --- the content check --------------------------------------------------------------------------


def _text_png() -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Title", "the real title")
    buf = io.BytesIO()
    Image.fromarray(_gradient(8, 12)).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def test_forged_metadata_with_recomputed_crcs_fails_the_content_check() -> None:
    png = _text_png()
    blob = api.compress(png, device=CPU, method="png")
    f = files.parse(blob)
    k = [p.method for p in f.header.parts].index("meta")
    items = meta.decode(f.data[k])
    assert [it.value for it in items if it.kind == "text"] == [b"the real title"]
    forged_items = [dataclasses.replace(it, value=b"a forged title") if it.kind == "text"
                    else it for it in items]  # fmt: skip
    forged = _replace_part(blob, k, meta.encode(forged_items))
    files.parse(forged)  # every CRC of the file matches
    with pytest.raises(IntegrityError, match="content checksum"):
        api.decompress_content(forged, device=CPU)
    # dropping the metadata part altogether is caught as well
    f = files.parse(blob)
    h = dataclasses.replace(f.header, parts=f.header.parts[:k])
    crc = zlib.crc32(b"".join(f.data[:k]))
    stripped = fmt.pack(fmt.File(dataclasses.replace(h, parts_crc32=crc), f.data[:k]))
    with pytest.raises(IntegrityError):
        api.decompress_content(stripped, device=CPU)


def test_forged_frame_timing_fails_the_content_check() -> None:
    gif = _palette_gif(False)
    blob = api.compress(gif, device=CPU)
    f = files.parse(blob)
    for change in ({"durations": (80, 30, 201, 50)}, {"loop": 0}):
        forged = fmt.pack(fmt.File(dataclasses.replace(f.header, **change), f.data))
        with pytest.raises(IntegrityError):
            api.decompress_content(forged, device=CPU)


def test_content_crc_covers_every_field() -> None:
    base = dict(mode="P", bit_depth=8, width=2, height=1, frames=[b"\0\1", b"\1\0"],
                palette=b"\1\2\3\4" * 2, durations=(10, 20), loop=0,
                metadata=[(8, b"Title", b"x")])  # fmt: skip
    crc = fmt.content_crc32(**base)
    changes = [
        {"palette": b"\1\2\3\5" + b"\1\2\3\4"},
        {"durations": (10, 21)},
        {"loop": 1},
        {"metadata": [(8, b"Title", b"y")]},
        {"metadata": [(8, b"Titlf", b"x")]},
        {"metadata": [(9, b"Title", b"x")]},
        {"metadata": []},
        {"frames": [b"\0\1", b"\1\1"]},
    ]
    for change in changes:
        assert fmt.content_crc32(**{**base, **change}) != crc, change
    # version 5's check covered the samples and palette only
    assert fmt.content_crc32(**{**base, "loop": 1, "metadata": [], "version": 5}) == (
        fmt.content_crc32(**{**base, "version": 5})
    )


def test_the_part_rows_frames_follow_from_their_place() -> None:
    blob = api.compress(_palette_gif(False), device=CPU)
    f = files.parse(blob)
    assert [p.frame for p in f.header.parts] == [0, 1, 2, 3, 0]
    moved = list(f.header.parts)
    moved[1] = dataclasses.replace(moved[1], frame=2)
    with pytest.raises(ValueError, match="frames"):
        dataclasses.replace(f.header, parts=tuple(moved))


# --- version-5 files ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, source",
    [("rgb-meta", "rgb-meta.png"), ("rgba-model", "rgba.png"), ("palette", "palette.png"),
     ("anim", "anim.png")],  # fmt: skip
)
def test_version_5_files_still_decode_exactly(model_dir: Path, name: str, source: str) -> None:
    blob = (FORMAT5 / f"{name}.nnc").read_bytes()
    f = files.parse(blob)
    assert f.version == 5 and files.describe(f)["format_version"] == 5
    want = read_content(FORMAT5 / source)
    got = api.decompress_content(blob, device=CPU)
    assert api.same_content(want, got)
    if name == "rgb-meta":  # version 5's WebP part is the whole RIFF file
        assert f.data[0][:4] == b"RIFF"
    # written again, it is a version-6 file of the same content
    again = api.compress(FORMAT5 / source, "hist-rgb" if "model" in name else None,
                         device=CPU, method="model" if "model" in name else "auto")  # fmt: skip
    assert files.parse(again).version == 6
    assert api.same_content(want, api.decompress_content(again, device=CPU))


def test_version_5_files_keep_their_own_rules() -> None:
    """A version-5 header is read with version 5's layout: mode and depth in two bytes,
    explicit frames; a truncated one is a FormatError, not a version-6 misreading."""
    blob = (FORMAT5 / "palette.nnc").read_bytes()
    assert fmt.version_of(blob) == 5
    for n in (11, 20, len(blob) - 1):
        with pytest.raises(FormatError):
            files.parse(blob[:n])


def test_16_bit_file_sets_the_depth_flag() -> None:
    a = np.random.default_rng(7).integers(0, 65536, size=(5, 6), dtype=np.uint16)
    blob = api.compress(a, device=CPU, method="png")
    assert blob[11] == fmt.MODE_CODES["L"] | fmt.DEPTH16_FLAG
    back = api.decompress_content(blob, device=CPU)
    assert back.bit_depth == 16 and np.array_equal(back.frames[0][:, :, 0], a)
    assert imagecodecs.png_decode(to_png(back)).dtype == np.uint16


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P"])
def test_decoded_animations_keep_repeated_frames(mode):
    """Pillow's APNG writer merges a frame equal to the one before it unless their dispose
    ops differ: to_png alternates them there, so every frame and duration comes back."""
    import io

    import numpy as np
    from PIL import Image

    from nncompress.content import read_content, to_png

    rng = np.random.default_rng(3)
    if mode == "P":
        a = rng.integers(0, 4, (12, 10), dtype=np.uint8)
    else:
        a = rng.integers(0, 256, (12, 10, len(mode)), dtype=np.uint8)
    b = a.copy()
    b[2:5, 1:4] = 1
    frames = [a, a, a, b, b, a]
    if mode == "P":
        ims = []
        for f in frames:
            im = Image.new("P", (f.shape[1], f.shape[0]))
            im.putdata(f.ravel().tolist())
            im.putpalette(bytes(range(12)))
            ims.append(im)
    else:
        ims = [Image.fromarray(f, mode) for f in frames]
    buf = io.BytesIO()
    durations = [10, 20, 30, 40, 50, 60]
    ims[0].save(
        buf, format="PNG", save_all=True, append_images=ims[1:], duration=durations, loop=0,
        disposal=[0, 2, 0, 2, 0, 0], blend=0, default_image=False,
    )  # fmt: skip
    c = read_content(buf.getvalue())
    assert len(c.frames) == 6 and c.durations == tuple(durations) and c.mode == mode
    back = read_content(to_png(c))
    assert back.mode == mode and back.durations == tuple(durations)
    assert len(back.frames) == 6
    assert all(np.array_equal(x, y) for x, y in zip(c.frames, back.frames, strict=True))
