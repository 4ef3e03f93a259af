"""Where the time of the integer path's coding steps goes (a development tool).

    python benchmarks/int_step_profile.py [--model NAME|PATH] [--device cpu|cuda]
                                          [--tile 32] [--batch 384] [--rows 4] [--threads 1]
                                          [--ops 12] [--out OUT.json]

Drives one batch of random tiles through the stepper (with the coder's step runner: CUDA
graphs on CUDA) and the coder's channel tables for ``--rows`` rows, a device
synchronisation around every part, and prints milliseconds per part: a row start (the
step at x = 0 of rows y >= 2, which computes the u stream's rows; split by how many levels
start a row), a pixel step (x > 0) and the tables of each channel. The estimate for a
whole image of ``--image`` pixels (default 768x512) adds them up as the coder runs them.
With ``--ops N`` (CPU, or CUDA with NNCOMPRESS_CUDA_GRAPHS=0), the N ops that take most
self time in each part are listed, from the torch profiler.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nncompress import api  # noqa: E402
from nncompress.codec import ChannelPmfs  # noqa: E402
from nncompress.models.pixelcnnpp import _levels_at  # noqa: E402
from nncompress.runtime import coding_context, resolve_device, step_runner  # noqa: E402


class Parts:
    """Seconds per named part, each timed between two device synchronisations; with
    ``ops``, the torch profiler's self time per op and part too."""

    def __init__(self, sync, ops: bool) -> None:
        self.sync, self.ops = sync, ops
        self.s: dict[str, list[float]] = collections.defaultdict(list)
        self.op_us: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)

    def run(self, name: str, fn):
        self.sync()
        if not self.ops:
            t0 = time.perf_counter()
            out = fn()
            self.sync()
            self.s[name].append(time.perf_counter() - t0)
            return out
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU]
        if torch.cuda.is_available():
            acts.append(ProfilerActivity.CUDA)
        with profile(activities=acts) as prof:
            t0 = time.perf_counter()
            out = fn()
            self.sync()
            self.s[name].append(time.perf_counter() - t0)
        cuda = torch.cuda.is_available()
        for ev in prof.key_averages():
            us = ev.self_device_time_total if cuda else ev.self_cpu_time_total
            if us:
                self.op_us[name][ev.key] += us
        return out


def drive(model, tiles: np.ndarray, rows: int, parts: Parts, device: torch.device):
    """The coder's step loop over ``rows`` rows; returns the stepper and its tables."""
    b, c, h, w = tiles.shape
    st = model.stepper(b, h, w)
    st.runner = step_runner(device)
    pmfs = ChannelPmfs(st.distribution, st.runner, b, c, device, st.params_buffer)
    for y, x in st.order()[: rows * w]:
        if x == 0 and y >= 2:
            name = f"row start ({_levels_at(y, 0)} levels)"
        elif x == 0:
            name = "row start (rows 0, 1)"
        else:
            name = "pixel step"
        # The first row captures the graphs on CUDA: timed apart.
        params = parts.run(name if y else f"first row: {name}", lambda y=y, x=x: st.params_at(y, x))
        pmfs.set_params(params)
        vals = tiles[:, :, y, x].astype(np.int64)
        for ch in range(c):
            label = f"tables channel {ch}" if y else f"first row: tables channel {ch}"
            parts.run(label, lambda ch=ch, v=vals: pmfs(ch, v))
        st.write(y, x, torch.from_numpy(vals))
    return st, pmfs


def repeat(st, pmfs, tiles: np.ndarray, times: int, sync) -> dict[str, float]:
    """Best-of-``times`` milliseconds of each kind of work, replayed at the stepper's
    current row (every step's work is idempotent: a replay recomputes the same values),
    less noisy than the single calls of a drive."""
    y = st._next // st.width
    vals = tiles[:, :, y - 1, st.width - 1].astype(np.int64)

    def best(fn) -> float:
        out = []
        for _ in range(times):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            out.append(time.perf_counter() - t0)
        return 1e3 * min(out)

    res = {}
    for n in range(1, 4):
        res[f"row start ({n} levels)"] = best(
            lambda n=n: st.runner(("row", n), lambda: st._row_work(n, None))
        )
    for n in range(1, 4):
        for par in (0, 1):
            key = ("pixel", n, par)
            res[f"pixel step ({n} levels, parity {par})"] = best(
                lambda key=key: st.runner(key, lambda: st._pixel_step(*key[1:]))
            )
    for ch in range(tiles.shape[1]):
        res[f"tables channel {ch}"] = best(lambda ch=ch: pmfs(ch, vals))
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="pixelcnnpp-photo-small-int")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tile", type=int, default=32)
    ap.add_argument("--batch", type=int, default=384)
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="torch threads on CPU")
    ap.add_argument("--image", default="768x512", help="WxH for the whole-image estimate")
    ap.add_argument("--ops", type=int, default=0, help="list the N slowest ops per part")
    ap.add_argument(
        "--repeats", type=int, default=5, help="then replay each kind of work N times (best)"
    )
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if a.rows < 3:
        ap.error("--rows must be at least 3 (rows 0 and 1 are special cases)")
    dev = resolve_device(a.device)
    lm = api.load_model(a.model)
    model = lm.model.to(dev).eval()
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, (a.batch, model.channels, a.tile, a.tile), dtype=np.uint8)
    parts = Parts(sync, a.ops > 0)
    with coding_context(dev, a.threads):
        t0 = time.perf_counter()
        st, pmfs = drive(model, tiles, a.rows, parts, dev)
        wall = time.perf_counter() - t0
        best = repeat(st, pmfs, tiles, a.repeats, sync) if a.repeats else {}
    ms = {k: 1e3 * statistics.median(v) for k, v in sorted(parts.s.items())}
    width, height = (int(v) for v in a.image.lower().split("x"))
    per_tile = (-(-width // a.tile)) * (-(-height // a.tile))
    batches = -(-per_tile // a.batch)
    # A tile's rows: one row start each (levels 1 and 2 start every 2nd and 4th row).
    row_ms = [ms.get(f"row start ({_levels_at(y, 0)} levels)", np.nan) for y in range(a.tile)]
    tables = sum(ms.get(f"tables channel {ch}", 0.0) for ch in range(model.channels))
    steps = a.tile * a.tile
    est = batches * (np.nansum(row_ms) + steps * (ms.get("pixel step", 0.0) + tables)) / 1e3
    if best:
        bt = sum(best[f"tables channel {ch}"] for ch in range(model.channels))
        # Per tile: rows start with 1, 2 or 3 levels; pixel steps mostly at 1 level.
        brow = [best[f"row start ({_levels_at(y, 0)} levels)"] for y in range(a.tile)]
        bpx = []
        for y in range(a.tile):
            for x in range(a.tile):
                n = _levels_at(y, x)
                bpx.append(best[f"pixel step ({n} levels, parity {(x >> (n - 1)) & 1})"])
        best_est = batches * (sum(brow) + sum(bpx) + steps * bt) / 1e3
    report = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "threads": a.threads if dev.type == "cpu" else None,
        "model": lm.name,
        "tile": a.tile,
        "batch": a.batch,
        "rows": a.rows,
        "wall_s": wall,
        "ms_median": ms,
        "tables_ms": tables,
        "image": a.image,
        "image_estimate_s": float(est),
        "best_ms": best,
        "best_image_estimate_s": best_est if best else None,
    }
    if parts.ops:
        report["ops_self_ms_per_call"] = {
            name: {op: us / 1e3 / len(parts.s[name]) for op, us in counter.most_common(a.ops)}
            for name, counter in sorted(parts.op_us.items())
        }
    for k, v in ms.items():
        print(f"{k:40s} {v:9.2f} ms  (n={len(parts.s[k])})")
    print(f"{'tables, all channels':40s} {tables:9.2f} ms")
    print(f"estimate for {a.image} ({batches} batch(es)): {est:.1f} s")
    if best:
        print(f"\nbest of {a.repeats} replays at row {st._next // st.width}:")
        for k, v in best.items():
            print(f"{k:40s} {v:9.2f} ms")
        print(f"{'tables, all channels':40s} {bt:9.2f} ms")
        print(f"estimate for {a.image} from the best: {best_est:.1f} s")
    for name, table in report.get("ops_self_ms_per_call", {}).items():
        print(f"\n{name}: self ms per call")
        for op, v in table.items():
            print(f"  {op:50s} {v:9.3f}")
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
