"""Build the training photo set from unpacked packages (see recipe.sh and spec.py).

usage:
  build.py build UNPACK_ROOT VERSIONS_TSV OUT_DIR [JOBS]
  build.py val-hashes VAL_DIR OUT_TSV          (writes val_hashes.tsv from photos/val)

Images: sources are decoded to 8-bit RGB (EXIF orientation applied), cropped to a multiple of
the factor f and resized by exactly 1/f with Lanczos; outputs are lossless WebP.
"""
from __future__ import annotations

import csv
import glob
import hashlib
import io
import os
import re
import shutil
import struct
import sys
import zlib
from dataclasses import dataclass, field
from multiprocessing import Pool

import numpy as np
import spec
from PIL import Image, ImageOps

Image.MAX_IMAGE_PIXELS = 400_000_000   # the largest source is ~19 MP; refuse anything absurd
HERE = os.path.dirname(os.path.abspath(__file__))
_STD_LUMA_Q = [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40,
               57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35,
               55, 64, 81, 104, 113, 92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112,
               100, 103, 99]


# ---------------------------------------------------------------- sources
def unrcc(path: str, outdir: str) -> None:
    """Extract a Qt binary resource bundle (.rcc, format 1-3, zlib or stored entries)."""
    b = open(path, "rb").read()
    if b[:4] != b"qres":
        raise ValueError(f"not a Qt resource bundle: {path}")
    ver, tree, data, names = struct.unpack(">IIII", b[4:20])
    node_size = 14 if ver == 1 else 22

    def name(off: int) -> str:
        o = names + off
        n = struct.unpack(">H", b[o:o + 2])[0]
        return b[o + 6:o + 6 + 2 * n].decode("utf-16-be")

    def walk(idx: int, prefix: str) -> None:
        o = tree + idx * node_size
        noff, flags = struct.unpack(">IH", b[o:o + 6])
        nm = name(noff) if idx else ""
        if flags & 2:   # directory
            count, first = struct.unpack(">II", b[o + 6:o + 14])
            for c in range(count):
                walk(first + c, (prefix + nm + "/") if idx else "")
            return
        dof = struct.unpack(">I", b[o + 10:o + 14])[0]
        p = data + dof
        size = struct.unpack(">I", b[p:p + 4])[0]
        d = b[p + 4:p + 4 + size]
        if flags & 4:   # zstd: no image we use is stored so
            return
        if flags & 1:
            d = zlib.decompress(d[4:])
        fp = os.path.join(outdir, prefix + nm)
        os.makedirs(os.path.dirname(fp), exist_ok=True)
        with open(fp, "wb") as fh:
            fh.write(d)

    walk(0, "")


def shown_path(rel: str) -> str:
    """Path as it is inside the package (gcompris files live inside .rcc bundles)."""
    if rel.startswith("_rcc/"):
        bundle, rest = rel[5:].split("/", 1)
        return f"usr/share/gcompris-qt/rcc/{bundle}.rcc!/{rest}"
    return rel


@dataclass
class Source:
    idx: int             # order in the spec: ties in dedupe go to the earlier entry
    pkg: str
    rel: str             # relative to the unpacked package
    path: str            # absolute
    fmin: int
    size: tuple[int, int] = (0, 0)
    quality: int | None = None
    dhash: int = 0
    thumb: np.ndarray | None = field(default=None, repr=False)
    skip: str = ""


def resolve(root: str) -> list[Source]:
    out, seen = [], set()
    for pkg, pat, excl, fmin in spec.SOURCES:
        base = os.path.join(root, pkg)
        hits = sorted(h for h in glob.glob(os.path.join(base, pat))
                      if os.path.isfile(h) and not os.path.islink(h))
        if not hits:
            raise SystemExit(f"spec entry matches nothing: {pkg} {pat}")
        for h in hits:
            rel = os.path.relpath(h, base)
            if any(re.search(e, rel) for e in excl) or (pkg, rel) in seen:
                continue
            seen.add((pkg, rel))
            out.append(Source(len(out), pkg, rel, h, fmin))
    return out


# ---------------------------------------------------------------- pixels and hashes
def load_rgb(path: str) -> Image.Image:
    im = Image.open(path)
    im = ImageOps.exif_transpose(im)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        if im.getchannel("A").getextrema()[0] < 255:
            raise ValueError("has transparency")
    if im.mode in ("I;16", "I;16B", "I"):
        raise ValueError(f"not 8-bit ({im.mode})")
    return im.convert("RGB") if im.mode != "RGB" else im


def jpeg_quality(path: str) -> int | None:
    """Estimated IJG quality from the luminance table (None if not a JPEG)."""
    with Image.open(path) as im:
        if im.format != "JPEG":
            return None
        s = sum(im.quantization[0]) / sum(_STD_LUMA_Q) * 100
    return round((200 - s) / 2 if s <= 100 else 5000 / s)


def fingerprint(im: Image.Image) -> tuple[int, np.ndarray]:
    """64-bit dHash (9x8 greyscale, horizontal gradients) and a 16x16 thumbnail, mean 0 sd 1."""
    g = im.convert("L")
    g = g.reduce(max(1, min(g.size) // 64)) if min(g.size) >= 128 else g
    d = np.asarray(g.resize((9, 8), Image.BOX), dtype=np.int16)
    bits = (d[:, 1:] > d[:, :-1]).flatten()
    dh = int("".join("1" if v else "0" for v in bits), 2)
    t = np.asarray(g.resize((16, 16), Image.BOX), dtype=np.float64)
    t = (t - t.mean()) / (t.std() + 1e-6)
    return dh, t.astype(np.float32)


def hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


def similar(dh1: int, th1: np.ndarray, dh2: int, th2: np.ndarray, rules) -> bool:
    d, z = hamming(dh1, dh2), float(np.abs(th1 - th2).mean())
    return any(d <= dmax and z <= zmax for dmax, zmax in rules)


def down_integer(im: Image.Image, f: int) -> Image.Image:
    """Centre-crop to a multiple of f, then Lanczos-resize by exactly 1/f."""
    w, h = im.size
    W, H = (w // f) * f, (h // f) * f
    if (W, H) != (w, h):
        left, top = (w - W) // 2, (h - H) // 2
        im = im.crop((left, top, left + W, top + H))
    return im.resize((W // f, H // f), Image.LANCZOS)


def factors(w: int, h: int, fmin: int) -> list[int]:
    short = min(w, h)
    f = max(fmin, -(-short // spec.MAX_OUT_SHORT))
    if short // f < spec.MIN_OUT_SHORT:
        return []
    return [f, 2 * f] if short // (2 * f) >= spec.MIN_OUT_SHORT_2F else [f]


# ---------------------------------------------------------------- workers
def analyse(s: Source) -> Source:
    try:
        s.quality = jpeg_quality(s.path)
        im = load_rgb(s.path)
    except Exception as e:  # noqa: BLE001 - any undecodable source is skipped and logged
        s.skip = f"unreadable: {e}"
        return s
    s.size = im.size
    s.dhash, s.thumb = fingerprint(im)
    return s


def make_output(job: tuple[Source, int, str, str]) -> dict:
    s, f, name, staging = job
    small = down_integer(load_rgb(s.path), f)
    dh, th = fingerprint(small)
    buf = io.BytesIO()
    small.save(buf, "WEBP", lossless=True, quality=spec.WEBP_EFFORT, method=spec.WEBP_METHOD,
               exact=True)
    data = buf.getvalue()
    back = Image.open(io.BytesIO(data)).convert("RGB")
    if back.tobytes() != small.tobytes():   # flac --verify: never keep what does not decode back
        raise RuntimeError(f"WebP round trip changed pixels: {name}")
    with open(os.path.join(staging, name), "wb") as fh:
        fh.write(data)
    return {"name": name, "out_size": small.size,
            "sha256": hashlib.sha256(small.tobytes()).hexdigest(),
            "bytes": len(data), "dhash": dh, "thumb": th}


# ---------------------------------------------------------------- val
def load_val_hashes(path: str) -> list[tuple[str, int, np.ndarray]]:
    rows = []
    with open(path) as fh:
        for r in csv.DictReader(fh, delimiter="\t"):
            th = np.frombuffer(bytes.fromhex(r["thumb16_f16"]), dtype="<f2").astype(np.float32)
            rows.append((r["file"], int(r["dhash"], 16), th.reshape(16, 16)))
    return rows


def val_match(dh: int, th: np.ndarray, val: list) -> str:
    for name, vdh, vth in val:
        if similar(dh, th, vdh, vth, spec.VAL_RULES):
            return name
    return ""


def write_val_hashes(val_dir: str, out_tsv: str) -> None:
    with open(out_tsv, "w") as fh:
        fh.write("file\tdhash\tthumb16_f16\n")
        for name in sorted(os.listdir(val_dir)):
            dh, th = fingerprint(load_rgb(os.path.join(val_dir, name)))
            fh.write(f"{name}\t{dh:016x}\t{th.astype('<f2').tobytes().hex()}\n")


# ---------------------------------------------------------------- main
def slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s)


def out_name(s: Source, f: int) -> str:
    if s.rel.startswith("_rcc/"):
        parent = s.rel.split("/")[1]
    else:
        parent = os.path.basename(os.path.dirname(s.rel))
    stem = os.path.splitext(os.path.basename(s.rel))[0]
    return slug(f"{s.pkg.replace('-data', '')}__{parent}__{stem}") + f"__f{f}.webp"


def select(sources, val, spec, factors, excluded, others=()) -> list:
    """The analysed sources to keep, in spec order. The largest copy of a picture wins
    (equal sizes: the earlier spec entry); every other one gets its reason in ``excluded``
    (a failed analysis, JPEG quality, a near-duplicate of val, of ``others`` -- (path,
    dhash, thumb) of another set's images -- or of a kept source, or too small for
    ``factors``). Shared by benchmarks/data/photos2/build_extra.py."""
    kept = []
    for s in sorted(sources, key=lambda s: (-(s.size[0] * s.size[1]), s.idx)):
        where = (s.pkg, shown_path(s.rel))
        fmin = max(s.fmin, 3) if s.quality is not None and s.quality < spec.JPEG_Q_HARD else s.fmin
        v = None if s.skip else val_match(s.dhash, s.thumb, val)
        if s.skip:
            reason = s.skip
        elif s.quality is not None and s.quality < spec.JPEG_Q_SKIP:
            reason = f"JPEG quality {s.quality}"
        elif v:
            reason = f"near-duplicate of val {v}"
        elif (e := next((p for p, dh, th in others
                         if similar(s.dhash, s.thumb, dh, th, spec.DUP_RULES)), None)):
            reason = f"near-duplicate of training_photos {os.path.basename(e)}"
        elif (dup := next((k for k in kept
                           if similar(s.dhash, s.thumb, k.dhash, k.thumb, spec.DUP_RULES)), None)):
            reason = f"duplicate of {dup.pkg} {shown_path(dup.rel)}"
        elif not factors(*s.size, fmin):
            reason = f"too small ({s.size[0]}x{s.size[1]})"
        else:
            s.fmin = fmin
            kept.append(s)
            continue
        excluded.append((*where, reason))
    kept.sort(key=lambda s: s.idx)
    return kept


def build(root: str, versions_tsv: str, out: str, jobs: int) -> None:
    versions = dict(line.rstrip("\n").split("\t") for line in open(versions_tsv) if line.strip())
    gdir = os.path.join(root, "gcompris-qt-data")
    for b in spec.GCOMPRIS_BUNDLES:
        dst = os.path.join(gdir, "_rcc", b)
        if not os.path.isdir(dst):
            unrcc(os.path.join(gdir, "usr/share/gcompris-qt/rcc", b + ".rcc"), dst)
    val_src = {(r["package"], r["path_in_package"])
               for r in csv.DictReader(open(os.path.join(HERE, "val_sources.tsv")), delimiter="\t")}
    val = load_val_hashes(os.path.join(HERE, "val_hashes.tsv"))
    excluded: list[tuple[str, str, str]] = []   # (package, path, reason)

    sources = []
    for s in resolve(root):
        if re.search(spec.DENY_FILE_RE, s.rel) or re.match(spec.DENY_PACKAGE_RE, s.pkg):
            raise SystemExit(f"deny list hit in spec: {s.pkg} {s.rel}")
        if (s.pkg, shown_path(s.rel)) in val_src:
            excluded.append((s.pkg, shown_path(s.rel), "val source"))
            continue
        sources.append(s)
    with Pool(jobs) as pool:
        sources = pool.map(analyse, sources, chunksize=4)

    kept = select(sources, val, spec, factors, excluded)

    staging = os.path.join(out, "_staging")
    os.makedirs(staging, exist_ok=True)
    jobs_list = [(s, f, out_name(s, f), staging) for s in kept for f in factors(*s.size, s.fmin)]
    names = [j[2] for j in jobs_list]
    if len(set(names)) != len(names):
        raise SystemExit("output name collision")
    with Pool(jobs) as pool:
        results = pool.map(make_output, jobs_list, chunksize=2)

    rows = []
    for (s, f, name, _), r in zip(jobs_list, results):
        v = val_match(r["dhash"], r["thumb"], val)
        if v:
            os.remove(os.path.join(staging, name))
            excluded.append((s.pkg, shown_path(s.rel), f"output f{f} near-duplicate of val {v}"))
            continue
        rows.append((s, f, r))

    # shards: outputs in name order, each shard filled up to SHARD_MAX_BYTES
    rows.sort(key=lambda t: t[2]["name"])
    shard, used = 0, 0
    with open(os.path.join(out, "MANIFEST.tsv"), "w") as fh:
        fh.write("package\tversion\tpath_in_package\torig_size\tfactor\tfile\tout_size\tpixels_sha256\tbytes\n")
        for s, f, r in rows:
            if used + r["bytes"] > spec.SHARD_MAX_BYTES:
                shard, used = shard + 1, 0
            used += r["bytes"]
            d = os.path.join(out, f"shard-{shard:02d}")
            os.makedirs(d, exist_ok=True)
            shutil.move(os.path.join(staging, r["name"]), os.path.join(d, r["name"]))
            ow, oh = r["out_size"]
            fh.write(f"{s.pkg}\t{versions[s.pkg]}\t{shown_path(s.rel)}\t{s.size[0]}x{s.size[1]}\t{f}\t"
                     f"shard-{shard:02d}/{r['name']}\t{ow}x{oh}\t{r['sha256']}\t{r['bytes']}\n")
    os.rmdir(staging)
    with open(os.path.join(out, "EXCLUDED.tsv"), "w") as fh:
        fh.write("package\tpath_in_package\treason\n")
        for e in sorted(excluded):
            fh.write("\t".join(e) + "\n")
    mp = sum(r["out_size"][0] * r["out_size"][1] for _, _, r in rows) / 1e6
    print(f"{len(rows)} images from {len(kept)} sources in {len({s.pkg for s in kept})} packages, "
          f"{mp:.1f} MP, {shard + 1} shards; {len(excluded)} exclusions (EXCLUDED.tsv)")


if __name__ == "__main__":
    if len(sys.argv) >= 5 and sys.argv[1] == "build":
        build(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]) if len(sys.argv) > 5 else 2)
    elif len(sys.argv) == 4 and sys.argv[1] == "val-hashes":
        write_val_hashes(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
