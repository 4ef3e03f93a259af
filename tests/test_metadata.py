"""nncompress.metadata: extraction per format, the byte layout, PNG write-back, bit depths."""

from __future__ import annotations

import random
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image, ImageCms, PngImagePlugin

from nncompress import metadata as md
from nncompress.errors import FormatError, UnsupportedImageError
from nncompress.metadata import Item

XMP = (
    b'<?xpacket begin="\xef\xbb\xbf" id="W5M0MpCehiHzreSzNTczkc9d"?>'
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF/></x:xmpmeta><?xpacket end="w"?>'
)


@pytest.fixture(scope="module")
def icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def exif_bytes(orientation: int = 6) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "Maker"
    return exif.tobytes()


def picture(mode: str = "RGB") -> Image.Image:
    im = Image.new(mode, (16, 8))
    im.putdata([((i * 7) % 256, (i * 3) % 256, i % 256)[: len(mode)] for i in range(128)])
    return im


def reopen(path: Path) -> Image.Image:
    im = Image.open(path)
    im.load()
    return im


def as_png(items: list[Item], path: Path, **extra) -> Image.Image:
    """Items through encode/decode into a PNG, reopened."""
    carried = md.decode(md.encode(items))
    assert carried == items
    picture().save(path, format="PNG", **md.png_save_options(carried), **extra)
    return reopen(path)


def comparable(items: list[Item]) -> list[tuple]:
    """Items with dpi as the pixels per metre a PNG holds (the documented comparison)."""
    return [
        ("dpi", md.pixels_per_metre(it)) if it.kind == "dpi" else (it.kind, it.key, it.value)
        for it in items
    ]


def by_kind(items: list[Item]) -> dict[tuple[str, str], bytes]:
    return {(it.kind, it.key): it.value for it in items}


def orientation(exif: bytes) -> int:
    parsed = Image.Exif()
    parsed.load(exif)
    return parsed[0x0112]


# --------------------------------------------------------------------------- PNG


@pytest.mark.parametrize("dpi", [(72, 72), (300, 300), (300, 150)])
def test_png_round_trip_exact(tmp_path, icc, dpi):
    info = PngImagePlugin.PngInfo()
    info.add_text("Title", "A title")
    info.add_text("Comment", "café latin-1")
    info.add_text("Long", "z" * 3000, zip=True)  # zTXt
    info.add_itxt("Author", "日本語の作者")  # iTXt, no language
    info.add_itxt("Description", "Beschreibung ü", lang="de", tkey="Beschreibung")
    info.add_itxt(md.XMP_KEY, XMP)
    info.add(b"gAMA", (45455).to_bytes(4, "big"))
    info.add(b"cHRM", struct.pack(">8I", 31270, 32900, 64000, 33000, 30000, 60000, 15000, 6000))
    src = tmp_path / "src.png"
    picture().save(src, icc_profile=icc, exif=exif_bytes(), dpi=dpi, pnginfo=info)

    items, lost = md.extract(reopen(src))
    assert lost == []
    kinds = [it.kind for it in items]
    assert kinds == ["icc", "exif", "xmp", "dpi", "gamma", "chromaticities"] + ["text"] * 4 + [
        "itxt"
    ]
    got = by_kind(items)
    assert got["icc", ""] == icc
    assert orientation(got["exif", ""]) == 6
    assert got["xmp", ""] == XMP
    assert got["text", "Comment"] == "café latin-1".encode()
    assert got["text", "Long"] == b"z" * 3000
    assert got["text", "Author"] == "日本語の作者".encode()
    assert got["itxt", "Description"] == b"de\0Beschreibung\0" + "Beschreibung ü".encode()
    assert int.from_bytes(got["gamma", ""], "big") == 45455
    dpi_item = next(it for it in items if it.kind == "dpi")
    assert md.pixels_per_metre(dpi_item) == tuple(int(d / 0.0254 + 0.5) for d in dpi)
    # Whole pixels per metre: within half a pixel per metre (0.0127 dpi) of what was asked.
    assert all(abs(a - b) <= 0.0127 for a, b in zip(md.dots_per_inch(dpi_item), dpi))

    again = as_png(items, tmp_path / "out.png")
    items2, lost2 = md.extract(again)
    assert items2 == items  # PNG -> PNG is exact, dpi included
    assert lost2 == []
    assert again.info["icc_profile"] == icc
    assert again.getexif()[0x0112] == 6
    assert md.png_ignored_chunks((tmp_path / "out.png").read_bytes()) == []


def test_png_srgb_and_latin1_bytes(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add(b"sRGB", b"\x01")
    info.add(b"gAMA", (45455).to_bytes(4, "big"))
    info.add_text("Note", "\xe9t\xe9")
    src = tmp_path / "s.png"
    picture().save(src, pnginfo=info)
    items, lost = md.extract(reopen(src))
    assert lost == []
    assert by_kind(items)["srgb", ""] == b"\x01"
    out = tmp_path / "o.png"
    assert md.extract(as_png(items, out)) == (items, [])
    assert b"tEXtNote\x00\xe9t\xe9" in out.read_bytes()  # the Latin-1 bytes come back as they were


def test_animated_png_save_all(tmp_path, icc):
    items = [
        Item("icc", "", icc),
        Item("exif", "", exif_bytes(3)[6:]),
        Item("xmp", "", XMP),
        Item("text", "Title", "анимация".encode()),
    ]
    frames = [picture(), picture().transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    path = tmp_path / "anim.png"
    frames[0].save(
        path, format="PNG", save_all=True, append_images=frames[1:], duration=100, loop=0,
        **md.png_save_options(items),
    )  # fmt: skip
    back = reopen(path)
    assert back.n_frames == 2
    assert md.extract(back) == (items, [])


# --------------------------------------------------------------------------- other formats


def test_jpeg(tmp_path, icc):
    src = tmp_path / "a.jpg"
    picture().save(
        src, icc_profile=icc, exif=exif_bytes(), xmp=XMP, comment=b"caf\xe9 comment", dpi=(300, 150)
    )
    items, lost = md.extract(reopen(src))
    assert lost == []
    got = by_kind(items)
    assert got["icc", ""] == icc
    assert got["exif", ""] == exif_bytes()[6:]
    assert orientation(got["exif", ""]) == 6
    assert got["xmp", ""] == XMP
    assert got["text", "comment"] == "café comment".encode()
    dpi_item = next(it for it in items if it.kind == "dpi")
    assert md.dots_per_inch(dpi_item) == (300, 150)  # JFIF's integers, exactly
    assert dpi_item.value == struct.pack(">BIIII", md.UNIT_INCH, 300, 1, 150, 1)

    out = tmp_path / "a.png"
    items2, lost2 = md.extract(as_png(items, out))
    assert lost2 == []
    assert comparable(items2) == comparable(items)
    assert md.pixels_per_metre(dpi_item) == (11811, 5906)
    assert b"tEXtcomment\x00caf\xe9 comment" in out.read_bytes()


def test_jpeg_without_density_has_no_made_up_dpi(tmp_path):
    src = tmp_path / "b.jpg"
    picture().save(src, exif=exif_bytes())  # Pillow invents dpi 72 x 72 from an EXIF without one
    im = reopen(src)
    items, lost = md.extract(im)
    assert [it.kind for it in items] == ["exif"]
    assert lost == []


def test_jpeg_unknown_segments_are_reported(tmp_path):
    src = tmp_path / "c.jpg"
    picture().save(src, comment=b"first")
    data = src.read_bytes()
    app12 = b"\xff\xecDucky\x00xx"
    app12 = app12[:2] + (len(app12) - 2 + 2).to_bytes(2, "big") + app12[2:]
    com = b"\xff\xfe" + (2 + 6).to_bytes(2, "big") + b"second"
    src.write_bytes(data[:2] + app12 + com + data[2:])
    items, lost = md.extract(reopen(src))
    assert by_kind(items)["text", "comment"] == b"first"  # Pillow keeps the last COM
    assert any(name.startswith("APP12 Ducky") for name in lost)
    assert any(name.startswith("comment (1 of 2") for name in lost)
    with pytest.raises(UnsupportedImageError, match="APP12"):
        md.require_carried(lost)
    md.require_carried(lost, strip=True)


def test_webp(tmp_path, icc):
    src = tmp_path / "a.webp"
    picture().save(src, lossless=True, icc_profile=icc, exif=exif_bytes(), xmp=XMP)
    items, lost = md.extract(reopen(src))
    assert lost == []
    assert [it.kind for it in items] == ["icc", "exif", "xmp"]
    assert by_kind(items)["icc", ""] == icc
    assert orientation(by_kind(items)["exif", ""]) == 6
    assert md.extract(as_png(items, tmp_path / "w.png")) == (items, [])


def test_tiff(tmp_path, icc):
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010E] = "a description"
    exif[0x8298] = "(c) someone"
    exif[0x8769] = {0x9003: "2024:01:02 03:04:05"}
    src = tmp_path / "a.tif"
    picture().save(src, icc_profile=icc, dpi=(300, 150), exif=exif.tobytes())
    im = reopen(src)
    # Pillow 13 applies a TIFF's Orientation on load and removes the tag: upright pixels.
    assert im.size == (8, 16)
    items, lost = md.extract(im)
    assert lost == []
    assert [it.kind for it in items] == ["icc", "exif", "dpi"]
    got = by_kind(items)
    assert got["icc", ""] == icc
    carried = Image.Exif()
    carried.load(got["exif", ""])
    assert 0x0112 not in carried
    assert carried[0x010E] == "a description"
    assert carried[0x8298] == "(c) someone"
    assert carried.get_ifd(0x8769)[0x9003] == "2024:01:02 03:04:05"
    assert 0x0100 not in carried  # structural tags stay behind
    assert md.dots_per_inch(items[2]) == (300, 150)

    items2, lost2 = md.extract(as_png(items, tmp_path / "t.png"))
    assert lost2 == []
    assert comparable(items2) == comparable(items)


def test_tiff_xmp_and_unknown_tags(tmp_path):
    tags = {700: XMP, 33723: b"\x1c\x02\x00\x00\x02\x00\x04"}  # XMP, IPTC
    src = tmp_path / "b.tif"
    picture().save(src, tiffinfo=tags)
    items, lost = md.extract(reopen(src))
    assert by_kind(items)["xmp", ""] == XMP
    assert lost == ["tiff:33723"]


def test_gif_comment(tmp_path):
    src = tmp_path / "a.gif"
    picture().convert("P").save(src, comment=b"a gif comment")
    items, lost = md.extract(reopen(src))
    assert items == [Item("text", "comment", b"a gif comment")]
    assert lost == []
    assert md.extract(as_png(items, tmp_path / "g.png")) == (items, [])


@pytest.mark.parametrize("fmt", ["BMP", "PPM"])
def test_bmp_and_pnm(tmp_path, fmt):
    src = tmp_path / f"a.{fmt.lower()}"
    picture().save(src, format=fmt, **({"dpi": (300, 300)} if fmt == "BMP" else {}))
    items, lost = md.extract(reopen(src))
    assert lost == []
    if fmt == "BMP":
        assert [it.kind for it in items] == ["dpi"]
        assert md.pixels_per_metre(items[0]) == (11811, 11811)
        assert md.extract(as_png(items, tmp_path / "b.png"))[0] == items
    else:
        assert items == []


def test_unknown_info_keys_and_aspect_are_reported(tmp_path):
    im = picture()
    im.format = "PNG"
    im.info.update({"duration": 5, "something": 1, "aspect": (2, 1), "transparency": 0})
    _, lost = md.extract(im)
    assert lost == ["aspect (pixel aspect ratio without unit)", "something"]


def test_png_ignored_chunks(tmp_path):
    path = tmp_path / "t.png"
    info = PngImagePlugin.PngInfo()
    info.add(b"tIME", b"\x07\xe8\x01\x02\x03\x04\x05")
    picture().save(path, pnginfo=info)
    assert md.png_ignored_chunks(path.read_bytes()) == ["png:tIME"]
    assert md.png_ignored_chunks(b"not a png") == []


# --------------------------------------------------------------------------- layout


def sample_items(icc: bytes) -> list[Item]:
    return [
        Item("icc", "", icc),
        Item("exif", "", exif_bytes()[6:]),
        Item("xmp", "", XMP),
        Item("dpi", "", struct.pack(">BIIII", md.UNIT_INCH, 300, 1, 72, 1)),
        Item("gamma", "", (45455).to_bytes(4, "big")),
        Item("text", "Title", "ünïcødé".encode()),
        Item("itxt", "T", b"en\0Title\0text"),
    ]


def test_encode_layout(icc):
    assert md.encode([]) == b"\x01\x00\x00"
    small = md.encode([Item("srgb", "", b"\x00")])
    assert small == bytes([1, 0, 1, md.KINDS.index("srgb") + 1, 0, 1, 0])
    data = md.encode(sample_items(icc))
    assert data[:2] == b"\x01\x01"  # deflated: the ICC profile compresses
    assert md.decode(data) == sample_items(icc)


@pytest.mark.parametrize(
    "bad",
    [
        Item("nope", "", b"x"),
        Item("icc", "k", b"x"),
        Item("icc", "", b""),
        Item("exif", "", b"Exif\0\0MM\0*\0\0\0\x08"),
        Item("xmp", "", b"\xff"),
        Item("text", "", b"x"),
        Item("text", "k" * 80, b"x"),
        Item("text", "日本", b"x"),
        Item("text", md.XMP_KEY, b"x"),
        Item("text", "k", b"\xc3"),
        Item("itxt", "k", b"en\0only one nul"),
        Item("dpi", "", struct.pack(">BIIII", 4, 1, 1, 1, 1)),
        Item("dpi", "", struct.pack(">BIIII", 1, 1, 0, 1, 1)),
        Item("dpi", "", b"\x01"),
        Item("gamma", "", b"\0\0\0\0"),
        Item("srgb", "", b"\x04"),
        Item("chromaticities", "", b"\0" * 31),
    ],
)
def test_encode_refuses_invalid_items(bad):
    with pytest.raises(ValueError):
        md.encode([bad])


def test_encode_refuses_duplicates():
    with pytest.raises(ValueError, match="twice"):
        md.encode([Item("srgb", "", b"\0"), Item("srgb", "", b"\1")])
    with pytest.raises(ValueError, match="twice"):
        md.encode([Item("text", "a", b"x"), Item("itxt", "a", b"\0\0y")])


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x01",
        b"\x02\x00\x00",  # version
        b"\x01\x02\x00",  # flags
        b"\x01\x00\x00\x00",  # trailing
        b"\x01\x00\x01\x0a\x00\x00",  # kind code
        b"\x01\x00\x01\x01\x00\x80\x00",  # non-minimal varint
        b"\x01\x00" + b"\xff" * 12,  # varint too long
        b"\x01\x00\x05\x01\x00\x00",  # count over the data
        b"\x01\x00\x01\x08\x01\xff\x00",  # key not UTF-8
        b"\x01\x00\x01\x01\x00\x05ab",  # value truncated
        b"\x01\x01\x05" + zlib.compress(b"abc"),  # size mismatch
        b"\x01\x01\x03" + zlib.compress(b"\x00\x00\x00") + b"x",  # after the stream
        b"\x01\x01\x03garbage",
        b"\x01\x01" + md._uvarint(md.MAX_METADATA_BYTES + 1),
    ],
)
def test_decode_refuses_malformed(data):
    with pytest.raises(FormatError):
        md.decode(data)


def test_decode_refuses_bomb():
    bomb = zlib.compress(b"\x00" * (8 << 20), 9)  # 8 MiB of zeros, declared as 100 bytes
    with pytest.raises(FormatError):
        md.decode(b"\x01\x01" + md._uvarint(100) + bomb)


def test_fuzz_truncations_and_flips(icc):
    rng = random.Random(1234)
    for items in (sample_items(icc), [Item("text", "k", b"v"), Item("srgb", "", b"\x02")]):
        data = md.encode(items)
        cases = [data[:n] for n in range(len(data))]
        for _ in range(1500):
            flipped = bytearray(data)
            for _ in range(rng.randint(1, 3)):
                flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
            cases.append(bytes(flipped))
        for case in cases:
            try:
                out = md.decode(case)
            except FormatError:
                continue
            assert md.decode(md.encode(out)) == out


# --------------------------------------------------------------------------- describe, strip


def test_describe(icc):
    lines = md.describe(
        [
            *sample_items(icc)[:5],
            Item("text", "Evil\x1b", b"bell\x07\x1b[31m"),
        ]
    )
    assert lines[0] == f"icc: {len(icc)} bytes (sRGB built-in)"
    assert lines[1] == f"exif: {len(exif_bytes()) - 6} bytes, orientation 6"
    assert lines[3] == "dpi: 300 x 72"
    assert lines[4] == "gamma: 0.45455"
    assert all("\x1b" not in line and "\x07" not in line for line in lines)
    assert "\\x1b" in lines[5]


def test_icc_description(icc):
    name = md._icc_description(icc)
    assert name and "sRGB" in name


def test_strip(icc):
    assert [it.kind for it in md.strip(sample_items(icc))] == ["icc", "gamma"]


# --------------------------------------------------------------------------- bit depth


def png_head(depth: int, colour: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", 4, 4, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + b"\0" * 4


@pytest.mark.parametrize(
    ("depth", "colour", "want"),
    [(16, 2, 16), (8, 2, 8), (1, 0, 1), (16, 0, 16), (4, 3, 8), (16, 6, 16), (16, 3, None)],
)
def test_bit_depth_png_headers(depth, colour, want):
    assert md.declared_bit_depth(png_head(depth, colour)) == want


def test_bit_depth_real_files(tmp_path):
    cases = {
        "a.png": (picture(), {}, 8),
        "b.png": (Image.new("I;16", (4, 4), 40000), {}, 16),
        "c.jpg": (picture(), {}, 8),
        "d.gif": (picture().convert("P"), {}, 8),
        "e.webp": (picture(), {}, 8),
        "f.bmp": (picture(), {}, 8),
        "g.tif": (picture(), {}, 8),
        "h.tif": (Image.new("I;16", (4, 4), 40000), {}, 16),
        "i.ppm": (picture(), {}, 8),
        "j.pgm": (Image.new("I;16", (4, 4), 40000), {}, 16),
        "k.pbm": (Image.new("1", (4, 4)), {}, 1),
        "l.tif": (Image.new("I;16B", (4, 4), 40000), {}, 16),
    }
    for name, (im, kw, want) in cases.items():
        path = tmp_path / name
        im.save(path, **kw)
        assert md.declared_bit_depth(path.read_bytes()[:65536]) == want, name


def test_bit_depth_text_headers():
    assert md.declared_bit_depth(b"P6 # comment\n4 4\n65535\n" + b"\0" * 96) == 16
    assert md.declared_bit_depth(b"P5\n4 4 255\n" + b"\0" * 16) == 8
    hdr = b"P7\nWIDTH 4\nHEIGHT 4\nDEPTH 3\nMAXVAL 1023\nTUPLTYPE RGB\nENDHDR\n"
    assert md.declared_bit_depth(hdr) == 16
    sof = b"\xff\xd8\xff\xc3\x00\x0b\x0c\x00\x04\x00\x04\x01\x01\x11\x00"
    assert md.declared_bit_depth(sof) == 12


def test_bit_depth_garbage_never_raises():
    rng = random.Random(7)
    seeds = [png_head(16, 2), b"II*\x00\x08\x00\x00\x00", b"MM\x00*", b"\xff\xd8\xff", b"P6\n"]
    for seed in seeds:
        for n in range(len(seed) + 1):
            md.declared_bit_depth(seed[:n])
        for _ in range(300):
            junk = bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
            result = md.declared_bit_depth(seed + junk)
            assert result is None or isinstance(result, int)
    assert md.declared_bit_depth(b"") is None
    assert md.declared_bit_depth(b"hello world") is None
