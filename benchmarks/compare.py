"""Compare nncompress models with classical lossless codecs on a folder of images.

    python benchmarks/compare.py DIR [--models M,...] [--device D] [--quick] [--out OUTDIR]
                                     [--codecs png,webp,...] [--tile T]

Every codec encodes every image, decodes it and must give back the exact pixels (a mismatch
is a loud failure: the codec and image are named and the exit status is non-zero). Sizes are
the real encoded bytes. Writes OUTDIR/results.md, results.json and two plots.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

try:
    from benchmarks import common
except ImportError:  # run as a script: the repository root is not on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks import common

from benchmarks.common import BITS_PER_BYTE, BenchmarkError, Codec, Sample

QUICK_IMAGES = 3
QUICK_CROP = 48  # pixels, square: small enough that every codec runs in milliseconds
WARMUP_CROP = 8  # pixels: the nncompress warm-up image (device init, lazy loading)
NNC_PREFIX = "nnc:"
LABEL_OFFSET = (4, 3)  # points: scatter labels beside their dot, not on it
BAR_XLIM_MARGIN = 1.15  # room for the value labels right of the longest bar


# --- measuring -----------------------------------------------------------------------------


def _image_record(sample: Sample, data: bytes, enc_s: float | None, dec_s: float | None) -> dict:
    bits = len(data) * BITS_PER_BYTE
    return {
        "image": sample.name,
        "bytes": len(data),
        "bits_per_subpixel": bits / sample.subpixels,
        "encode_s": enc_s,
        "decode_s": dec_s,
        "encode_mps": common.mp_per_s(sample.pixels, enc_s) if enc_s is not None else None,
        "decode_mps": common.mp_per_s(sample.pixels, dec_s) if dec_s is not None else None,
    }


def _totals(row: dict, samples: Sequence[Sample], enc_total: float, dec_total: float) -> None:
    """Fill a codec row's totals from its per-image records."""
    per = row["per_image"]
    pixels = sum(s.pixels for s in samples)
    subpixels = sum(s.subpixels for s in samples)
    total_bytes = sum(r["bytes"] for r in per)
    row.update(
        total_bytes=total_bytes,
        total_subpixels=subpixels,
        bits_per_subpixel=total_bytes * BITS_PER_BYTE / subpixels,
        encode_mps=common.median_or_none([r["encode_mps"] for r in per]),
        decode_mps=common.median_or_none([r["decode_mps"] for r in per]),
        encode_mps_total=common.mp_per_s(pixels, enc_total),
        decode_mps_total=common.mp_per_s(pixels, dec_total),
    )
    if row["encode_mps"] is None:  # batch-timed: only the aggregate exists
        row["encode_mps"], row["decode_mps"] = row["encode_mps_total"], row["decode_mps_total"]


def _fail(row: dict, failures: list[str], message: str, lossless: bool = False) -> None:
    """Mark a codec failed. ``lossless``: the failure is wrong pixels, not an error."""
    row["status"] = "failed"
    row["lossless"] = False
    message = ("LOSSLESS FAILURE: " if lossless else "ERROR: ") + message
    failures.append(message)
    print(message, file=sys.stderr, flush=True)


def run_classical(codec: Codec, samples: Sequence[Sample], failures: list[str]) -> dict:
    """Encode, decode and verify every sample with a classical codec."""
    row: dict[str, Any] = {
        "name": codec.name,
        "label": codec.label,
        "kind": "classical",
        "device": "cpu",
        "threads": codec.threads,
        "speed_basis": "median over images",
    }
    if codec.unavailable:
        row.update(status="skipped", reason=codec.unavailable)
        return row
    row.update(status="ok", lossless=True, per_image=[])
    enc_total = dec_total = 0.0
    for sample in samples:
        try:
            data, enc_s = common.timed(codec.encode, sample)
            decoded, dec_s = common.timed(codec.decode, bytes(data))
        except Exception as e:  # a library error on one image fails the codec, loudly
            _fail(row, failures, f"codec {codec.name}, image {sample.name}: error {e!r}")
            row["reason"] = f"{sample.name}: {e!r}"
            return row
        record = _image_record(sample, bytes(data), enc_s, dec_s)
        mismatch = common.pixel_mismatch(sample.array, decoded)
        record["lossless"] = mismatch is None
        if mismatch:
            record["mismatch"] = mismatch
            where = f"codec {codec.name}, image {sample.name}"
            _fail(row, failures, f"{where}: {mismatch}", lossless=True)
        row["per_image"].append(record)
        enc_total += enc_s
        dec_total += dec_s
    _totals(row, samples, enc_total, dec_total)
    return row


def run_model(
    api: Any,
    spec: str,
    samples: Sequence[Sample],
    device: str,
    tile: int | None,
    per_image: bool,
    failures: list[str],
    method: str = "model",
) -> dict:
    """compress_many -> decompress_many -> verify, plus score, for one nncompress model
    (``method="model"``: every image by the model, so the row measures the model; "auto":
    what a user gets, the best of the model and the classical codecs per image).

    Batch mode (default) codes all images in one call each way, as a user would: only the
    aggregate speed exists. ``per_image`` calls the api once per image instead."""
    row: dict[str, Any] = {
        "name": NNC_PREFIX + spec,
        "label": f"nncompress {spec}",
        "kind": "nncompress",
        "model": spec,
        "method": method,
        "device": device,
        "tile": tile,
        "threads": f"torch {_torch_threads()}" if device == "cpu" else "gpu",
        "speed_basis": "median over images" if per_image else "batch total",
    }
    try:
        name, model = common.load_model(api, spec)
    except Exception as e:
        _fail(row, failures, f"model {spec}: cannot load ({e})")
        row["reason"] = str(e)
        return row
    label = f"nncompress {name}" + ("" if method == "model" else f" ({method})")
    row.update(name=NNC_PREFIX + name, label=label, status="ok", lossless=True)
    images = [s.image for s in samples]

    def encode(imgs: list) -> list[bytes]:
        return api.compress_many(imgs, model=model, device=device, tile=tile, method=method)

    def decode(blobs: list[bytes]) -> list:
        return api.decompress_many(blobs, model=model, device=device)

    try:
        warm = common.center_crop(images[0], WARMUP_CROP, WARMUP_CROP)
        decode(encode([warm]))
        if per_image:
            enc = [common.timed(encode, [im]) for im in images]
            blobs = [b[0] for b, _ in enc]
            dec = [common.timed(decode, [b]) for b in blobs]
            outs = [o[0] for o, _ in dec]
            enc_times: list[float | None] = [t for _, t in enc]
            dec_times: list[float | None] = [t for _, t in dec]
            enc_total, dec_total = sum(t for _, t in enc), sum(t for _, t in dec)
        else:
            blobs, enc_total = common.timed(encode, images)
            outs, dec_total = common.timed(decode, blobs)
            enc_times = dec_times = [None] * len(images)
        scores, score_s = common.timed(api.score, images, model=model, device=device, tile=tile)
    except Exception as e:
        _fail(row, failures, f"model {name}: error {e!r}")
        row["reason"] = repr(e)
        return row
    if not len(blobs) == len(outs) == len(scores) == len(samples):
        counts = f"{len(blobs)} files, {len(outs)} images, {len(scores)} scores"
        _fail(row, failures, f"model {name}: {len(samples)} images in, {counts} out")
        return row
    row["score_s"] = score_s
    row["per_image"] = []
    for sample, blob, out, es, ds, nll in zip(
        samples, blobs, outs, enc_times, dec_times, scores, strict=True
    ):
        record = _image_record(sample, blob, es, ds)
        record["nll_bits_per_subpixel"] = float(nll)
        record.update(common.nnc_file_info(blob))
        mismatch = _model_mismatch(sample, out)
        record["lossless"] = mismatch is None
        if mismatch:
            record["mismatch"] = mismatch
            where = f"codec {row['name']}, image {sample.name}"
            _fail(row, failures, f"{where}: {mismatch}", lossless=True)
        row["per_image"].append(record)
    _totals(row, samples, enc_total, dec_total)
    nll = common.weighted_nll([float(s) for s in scores], [s.subpixels for s in samples])
    row["nll_bits_per_subpixel"] = nll
    row["overhead_pct"] = 100.0 * (row["bits_per_subpixel"] / nll - 1.0) if nll > 0 else None
    coded_with = sorted({r["model_name"] for r in row["per_image"] if "model_name" in r})
    if coded_with:  # what the files say they were coded with ("default" resolves here)
        row["model_names"] = coded_with
    payloads = [r.get("payload_bytes") for r in row["per_image"]]
    if None not in payloads:
        payload_bpsp = sum(payloads) * BITS_PER_BYTE / row["total_subpixels"]
        row["payload_bits_per_subpixel"] = payload_bpsp
        row["payload_overhead_pct"] = 100.0 * (payload_bpsp / nll - 1.0) if nll > 0 else None
    return row


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _model_mismatch(sample: Sample, out: Any) -> str | None:
    """The decoded Pillow image must have the original's mode and pixels."""
    mode = getattr(out, "mode", None)
    if mode != sample.image.mode:
        return f"decoded mode {mode!r}, expected {sample.image.mode!r}"
    return common.pixel_mismatch(sample.array, common.image_to_array(out))


# --- reporting -----------------------------------------------------------------------------


def report_table(rows: Sequence[dict]) -> str:
    header = [
        "codec",
        "bits/subpixel",
        "encode MP/s",
        "decode MP/s",
        "device",
        "threads",
        "model NLL",
        "overhead",
        "lossless",
    ]
    body = []
    for r in rows:
        if r["status"] == "skipped":
            continue
        overhead = r.get("overhead_pct")
        body.append(
            [
                r["label"],
                common.fmt(r.get("bits_per_subpixel")),
                common.fmt_speed(r.get("encode_mps")),
                common.fmt_speed(r.get("decode_mps")),
                r["device"],
                str(r["threads"]),
                common.fmt(r.get("nll_bits_per_subpixel")),
                "-" if overhead is None else f"{overhead:+.2f}%",
                "yes" if r.get("lossless") else "**NO**",
            ]
        )
    text = common.markdown_table(header, body)
    skipped = [f"- {r['label']}: skipped ({r['reason']})" for r in rows if r["status"] == "skipped"]
    return text + ("\n\n" + "\n".join(skipped) if skipped else "")


def write_plots(rows: Sequence[dict], out: Path) -> dict[str, Any]:
    """Bar chart of bits/subpixel, and bits/subpixel vs decode MP/s (log x). Returns
    {"files": [...]} or {"skipped": reason}."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only; never a window
        import matplotlib.pyplot as plt
    except ImportError as e:
        return {"skipped": f"matplotlib not installed ({e})"}
    done = [r for r in rows if r["status"] == "ok" and r.get("bits_per_subpixel") is not None]
    colors = ["tab:orange" if r["kind"] == "nncompress" else "tab:blue" for r in done]
    files = []

    fig, ax = plt.subplots(figsize=(8, 0.4 * len(done) + 1.5))
    ax.barh([r["label"] for r in done], [r["bits_per_subpixel"] for r in done], color=colors)
    ax.invert_yaxis()
    ax.set_xlabel("bits / subpixel (lower is better)")
    ax.set_xlim(0, BAR_XLIM_MARGIN * max((r["bits_per_subpixel"] for r in done), default=1.0))
    for i, r in enumerate(done):
        ax.text(r["bits_per_subpixel"], i, f" {r['bits_per_subpixel']:.3f}", va="center")
    fig.tight_layout()
    path = out / "bits_per_subpixel.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    files.append(path.name)

    fast = [(r, c) for r, c in zip(done, colors, strict=True) if r.get("decode_mps")]
    fig, ax = plt.subplots(figsize=(7, 5))
    for r, c in fast:
        ax.scatter(r["decode_mps"], r["bits_per_subpixel"], color=c)
        ax.annotate(
            r["name"],
            (r["decode_mps"], r["bits_per_subpixel"]),
            xytext=LABEL_OFFSET,
            textcoords="offset points",
            fontsize=8,
        )
    ax.set_xscale("log")
    ax.set_xlabel("decode MP/s (log)")
    ax.set_ylabel("bits / subpixel")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path = out / "bits_vs_decode_speed.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    files.append(path.name)
    return {"files": files}


# --- main ----------------------------------------------------------------------------------


def load_samples(folder: str, quick: bool) -> list[Sample]:
    paths = common.list_images(folder)
    if not quick:
        return [common.load_sample(p) for p in paths]
    samples = []
    for p in paths[:QUICK_IMAGES]:
        crop = common.center_crop(common.load_sample(p).image, QUICK_CROP, QUICK_CROP)
        samples.append(common.make_sample(p.name, crop))
    return samples


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", help="folder of images (png, webp, ...; RGB or L)")
    p.add_argument(
        "--models",
        default="",
        help="comma-separated nncompress model names or paths ('default': the api's default)",
    )
    p.add_argument("--device", default="auto", help="device for models: auto, cpu or cuda")
    p.add_argument(
        "--tile", type=common.positive_int, default=None, help="tile size for nncompress models"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"first {QUICK_IMAGES} images, center-cropped to {QUICK_CROP}x{QUICK_CROP} (CI)",
    )
    p.add_argument("--out", default="bench-out", help="output folder (default: bench-out/)")
    p.add_argument("--codecs", default=None, help="comma-separated classical codecs, or 'none'")
    p.add_argument(
        "--method",
        default="model",
        choices=("model", "auto"),
        help="how nncompress rows code: 'model' (default: every image by the model, the "
        "model's own numbers) or 'auto' (best of model and classical codecs per image)",
    )
    p.add_argument(
        "--per-image-models",
        action="store_true",
        help="time nncompress one image per api call (default: one batch call for all)",
    )
    p.add_argument(
        "--torch-threads",
        type=common.positive_int,
        default=None,
        help="torch CPU threads for the models (default: torch's; use 1 on a busy machine)",
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None, registry: dict[str, Codec] | None = None) -> int:
    """Run the comparison; returns the exit status. ``registry``: codec name -> Codec
    (default: common.classical_codecs())."""
    args = parse_args(argv)
    with common.torch_threads(args.torch_threads):
        return _compare(args, registry)


def _compare(args: argparse.Namespace, registry: dict[str, Codec] | None) -> int:
    # One thread for oxipng too (rayon reads this once, at its first parallel call).
    os.environ.setdefault(common.RAYON_THREADS_ENV, "1")
    try:
        codecs = common.select_codecs(registry or common.classical_codecs(), args.codecs)
        samples = load_samples(args.folder, args.quick)
    except BenchmarkError as e:
        print(f"error: {e}", file=sys.stderr)
        return common.EXIT_USAGE
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    rows = []
    for codec in codecs.values():
        print(f"{codec.name} ...", file=sys.stderr, flush=True)
        rows.append(run_classical(codec, samples, failures))

    device = None
    if models:
        api, reason = common.import_api()
        if api is None:
            for spec in models:
                rows.append(
                    {
                        "name": NNC_PREFIX + spec,
                        "label": f"nncompress {spec}",
                        "kind": "nncompress",
                        "device": args.device,
                        "status": "skipped",
                        "reason": reason,
                    }
                )
        else:
            device = common.resolve_device_name(args.device)
            for spec in models:
                print(f"{NNC_PREFIX}{spec} ...", file=sys.stderr, flush=True)
                rows.append(
                    run_model(
                        api,
                        spec,
                        samples,
                        device,
                        args.tile,
                        args.per_image_models,
                        failures,
                        args.method,
                    )
                )

    table = report_table(rows)
    plots = write_plots(rows, out)
    results = {
        "tool": "benchmarks/compare.py",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "args": vars(args),
        "environment": common.environment(device),
        "images": [
            {"name": s.name, "width": s.width, "height": s.height, "channels": s.channels}
            for s in samples
        ],
        "total_subpixels": sum(s.subpixels for s in samples),
        "codecs": rows,
        "plots": plots,
        "failures": failures,
        "notes": [
            "bits/subpixel = total file bits / total subpixels; MP/s = median over images "
            "of megapixels per second (nncompress in batch mode: total pixels / total time)",
            "classical codecs run single-threaded where the library allows ('threads')",
            "model NLL from api.score over the tiles the coder uses; overhead = coded / NLL - 1 "
            "(coded = whole .nnc files, headers included)",
        ],
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(table + "\n")
    print(table)
    print(f"\nwrote {out / 'results.json'}, {out / 'results.md'}", end="")
    print(", " + ", ".join(str(out / f) for f in plots.get("files", [])))
    return common.exit_status(failures)


if __name__ == "__main__":
    sys.exit(main())
