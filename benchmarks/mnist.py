"""MNIST held-out digits: nncompress models against PNG, verified lossless.

    python benchmarks/mnist.py [--models histogram-mnist,made-mnist] [--device cpu] [--out DIR]

Two views of the same 500 held-out digits (the last 500 of shared/data/mnist/mnist_5k.npz):
- per digit: 500 separate files (headers included: what a user gets per file);
- grid: the digits tiled 20 x 25 into one 560 x 700 image (28x28 cells align with MADE's tiles).
Reports bits/subpixel of files and of payloads, the model's ideal bits, encode/decode seconds.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nncompress import api, files  # noqa: E402
from nncompress.container import file as fmt  # noqa: E402

DEFAULT_NPZ = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist" / "mnist_5k.npz"
HELD_OUT = slice(4500, 5000)
GRID_COLS = 25


def png_bytes(im: Image.Image) -> int:
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.tell()


def _model_payload(data: bytes) -> bytes:
    """The coder streams of a file's model part (what format 4 called the payload)."""
    f = files.parse(data)
    h = f.header
    (part,) = [d for e, d in f.parts() if e.method == "model"]
    mode = "L" if h.mode in ("L", "LA") else "RGB"
    return fmt.unpack_model_part(part, mode, h.width, h.height)[1]


def run_model(name: str, images: list[Image.Image], device: str) -> dict[str, float]:
    lm = api.load_model(name)
    t0 = time.perf_counter()
    res = api.compress_detailed(images, lm, device, method="model")
    t1 = time.perf_counter()
    out = api.decompress_many([r.data for r in res], lm, device)
    t2 = time.perf_counter()
    for a, b in zip(out, images):
        if not np.array_equal(np.asarray(a), np.asarray(b)):
            raise SystemExit(f"LOSSLESS FAILURE: {name}")
    sub = sum(r.subpixels for r in res)
    payload = sum(len(_model_payload(r.data)) for r in res)
    return {
        "file_bits_per_subpixel": 8 * sum(len(r.data) for r in res) / sub,
        "payload_bits_per_subpixel": 8 * payload / sub,
        "model_bits_per_subpixel": sum(r.info_bits for r in res) / sub,
        "encode_s": t1 - t0,
        "decode_s": t2 - t1,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="histogram-mnist,made-mnist")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--npz", default=str(DEFAULT_NPZ))
    ap.add_argument("--out", default="bench-out")
    a = ap.parse_args(argv)
    digits = np.load(a.npz)["images"][HELD_OUT]
    singles = [Image.fromarray(d, "L") for d in digits]
    rows = len(digits) // GRID_COLS
    grid = Image.fromarray(
        digits[: rows * GRID_COLS]
        .reshape(rows, GRID_COLS, 28, 28)
        .transpose(0, 2, 1, 3)
        .reshape(rows * 28, GRID_COLS * 28),
        "L",
    )
    sub = digits.size
    results: dict[str, dict] = {
        "png (per digit, optimize)": {
            "file_bits_per_subpixel": 8 * sum(map(png_bytes, singles)) / sub
        },
        "png (grid, optimize)": {
            "file_bits_per_subpixel": 8 * png_bytes(grid) / grid.width / grid.height
        },
    }
    for name in [m for m in a.models.split(",") if m]:
        results[f"{name} (per digit)"] = run_model(name, singles, a.device)
        results[f"{name} (grid)"] = run_model(name, [grid], a.device)
    cols = [
        "file_bits_per_subpixel",
        "payload_bits_per_subpixel",
        "model_bits_per_subpixel",
        "encode_s",
        "decode_s",
    ]
    lines = ["| codec | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for k, r in results.items():
        cells = [f"{r[c]:.3f}" if c in r else "-" for c in cols]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(f"500 held-out MNIST digits, device {a.device}\n\n{table}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "mnist.json").write_text(json.dumps(results, indent=2))
    (out / "mnist.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
