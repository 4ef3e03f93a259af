"""Where the time of a coding step goes, on one device (a development tool).

    python benchmarks/step_profile.py [--model NAME|PATH] [--device cuda] [--tile 32]
                                      [--batch 384] [--rows 4] [--trace OUT.json] [--out OUT.json]

Drives one batch of random tiles through the coder's own pieces (the stepper with the
coder's step runner, the channel PMFs, a range encoder) for ``--rows`` rows and times each
part with a device synchronisation around it, so the parts add up to the step:
row starts, the pixel step, the three channel PMFs (with their copy to the host), the
range coder and the canvas write. The first row (graph captures on CUDA) is reported apart
from the rest. With ``--trace``, one further row runs under the torch profiler and the
kernel table (CUDA time per op) is printed and saved as a Chrome trace.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
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
from nncompress.coding import Encoder  # noqa: E402
from nncompress.runtime import coding_context, resolve_device, step_runner  # noqa: E402


class Clock:
    """Seconds per named part; ``with clock("name"):`` synchronises the device around it."""

    def __init__(self, sync) -> None:
        self.sync = sync
        self.parts: dict[str, list[float]] = collections.defaultdict(list)

    @contextlib.contextmanager
    def __call__(self, name: str):
        self.sync()
        t0 = time.perf_counter()
        yield
        self.sync()
        self.parts[name].append(time.perf_counter() - t0)


class FirstCalls:
    """A step runner that times the first call of every key (the capture, on CUDA)."""

    def __init__(self, runner, sync) -> None:
        self.runner, self.sync = runner, sync
        self.ms: dict[str, float] = {}

    def __call__(self, key, fn):
        if str(key) in self.ms:
            return self.runner(key, fn)
        self.sync()
        t0 = time.perf_counter()
        out = self.runner(key, fn)
        self.sync()
        self.ms[str(key)] = 1e3 * (time.perf_counter() - t0)
        return out


def drive(
    model, tiles: np.ndarray, rows: int, clock: Clock, device: torch.device
) -> dict[str, float]:
    """The step loop of codec._run_batch over ``rows`` rows, each part timed by ``clock``.
    Returns the milliseconds of each runner key's first call."""
    b, c, h, w = tiles.shape
    st = model.stepper(b, h, w)
    st.runner = first = FirstCalls(step_runner(device), clock.sync)
    pmfs = ChannelPmfs(st.distribution, st.runner, b, c, device, st.params_buffer)
    enc = Encoder()
    for y, x in st.order()[: rows * w]:
        with clock("pixel step (params_at)"):
            params = st.params_at(y, x)
        with clock("set params"):
            pmfs.set_params(params)
        vals = tiles[:, :, y, x].astype(np.int64)
        for ch in range(c):
            with clock(f"pmf {ch} + to host"):
                probs = pmfs(ch, vals)
            with clock("range coder"):
                enc.encode(vals[:, ch], probs)
        with clock("canvas write"):
            st.write(y, x, torch.from_numpy(vals))
    return first.ms


def summarise(parts: dict[str, list[float]], steps: int) -> dict[str, float]:
    """Milliseconds per step of each part."""
    return {k: 1e3 * sum(v) / steps for k, v in parts.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="pixelcnnpp-photo")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--tile", type=int, default=32)
    ap.add_argument("--batch", type=int, default=384)
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--trace", default=None, help="also profile one row; Chrome trace here")
    ap.add_argument("--out", default=None)
    ap.add_argument(
        "--tf32", action="store_true", help="for information: TF32 matrix products (not coded)"
    )
    a = ap.parse_args(argv)
    dev = resolve_device(a.device)
    lm = api.load_model(a.model)
    model = lm.model.to(dev).eval()
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, (a.batch, model.channels, a.tile, a.tile), dtype=np.uint8)
    report: dict[str, object] = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "model": lm.name,
        "tile": a.tile,
        "batch": a.batch,
    }
    with coding_context(dev, 1):
        if a.tf32:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        report["tf32"] = a.tf32
        # Every run builds a new stepper and runner: its first call of a key captures.
        clock = Clock(sync)
        t0 = time.perf_counter()
        first_calls = drive(model, tiles, a.rows, clock, dev)
        wall = time.perf_counter() - t0
        steps = a.rows * a.tile
        report["rows"] = a.rows
        report["first_call_ms"] = first_calls
        report["first_calls_s"] = sum(first_calls.values()) / 1e3
        report["ms_per_step_mean_parts"] = summarise(clock.parts, steps)
        report["ms_per_step_median_parts"] = {
            k: 1e3 * statistics.median(v) * len(v) / steps for k, v in clock.parts.items()
        }
        report["ms_per_step_wall_synced"] = 1e3 * wall / steps
        px = clock.parts["pixel step (params_at)"]
        report["pixel_step_ms_median"] = 1e3 * statistics.median(px)
        # Steps that start a row (x = 0) carry the u-stream rows; the rest are pixel only.
        report["row_start_steps_ms"] = [1e3 * v for v in px[:: a.tile]]
        # The loop as the coder runs it (no syncs between parts), less the first calls.
        free = Clock(lambda: None)
        t0 = time.perf_counter()
        first_calls = drive(model, tiles, a.rows, free, dev)
        sync()
        unsynced = time.perf_counter() - t0 - sum(first_calls.values()) / 1e3
        report["ms_per_step_unsynced_without_first_calls"] = 1e3 * unsynced / steps
        if a.trace:
            from torch.profiler import ProfilerActivity, profile

            acts = [ProfilerActivity.CPU]
            if dev.type == "cuda":
                acts.append(ProfilerActivity.CUDA)
            with profile(activities=acts) as prof:
                drive(model, tiles, 2, Clock(sync), dev)
            sort = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
            print(prof.key_averages().table(sort_by=sort, row_limit=40))
            prof.export_chrome_trace(a.trace)
    print(json.dumps(report, indent=2))
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
