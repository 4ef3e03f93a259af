"""Several devices of one host: coding a folder across them, and DDP training throughput.

    python benchmarks/multi_gpu.py code DIR --devices cuda cuda:all      # one GPU vs all
    python benchmarks/multi_gpu.py train DIR --nproc 1 2 --steps 400    # torchrun, NCCL on GPUs

``code``: every image of DIR coded (method model by default: the model's own work) once per
device spec, in one API call each way, timed as a user's call (worker start-up included);
the files of every spec must be byte-identical to the first spec's and decode to the
original content. ``train``: ``torchrun --nproc_per_node=N -m nncompress.train.cli`` for
each N at the same per-process batch and step count (so N times the samples), on CUDA with
NCCL when there is a GPU per process, else gloo on CPU; throughput from the training log
(images per second, last half of the run) and validation bits/subpixel at the end, and at
the same number of samples seen (the 1-process run's last point against the N-process run's
point with that many samples). Keeps NCCL_NVLS_ENABLE=0 (NVLink multicast off) in the
environment it builds. Prints a table and writes JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: the package from this checkout
    sys.path.insert(0, str(REPO))

IMAGE_SUFFIXES = (".png", ".webp", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif")


def _images(folder: str) -> list[Path]:
    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise SystemExit(f"no images in {folder}")
    return paths


def code(args: argparse.Namespace) -> dict:
    from nncompress import api
    from nncompress.content import read_content

    contents = [read_content(str(p)) for p in _images(args.folder)]
    mp = sum(c.width * c.height * len(c.frames) for c in contents) / 1e6
    rows, first = [], None
    for spec in args.devices:
        t = time.perf_counter()
        res = api.compress_detailed(contents, model=args.model, device=spec, method=args.method)
        enc = time.perf_counter() - t
        blobs = [r.data for r in res]
        t = time.perf_counter()
        back = api.decompress_detailed(blobs, device=spec)
        dec = time.perf_counter() - t
        exact = all(api.same_content(c, d.content) for c, d in zip(contents, back, strict=True))
        first = first or blobs
        rows.append(
            {
                "device": spec,
                "images": len(contents),
                "megapixels": round(mp, 3),
                "encode_s": round(enc, 2),
                "decode_s": round(dec, 2),
                "encode_mps": round(mp / enc, 3),
                "decode_mps": round(mp / dec, 3),
                "bits_per_subpixel": 8 * sum(map(len, blobs)) / sum(c.samples for c in contents),
                "exact": exact,
                "same_files_as_first": blobs == first,
            }
        )
    base = rows[0]
    for r in rows:
        r["encode_speedup"] = round(base["encode_s"] / r["encode_s"], 2)
        r["decode_speedup"] = round(base["decode_s"] / r["decode_s"], 2)
    cols = ["device", "images", "megapixels", "encode_s", "decode_s", "encode_mps"]
    cols += ["decode_mps", "encode_speedup", "decode_speedup", "exact", "same_files_as_first"]
    _table(rows, cols)
    return {"code": rows}


def _samples_at(curve: list[dict], per_step: int) -> list[tuple[int, float]]:
    return [(e["step"] * per_step, e["val_bpd"]) for e in curve if e.get("val_bpd") is not None]


def train(args: argparse.Namespace) -> dict:
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    rows = []
    work = Path(tempfile.mkdtemp(prefix="nnc-ddp-"))
    for n in args.nproc:
        on_gpu = gpus >= n
        out = work / f"n{n}.safetensors"
        cmd = [
            sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}",
            "--standalone", "-m", "nncompress.train.cli", args.folder, "-o", str(out),
            "--size", args.size, "--crop", str(args.crop), "--batch", str(args.batch),
            "--steps", str(args.steps), "--val-fraction", "0.1", "--val-every",
            str(max(1, args.steps // 4)), "--no-progress", "--no-ckpt", "--force",
        ]  # fmt: skip
        if not on_gpu:
            cmd += ["--device", "cpu", "--threads", "1"]
        env = {**os.environ, "NCCL_NVLS_ENABLE": "0", "OMP_NUM_THREADS": "1"}
        t = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t
        if r.returncode != 0:
            raise SystemExit(f"torchrun with {n} processes failed:\n{r.stderr[-3000:]}")
        curve = json.loads(out.with_suffix(".log.json").read_text())["curve"]
        half = [e["img_per_s"] for e in curve if e["step"] > args.steps // 2 and e.get("img_per_s")]
        vals = _samples_at(curve, args.batch * n)
        rows.append(
            {
                "processes": n,
                "device": "cuda" if on_gpu else "cpu",
                "backend": "nccl" if on_gpu else "gloo",
                "batch_per_process": args.batch,
                "steps": args.steps,
                "img_per_s": round(sorted(half)[len(half) // 2], 1) if half else None,
                "wall_s": round(wall, 1),
                "val_bpd_end": vals[-1][1] if vals else None,
                "val_curve": vals,
            }
        )
    base = rows[0]
    for r in rows:
        r["speedup"] = round(r["img_per_s"] / base["img_per_s"], 2) if base["img_per_s"] else None
        # validation at the samples the first run saw in all (nearest point of this run)
        seen = base["val_curve"][-1][0] if base["val_curve"] else None
        near = (
            min(r["val_curve"], key=lambda v: abs(v[0] - seen)) if seen and r["val_curve"] else None
        )
        r["val_bpd_at_base_samples"] = near[1] if near else None
    _table(rows, ["processes", "device", "backend", "batch_per_process", "steps", "img_per_s",
                  "speedup", "wall_s", "val_bpd_end", "val_bpd_at_base_samples"])  # fmt: skip
    return {"train": rows}


def _table(rows: list[dict], cols: list[str]) -> None:
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        cells = [f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in cols]
        print("| " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    c = sub.add_parser("code", help="code a folder on each device spec")
    c.add_argument("folder")
    c.add_argument("--devices", nargs="+", default=["cuda", "cuda:all"])
    c.add_argument("--model", default=None, help="model name or file (default: by image mode)")
    c.add_argument("--method", default="model", choices=("model", "auto"))
    t = sub.add_parser("train", help="torchrun throughput for each process count")
    t.add_argument("folder")
    t.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    t.add_argument("--steps", type=int, default=400)
    t.add_argument("--batch", type=int, default=64, help="crops per process per step")
    t.add_argument("--crop", type=int, default=32)
    t.add_argument("--size", default="small", choices=("tiny", "small", "base", "large"))
    for q in (c, t):
        q.add_argument("--out", default=None, help="JSON file to write")
    args = p.parse_args(argv)
    result = code(args) if args.what == "code" else train(args)
    result["args"] = vars(args)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
