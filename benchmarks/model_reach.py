"""How far a PixelCNN++ model's prediction of a pixel reaches into the image (issue 18, step
1: the reach a wavefront schedule must respect).

For a pixel (y, x) well inside a wide image, the gradient of its mixture parameters with
respect to every input subpixel says which pixels it depends on (the autoregressive tests in
tests/test_pixelcnnpp.py use the same method). For each row above (dy = -1, -2, ...) and the
current row (dy = 0) this prints the leftmost and rightmost column offset with a non-zero
gradient, and how much of the gradient's mass lies within a given distance: the exact
reach bounds what a schedule may run side by side; the mass says how much context a
bounded-reach variant would give up.

    python benchmarks/model_reach.py --model pixelcnnpp-photo-small --json reach.json

Runs on the CPU in seconds (the float model: the integer model has the same structure,
so the same reach). Positions are taken at several columns and the union is reported.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nncompress.zoo import load_model  # noqa: E402


def reach(
    model, h: int, w: int, positions: list[tuple[int, int]], seed: int = 0, device: str = "cpu"
) -> dict:
    """Per row offset dy: (min dx, max dx) of non-zero gradient, over ``positions``, and the
    gradient mass |g| summed per (dy, dx) (normalised per position)."""
    g = torch.Generator().manual_seed(seed)
    model = model.to(device)
    x = (torch.rand(1, model.channels, h, w, generator=g) * 255).to(device).requires_grad_()
    spans: dict[int, list[int]] = {}
    mass: dict[tuple[int, int], float] = {}
    for py, px in positions:
        params = model.params(x)[0, :, py, px]
        weights = torch.randn(params.shape, generator=g).to(device)
        (grad,) = torch.autograd.grad((params * weights).sum(), x)
        moved = grad[0].abs().sum(0).cpu().numpy().astype(np.float64)
        total = moved.sum()
        for yy, xx in zip(*np.nonzero(moved), strict=True):
            dy, dx = int(yy) - py, int(xx) - px
            s = spans.setdefault(dy, [dx, dx])
            s[0], s[1] = min(s[0], dx), max(s[1], dx)
            mass[(dy, dx)] = mass.get((dy, dx), 0.0) + moved[yy, xx] / total / len(positions)
    return {"spans": spans, "mass": mass}


def _within(mass: dict, right: int) -> float:
    """Share of the gradient mass on pixels at most ``right`` columns to the right in the
    rows above (every pixel of the current row and to the left counts)."""
    return sum(v for (dy, dx), v in mass.items() if dy == 0 or dx <= right)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", help="model name or path (repeatable)")
    ap.add_argument("--height", type=int, default=96)
    ap.add_argument("--width", type=int, default=384)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)
    names = args.model or ["pixelcnnpp-photo-small", "pixelcnnpp-photo"]
    h, w = args.height, args.width
    # the last rows (most rows above them), at every row and column phase of the two
    # downsamplings (by 2 and by 4): the reach differs between phases
    positions = [(h - 1 - a, w // 2 + b) for a in range(4) for b in range(4)]
    out = {}
    for name in names:
        lm = load_model(name)
        model = lm.model.float().eval()
        r = reach(model, h, w, positions, device=args.device)
        spans = r["spans"]
        above = [s for dy, s in spans.items() if dy < 0]
        right = max(s[1] for s in above)
        left_above = min(s[0] for s in above)
        left_row = spans.get(0, [0, 0])[0]
        rows_up = -min(spans)
        row_right = {dy: spans[dy][1] for dy in sorted(spans) if dy < 0}
        shares = {k: round(_within(r["mass"], k), 6) for k in (0, 4, 8, 16, 32, 64)}
        out[name] = {
            "reach_right_rows_above": right,
            "reach_left_rows_above": -left_above,
            "reach_left_current_row": -left_row,
            "rows_up": rows_up,
            "right_per_row_above": row_right,
            "gradient_share_within_right": shares,
            "image": [h, w],
            "positions": positions,
        }
        print(f"{name}: {h}x{w} image, {len(positions)} positions from {positions[0]}")
        print(
            f"  rows above: columns {left_above:+d} .. {right:+d}; current row: from {left_row:+d}"
        )
        print(f"  rows up reached: {rows_up} (the image's top: {h - 1} rows above)")
        first = ", ".join(f"{dy}:{row_right[dy]:+d}" for dy in sorted(row_right, reverse=True)[:8])
        print(f"  rightmost column per row above (dy:dx): {first}, ...")
        print("  share of gradient mass within R columns to the right (rows above):")
        print("   " + "  ".join(f"R={k}: {v:.4f}" for k, v in shares.items()))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
