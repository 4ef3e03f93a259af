"""Plan a wavefront coding schedule from measurements (issue 18): each model's reach, the
smallest lag a chunk must keep behind its left neighbour, the coding steps and batch of a
photo under each schedule, and the bits/subpixel each schedule's context gives on a folder.

Schedule "strips hs x wc": the image in strips of hs rows and the full width, each strip
cut into column chunks of wc that advance in lockstep, chunk c starting D steps after chunk
c - 1, so that every pixel sees what a raster scan of its strip gives it. Pixel (r, q) of
chunk c = q // wc is coded at step T = r * wc + (q - c * wc) + c * D; the schedule is valid
when every pixel the model reads (by the gradients of benchmarks/model_reach.py) has a
smaller T. The context of such a strip is the strip alone, so its bits are those of the
parallel pass over the strip as an image of its own (a tile of hs x W): this script scores
that, without the stepper.

    python benchmarks/wavefront_plan.py ../shared/data/photos/val --device cuda --json plan.json

Float models (the integer models share their structure, and their scores track the float
ones within ~0.1%); the numbers are parallel-pass bits, not coded files.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from model_reach import reach  # noqa: E402

from nncompress.planes import score_planes  # noqa: E402
from nncompress.zoo import load_model  # noqa: E402


def support(spans: dict[int, list[int]], rows: int) -> list[tuple[int, int]]:
    """Every (dy, dx) the model may read, down to ``rows`` rows up: the measured spans, the
    deepest measured row's span repeated above it (the receptive field's width saturates)."""
    deepest = min(spans)
    out = []
    for dy in range(-rows, 1):
        lo, hi = spans[max(dy, deepest)]
        if dy == 0:
            hi = -1  # the current row: only to the left
        out += [(dy, dx) for dx in range(lo, hi + 1)]
    return out


def min_lag(sup: list[tuple[int, int]], wc: int, chunks: int = 6) -> int | None:
    """The smallest D (steps a chunk starts after its left neighbour) under which every read
    pixel is coded earlier, checked for every column of ``chunks`` chunks; None if none
    up to wc * 8 works."""
    dy = np.array([s[0] for s in sup])[None, :]
    dx = np.array([s[1] for s in sup])[None, :]
    q = np.arange(wc * (chunks // 2), wc * chunks)[:, None]  # pixels in the middle chunks
    c, cq = q // wc, (q + dx) // wc
    ok_cols = (q + dx >= 0) & (cq < chunks)
    for d in range(0, wc * 8 + 1):
        t = q - c * wc + c * d
        tr = dy * wc + (q + dx) - cq * wc + cq * d
        if bool(((tr < t) | ~ok_cols).all()):
            return d
    return None


def schedule(h: int, w: int, hs: int, wc: int, d: int) -> dict:
    """Steps and batch of one h x w image under strips hs x wc with lag d."""
    strips, chunks = math.ceil(h / hs), math.ceil(w / wc)
    rows = min(hs, h)
    steps = rows * wc + (chunks - 1) * d
    return {
        "steps": steps,
        "batch": strips * chunks,
        "busy": round(rows * wc / steps, 3),  # share of slot-steps coding
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--model", action="append")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--strips", default="16,32,64,128,256", help="strip heights to score")
    ap.add_argument("--widths", default="32,64,72,96,128,144,192", help="chunk widths to plan")
    ap.add_argument("--limit", type=int, help="only the first N images")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    names = args.model or ["pixelcnnpp-photo-small", "pixelcnnpp-photo"]
    files = common.list_images(args.folder)
    files = files[: args.limit] if args.limit else files
    images = [common.load_sample(p).array.transpose(2, 0, 1).copy() for p in files]
    subpixels = sum(im.size for im in images)
    strips = [int(s) for s in args.strips.split(",")]
    widths = [int(s) for s in args.widths.split(",")]
    out = {"folder": str(args.folder), "images": len(images), "subpixels": subpixels}
    for name in names:
        lm = load_model(name)
        net = lm.model.float().eval()
        h, w = 96, 384
        # every row and column phase of the two downsamplings (by 2 and 4)
        pos = [(h - 1 - a, w // 2 + b) for a in range(4) for b in range(4)]
        r = reach(net, h, w, pos, device=args.device)
        sup = support(r["spans"], 512)
        lags = {wc: min_lag(sup, wc) for wc in widths}
        res = {"reach_spans": r["spans"], "min_lag": lags, "bits": {}}
        t0 = time.perf_counter()
        configs = [("tiles 32x32", 32), ("tiles 64x64", 64), ("tiles 128x128", 128)]
        configs += [(f"strips {hs}", hs) for hs in strips] + [("full image", None)]
        for label, cfg in configs:
            total = 0.0
            for im in images:
                if label.startswith("strips"):
                    tile = (min(cfg, im.shape[1]), im.shape[2])
                elif cfg is None:
                    tile = (im.shape[1], im.shape[2])
                else:
                    tile = cfg
                bits, _ = score_planes(lm, im, dev, tile, max_batch=16)
                total += bits
            res["bits"][label] = total / subpixels
            print(f"{name:24s} {label:14s} {total / subpixels:.4f} bits/subpixel", flush=True)
        res["score_seconds"] = round(time.perf_counter() - t0, 1)
        full = res["bits"]["full image"]
        print(f"\n{name}: rows above reach {min(s[0] for s in r['spans'].values())}.."
              f"+{max(s[1] for dy, s in r['spans'].items() if dy < 0)} columns; "
              f"smallest lag D per chunk width: {lags}")  # fmt: skip
        print("| schedule | bits/subpixel | vs full image | steps (768x512) | batch | busy |")
        print("|---|---|---|---|---|---|")
        rows = []
        for label, b in res["bits"].items():
            if label.startswith("tiles"):
                t = int(label.split()[1].split("x")[0])
                sch = {"steps": t * t, "batch": math.ceil(512 / t) * math.ceil(768 / t), "busy": 1}
                rows.append((label, b, sch))
            elif label.startswith("strips"):
                hs = int(label.split()[1])
                for wc, d in lags.items():
                    if d is not None:
                        rows.append(
                            (f"strips {hs} x {wc} (D={d})", b, schedule(512, 768, hs, wc, d))
                        )
            else:
                for wc, d in [(wc, d) for wc, d in lags.items() if d is not None][:1]:
                    rows.append((f"full image x {wc} (D={d})", b, schedule(512, 768, 512, wc, d)))
        for label, b, sch in rows:
            print(f"| {label} | {b:.4f} | {100 * (b / full - 1):+.2f}% | {sch['steps']} | "
                  f"{sch['batch']} | {sch['busy']} |")  # fmt: skip
        res["table"] = [{"schedule": lab, "bits": b, **s} for lab, b, s in rows]
        out[name] = res
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
