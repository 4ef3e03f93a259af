"""Val photos through format 5 on the GPU: method auto (the model must still win on
photos, and the total must not get worse than model-only), decode and compare."""
import glob
import json
import os
import sys
import time

import torch

from nncompress import api, classical
from nncompress.content import read_content

out = sys.argv[1]
paths = sorted(glob.glob(".gpu-data/val/*"))
contents = [read_content(p) for p in paths]
samples = sum(c.samples for c in contents)
print("device", torch.cuda.get_device_name(0), "photos", len(paths), "samples", samples)
rows = {}
for method in ("model", "auto"):
    torch.cuda.synchronize()
    t = time.time()
    res = api.compress_detailed(contents, device="cuda", method=method)
    torch.cuda.synchronize()
    enc = time.time() - t
    t = time.time()
    back = api.decompress_detailed([r.data for r in res], device="cuda")
    torch.cuda.synchronize()
    dec = time.time() - t
    exact = all(api.same_content(c, d.content) for c, d in zip(contents, back))
    total = sum(len(r.data) for r in res)
    rows[method] = dict(
        bits_per_subpixel=8 * total / samples, bytes=total, encode_s=enc, decode_s=dec,
        exact=exact,
        methods={m: sum(r.method == m for r in res) for m in set(r.method for r in res)},
        per_image=[dict(name=os.path.basename(p), bytes=len(r.data), method=r.method,
                        candidates=r.candidates) for p, r in zip(paths, res)],
    )
    print(method, f"{8*total/samples:.4f} bits/subpixel", total, "bytes",
          f"enc {enc:.1f}s dec {dec:.1f}s", "exact", exact, rows[method]["methods"])
# JPEG-XL (classical.best's jxl) alone, for the table
t = time.time()
jx = sum(len(classical.encode("jxl", c.frames[0])) for c in contents)
print("jxl (e9/e7 best)", f"{8*jx/samples:.4f}", f"{time.time()-t:.1f}s")
rows["jxl"] = dict(bits_per_subpixel=8 * jx / samples, bytes=jx)
json.dump(rows, open(os.path.join(out, "val_auto.json"), "w"), indent=1)
