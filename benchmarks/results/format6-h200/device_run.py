"""One lease on the lent H200 host (run from the repo root with .gpu-data/ carried):

  step a: the 100k fuzz run (benchmarks/fuzz.py) on 12 of the host's CPU cores, and beside
          it, on the GPU: photos/val through format 6 (method model and auto), decoded and
          compared; the model files encoded there on CUDA and on that host's CPU come back
          in val_cuda.tar (to decode on our CPU); the files encoded on our CPU
          (.gpu-data/here/*.nnc) are decoded there on CUDA and on its CPU and compared.
  step b: benchmarks/multi_gpu.py code: photos/val on cuda vs cuda:all, and 16 val crops on
          cpu vs cpu:4 vs cpu:14 (worker processes).
Writes to $OUT and prints short tables."""

import glob
import io
import json
import os
import subprocess
import sys
import tarfile
import time

import numpy as np
import torch
from PIL import Image

from nncompress import api
from nncompress.content import read_content

OUT = os.environ["OUT"]
step = sys.argv[1]


def add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


if step == "a":
    fuzz = subprocess.Popen(
        [
            sys.executable,
            "benchmarks/fuzz.py",
            "--cases",
            "100000",
            "--model-cases",
            "5000",
            "--seed",
            "1",
            "--workers",
            "12",
            "--timeout",
            "5",
            "--out",
            f"{OUT}/fuzz",
            "--name",
            "fuzz-100k-h200host",
        ],
        stdout=open(f"{OUT}/fuzz.log", "w"),
        stderr=subprocess.STDOUT,
    )
    paths = sorted(glob.glob(".gpu-data/val/*"))
    contents = [read_content(p) for p in paths]
    samples = sum(c.samples for c in contents)
    print("device", torch.cuda.get_device_name(0), "photos", len(paths), flush=True)
    api.compress(contents[0].frames[0][:16, :16], device="cuda", method="model")  # warm-up
    rows, tar = {}, tarfile.open(f"{OUT}/val_cuda.tar", "w")
    for method in ("model", "auto"):
        torch.cuda.synchronize()
        t = time.time()
        res = api.compress_detailed(contents, device="cuda", method=method)
        enc = time.time() - t
        t = time.time()
        back = api.decompress_detailed([r.data for r in res], device="cuda")
        dec = time.time() - t
        exact = all(api.same_content(c, d.content) for c, d in zip(contents, back))
        total = sum(len(r.data) for r in res)
        rows[method] = dict(
            bits_per_subpixel=8 * total / samples,
            bytes=total,
            encode_s=round(enc, 2),
            decode_s=round(dec, 2),
            exact=exact,
            methods={m: sum(r.method == m for r in res) for m in {r.method for r in res}},
            per_image=[
                dict(name=os.path.basename(p), bytes=len(r.data), method=r.method)
                for p, r in zip(paths, res)
            ],
        )
        print(
            method,
            f"{8 * total / samples:.4f} bits/subpixel",
            total,
            "bytes",
            f"enc {enc:.1f}s dec {dec:.1f}s exact {exact}",
            rows[method]["methods"],
            flush=True,
        )
        if method == "model":
            for p, r in zip(paths, res):
                add(tar, "cuda/" + os.path.basename(p) + ".nnc", r.data)
    # encoded on this host's CPU: two crops, both models
    for png in sorted(glob.glob(".gpu-data/here/crop*.png"))[:2]:
        im = Image.open(png)
        for m in ("pixelcnnpp-photo-small-int", "pixelcnnpp-photo-int"):
            add(
                tar,
                f"hostcpu/{os.path.basename(png)}.{m}.nnc",
                api.compress(im, model=m, device="cpu", method="model"),
            )
    tar.close()
    cross = {}
    for f in sorted(glob.glob(".gpu-data/here/*.nnc")):
        ref = np.asarray(Image.open(f.rsplit("-", 1)[0] + ".png"))
        data = open(f, "rb").read()
        for dev in ("cuda", "cpu"):
            got = np.asarray(api.decompress(data, device=dev))
            cross[f"{os.path.basename(f)} on {dev}"] = bool(np.array_equal(got, ref))
    print("files from our CPU decoded here:", cross, flush=True)
    json.dump(dict(val=rows, cross=cross), open(f"{OUT}/val_cross.json", "w"), indent=1)
    rc = fuzz.wait()
    print("fuzz rc", rc)
    print(open(f"{OUT}/fuzz.log").read()[-2500:])
elif step == "b":
    crops = ".gpu-data/crops"
    os.makedirs(crops, exist_ok=True)
    for i, p in enumerate(sorted(glob.glob(".gpu-data/val/*"))[:16]):
        im = Image.open(p).convert("RGB")
        w, h = im.size
        im.crop((w // 2 - 64, h // 2 - 64, w // 2 + 64, h // 2 + 64)).save(f"{crops}/{i}.png")
    for args in (
        ["code", ".gpu-data/val", "--devices", "cuda", "cuda:all", "--out", f"{OUT}/code_gpu.json"],
        [
            "code",
            crops,
            "--devices",
            "cpu",
            "cpu:4",
            "cpu:14",
            "--model",
            "pixelcnnpp-photo-small-int",
            "--out",
            f"{OUT}/code_cpu.json",
        ],
    ):
        print(" ".join(args), flush=True)
        subprocess.run([sys.executable, "benchmarks/multi_gpu.py", *args], check=True)
