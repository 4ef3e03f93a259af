"""Cut built training photos into patches and pack them into carry-sized shards.

usage: python benchmarks/training_photos/patch_shards.py OUT SRC [SRC ...]
         [--patch 256] [--shard-mib 50] [--seed 0] [--method 4] [--jobs 2]

A lent GPU machine receives at most 64 MiB per call, far less than the ~430 MB that the
training photographs take as lossless WebP. So training runs over several calls, each on one
shard, and every shard should look like the whole set: each image (``*.webp`` under each SRC,
searched recursively; folders named ``heldout`` are left out) is cut into a grid of patches of
about PATCH pixels a side (each side is split into ceil(L / PATCH) near-equal parts, so no
pixel is dropped and no part is below PATCH/2 unless the image is), all patches are shuffled
with SEED, and shards are filled in that order up to SHARD_MIB each. The shards are disjoint
and together hold every pixel once. Output: OUT/shard-NNN/*.webp (lossless) and
OUT/PATCHES.tsv (shard, file, source image, y, x, height, width). Deterministic for a given
input, Pillow version and arguments.
"""

from __future__ import annotations

import argparse
import csv
import io
import multiprocessing
import random
import sys
from pathlib import Path

import numpy as np
from PIL import Image


def cuts(length: int, patch: int) -> list[tuple[int, int]]:
    """(start, size) of ceil(length / patch) near-equal parts covering 0..length."""
    n = max(1, -(-length // patch))
    edges = [round(i * length / n) for i in range(n + 1)]
    return [(a, b - a) for a, b in zip(edges, edges[1:])]


def sources(roots: list[Path]) -> list[tuple[str, Path]]:
    out = []
    for root in roots:
        for p in sorted(root.rglob("*.webp")):
            if "heldout" in p.relative_to(root).parts:
                continue
            out.append((f"{root.name}/{p.relative_to(root)}", p))
    return out


def webp(pixels: np.ndarray, method: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="WEBP", lossless=True, quality=100, method=method)
    return buf.getvalue()


def encode_image(job: tuple[Path, int, int]) -> list[tuple[int, int, int, int, bytes]]:
    path, patch, method = job
    with Image.open(path) as im:
        a = np.asarray(im.convert("RGB"))
    h, w = a.shape[:2]
    return [
        (y, x, ph, pw, webp(np.ascontiguousarray(a[y : y + ph, x : x + pw]), method))
        for y, ph in cuts(h, patch)
        for x, pw in cuts(w, patch)
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("src", type=Path, nargs="+")
    ap.add_argument("--patch", type=int, default=256)
    ap.add_argument("--shard-mib", type=float, default=50.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--method", type=int, default=4, choices=range(7), help="WebP effort")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        sys.exit(f"error: {args.out} is not empty")
    files = sources(args.src)
    if not files:
        sys.exit("error: no .webp images under " + " ".join(map(str, args.src)))
    jobs = [(path, args.patch, args.method) for _, path in files]
    with multiprocessing.Pool(args.jobs) as pool:
        cut = pool.map(encode_image, jobs, chunksize=4)  # per image: [(y, x, h, w, bytes)]
    patches = [(name, *p) for (name, _), parts in zip(files, cut) for p in parts]
    random.Random(args.seed).shuffle(patches)
    args.out.mkdir(parents=True, exist_ok=True)
    limit = int(args.shard_mib * 2**20)
    shard, used, pixels, rows = 0, 0, 0, []
    for i, (name, y, x, ph, pw, data) in enumerate(patches):
        if used + len(data) > limit and used:
            shard, used = shard + 1, 0
        d = args.out / f"shard-{shard:03d}"
        d.mkdir(exist_ok=True)
        fname = f"p{i:06d}.webp"
        (d / fname).write_bytes(data)
        used += len(data)
        pixels += ph * pw
        rows.append((d.name, fname, name, y, x, ph, pw))
    with open(args.out / "PATCHES.tsv", "w", newline="") as f:
        wr = csv.writer(f, delimiter="\t", lineterminator="\n")
        wr.writerow(["shard", "file", "source", "y", "x", "height", "width"])
        wr.writerows(rows)
    print(
        f"{len(files)} images, {len(patches)} patches, {pixels / 1e6:.1f} MP "
        f"in {shard + 1} shards of <= {args.shard_mib:g} MiB"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
