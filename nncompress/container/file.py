"""The .nnc container, format version 5: one image (all its frames, planes and metadata),
each part coded by its own method.

A file is a validated header and a sequence of *parts*. The header gives the image's mode,
bit depth, size, frame count (and frame durations), a CRC of the decoded content, and a table
of parts: each part is one frame's planes (all of them, or the colour planes and the alpha
plane separately) coded by one method — the learned model (a model part, see ``ModelPart``),
a classical lossless codec (JPEG-XL, WebP lossless, PNG), stored raw — or the image's
metadata, or an original JPEG file kept through JPEG-XL's lossless JPEG transcoding.

The byte layout and the decoder's rules are in FORMAT.md. Every length is checked against
the bytes present and every count against a cap before anything is sliced or allocated;
malformed input raises ``FormatError`` (``UnsupportedVersionError`` for other versions).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from ..errors import FormatError
from . import format as v4

VERSION: Final = 5

#: Image modes and their channel counts (samples per pixel, all stored).
#: "P": palette indices (the palette in a "palette" part); "1": bilevel, samples 0 or 255.
MODE_CODES: Final = MappingProxyType({"L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "P": 5, "1": 6})
MODE_CHANNELS: Final = MappingProxyType({"L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "P": 1, "1": 1})
BIT_DEPTHS: Final = (8, 16)
#: How a part was coded. "meta": the metadata items (nncompress.metadata); "jpeg": the
#: input JPEG file itself, through JPEG-XL's lossless JPEG transcoding.
METHOD_CODES: Final = MappingProxyType(
    {"model": 1, "jxl": 2, "webp": 3, "png": 4, "store": 5, "jpeg": 6, "meta": 7, "palette": 8}
)
#: Which samples of its frame a part holds: every channel, the colour channels (L or RGB of
#: an LA / RGBA image), or the alpha channel; "none" for the metadata part.
PLANE_CODES: Final = MappingProxyType({"all": 1, "colour": 2, "alpha": 3, "none": 4})
PIXEL_METHODS: Final = ("model", "jxl", "webp", "png", "store")

#: Most frames of an animation, and the longest frame duration (ms, about 49 days).
MAX_FRAMES: Final = 4096
MAX_DURATION_MS: Final = 2**32 - 1
MAX_PARTS: Final = 2 * MAX_FRAMES + 1
MAX_ENCODER_BYTES: Final = 64
MAX_HEADER_BYTES: Final = 1 << 20
MAX_PIXELS: Final = v4.MAX_PIXELS
MAX_FILE_BYTES: Final = v4.MAX_FILE_BYTES

_VERSION = struct.Struct("<H")
_U32 = struct.Struct("<I")
_FIXED = struct.Struct("<BB")  # mode, bit depth
_CRC_HEAD = struct.Struct("<BBIIH")  # what the content CRC covers before the samples
_HEADER_AT: Final = len(v4.MAGIC) + _VERSION.size  # the header length varint starts here


# --- varints (unsigned LEB128, at most 5 bytes, values < 2**32) ------------------------------


def _varint(n: int) -> bytes:
    if not 0 <= n < 2**32:
        raise ValueError(f"varint {n} out of range")
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


class _Reader:
    """Bounds-checked reads from ``data``; FormatError naming ``what`` on any overrun."""

    def __init__(self, data: bytes | memoryview, what: str) -> None:
        self.data, self.at, self.what = memoryview(data), 0, what

    def bytes(self, n: int, field_: str) -> bytes:
        if n < 0 or self.at + n > len(self.data):
            raise FormatError(f"truncated {self.what}: {field_} needs {n} bytes")
        out = bytes(self.data[self.at : self.at + n])
        self.at += n
        return out

    def u8(self, field_: str) -> int:
        return self.bytes(1, field_)[0]

    def u32(self, field_: str) -> int:
        return _U32.unpack(self.bytes(4, field_))[0]

    def varint(self, field_: str) -> int:
        n, shift = 0, 0
        for _ in range(5):
            b = self.u8(field_)
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                if n >= 2**32 or (b == 0 and shift):
                    raise FormatError(f"bad {field_} in the {self.what} (overlong number)")
                return n
            shift += 7
        raise FormatError(f"bad {field_} in the {self.what} (number longer than 5 bytes)")

    def end(self) -> None:
        if self.at != len(self.data):
            stray = len(self.data) - self.at
            raise FormatError(f"{stray} stray bytes at the end of the {self.what}")


# --- the header -------------------------------------------------------------------------


@dataclass(frozen=True)
class PartEntry:
    """One row of the part table: what the part holds and how long it is."""

    method: str
    planes: str
    frame: int
    length: int


@dataclass(frozen=True)
class FileHeader:
    mode: str
    bit_depth: int
    width: int
    height: int
    content_crc32: int  # content_crc32(): shape and every frame's samples
    parts_crc32: int  # CRC-32 of all part bytes, in table order
    parts: tuple[PartEntry, ...]
    durations: tuple[int, ...] = ()  # ms per frame; () for a still image
    loop: int = 0  # animation: times to play, 0 = forever
    encoder: str = ""

    def __post_init__(self) -> None:
        problem = header_problem(self)
        if problem is not None:
            raise ValueError(problem)

    @property
    def frames(self) -> int:
        return max(1, len(self.durations))

    @property
    def channels(self) -> int:
        return MODE_CHANNELS[self.mode]

    @property
    def samples(self) -> int:
        return self.width * self.height * self.channels * self.frames

    def method_summary(self) -> str:
        """The pixel methods used, e.g. "model" or "model+png" (colour + alpha)."""
        seen: list[str] = []
        for p in self.parts:
            if p.method not in ("meta", "palette") and p.method not in seen:
                seen.append(p.method)
        return "+".join(seen)


def header_problem(h: FileHeader) -> str | None:
    """The first thing wrong with ``h`` (FORMAT.md's rules), or None."""
    if h.mode not in MODE_CODES:
        return f"unknown mode {h.mode!r}"
    if h.bit_depth not in BIT_DEPTHS:
        return f"bit depth {h.bit_depth} not supported (8 or 16)"
    if h.mode in ("P", "1") and h.bit_depth != 8:
        return f"mode {h.mode} is 8-bit"
    if not (1 <= h.width < 2**32 and 1 <= h.height < 2**32):
        return f"bad image size {h.width}x{h.height}"
    if h.width * h.height > MAX_PIXELS:
        return f"image {h.width}x{h.height} exceeds MAX_PIXELS ({MAX_PIXELS})"
    if len(h.durations) == 1 or len(h.durations) > MAX_FRAMES:
        return f"bad frame count {len(h.durations)} (a still image has none, 2..{MAX_FRAMES})"
    if any(not 0 <= d <= MAX_DURATION_MS for d in h.durations):
        return "frame duration out of range"
    if not 0 <= h.loop < 2**16:
        return f"loop count {h.loop} out of range"
    if h.frames * h.width * h.height > MAX_PIXELS:
        return f"{h.frames} frames of {h.width}x{h.height} exceed MAX_PIXELS ({MAX_PIXELS})"
    if not (0 <= h.content_crc32 < 2**32 and 0 <= h.parts_crc32 < 2**32):
        return "CRC out of range"
    problem = v4._text_problem("encoder", h.encoder, 0, MAX_ENCODER_BYTES)
    if problem is not None:
        return problem
    return _parts_problem(h)


def _parts_problem(h: FileHeader) -> str | None:
    """The part table: every frame covered exactly once, in order, by methods that fit."""
    parts = list(h.parts)
    if not 1 <= len(parts) <= MAX_PARTS:
        return f"bad part count {len(parts)}"
    for p in parts:
        if p.method not in METHOD_CODES or p.planes not in PLANE_CODES:
            return "unknown part method or planes"
        if not 0 <= p.length <= MAX_FILE_BYTES:
            return "part length out of range"
    if parts[-1].method == "meta":
        meta = parts.pop()
        if meta.planes != "none" or meta.frame != 0:
            return "the metadata part holds no planes"
    if h.mode == "P":
        if not parts or parts[-1].method != "palette" or h.durations:
            return "a palette image (a still one) has one palette part, after its pixels"
        pal = parts.pop()
        if pal.planes != "none" or pal.frame != 0 or not 4 <= pal.length <= 1024:
            return "bad palette part (1..256 RGBA entries, no planes)"
        if pal.length % 4:
            return "bad palette part (1..256 RGBA entries, no planes)"
        if any(p.method == "model" for p in parts):
            return "palette indices are not coded by the model"
    if parts and parts[0].method == "jpeg":
        if len(parts) != 1 or h.frames != 1 or h.bit_depth != 8 or h.mode not in ("L", "RGB"):
            return "a JPEG part is the only part of a still 8-bit L or RGB image"
        if parts[0].planes != "all" or h.parts[-1].method == "meta":
            return "a JPEG part holds all planes and carries its own metadata"
        return None
    alpha = h.mode in ("LA", "RGBA")
    expect = [("colour", f) if alpha else ("all", f) for f in range(h.frames)]
    got: list[tuple[str, int]] = []
    i = 0
    while i < len(parts):
        p = parts[i]
        if p.method not in PIXEL_METHODS:  # (a palette part elsewhere lands here too)
            return f"part {i}: method {p.method} does not code pixels"
        if p.planes == "alpha":
            return f"part {i}: an alpha part without its colour part"
        got.append((p.planes, p.frame))
        if p.planes == "colour" and alpha:
            if i + 1 >= len(parts) or parts[i + 1].planes != "alpha":
                return f"part {i}: colour planes of frame {p.frame} without the alpha part"
            if parts[i + 1].frame != p.frame or parts[i + 1].method == "model":
                return f"part {i + 1}: bad alpha part"
            i += 1
        elif p.planes == "all" and alpha:
            got[-1] = ("colour", p.frame)  # an alpha image's frame coded whole
        if p.method == "model" and (h.bit_depth != 8 or p.planes == "all" and alpha):
            return f"part {i}: the model codes 8-bit colour planes only"
        i += 1
    if got != expect:
        return "the parts do not cover every frame exactly once, in order"
    return None


def content_crc32(
    mode: str,
    bit_depth: int,
    width: int,
    height: int,
    frames: Sequence[bytes],
    palette: bytes = b"",
) -> int:
    """CRC-32 of (mode code, bit depth, width, height, frame count), each frame's
    samples (rows top to bottom, pixels left to right, channels in mode order, 16-bit
    samples little-endian) and, for a palette image, the palette (RGBA entries)."""
    crc = zlib.crc32(_CRC_HEAD.pack(MODE_CODES[mode], bit_depth, width, height, len(frames)))
    for f in frames:
        crc = zlib.crc32(f, crc)
    return zlib.crc32(palette, crc)


def _encode_header(h: FileHeader) -> bytes:
    enc = h.encoder.encode("utf-8")
    out = [
        _FIXED.pack(MODE_CODES[h.mode], h.bit_depth),
        _varint(h.width),
        _varint(h.height),
        _varint(len(h.durations)),
        *(_varint(d) for d in h.durations),
        _varint(h.loop) if h.durations else b"",
        _U32.pack(h.content_crc32),
        _U32.pack(h.parts_crc32),
        _varint(len(h.parts)),
    ]
    for p in h.parts:
        out += [
            bytes((METHOD_CODES[p.method], PLANE_CODES[p.planes])),
            _varint(p.frame),
            _varint(p.length),
        ]
    out += [bytes((len(enc),)), enc]
    return b"".join(out)


def _decode_header(body: bytes) -> FileHeader:
    r = _Reader(body, "header")
    mode = v4._decode_enum(r.u8("mode"), MODE_CODES, "mode")
    depth = r.u8("bit depth")
    width, height = r.varint("width"), r.varint("height")
    n_frames = r.varint("frame count")
    if n_frames > MAX_FRAMES:
        raise FormatError(f"frame count {n_frames} exceeds MAX_FRAMES ({MAX_FRAMES})")
    durations = tuple(r.varint("frame duration") for _ in range(n_frames))
    loop = r.varint("loop count") if n_frames else 0
    content_crc, parts_crc = r.u32("content CRC"), r.u32("parts CRC")
    n_parts = r.varint("part count")
    if n_parts > MAX_PARTS:
        raise FormatError(f"part count {n_parts} exceeds MAX_PARTS ({MAX_PARTS})")
    parts = []
    for _ in range(n_parts):
        method = v4._decode_enum(r.u8("part method"), METHOD_CODES, "part method")
        planes = v4._decode_enum(r.u8("part planes"), PLANE_CODES, "part planes")
        parts.append(PartEntry(method, planes, r.varint("part frame"), r.varint("part length")))
    enc_len = r.u8("encoder length")
    try:
        encoder = r.bytes(enc_len, "encoder").decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError("encoder is not valid UTF-8") from None
    r.end()
    try:
        return FileHeader(
            mode, depth, width, height, content_crc, parts_crc, tuple(parts), durations, loop,
            encoder,
        )
    except ValueError as e:
        raise FormatError(str(e)) from None


# --- the file ------------------------------------------------------------------------------


@dataclass(frozen=True)
class File:
    """A parsed (or to-be-written) .nnc file: the header and each part's bytes."""

    header: FileHeader
    data: tuple[bytes, ...] = field(repr=False)

    def parts(self):
        """(PartEntry, bytes) pairs in table order."""
        return zip(self.header.parts, self.data)


def build_header(
    mode: str,
    bit_depth: int,
    width: int,
    height: int,
    content_crc: int,
    parts: Sequence[tuple[str, str, int, bytes]],
    durations: Sequence[int] = (),
    loop: int = 0,
    encoder: str = "",
) -> File:
    """A File from its parts (method, planes, frame, bytes). ValueError if inconsistent."""
    entries = tuple(PartEntry(m, pl, f, len(b)) for m, pl, f, b in parts)
    crc = 0
    for *_, b in parts:
        crc = zlib.crc32(b, crc)
    h = FileHeader(
        mode, bit_depth, width, height, content_crc, crc, entries, tuple(durations), loop,
        encoder,
    )
    return File(h, tuple(b for *_, b in parts))


def pack(f: File) -> bytes:
    """The bytes of ``f``: magic, version, header length, header, header CRC, parts."""
    problem = header_problem(f.header)
    if problem is not None:
        raise ValueError(problem)
    if [p.length for p in f.header.parts] != [len(b) for b in f.data]:
        raise ValueError("part lengths do not match the header")
    body = _encode_header(f.header)
    out = b"".join(
        (v4.MAGIC, _VERSION.pack(VERSION), _varint(len(body)), body, _U32.pack(zlib.crc32(body)))
        + f.data
    )
    if len(out) > MAX_FILE_BYTES:
        raise ValueError(f"file of {len(out)} bytes exceeds MAX_FILE_BYTES")
    return out


def version_of(data: bytes) -> int:
    """The format version of a file (FormatError if it is not an nncompress file)."""
    view = memoryview(data)
    if len(view) == 0:
        raise FormatError("empty file (not an nncompress file)")
    head = bytes(view[: len(v4.MAGIC)])
    if head != v4.MAGIC[: len(head)]:
        raise FormatError("not an nncompress file (bad magic)")
    if len(view) < _HEADER_AT:
        raise FormatError("truncated file: no format version")
    return _VERSION.unpack_from(view, len(v4.MAGIC))[0]


def read_header(data: bytes) -> tuple[FileHeader, int]:
    """The validated header of a version-5 file and the offset of its first part."""
    version = version_of(data)
    if version != VERSION:
        raise FormatError(f"format version {version}, not {VERSION}")
    r = _Reader(data, "file")
    r.at = _HEADER_AT
    n = r.varint("header length")
    if n > MAX_HEADER_BYTES:
        raise FormatError(f"header length {n} exceeds {MAX_HEADER_BYTES}")
    body = r.bytes(n, "header")
    stored = r.u32("header CRC")
    if stored != zlib.crc32(body):
        raise FormatError(
            f"header checksum mismatch (stored {stored:08x}, computed {zlib.crc32(body):08x})"
        )
    return _decode_header(body), r.at


def unpack(data: bytes) -> File:
    """Validate a whole version-5 file: header, part lengths, the parts' CRC."""
    if len(data) > MAX_FILE_BYTES:
        raise FormatError(f"file of {len(data)} bytes exceeds MAX_FILE_BYTES")
    h, at = read_header(data)
    total = sum(p.length for p in h.parts)
    if at + total != len(data):
        what = "truncated file" if at + total > len(data) else "trailing bytes after the parts"
        raise FormatError(f"{what}: the parts need {total} bytes, {len(data) - at} present")
    view = memoryview(data)
    chunks = []
    crc = 0
    for p in h.parts:
        b = bytes(view[at : at + p.length])
        crc = zlib.crc32(b, crc)
        chunks.append(b)
        at += p.length
    if crc != h.parts_crc32:
        raise FormatError(
            f"payload checksum mismatch (stored {h.parts_crc32:08x}, computed {crc:08x}): "
            "the file is damaged"
        )
    return File(h, tuple(chunks))


# --- model parts ---------------------------------------------------------------------------

_MODEL_FIXED = struct.Struct("<32sHHI")  # digest, tile_h, tile_w, chunk_tiles


@dataclass(frozen=True)
class ModelPart:
    """A model part: the model (name, digest), how the planes were cut into tiles and
    chunks, and the chunks' coder streams (``payload``, format-4 stream framing)."""

    model_name: str
    model_digest: bytes
    tile_h: int
    tile_w: int
    chunk_tiles: int
    payload: bytes


def pack_model_part(p: ModelPart) -> bytes:
    name = p.model_name.encode("utf-8")
    return (
        bytes((len(name),))
        + name
        + _MODEL_FIXED.pack(p.model_digest, p.tile_h, p.tile_w, p.chunk_tiles)
        + p.payload
    )


def unpack_model_part(data: bytes, mode: str, width: int, height: int) -> tuple[v4.Header, bytes]:
    """A model part of planes of ``mode`` ("L" or "RGB") and size, as a format-4 header
    (whose validation applies: name, tile and chunk caps) and its stream payload."""
    r = _Reader(data, "model part")
    name_len = r.u8("model name length")
    try:
        name = r.bytes(name_len, "model name").decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError("model name is not valid UTF-8") from None
    digest, th, tw, chunk = _MODEL_FIXED.unpack(r.bytes(_MODEL_FIXED.size, "model fields"))
    payload = bytes(r.data[r.at :])
    try:
        header = v4.Header(
            model_name=name,
            model_digest=digest,
            mode=mode,
            width=width,
            height=height,
            tile_h=th,
            tile_w=tw,
            chunk_tiles=chunk,
            pixel_crc32=0,
            payload_crc32=zlib.crc32(payload),
        )
    except ValueError as e:
        raise FormatError(f"model part: {e}") from None
    return header, payload
