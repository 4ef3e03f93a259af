"""Quick CUDA check of the current tree: golden hashes, payloads identical on CUDA and CPU,
dev-machine files decoded on CUDA, one 768x512 decode timed."""

import glob
import sys
import time

sys.path.insert(0, "benchmarks")
import integer_path as ip
import torch
from PIL import Image

from nncompress import api, container

print("golden", {d: ip.golden(d) for d in ("cuda", "cpu")})
print("dev files on cuda", ip.decode_dir(__import__("pathlib").Path(".gpu-data/here"), "cuda"))
photos = sorted(glob.glob(".gpu-data/val/*.webp"))
for model in ["pixelcnnpp-photo-small-int", "pixelcnnpp-photo-int"]:
    im = Image.open(photos[3]).convert("RGB").crop((0, 0, 96, 80))
    a, b = api.compress(im, model, "cuda"), api.compress(im, model, "cpu")
    same = container.unpack(a)[1] == container.unpack(b)[1]
    print(
        model,
        "payload cuda == cpu:",
        same,
        "decodes:",
        api.decompress(a, device="cpu").tobytes() == im.tobytes(),
    )
one = Image.open(photos[0]).convert("RGB")
big = Image.open([p for p in photos if "fog" in p][0]).convert("RGB")
w, h = big.size
big = big.crop(((w - 768) // 2, (h - 512) // 2, (w - 768) // 2 + 768, (h - 512) // 2 + 512))
api.decompress(
    api.compress(big.crop((0, 0, 64, 64)), "pixelcnnpp-photo-int", "cuda"), device="cuda"
)
for model in ["pixelcnnpp-photo-int", "pixelcnnpp-photo-small-int"]:
    data = api.compress(big, model, "cuda")
    ts = []
    for _ in range(3):
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = api.decompress(data, device="cuda")
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t)
    print(
        model,
        "768x512 decode s (median of 3)",
        round(sorted(ts)[1], 2),
        out.tobytes() == big.tobytes(),
    )
