"""Fuzz the decoder and the model-file loader with mutated inputs.

    python benchmarks/fuzz.py --cases 3000 --model-cases 300 --seed 0

Seeds: small images (1x1 .. 32x32; modes L, LA, RGB, RGBA, P) encoded with tiny models
(histograms, a tiny PixelCNN++, a 4x4 MADE) written to a temporary model folder (the model
forced: ``method="model"``, an alpha plane then coded by a classical codec), a few encoded
by each classical method (JPEG-XL, WebP, PNG, stored), and those tiny model files
themselves. Each case mutates one seed and runs it in a worker process:

- a .nnc case decodes the mutated file (models found by name, as ``nncompress decode``
  does). Allowed outcomes: an error of a type from nncompress.errors, or the original
  pixels exactly (same mode and size). Anything else is a *bad* outcome: other pixels
  (``wrong``), another exception (``untyped``), running out of the memory limit
  (``memory``), running past the time limit (``hang``) or the worker dying (``death``).
- a model case loads the mutated model file: ModelFileError, or a model that works (a 4x4
  image compresses and decompresses to the same pixels, or fails with a typed error).

Mutation kinds: random ones on bytes (bit flips, byte overwrites, truncation, extension,
garbage, flips inside the payload, header bytes with the header CRC recomputed) and
structure-aware ones (one field set to another value and the file repacked with the
container module, so the header CRC and the parts' CRC are valid: small values, huge ones,
swapped fields, fields of another seed's file); for model files: bytes, and config / family / info /
tensors with the digest recomputed (modelfile.weights_digest).

The fields are found with dataclasses.fields of the format-5 header (FileHeader), of each
row of its part table (PartEntry) and of each model part (ModelPart), so the fuzzer follows
format changes; a value the packer refuses (the header's own validation) is replaced by
another candidate. Each case runs under a per-case alarm (setitimer) and an address-space
limit (RLIMIT_AS) in its worker; the parent kills a worker that overruns (``hang``) and
starts a new one when one dies (``death``). Prints a table by mutation kind and writes JSON
(with a reproducer for every bad case) to benchmarks/results/fuzz/.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import multiprocessing as mp
import os
import platform
import random
import resource
import signal
import statistics
import struct
import sys
import tempfile
import time
import traceback
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: the package from this checkout
    sys.path.insert(0, str(REPO))

RESULTS = REPO / "benchmarks" / "results" / "fuzz"
MODEL_SUFFIX = ".safetensors"

#: Outcomes a case may have without being a bug.
GOOD = ("exact", "typed", "works")
#: Outcomes that are bugs.
BAD = ("wrong", "untyped", "memory", "hang", "death")

# Image shapes (width, height) of the seeds, and their modes.
SEED_SIZES = ((1, 1), (1, 7), (7, 1), (2, 3), (5, 5), (8, 8), (9, 13), (16, 5), (17, 17), (32, 32))
SEED_MODES = ("L", "LA", "RGB", "RGBA", "P")
CHANNELS_OF_MODE = {"L": 1, "LA": 1, "RGB": 3, "RGBA": 3, "P": 3}
MODEL_CHECK_SIZE = 4  # a loaded model is tried on a 4x4 image


# --- Tiny models ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TinyModel:
    """A model to write to the fuzz model folder: the module, its info, and the largest
    image side it should code in a seed (a tiny PixelCNN++ costs ~0.1 s a decode)."""

    model: Any
    info: dict[str, Any]
    max_side: int = 32


def tiny_models() -> dict[str, TinyModel]:
    """The benchmark's own tiny models (the CI test passes its fixtures' instead)."""
    import torch

    from nncompress.models import build_model
    from nncompress.models.histogram import HistogramConfig, HistogramModel

    def histogram(channels: int, seed: int) -> HistogramModel:
        rng = np.random.default_rng(seed)
        m = HistogramModel(HistogramConfig(channels))
        m.fit([rng.integers(0, 256, size=(channels, 16, 16), dtype=np.uint8)])
        return m

    def pixelcnn(channels: int) -> Any:
        torch.manual_seed(0)
        cfg = {"channels": channels, "nr_resnet": 1, "nr_filters": 8, "nr_logistic_mix": 2}
        return build_model("pixelcnnpp", {**cfg, "dropout": 0.0}).eval()

    made = build_model(
        "made",
        {
            "channels": 1,
            "height": 4,
            "width": 4,
            "hidden": [16],
            "features": 2,
            "num_masks": 1,
            "first_order": "random",
            "seed": 0,
            "dropout": 0.0,
        },
    )
    return {
        "hist-rgb": TinyModel(histogram(3, 0), {"tile": [8, 8]}),
        "hist-grey": TinyModel(histogram(1, 1), {"tile": [8, 8]}),
        "pcnn-rgb": TinyModel(pixelcnn(3), {"tile": [4, 4]}, max_side=8),
        "pcnn-grey": TinyModel(pixelcnn(1), {"tile": [4, 4]}, max_side=8),
        "made-grey": TinyModel(made, {"note": "4x4 tiles"}),
    }


def write_models(folder: Path, models: dict[str, TinyModel]) -> dict[str, Path]:
    from nncompress.modelfile import save_model

    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, tm in models.items():
        paths[name] = folder / f"{name}{MODEL_SUFFIX}"
        save_model(tm.model, paths[name], info=tm.info)
    return paths


# --- Seeds ----------------------------------------------------------------------------------


def seed_image(mode: str, width: int, height: int, seed: int) -> Any:
    """A smooth image with noise, in ``mode`` (alpha fully opaque, as the codec requires)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = (xx * 7 + yy * 5 + seed * 31)[:, :, None] + np.arange(3) * 50
    rgb = np.clip(base % 256 + rng.integers(-9, 10, (height, width, 3)), 0, 255).astype(np.uint8)
    im = Image.fromarray(rgb, "RGB")
    if mode == "P":
        return im.quantize(colors=16)
    if mode in ("L", "LA"):
        im = im.convert("L")
    if mode in ("LA", "RGBA"):
        im.putalpha(255)
    return im


def _pixels(im: Any) -> tuple[str, tuple[int, int], bytes]:
    return im.mode, im.size, im.tobytes()


@dataclass(frozen=True)
class Seed:
    """An encoded seed image and what its decode must give."""

    name: str
    data: bytes
    expected: tuple[str, tuple[int, int], bytes]  # mode, size, pixel bytes


def _integer_variant(model: Any) -> Any | None:
    """The integer model of ``model``, where this build has a conversion, else None."""
    try:
        from nncompress.quant.convert import to_integer  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        return to_integer(model)
    except (ValueError, TypeError, NotImplementedError):
        return None


def _as_is_then_integer(model: Any) -> Iterator[Any]:
    yield model
    yield _integer_variant(model)  # only computed when the first one would not encode


def make_codable(models: dict[str, TinyModel], folder: Path) -> tuple[dict[str, TinyModel], bytes]:
    """The models of ``folder`` (written by write_models) that can encode here, and a 1x1
    file one of them made: a model the encoder refuses (a build that codes integer models
    only) is replaced by its integer model where one exists, and left out of the seeds
    otherwise. Needs NNCOMPRESS_MODEL_DIR to be ``folder``."""
    from nncompress import api
    from nncompress.errors import NncError
    from nncompress.modelfile import save_model

    out, blob = {}, b""
    for name, tm in models.items():
        path = folder / f"{name}{MODEL_SUFFIX}"
        im = seed_image("L" if int(tm.model.channels) == 1 else "RGB", 1, 1, 0)
        for model in _as_is_then_integer(tm.model):
            if model is None:
                continue
            save_model(model, path, info=tm.info)
            try:
                data = api.compress(im, model=name, method="model")
            except NncError:
                continue
            blob = blob or data
            out[name] = dataclasses.replace(tm, model=model)
            break
        if name not in out:  # not codable here: keep the float file for the model cases
            save_model(tm.model, path, info=tm.info)
    return out, blob


def make_seeds(models: dict[str, TinyModel], count: int | None = None) -> list[Seed]:
    """Encode every (size, mode) of SEED_SIZES x SEED_MODES with a model of its channels
    (cycling through them), singly or in a group of three (one schedule); ``count`` keeps a
    spread subset. Needs NNCOMPRESS_MODEL_DIR to hold ``models``."""
    from nncompress import api

    by_channels: dict[int, list[str]] = {}
    for name, tm in models.items():
        by_channels.setdefault(int(tm.model.channels), []).append(name)
    specs = [(w, h, mode) for (w, h) in SEED_SIZES for mode in SEED_MODES]
    if count is not None and count < len(specs):
        step = len(specs) / count
        specs = [specs[int(i * step)] for i in range(count)]
    groups: dict[str, list[tuple[int, int, str, int]]] = {}
    turn = Counter()
    for i, (w, h, mode) in enumerate(specs):
        names = by_channels.get(CHANNELS_OF_MODE[mode], [])
        if not names:
            continue
        # the next model of these channels that takes an image this size
        for _ in range(len(names)):
            name = names[turn[mode] % len(names)]
            turn[mode] += 1
            if max(w, h) <= models[name].max_side:
                break
        else:
            name = None
        if name is None:
            continue
        groups.setdefault(name, []).append((w, h, mode, i))
    seeds = []
    for name, items in groups.items():
        # The model codes pixel values: a palette seed goes in as its RGB image.
        images = [
            seed_image(mode, w, h, i).convert("RGB") if mode == "P" else seed_image(mode, w, h, i)
            for w, h, mode, i in items
        ]
        # one schedule for three of them (later slots of a shared schedule), the rest alone
        together = images[:3] if len(images) >= 3 else []
        blobs = api.compress_many(together, model=name, method="model") if together else []
        blobs += [api.compress(im, model=name, method="model") for im in images[len(together) :]]
        for (w, h, mode, _), im, data in zip(items, images, blobs, strict=True):
            expected = _pixels(api.decompress(data))
            if expected != _pixels(im):
                raise AssertionError(f"seed {name}/{mode}-{w}x{h} does not round-trip")
            seeds.append(Seed(f"{name}/{mode}-{w}x{h}", data, expected))
    return seeds + classical_seeds()


#: Images per classical method among the seeds (their decoders take mutated parts too).
CLASSICAL_SEEDS = 4


def classical_seeds() -> list[Seed]:
    """A few seeds per classical method ("jxl/RGB-8x8", ...), spread over sizes and modes."""
    from nncompress import api, classical

    seeds = []
    specs = [(w, h, mode) for (w, h) in SEED_SIZES for mode in SEED_MODES]
    for k, method in enumerate(classical.METHODS):
        for j in range(CLASSICAL_SEEDS):
            w, h, mode = specs[(7 * (k * CLASSICAL_SEEDS + j) + 3) % len(specs)]
            im = seed_image(mode, w, h, 100 + j)
            data = api.compress(im, method=method)
            expected = _pixels(api.decompress(data))
            if expected != _pixels(im):  # a palette image comes back as one
                raise AssertionError(f"seed {method}/{mode}-{w}x{h} does not round-trip")
            seeds.append(Seed(f"{method}/{mode}-{w}x{h}", data, expected))
    return seeds


# --- Mutations of .nnc files ----------------------------------------------------------------


@dataclass
class Case:
    """One input to run. ``target``: "nnc" (decode it) or "model" (load it as a model file)."""

    id: int
    kind: str
    target: str
    seed: str
    desc: str
    data: bytes
    expected: tuple[str, tuple[int, int], bytes] | None = None


Mutator = Callable[[random.Random, Seed, Sequence[Seed]], tuple[str, bytes] | None]


def _flip_bits(
    rng: random.Random, data: bytes, lo: int = 0, hi: int | None = None
) -> tuple[str, bytes]:
    b = bytearray(data)
    hi = len(b) if hi is None else hi
    spots = sorted(rng.sample(range(lo * 8, hi * 8), min(rng.randint(1, 4), (hi - lo) * 8)))
    for bit in spots:
        b[bit // 8] ^= 1 << (bit % 8)
    return "flip bits " + ",".join(f"{s // 8}.{s % 8}" for s in spots), bytes(b)


def mut_bitflip(rng, seed, _):
    return _flip_bits(rng, seed.data)


def mut_overwrite(rng, seed, _):
    b = bytearray(seed.data)
    where = sorted(rng.sample(range(len(b)), min(rng.randint(1, 4), len(b))))
    fill = rng.choice(("random", "zero", "ff"))
    for i in where:
        b[i] = {"random": rng.randrange(256), "zero": 0, "ff": 255}[fill]
    return f"overwrite bytes {where} ({fill})", bytes(b)


def mut_truncate(rng, seed, _):
    n = rng.randrange(len(seed.data))
    return f"truncate to {n} of {len(seed.data)} bytes", seed.data[:n]


def mut_extend(rng, seed, _):
    n = rng.choice((1, 2, 3, 4, 8, rng.randint(1, 64)))
    extra = bytes(rng.randrange(256) for _ in range(n)) if rng.random() < 0.5 else bytes(n)
    return f"append {n} bytes", seed.data + extra


def mut_garbage(rng, seed, _):
    from nncompress.container import MAGIC

    n = rng.choice((0, 1, 7, 8, 9, 16, 40, rng.randint(0, 600)))
    junk = bytes(rng.randrange(256) for _ in range(n))
    prefix = rng.choice(
        (b"", MAGIC, seed.data[: len(MAGIC) + 2], seed.data[: rng.randrange(len(seed.data))])
    )
    return f"garbage: {len(prefix)}-byte prefix + {n} random bytes", prefix + junk


def _payload_span(data: bytes) -> tuple[int, int]:
    """Where the parts lie: after the header and its CRC, to the end."""
    from nncompress.container import file as fmt

    _, at = fmt.read_header(data)
    return at, len(data)


def mut_payload(rng, seed, _):
    lo, hi = _payload_span(seed.data)
    if hi <= lo:
        return None
    desc, data = _flip_bits(rng, seed.data, lo, hi)
    return f"payload: {desc}", data


def _header_body_span(data: bytes, valid_crc: bool = True) -> tuple[int, int] | None:
    """Where the header body lies (magic, u16 version, varint body length, body, u32 CRC-32
    of the body), if this file is laid out so (``valid_crc``: and its CRC matches); None
    if it is not."""
    from nncompress.container import MAGIC

    at, n, shift = len(MAGIC) + 2, 0, 0
    for _ in range(5):
        if at >= len(data):
            return None
        b = data[at]
        at += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    else:
        return None
    lo, hi = at, at + n
    if len(data) < hi + 4:
        return None
    if valid_crc and struct.unpack_from("<I", data, hi)[0] != zlib.crc32(data[lo:hi]):
        return None
    return lo, hi


def mut_header_crc(rng, seed, _):
    span = _header_body_span(seed.data)
    if span is None:
        return None
    lo, hi = span
    b = bytearray(seed.data)
    where = sorted(rng.sample(range(lo, hi), min(rng.randint(1, 3), hi - lo)))
    for i in where:
        b[i] = rng.choice((0, 1, 255, b[i] ^ (1 << rng.randrange(8)), rng.randrange(256)))
    struct.pack_into("<I", b, hi, zlib.crc32(bytes(b[lo:hi])))
    return f"header bytes {where} changed, header CRC recomputed", bytes(b)


# --- Structure-aware mutations: a file as a flat dict of fields ----------------------------
#
# "mode", "width", ... (the FileHeader's), "part1.method", "part1.length", ... (its part
# table's rows) and "model0.tile_h", "model0.model_name", ... (the fields of the model part
# at that index of the table). Changing any of them and packing again gives a file whose
# header CRC and parts CRC are right (unless the change is to a CRC itself).


def _model_fields(f: Any, data: bytes) -> Any:
    """The ModelPart of a model part's bytes (fields as the file has them)."""
    from nncompress.container import file as fmt

    h = f.header
    mh, payload = fmt.unpack_model_part(
        data, "L" if h.mode in ("L", "LA") else "RGB", h.width, h.height
    )
    return fmt.ModelPart(
        mh.model_name, mh.model_digest, mh.tile_h, mh.tile_w, mh.chunk_tiles, payload
    )


def _fields(f: Any) -> dict[str, Any]:
    """The flat fields of a parsed file (see above); the model part's payload is not one."""
    h = f.header
    out = {x.name: getattr(h, x.name) for x in dataclasses.fields(h) if x.name != "parts"}
    for i, (entry, data) in enumerate(f.parts()):
        for x in dataclasses.fields(entry):
            out[f"part{i}.{x.name}"] = getattr(entry, x.name)
        if entry.method == "model":
            mp = _model_fields(f, data)
            for x in dataclasses.fields(mp):
                if x.name != "payload":
                    out[f"model{i}.{x.name}"] = getattr(mp, x.name)
    return out


def _apply(f: Any, change: dict[str, Any]) -> bytes:
    """The file with ``change`` (flat fields) applied and packed; ValueError, TypeError or
    struct.error when it is not representable."""
    from nncompress.container import file as fmt

    entries = list(f.header.parts)
    data = list(f.data)
    head = {k: v for k, v in change.items() if "." not in k}
    for i, (entry, part) in enumerate(f.parts()):
        ec = {k.split(".", 1)[1]: v for k, v in change.items() if k.startswith(f"part{i}.")}
        mc = {k.split(".", 1)[1]: v for k, v in change.items() if k.startswith(f"model{i}.")}
        if mc:
            data[i] = fmt.pack_model_part(dataclasses.replace(_model_fields(f, part), **mc))
            ec.setdefault("length", len(data[i]))
        if ec:
            entries[i] = dataclasses.replace(entry, **ec)
    if "parts_crc32" not in head:
        crc = 0
        for b in data:
            crc = zlib.crc32(b, crc)
        head["parts_crc32"] = crc
    header = dataclasses.replace(f.header, parts=tuple(entries), **head)
    return fmt.pack(fmt.File(header, tuple(data)))


def _int_fields(fields: dict[str, Any]) -> list[str]:
    return [k for k, v in fields.items() if isinstance(v, int) and not isinstance(v, bool)]


def _caps() -> list[int]:
    """The containers' integer caps (MAX_*: format 5's and the model parts'), each with its
    neighbours."""
    from nncompress import container
    from nncompress.container import file as fmt

    caps = [
        v
        for mod in (container, fmt)
        for k, v in vars(mod).items()
        if k.startswith("MAX_") and isinstance(v, int)
    ]
    return sorted({c + d for c in caps for d in (-1, 0, 1)})


def _small_values(v: int) -> list[int]:
    return sorted({0, 1, 2, 3, max(v - 1, 0), v + 1, v // 2, 2 * v, v ^ 1} - {v})


def _huge_values(v: int, fields: dict[str, Any]) -> list[int]:
    fixed = [
        2**8 - 1,
        2**8,
        2**15,
        2**16 - 2,
        2**16 - 1,
        2**16,
        2**31 - 1,
        2**31,
        2**32 - 2,
        2**32 - 1,
    ]
    # the largest image the caps allow for the other side
    from nncompress import container

    extra = [
        getattr(container, "MAX_PIXELS", 2**28) // max(fields[side], 1)
        for side in ("width", "height")
        if side in fields
    ]
    return sorted(set(fixed + _caps() + extra + [v * 1000, v * 2**16]) - {v})


def _other_values(name: str, value: object, seed: Seed, others: Sequence[Seed]) -> list[object]:
    from nncompress.container import file as fmt

    codes = {"method": fmt.METHOD_CODES, "planes": fmt.PLANE_CODES, "mode": fmt.MODE_CODES}
    if name.rsplit(".", 1)[-1] in codes:  # every other code the format names
        return [v for v in codes[name.rsplit(".", 1)[-1]] if v != value]
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, bytes):
        n = len(value)
        out = [
            bytes(n),
            b"\xff" * n,
            bytes([value[0] ^ 1]) + value[1:] if n else b"\x00",
            value[::-1],
        ]
        return [v for v in out if v != value]
    if isinstance(value, str):
        names = sorted({s.name.split("/")[0] for s in others})
        return [
            v
            for v in ["", "x", "nosuch", "a" * 255, "é" * 127, "\x00", "..", "a/b", *names]
            if v != value
        ]
    if isinstance(value, tuple) and name == "durations":  # a still image claimed animated
        return [(0,), (0, 0), (100,) * 3]
    return []


def _repack(seed: Seed, rng: random.Random, candidates: Callable[[dict], list[tuple[str, dict]]]):
    """Parse ``seed``, apply one of ``candidates(fields)`` (field changes) that the format
    accepts, pack again (valid CRCs). None if no candidate is representable."""
    from nncompress import files

    f = files.parse(seed.data)
    options = candidates(_fields(f))
    rng.shuffle(options)
    for desc, change in options:
        try:
            return desc, _apply(f, change)
        except (ValueError, TypeError, struct.error):  # the format's own validation
            continue
    return None


def mut_field(rng, seed, others):
    def candidates(fields):
        out = []
        for name, v in fields.items():
            if isinstance(v, int) and not isinstance(v, bool):
                vals = _small_values(v)
            else:
                vals = _other_values(name, v, seed, others)
            out += [(f"{name}: {v!r} -> {x!r}"[:120], {name: x}) for x in vals]
        return out

    return _repack(seed, rng, candidates)


def mut_field_huge(rng, seed, _):
    def candidates(fields):
        return [
            (f"{name}: {fields[name]} -> {x}", {name: x})
            for name in _int_fields(fields)
            for x in _huge_values(fields[name], fields)
        ]

    return _repack(seed, rng, candidates)


def mut_swap_dims(rng, seed, _):
    def candidates(fields):
        w, h = fields["width"], fields["height"]
        if w == h:
            return []
        return [(f"width/height swapped: {w}x{h} -> {h}x{w}", {"width": h, "height": w})]

    return _repack(seed, rng, candidates)


def mut_swap_fields(rng, seed, _):
    def candidates(fields):
        names = _int_fields(fields)
        pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
        pairs = [
            (a, b) for a, b in pairs if {a, b} != {"width", "height"} and fields[a] != fields[b]
        ]
        return [(f"{a} <-> {b}", {a: fields[b], b: fields[a]}) for a, b in pairs]

    return _repack(seed, rng, candidates)


def mut_cross(rng, seed, others):
    """Fields from another seed's file: one field, or its model (name and digest)."""
    from nncompress import files

    pool = [s for s in others if s.data != seed.data]
    if not pool:
        return None
    donor_seed = rng.choice(pool)
    donor = _fields(files.parse(donor_seed.data))

    def candidates(fields):
        names = [n for n in fields if n in donor and fields[n] != donor[n]]
        out = [(f"{n} from {donor_seed.name}", {n: donor[n]}) for n in names]
        for i in {n.split(".")[0] for n in names if n.startswith("model")}:
            model = {f"{i}.{k}": donor[f"{i}.{k}"] for k in ("model_name", "model_digest")}
            out.append((f"{i} model from {donor_seed.name}", model))
        return out

    return _repack(seed, rng, candidates)


def mut_stream(rng, seed, _):
    """One coder stream of a model part cut short, emptied or replaced by a few random
    words, with the stream framing, the part length and the CRCs made valid again: the
    decoder must notice that the stream ends before its symbols (codec.TAIL_BITS) or fail
    the content check, never decode padding for long."""
    from nncompress import files
    from nncompress.container import file as fmt
    from nncompress.container import format as v4

    f = files.parse(seed.data)
    found = [(i, d) for i, (e, d) in enumerate(f.parts()) if e.method == "model"]
    if not found:
        return None
    i, part = found[0]
    mp = _model_fields(f, part)
    mh, _ = fmt.unpack_model_part(
        part, "L" if f.header.mode in ("L", "LA") else "RGB", f.header.width, f.header.height
    )
    streams = v4.split_streams(mh, mp.payload)
    k = rng.randrange(len(streams))
    words = len(streams[k]) // 4
    how = rng.choice(("empty", "first", "cut", "random"))
    if how == "empty":
        new = b""
    elif how == "first":
        new = streams[k][:4]
    elif how == "cut":
        new = streams[k][: 4 * rng.randrange(max(words, 1))]
    else:
        new = bytes(rng.randrange(256) for _ in range(4 * rng.randint(1, 3)))
    if new == streams[k]:
        return None
    streams[k] = new
    payload = v4.join_streams(streams)
    desc = f"stream {k} of {len(streams)} ({words} words): {how} -> {len(new) // 4} words"
    return desc, _apply(f, {f"model{i}.payload": payload})


NNC_KINDS: dict[str, Mutator] = {
    "bitflip": mut_bitflip,
    "overwrite": mut_overwrite,
    "truncate": mut_truncate,
    "extend": mut_extend,
    "garbage": mut_garbage,
    "payload": mut_payload,
    "header-crc": mut_header_crc,
    "field": mut_field,
    "field-huge": mut_field_huge,
    "swap-dims": mut_swap_dims,
    "swap-fields": mut_swap_fields,
    "cross": mut_cross,
    "stream": mut_stream,
}


# --- Mutations of model files ---------------------------------------------------------------


@dataclass(frozen=True)
class ModelSeed:
    name: str
    data: bytes


def _split_model(data: bytes) -> tuple[dict[str, str], dict[str, Any]]:
    """(nncompress metadata, tensors) of a model file's bytes."""
    from safetensors.torch import load

    n = struct.unpack_from("<Q", data)[0]
    meta = json.loads(data[8 : 8 + n])["__metadata__"]
    return meta, load(data)


def _join_model(meta: dict[str, str], tensors: dict[str, Any], *, redigest: bool) -> bytes:
    from safetensors.torch import save

    from nncompress.modelfile import weights_digest

    meta = dict(meta)
    if redigest:
        try:
            config = json.loads(meta["nncompress.config"])
            meta["nncompress.digest"] = weights_digest(
                meta["nncompress.family"], config, tensors
            ).hex()
        except (ValueError, KeyError, RuntimeError, TypeError):
            pass  # not JSON, or tensors that cannot be hashed: leave the digest stale
    return save(tensors, metadata=meta)


_JSON_ODDITIES: tuple[object, ...] = (
    0,
    1,
    -1,
    2,
    3,
    10**9,
    2**31,
    2**63,
    10**30,
    0.5,
    3.5,
    -0.0,
    1e308,
    True,
    False,
    None,
    "3",
    "",
    [],
    [1],
    [1, 2],
    {},
    {"a": 1},
    [[[[]]]],
)


def mut_model_bytes(rng, seed, _):
    kind = rng.choice(("bitflip", "overwrite", "truncate", "extend", "garbage"))
    desc, data = NNC_KINDS[kind](rng, Seed(seed.name, seed.data, ("", (0, 0), b"")), ())
    return f"{kind}: {desc}", data


def mut_model_config(rng, seed, _):
    meta, tensors = _split_model(seed.data)
    config = json.loads(meta["nncompress.config"])
    key = rng.choice(sorted(config))
    op = rng.choice(("value", "value", "value", "drop", "add", "whole"))
    if op == "value":
        value = rng.choice(
            _JSON_ODDITIES + (config[key] * 2 if isinstance(config[key], (int, float)) else "x",)
        )
        config[key] = value
        desc = f"config {key!r} = {json.dumps(value)}"
    elif op == "drop":
        del config[key]
        desc = f"config {key!r} removed"
    elif op == "add":
        config["extra"] = 1
        desc = "config gets an extra key"
    else:
        config = rng.choice(([], 3, "x", None, [config]))
        desc = f"config replaced by {json.dumps(config)[:40]}"
    meta["nncompress.config"] = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return desc + " (digest recomputed)", _join_model(meta, tensors, redigest=True)


def mut_model_family(rng, seed, others):
    meta, tensors = _split_model(seed.data)
    family = rng.choice(("histogram", "made", "pixelcnnpp", "nosuch", "", "__init__", "HISTOGRAM"))
    meta["nncompress.family"] = family
    return f"family {family!r} (digest recomputed)", _join_model(meta, tensors, redigest=True)


_BAD_TILES: tuple[object, ...] = (
    [0, 0],
    "ab",
    None,
    [5000, 5000],
    [10**9, 1],
    [-4, 4],
    [4],
    [4, 4, 4],
    [True, 4],
    [4.0, 4],
    4,
    {},
    [],
)
_BIG_TILES: tuple[object, ...] = ([4096, 4096], [2048, 4096], [4096, 2048], [1024, 1024])


def mut_model_info(rng, seed, _):
    meta, tensors = _split_model(seed.data)
    info = json.loads(meta.get("nncompress.info", "{}"))
    choice = rng.randrange(4)
    if choice == 0:
        info["tile"] = rng.choice(_BAD_TILES + ([1, 1], [1, 4], [3, 5], [64, 64]))
        text, desc = json.dumps(info), f"info tile {json.dumps(info['tile'])}"
    elif choice == 1:
        text = rng.choice(("[]", '"x"', "3", "null", "{", "", "[" * 3000, '{"tile": [4, 4]'))
        desc = f"info text {text[:30]!r}"
    elif choice == 2:
        info[rng.choice(("val_bpd", "steps", "notes", "data"))] = rng.choice(_JSON_ODDITIES)
        text, desc = json.dumps(info), "info free-form field"
    else:
        text, desc = json.dumps({"notes": "x" * rng.choice((10, 2**20 + 1))}), "info big"
    meta["nncompress.info"] = text
    return desc, _join_model(meta, tensors, redigest=False)


def mut_model_info_bigtile(rng, seed, _):
    meta, tensors = _split_model(seed.data)
    info = json.loads(meta.get("nncompress.info", "{}"))
    info["tile"] = rng.choice(_BIG_TILES)
    meta["nncompress.info"] = json.dumps(info)
    return f"info tile {info['tile']} (valid, huge)", _join_model(meta, tensors, redigest=False)


def mut_model_tensor(rng, seed, _):
    import torch

    meta, tensors = _split_model(seed.data)
    name = rng.choice(sorted(tensors))
    t = tensors[name].clone()
    ops = ["dtype", "shape", "drop", "add", "scalar"]
    if t.is_floating_point() and t.numel():
        ops += ["nan", "inf", "big"]
    if not t.is_floating_point() and t.numel():
        ops += ["int-value", "int-value"]
    op = rng.choice(ops)
    desc = f"tensor {name!r}: {op}"
    if op == "dtype":
        dtype = rng.choice(
            (
                torch.float16,
                torch.float64,
                torch.bfloat16,
                torch.int32,
                torch.int64,
                torch.int16,
                torch.uint8,
                torch.bool,
            )
        )
        tensors[name] = t.to(dtype)
        desc += f" -> {dtype}"
    elif op == "shape":
        shapes = [(t.numel(),), (1, *t.shape), tuple(t.shape[::-1])]
        if t.dim() and t.shape[0] > 1:
            tensors[name] = t[:-1].clone()
            desc += " (last row dropped)"
        else:
            tensors[name] = t.reshape(rng.choice(shapes)).clone()
    elif op == "drop":
        del tensors[name]
    elif op == "add":
        tensors[f"{name}.extra"] = torch.zeros(2)
    elif op == "scalar":
        tensors[f"{name}.scalar"] = torch.tensor(1.0)
    elif op in ("nan", "inf", "big"):
        value = {"nan": float("nan"), "inf": float("inf"), "big": 3e38}[op]
        t.view(-1)[rng.randrange(t.numel())] = value
        tensors[name] = t
    else:  # an integer buffer (MADE's orderings and degrees, an integer model's tables)
        i = rng.randrange(t.numel())
        if t.dtype == torch.bool:
            value: object = not bool(t.view(-1)[i])
        else:
            lim = torch.iinfo(t.dtype)
            neighbour = int(t.view(-1)[(i + 1) % t.numel()])
            value = rng.choice((-1, lim.min, lim.max, t.numel(), neighbour))
            value = min(max(value, lim.min), lim.max)  # -1 in an unsigned tensor: 0
        t.view(-1)[i] = value
        tensors[name] = t
        desc += f" [{i}] = {value}"
    return desc + " (digest recomputed)", _join_model(meta, tensors, redigest=True)


#: Model kinds whose check codes with the model's default tile (its info's).
DEFAULT_TILE_KINDS = frozenset({"model-info-bigtile"})

MODEL_KINDS: dict[str, Mutator] = {
    "model-bytes": mut_model_bytes,
    "model-config": mut_model_config,
    "model-family": mut_model_family,
    "model-info": mut_model_info,
    "model-info-bigtile": mut_model_info_bigtile,
    "model-tensor": mut_model_tensor,
}


def make_cases(
    kinds: dict[str, Mutator],
    seeds: Sequence[Any],
    n: int,
    seed: int,
    target: str,
    first_id: int = 0,
) -> list[Case]:
    """``n`` cases spread evenly over ``kinds``, seeds drawn at random; case i's mutation is
    drawn from random.Random(f"{seed}/{kind}/{i}"), so a case is reproducible on its own."""
    cases: list[Case] = []
    names = list(kinds)
    for i in range(n):
        kind = names[i % len(names)]
        rng = random.Random(f"{seed}/{kind}/{i}")
        for _attempt in range(20):
            s = rng.choice(list(seeds))
            got = kinds[kind](rng, s, seeds)
            if got is not None:
                break
        else:
            continue
        desc, data = got
        expected = s.expected if isinstance(s, Seed) else None
        cases.append(Case(first_id + len(cases), kind, target, s.name, desc, data, expected))
    return cases


# --- Running cases in workers ---------------------------------------------------------------


class CaseTimeout(BaseException):  # noqa: N818 - BaseException: no `except Exception` eats it
    """Raised by the per-case alarm inside a worker."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise CaseTimeout


def _address_space() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * resource.getpagesize()


def _check_model(lm: Any, default_tile: bool) -> tuple[str, str]:
    """A loaded (mutated) model: does a 4x4 image come back exactly, or fail typed? Coded
    with 4x4 tiles (unless the model has a fixed tile), or with the tile its info names if
    ``default_tile`` (a model of 32x32 tiles, the default, takes ~3 s on a CPU)."""
    from nncompress import api
    from nncompress.errors import NncError

    channels = int(lm.model.channels)
    mode = {1: "L", 3: "RGB"}.get(channels)
    if mode is None:
        return "works", f"loaded a {channels}-channel model (no image mode to try)"
    im = seed_image(mode, MODEL_CHECK_SIZE, MODEL_CHECK_SIZE, 7)
    try:
        th, tw = api.model_tile(lm)  # whatever the info says must give a usable tile
        if not (1 <= th <= 2**16 and 1 <= tw <= 2**16):
            return "wrong", f"loaded; its default tile is {th}x{tw}"
        tile = None if default_tile or lm.model.fixed_tile else (MODEL_CHECK_SIZE,) * 2
        data = api.compress(im, model=lm, tile=tile, method="model")
        out = api.decompress(data, model=lm)
    except NncError as e:
        return "works", f"loaded; coding: {type(e).__name__}: {e}"[:300]
    if _pixels(out) != _pixels(im):
        return "wrong", "loaded; a 4x4 image decoded to other pixels"
    return "works", "loaded; a 4x4 image round-trips"


def _selftest(what: str) -> tuple[str, str]:
    """Misbehaviours the harness must catch (tests/test_fuzz.py runs them)."""
    if what == "sleep":  # the alarm stops it
        time.sleep(3600)
    elif what == "ignore-alarm":  # only the parent's kill stops it
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        time.sleep(3600)
    elif what == "exit":
        os._exit(3)
    elif what == "allocate":
        bytearray(2**40)
    elif what == "raise":
        raise KeyError("selftest")
    return "exact", "selftest: nothing to do"


def run_case(case: Case, workdir: Path) -> tuple[str, str]:
    """(outcome, detail) of one case, in this process. Exceptions other than typed ones are
    outcomes too; only CaseTimeout (and death) escape."""
    try:
        if case.target == "selftest":
            return _selftest(case.desc)
        from nncompress import api
        from nncompress.errors import ModelFileError, NncError
        from nncompress.modelfile import load_model_file

        if case.target == "nnc":
            try:
                out = api.decompress(case.data)
            except NncError as e:
                return "typed", f"{type(e).__name__}: {e}"[:300]
            if _pixels(out) == case.expected:
                return "exact", "decoded to the original pixels"
            return (
                "wrong",
                f"decoded to a {out.mode} {out.size[0]}x{out.size[1]} image with other pixels",
            )
        path = workdir / f"case{MODEL_SUFFIX}"
        path.write_bytes(case.data)
        try:
            lm = load_model_file(path, name="fuzzed")
        except ModelFileError as e:
            return "typed", f"ModelFileError: {e}"[:300]
        return _check_model(lm, case.kind in DEFAULT_TILE_KINDS)
    except MemoryError:
        return "memory", "MemoryError"
    except Exception as e:  # noqa: BLE001 - the finding itself
        msg = f"{type(e).__name__}: {e}"
        kind = "memory" if "allocate" in msg or "out of memory" in msg.lower() else "untyped"
        where = traceback.extract_tb(e.__traceback__)[-1]
        return kind, f"{msg} (at {Path(where.filename).name}:{where.lineno})"[:400]


def _worker(
    conn: Connection, model_dir: str, timeout_s: float, mem_bytes: int, warm: bytes
) -> None:
    os.environ["NNCOMPRESS_MODEL_DIR"] = model_dir
    # A header may ask for more CPU threads than the worker has cores; OpenMP threads that
    # spin while waiting then slow every op by orders of magnitude on a busy machine.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # libjxl starts a thread per core and aborts the process (std::system_error) when the
    # address-space limit below makes a thread's stack fail: one codec thread per worker.
    os.environ["NNCOMPRESS_CODEC_THREADS"] = "1"
    if warm:  # imports and first-call costs outside the limits
        import torch

        torch.set_num_threads(1)
        from nncompress import api

        api.decompress(warm)
    if mem_bytes:
        limit = _address_space() + mem_bytes
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    signal.signal(signal.SIGALRM, _on_alarm)
    workdir = Path(tempfile.mkdtemp(prefix="nnc-fuzz-"))
    conn.send("ready")
    while True:
        try:
            case = conn.recv()
        except EOFError:
            return
        except MemoryError:  # between cases: this worker's heap, not a case's outcome
            conn.send(RECV_FAILED)
            return
        if case is None:
            return
        t0 = time.perf_counter()
        try:
            signal.setitimer(signal.ITIMER_REAL, timeout_s)
            outcome, detail = run_case(case, workdir)
        except CaseTimeout:
            outcome, detail = "hang", f"over {timeout_s:g} s (alarm)"
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        conn.send((case.id, outcome, detail, time.perf_counter() - t0))


@dataclass
class Result:
    case: Case
    outcome: str
    detail: str
    seconds: float


@dataclass
class _Slot:
    process: Any
    conn: Connection
    case: Case | None = None
    started: float = 0.0
    done: int = 0  # cases this worker has run


#: What a worker answers when it could not even receive a case (its address space used up
#: by earlier cases): the case is given to a fresh worker, not recorded.
RECV_FAILED = "recv-failed"
#: A worker is replaced by a fresh one after this many cases, so that what earlier cases
#: left in its heap (fragmentation under RLIMIT_AS) cannot make a later case fail.
CASES_PER_WORKER = 2000


class Pool:
    """Worker processes that run cases, each under an alarm and an address-space limit; a
    worker that dies or overruns is replaced and its case recorded as ``death`` / ``hang``.
    Workers are recycled every CASES_PER_WORKER cases."""

    def __init__(
        self,
        model_dir: Path,
        workers: int = 2,
        timeout_s: float = 10.0,
        mem_mb: int = 2048,
        warm: bytes = b"",
        grace_s: float = 5.0,
    ) -> None:
        self.ctx = mp.get_context("spawn")
        self.args = (str(model_dir), timeout_s, mem_mb * 2**20, warm)
        self.timeout_s, self.grace_s = timeout_s, grace_s
        # started now, waited for at the first run (the caller may work meanwhile)
        self.slots = [self._start() for _ in range(max(1, workers))]
        self._waiting = list(self.slots)

    def _start(self) -> _Slot:
        parent, child = self.ctx.Pipe()
        p = self.ctx.Process(target=_worker, args=(child, *self.args), daemon=True)
        p.start()
        child.close()
        return _Slot(p, parent)

    def _ready(self, slot: _Slot) -> None:
        try:
            ok = slot.conn.poll(300) and slot.conn.recv() == "ready"
        except (EOFError, OSError):
            ok = False
        if not ok:
            slot.process.join(5)
            raise RuntimeError(f"a fuzz worker did not start (exit {slot.process.exitcode})")

    def _replace(self, slot: _Slot) -> _Slot:
        if slot.process.is_alive():
            slot.process.kill()  # a worker this pool started
        slot.process.join(10)
        slot.conn.close()
        new = self._start()
        self._ready(new)
        return new

    def run(
        self, cases: Iterable[Case], progress: Callable[[int], None] | None = None
    ) -> list[Result]:
        while self._waiting:
            self._ready(self._waiting.pop())
        todo = list(cases)[::-1]
        results: list[Result] = []
        while todo or any(s.case is not None for s in self.slots):
            for i, s in enumerate(self.slots):
                if s.case is None and todo:
                    if s.done >= CASES_PER_WORKER:
                        s = self.slots[i] = self._replace(s)
                    s.case, s.started = todo.pop(), time.perf_counter()
                    try:
                        s.conn.send(s.case)
                    except (BrokenPipeError, OSError):  # it died between cases
                        todo.append(s.case)
                        self.slots[i] = self._replace(s)
            busy = [s for s in self.slots if s.case is not None]
            ready = wait([s.conn for s in busy] + [s.process.sentinel for s in busy], timeout=0.5)
            now = time.perf_counter()
            for i, s in enumerate(self.slots):
                if s.case is None:
                    continue
                if s.conn in ready:
                    try:
                        answer = s.conn.recv()
                    except (EOFError, OSError):
                        pass
                    else:
                        if answer == RECV_FAILED:  # not the case's doing: run it again
                            todo.append(s.case)
                            self.slots[i] = self._replace(s)
                            continue
                        _id, outcome, detail, secs = answer
                        results.append(Result(s.case, outcome, detail, secs))
                        s.case = None
                        s.done += 1
                        if progress:
                            progress(1)
                        continue
                overdue = now - s.started > self.timeout_s + self.grace_s
                if not s.process.is_alive() or overdue:
                    if overdue and s.process.is_alive():
                        outcome, detail = (
                            "hang",
                            f"killed after {now - s.started:.1f} s (no answer)",
                        )
                    else:
                        code = s.process.exitcode
                        why = f"signal {-code}" if code is not None and code < 0 else f"exit {code}"
                        outcome, detail = "death", f"worker died ({why})"
                    results.append(Result(s.case, outcome, detail, now - s.started))
                    self.slots[i] = self._replace(s)
                    if progress:
                        progress(1)
        return results

    def close(self) -> None:
        for s in self.slots:
            try:
                s.conn.send(None)
            except (OSError, BrokenPipeError):
                pass
        for s in self.slots:
            s.process.join(10)
            if s.process.is_alive():
                s.process.kill()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- Report ---------------------------------------------------------------------------------


def summarize(results: Sequence[Result]) -> dict[str, dict[str, Any]]:
    """Per mutation kind: case counts by outcome, typed error classes, times."""
    kinds: dict[str, dict[str, Any]] = {}
    for r in results:
        k = kinds.setdefault(
            r.case.kind,
            {"cases": 0, **{o: 0 for o in GOOD + BAD}, "errors": Counter(), "times": []},
        )
        k["cases"] += 1
        k[r.outcome] += 1
        if r.outcome == "typed":
            k["errors"][r.detail.split(":", 1)[0]] += 1
        k["times"].append(r.seconds)
    for k in kinds.values():
        times = k.pop("times")
        k["bad"] = sum(k[o] for o in BAD)
        k["median_ms"] = round(1000 * statistics.median(times), 2)
        k["max_ms"] = round(1000 * max(times), 1)
        k["errors"] = dict(k["errors"].most_common())
    return kinds


def table(kinds: dict[str, dict[str, Any]]) -> str:
    head = (
        "| kind | cases | exact | works | typed | bad | bad outcomes | typed errors "
        "| median ms | max ms |"
    )
    lines = [head, "|" + "---|" * 10]
    for name, k in kinds.items():
        bad = ", ".join(f"{o} {k[o]}" for o in BAD if k[o]) or "-"
        errs = ", ".join(f"{e} {n}" for e, n in k["errors"].items()) or "-"
        lines.append(
            f"| {name} | {k['cases']} | {k['exact']} | {k['works']} | {k['typed']} | {k['bad']} | "
            f"{bad} | {errs} | {k['median_ms']} | {k['max_ms']} |"
        )
    total = {
        o: sum(k[o] for k in kinds.values()) for o in ("cases", "exact", "works", "typed", "bad")
    }
    lines.append(
        f"| **all** | {total['cases']} | {total['exact']} | {total['works']} | {total['typed']} | "
        f"{total['bad']} | | | | |"
    )
    return "\n".join(lines)


def bad_cases(results: Sequence[Result], limit_bytes: int = 4096) -> list[dict[str, Any]]:
    out = []
    for r in results:
        if r.outcome in BAD:
            c = r.case
            row = {
                "id": c.id,
                "kind": c.kind,
                "target": c.target,
                "seed": c.seed,
                "mutation": c.desc,
                "outcome": r.outcome,
                "detail": r.detail,
                "seconds": round(r.seconds, 3),
            }
            if len(c.data) <= limit_bytes:
                row["input_base64"] = base64.b64encode(c.data).decode()
            out.append(row)
    return out


# --- Driver ---------------------------------------------------------------------------------


@dataclass
class Fuzz:
    """Models, seeds and a worker pool, for the script and the CI test."""

    folder: Path
    models: dict[str, TinyModel]
    workers: int = 2
    timeout_s: float = 10.0
    mem_mb: int = 2048
    seed_count: int | None = None
    codable: dict[str, TinyModel] = field(default_factory=dict)  # the seeds' models
    seeds: list[Seed] = field(default_factory=list)
    model_seeds: list[ModelSeed] = field(default_factory=list)
    pool: Pool | None = None

    def __enter__(self) -> Fuzz:
        model_dir = self.folder / "models"
        paths = write_models(model_dir, self.models)
        # the float files, for the model cases, before make_codable replaces any
        float_files = {n: p.read_bytes() for n, p in paths.items()}
        saved = os.environ.get("NNCOMPRESS_MODEL_DIR")
        os.environ["NNCOMPRESS_MODEL_DIR"] = str(model_dir)
        try:
            self.codable, warm = make_codable(self.models, model_dir)
            if not warm:
                raise RuntimeError("no model could encode an image")
            # the workers import torch meanwhile
            self.pool = Pool(model_dir, self.workers, self.timeout_s, self.mem_mb, warm)
            self.seeds = make_seeds(self.codable, self.seed_count)
        except BaseException:
            self.__exit__()
            raise
        finally:
            if saved is None:
                os.environ.pop("NNCOMPRESS_MODEL_DIR", None)
            else:
                os.environ["NNCOMPRESS_MODEL_DIR"] = saved
        self.model_seeds = []
        for n, p in paths.items():
            data = p.read_bytes()
            self.model_seeds.append(ModelSeed(n, data))
            if float_files[n] != data:
                self.model_seeds.append(ModelSeed(f"{n} (float)", float_files[n]))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.close()

    def nnc_cases(self, n: int, seed: int, kinds: Sequence[str] | None = None) -> list[Case]:
        chosen = {k: NNC_KINDS[k] for k in (kinds or NNC_KINDS)}
        return make_cases(chosen, self.seeds, n, seed, "nnc")

    def model_cases(self, n: int, seed: int, kinds: Sequence[str] | None = None) -> list[Case]:
        chosen = {k: MODEL_KINDS[k] for k in (kinds or MODEL_KINDS)}
        return make_cases(chosen, self.model_seeds, n, seed, "model", first_id=10**6)

    def run(
        self, cases: Sequence[Case], progress: Callable[[int], None] | None = None
    ) -> list[Result]:
        assert self.pool is not None
        return self.pool.run(cases, progress)


def _shown(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=3000, help=".nnc cases (spread over the kinds)")
    ap.add_argument("--model-cases", type=int, default=300, help="model-file cases")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kinds", default="", help="comma-separated kinds to run (default: all)")
    ap.add_argument("--workers", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per case")
    ap.add_argument(
        "--mem-mb", type=int, default=2048, help="address space per case beyond the warm worker"
    )
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--name", default="fuzz", help="file name stem of the results")
    args = ap.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = [k for k in kinds if k not in NNC_KINDS and k not in MODEL_KINDS]
    if unknown:
        ap.error(f"unknown kinds {unknown}; known: {', '.join([*NNC_KINDS, *MODEL_KINDS])}")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nnc-fuzz-") as tmp:
        fz = Fuzz(Path(tmp), tiny_models(), args.workers, args.timeout, args.mem_mb)
        with fz:
            nnc = [k for k in kinds if k in NNC_KINDS] or (None if not kinds else [])
            mdl = [k for k in kinds if k in MODEL_KINDS] or (None if not kinds else [])
            cases = []
            if nnc != [] and args.cases:
                cases += fz.nnc_cases(args.cases, args.seed, nnc)
            if mdl != [] and args.model_cases:
                cases += fz.model_cases(args.model_cases, args.seed, mdl)
            done = [0]

            def progress(k: int) -> None:
                done[0] += k
                if done[0] % 500 == 0 or done[0] == len(cases):
                    print(f"  {done[0]}/{len(cases)} cases", file=sys.stderr, flush=True)

            results = fz.run(cases, progress)
            seeds = len(fz.seeds)
    elapsed = time.perf_counter() - t0
    kinds_summary = summarize(sorted(results, key=lambda r: r.case.id))
    md = table(kinds_summary)
    print(md)
    bad = bad_cases(results)
    for row in bad[:40]:
        print(
            f"BAD {row['outcome']}: [{row['kind']}] {row['seed']}: {row['mutation']} "
            f"-> {row['detail']}"
        )
    report = {
        "args": {k: (_shown(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "seeds": seeds,
        "seconds": round(elapsed, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "kinds": kinds_summary,
        "bad": bad,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / f"{args.name}.md").write_text(
        f"`python benchmarks/fuzz.py {' '.join(argv if argv is not None else sys.argv[1:])}` "
        f"({len(results)} cases, {seeds} seeds, {elapsed:.0f} s)\n\n{md}\n"
    )
    print(
        f"{len(results)} cases in {elapsed:.0f} s; {len(bad)} bad; "
        f"wrote {args.out / (args.name + '.json')}"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
