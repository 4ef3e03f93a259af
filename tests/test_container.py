"""The .nnc container, format version 4: exact layout, round trips, and refusal of every
malformed file (FORMAT.md is the specification, container/format.py the implementation)."""

from __future__ import annotations

import dataclasses
import itertools
import random
import struct
import tracemalloc
import zlib

import pytest

from nncompress.container import (
    FORMAT_VERSION,
    MAGIC,
    MAX_CHUNK_COLUMNS,
    MAX_CHUNK_PIXELS,
    MAX_ENCODER_BYTES,
    MAX_FILE_BYTES,
    MAX_HEADER_BODY_BYTES,
    MAX_MODEL_NAME_BYTES,
    MAX_PIXELS,
    MAX_TILE,
    MIN_HEADER_BODY_BYTES,
    Header,
    content_crc32,
    describe,
    header_bytes,
    join_streams,
    pack,
    read_header,
    split_streams,
    unpack,
)
from nncompress.errors import FormatError, UnsupportedVersionError

# Two chunks (4 tiles, 3 per chunk): the payload is two length-prefixed coder streams.
STREAMS = [bytes(range(8)), b"\xff" * 4]
PAYLOAD = join_streams(STREAMS)
PAYLOAD_CRC = 0x368E9A1E  # zlib.crc32(PAYLOAD), checked in test_documented_offsets
HEADER = Header(
    model_name="hist",
    model_digest=bytes(range(32)),
    mode="RGB",
    width=5,
    height=3,
    tile_h=2,
    tile_w=4,
    chunk_tiles=3,
    pixel_crc32=0xDEADBEEF,
    payload_crc32=PAYLOAD_CRC,
    bit_depth=8,
    encoder="0.4 cpu",
)
# The whole file for HEADER + PAYLOAD, from the v4 writer. Any change to the layout must
# change FORMAT_VERSION.
FIXTURE = bytes.fromhex(
    "894e4e430d0a1a0a"  # magic
    "0400"  # format version 4
    "47000000"  # header body length 71
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"  # model digest
    "05000000"  # width 5
    "03000000"  # height 3
    "03"  # mode RGB
    "08"  # bit depth 8
    "0200"  # tile_h 2
    "0400"  # tile_w 4
    "03000000"  # chunk_tiles 3
    "efbeadde"  # pixel crc32
    "1e9a8e36"  # payload crc32
    "04"  # model name length 4
    "68697374"  # model name "hist"
    "07"  # encoder length 7
    "302e3420637075"  # encoder "0.4 cpu"
    "42cc8da0"  # header crc32
    "1400000000000000"  # payload length 20
    "08000000"  # stream 0: length 8
    "0001020304050607"
    "04000000"  # stream 1: length 4
    "ffffffff"
)
BODY_AT = 14
BODY_LEN = 71
PAYLOAD_LEN_AT = BODY_AT + BODY_LEN + 4  # 89: the end of the header CRC
PAYLOAD_AT = PAYLOAD_LEN_AT + 8  # 97

# The body's fixed part as FORMAT.md documents it, stated independently of the module so
# that tests can write files the packer refuses to write: digest, width, height, mode,
# bit depth, tile_h, tile_w, chunk_tiles, pixel_crc32, payload_crc32, name length.
FIXED = struct.Struct("<32sIIBBHHIIIB")

# A genuine version 3 file (nncompress 0.3's test fixture): refused on its version alone.
V3_FILE = bytes.fromhex(
    "894e4e430d0a1a0a03005d000000000102030405060708090a0b0c0d0e0f101112131415161718191a1b"
    "1c1d1e1f05000000030000000302000400040000000200000008000000a0a1a2a3a4a5a6a7a8a9aaabac"
    "adaeaf01010200efbeadde046869737406322e31332e306ec6116d0800000000000000000102030405"
    "0607"
)
V3_MESSAGE = (
    "unsupported format version 3 (this build reads version 4; version 3 files were "
    "written by nncompress 0.3 with float arithmetic, which only the machine and torch "
    "version that wrote them replay: decode them there with nncompress 0.3 "
    "(pip install 'nncompress==0.3'), then re-encode with this release)"
)


def craft(
    *,
    version: int = FORMAT_VERSION,
    payload: bytes = PAYLOAD,
    payload_len: int | None = None,
    body_len: int | None = None,
    name: bytes = b"hist",
    encoder: bytes = b"0.4 cpu",
    header_crc: int | None = None,
    **fields: int | bytes,
) -> bytes:
    """A file with a correct header CRC (unless ``header_crc``) but arbitrary field values
    (codes, not names)."""
    values = {
        "digest": HEADER.model_digest,
        "width": 5,
        "height": 3,
        "mode": 3,
        "bit_depth": 8,
        "tile_h": 2,
        "tile_w": 4,
        "chunk_tiles": 3,
        "pixel_crc32": 0xDEADBEEF,
        "payload_crc32": zlib.crc32(payload),
        "name_len": len(name),
    }
    assert set(fields) <= set(values), "unknown field in test"
    values.update(fields)
    body = FIXED.pack(*values.values()) + name + bytes([len(encoder)]) + encoder
    return (
        MAGIC
        + struct.pack("<HI", version, len(body) if body_len is None else body_len)
        + body
        + struct.pack("<I", zlib.crc32(body) if header_crc is None else header_crc)
        + struct.pack("<Q", len(payload) if payload_len is None else payload_len)
        + payload
    )


def error_of(data: bytes) -> FormatError:
    """The FormatError ``unpack`` raises for ``data`` (fails the test on any other outcome)."""
    with pytest.raises(FormatError) as info:
        unpack(data)
    message = str(info.value)
    assert message and "\n" not in message
    return info.value


def with_payload(header: Header, payload: bytes) -> Header:
    return dataclasses.replace(header, payload_crc32=zlib.crc32(payload))


# --- Layout -------------------------------------------------------------------------------


def test_constants() -> None:
    assert FORMAT_VERSION == 4
    assert MAGIC == b"\x89NNC\r\n\x1a\n"
    assert (MAX_PIXELS, MAX_TILE, MAX_CHUNK_PIXELS, MAX_FILE_BYTES) == (2**28, 4096, 2**24, 2**32)
    assert MAX_CHUNK_COLUMNS == 2**15
    assert (MAX_MODEL_NAME_BYTES, MAX_ENCODER_BYTES) == (255, 64)
    assert FIXED.size == 59
    assert MIN_HEADER_BODY_BYTES == FIXED.size + 1 + 1 == 61  # 1-byte name, empty encoder
    assert MAX_HEADER_BODY_BYTES == FIXED.size + 255 + 1 + 64 == 379


def test_fixture_exact_bytes() -> None:
    assert pack(HEADER, PAYLOAD) == FIXTURE
    assert craft() == FIXTURE
    assert unpack(FIXTURE) == (HEADER, PAYLOAD)
    assert split_streams(HEADER, PAYLOAD) == STREAMS


def test_documented_offsets() -> None:
    """Every field at the offset FORMAT.md gives, read by hand."""
    assert FIXTURE[:8] == b"\x89NNC\r\n\x1a\n"
    assert struct.unpack_from("<H", FIXTURE, 8) == (4,)
    (body_len,) = struct.unpack_from("<I", FIXTURE, 10)
    assert body_len == BODY_LEN == 60 + len("hist") + len("0.4 cpu")
    b = BODY_AT
    assert FIXTURE[b : b + 32] == bytes(range(32))  # model digest
    assert struct.unpack_from("<II", FIXTURE, b + 32) == (5, 3)  # width, height
    assert FIXTURE[b + 40] == 3  # mode code: RGB
    assert FIXTURE[b + 41] == 8  # bit depth
    assert struct.unpack_from("<HH", FIXTURE, b + 42) == (2, 4)  # tile_h, tile_w
    assert struct.unpack_from("<I", FIXTURE, b + 46) == (3,)  # chunk_tiles
    assert struct.unpack_from("<I", FIXTURE, b + 50) == (0xDEADBEEF,)  # pixel_crc32
    assert struct.unpack_from("<I", FIXTURE, b + 54) == (zlib.crc32(PAYLOAD),)  # payload_crc32
    assert zlib.crc32(PAYLOAD) == PAYLOAD_CRC
    assert FIXTURE[b + 58] == 4 and FIXTURE[b + 59 : b + 63] == b"hist"  # name
    assert FIXTURE[b + 63] == 7 and FIXTURE[b + 64 : b + 71] == b"0.4 cpu"  # encoder
    body = FIXTURE[b : b + body_len]
    assert struct.unpack_from("<I", FIXTURE, b + body_len) == (zlib.crc32(body),)
    assert struct.unpack_from("<Q", FIXTURE, 18 + body_len) == (len(PAYLOAD),)
    assert 18 + body_len == PAYLOAD_LEN_AT and 26 + body_len == PAYLOAD_AT
    # The payload: per chunk a u32 byte length, then the coder stream.
    payload = FIXTURE[PAYLOAD_AT:]
    assert struct.unpack_from("<I", payload, 0) == (8,) and payload[4:12] == bytes(range(8))
    assert struct.unpack_from("<I", payload, 12) == (4,) and payload[16:20] == b"\xff" * 4
    assert len(FIXTURE) == PAYLOAD_AT + 20
    assert header_bytes(HEADER) == PAYLOAD_AT == 86 + len("hist") + len("0.4 cpu")


def test_header_derived_properties() -> None:
    assert (HEADER.tiles_y, HEADER.tiles_x) == (2, 2)  # ceil(3/2), ceil(5/4)
    assert HEADER.num_tiles == 4
    assert HEADER.num_chunks == 2  # ceil(4/3)
    assert HEADER.channels_coded == 3
    for mode, channels in (("L", 1), ("LA", 1), ("RGB", 3), ("RGBA", 3)):
        assert dataclasses.replace(HEADER, mode=mode).channels_coded == channels
    whole = dataclasses.replace(HEADER, tile_h=3, tile_w=5)
    assert (whole.num_tiles, whole.num_chunks) == (1, 1)  # a tile may be the whole image
    with pytest.raises(ValueError, match="larger than the image"):  # but not exceed it
        dataclasses.replace(HEADER, tile_h=64, tile_w=64)
    for chunk, chunks in ((1, 4), (2, 2), (4, 1), (5, 1), (2**12, 1)):
        assert dataclasses.replace(HEADER, chunk_tiles=chunk).num_chunks == chunks
    # The defaults: 8 bits, empty encoder string.
    required = {
        f.name: getattr(HEADER, f.name)
        for f in dataclasses.fields(Header)
        if f.name not in ("bit_depth", "encoder")
    }
    assert Header(**required) == dataclasses.replace(HEADER, encoder="")


EDGE_HEADERS = [
    # longest strings (multi-byte UTF-8), largest checksums, chunk at MAX_CHUNK_COLUMNS
    dataclasses.replace(
        HEADER,
        model_name="é" * 127 + "x",
        encoder="v" * 64,
        pixel_crc32=2**32 - 1,
        chunk_tiles=MAX_CHUNK_COLUMNS // 4,
    ),
    # shortest strings, smallest image and values, another mode
    dataclasses.replace(
        HEADER,
        model_name="m",
        encoder="",
        mode="L",
        width=1,
        height=1,
        tile_h=1,
        tile_w=1,
        chunk_tiles=1,
        pixel_crc32=0,
        model_digest=bytes(32),
    ),
    # image at MAX_PIXELS as one row; the widest tiles, eight per chunk
    dataclasses.replace(
        HEADER,
        mode="RGBA",
        width=MAX_PIXELS,
        height=1,
        tile_h=1,
        tile_w=MAX_TILE,
        chunk_tiles=MAX_CHUNK_COLUMNS // MAX_TILE,
    ),
    # ... and as one column, and as the largest square
    dataclasses.replace(HEADER, mode="LA", width=1, height=MAX_PIXELS, tile_w=1),
    dataclasses.replace(
        HEADER, width=2**14, height=2**14, tile_h=1, tile_w=1, chunk_tiles=MAX_CHUNK_COLUMNS
    ),
]


@pytest.mark.parametrize("header", EDGE_HEADERS)
@pytest.mark.parametrize(
    "payload",
    [b"", join_streams([b""]), join_streams([b"\x01\x02\x03\x04"] * 3), bytes(range(256)) * 3],
)
def test_round_trip_edge_values(header: Header, payload: bytes) -> None:
    header = with_payload(header, payload)
    data = pack(header, payload)
    assert unpack(data) == (header, payload)
    assert read_header(data) == header
    assert len(data) == header_bytes(header) + len(payload)


def test_round_trip_every_mode_and_string() -> None:
    for mode, name, encoder in itertools.product(
        ("L", "LA", "RGB", "RGBA"), ("hist", "pcnn-int_v2.1", "模型"), ("", "nncompress 0.4 cuda")
    ):
        h = dataclasses.replace(HEADER, mode=mode, model_name=name, encoder=encoder)
        assert unpack(pack(h, PAYLOAD)) == (h, PAYLOAD)


def test_unpack_accepts_bytes_like() -> None:
    assert unpack(bytearray(FIXTURE)) == (HEADER, PAYLOAD)
    assert unpack(memoryview(FIXTURE)) == (HEADER, PAYLOAD)
    assert read_header(bytearray(FIXTURE)) == HEADER


def test_read_header_needs_only_the_header() -> None:
    assert read_header(FIXTURE[:PAYLOAD_LEN_AT]) == HEADER
    assert read_header(FIXTURE) == HEADER
    with pytest.raises(FormatError, match=r"^truncated file: header needs 89 bytes, 88 present$"):
        read_header(FIXTURE[: PAYLOAD_LEN_AT - 1])
    # read_header does not look at the payload: neither its length nor its checksum.
    damaged = bytearray(FIXTURE)
    damaged[-1] ^= 1
    assert read_header(bytes(damaged)) == HEADER
    assert read_header(FIXTURE + b"junk") == HEADER


# --- Header validation when writing ---------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_name": ""}, "model name is 0 bytes (must be 1..255)"),
        ({"model_name": "é" * 128}, "model name is 256 bytes (must be 1..255)"),
        ({"model_name": "a\x1b[2Jb"}, "model name contains control characters"),
        ({"model_name": "a\x00"}, "model name contains control characters"),
        ({"model_name": "a\x85b"}, "model name contains control characters"),  # C1 control
        ({"model_name": "../evil"}, "model name contains a path separator"),
        ({"model_name": "a\\b"}, "model name contains a path separator"),
        ({"model_name": "\ud800"}, "model name is not valid UTF-8"),
        ({"model_name": b"hist"}, "model name must be a str, not bytes"),
        ({"model_digest": bytes(31)}, "model digest must be 32 bytes"),
        ({"model_digest": "x" * 32}, "model digest must be 32 bytes"),
        ({"mode": "P"}, "unknown mode 'P' (expected one of L, LA, RGB, RGBA)"),
        ({"width": 0}, "width 0 out of range 1..4294967295"),
        ({"width": 2**32}, "width 4294967296 out of range 1..4294967295"),
        ({"height": -1}, "height -1 out of range 1..4294967295"),
        ({"width": 2.0}, "width must be an int, not float"),
        ({"width": True}, "width must be an int, not bool"),
        ({"tile_h": 0}, "tile_h 0 out of range 1..4096"),
        ({"tile_w": MAX_TILE + 1}, "tile_w 4097 out of range 1..4096"),
        ({"chunk_tiles": 0}, "chunk_tiles 0 out of range 1..4294967295"),
        ({"pixel_crc32": 2**32}, "pixel_crc32 4294967296 out of range 0..4294967295"),
        ({"payload_crc32": -1}, "payload_crc32 -1 out of range 0..4294967295"),
        ({"bit_depth": 16}, "bit depth 16 is not supported (only (8,))"),
        ({"bit_depth": 0}, "bit depth 0 is not supported"),
        ({"bit_depth": "8"}, "bit_depth must be an int, not str"),
        (
            {"width": 2**14 + 1, "height": 2**14},
            "image 16385x16384 exceeds MAX_PIXELS (268435456)",
        ),
        (
            {"chunk_tiles": MAX_CHUNK_PIXELS // 8 + 1},
            "chunk of 2097153 tiles of 2x4 exceeds MAX_CHUNK_PIXELS (16777216)",
        ),
        (
            {"tile_h": MAX_TILE, "tile_w": MAX_TILE, "chunk_tiles": 2},
            "chunk of 2 tiles of 4096x4096 exceeds MAX_CHUNK_PIXELS",
        ),
        (
            {"chunk_tiles": MAX_CHUNK_COLUMNS // 4 + 1},
            "chunk of 8193 tiles 4 wide exceeds MAX_CHUNK_COLUMNS (32768)",
        ),
        (
            {"width": 3, "height": 1},
            "tile 2x4 is larger than the image 3x1",
        ),
        ({"encoder": "x" * 65}, "encoder is 65 bytes (must be 0..64)"),
        ({"encoder": "é" * 32 + "x"}, "encoder is 65 bytes (must be 0..64)"),
        ({"encoder": "0.4\ncpu"}, "encoder contains control characters"),
        ({"encoder": None}, "encoder must be a str, not NoneType"),
    ],
)
def test_invalid_header_is_refused(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as info:
        dataclasses.replace(HEADER, **change)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_pack_refuses_forced_headers_and_other_types() -> None:
    forced = dataclasses.replace(HEADER)
    object.__setattr__(forced, "width", 0)  # bypasses __post_init__
    with pytest.raises(ValueError, match="width 0 out of range"):
        pack(forced, PAYLOAD)
    with pytest.raises(ValueError, match="header must be a Header, not dict"):
        pack(dataclasses.asdict(HEADER), PAYLOAD)  # type: ignore[arg-type]


# --- Refusing malformed files ---------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"\x89PNG\r\n\x1a\n" + FIXTURE[8:], b"hello world", b"\x00" * 64, FIXTURE[1:], b"\x88"],
)
def test_bad_magic(data: bytes) -> None:
    error = error_of(data)
    assert str(error) == "not an nncompress file (bad magic)"
    assert not isinstance(error, UnsupportedVersionError)


def test_empty_file() -> None:
    assert str(error_of(b"")) == "empty file (not an nncompress file)"


def test_version_3_file_names_nncompress_0_3() -> None:
    assert V3_FILE[:8] == MAGIC and struct.unpack_from("<H", V3_FILE, 8) == (3,)
    for data in (V3_FILE, V3_FILE[:10], V3_FILE[:10] + b"\xff" * 3):
        with pytest.raises(UnsupportedVersionError) as info:
            unpack(data)
        assert str(info.value) == V3_MESSAGE
        assert "nncompress 0.3" in str(info.value)
        with pytest.raises(UnsupportedVersionError, match="nncompress 0.3"):
            read_header(data)


@pytest.mark.parametrize("version", [0, 1, 2, 5, 7, 0x0400, 65535])
def test_unknown_version_refused_before_the_rest(version: int) -> None:
    expected = f"unsupported format version {version} (this build reads version 4"
    if version == 1:
        expected += (
            "; version 1 files were written by nncompress 0.1, whose coding computation "
            "this build does not replay"
        )
    if version == 2:
        expected += (
            "; version 2 files were written by nncompress 0.2, whose PixelCNN++ computation "
            "this build does not replay"
        )
    expected += ")"
    # Whatever follows (even nothing, or garbage) is not looked at.
    for tail in (FIXTURE[10:], b"", b"\xff" * 3):
        data = MAGIC + struct.pack("<H", version) + tail
        with pytest.raises(UnsupportedVersionError) as info:
            unpack(data)
        assert str(info.value) == expected
        with pytest.raises(UnsupportedVersionError):
            read_header(data)


def test_truncation_at_every_offset() -> None:
    def needs(k: int) -> str:
        for end, what in (
            (8, "magic"),
            (10, "format version"),
            (14, "header length"),
            (PAYLOAD_LEN_AT, "header"),
            (PAYLOAD_AT, "payload length"),
            (len(FIXTURE), "payload"),
        ):
            if k < end:
                return f"truncated file: {what} needs {end} bytes, {k} present"
        raise AssertionError(k)

    assert str(error_of(b"")) == "empty file (not an nncompress file)"
    for k in range(1, len(FIXTURE)):
        assert str(error_of(FIXTURE[:k])) == needs(k), k
        if k >= PAYLOAD_LEN_AT:
            assert read_header(FIXTURE[:k]) == HEADER
        else:
            with pytest.raises(FormatError, match="^truncated file: "):
                read_header(FIXTURE[:k])
    assert str(error_of(FIXTURE[:40])) == "truncated file: header needs 89 bytes, 40 present"
    assert str(error_of(FIXTURE[:-1])) == "truncated file: payload needs 117 bytes, 116 present"
    assert str(error_of(FIXTURE[:3])) == "truncated file: magic needs 8 bytes, 3 present"


def test_flipping_any_header_bit_is_detected() -> None:
    for byte in range(PAYLOAD_AT):
        for bit in range(8):
            data = bytearray(FIXTURE)
            data[byte] ^= 1 << bit
            error_of(bytes(data))  # FormatError or its subclass UnsupportedVersionError
    flipped = bytearray(FIXTURE)
    flipped[BODY_AT + 32] ^= 1  # width 5 -> 4: a valid value, caught only by the CRC
    message = str(error_of(bytes(flipped)))
    assert message.startswith("header checksum mismatch (stored a08dcc42, computed ")


def test_flipping_any_payload_bit_is_detected() -> None:
    for byte in range(PAYLOAD_AT, len(FIXTURE)):
        for bit in range(8):
            data = bytearray(FIXTURE)
            data[byte] ^= 1 << bit
            message = str(error_of(bytes(data)))
            assert message.startswith("payload checksum mismatch (stored 368e9a1e, computed ")
            assert message.endswith("): the file is damaged")


def test_payload_crc_mismatch_means_damage() -> None:
    data = craft(payload_crc32=PAYLOAD_CRC ^ 1)
    message = str(error_of(data))
    assert message == (
        f"payload checksum mismatch (stored {PAYLOAD_CRC ^ 1:08x}, computed {PAYLOAD_CRC:08x}): "
        "the file is damaged"
    )
    # read_header (nncompress info) still shows such a file's header.
    assert read_header(data).payload_crc32 == PAYLOAD_CRC ^ 1


@pytest.mark.parametrize("extra", [b"\x00", b"\x00" * 4, FIXTURE])
def test_trailing_bytes(extra: bytes) -> None:
    assert str(error_of(FIXTURE + extra)) == f"{len(extra)} trailing bytes after the payload"


@pytest.mark.parametrize(
    ("payload_len", "message"),
    [
        (len(PAYLOAD) - 4, "4 trailing bytes after the payload"),
        (len(PAYLOAD) + 1, "truncated file: payload needs 118 bytes, 117 present"),
        (0, "20 trailing bytes after the payload"),
    ],
)
def test_payload_length_must_match_the_file(payload_len: int, message: str) -> None:
    assert str(error_of(craft(payload_len=payload_len))) == message


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"mode": 0}, "bad mode code 0"),
        ({"mode": 5}, "bad mode code 5"),
        ({"mode": 255}, "bad mode code 255"),
        ({"bit_depth": 0}, "bit depth 0 is not supported (only (8,))"),
        ({"bit_depth": 16}, "bit depth 16 is not supported (only (8,))"),
        ({"bit_depth": 7}, "bit depth 7 is not supported"),
        ({"width": 0}, "width 0 out of range 1..4294967295"),
        ({"height": 0}, "height 0 out of range 1..4294967295"),
        ({"tile_h": 0}, "tile_h 0 out of range 1..4096"),
        ({"tile_w": 0}, "tile_w 0 out of range 1..4096"),
        ({"tile_w": 4097}, "tile_w 4097 out of range 1..4096"),
        ({"tile_h": 65535}, "tile_h 65535 out of range 1..4096"),
        ({"chunk_tiles": 0}, "chunk_tiles 0 out of range 1..4294967295"),
        (
            {"chunk_tiles": MAX_CHUNK_PIXELS // 8 + 1},
            "chunk of 2097153 tiles of 2x4 exceeds MAX_CHUNK_PIXELS (16777216)",
        ),
        (
            {"chunk_tiles": 2**32 - 1, "tile_h": 4096, "tile_w": 4096},
            "chunk of 4294967295 tiles of 4096x4096 exceeds MAX_CHUNK_PIXELS",
        ),
        ({"name_len": 0, "name": b""}, "model name is 0 bytes (must be 1..255)"),
        ({"name": b"\xff\xfe"}, "model name is not valid UTF-8"),
        ({"name": b"a\x00b"}, "model name contains control characters"),
        ({"name": b"a\xc2\x9bb"}, "model name contains control characters"),  # U+009B CSI
        ({"name": b"../m"}, "model name contains a path separator"),
        ({"name": b"c:\\m"}, "model name contains a path separator"),
        ({"encoder": b"\xc3"}, "encoder is not valid UTF-8"),
        ({"encoder": b"x" * 65}, "encoder is 65 bytes (must be 0..64)"),
        ({"encoder": b"x" * 255}, "encoder is 255 bytes (must be 0..64)"),
        ({"encoder": b"0.4\x1b[2J"}, "encoder contains control characters"),
        ({"name_len": 200}, "model name length 200 overruns the header"),
        # the name's last byte "t" (116) is then read as the encoder's length
        ({"name_len": 3}, "header length 71 does not match its fields (179 bytes)"),
        ({"body_len": 60}, "bad header length 60 (must be 61..379)"),
        ({"body_len": 380}, "bad header length 380 (must be 61..379)"),
        ({"body_len": 2**32 - 1}, "bad header length 4294967295 (must be 61..379)"),
        ({"body_len": 0}, "bad header length 0 (must be 61..379)"),
        ({"body_len": 72}, "header checksum mismatch"),  # the CRC is then read a byte later
        ({"header_crc": 0}, "header checksum mismatch (stored 00000000, computed a08dcc42)"),
    ],
)
def test_malformed_fields(fields: dict[str, object], message: str) -> None:
    assert str(error_of(craft(**fields))).startswith(message)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        # the header CRC before any field
        ({"header_crc": 1, "mode": 0, "width": 0}, "header checksum mismatch"),
        # the body's structure, then the name's UTF-8, then the mode code
        ({"name_len": 200, "mode": 0}, "model name length 200 overruns the header"),
        ({"name": b"\xff", "mode": 0}, "model name is not valid UTF-8"),
        ({"mode": 0, "encoder": b"\xff"}, "bad mode code 0"),
        ({"mode": 0, "width": 0}, "bad mode code 0"),
        ({"encoder": b"\xff", "width": 0}, "encoder is not valid UTF-8"),
        # then the field values, in FORMAT.md's order
        ({"name": b"a/b", "width": 0}, "model name contains a path separator"),
        ({"width": 0, "tile_h": 0}, "width 0 out of range"),
        ({"tile_h": 0, "bit_depth": 16}, "tile_h 0 out of range"),
        ({"bit_depth": 16, "width": 2**15, "height": 2**15}, "bit depth 16 is not supported"),
        (
            {"width": 2**15, "height": 2**15, "chunk_tiles": 2**32 - 1},
            "image 32768x32768 exceeds MAX_PIXELS",
        ),
        ({"chunk_tiles": 2**32 - 1, "encoder": b"x" * 65}, "chunk of 4294967295 tiles"),
        # then the file: its size is checked before the payload's length, which comes before
        # trailing bytes, which come before the payload CRC
        ({"payload_len": 2**64 - 1, "payload_crc32": 0}, "payload length 18446744073709551615"),
        ({"payload_len": 16, "payload_crc32": 0}, "4 trailing bytes after the payload"),
        ({"payload_len": 24, "payload_crc32": 0}, "truncated file: payload needs 121 bytes"),
    ],
)
def test_validation_order(fields: dict[str, object], message: str) -> None:
    assert str(error_of(craft(**fields))).startswith(message)  # type: ignore[arg-type]


def test_caps_rejected_before_allocation() -> None:
    huge = [
        (
            craft(width=2**32 - 1, height=2**32 - 1),
            "image 4294967295x4294967295 exceeds MAX_PIXELS",
        ),
        (craft(width=2**14, height=2**14 + 1), "image 16384x16385 exceeds MAX_PIXELS"),
        (craft(tile_h=4096, tile_w=4096, chunk_tiles=2**32 - 1), "MAX_CHUNK_PIXELS"),
        (
            craft(payload_len=2**64 - 1),
            "payload length 18446744073709551615 exceeds MAX_FILE_BYTES",
        ),
        (craft(payload_len=MAX_FILE_BYTES + 1), "exceeds MAX_FILE_BYTES"),
        (craft(payload_len=2**20), "truncated file: payload needs 1048673 bytes, 117 present"),
    ]
    for data, message in huge:
        tracemalloc.start()
        try:
            error = error_of(data)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert message in str(error)
        assert peak < 64 * 1024, (message, peak)  # nothing sized by the claimed lengths


def test_file_size_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    import nncompress.container.format as fmt

    monkeypatch.setattr(fmt, "MAX_FILE_BYTES", len(FIXTURE) - 1)
    assert str(error_of(FIXTURE)) == "file of 117 bytes exceeds MAX_FILE_BYTES (116)"
    with pytest.raises(ValueError, match="file of 117 bytes exceeds MAX_FILE_BYTES"):
        pack(HEADER, PAYLOAD)
    assert read_header(FIXTURE) == HEADER  # the header alone is still readable for `info`


def test_random_damage_raises_only_format_errors() -> None:
    """Whatever is done to a file, unpack returns its header and payload or raises a
    FormatError: never another exception."""
    rng = random.Random(4)
    for _ in range(3000):
        data = bytearray(FIXTURE)
        for _ in range(rng.randint(1, 4)):
            kind = rng.randrange(3)
            if kind == 0 and data:
                data[rng.randrange(len(data))] = rng.randrange(256)
            elif kind == 1:
                del data[rng.randrange(len(data) + 1) :]
            else:
                at = rng.randrange(len(data) + 1)
                data[at:at] = rng.randbytes(rng.randint(1, 8))
        try:
            header, payload = unpack(bytes(data))
        except FormatError as e:
            assert str(e) and "\n" not in str(e)
        else:
            assert zlib.crc32(payload) == header.payload_crc32


# --- The pixel check --------------------------------------------------------------------------


def test_content_crc32_covers_shape_then_pixels() -> None:
    pixels = bytes(range(6))
    expected = zlib.crc32(struct.pack("<BIIB", 3, 2, 1, 8) + pixels)
    assert content_crc32("RGB", 2, 1, 8, pixels) == expected == 0x1EBDB178
    for mode, code in (("L", 1), ("LA", 2), ("RGB", 3), ("RGBA", 4)):
        assert content_crc32(mode, 6, 1, 8, pixels) == zlib.crc32(
            bytes([code]) + struct.pack("<II", 6, 1) + b"\x08" + pixels
        )


def test_content_crc32_changes_with_every_input() -> None:
    pixels = bytes(range(24))
    base = content_crc32("RGBA", 3, 2, 8, pixels)
    crcs = {content_crc32(m, 3, 2, 8, pixels) for m in ("L", "LA", "RGB", "RGBA")}
    assert len(crcs) == 4  # the mode
    assert content_crc32("RGBA", 2, 3, 8, pixels) != base  # width and height swapped
    assert content_crc32("RGBA", 4, 2, 8, pixels) != base  # width
    assert content_crc32("RGBA", 3, 3, 8, pixels) != base  # height
    assert content_crc32("RGBA", 6, 1, 8, pixels) != base  # same pixel count, other shape
    assert content_crc32("RGBA", 3, 2, 16, pixels) != base  # bit depth
    for k in range(len(pixels)):
        for bit in range(8):
            changed = bytearray(pixels)
            changed[k] ^= 1 << bit
            assert content_crc32("RGBA", 3, 2, 8, bytes(changed)) != base, (k, bit)
    assert content_crc32("RGBA", 3, 2, 8, pixels + b"\x00") != base
    assert 0 <= base < 2**32


# --- The payload's streams --------------------------------------------------------------------


@pytest.mark.parametrize(
    "streams",
    [
        [b""],
        [b"\x00\x00\x00\x00"],
        [bytes(range(8)), b"\xff" * 4],
        [b"", b"abcd", b""],
        [bytes(range(256)) * 2] * 4,
    ],
)
def test_join_split_round_trip(streams: list[bytes]) -> None:
    # A header with exactly len(streams) chunks: one tile per chunk, tiles in one row.
    header = dataclasses.replace(
        HEADER, width=len(streams), height=1, tile_h=1, tile_w=1, chunk_tiles=1
    )
    assert header.num_chunks == len(streams)
    payload = join_streams(streams)
    assert payload == b"".join(struct.pack("<I", len(s)) + s for s in streams)
    assert len(payload) % 4 == 0
    assert split_streams(header, payload) == streams
    assert split_streams(header, bytearray(payload)) == streams
    header = with_payload(header, payload)
    assert split_streams(*unpack(pack(header, payload))) == streams


def test_join_streams_of_nothing() -> None:
    assert join_streams([]) == b""


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "payload ends before stream 0 of 2"),
        (b"\x00\x00", "payload ends before stream 0 of 2"),
        (join_streams([b"abcd"]), "payload ends before stream 1 of 2"),  # one stream too few
        (join_streams([b"abcd"]) + b"\x00", "payload ends before stream 1 of 2"),
        (join_streams([b"abcd"] * 3), "8 bytes after the last stream of the payload"),
        (join_streams([b"abcd", b""]) + b"xyz", "3 bytes after the last stream of the payload"),
        (struct.pack("<I", 12) + bytes(8), "bad length 12 of stream 0 (payload damaged)"),
        (
            join_streams([b"abcd"]) + struct.pack("<I", 8) + b"abcd",
            "bad length 8 of stream 1 (payload damaged)",
        ),
        (join_streams([b"abcdef", b""]), "bad length 6 of stream 0 (payload damaged)"),
        (join_streams([b"abcd", b"a"]), "bad length 1 of stream 1 (payload damaged)"),
        (struct.pack("<I", 2**32 - 4) + bytes(8), "bad length 4294967292 of stream 0"),
    ],
)
def test_split_streams_refuses(payload: bytes, message: str) -> None:
    with pytest.raises(FormatError) as info:
        split_streams(HEADER, payload)  # 2 chunks
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


# --- describe ---------------------------------------------------------------------------------


def test_describe() -> None:
    info = describe(HEADER, len(PAYLOAD))
    assert list(info) == [
        "format_version",
        "model_name",
        "model_digest",
        "mode",
        "width",
        "height",
        "channels_coded",
        "tile",
        "num_tiles",
        "chunk_tiles",
        "streams",
        "bit_depth",
        "encoder",
        "pixel_crc32",
        "payload_crc32",
        "header_bytes",
        "payload_bytes",
        "file_bytes",
        "bits_per_subpixel",
    ]
    assert info["format_version"] == 4
    assert info["model_name"] == "hist"
    assert info["model_digest"] == bytes(range(32)).hex()
    assert (info["mode"], info["width"], info["height"]) == ("RGB", 5, 3)
    assert info["channels_coded"] == 3
    assert (info["tile"], info["num_tiles"]) == ("2x4", 4)
    assert (info["chunk_tiles"], info["streams"]) == (3, 2)
    assert (info["bit_depth"], info["encoder"]) == (8, "0.4 cpu")
    assert (info["pixel_crc32"], info["payload_crc32"]) == ("deadbeef", "368e9a1e")
    assert (info["header_bytes"], info["payload_bytes"], info["file_bytes"]) == (97, 20, 117)
    assert info["bits_per_subpixel"] == round(117 * 8 / (5 * 3 * 3), 4)
    assert all(isinstance(v, (str, int, float)) for v in info.values())
    short = describe(HEADER)
    assert list(short) == list(info)[:15] and "file_bytes" not in short
    grey = describe(dataclasses.replace(HEADER, mode="LA"), 20)
    assert grey["channels_coded"] == 1
    assert grey["bits_per_subpixel"] == round(117 * 8 / (5 * 3 * 1), 4)
    assert describe(dataclasses.replace(HEADER, pixel_crc32=0x1F))["pixel_crc32"] == "0000001f"
