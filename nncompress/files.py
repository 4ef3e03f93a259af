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
4. A palette frame's indices are coded by the classical codecs, and so is its expansion
   (the palette's RGB or RGBA colours at every pixel, "expanded" planes) where the
   palette's colours are distinct, so that the decoder can map each pixel back to its
   index: the codecs' predictors work on colours, not on index values (the corpus's
   480x320 palette photo: JPEG-XL of the expansion 0.1% below that of the indices; a photo
   crop whose palette is in random order: 12% below). The smaller is kept. The palette
   part itself is coded by the smallest classical codec too (a photo's 256 entries: 459
   bytes instead of 1024 raw).

WebP parts are stored as the bare VP8L bitstream (classical.webp_bare: 20 bytes less than
libwebp's file; all sizes above are compared at that size).

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
from typing import TYPE_CHECKING

import numpy as np

from . import __version__, classical, container
from . import metadata as meta
from .container import file as fmt
from .content import Content
from .errors import FormatError, IntegrityError, UnsupportedImageError
from .images import check_pixel_count

if TYPE_CHECKING:
    import torch

    from .modelfile import LoadedModel
    from .multidevice import ChunkPool
    from .planes import ProgressFactory

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
    expanded: tuple[str, bytes] | None = None  # a palette frame's colours (mode "P")
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
    pool: ChunkPool | None = None,
) -> list[Encoded]:
    """Encode contents (see the module docstring); model parts of all images that use the
    same model are coded in one schedule (``pool``: its chunks over those CPU worker
    processes, multidevice.ChunkPool)."""
    from .planes import (
        DEFAULT_MAX_BATCH,
        encode_planes,
        load_model,
        model_for,
        require_integer,
        score_planes,
    )

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
                fr.alpha = _best(np.ascontiguousarray(f[:, :, -1:]))
            if method == "auto" and score_first(dev):
                require_integer(lm)
                planes = _colour(f, c.has_alpha)
                quick = _best(f, ("jxl",), effort="standard")
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
            pool,
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
        table = _expansion_table(c.palette) if c.mode == "P" else None
        if table is not None and not isinstance(plan, bytes):
            for f, fr in zip(c.frames, plan):
                fr.expanded = _expanded(np.ascontiguousarray(table[f[:, :, 0]]), method)
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
    from .planes import model_tile, score_planes

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
        quick = _best(frame, ("jxl",), effort="standard")
    if model_bytes < CLEAR_WIN * len(quick[1]):
        return quick
    return _classical(frame, "auto")


def _alpha_bytes(fr: _Frame) -> int:
    return len(fr.alpha[1]) if fr.alpha is not None else 0


def _best(frame: np.ndarray, methods=classical.METHODS, effort: str = "default"):
    """classical.best with WebP as the bare bitstream a version-6 part holds."""
    return classical.best(frame, methods, effort, bare_webp=True)


def _classical(frame: np.ndarray, method: str) -> tuple[str, bytes]:
    if method == "auto":
        return _best(frame)
    if not classical.can_code(method, frame.shape, frame.dtype):
        raise UnsupportedImageError(
            f"{method} cannot code this image exactly ({frame.shape[2]} channels, "
            f"{frame.dtype.itemsize * 8}-bit)"
        )
    data = classical.encode(method, frame)
    return method, classical.webp_bare(data) if method == "webp" else data


def _expansion_table(palette: bytes) -> np.ndarray | None:
    """The colours of a palette's entries, (n, C) uint8 (C = fmt.expansion_channels), or
    None where two entries have the same colour: then an expanded pixel could not be
    mapped back to its index."""
    c = fmt.expansion_channels(palette)
    table = np.frombuffer(palette, np.uint8).reshape(-1, 4)[:, :c]
    if len(np.unique(table, axis=0)) != len(table):
        return None
    return table


def _expanded(colours: np.ndarray, method: str) -> tuple[str, bytes] | None:
    """A palette frame's expansion (H, W, C) coded by ``method`` ("auto": the best
    classical codec); None where that method cannot code it."""
    if method == "auto":
        return _best(colours)
    if method not in classical.METHODS or not classical.can_code(
        method, colours.shape, colours.dtype
    ):
        return None
    return _classical(colours, method)


#: A version-6 palette part's second byte: the method code in the low bits, this bit set
#: for RGBA entries (else RGB, every alpha 255).
_PALETTE_RGBA = 0x10
_PALETTE_METHODS = ("jxl", "webp", "png", "store")


def _pack_palette(palette: bytes) -> bytes:
    """A version-6 palette part: u8 entries - 1, u8 coding, then the entries as a 1 x n
    image (RGB, or RGBA where an alpha is below 255) coded by the smallest classical codec
    (a photo's 256-colour palette: JPEG-XL 457 bytes against 768 raw)."""
    n = len(palette) // 4
    c = fmt.expansion_channels(palette)
    entries = np.ascontiguousarray(np.frombuffer(palette, np.uint8).reshape(1, n, 4)[:, :, :c])
    method, data = _best(entries, _PALETTE_METHODS)
    coding = fmt.METHOD_CODES[method] | (_PALETTE_RGBA if c == 4 else 0)
    return bytes((n - 1, coding)) + data


def _unpack_palette(part: bytes) -> bytes:
    """The RGBA entries of a version-6 palette part; FormatError if malformed."""
    if len(part) < 3:
        raise FormatError("truncated palette part")
    n, coding = part[0] + 1, part[1]
    method = next((m for m in _PALETTE_METHODS if fmt.METHOD_CODES[m] == coding & 0x0F), None)
    if method is None or coding & ~(0x0F | _PALETTE_RGBA):
        raise FormatError(f"bad palette coding {coding:#x}")
    c = 4 if coding & _PALETTE_RGBA else 3
    entries = classical.decode(method, part[2:], (1, n, c), np.uint8, bare_webp=True)[0]
    if c == 3:
        entries = np.concatenate([entries, np.full((n, 1), 255, np.uint8)], axis=1)
    elif (entries[:, 3] == 255).all():
        raise FormatError("an RGBA palette part whose entries are all opaque")
    return np.ascontiguousarray(entries).tobytes()


def _unexpand(colours: np.ndarray, palette: bytes) -> np.ndarray:
    """Expanded planes (H, W, C) back to palette indices (H, W, 1); FormatError for a
    palette with repeated colours (no encoder writes that) or a colour it lacks."""
    table = _expansion_table(palette)
    if table is None:
        raise FormatError("expanded planes with a palette whose colours repeat")
    shift = np.array([0, 8, 16, 24][: table.shape[1]], np.uint32)
    keys = (table.astype(np.uint32) << shift).sum(axis=1, dtype=np.uint32)
    order = np.argsort(keys)
    sorted_keys = keys[order]
    px = (colours.astype(np.uint32) << shift).sum(axis=2, dtype=np.uint32)
    at = np.minimum(np.searchsorted(sorted_keys, px), len(keys) - 1)
    if not np.array_equal(sorted_keys[at], px):
        raise FormatError("expanded planes hold colours that are not in the palette")
    return np.ascontiguousarray(order[at].astype(np.uint8)[:, :, None])


def _jpeg_candidate(c: Content, method: str) -> bytes | None:
    """The JPEG file through JPEG-XL's lossless transcoding, when it applies."""
    if c.jpeg is None or method not in ("auto", "jpeg"):
        return None
    return classical.jpeg_transcode(c.jpeg)


def _assemble(c: Content, plan, lm: LoadedModel | None, dev: torch.device) -> Encoded:
    label = _encoder_label(dev)
    if isinstance(plan, bytes):  # the JPEG file itself (its metadata inside)
        crc = fmt.content_crc32(c.mode, 8, c.width, c.height, [c.jpeg])
        f = fmt.build_header(
            c.mode, 8, c.width, c.height, crc, [("jpeg", "all", plan)], encoder=label
        )
        data = fmt.pack(f)
        return Encoded(
            data, f.header, c.samples, "jpeg", None, None, 0, {"jpeg": len(plan)},
            c.source_bytes, c.source_format,
        )
    parts: list[tuple[str, str, bytes]] = []
    info_bits, model_samples, used_model = 0.0, 0, False
    candidates: dict[str, int] = {}
    for k, fr in enumerate(plan):
        whole = fr.classical
        model_total = len(fr.model) + _alpha_bytes(fr) if fr.model is not None else None
        if k == 0:
            if whole is not None:
                candidates[whole[0]] = len(whole[1])
            if fr.expanded is not None:
                candidates[f"{fr.expanded[0]} (expanded)"] = len(fr.expanded[1])
            if model_total is not None:
                candidates["model"] = model_total
            elif fr.model_predicted is not None:
                candidates["model (predicted)"] = int(fr.model_predicted)
        if model_total is not None and (whole is None or model_total < len(whole[1])):
            if c.has_alpha:
                parts += [("model", "colour", fr.model), (fr.alpha[0], "alpha", fr.alpha[1])]
            else:
                parts.append(("model", "all", fr.model))
            info_bits += fr.model_bits
            model_samples += c.width * c.height * c.colour_channels
            used_model = True
        elif fr.expanded is not None and len(fr.expanded[1]) < len(whole[1]):
            parts.append((fr.expanded[0], "expanded", fr.expanded[1]))
        else:
            parts.append((whole[0], "all", whole[1]))
    if c.mode == "P":
        parts.append(("palette", "none", _pack_palette(c.palette)))
    if c.metadata:
        parts.append(("meta", "none", meta.encode(c.metadata)))
    crc = _content_crc(c)
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


def _content_crc(c: Content, version: int = fmt.VERSION) -> int:
    """The content check of a (non-JPEG) content: samples, palette, timing, metadata."""
    items = [(meta.KINDS.index(it.kind) + 1, it.key.encode("utf-8"), it.value)
             for it in c.metadata]  # fmt: skip
    return fmt.content_crc32(
        c.mode, c.bit_depth, c.width, c.height, c.frame_bytes(), c.palette or b"",
        c.durations, c.loop, items, version,
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
    """A validated version-6 or -5 file; a version-4 file (one model part, opaque alpha not
    coded) is read as the file it stands for."""
    version = fmt.version_of(blob)
    if version == 4:
        return _from_v4(blob)
    if version < 4:
        container.read_header(blob)  # raises the message that says what wrote such files
    return fmt.unpack(blob)


def _from_v4(blob: bytes) -> _V4File:
    h, payload = container.unpack(blob)
    part = fmt.pack_model_part(
        fmt.ModelPart(h.model_name, h.model_digest, h.tile_h, h.tile_w, h.chunk_tiles, payload)
    )
    return _V4File(h, part)


class _V4File:
    """A format-4 file seen as one model part (its LA / RGBA alpha is opaque, not coded)."""

    version = 4

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
    pool: ChunkPool | None = None,
) -> list[Decoded]:
    """Decode files; model parts of all files decode together (one schedule per model;
    ``pool``: its chunks over those CPU worker processes)."""
    from .planes import DEFAULT_MAX_BATCH, decode_parts

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
    planes = (
        decode_parts(model_parts, given, dev, max_batch, progress, pool) if model_parts else []
    )
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
    bare_webp = f.version >= 6  # version 5's WebP parts are whole RIFF files
    frames: list[np.ndarray] = [np.zeros((h.height, h.width, ch), dtype) for _ in range(h.frames)]
    items: tuple[meta.Item, ...] = ()
    palette = None
    for entry, data in f.parts():  # first the parts that others need
        if entry.method == "meta":
            items = tuple(meta.decode(data))
        elif entry.method == "palette" and f.version >= 6:
            palette = _unpack_palette(data)
        elif entry.method == "palette":  # version 5: the RGBA entries themselves
            if len(data) % 4 or not 4 <= len(data) <= 4 * fmt.MAX_PALETTE:
                raise FormatError("bad palette part (1..256 RGBA entries)")
            palette = data
    for k, (entry, data) in enumerate(f.parts()):
        if entry.planes == "none":
            continue
        frame = frames[entry.frame]
        if entry.method == "model":
            frame[:, :, : ch - (1 if alpha else 0)] = model_planes[(i, k)].transpose(1, 2, 0)
            continue
        if entry.planes == "expanded":
            shape = (h.height, h.width, fmt.expansion_channels(palette))
            colours = classical.decode(entry.method, data, shape, dtype, bare_webp)
            frame[:, :, :] = _unexpand(colours, palette)
            continue
        if entry.planes == "alpha":
            shape, target = (h.height, h.width, 1), slice(ch - 1, ch)
        elif entry.planes == "colour":
            shape, target = (h.height, h.width, ch - 1), slice(0, ch - 1)
        else:
            shape, target = (h.height, h.width, ch), slice(0, ch)
        frame[:, :, target] = classical.decode(entry.method, data, shape, dtype, bare_webp)
    content = Content(
        h.mode, h.bit_depth, tuple(frames), h.durations, h.loop, items, palette=palette
    )
    if _content_crc(content, f.version) != h.content_crc32:
        raise IntegrityError(_crc_message(name))
    if h.mode == "P" and any(int(x.max()) >= len(palette) // 4 for x in frames):
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
    """The parts' own checksum matched, so the decoding computation differed (a bug), or
    parts were changed and their checksum recomputed (a crafted file)."""
    what = f"{name}: " if name else ""
    return (
        f"{what}the decoded image (pixels, palette, timing or metadata) does not match the "
        "stored content checksum although the parts' checksum matches: a bug in nncompress "
        "(please report it with the file) or a file altered on purpose"
    )


def describe(f: fmt.File, items: Sequence[meta.Item] | None = None) -> dict[str, object]:
    """Fields for ``nncompress info``."""
    h = f.header
    out: dict[str, object] = {
        "format_version": f.version,
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
