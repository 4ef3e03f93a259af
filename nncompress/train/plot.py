"""Training curves from the JSON log: bits/subpixel against steps and against minutes.

matplotlib is an optional dependency (``pip install nncompress[bench]``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import NncError

FIGURE_SIZE = (10.0, 4.0)  # inches: two panels side by side
DPI = 120


def plot_curve(log_json_path: str | Path, out_png: str | Path) -> None:
    """Write a PNG with train and validation bits/subpixel vs steps (left) and vs training
    minutes (right). NncError if matplotlib is missing or the log is unusable."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise NncError("plotting needs matplotlib: pip install matplotlib") from None
    try:
        doc = json.loads(Path(log_json_path).read_text())
        curve = doc["curve"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise NncError(f"{log_json_path}: not a training log ({e})") from None
    train = [e for e in curve if e.get("train_bpd") is not None]
    val = [e for e in curve if e.get("val_bpd") is not None]
    if not train and not val:
        raise NncError(f"{log_json_path}: the log has no points yet")
    fig, axes = plt.subplots(1, 2, figsize=FIGURE_SIZE, sharey=True)
    for ax, key, scale, label in (
        (axes[0], "step", 1.0, "step"),
        (axes[1], "elapsed_s", 1 / 60, "training minutes"),
    ):
        if train:
            ax.plot(
                [e[key] * scale for e in train],
                [e["train_bpd"] for e in train],
                label="train (crops)",
                lw=1,
            )
        if val:
            ax.plot(
                [e[key] * scale for e in val],
                [e["val_bpd"] for e in val],
                "o-",
                label="validation (tiles, EMA)",
                ms=3,
            )
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("bits / subpixel")
    axes[0].legend()
    title = doc.get("family", "")
    if doc.get("model_config"):
        title += " " + ", ".join(f"{k}={v}" for k, v in doc["model_config"].items())
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out_png, dpi=DPI)
    plt.close(fig)


if __name__ == "__main__":  # python -m nncompress.train.plot LOG.json OUT.png
    if len(sys.argv) != 3:
        sys.exit("usage: python -m nncompress.train.plot LOG.json OUT.png")
    plot_curve(sys.argv[1], sys.argv[2])
