"""Check, on a device, the float facts the coder relies on, and time the cached stepper.

    python benchmarks/exactness_check.py [--model NAME|PATH] [--device cuda] [--tile 32]
                                         [--batch 384] [--steps 96] [--out OUT.json]

1. Re-running the stepper on the same batch gives bit-identical parameters.
2. A slot's parameters do not depend on the contents of the other slots of its batch (same
   batch shape): what lets one file of a multi-image schedule be decoded on its own.
3. For information: a different batch size does change results (why the layout is recorded).
4. A round trip through compress/decompress on the device.
5. On CUDA, steps run as CUDA graphs (as the coder runs them); for information, how far
   plain (eager) launches of the same kernels are from them, and the time of both.
6. Time per stepper step (params_at + all channel PMFs): the median, and the median after
   the first 8 rows (all graphs captured).
"""

from __future__ import annotations

import argparse
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
from nncompress.modelfile import LoadedModel, export_tensors, weights_digest  # noqa: E402
from nncompress.models import build_model  # noqa: E402
from nncompress.runtime import coding_context, resolve_device, step_runner  # noqa: E402


def _loaded(spec: str | None) -> LoadedModel:
    if spec:
        return api.load_model(spec)
    torch.manual_seed(0)
    cfg = {"channels": 3, "nr_resnet": 4, "nr_filters": 96, "nr_logistic_mix": 10, "dropout": 0.0}
    m = build_model("pixelcnnpp", cfg)
    d = weights_digest(m.family, m.config_dict(), export_tensors(m))
    return LoadedModel("random-base", d, m, {"tile": [32, 32]})


def _drive(
    model, tiles: torch.Tensor, steps: int, sync, graphs: bool = True
) -> tuple[list[torch.Tensor], list[float]]:
    """Run the stepper over the first ``steps`` raster positions writing ``tiles``' values,
    with the coder's step runner (CUDA graphs on CUDA) or plain calls. Returns per-step
    params (cpu) and per-step seconds."""
    b, c, h, w = tiles.shape
    st = model.stepper(b, h, w)
    if graphs:
        st.runner = step_runner(tiles.device)
    pmfs = ChannelPmfs(st.distribution, st.runner, b, c, tiles.device)
    host = tiles.cpu().numpy().astype(np.int64)
    out, times = [], []
    for y, x in st.order()[:steps]:
        t0 = time.perf_counter()
        pmfs.set_params(st.params_at(y, x))
        vals = host[:, :, y, x]
        for ch in range(c):
            pmfs(ch, vals)
        st.write(y, x, torch.from_numpy(vals).to(tiles.device))
        sync()
        times.append(time.perf_counter() - t0)
        out.append(pmfs.params.cpu())
    return out, times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--tile", type=int, default=32)
    ap.add_argument("--batch", type=int, default=384)
    ap.add_argument("--steps", type=int, default=None, help="default: 10 rows")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    dev = resolve_device(a.device)
    steps = a.steps or 10 * a.tile
    lm = _loaded(a.model)
    model = lm.model.to(dev).eval()
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    g = torch.Generator().manual_seed(1)
    c, t = model.channels, a.tile
    tiles = torch.randint(0, 256, (a.batch, c, t, t), generator=g, dtype=torch.uint8).to(dev)
    report: dict[str, object] = {"device": str(dev), "model": lm.name, "tile": t, "batch": a.batch}
    with coding_context(dev, torch.get_num_threads()):
        ref, _ = _drive(model, tiles, steps, sync)
        again, times = _drive(model, tiles, steps, sync)
        report["rerun_identical"] = all(torch.equal(p, q) for p, q in zip(ref, again))
        other = tiles.clone()
        other[1:] = torch.randint(0, 256, other[1:].shape, generator=g, dtype=torch.uint8).to(dev)
        filler, _ = _drive(model, other, steps, sync)
        report["slot_independent_of_batchmates"] = all(
            torch.equal(p[0], q[0]) for p, q in zip(ref, filler)
        )
        half, _ = _drive(model, tiles[: max(1, a.batch // 2)], steps, sync)
        diffs = [float((p[0] - q[0]).abs().max()) for p, q in zip(ref, half)]
        report["other_batch_size_max_abs_diff"] = max(diffs)
        steady = times[8 * t :] or times
        report["step_ms_median"] = 1e3 * statistics.median(times)
        report["step_ms_median_after_8_rows"] = 1e3 * statistics.median(steady)
        report["steps_s_total"] = sum(times)
        if dev.type == "cuda":
            eager, eager_times = _drive(model, tiles, steps, sync, graphs=False)
            diffs = [float((p - q).abs().max()) for p, q in zip(ref, eager)]
            report["eager_vs_graphs_max_abs_diff"] = max(diffs)
            report["eager_step_ms_median"] = 1e3 * statistics.median(eager_times)
            report["eager_steps_s_total"] = sum(eager_times)
    rng = np.random.default_rng(0)
    from PIL import Image

    arr = rng.integers(0, 256, size=(45, 70, c), dtype=np.uint8)
    im = Image.fromarray(arr if c == 3 else arr[:, :, 0])
    data = api.compress(im, lm, dev.type, tile=t)
    report["round_trip_exact"] = bool(
        np.array_equal(np.asarray(api.decompress(data, lm, dev.type)), np.asarray(im))
    )
    print(json.dumps(report, indent=2))
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=2))
    ok = report["rerun_identical"] and report["slot_independent_of_batchmates"]
    return 0 if ok and report["round_trip_exact"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
