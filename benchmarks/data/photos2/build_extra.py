"""Build the extra training photographs (see recipe.sh, spec_extra.py and README.md).

usage:
  build_extra.py build UNPACK_ROOT VERSIONS_TSV EXISTING_DIR OUT_DIR [JOBS]

EXISTING_DIR is a built training_photos set (its shard-*/*.webp): every extra source that is a
near-duplicate of one of its images is left out. Reuses training_photos/build.py for decoding,
fingerprints, val hashes and downsampling, so both sets follow the same rules.
"""
from __future__ import annotations

import bz2
import csv
import glob
import hashlib
import io
import os
import re
import sys
from dataclasses import dataclass, field
from multiprocessing import Pool

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
TP = os.path.normpath(os.path.join(HERE, "..", "..", "training_photos"))
sys.path.insert(0, TP)
sys.path.insert(0, HERE)
import build as tp  # noqa: E402  training_photos/build.py
import spec_extra as spec  # noqa: E402


@dataclass
class Source:
    idx: int
    pkg: str
    rel: str
    path: str
    fmin: int
    fmt: str = ""
    size: tuple[int, int] = (0, 0)
    quality: int | None = None
    dhash: int = 0
    thumb: np.ndarray | None = field(default=None, repr=False)
    skip: str = ""


def load(path: str) -> Image.Image:
    """8-bit RGB of a source; scipy's face.dat is raw 768x1024x3 bytes, bz2-compressed."""
    if path.endswith("/scipy/misc/face.dat"):
        raw = bz2.decompress(open(path, "rb").read())
        return Image.frombytes("RGB", (1024, 768), raw)
    return tp.load_rgb(path)


def resolve(root: str) -> list[Source]:
    out, seen = [], set()
    for pkg, pat, excl, fmin in spec.SOURCES:
        if re.match(spec.DENY_PACKAGE_RE, pkg):
            raise SystemExit(f"deny list hit in spec: {pkg}")
        base = os.path.join(root, pkg)
        hits = sorted(h for h in glob.glob(os.path.join(base, pat))
                      if os.path.isfile(h) and not os.path.islink(h))
        if not hits:
            raise SystemExit(f"spec entry matches nothing: {pkg} {pat}")
        for h in hits:
            rel = os.path.relpath(h, base)
            if re.search(spec.DENY_FILE_RE, rel):
                raise SystemExit(f"deny list hit in spec: {pkg} {rel}")
            if any(re.search(e, rel) for e in excl) or (pkg, rel) in seen:
                continue
            seen.add((pkg, rel))
            out.append(Source(len(out), pkg, rel, h, fmin))
    return out


def analyse(s: Source) -> Source:
    try:
        if not s.path.endswith(".dat"):
            with Image.open(s.path) as im:
                s.fmt = (im.format or "").lower()
            s.quality = tp.jpeg_quality(s.path)
        else:
            s.fmt = "raw-rgb-bz2"
        im = load(s.path)
    except Exception as e:  # noqa: BLE001 - an undecodable source is skipped and logged
        s.skip = f"unreadable: {e}"
        return s
    s.size = im.size
    s.dhash, s.thumb = tp.fingerprint(im)
    return s


def existing_fp(path: str) -> tuple[str, int, np.ndarray]:
    dh, th = tp.fingerprint(tp.load_rgb(path))
    return path, dh, th


def factors(w: int, h: int, fmin: int) -> list[int]:
    short = min(w, h)
    f0 = max(fmin, -(-short // spec.MAX_OUT_SHORT))
    if short // f0 < spec.MIN_OUT_SHORT:
        return []
    return [f0] + [m * f0 for m in spec.MULTIPLES[1:]
                   if short // (m * f0) >= spec.MIN_OUT_SHORT_MULTI]


def out_name(s: Source, f: int) -> str:
    parent = os.path.basename(os.path.dirname(s.rel))
    stem = os.path.splitext(os.path.basename(s.rel))[0]
    return tp.slug(f"{s.pkg.replace('-data', '')}__{parent}__{stem}") + f"__f{f}.webp"


def make_output(job: tuple[Source, int, str, str]) -> dict:
    s, f, name, dest = job
    small = tp.down_integer(load(s.path), f)
    dh, th = tp.fingerprint(small)
    buf = io.BytesIO()
    small.save(buf, "WEBP", lossless=True, quality=spec.WEBP_EFFORT, method=spec.WEBP_METHOD,
               exact=True)
    data = buf.getvalue()
    if Image.open(io.BytesIO(data)).convert("RGB").tobytes() != small.tobytes():
        raise RuntimeError(f"WebP round trip changed pixels: {name}")
    with open(os.path.join(dest, name), "wb") as fh:
        fh.write(data)
    return {"out_size": small.size, "sha256": hashlib.sha256(small.tobytes()).hexdigest(),
            "bytes": len(data), "dhash": dh, "thumb": th}


def build(root: str, versions_tsv: str, existing: str, out: str, jobs: int) -> None:
    versions = dict(line.rstrip("\n").split("\t") for line in open(versions_tsv) if line.strip())
    val_src = {(r["package"], r["path_in_package"])
               for r in csv.DictReader(open(os.path.join(TP, "val_sources.tsv")), delimiter="\t")}
    val = tp.load_val_hashes(os.path.join(TP, "val_hashes.tsv"))
    ex_files = sorted(glob.glob(os.path.join(existing, "shard-*", "*.webp")))
    if not ex_files:
        raise SystemExit(f"no training_photos images under {existing}/shard-*/ (build it first)")
    excluded: list[tuple[str, str, str]] = []

    tp_names = set()   # (package, file name) of every training_photos source, kept or excluded
    for f in ("MANIFEST.tsv", "EXCLUDED.tsv"):
        for r in csv.DictReader(open(os.path.join(TP, f)), delimiter="\t"):
            tp_names.add((r["package"], os.path.basename(r["path_in_package"])))
    sources = []
    for s in resolve(root):
        if (s.pkg, s.rel) in val_src:
            excluded.append((s.pkg, s.rel, "val source"))
            continue
        if s.pkg in spec.SAME_NAME_IS_SAME_PHOTO and (s.pkg, os.path.basename(s.rel)) in tp_names:
            excluded.append((s.pkg, s.rel, "same file name as a training_photos source"))
            continue
        sources.append(s)
    with Pool(jobs) as pool:
        sources = pool.map(analyse, sources, chunksize=2)
        ex = pool.map(existing_fp, ex_files, chunksize=16)
    print(f"{len(sources)} extra sources analysed; {len(ex)} training_photos images fingerprinted")

    kept = tp.select(sources, val, spec, factors, excluded, others=ex)

    for d in ("train", "heldout"):
        os.makedirs(os.path.join(out, d), exist_ok=True)
    jobs_list = []
    for s in kept:
        d = "heldout" if s.pkg in spec.HELDOUT_PACKAGES else "train"
        for f in factors(*s.size, s.fmin):
            jobs_list.append((s, f, out_name(s, f), os.path.join(out, d)))
    names = [j[2] for j in jobs_list]
    if len(set(names)) != len(names):
        raise SystemExit("output name collision")
    with Pool(jobs) as pool:
        results = pool.map(make_output, jobs_list, chunksize=1)

    rows = []
    for (s, f, name, dest), r in zip(jobs_list, results):
        v = tp.val_match(r["dhash"], r["thumb"], val)
        if v:
            os.remove(os.path.join(dest, name))
            excluded.append((s.pkg, s.rel, f"output f{f} near-duplicate of val {v}"))
            continue
        rows.append((os.path.basename(dest), s, f, name, r))
    rows.sort(key=lambda t: (t[0] != "train", t[3]))
    with open(os.path.join(out, "MANIFEST.tsv"), "w") as fh:
        fh.write("set\tfile\tsource_package\tpackage_version\tpath_in_package\torig_size\tout_size\t"
                 "downsample_factor\torig_format\tjpeg_quality\tfirst_factor\ttier\tpixels_sha256\tbytes\n")
        for st, s, f, name, r in rows:
            ow, oh = r["out_size"]
            first = "yes" if f == factors(*s.size, s.fmin)[0] else "no"
            tier = "newer-version" if s.pkg in spec.NEWER_VERSION_OF_USED else "new-package"
            fh.write(f"{st}\t{st}/{name}\t{s.pkg}\t{versions[s.pkg]}\t{s.rel}\t{s.size[0]}x{s.size[1]}\t"
                     f"{ow}x{oh}\t{f}\t{s.fmt}\t{'' if s.quality is None else s.quality}\t{first}\t"
                     f"{tier}\t{r['sha256']}\t{r['bytes']}\n")
    with open(os.path.join(out, "EXCLUDED.tsv"), "w") as fh:
        fh.write("package\tpath_in_package\treason\n")
        for e in sorted(excluded):
            fh.write("\t".join(e) + "\n")
    for st in ("train", "heldout"):
        sel = [t for t in rows if t[0] == st]
        mp = sum(t[4]["out_size"][0] * t[4]["out_size"][1] for t in sel) / 1e6
        mp1 = sum(t[4]["out_size"][0] * t[4]["out_size"][1] for t in sel
                  if t[2] == factors(*t[1].size, t[1].fmin)[0]) / 1e6
        print(f"{st}: {len(sel)} images from {len({t[1].idx for t in sel})} sources in "
              f"{len({t[1].pkg for t in sel})} packages, {mp:.1f} MP "
              f"({mp - mp1:.1f} MP from extra factors)")
    print(f"{len(excluded)} exclusions (EXCLUDED.tsv)")


if __name__ == "__main__":
    if len(sys.argv) >= 6 and sys.argv[1] == "build":
        build(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5],
              int(sys.argv[6]) if len(sys.argv) > 6 else 2)
    else:
        sys.exit(__doc__)
