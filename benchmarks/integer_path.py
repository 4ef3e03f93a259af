"""The integer path across machines and against the float models (issue 12).

    python benchmarks/integer_path.py encode-here DIR      # val crops encoded here -> DIR
    python benchmarks/integer_path.py check DIR OUT        # on another machine (the GPU):
        golden hashes on CUDA and CPU, DIR's files decoded there, crops encoded there on
        CUDA and CPU into OUT/there, one photo timed, the photos/val table (float vs
        integer NLL, integer coded size, one-call encode/decode times) -> OUT/results.json
    python benchmarks/integer_path.py decode-back OUT/there  # back here: decode them

Needs the shipped models and photos/val (``--val``: a folder of the val photos).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch
from PIL import Image

from nncompress import api, files

REPO = Path(__file__).resolve().parent.parent
VAL = REPO.parent / "shared" / "data" / "photos" / "val"
PAIRS = [
    ("pixelcnnpp-photo-small", "pixelcnnpp-photo-small-int"),
    ("pixelcnnpp-photo", "pixelcnnpp-photo-int"),
]


def _photos(val: Path) -> list[Path]:
    return sorted(val.glob("*.webp"))


def golden(device: str) -> dict[str, bool]:
    """tests/test_quant.py's golden hashes, computed on ``device``."""
    sys.path.insert(0, str(REPO / "tests"))
    import test_quant as tq

    from nncompress.quant import distributions as qd
    from nncompress.quant.fixed import elu_table, sigmoid_table

    h = hashlib.sha256()
    for t in (elu_table(), sigmoid_table(), *qd.build_tables().values()):
        h.update(t.astype("<i4").tobytes())
    out = {"tables": h.hexdigest() == tq.GOLDEN_TABLES}
    for c in (3, 1):
        m = tq.integer_tiny_model(c).to(device)
        g = tq._all_tables(m, tq._image(c).to(device)).cpu()
        out[str(c)] = hashlib.sha256(g.numpy().astype("<i8").tobytes()).hexdigest() == tq.GOLDEN[c]
    return out


def encode_crops(photos: list[Path], out: Path, jobs: list[tuple[str, str, int]]) -> None:
    """jobs: (model, device, crop side); crop k of photo 5k, PNG beside each file."""
    out.mkdir(parents=True, exist_ok=True)
    for k, (model, device, side) in enumerate(jobs):
        im = Image.open(photos[5 * k]).convert("RGB").crop((100, 100, 100 + side, 100 + side))
        (out / f"{k}-{device}.nnc").write_bytes(api.compress(im, model, device, method="model"))
        im.save(out / f"{k}-{device}.png")


def decode_dir(folder: Path, device: str) -> dict[str, bool]:
    """Every .nnc in ``folder`` decoded on ``device`` against the PNG beside it."""
    out = {}
    for f in sorted(folder.glob("*.nnc")):
        want = Image.open(f.with_suffix(".png")).convert("RGB").tobytes()
        out[f.name] = api.decompress(f.read_bytes(), device=device).tobytes() == want
    return out


def check(here: Path, out: Path, val: Path) -> dict:
    t0 = time.time()
    res: dict = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0)}
    res["golden"] = {d: golden(d) for d in ("cuda", "cpu")}
    res["decoded_there"] = {d: decode_dir(here, d) for d in ("cuda", "cpu")}
    photos = _photos(val)
    encode_crops(photos, out / "there", [(PAIRS[0][1], "cuda", 64), (PAIRS[1][1], "cuda", 64),
                                         (PAIRS[0][1], "cpu", 48)])  # fmt: skip
    one = Image.open(photos[0]).convert("RGB")
    warm = api.compress(one.crop((0, 0, 64, 64)), PAIRS[1][1], "cuda", method="model")
    api.decompress(warm, device="cuda")
    res["one_photo"] = {}
    for _, model in PAIRS:
        t = time.perf_counter()
        data = api.compress(one, model, "cuda", method="model")
        te = time.perf_counter() - t
        t = time.perf_counter()
        back = api.decompress(data, device="cuda")
        td = time.perf_counter() - t
        res["one_photo"][model] = {
            "size": list(one.size), "encode_s": round(te, 2), "decode_s": round(td, 2),
            "exact": back.tobytes() == one.tobytes(),
        }  # fmt: skip
    ims = [Image.open(p).convert("RGB") for p in photos]
    sub = sum(i.width * i.height * 3 for i in ims)
    res["val"] = {}
    for fl, it in PAIRS:
        row = {}
        for name in (fl, it):
            scores = api.score_detailed(ims, name, "cuda")
            row[f"{name} nll"] = sum(r.bits_per_subpixel * r.subpixels for r in scores) / sub
        t = time.perf_counter()
        enc = api.compress_detailed(ims, it, "cuda", method="model")
        row["encode_s_all"] = round(time.perf_counter() - t, 1)
        row["coded"] = sum(8 * len(e.data) for e in enc) / sub
        t = time.perf_counter()
        back = api.decompress_many([e.data for e in enc], device="cuda")
        row["decode_s_all"] = round(time.perf_counter() - t, 1)
        row["exact_all"] = all(b.tobytes() == i.tobytes() for b, i in zip(back, ims))
        res["val"][it] = row
    res["seconds"] = round(time.time() - t0, 1)
    (out / "results.json").write_text(json.dumps(res, indent=1))
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("step", choices=["encode-here", "check", "decode-back"])
    ap.add_argument("dirs", nargs="+", type=Path)
    ap.add_argument("--val", type=Path, default=VAL)
    a = ap.parse_args(argv)
    if a.step == "encode-here":
        jobs = [(PAIRS[0][1], "cpu", 64), (PAIRS[0][1], "cpu", 48), (PAIRS[1][1], "cpu", 32)]
        encode_crops(_photos(a.val), a.dirs[0], jobs)
        print(json.dumps(decode_dir(a.dirs[0], "cpu")))
    elif a.step == "check":
        print(json.dumps(check(a.dirs[0], a.dirs[1], a.val), indent=1))
    else:
        res = decode_dir(a.dirs[0], "cpu")
        for f in sorted(a.dirs[0].glob("*.nnc")):
            print(f.name, files.parse(f.read_bytes()).header.encoder, res[f.name])
        return 0 if all(res.values()) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
