"""benchmarks/training_photos/patch_shards.py: the shards hold every source pixel exactly once,
leave held-out folders out, stay under their size, and come out the same for the same seed."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.training_photos import patch_shards


def test_cuts_cover_the_length_in_near_equal_parts():
    for length, patch in [(1, 256), (255, 256), (256, 256), (257, 256), (1000, 256), (37, 8)]:
        parts = patch_shards.cuts(length, patch)
        assert len(parts) == -(-length // patch)
        assert parts[0][0] == 0 and sum(s for _, s in parts) == length
        assert all(a + s == b for (a, s), (b, _) in zip(parts, parts[1:]))
        assert max(s for _, s in parts) - min(s for _, s in parts) <= 1


def _write(path: Path, h: int, w: int, seed: int) -> np.ndarray:
    a = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path, format="WEBP", lossless=True)
    return a


def test_shards_reassemble_every_pixel_once_and_skip_heldout(tmp_path):
    src = tmp_path / "src"
    images = {
        "a.webp": _write(src / "a.webp", 70, 45, 0),
        "sub/b.webp": _write(src / "sub" / "b.webp", 20, 33, 1),
    }
    _write(src / "heldout" / "c.webp", 16, 16, 2)
    out = tmp_path / "out"
    limit_mib = 0.01  # ~10 KB: several shards from incompressible noise
    assert (
        patch_shards.main(
            [str(out), str(src), "--patch", "16", "--shard-mib", str(limit_mib), "--jobs", "1"]
        )
        == 0
    )
    rebuilt = {k: np.zeros_like(v) for k, v in images.items()}
    seen = {k: np.zeros(v.shape[:2], int) for k, v in images.items()}
    with open(out / "PATCHES.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert not any("heldout" in r["source"] for r in rows)
    for r in rows:
        name = r["source"].split("/", 1)[1]
        y, x, h, w = (int(r[k]) for k in ("y", "x", "height", "width"))
        patch = np.asarray(Image.open(out / r["shard"] / r["file"]).convert("RGB"))
        assert patch.shape == (h, w, 3)
        rebuilt[name][y : y + h, x : x + w] = patch
        seen[name][y : y + h, x : x + w] += 1
    for k in images:
        assert (seen[k] == 1).all()
        np.testing.assert_array_equal(rebuilt[k], images[k])
    shards = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(shards) > 1
    for d in shards:
        files = list(d.iterdir())
        total = sum(p.stat().st_size for p in files)
        assert total <= limit_mib * 2**20 or len(files) == 1
    again = tmp_path / "again"
    patch_shards.main(
        [str(again), str(src), "--patch", "16", "--shard-mib", str(limit_mib), "--jobs", "1"]
    )
    assert (again / "PATCHES.tsv").read_bytes() == (out / "PATCHES.tsv").read_bytes()


def test_refuses_a_non_empty_output(tmp_path):
    _write(tmp_path / "src" / "a.webp", 8, 8, 0)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("keep")
    with pytest.raises(SystemExit, match="not empty"):
        patch_shards.main([str(tmp_path / "out"), str(tmp_path / "src")])
    assert (tmp_path / "out" / "x").read_text() == "keep"
