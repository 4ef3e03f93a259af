"""Whole .nnc files: per image (and per frame) the best method, parts, metadata, checks.

Encoding an image (``encode_contents``):

1. Every frame is coded by the classical codecs (``classical.best``: JPEG-XL lossless, WebP
   lossless, PNG, stored — each decoded and compared before it counts), all its channels
   together.
2. The learned model is a candidate for 8-bit frames: its colour planes (L or RGB) coded by
   the model, an alpha plane by the best classical codec. Its cost is first *predicted* by
   one parallel scoring pass (the exact information content of the planes under the coding
   tables, ``planes.score_planes``), which costs a fraction of a model encode; the model
   encodes only frames where the prediction beats the classical size. The coded size is
   then compared again, so the file is never larger than the classical choice.
3. A JPEG input is kept as that JPEG file, recompressed by JPEG-XL's lossless JPEG
   transcoding (about 20% smaller than the JPEG; decoding gives back the identical file),
   unless another method is asked for or ``strip`` is set.

The rule in one line: the smallest verified candidate, where the model is tried only when
its score says it can win (on a GPU the model codes every 8-bit frame instead: see
``score_first``). Speed: where the model's predicted or coded size is at least
CLEAR_WIN (3%) below JPEG-XL at effort 7 (the first classical candidate coded), the slower
classical candidates (JPEG-XL effort 9, WebP, PNG) are skipped: on photos they come out
near or above effort 7 (photos/val totals: JPEG-XL e9 0.9% below e7, WebP 8% and PNG 47%
above), so they could not win, and coding them took 7x the model's encode time on an
H200 (139 s against 17 s for photos/val).

``method`` forces one method for every frame ("model" codes alpha planes with the best
classical codec; "store" is raw samples).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from . import __version__, classical, container
from . import metadata as meta
from .container import file as fmt
from .content import Content
from .errors import FormatError, IntegrityError, UnsupportedImageError
from .images import check_pixel_count
from .modelfile import LoadedModel
from .planes import (
    DEFAULT_MAX_BATCH,
    ProgressFactory,
    decode_parts,
    encode_planes,
    load_model,
    model_for,
    model_tile,
    require_integer,
    score_planes,
)

#: What encode accepts as ``method``.
METHODS = ("auto", "model", "jpeg", *classical.METHODS)
#: A model part's bytes beyond its information content: name, digest, tile fields, about
#: 8 bytes of stream framing and end per chunk. Used only to predict, never to decide.
MODEL_PART_OVERHEAD = 48
#: The model's predicted size below this fraction of JPEG-XL effort 7's: the slower
#: classical candidates are not tried (see above). On photos/val the model codes 6.5%
#: below JPEG-XL (a 10% margin left 30 of 31 photos to the slow candidates).
CLEAR_WIN = 0.97


@dataclass
class Encoded:
    """What encoding one image produced."""

    data: bytes
    header: fmt.FileHeader
    samples: int
    method: str  # the header's method summary: "model", "jxl", "model+png", "jpeg", ...
    model_name: str | None  # the model of the model parts, if any
    info_bits: float | None  # the model parts' information content (None: no model part)
    model_samples: int  # samples the model coded
    candidates: dict[str, int] = field(default_factory=dict)  # method -> bytes, frame 0
    source_bytes: int | None = None  # the input file's size, when read from a file
    source_format: str | None = None

    @property
    def subpixels(self) -> int:
        return self.samples

    @property
    def bits_per_subpixel(self) -> float:
        return 8 * len(self.data) / self.samples

    @property
    def model_bits_per_subpixel(self) -> float | None:
        if self.info_bits is None or not self.model_samples:
            return None
        return self.info_bits / self.model_samples


def _encoder_label(dev: torch.device) -> str:
    """Informational (what wrote the file, not needed to decode it), kept short: small
    images pay for every header byte."""
    return f"{__version__} {dev.type}"[: fmt.MAX_ENCODER_BYTES]


def _colour(frame: np.ndarray, alpha: bool) -> np.ndarray:
    """(H, W, C) -> the colour planes (C', H, W) the model codes."""
    c = frame[:, :, :-1] if alpha else frame
    return np.ascontiguousarray(c.transpose(2, 0, 1))


@dataclass
class _Frame:
    """One frame's candidates while encoding."""

    classical: tuple[str, bytes] | None = None  # all planes
    alpha: tuple[str, bytes] | None = None  # the alpha plane, for the model candidate
    model_predicted: float | None = None  # bytes
    model: bytes | None = None
    model_bits: float = 0.0


def encode_contents(
    contents: Sequence[Content],
    model: str | LoadedModel | None,
    dev: torch.device,
    tile: int | tuple[int, int] | None = None,
    max_batch: int | None = None,
    progress: ProgressFactory | None = None,
    method: str = "auto",
) -> list[Encoded]:
    """Encode contents (see the module docstring); model parts of all images that use the
    same model are coded in one schedule."""
    if method not in METHODS:
        raise UnsupportedImageError(f"unknown method {method!r} (one of {', '.join(METHODS)})")
    if max_batch is None:
        max_batch = DEFAULT_MAX_BATCH[dev.type]
    given = load_model(model) if model is not None else None
    plans: list[list[_Frame] | bytes] = []
    models: dict[int, LoadedModel] = {}
    for c in contents:
        jpeg = _jpeg_candidate(c, method)
        if jpeg is not None:
            plans.append(jpeg)
            continue
        if method == "jpeg":
            raise UnsupportedImageError(
                "--method jpeg needs a JPEG input that JPEG-XL can transcode losslessly"
            )
        meta.require_carried(c.uncarried)  # a JPEG's other segments, when not kept
        frames = []
        for f in c.frames:
            fr = _Frame()
            if method in classical.METHODS:
                fr.classical = _classical(f, method)
            frames.append(fr)
        plans.append(frames)
        if method == "model" and c.bit_depth != 8:
            raise UnsupportedImageError(
                f"the model codes 8-bit images; this one has {c.bit_depth} bits per sample"
            )
        if method == "model" and c.mode == "P":
            raise UnsupportedImageError(
                "the model codes pixel values, not palette indices (use --method auto)"
            )
        if method in ("auto", "model") and c.bit_depth == 8 and c.mode != "P":
            ch = c.colour_channels
            if ch not in models:
                try:
                    models[ch] = model_for(given, ch, dev.type)
                except UnsupportedImageError:
                    if method == "model" or given is not None:
                        raise
                    models[ch] = None  # no model codes it: classical only
    # The model candidate: scored (auto), then coded where it may win.
    todo: dict[bytes, tuple[LoadedModel, list[tuple[int, int]]]] = {}
    for i, (c, plan) in enumerate(zip(contents, plans)):
        if isinstance(plan, bytes) or c.bit_depth != 8 or method not in ("auto", "model"):
            continue
        if c.mode == "P":
            continue
        lm = models.get(c.colour_channels)
        if lm is None:
            continue
        for k, (f, fr) in enumerate(zip(c.frames, plan)):
            if c.has_alpha:
                fr.alpha = classical.best(np.ascontiguousarray(f[:, :, -1:]))
            if method == "auto" and score_first(dev):
                require_integer(lm)
                planes = _colour(f, c.has_alpha)
                quick = classical.best(f, ("jxl",), effort="standard")
                if _sampled_loses(lm, planes, dev, tile, len(quick[1]) - _alpha_bytes(fr)):
                    fr.classical = _classical(f, "auto")
                    continue
                bits, _ = score_planes(lm, planes, dev, tile)
                fr.model_predicted = bits / 8 + MODEL_PART_OVERHEAD + _alpha_bytes(fr)
                fr.classical = _after_model(f, fr.model_predicted, quick)
                if fr.model_predicted >= len(fr.classical[1]):
                    continue
            todo.setdefault(lm.digest, (lm, []))[1].append((i, k))
    for lm, where in todo.values():
        coded = encode_planes(
            lm,
            [_colour(contents[i].frames[k], contents[i].has_alpha) for i, k in where],
            dev,
            tile,
            max_batch,
            progress,
        )
        for (i, k), cp in zip(where, coded):
            plans[i][k].model, plans[i][k].model_bits = cp.data, cp.info_bits
    for c, plan in zip(contents, plans):
        if method == "auto" and not isinstance(plan, bytes):
            for f, fr in zip(c.frames, plan):
                if fr.classical is None and fr.model is not None:
                    fr.classical = _after_model(f, len(fr.model) + _alpha_bytes(fr))
                elif fr.classical is None:
                    fr.classical = _classical(f, "auto")
    return [
        _assemble(c, plan, models.get(c.colour_channels), dev)
        for c, plan in zip(contents, plans)
    ]


def score_first(dev: torch.device) -> bool:
    """Whether the model's cost is predicted by a scoring pass before it codes (CPU), or
    found by coding (GPU: coding the images' tiles together in one schedule took less
    time than scoring them one by one, 20 s against about 100 s for photos/val on an
    H200, and gives the exact size)."""
    return dev.type == "cpu"


#: Score every SAMPLE_EVERY-th tile first (CPU) where there are at least SAMPLE_MIN_TILES;
#: a model predicted SAMPLE_LOSES times JPEG-XL effort 7's size or more is not scored in
#: full (screenshots, charts, logos: the photo model costs several times the classical
#: codecs there, and a full score of an 800x600 screenshot took ~45 s on one CPU core).
SAMPLE_EVERY, SAMPLE_MIN_TILES, SAMPLE_LOSES = 8, 32, 1.25


def _sampled_loses(lm, planes: np.ndarray, dev, tile, classical_bytes: int) -> bool:
    th, tw = model_tile(lm, tile)
    tiles = -(-planes.shape[1] // th) * -(-planes.shape[2] // tw)
    if tiles < SAMPLE_MIN_TILES:
        return False
    bits, _ = score_planes(lm, planes, dev, tile, every=SAMPLE_EVERY)
    return bits / 8 >= SAMPLE_LOSES * classical_bytes


def _after_model(
    frame: np.ndarray, model_bytes: float, quick: tuple[str, bytes] | None = None
) -> tuple[str, bytes]:
    """The classical candidate, given the model's (predicted or coded) size: JPEG-XL at
    effort 7 alone where the model beats it clearly, else the best of all."""
    if quick is None:
        quick = classical.best(frame, ("jxl",), effort="standard")
    if model_bytes < CLEAR_WIN * len(quick[1]):
        return quick
    return _classical(frame, "auto")


def _alpha_bytes(fr: _Frame) -> int:
    return len(fr.alpha[1]) if fr.alpha is not None else 0


def _classical(frame: np.ndarray, method: str) -> tuple[str, bytes]:
    if method == "auto":
        return classical.best(frame)
    if not classical.can_code(method, frame.shape, frame.dtype):
        raise UnsupportedImageError(
            f"{method} cannot code this image exactly ({frame.shape[2]} channels, "
            f"{frame.dtype.itemsize * 8}-bit)"
        )
    return method, classical.encode(method, frame)


def _jpeg_candidate(c: Content, method: str) -> bytes | None:
    """The JPEG file through JPEG-XL's lossless transcoding, when it applies."""
    if c.jpeg is None or method not in ("auto", "jpeg"):
        return None
    return classical.jpeg_transcode(c.jpeg)


def _assemble(c: Content, plan, lm: LoadedModel | None, dev: torch.device) -> Encoded:
    label = _encoder_label(dev)
    if isinstance(plan, bytes):  # the JPEG file itself
        crc = fmt.content_crc32(c.mode, 8, c.width, c.height, [c.jpeg])
        f = fmt.build_header(
            c.mode, 8, c.width, c.height, crc, [("jpeg", "all", 0, plan)], encoder=label
        )
        data = fmt.pack(f)
        return Encoded(
            data, f.header, c.samples, "jpeg", None, None, 0, {"jpeg": len(plan)},
            c.source_bytes, c.source_format,
        )
    parts: list[tuple[str, str, int, bytes]] = []
    info_bits, model_samples, used_model = 0.0, 0, False
    candidates: dict[str, int] = {}
    for k, fr in enumerate(plan):
        whole = fr.classical
        model_total = len(fr.model) + _alpha_bytes(fr) if fr.model is not None else None
        if k == 0:
            if whole is not None:
                candidates[whole[0]] = len(whole[1])
            if model_total is not None:
                candidates["model"] = model_total
            elif fr.model_predicted is not None:
                candidates["model (predicted)"] = int(fr.model_predicted)
        if model_total is not None and (whole is None or model_total < len(whole[1])):
            if c.has_alpha:
                parts += [("model", "colour", k, fr.model), (fr.alpha[0], "alpha", k, fr.alpha[1])]
            else:
                parts.append(("model", "all", k, fr.model))
            info_bits += fr.model_bits
            model_samples += c.width * c.height * c.colour_channels
            used_model = True
        else:
            parts.append((whole[0], "all", k, whole[1]))
    if c.mode == "P":
        parts.append(("palette", "none", 0, c.palette))
    if c.metadata:
        parts.append(("meta", "none", 0, meta.encode(c.metadata)))
    crc = fmt.content_crc32(
        c.mode, c.bit_depth, c.width, c.height, c.frame_bytes(), c.palette or b""
    )
    # The encoder label (informational) only where the model coded: classical files of
    # small images pay for every header byte.
    f = fmt.build_header(
        c.mode, c.bit_depth, c.width, c.height, crc, parts, c.durations, c.loop,
        label if used_model else "",
    )
    data = fmt.pack(f)
    return Encoded(
        data,
        f.header,
        c.samples,
        f.header.method_summary(),
        lm.name if used_model and lm is not None else None,
        info_bits if used_model else None,
        model_samples,
        candidates,
        c.source_bytes,
        c.source_format,
    )


# --- decoding -----------------------------------------------------------------------------


@dataclass
class Decoded:
    """A decoded file: its header and the content (for a JPEG part: the JPEG file in
    ``content.jpeg``, no frames)."""

    header: fmt.FileHeader
    content: Content

    @property
    def is_jpeg(self) -> bool:
        return self.header.parts[0].method == "jpeg"


def parse(blob: bytes) -> fmt.File:
    """A validated version-5 file; a version-4 file (one model part, opaque alpha not
    coded) is read as the version-5 file it stands for."""
    version = fmt.version_of(blob)
    if version == 4:
        return _from_v4(blob)
    if version != fmt.VERSION:
        container.read_header(blob)  # raises the versioned message for other versions
    return fmt.unpack(blob)


def _from_v4(blob: bytes) -> _V4File:
    h, payload = container.unpack(blob)
    part = fmt.pack_model_part(
        fmt.ModelPart(h.model_name, h.model_digest, h.tile_h, h.tile_w, h.chunk_tiles, payload)
    )
    return _V4File(h, part)


class _V4File:
    """A format-4 file seen as one model part (its LA / RGBA alpha is opaque, not coded)."""

    def __init__(self, h: container.Header, part: bytes) -> None:
        self.v4, self.part = h, part
        planes = "colour" if h.mode in ("LA", "RGBA") else "all"
        entries = (fmt.PartEntry("model", planes, 0, len(part)),)
        if planes == "colour":
            entries += (fmt.PartEntry("store", "alpha", 0, 0),)
        self.header = fmt.FileHeader(
            h.mode, 8, h.width, h.height, h.pixel_crc32, 0, entries, encoder=h.encoder
        )

    def parts(self):
        return [(self.header.parts[0], self.part)]


def decode_files(
    blobs: Sequence[bytes],
    given: LoadedModel | None,
    dev: torch.device,
    max_batch: int | None = None,
    progress: ProgressFactory | None = None,
    max_pixels: int | None = None,
    names: Sequence[str] | None = None,
) -> list[Decoded]:
    """Decode files; model parts of all files decode together (one schedule per model)."""
    if max_batch is None:
        max_batch = DEFAULT_MAX_BATCH[dev.type]
    files = [parse(b) for b in blobs]
    for f in files:
        w, h, n = _shape(f)
        check_pixel_count(w, h * n, max_pixels)
    model_parts: list[tuple[container.Header, bytes]] = []
    where: list[tuple[int, int]] = []
    for i, f in enumerate(files):
        for k, (entry, data) in enumerate(f.parts()):
            if entry.method == "model":
                model_parts.append(_model_part(f, entry, data))
                where.append((i, k))
    planes = decode_parts(model_parts, given, dev, max_batch, progress) if model_parts else []
    decoded_planes = {ik: p for ik, p in zip(where, planes)}
    return [
        _finish(f, i, decoded_planes, names[i] if names else None) for i, f in enumerate(files)
    ]


def model_parts(f) -> list[container.Header]:
    """The (format-4 style) headers of a parsed file's model parts, without decoding."""
    return [_model_part(f, e, d)[0] for e, d in f.parts() if e.method == "model"]


def _shape(f) -> tuple[int, int, int]:
    return f.header.width, f.header.height, f.header.frames


def _model_part(f, entry: fmt.PartEntry, data: bytes) -> tuple[container.Header, bytes]:
    h = f.header
    mode = "RGB" if h.mode in ("RGB", "RGBA") else "L"
    return fmt.unpack_model_part(data, mode, h.width, h.height)


def _finish(f, i: int, model_planes: dict, name: str | None) -> Decoded:
    if isinstance(f, _V4File):
        return _finish_v4(f, i, model_planes, name)
    h = f.header
    if h.parts[0].method == "jpeg":
        jpeg = classical.jpeg_restore(f.data[0])
        if fmt.content_crc32(h.mode, 8, h.width, h.height, [jpeg]) != h.content_crc32:
            raise IntegrityError(_crc_message(name))
        return Decoded(h, Content(h.mode, 8, (), jpeg=jpeg, source_format="JPEG"))
    dtype = np.uint16 if h.bit_depth == 16 else np.uint8
    ch = h.channels
    alpha = h.mode in ("LA", "RGBA")
    frames: list[np.ndarray] = [np.zeros((h.height, h.width, ch), dtype) for _ in range(h.frames)]
    items: tuple[meta.Item, ...] = ()
    palette = None
    for k, (entry, data) in enumerate(f.parts()):
        frame = frames[entry.frame] if entry.planes != "none" else None
        if entry.method == "meta":
            items = tuple(meta.decode(data))
        elif entry.method == "palette":
            palette = data
        elif entry.method == "model":
            frame[:, :, : ch - (1 if alpha else 0)] = model_planes[(i, k)].transpose(1, 2, 0)
        else:
            if entry.planes == "alpha":
                shape, target = (h.height, h.width, 1), slice(ch - 1, ch)
            elif entry.planes == "colour":
                shape, target = (h.height, h.width, ch - 1), slice(0, ch - 1)
            else:
                shape, target = (h.height, h.width, ch), slice(0, ch)
            frame[:, :, target] = classical.decode(entry.method, data, shape, dtype)
    content = Content(
        h.mode, h.bit_depth, tuple(frames), h.durations, h.loop, items, palette=palette
    )
    crc = fmt.content_crc32(
        h.mode, h.bit_depth, h.width, h.height, content.frame_bytes(), palette or b""
    )
    if crc != h.content_crc32:
        raise IntegrityError(_crc_message(name))
    if h.mode == "P" and int(frames[0].max()) >= len(palette) // 4:
        raise FormatError("palette indices beyond the palette")
    return Decoded(h, content)


def _finish_v4(f: _V4File, i: int, model_planes: dict, name: str | None) -> Decoded:
    h = f.v4
    hwc = model_planes[(i, 0)].transpose(1, 2, 0)
    if h.mode in ("LA", "RGBA"):
        hwc = np.concatenate([hwc, np.full(hwc.shape[:2] + (1,), 255, np.uint8)], axis=2)
    hwc = np.ascontiguousarray(hwc)
    if container.content_crc32(h.mode, h.width, h.height, 8, hwc.tobytes()) != h.pixel_crc32:
        raise IntegrityError(_crc_message(name))
    return Decoded(f.header, Content(h.mode, 8, (hwc,)))


def _crc_message(name: str | None) -> str:
    """The payload's own checksum matched, so the decoding computation differed: a bug."""
    what = f"{name}: " if name else ""
    return (
        f"{what}decoded pixels do not match the stored checksum although the payload is "
        "intact: this is a bug in nncompress, please report it with the file"
    )


def describe(f: fmt.File, items: Sequence[meta.Item] | None = None) -> dict[str, object]:
    """Fields for ``nncompress info``."""
    h = f.header
    out: dict[str, object] = {
        "format_version": fmt.VERSION,
        "method": h.method_summary(),
        "mode": h.mode,
        "bit_depth": h.bit_depth,
        "width": h.width,
        "height": h.height,
        "frames": h.frames,
    }
    if h.durations:
        out["durations_ms"] = list(h.durations)
        out["loop"] = h.loop
    parts = []
    for entry, data in f.parts():
        row = f"{entry.method} {entry.planes} frame {entry.frame}: {entry.length:,} bytes"
        if entry.method == "model":
            mh, _ = _model_part(f, entry, data)
            out.setdefault("model_name", mh.model_name)
            out.setdefault("model_digest", mh.model_digest.hex())
            out.setdefault("tile", f"{mh.tile_h}x{mh.tile_w}")
            out.setdefault("chunk_tiles", mh.chunk_tiles)
            row += f" ({mh.num_chunks} streams)"
        parts.append(row)
    out["parts"] = parts
    if items is None:
        items = [it for e, d in f.parts() if e.method == "meta" for it in meta.decode(d)]
    out["metadata"] = meta.describe(items) if items else []
    out["encoder"] = h.encoder
    out["content_crc32"] = f"{h.content_crc32:08x}"
    return out


__all__ = [
    "METHODS",
    "Decoded",
    "Encoded",
    "decode_files",
    "describe",
    "encode_contents",
    "model_parts",
    "parse",
]
