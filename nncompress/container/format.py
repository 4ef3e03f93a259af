"""The .nnc container, format version 3: a validated header plus the range coder's payload.

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
FORMAT_VERSION: Final = 3
#: Earlier versions: what a reader tells the user who has such a file.
_OLD_VERSIONS: Final = MappingProxyType(
    {
        1: "written by nncompress 0.1, whose coding computation this build does not replay",
        2: "written by nncompress 0.2, whose PixelCNN++ computation this build does not replay",
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
_GROUP_BYTES: Final = 16
#: Fixed-size part of the body, in this order (offsets in FORMAT.md): model digest, width,
#: height, mode, tile_h, tile_w, batch_slots, first_slot, total_slots, group, device, dtype,
#: cpu_threads, pixel_crc32, then the length byte of the model name.
_FIXED = struct.Struct(f"<{_DIGEST_BYTES}sIIBHHIII{_GROUP_BYTES}sBBHIB")  # 82 bytes
_STR_LEN = struct.Struct("<B")  # u8 length prefix of the strings

MAX_MODEL_NAME_BYTES: Final = 255  # fits the u8 length prefix
MAX_TORCH_VERSION_BYTES: Final = 64
#: Smallest and largest possible header body (1-byte name, empty version / longest strings).
MIN_HEADER_BODY_BYTES: Final = _FIXED.size + 1 + _STR_LEN.size  # 84
MAX_HEADER_BODY_BYTES: Final = (
    _FIXED.size + MAX_MODEL_NAME_BYTES + _STR_LEN.size + MAX_TORCH_VERSION_BYTES
)  # 402

# --- Caps -----------------------------------------------------------------------------------

#: Largest image: 16384 x 16384. Its uint8 RGBA canvas is 1 GiB.
MAX_PIXELS: Final = 2**28
#: Largest tile side; tiles are coded sequentially, so bigger ones are impractical anyway.
MAX_TILE: Final = 4096
#: Largest batch the decoder must allocate: batch_slots * tile_h * tile_w pixel positions.
MAX_BATCH_PIXELS: Final = 2**28
#: Largest file. A floored 256-way PMF costs at most ~24 bits a subpixel, so a MAX_PIXELS
#: RGB image stays below this; readers should refuse bigger inputs before reading them.
MAX_FILE_BYTES: Final = 2**32
#: Most CPU threads a file may ask the decoder to replay. The encoder records one thread
#: (runtime.CODING_CPU_THREADS); a forged count must not reach torch.set_num_threads, where
#: libgomp kills the process ("Thread creation failed") instead of raising.
MAX_CPU_THREADS: Final = 256
_U16_MAX: Final = 2**16 - 1
_U32_MAX: Final = 2**32 - 1
_PAYLOAD_WORD_BYTES: Final = 4  # the range coder writes 32-bit words

# --- Enums (0 is never valid, so a zeroed header cannot pass) -------------------------------

_MODE_CODES: Final = MappingProxyType({"L": 1, "LA": 2, "RGB": 3, "RGBA": 4})
_DEVICE_CODES: Final = MappingProxyType({"cpu": 1, "cuda": 2})
_DTYPE_CODES: Final = MappingProxyType({"float32": 1})
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
    batch_slots: int  # tiles per batch in the encoder's schedule, >= 1
    first_slot: int  # global slot of this image's first tile (tiles are consecutive slots)
    total_slots: int  # slots over all batches of the encoder's run; multiple of batch_slots
    group: bytes  # 16 bytes: identifies the images coded together in one schedule
    device: str  # "cpu" | "cuda"
    dtype: str  # "float32"
    cpu_threads: int  # torch intra-op threads when device == "cpu" (>= 1); 0 for cuda
    torch_version: str  # informational, utf-8, 0..64 bytes
    pixel_crc32: int  # zlib.crc32 of the original pixels (Pillow tobytes() in mode)

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
    for field, value, size in (
        ("model digest", h.model_digest, _DIGEST_BYTES),
        ("group", h.group, _GROUP_BYTES),
    ):
        if not isinstance(value, bytes) or len(value) != size:
            return f"{field} must be {size} bytes"
    for field, value, codes in (
        ("mode", h.mode, _MODE_CODES),
        ("device", h.device, _DEVICE_CODES),
        ("dtype", h.dtype, _DTYPE_CODES),
    ):
        if value not in codes:
            return f"unknown {field} {value!r} (expected one of {', '.join(codes)})"
    ints = {
        "width": h.width,
        "height": h.height,
        "tile_h": h.tile_h,
        "tile_w": h.tile_w,
        "batch_slots": h.batch_slots,
        "first_slot": h.first_slot,
        "total_slots": h.total_slots,
        "cpu_threads": h.cpu_threads,
        "pixel_crc32": h.pixel_crc32,
    }
    for field, value in ints.items():
        if not _is_int(value):
            return f"{field} must be an int, not {type(value).__name__}"
    for field, value, lo, hi in (
        ("width", h.width, 1, _U32_MAX),
        ("height", h.height, 1, _U32_MAX),
        ("tile_h", h.tile_h, 1, MAX_TILE),
        ("tile_w", h.tile_w, 1, MAX_TILE),
        ("batch_slots", h.batch_slots, 1, _U32_MAX),
        ("first_slot", h.first_slot, 0, _U32_MAX),
        ("total_slots", h.total_slots, 1, _U32_MAX),
        ("cpu_threads", h.cpu_threads, 0, _U16_MAX),
        ("pixel_crc32", h.pixel_crc32, 0, _U32_MAX),
    ):
        if not lo <= value <= hi:
            return f"{field} {value} out of range {lo}..{hi}"
    if h.width * h.height > MAX_PIXELS:
        return f"image {h.width}x{h.height} exceeds MAX_PIXELS ({MAX_PIXELS})"
    batch_pixels = h.batch_slots * h.tile_h * h.tile_w
    if batch_pixels > MAX_BATCH_PIXELS:
        return (
            f"batch of {h.batch_slots} tiles of {h.tile_h}x{h.tile_w} exceeds "
            f"MAX_BATCH_PIXELS ({MAX_BATCH_PIXELS})"
        )
    if h.total_slots % h.batch_slots:
        return f"total_slots {h.total_slots} is not a multiple of batch_slots {h.batch_slots}"
    if h.first_slot + h.num_tiles > h.total_slots:
        return (
            f"tiles do not fit the schedule: first_slot {h.first_slot} + "
            f"{h.num_tiles} tiles > total_slots {h.total_slots}"
        )
    if h.device == "cuda" and h.cpu_threads != 0:
        return f"cpu_threads must be 0 for device cuda, not {h.cpu_threads}"
    if h.device == "cpu" and h.cpu_threads == 0:
        return "cpu_threads must be >= 1 for device cpu"
    if h.cpu_threads > MAX_CPU_THREADS:
        return f"cpu_threads {h.cpu_threads} exceeds MAX_CPU_THREADS ({MAX_CPU_THREADS})"
    return _text_problem("torch version", h.torch_version, 0, MAX_TORCH_VERSION_BYTES)


def _encode_body(h: Header) -> bytes:
    name = h.model_name.encode("utf-8")
    version = h.torch_version.encode("utf-8")
    fixed = _FIXED.pack(
        h.model_digest,
        h.width,
        h.height,
        _MODE_CODES[h.mode],
        h.tile_h,
        h.tile_w,
        h.batch_slots,
        h.first_slot,
        h.total_slots,
        h.group,
        _DEVICE_CODES[h.device],
        _DTYPE_CODES[h.dtype],
        h.cpu_threads,
        h.pixel_crc32,
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
    if len(payload) % _PAYLOAD_WORD_BYTES:
        raise ValueError(f"payload length {len(payload)} is not a multiple of 4")
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
        tile_h,
        tile_w,
        batch_slots,
        first_slot,
        total_slots,
        group,
        device,
        dtype,
        cpu_threads,
        pixel_crc32,
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
        batch_slots=batch_slots,
        first_slot=first_slot,
        total_slots=total_slots,
        group=group,
        device=_decode_enum(device, _DEVICE_CODES, "device"),
        dtype=_decode_enum(dtype, _DTYPE_CODES, "dtype"),
        cpu_threads=cpu_threads,
        torch_version=_decode_text(body[end - version_len : end], "torch version"),
        pixel_crc32=pixel_crc32,
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
    if payload_len % _PAYLOAD_WORD_BYTES:
        raise FormatError(f"payload length {payload_len} is not a multiple of 4")
    end = payload_at + payload_len
    _need(view, end, "payload")
    if len(view) > end:
        raise FormatError(f"{len(view) - end} trailing bytes after the payload")
    return header, bytes(view[payload_at:end])


def header_bytes(header: Header) -> int:
    """Size of everything before the payload in a file written with ``header``."""
    return (
        _FRAMING_BYTES
        + MIN_HEADER_BODY_BYTES
        - 1  # MIN counts a 1-byte name
        + len(header.model_name.encode("utf-8"))
        + len(header.torch_version.encode("utf-8"))
    )


def describe(header: Header, payload_len: int | None = None) -> dict[str, object]:
    """Human-readable fields for ``nncompress info``, in display order. With
    ``payload_len``, also the file size and the bits it costs per coded subpixel."""
    first_batch = header.first_slot // header.batch_slots
    last_batch = (header.first_slot + header.num_tiles - 1) // header.batch_slots
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
        "batch_slots": header.batch_slots,
        "first_slot": header.first_slot,
        "total_slots": header.total_slots,
        "batches": header.total_slots // header.batch_slots,
        "batches_used": f"{first_batch}..{last_batch}",  # this image's tiles lie in these
        "group": header.group.hex(),
        "device": header.device,
        "dtype": header.dtype,
        "cpu_threads": header.cpu_threads,
        "torch_version": header.torch_version,
        "pixel_crc32": f"{header.pixel_crc32:08x}",
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
    "MAX_BATCH_PIXELS",
    "MAX_FILE_BYTES",
    "MAX_HEADER_BODY_BYTES",
    "MAX_MODEL_NAME_BYTES",
    "MAX_PIXELS",
    "MAX_TILE",
    "MAX_TORCH_VERSION_BYTES",
    "MIN_HEADER_BODY_BYTES",
    "Header",
    "describe",
    "header_bytes",
    "pack",
    "read_header",
    "unpack",
]
