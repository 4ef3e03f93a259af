"""The fused CUDA kernels (nncompress/quant/kernels.py) on a GPU machine: exactness, then
speed. Run from the repository root on the lent GPU, with the files of a development
machine in a folder (default .gpu-data/here: NAME.png and NAME[-small|-int].nnc encoded
there):

    python benchmarks/kernels_check.py tables|cross|speed [--here DIR] [--out DIR]

  tables  the coding tables of pixelcnnpp-photo-int and -small-int on random tiles
          (64 tiles, the first rows of steps): CUDA with the kernels, CUDA without them and
          the CPU, compared integer for integer; the kernels must have run.
  cross   the development machine's .nnc files decoded here on CUDA with the kernels and
          compared with their PNGs; the PNGs encoded here on CUDA (both models) into
          OUT/cuda-*.nnc, to be decoded back on the development machine.
  speed   benchmarks/decode_speed.py on the 768x512 photo (DIR/fog.png), with the kernels
          and with NNCOMPRESS_TRITON=0, one after the other in one lease (OUT/fused,
          OUT/unfused), then a table of the medians side by side.
Prints one line per check; exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nncompress import api  # noqa: E402
from nncompress.codec import ChannelPmfs  # noqa: E402
from nncompress.quant import kernels  # noqa: E402
from nncompress.runtime import coding_context, run_now, step_runner  # noqa: E402

MODELS = ("pixelcnnpp-photo-int", "pixelcnnpp-photo-small-int")


def tables(name: str, device: str, fused: bool, steps: int, b: int = 64) -> np.ndarray:
    dev = torch.device(device)
    model = api.load_model(name).model.to(dev).eval()
    t = 32
    tiles = np.random.default_rng(0).integers(0, 256, (b, 3, t, t))
    with coding_context(dev, 1):
        model.arithmetic().fused = fused
        st = model.stepper(b, t, t)
        if st.ar.fused is not fused:
            raise SystemExit(f"{name} {device}: the kernels are {'off' if fused else 'on'}")
        st.runner = step_runner(dev) if dev.type == "cuda" else run_now
        pm = ChannelPmfs(st.distribution, st.runner, b, 3, dev, st.params_buffer)
        out = []
        for y, x in st.order()[:steps]:
            pm.set_params(st.params_at(y, x))
            out.append(np.stack([np.asarray(pm(c, tiles[:, :, y, x])) for c in range(3)]))
            st.write(y, x, torch.from_numpy(tiles[:, :, y, x]))
    return np.stack(out)


def check_tables(a) -> list[dict]:
    res = []
    for name in MODELS:
        t0 = time.perf_counter()
        fused = tables(name, "cuda", True, a.steps, a.batch)
        t1 = time.perf_counter()
        plain = tables(name, "cuda", False, a.steps, a.batch)
        cpu = tables(name, "cpu", False, min(a.steps, 40), min(a.batch, 64))
        cpu_eq = np.array_equal(fused[: len(cpu), :, : cpu.shape[2]], cpu)
        ok = np.array_equal(fused, plain) and cpu_eq
        res.append(
            {
                "model": name,
                "steps": a.steps,
                "fused_eq_torch_cuda": bool(np.array_equal(fused, plain)),
                "batch": a.batch,
                "fused_eq_cpu": cpu_eq,
                "fused_s_with_compile": t1 - t0,
                "ok": ok,
            }
        )
    return res


def check_cross(a) -> list[dict]:
    from PIL import Image

    res = []
    here = Path(a.here)
    for f in sorted(here.glob("*.nnc")):
        png = here / (f.stem.split("-")[0] + ".png")
        t0 = time.perf_counter()
        im = api.decompress(f.read_bytes(), device="cuda")
        dt = time.perf_counter() - t0
        ok = np.array_equal(np.asarray(im), np.asarray(Image.open(png)))
        res.append({"file": f.name, "decoded_on": "cuda (fused)", "s": dt, "ok": ok})
    out = Path(a.out)
    for png in sorted(here.glob("crop*.png")):
        im = Image.open(png)
        for name in MODELS:
            data = api.compress(im, model=name, device="cuda", method="model")
            back = api.decompress(data, device="cuda")
            tag = "int" if name == MODELS[0] else "small"
            (out / f"cuda-{png.stem}-{tag}.nnc").write_bytes(data)
            ok = np.array_equal(np.asarray(back), np.asarray(im))
            res.append({"file": f"cuda-{png.stem}-{tag}.nnc", "encoded_on": "cuda", "ok": ok})
    return res


def check_speed(a) -> list[dict]:
    rows = []
    for label, env in (("fused", {}), ("unfused", {kernels.ENV: "0"})):
        dst = Path(a.out) / label
        cmd = [sys.executable, "benchmarks/decode_speed.py", "--device", "cuda",
               "--models", ",".join(MODELS), "--image", str(Path(a.here) / "fog.png"),
               "--out", str(dst)]  # fmt: skip
        subprocess.run(cmd, env={**os.environ, **env}, check=True, stdout=subprocess.DEVNULL)
        for r in json.loads((dst / "decode_speed.json").read_text())["results"]:
            rows.append({"kernels": label, **{k: r.get(k) for k in sorted(r)}})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("tables", "cross", "speed"))
    ap.add_argument("--here", default=".gpu-data/here")
    ap.add_argument("--out", default=os.environ.get("OUT", "kernels-out"))
    ap.add_argument("--steps", type=int, default=96)
    ap.add_argument("--batch", type=int, default=64, help="tiles (tables)")
    a = ap.parse_args()
    Path(a.out).mkdir(parents=True, exist_ok=True)
    res = {"tables": check_tables, "cross": check_cross, "speed": check_speed}[a.what](a)
    meta = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name()}
    try:
        import triton

        meta["triton"] = triton.__version__
    except ImportError:
        meta["triton"] = None
    (Path(a.out) / f"kernels_{a.what}.json").write_text(
        json.dumps({**meta, "results": res}, indent=1)
    )
    print(json.dumps(meta))
    for r in res:
        print(json.dumps(r))
    return 0 if all(r.get("ok", True) for r in res) else 1


if __name__ == "__main__":
    raise SystemExit(main())
