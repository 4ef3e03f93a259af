"""The .nnc container, format version 4: a validated header plus the range coder's payload.

The byte layout and the rules a decoder follows are specified in FORMAT.md (repository
root); this module is the reference implementation. Every length read from a file is
checked against the bytes actually present, and every size against a named cap, before
anything is sliced or allocated. Malformed input raises ``FormatError`` (or its subclass
``UnsupportedVersionError``), never another exception type.
"""

from __future__ import annotations

import struct
import unicodedata
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from ..errors import FormatError, UnsupportedVersionError

# --- Framing --------------------------------------------------------------------------------

#: PNG-style signature: a non-ASCII first byte catches 7-bit transfers, CR LF and LF catch
#: line-ending conversion, ^Z stops `type` on DOS.
MAGIC: Final = b"\x89NNC\r\n\x1a\n"
FORMAT_VERSION: Final = 4
#: Earlier versions: what a reader tells the user who has such a file.
_OLD_VERSIONS: Final = MappingProxyType(
    {
        1: "written by nncompress 0.1, whose coding computation this build does not replay",
        2: "written by nncompress 0.2, whose PixelCNN++ computation this build does not replay",
        3: (
            "written by nncompress 0.3 with float arithmetic, which only the machine and "
            "torch version that wrote them replay: decode them there with nncompress 0.3 "
            "(pip install 'nncompress==0.3'), then re-encode with this release"
        ),
    }
)

_VERSION = struct.Struct("<H")  # u16 format version, right after the magic
_BODY_LEN = struct.Struct("<I")  # u32 length of the header body
_CRC = struct.Struct("<I")  # u32 CRC-32 of the header body
_PAYLOAD_LEN = struct.Struct("<Q")  # u64 payload length in bytes

_VERSION_AT: Final = len(MAGIC)  # 8
_BODY_LEN_AT: Final = _VERSION_AT + _VERSION.size  # 10
_BODY_AT: Final = _BODY_LEN_AT + _BODY_LEN.size  # 14
#: Bytes of framing around the header body: magic, version, body length, CRC, payload length.
_FRAMING_BYTES: Final = _BODY_AT + _CRC.size + _PAYLOAD_LEN.size  # 26

# --- Header body ----------------------------------------------------------------------------

_DIGEST_BYTES: Final = 32  # sha256
#: Fixed-size part of the body, in this order (offsets in FORMAT.md): model digest, width,
#: height, mode, bit depth, tile_h, tile_w, chunk_tiles, pixel_crc32, payload_crc32, then
#: the length byte of the model name.
_FIXED = struct.Struct(f"<{_DIGEST_BYTES}sIIBBHHIIIB")  # 59 bytes
#: Each chunk's stream in the payload: u32 byte length, then the stream.
_STREAM_LEN = struct.Struct("<I")
_STR_LEN = struct.Struct("<B")  # u8 length prefix of the strings
#: What the pixel CRC covers before the pixel bytes: mode code, width, height, bit depth.
_SHAPE = struct.Struct("<BIIB")

MAX_MODEL_NAME_BYTES: Final = 255  # fits the u8 length prefix
MAX_ENCODER_BYTES: Final = 64
#: Smallest and largest possible header body (1-byte name, empty version / longest strings).
MIN_HEADER_BODY_BYTES: Final = _FIXED.size + 1 + _STR_LEN.size  # 61
MAX_HEADER_BODY_BYTES: Final = (
    _FIXED.size + MAX_MODEL_NAME_BYTES + _STR_LEN.size + MAX_ENCODER_BYTES
)  # 379

# --- Caps -----------------------------------------------------------------------------------

#: Largest image: 16384 x 16384. Its uint8 RGBA canvas is 1 GiB.
MAX_PIXELS: Final = 2**28
#: Largest tile side; tiles are coded sequentially, so bigger ones are impractical anyway.
MAX_TILE: Final = 4096
#: Most pixel positions in one chunk (chunk_tiles * tile_h * tile_w): a chunk's tiles share
#: one batch of the decoder, so this bounds what a file can make it allocate per batch.
MAX_CHUNK_PIXELS: Final = 2**24
#: Most tile columns in one chunk (chunk_tiles * tile_w): the stepper's caches grow with
#: them (pixelcnnpp-photo: ~100 KB per column), so this bounds a batch to a few GB.
MAX_CHUNK_COLUMNS: Final = 2**15
#: Largest file. A floored 256-way PMF costs at most ~24 bits a subpixel, so a MAX_PIXELS
#: RGB image stays below this; readers should refuse bigger inputs before reading them.
MAX_FILE_BYTES: Final = 2**32
_U32_MAX: Final = 2**32 - 1
_PAYLOAD_WORD_BYTES: Final = 4  # the range coder writes 32-bit words

# --- Enums (0 is never valid, so a zeroed header cannot pass) -------------------------------

_MODE_CODES: Final = MappingProxyType({"L": 1, "LA": 2, "RGB": 3, "RGBA": 4})
_BIT_DEPTHS: Final = (8,)
_CODED_CHANNELS: Final = MappingProxyType({"L": 1, "LA": 1, "RGB": 3, "RGBA": 3})


@dataclass(frozen=True)
class Header:
    """Everything the decoder needs besides the payload. Validated on construction
    (ValueError: a programmer error when writing; ``unpack`` turns it into FormatError)."""

    model_name: str  # utf-8, 1..255 bytes, no control characters or path separators
    model_digest: bytes  # 32 bytes, sha256 of the model weights (modelfile.weights_digest)
    mode: str  # "L" | "RGB" | "LA" | "RGBA"  (alpha planes are fully opaque and not coded)
    width: int  # >= 1
    height: int  # >= 1; width * height <= MAX_PIXELS
    tile_h: int  # 1..MAX_TILE (may exceed the image; edge tiles are padded)
    tile_w: int  # 1..MAX_TILE
    chunk_tiles: int  # tiles per coder stream (consecutive, raster order of tiles), >= 1
    pixel_crc32: int  # content_crc32: mode, width, height, bit depth and pixel bytes
    payload_crc32: int  # zlib.crc32 of the payload
    bit_depth: int = 8  # bits per sample (8 so far)
    encoder: str = ""  # informational (release, device), utf-8, 0..64 bytes

    def __post_init__(self) -> None:
        problem = _header_problem(self)
        if problem is not None:
            raise ValueError(problem)

    @property
    def channels_coded(self) -> int:
        """Planes the payload codes: 1 for L/LA, 3 for RGB/RGBA (alpha is not coded)."""
        return _CODED_CHANNELS[self.mode]

    @property
    def tiles_y(self) -> int:
        return -(-self.height // self.tile_h)

    @property
    def tiles_x(self) -> int:
        return -(-self.width // self.tile_w)

    @property
    def num_tiles(self) -> int:
        """ceil(height / tile_h) * ceil(width / tile_w)."""
        return self.tiles_y * self.tiles_x

    @property
    def num_chunks(self) -> int:
        """Coder streams in the payload: ceil(num_tiles / chunk_tiles)."""
        return -(-self.num_tiles // self.chunk_tiles)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _text_problem(field: str, value: object, lo: int, hi: int) -> str | None:
    """None if ``value`` is a str of lo..hi UTF-8 bytes without control characters."""
    if not isinstance(value, str):
        return f"{field} must be a str, not {type(value).__name__}"
    try:
        n = len(value.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates
        return f"{field} is not valid UTF-8"
    if not lo <= n <= hi:
        return f"{field} is {n} bytes (must be {lo}..{hi})"
    # `info` prints these on a terminal: control characters could forge or hide output.
    if any(unicodedata.category(ch) == "Cc" for ch in value):
        return f"{field} contains control characters"
    return None


def _header_problem(h: Header) -> str | None:
    """The first thing wrong with ``h`` as a one-line message, or None if it is valid.
    Field order follows FORMAT.md's validation order."""
    problem = _text_problem("model name", h.model_name, 1, MAX_MODEL_NAME_BYTES)
    if problem is not None:
        return problem
    # A model name is a file stem, looked up by the decoder: never a path.
    if "/" in h.model_name or "\\" in h.model_name:
        return "model name contains a path separator"
    if not isinstance(h.model_digest, bytes) or len(h.model_digest) != _DIGEST_BYTES:
        return f"model digest must be {_DIGEST_BYTES} bytes"
    if h.mode not in _MODE_CODES:
        return f"unknown mode {h.mode!r} (expected one of {', '.join(_MODE_CODES)})"
    ints = {
        "width": h.width,
        "height": h.height,
        "bit_depth": h.bit_depth,
        "tile_h": h.tile_h,
        "tile_w": h.tile_w,
        "chunk_tiles": h.chunk_tiles,
        "pixel_crc32": h.pixel_crc32,
        "payload_crc32": h.payload_crc32,
    }
    for field, value in ints.items():
        if not _is_int(value):
            return f"{field} must be an int, not {type(value).__name__}"
    for field, value, lo, hi in (
        ("width", h.width, 1, _U32_MAX),
        ("height", h.height, 1, _U32_MAX),
        ("tile_h", h.tile_h, 1, MAX_TILE),
        ("tile_w", h.tile_w, 1, MAX_TILE),
        ("chunk_tiles", h.chunk_tiles, 1, _U32_MAX),
        ("pixel_crc32", h.pixel_crc32, 0, _U32_MAX),
        ("payload_crc32", h.payload_crc32, 0, _U32_MAX),
    ):
        if not lo <= value <= hi:
            return f"{field} {value} out of range {lo}..{hi}"
    if h.bit_depth not in _BIT_DEPTHS:
        return f"bit depth {h.bit_depth} is not supported (only {_BIT_DEPTHS})"
    if h.width * h.height > MAX_PIXELS:
        return f"image {h.width}x{h.height} exceeds MAX_PIXELS ({MAX_PIXELS})"
    if h.chunk_tiles * h.tile_h * h.tile_w > MAX_CHUNK_PIXELS:
        return (
            f"chunk of {h.chunk_tiles} tiles of {h.tile_h}x{h.tile_w} exceeds "
            f"MAX_CHUNK_PIXELS ({MAX_CHUNK_PIXELS})"
        )
    if h.chunk_tiles * h.tile_w > MAX_CHUNK_COLUMNS:
        return (
            f"chunk of {h.chunk_tiles} tiles {h.tile_w} wide exceeds "
            f"MAX_CHUNK_COLUMNS ({MAX_CHUNK_COLUMNS})"
        )
    # A tile larger than the image only adds steps (a forged 4096x4096 tile on a tiny
    # image would take hours): encoders clamp the tile to the image.
    if h.tile_h > h.height or h.tile_w > h.width:
        return f"tile {h.tile_h}x{h.tile_w} is larger than the image {h.width}x{h.height}"
    return _text_problem("encoder", h.encoder, 0, MAX_ENCODER_BYTES)


def content_crc32(mode: str, width: int, height: int, bit_depth: int, pixels: bytes) -> int:
    """The pixel check: CRC-32 of mode code, width, height, bit depth (u8, u32, u32, u8) and
    the pixel bytes (Pillow tobytes() in ``mode``), so a header whose shape or mode was
    changed cannot decode to a silently different image."""
    head = _SHAPE.pack(_MODE_CODES[mode], width, height, bit_depth)
    return zlib.crc32(pixels, zlib.crc32(head))


def _encode_body(h: Header) -> bytes:
    name = h.model_name.encode("utf-8")
    version = h.encoder.encode("utf-8")
    fixed = _FIXED.pack(
        h.model_digest,
        h.width,
        h.height,
        _MODE_CODES[h.mode],
        h.bit_depth,
        h.tile_h,
        h.tile_w,
        h.chunk_tiles,
        h.pixel_crc32,
        h.payload_crc32,
        len(name),
    )
    return fixed + name + _STR_LEN.pack(len(version)) + version


def pack(header: Header, payload: bytes) -> bytes:
    """The complete .nnc file for ``header`` and the range coder's ``payload``
    (bytes of little-endian u32 words). ValueError on invalid arguments."""
    if not isinstance(header, Header):
        raise ValueError(f"header must be a Header, not {type(header).__name__}")
    problem = _header_problem(header)  # again: a frozen dataclass can still be forced
    if problem is not None:
        raise ValueError(problem)
    body = _encode_body(header)
    total = _FRAMING_BYTES + len(body) + len(payload)
    if total > MAX_FILE_BYTES:
        raise ValueError(f"file of {total} bytes exceeds MAX_FILE_BYTES ({MAX_FILE_BYTES})")
    return b"".join(
        (
            MAGIC,
            _VERSION.pack(FORMAT_VERSION),
            _BODY_LEN.pack(len(body)),
            body,
            _CRC.pack(zlib.crc32(body)),
            _PAYLOAD_LEN.pack(len(payload)),
            payload,
        )
    )


def _need(view: memoryview, end: int, what: str) -> None:
    """Refuse to read up to ``end`` unless that many bytes are present."""
    if len(view) < end:
        raise FormatError(f"truncated file: {what} needs {end} bytes, {len(view)} present")


def _decode_text(raw: bytes, field: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError(f"{field} is not valid UTF-8") from None


def _decode_enum(code: int, codes: Mapping[str, int], field: str) -> str:
    for name, c in codes.items():
        if c == code:
            return name
    raise FormatError(f"bad {field} code {code}")


def _parse_header(view: memoryview) -> tuple[Header, int]:
    """Steps 1-6 of FORMAT.md's validation order. Returns the header and the offset of the
    payload length field (the end of the header CRC)."""
    if len(view) == 0:
        raise FormatError("empty file (not an nncompress file)")
    head = bytes(view[: len(MAGIC)])
    if head != MAGIC[: len(head)]:
        raise FormatError("not an nncompress file (bad magic)")
    _need(view, _VERSION_AT, "magic")
    _need(view, _BODY_LEN_AT, "format version")
    (version,) = _VERSION.unpack_from(view, _VERSION_AT)
    if version != FORMAT_VERSION:
        why = (
            f"; version {version} files were {_OLD_VERSIONS[version]}"
            if version in _OLD_VERSIONS
            else ""
        )
        raise UnsupportedVersionError(
            f"unsupported format version {version} (this build reads version {FORMAT_VERSION}{why})"
        )
    _need(view, _BODY_AT, "header length")
    (body_len,) = _BODY_LEN.unpack_from(view, _BODY_LEN_AT)
    if not MIN_HEADER_BODY_BYTES <= body_len <= MAX_HEADER_BODY_BYTES:
        raise FormatError(
            f"bad header length {body_len} "
            f"(must be {MIN_HEADER_BODY_BYTES}..{MAX_HEADER_BODY_BYTES})"
        )
    crc_at = _BODY_AT + body_len
    _need(view, crc_at + _CRC.size, "header")
    body = bytes(view[_BODY_AT:crc_at])
    (stored_crc,) = _CRC.unpack_from(view, crc_at)
    computed_crc = zlib.crc32(body)
    if stored_crc != computed_crc:
        raise FormatError(
            f"header checksum mismatch (stored {stored_crc:08x}, computed {computed_crc:08x})"
        )

    (
        digest,
        width,
        height,
        mode,
        bit_depth,
        tile_h,
        tile_w,
        chunk_tiles,
        pixel_crc32,
        payload_crc32,
        name_len,
    ) = _FIXED.unpack_from(body, 0)
    name_at = _FIXED.size
    version_len_at = name_at + name_len
    # body_len >= MIN_HEADER_BODY_BYTES, so the fixed part is present; the strings are not.
    if version_len_at + _STR_LEN.size > body_len:
        raise FormatError(f"model name length {name_len} overruns the header")
    (version_len,) = _STR_LEN.unpack_from(body, version_len_at)
    end = version_len_at + _STR_LEN.size + version_len
    if end != body_len:
        raise FormatError(f"header length {body_len} does not match its fields ({end} bytes)")
    fields = dict(
        model_name=_decode_text(body[name_at:version_len_at], "model name"),
        model_digest=digest,
        mode=_decode_enum(mode, _MODE_CODES, "mode"),
        width=width,
        height=height,
        tile_h=tile_h,
        tile_w=tile_w,
        chunk_tiles=chunk_tiles,
        pixel_crc32=pixel_crc32,
        payload_crc32=payload_crc32,
        bit_depth=bit_depth,
        encoder=_decode_text(body[end - version_len : end], "encoder"),
    )
    try:
        header = Header(**fields)
    except ValueError as e:
        raise FormatError(str(e)) from None
    return header, crc_at + _CRC.size


def read_header(data: bytes) -> Header:
    """The validated header of a .nnc file. ``data`` may be the whole file or any prefix
    that holds the header (up to and including its CRC); the payload is not looked at."""
    return _parse_header(memoryview(data).cast("B"))[0]


def unpack(data: bytes) -> tuple[Header, bytes]:
    """Validate a whole .nnc file. Returns the header and the payload (little-endian u32
    words). FormatError / UnsupportedVersionError on any problem."""
    view = memoryview(data).cast("B")
    header, payload_len_at = _parse_header(view)
    if len(view) > MAX_FILE_BYTES:
        raise FormatError(f"file of {len(view)} bytes exceeds MAX_FILE_BYTES ({MAX_FILE_BYTES})")
    payload_at = payload_len_at + _PAYLOAD_LEN.size
    _need(view, payload_at, "payload length")
    (payload_len,) = _PAYLOAD_LEN.unpack_from(view, payload_len_at)
    if payload_len > MAX_FILE_BYTES:
        raise FormatError(f"payload length {payload_len} exceeds MAX_FILE_BYTES")
    end = payload_at + payload_len
    _need(view, end, "payload")
    if len(view) > end:
        raise FormatError(f"{len(view) - end} trailing bytes after the payload")
    payload = bytes(view[payload_at:end])
    crc = zlib.crc32(payload)
    if crc != header.payload_crc32:
        raise FormatError(
            f"payload checksum mismatch (stored {header.payload_crc32:08x}, computed "
            f"{crc:08x}): the file is damaged"
        )
    return header, payload


def join_streams(streams: list[bytes]) -> bytes:
    """The payload of a file whose chunks' coder streams are ``streams`` (bytes each)."""
    return b"".join(_STREAM_LEN.pack(len(s)) + s for s in streams)


def split_streams(header: Header, payload: bytes) -> list[bytes]:
    """The chunks' coder streams of a payload: exactly header.num_chunks length-prefixed
    streams of whole 32-bit words filling it. FormatError otherwise."""
    view = memoryview(payload)
    out, at = [], 0
    for k in range(header.num_chunks):
        if at + _STREAM_LEN.size > len(view):
            raise FormatError(f"payload ends before stream {k} of {header.num_chunks}")
        (n,) = _STREAM_LEN.unpack_from(view, at)
        at += _STREAM_LEN.size
        if n % _PAYLOAD_WORD_BYTES or at + n > len(view):
            raise FormatError(f"bad length {n} of stream {k} (payload damaged)")
        out.append(bytes(view[at : at + n]))
        at += n
    if at != len(view):
        raise FormatError(f"{len(view) - at} bytes after the last stream of the payload")
    return out


def header_bytes(header: Header) -> int:
    """Size of everything before the payload in a file written with ``header``."""
    return (
        _FRAMING_BYTES
        + MIN_HEADER_BODY_BYTES
        - 1  # MIN counts a 1-byte name
        + len(header.model_name.encode("utf-8"))
        + len(header.encoder.encode("utf-8"))
    )


def describe(header: Header, payload_len: int | None = None) -> dict[str, object]:
    """Human-readable fields for ``nncompress info``, in display order. With
    ``payload_len``, also the file size and the bits it costs per coded subpixel."""
    out: dict[str, object] = {
        "format_version": FORMAT_VERSION,
        "model_name": header.model_name,
        "model_digest": header.model_digest.hex(),
        "mode": header.mode,
        "width": header.width,
        "height": header.height,
        "channels_coded": header.channels_coded,
        "tile": f"{header.tile_h}x{header.tile_w}",
        "num_tiles": header.num_tiles,
        "chunk_tiles": header.chunk_tiles,
        "streams": header.num_chunks,
        "bit_depth": header.bit_depth,
        "encoder": header.encoder,
        "pixel_crc32": f"{header.pixel_crc32:08x}",
        "payload_crc32": f"{header.payload_crc32:08x}",
    }
    if payload_len is not None:
        file_bytes = header_bytes(header) + payload_len
        subpixels = header.width * header.height * header.channels_coded
        out["header_bytes"] = header_bytes(header)
        out["payload_bytes"] = payload_len
        out["file_bytes"] = file_bytes
        out["bits_per_subpixel"] = round(8 * file_bytes / subpixels, 4)
    return out


__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "MAX_CHUNK_COLUMNS",
    "MAX_CHUNK_PIXELS",
    "MAX_FILE_BYTES",
    "MAX_HEADER_BODY_BYTES",
    "MAX_MODEL_NAME_BYTES",
    "MAX_PIXELS",
    "MAX_TILE",
    "MAX_ENCODER_BYTES",
    "MIN_HEADER_BODY_BYTES",
    "Header",
    "content_crc32",
    "describe",
    "header_bytes",
    "join_streams",
    "pack",
    "read_header",
    "split_streams",
    "unpack",
]
