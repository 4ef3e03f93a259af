"""The .nnc container: exact layout, round trips, and refusal of every malformed file."""

from __future__ import annotations

import dataclasses
import struct
import tracemalloc
import zlib

import pytest

from nncompress.container import (
    FORMAT_VERSION,
    MAGIC,
    MAX_BATCH_PIXELS,
    MAX_CPU_THREADS,
    MAX_FILE_BYTES,
    MAX_PIXELS,
    MAX_TILE,
    Header,
    describe,
    header_bytes,
    pack,
    read_header,
    unpack,
)
from nncompress.errors import FormatError, UnsupportedVersionError

HEADER = Header(
    model_name="hist",
    model_digest=bytes(range(32)),
    mode="RGB",
    width=5,
    height=3,
    tile_h=2,
    tile_w=4,
    batch_slots=4,
    first_slot=2,
    total_slots=8,
    group=bytes(range(0xA0, 0xB0)),
    device="cpu",
    dtype="float32",
    cpu_threads=2,
    torch_version="2.13.0",
    pixel_crc32=0xDEADBEEF,
)
PAYLOAD = bytes(range(8))
# The whole file for HEADER + PAYLOAD. Any change to the layout must change FORMAT_VERSION.
FIXTURE = bytes.fromhex(
    "894e4e430d0a1a0a"  # magic
    "0300"  # format version 3
    "5d000000"  # header body length 93
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"  # model digest
    "05000000"  # width 5
    "03000000"  # height 3
    "03"  # mode RGB
    "0200"  # tile_h 2
    "0400"  # tile_w 4
    "04000000"  # batch_slots 4
    "02000000"  # first_slot 2
    "08000000"  # total_slots 8
    "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf"  # group
    "01"  # device cpu
    "01"  # dtype float32
    "0200"  # cpu_threads 2
    "efbeadde"  # pixel crc32
    "04" + b"hist".hex() + "06" + b"2.13.0".hex() + "6ec6116d"  # header crc32
    "0800000000000000"  # payload length 8
    "0001020304050607"  # payload
)
BODY_AT = 14
PAYLOAD_LEN_AT = len(FIXTURE) - len(PAYLOAD) - 8  # end of the header CRC
PAYLOAD_AT = len(FIXTURE) - len(PAYLOAD)

# The body's fixed part as FORMAT.md documents it, stated independently of the module so
# that tests can write files the packer refuses to write.
FIXED = struct.Struct("<32sIIBHHIII16sBBHIB")


def craft(
    *,
    version: int = FORMAT_VERSION,
    payload: bytes = PAYLOAD,
    payload_len: int | None = None,
    body_len: int | None = None,
    name: bytes = b"hist",
    torch_version: bytes = b"2.13.0",
    **fields: int | bytes,
) -> bytes:
    """A file with a correct header CRC but arbitrary field values (codes, not names)."""
    values = {
        "digest": HEADER.model_digest,
        "width": 5,
        "height": 3,
        "mode": 3,
        "tile_h": 2,
        "tile_w": 4,
        "batch_slots": 4,
        "first_slot": 2,
        "total_slots": 8,
        "group": HEADER.group,
        "device": 1,
        "dtype": 1,
        "cpu_threads": 2,
        "pixel_crc32": 0xDEADBEEF,
        "name_len": len(name),
    }
    assert set(fields) <= set(values), "unknown field in test"
    values.update(fields)
    body = FIXED.pack(*values.values()) + name + bytes([len(torch_version)]) + torch_version
    return (
        MAGIC
        + struct.pack("<HI", version, len(body) if body_len is None else body_len)
        + body
        + struct.pack("<IQ", zlib.crc32(body), len(payload) if payload_len is None else payload_len)
        + payload
    )


def error_of(data: bytes) -> FormatError:
    """The FormatError ``unpack`` raises for ``data`` (fails the test on any other outcome)."""
    with pytest.raises(FormatError) as info:
        unpack(data)
    message = str(info.value)
    assert message and "\n" not in message
    return info.value


# --- Layout -------------------------------------------------------------------------------


def test_fixture_exact_bytes() -> None:
    assert pack(HEADER, PAYLOAD) == FIXTURE
    assert craft() == FIXTURE
    assert unpack(FIXTURE) == (HEADER, PAYLOAD)


def test_documented_offsets() -> None:
    assert MAGIC == b"\x89NNC\r\n\x1a\n" and FIXTURE[:8] == MAGIC
    assert struct.unpack_from("<H", FIXTURE, 8) == (FORMAT_VERSION,)
    (body_len,) = struct.unpack_from("<I", FIXTURE, 10)
    assert body_len == 83 + len("hist") + len("2.13.0")
    assert struct.unpack_from("<II", FIXTURE, BODY_AT + 32) == (5, 3)
    assert FIXTURE[BODY_AT + 40] == 3  # mode RGB
    assert struct.unpack_from("<I", FIXTURE, BODY_AT + 77) == (0xDEADBEEF,)
    assert FIXTURE[BODY_AT + 81] == 4 and FIXTURE[BODY_AT + 82 : BODY_AT + 86] == b"hist"
    body = FIXTURE[BODY_AT : BODY_AT + body_len]
    assert struct.unpack_from("<I", FIXTURE, BODY_AT + body_len) == (zlib.crc32(body),)
    assert struct.unpack_from("<Q", FIXTURE, PAYLOAD_LEN_AT) == (len(PAYLOAD),)
    assert header_bytes(HEADER) == PAYLOAD_AT == 26 + body_len


def test_header_derived_properties() -> None:
    assert HEADER.num_tiles == 2 * 2  # ceil(3/2) * ceil(5/4)
    assert HEADER.channels_coded == 3
    for mode, channels in (("L", 1), ("LA", 1), ("RGB", 3), ("RGBA", 3)):
        assert dataclasses.replace(HEADER, mode=mode).channels_coded == channels
    big_tile = dataclasses.replace(HEADER, tile_h=64, tile_w=64, first_slot=0)
    assert big_tile.num_tiles == 1  # a tile may be larger than the image


EDGE_HEADERS = [
    # longest strings (multi-byte UTF-8), largest counters and checksum
    dataclasses.replace(
        HEADER,
        model_name="é" * 127 + "x",
        torch_version="v" * 64,
        pixel_crc32=2**32 - 1,
        cpu_threads=MAX_CPU_THREADS,
        batch_slots=1,
        first_slot=2**32 - 1 - HEADER.num_tiles,
        total_slots=2**32 - 1,
    ),
    # shortest strings, smallest image and values, other enums
    dataclasses.replace(
        HEADER,
        model_name="m",
        torch_version="",
        mode="L",
        width=1,
        height=1,
        tile_h=1,
        tile_w=1,
        batch_slots=1,
        first_slot=0,
        total_slots=1,
        device="cuda",
        cpu_threads=0,
        pixel_crc32=0,
        model_digest=bytes(32),
        group=bytes(16),
    ),
    # image at MAX_PIXELS as one row; largest tiles, batch at MAX_BATCH_PIXELS
    dataclasses.replace(
        HEADER,
        mode="RGBA",
        width=MAX_PIXELS,
        height=1,
        tile_h=MAX_TILE,
        tile_w=MAX_TILE,
        batch_slots=MAX_BATCH_PIXELS // MAX_TILE**2,
        first_slot=0,
        total_slots=(2**32 - 1) // 16 * 16,  # largest u32 multiple of batch_slots
    ),
    dataclasses.replace(HEADER, mode="LA", first_slot=4),  # tiles end exactly at total_slots
]


@pytest.mark.parametrize("header", EDGE_HEADERS)
@pytest.mark.parametrize("payload", [b"", b"\xff" * 4, bytes(range(256)) * 3])
def test_round_trip_edge_values(header: Header, payload: bytes) -> None:
    data = pack(header, payload)
    assert unpack(data) == (header, payload)
    assert read_header(data) == header
    assert len(data) == header_bytes(header) + len(payload)


def test_unpack_accepts_bytes_like() -> None:
    assert unpack(bytearray(FIXTURE)) == (HEADER, PAYLOAD)
    assert unpack(memoryview(FIXTURE)) == (HEADER, PAYLOAD)


def test_read_header_needs_only_the_header() -> None:
    header_end = PAYLOAD_LEN_AT  # through the header CRC
    assert read_header(FIXTURE[:header_end]) == HEADER
    assert read_header(FIXTURE) == HEADER
    with pytest.raises(FormatError, match=r"^truncated file: header needs 111 bytes, 110 present"):
        read_header(FIXTURE[: header_end - 1])


# --- Header validation when writing ---------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_name": ""}, "model name is 0 bytes (must be 1..255)"),
        ({"model_name": "é" * 128}, "model name is 256 bytes (must be 1..255)"),
        ({"model_name": "a\x1b[2Jb"}, "model name contains control characters"),
        ({"model_name": "../evil"}, "model name contains a path separator"),
        ({"model_name": b"hist"}, "model name must be a str, not bytes"),
        ({"model_digest": bytes(31)}, "model digest must be 32 bytes"),
        ({"group": "x" * 16}, "group must be 16 bytes"),
        ({"mode": "P"}, "unknown mode 'P' (expected one of L, LA, RGB, RGBA)"),
        ({"device": "mps"}, "unknown device 'mps'"),
        ({"dtype": "bfloat16"}, "unknown dtype 'bfloat16'"),
        ({"width": 0}, "width 0 out of range 1..4294967295"),
        ({"height": -1}, "height -1 out of range"),
        ({"width": 2.0}, "width must be an int, not float"),
        ({"width": True}, "width must be an int, not bool"),
        ({"tile_w": MAX_TILE + 1}, "tile_w 4097 out of range 1..4096"),
        ({"cpu_threads": 65536}, "cpu_threads 65536 out of range 0..65535"),
        ({"cpu_threads": 65535}, "cpu_threads 65535 exceeds MAX_CPU_THREADS (256)"),
        ({"pixel_crc32": 2**32}, "pixel_crc32 4294967296 out of range"),
        ({"width": 2**14 + 1, "height": 2**14}, "image 16385x16384 exceeds MAX_PIXELS"),
        ({"batch_slots": 2**25 + 1, "total_slots": 2**25 + 1}, "exceeds MAX_BATCH_PIXELS"),
        ({"total_slots": 9}, "total_slots 9 is not a multiple of batch_slots 4"),
        ({"first_slot": 5}, "first_slot 5 + 4 tiles > total_slots 8"),
        ({"device": "cuda"}, "cpu_threads must be 0 for device cuda, not 2"),
        ({"cpu_threads": 0}, "cpu_threads must be >= 1 for device cpu"),
        ({"torch_version": "x" * 65}, "torch version is 65 bytes (must be 0..64)"),
    ],
)
def test_invalid_header_is_refused(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as info:
        dataclasses.replace(HEADER, **change)
    assert message in str(info.value)


def test_pack_refuses_bad_payload_and_forced_headers() -> None:
    with pytest.raises(ValueError, match="payload length 6 is not a multiple of 4"):
        pack(HEADER, bytes(6))
    forced = dataclasses.replace(HEADER)
    object.__setattr__(forced, "width", 0)  # bypasses __post_init__
    with pytest.raises(ValueError, match="width 0 out of range"):
        pack(forced, PAYLOAD)
    with pytest.raises(ValueError, match="header must be a Header"):
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


@pytest.mark.parametrize("version", [0, 1, 2, 4, 7, 65535])
def test_unknown_version_refused_before_the_rest(version: int) -> None:
    expected = f"unsupported format version {version} (this build reads version 3"
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
    for k in range(len(FIXTURE)):
        message = str(error_of(FIXTURE[:k]))
        assert message.startswith("truncated file: ") or k == 0, (k, message)
        if k >= PAYLOAD_LEN_AT:
            assert read_header(FIXTURE[:k]) == HEADER
        else:
            with pytest.raises(FormatError):
                read_header(FIXTURE[:k])
    assert str(error_of(FIXTURE[:40])) == "truncated file: header needs 111 bytes, 40 present"
    assert str(error_of(FIXTURE[:-1])) == "truncated file: payload needs 127 bytes, 126 present"
    assert str(error_of(FIXTURE[:3])) == "truncated file: magic needs 8 bytes, 3 present"


def test_flipping_any_header_bit_is_detected() -> None:
    for byte in range(PAYLOAD_AT):
        for bit in range(8):
            data = bytearray(FIXTURE)
            data[byte] ^= 1 << bit
            error_of(bytes(data))  # FormatError or its subclass UnsupportedVersionError
    flipped = bytearray(FIXTURE)
    flipped[BODY_AT + 32] ^= 1  # width 5 -> 4: a valid value, caught only by the CRC
    assert str(error_of(bytes(flipped))).startswith("header checksum mismatch (stored 6d11c66e")


def test_payload_bits_are_not_covered() -> None:
    # By design: the payload is checked by the pixel CRC after decoding, not here.
    data = bytearray(FIXTURE)
    data[PAYLOAD_AT] ^= 0x80
    assert unpack(bytes(data)) == (HEADER, b"\x80" + PAYLOAD[1:])


@pytest.mark.parametrize("extra", [b"\x00", b"\x00" * 4, FIXTURE])
def test_trailing_bytes(extra: bytes) -> None:
    assert str(error_of(FIXTURE + extra)) == f"{len(extra)} trailing bytes after the payload"


def test_payload_length_not_a_multiple_of_4() -> None:
    error = error_of(craft(payload=bytes(6)))
    assert str(error) == "payload length 6 is not a multiple of 4"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"mode": 0}, "bad mode code 0"),
        ({"mode": 5}, "bad mode code 5"),
        ({"device": 3}, "bad device code 3"),
        ({"dtype": 2}, "bad dtype code 2"),
        ({"width": 0}, "width 0 out of range 1..4294967295"),
        ({"height": 0}, "height 0 out of range"),
        ({"tile_h": 0}, "tile_h 0 out of range 1..4096"),
        ({"tile_w": 65535}, "tile_w 65535 out of range 1..4096"),
        ({"batch_slots": 0}, "batch_slots 0 out of range"),
        ({"total_slots": 0}, "total_slots 0 out of range"),
        ({"total_slots": 10}, "total_slots 10 is not a multiple of batch_slots 4"),
        (
            {"first_slot": 6},
            "tiles do not fit the schedule: first_slot 6 + 4 tiles > total_slots 8",
        ),
        ({"device": 2}, "cpu_threads must be 0 for device cuda, not 2"),
        ({"cpu_threads": 0}, "cpu_threads must be >= 1 for device cpu"),
        ({"name_len": 0, "name": b""}, "model name is 0 bytes (must be 1..255)"),
        ({"name": b"\xff\xfe"}, "model name is not valid UTF-8"),
        ({"name": b"a\x00b"}, "model name contains control characters"),
        ({"torch_version": b"\xc3"}, "torch version is not valid UTF-8"),
        ({"name_len": 200}, "model name length 200 overruns the header"),
        # the name's last byte "t" (116) is then read as the torch version's length
        ({"name_len": 3}, "header length 93 does not match its fields (202 bytes)"),
        ({"body_len": 83}, "bad header length 83 (must be 84..402)"),
        ({"body_len": 2**32 - 1}, "bad header length 4294967295 (must be 84..402)"),
    ],
)
def test_malformed_fields(fields: dict[str, object], message: str) -> None:
    assert str(error_of(craft(**fields))).startswith(message)  # type: ignore[arg-type]


def test_caps_rejected_before_allocation() -> None:
    huge = [
        (
            craft(width=2**32 - 1, height=2**32 - 1),
            "image 4294967295x4294967295 exceeds MAX_PIXELS",
        ),
        (craft(width=2**14, height=2**14 + 1), "image 16384x16385 exceeds MAX_PIXELS"),
        (craft(tile_h=4096, tile_w=4096, batch_slots=17, total_slots=17 * 4), "MAX_BATCH_PIXELS"),
        (
            craft(payload_len=2**64 - 4),
            "payload length 18446744073709551612 exceeds MAX_FILE_BYTES",
        ),
        (craft(payload_len=MAX_FILE_BYTES + 4), "exceeds MAX_FILE_BYTES"),
        (craft(payload_len=2**20), "truncated file: payload needs 1048695 bytes, 127 present"),
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


# --- describe ---------------------------------------------------------------------------------


def test_describe() -> None:
    info = describe(HEADER, len(PAYLOAD))
    assert info["format_version"] == 3
    assert info["model_name"] == "hist"
    assert info["model_digest"] == bytes(range(32)).hex()
    assert info["group"] == "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf"
    assert (info["mode"], info["width"], info["height"]) == ("RGB", 5, 3)
    assert info["channels_coded"] == 3
    assert (info["tile"], info["num_tiles"]) == ("2x4", 4)
    assert (info["batch_slots"], info["first_slot"], info["total_slots"]) == (4, 2, 8)
    assert (info["batches"], info["batches_used"]) == (2, "0..1")  # slots 2..5
    assert (info["device"], info["dtype"], info["cpu_threads"]) == ("cpu", "float32", 2)
    assert info["torch_version"] == "2.13.0"
    assert info["pixel_crc32"] == "deadbeef"
    assert (info["header_bytes"], info["payload_bytes"], info["file_bytes"]) == (119, 8, 127)
    assert info["bits_per_subpixel"] == round(127 * 8 / (5 * 3 * 3), 4)
    assert "file_bytes" not in describe(HEADER)
    assert all(isinstance(v, (str, int, float)) for v in info.values())


def test_file_size_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    import nncompress.container.format as fmt

    monkeypatch.setattr(fmt, "MAX_FILE_BYTES", len(FIXTURE) - 1)
    assert str(error_of(FIXTURE)) == "file of 127 bytes exceeds MAX_FILE_BYTES (126)"
    with pytest.raises(ValueError, match="file of 127 bytes exceeds MAX_FILE_BYTES"):
        pack(HEADER, PAYLOAD)
    assert read_header(FIXTURE) == HEADER  # the header alone is still readable for `info`
