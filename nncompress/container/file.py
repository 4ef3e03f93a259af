"""The .nnc container, format version 6: one image (all its frames, planes and metadata),
each part coded by its own method. Version 5 files are read too (``read_header``,
``unpack``); only version 6 is written.

A file is a validated header and a sequence of *parts*. The header gives the image's mode,
bit depth, size, frame count (and frame durations), a CRC of the decoded content, and a table
of parts: each part is one frame's planes (all of them, or the colour planes and the alpha
plane separately) coded by one method — the learned model (a model part, see ``ModelPart``),
a classical lossless codec (JPEG-XL, WebP lossless, PNG), stored raw — or the image's
metadata, or an original JPEG file kept through JPEG-XL's lossless JPEG transcoding.

The byte layout and the decoder's rules are in FORMAT.md. Every length is checked against
the bytes present and every count against a cap before anything is sliced or allocated;
malformed input raises ``FormatError`` (``UnsupportedVersionError`` for other versions).

What version 6 changed (FORMAT.md, "Version 6"): a palette image may be animated, and a
palette frame may be stored as its colour expansion (planes "expanded", mapped back through
the palette on decode); WebP parts hold the bare VP8L bitstream (the RIFF wrapper is rebuilt
on decode); mode and bit depth share a byte, a part row is one byte of method and planes and
its length (the frame follows from the row's place); the content check also covers the
frame timing and the metadata items.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from ..errors import FormatError, UnsupportedVersionError
from . import format as v4

#: The version written; READ_VERSIONS are those ``unpack`` reads (4 is files.py's).
VERSION: Final = 6
READ_VERSIONS: Final = (5, 6)

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
#: an LA / RGBA image), or the alpha channel; "none" for the metadata and palette parts;
#: "expanded" (version 6): a palette frame's colours, RGB or RGBA (``expansion_channels``),
#: whose decoder maps every pixel back to its palette index.
PLANE_CODES: Final = MappingProxyType(
    {"all": 1, "colour": 2, "alpha": 3, "none": 4, "expanded": 5}
)
_PLANE_CODES_V5: Final = MappingProxyType({"all": 1, "colour": 2, "alpha": 3, "none": 4})
PIXEL_METHODS: Final = ("model", "jxl", "webp", "png", "store")

#: Most frames of an animation, and the longest frame duration (ms, about 49 days).
MAX_FRAMES: Final = 4096
MAX_DURATION_MS: Final = 2**32 - 1
MAX_PARTS: Final = 2 * MAX_FRAMES + 1
MAX_ENCODER_BYTES: Final = 64
#: Entries of a palette (mode "P"), and the bytes of a palette part: its two bytes of
#: fields and at most the entries stored raw (the encoder keeps the smallest coding).
MAX_PALETTE: Final = 256
MAX_PALETTE_PART: Final = 2 + 4 * MAX_PALETTE
MAX_HEADER_BYTES: Final = 1 << 20
MAX_PIXELS: Final = v4.MAX_PIXELS
MAX_FILE_BYTES: Final = v4.MAX_FILE_BYTES

_VERSION = struct.Struct("<H")
_U32 = struct.Struct("<I")
_FIXED = struct.Struct("<BB")  # version 5: mode, bit depth
_CRC_HEAD = struct.Struct("<BBIIH")  # what the content CRC covers before the samples
_CRC_TIMING = struct.Struct("<I")  # version 6: each frame's duration, then u16 loop
_U16 = struct.Struct("<H")
#: Version 6's first header byte: the mode code, this bit set for 16-bit samples.
DEPTH16_FLAG: Final = 0x80
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
    """One row of the part table: what the part holds and how long it is. ``frame`` is
    stored in version 5 and implied by the row's place in version 6 (``implied_frames``)."""

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
    content_crc32: int  # content_crc32(): shape, samples, palette, timing, metadata
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
    """The first thing wrong with ``h`` (FORMAT.md's rules for version 6), or None."""
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


def implied_frames(planes: Sequence[str]) -> list[int]:
    """The frame of each part-table row, from the rows' planes alone (version 6 stores no
    frame numbers): a row of all, colour or expanded planes starts the next frame, an alpha
    row belongs to the frame before it, the palette and metadata parts to frame 0."""
    out, frame = [], -1
    for p in planes:
        if p in ("all", "colour", "expanded"):
            frame += 1
        out.append(max(frame, 0) if p == "alpha" else frame if p != "none" else 0)
    return out


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
    if [p.frame for p in parts] != implied_frames([p.planes for p in parts]):
        return "the parts' frames are not in order (one frame per part, alpha with its colour)"
    if parts[-1].method == "meta":
        meta = parts.pop()
        if meta.planes != "none":
            return "the metadata part holds no planes"
    if h.mode == "P":
        if not parts or parts[-1].method != "palette":
            return "a palette image has one palette part, after its pixels"
        pal = parts.pop()
        if pal.planes != "none" or not 3 <= pal.length <= MAX_PALETTE_PART:
            return f"bad palette part (1..{MAX_PALETTE} entries, no planes)"
        if any(p.method == "model" for p in parts):
            return "palette indices are not coded by the model"
    elif any(p.planes == "expanded" for p in parts):
        return "only a palette image has expanded planes"
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
        if p.planes == "none":
            return f"part {i}: pixels without planes"
        got.append(("all", p.frame) if p.planes == "expanded" else (p.planes, p.frame))
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


def expansion_channels(palette: bytes) -> int:
    """Channels of a palette frame's expansion: RGBA if any entry's alpha is below 255,
    else RGB."""
    return 4 if any(a != 255 for a in palette[3::4]) else 3


def content_crc32(
    mode: str,
    bit_depth: int,
    width: int,
    height: int,
    frames: Sequence[bytes],
    palette: bytes = b"",
    durations: Sequence[int] = (),
    loop: int = 0,
    metadata: Sequence[tuple[int, bytes, bytes]] = (),
    version: int = VERSION,
) -> int:
    """The content check: CRC-32 of (mode code, bit depth, width, height, frame count),
    each frame's samples (rows top to bottom, pixels left to right, channels in mode order,
    16-bit samples little-endian) and, for a palette image, the palette (RGBA entries).
    Version 6 goes on over the frame timing (animations: u32 duration per frame, u16 loop)
    and the metadata items, ``(kind code, key, value)`` each: u32 item count, per item u8
    kind, u32 key length, key, u32 value length, value."""
    crc = zlib.crc32(_CRC_HEAD.pack(MODE_CODES[mode], bit_depth, width, height, len(frames)))
    for f in frames:
        crc = zlib.crc32(f, crc)
    crc = zlib.crc32(palette, crc)
    if version == 5:
        return crc
    if durations:
        for d in durations:
            crc = zlib.crc32(_CRC_TIMING.pack(d), crc)
        crc = zlib.crc32(_U16.pack(loop), crc)
    crc = zlib.crc32(_U32.pack(len(metadata)), crc)
    for kind, key, value in metadata:
        crc = zlib.crc32(bytes((kind,)) + _U32.pack(len(key)) + key + _U32.pack(len(value)), crc)
        crc = zlib.crc32(value, crc)
    return crc


def _encode_header(h: FileHeader) -> bytes:
    enc = h.encoder.encode("utf-8")
    out = [
        bytes((MODE_CODES[h.mode] | (DEPTH16_FLAG if h.bit_depth == 16 else 0),)),
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
        out += [bytes((METHOD_CODES[p.method] | PLANE_CODES[p.planes] << 4,)), _varint(p.length)]
    out += [bytes((len(enc),)), enc]
    return b"".join(out)


def _decode_header(body: bytes, version: int) -> FileHeader:
    r = _Reader(body, "header")
    if version == 5:
        mode = v4._decode_enum(r.u8("mode"), MODE_CODES, "mode")
        depth = r.u8("bit depth")
    else:
        code = r.u8("mode")
        mode = v4._decode_enum(code & ~DEPTH16_FLAG, MODE_CODES, "mode")
        depth = 16 if code & DEPTH16_FLAG else 8
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
    rows: list[tuple[str, str, int | None, int]] = []
    for _ in range(n_parts):
        if version == 5:
            method = v4._decode_enum(r.u8("part method"), METHOD_CODES, "part method")
            planes = v4._decode_enum(r.u8("part planes"), _PLANE_CODES_V5, "part planes")
            rows.append((method, planes, r.varint("part frame"), r.varint("part length")))
        else:
            code = r.u8("part kind")
            method = v4._decode_enum(code & 0x0F, METHOD_CODES, "part method")
            planes = v4._decode_enum(code >> 4, PLANE_CODES, "part planes")
            rows.append((method, planes, None, r.varint("part length")))
    enc_len = r.u8("encoder length")
    try:
        encoder = r.bytes(enc_len, "encoder").decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError("encoder is not valid UTF-8") from None
    r.end()
    frames = implied_frames([planes for _, planes, _, _ in rows])
    parts = tuple(
        PartEntry(m, pl, f if f is not None else implied, n)
        for (m, pl, f, n), implied in zip(rows, frames)
    )
    if version == 5 and mode == "P" and durations:
        raise FormatError("a version-5 palette image is a still image")
    try:
        return FileHeader(
            mode, depth, width, height, content_crc, parts_crc, parts, durations, loop, encoder
        )
    except ValueError as e:
        raise FormatError(str(e)) from None


# --- the file ------------------------------------------------------------------------------


@dataclass(frozen=True)
class File:
    """A parsed (or to-be-written) .nnc file: the header, each part's bytes, and the
    version it was read from (what a part's bytes mean: version 5's WebP parts are whole
    RIFF files, version 6's bare VP8L bitstreams)."""

    header: FileHeader
    data: tuple[bytes, ...] = field(repr=False)
    version: int = VERSION

    def parts(self):
        """(PartEntry, bytes) pairs in table order."""
        return zip(self.header.parts, self.data)


def build_header(
    mode: str,
    bit_depth: int,
    width: int,
    height: int,
    content_crc: int,
    parts: Sequence[tuple[str, str, bytes]],
    durations: Sequence[int] = (),
    loop: int = 0,
    encoder: str = "",
) -> File:
    """A File from its parts (method, planes, bytes), in table order; each part's frame
    follows from its place (``implied_frames``). ValueError if inconsistent."""
    frames = implied_frames([pl for _, pl, _ in parts])
    entries = tuple(PartEntry(m, pl, f, len(b)) for (m, pl, b), f in zip(parts, frames))
    crc = 0
    for *_, b in parts:
        crc = zlib.crc32(b, crc)
    h = FileHeader(
        mode, bit_depth, width, height, content_crc, crc, entries, tuple(durations), loop,
        encoder,
    )
    return File(h, tuple(b for *_, b in parts))


def pack(f: File) -> bytes:
    """The bytes of ``f`` as a version-6 file: magic, version, header length, header,
    header CRC, parts."""
    problem = header_problem(f.header)
    if problem is not None:
        raise ValueError(problem)
    if f.version != VERSION:
        raise ValueError(f"this build writes format version {VERSION} only, not {f.version}")
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
    """The validated header of a version-5 or -6 file and the offset of its first part."""
    return _read_header(data)[1:]


def _read_header(data: bytes) -> tuple[int, FileHeader, int]:
    version = version_of(data)
    if version not in READ_VERSIONS:
        raise UnsupportedVersionError(
            f"unsupported format version {version} (this build reads versions 4 to {VERSION})"
        )
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
    return version, _decode_header(body, version), r.at


def unpack(data: bytes) -> File:
    """Validate a whole version-5 or -6 file: header, part lengths, the parts' CRC."""
    if len(data) > MAX_FILE_BYTES:
        raise FormatError(f"file of {len(data)} bytes exceeds MAX_FILE_BYTES")
    version, h, at = _read_header(data)
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
    return File(h, tuple(chunks), version)


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
