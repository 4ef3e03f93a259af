"""Encode and decode speed of nncompress models on one photo (and optionally a folder).

    python benchmarks/decode_speed.py [--models M,...] [--device D] [--image PATH] [--all DIR]
                                      [--tile T] [--out OUTDIR]

Default photo: a 768x512 center crop of the first reference image large enough (else the
first one resized to 768x512; the report says which). Per model: a warm-up first, then
medians of repeated encodes, decodes and `api.score` passes (repeats stop early once a
measurement has used its time budget), the ratio decode time / score time, and the coded
bits against the model's NLL. Decoded pixels are checked against the original. Needs no
network and no terminal: safe for batch jobs on a GPU machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

try:
    from benchmarks import common
except ImportError:  # run as a script: the repository root is not on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks import common

from benchmarks.common import BITS_PER_BYTE, BenchmarkError, Sample

REPO = Path(__file__).resolve().parents[1]
# The reference photos: inside the checkout (device machines) or next to it (workstation).
VAL_CANDIDATES = (
    REPO / "shared" / "data" / "photos" / "val",
    REPO.parent / "shared" / "data" / "photos" / "val",
)
PHOTO_SIZE = (768, 512)  # width, height
WARMUP_CROP = 16  # pixels: warm-up image (device init, lazy loading, allocator)
DEFAULT_REPEATS = 3
DEFAULT_BUDGET_S = 60.0  # stop repeating a measurement once it has used this much time


class LosslessError(Exception):
    """A decoded image differs from the original."""


def pick_photo(folder: Path, width: int, height: int) -> tuple[Sample, str]:
    """(width x height sample, how it was made): a center crop of the first image in
    ``folder`` (by name) that is large enough, else the first image resized (Lanczos)."""
    paths = common.list_images(folder)
    for path in paths:
        sample = common.load_sample(path)
        if sample.width >= width and sample.height >= height:
            return _fit(sample, width, height)
    sample, how = _fit(common.load_sample(paths[0]), width, height)
    return sample, f"{how}: no image in {folder} was large enough to crop"


def measure(fn: Callable[[], Any], repeats: int, budget_s: float) -> tuple[Any, list[float]]:
    """Run ``fn`` up to ``repeats`` times (at least once), stopping early when the next
    run would likely exceed ``budget_s`` in total. Returns (last result, seconds per run)."""
    times: list[float] = []
    result = None
    while len(times) < max(1, repeats):
        if times and sum(times) + times[-1] > budget_s:
            break
        result, seconds = common.timed(fn)
        times.append(seconds)
    return result, times


def _check(sample: Sample, decoded: Image.Image, label: str) -> None:
    mode = getattr(decoded, "mode", None)
    if mode != sample.image.mode:
        raise LosslessError(f"{label}: decoded mode {mode!r}, expected {sample.image.mode!r}")
    mismatch = common.pixel_mismatch(sample.array, common.image_to_array(decoded))
    if mismatch:
        raise LosslessError(f"{label}: {mismatch}")


def _bits_row(samples: Sequence[Sample], blobs: Sequence[bytes], nlls: Sequence[float]) -> dict:
    """Coded size against the model NLL (subpixel-weighted over ``samples``)."""
    subpixels = sum(s.subpixels for s in samples)
    file_bits = sum(len(b) for b in blobs) * BITS_PER_BYTE
    infos = [common.nnc_file_info(b) for b in blobs]
    payloads = [i.get("payload_bytes") for i in infos]
    payload_bits = None if None in payloads else sum(payloads) * BITS_PER_BYTE
    nll = common.weighted_nll(list(nlls), [s.subpixels for s in samples])
    file_bpsp = file_bits / subpixels
    payload_bpsp = None if payload_bits is None else payload_bits / subpixels
    return {
        "model_name": infos[0].get("model_name") if infos else None,
        "file_bits": file_bits,
        "payload_bits": payload_bits,
        "nll_bits": nll * subpixels,
        "file_bits_per_subpixel": file_bpsp,
        "payload_bits_per_subpixel": payload_bpsp,
        "nll_bits_per_subpixel": nll,
        "overhead_pct": 100.0 * (file_bpsp / nll - 1.0) if nll > 0 else None,
        "payload_overhead_pct": (
            100.0 * (payload_bpsp / nll - 1.0) if payload_bpsp is not None and nll > 0 else None
        ),
    }


def bench_photo(api: Any, spec: str, sample: Sample, args: argparse.Namespace) -> dict:
    """Warm-up, then repeated encode / decode / score of one photo with one model."""
    name, model = common.load_model(api, spec)
    device = common.resolve_device_name(args.device)
    kw = {"model": model, "device": device}
    img = sample.image

    def encode(images: list[Image.Image]) -> list[bytes]:
        return api.compress_many(images, tile=args.tile, method="model", **kw)

    warm = common.center_crop(img, WARMUP_CROP, WARMUP_CROP)
    _check(common.make_sample("warm-up", warm), api.decompress_many(encode([warm]), **kw)[0], name)
    api.score([warm], tile=args.tile, **kw)

    log = lambda what: print(f"  {name}: {what} ...", file=sys.stderr, flush=True)  # noqa: E731
    log("encode")
    blobs, enc_t = measure(lambda: encode([img]), args.repeats, args.budget)
    log("decode")
    outs, dec_t = measure(lambda: api.decompress_many(blobs, **kw), args.repeats, args.budget)
    _check(sample, outs[0], f"model {name}, image {sample.name}")
    log("score")
    scores, score_t = measure(lambda: api.score([img], tile=args.tile, **kw), args.repeats, 1e9)
    enc_s, dec_s, score_s = (common.median_or_none(t) for t in (enc_t, dec_t, score_t))
    row = {
        "model": spec,
        "name": name,
        "device": device,
        "tile": args.tile,
        "image": sample.name,
        "width": sample.width,
        "height": sample.height,
        "encode_s": enc_t,
        "decode_s": dec_t,
        "score_s": score_t,
        "encode_mps": common.mp_per_s(sample.pixels, enc_s),
        "decode_mps": common.mp_per_s(sample.pixels, dec_s),
        "decode_over_score": dec_s / score_s if score_s else None,
        "lossless": True,
    }
    row.update(_bits_row([sample], blobs, scores))
    return row


def bench_folder(api: Any, spec: str, samples: Sequence[Sample], args: argparse.Namespace) -> dict:
    """All images of a folder in one compress_many and one decompress_many call (one
    schedule: how a user codes many images), one run each, plus score."""
    name, model = common.load_model(api, spec)
    device = common.resolve_device_name(args.device)
    kw = {"model": model, "device": device}
    images = [s.image for s in samples]
    print(f"  {name}: folder of {len(images)} images ...", file=sys.stderr, flush=True)
    blobs, enc_s = common.timed(api.compress_many, images, tile=args.tile, method="model", **kw)
    outs, dec_s = common.timed(api.decompress_many, blobs, **kw)
    for s, out in zip(samples, outs, strict=True):
        _check(s, out, f"model {name}, image {s.name}")
    scores, score_s = common.timed(api.score, images, tile=args.tile, **kw)
    pixels = sum(s.pixels for s in samples)
    row = {
        "model": spec,
        "name": name,
        "device": device,
        "tile": args.tile,
        "images": len(samples),
        "pixels": pixels,
        "encode_s": enc_s,
        "decode_s": dec_s,
        "score_s": score_s,
        "encode_mps": common.mp_per_s(pixels, enc_s),
        "decode_mps": common.mp_per_s(pixels, dec_s),
        "decode_over_score": dec_s / score_s if score_s else None,
        "lossless": True,
        "per_image": [
            {"image": s.name, "bytes": len(b), "nll_bits_per_subpixel": float(n)}
            for s, b, n in zip(samples, blobs, scores, strict=True)
        ],
    }
    row.update(_bits_row(samples, blobs, scores))
    return row


def table(rows: Sequence[dict]) -> str:
    header = [
        "model",
        "device",
        "image",
        "encode MP/s",
        "decode MP/s",
        "decode / score",
        "file bpsp",
        "payload bpsp",
        "NLL bpsp",
        "overhead",
    ]
    body = []
    for r in rows:
        what = r.get("image") or f"{r['images']} images ({r['pixels'] / common.MEGA:.3g} MP)"
        if "width" in r:
            what += f" {r['width']}x{r['height']}"
        ratio = r.get("decode_over_score")
        body.append(
            [
                r.get("model_name") or r["name"],
                r["device"],
                what,
                common.fmt_speed(r["encode_mps"]),
                common.fmt_speed(r["decode_mps"]),
                "-" if ratio is None else f"{ratio:.0f}x",
                common.fmt(r["file_bits_per_subpixel"]),
                common.fmt(r["payload_bits_per_subpixel"]),
                common.fmt(r["nll_bits_per_subpixel"]),
                "-" if r["overhead_pct"] is None else f"{r['overhead_pct']:+.2f}%",
            ]
        )
    return common.markdown_table(header, body)


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 768x512, not {text!r}") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError("size must be positive")
    return w, h


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--models",
        default=common.DEFAULT_MODEL,
        help="comma-separated model names or paths (default: the api's default model)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--image", default=None, help="photo to time (default: see --val)")
    p.add_argument(
        "--size",
        type=_size,
        default=None,
        help="WxH: crop (or resize, if smaller) the photo to this size "
        "(default 768x512 for the default photo, the image as is for --image)",
    )
    p.add_argument(
        "--val",
        default=None,
        help="folder the default photo comes from (default: shared/data/photos/val)",
    )
    p.add_argument("--all", default=None, metavar="DIR", help="also time every image in DIR")
    p.add_argument(
        "--tile", type=common.positive_int, default=None, help="tile size (default: the model's)"
    )
    p.add_argument(
        "--repeats", type=common.positive_int, default=DEFAULT_REPEATS, help="timed runs (median)"
    )
    p.add_argument(
        "--budget",
        type=float,
        default=DEFAULT_BUDGET_S,
        help="seconds after which encode/decode stop repeating",
    )
    p.add_argument("--out", default="bench-out", help="output folder (default: bench-out/)")
    p.add_argument(
        "--torch-threads",
        type=common.positive_int,
        default=None,
        help="torch CPU threads for the models (default: torch's; use 1 on a busy machine)",
    )
    return p.parse_args(argv)


def photo_sample(args: argparse.Namespace) -> tuple[Sample, str]:
    """The photo to time and a sentence saying where it came from."""
    if args.image is not None:
        path = Path(args.image)
        if args.size is None:
            return common.load_sample(path), f"{path.name} as is"
        return _fit(common.load_sample(path), *args.size)
    folders = [Path(args.val)] if args.val else [p for p in VAL_CANDIDATES if p.is_dir()]
    if not folders:
        raise BenchmarkError("reference photos not found: pass --image PATH or --val DIR")
    return pick_photo(folders[0], *(args.size or PHOTO_SIZE))


def _fit(sample: Sample, width: int, height: int) -> tuple[Sample, str]:
    """Center crop to width x height, or resize (Lanczos) where the image is smaller."""
    if sample.width >= width and sample.height >= height:
        img = common.center_crop(sample.image, width, height)
        how = f"center crop {width}x{height} of {sample.name}"
        return common.make_sample(sample.name, img), how
    img = sample.image.resize((width, height), Image.Resampling.LANCZOS)
    how = f"{sample.name} ({sample.width}x{sample.height}) resized to {width}x{height}"
    return common.make_sample(sample.name, img), how


def main(argv: Sequence[str] | None = None) -> int:
    """Run the timings; returns the exit status."""
    args = parse_args(argv)
    with common.torch_threads(args.torch_threads):
        return _decode_speed(args)


def _decode_speed(args: argparse.Namespace) -> int:
    api, reason = common.import_api()
    if api is None:
        print(f"error: {reason}", file=sys.stderr)
        return common.EXIT_USAGE
    try:
        sample, how = photo_sample(args)
        folder = [common.load_sample(p) for p in common.list_images(args.all)] if args.all else []
    except BenchmarkError as e:
        print(f"error: {e}", file=sys.stderr)
        return common.EXIT_USAGE
    print(f"photo: {how}", file=sys.stderr)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    device = common.resolve_device_name(args.device)
    rows, failures = [], []
    for spec in models:
        try:
            rows.append(bench_photo(api, spec, sample, args))
            if folder:
                rows.append(bench_folder(api, spec, folder, args))
        except LosslessError as e:
            failures.append(f"LOSSLESS FAILURE: {e}")
            print(failures[-1], file=sys.stderr)
        except Exception as e:  # report every model, then fail
            failures.append(f"ERROR: model {spec}: {e!r}")
            print(failures[-1], file=sys.stderr)
    text = table(rows)
    results = {
        "tool": "benchmarks/decode_speed.py",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "args": {k: v for k, v in vars(args).items()},
        "photo": how,
        "environment": common.environment(device),
        "results": rows,
        "failures": failures,
        "notes": [
            "times in seconds per run (lists: every timed run after the warm-up); MP/s from "
            "medians",
            "decode / score: decode time over one api.score pass on the same image and device",
            "file bits include the .nnc header; payload bits are the range coder's words only",
        ],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "decode_speed.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "decode_speed.md").write_text(f"photo: {how}\n\n{text}\n")
    print(f"photo: {how}\n\n{text}\n\nwrote {out / 'decode_speed.json'}")
    return common.exit_status(failures)


if __name__ == "__main__":
    sys.exit(main())
