"""Does nncompress code every corpus image exactly, and never larger than classical codecs?

    python benchmarks/corpus_compare.py CORPUS_DIR [--out DIR] [--nnc "nncompress"]
        [--device cpu] [--method auto] [--no-nnc] [--only NAME,...]

CORPUS_DIR: a folder written by benchmarks/corpus.py (its corpus.json gives each image's
kind), or any folder of images. For every image:

- classical reference sizes, each verified by decoding it: PNG (Pillow, level 9; 16-bit
  images through imagecodecs.png_encode, level 9, as Pillow cannot write 16-bit RGB), WebP
  lossless (level 100, method 6) and JPEG-XL lossless (effort 7), one thread each; for a
  JPEG input also JPEG-XL's lossless JPEG transcoding (JPEG->JXL, which gives back the
  JPEG's bytes). A codec that cannot give back the image exactly (libwebp: 16-bit; RGB
  under alpha 0) is "n/a" with the reason. Multi-frame inputs: the sum of the sizes of
  each frame coded alone (the composited frames, as Pillow shows them). The pixel codecs
  carry no metadata here, so the raw bytes of the input's metadata (ICC, EXIF, XMP, text
  chunks; column "meta") are added to their sizes. min = the smallest exact reference.
- nncompress through its CLI, as a subprocess: ``encode IN -o x.nnc --method M --device D``,
  ``decode x.nnc -o x.png --device D`` (``-o x.jpg`` where that fails asking for a .jpg name:
  a file that keeps a JPEG) and ``info x.nnc --json`` (its "method", if any).
  A failing command is recorded with its last line, never a crash.
- the decoded file against the input, read with Pillow and imagecodecs only (no nncompress
  code): frame count, size, mode, bit depth (16-bit PNGs through imagecodecs.png_decode,
  since Pillow reduces 16-bit RGB to 8 bits), every frame's pixels (as RGBA, so RGB under
  alpha 0 counts), and metadata: ICC bytes equal, EXIF present with the same orientation,
  XMP present, every text chunk's key and value, dpi within 0.5, frame durations and loop
  count. A JPEG input decoded to a JPEG must come back byte for byte; decoded to anything
  else, its pixels must equal the JPEG's decoded pixels.

Verdict: OK if the decoded image is exact, keeps its metadata and nnc <= 1.01 x min.
Writes OUT/corpus.md and OUT/corpus.json. Exit status: 1 if any image is not given back
exactly, loses metadata or fails to code; else 2 if any is larger than 1.01 x min; else 0.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageSequence

CORPUS_JSON = "corpus.json"
IMAGE_SUFFIXES = (".png", ".gif", ".webp", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
PNG_LEVEL = 9
WEBP_LEVEL, WEBP_METHOD = 100, 6
JXL_EFFORT = 7
THREADS = 1
SIZE_TOLERANCE = 1.01  # nnc may be at most 1% above the best classical codec
DPI_TOLERANCE = 0.5
DURATION_TOLERANCE_MS = 0.5
ORIENTATION_TAG = 0x0112
XMP_KEY = "XML:com.adobe.xmp"
EXIT_OK, EXIT_FAILURE, EXIT_SIZE = 0, 1, 2
REFS = ("png", "webp", "jxl-e7", "jpeg-jxl")
REF_LABELS = {"png": "PNG", "webp": "WebP-LL", "jxl-e7": "JXL-e7", "jpeg-jxl": "JPEG→JXL"}
PNG16_COLOURS = {0: "L", 2: "RGB", 4: "LA", 6: "RGBA"}
ERROR_CHARS = 300  # recorded length of a failing command's last line


# --- reading images, independently of nncompress --------------------------------------------


@dataclass
class Picture:
    """An image file as Pillow and imagecodecs read it.

    frames: per frame, the array compared for exactness: RGBA uint8 (H, W, 4), or for
    16-bit PNGs the uint16 array of imagecodecs.png_decode. native: per frame, the array
    classical codecs get (L, LA, RGB, RGBA; uint8, or uint16 for 16-bit)."""

    data: bytes
    format: str
    mode: str
    bit_depth: int
    size: tuple[int, int]
    frames: list[np.ndarray]
    native: list[np.ndarray]
    pil_frames: list[Image.Image] = field(repr=False)
    icc: bytes | None = None
    exif: bytes | None = None
    orientation: int | None = None
    xmp: bytes | None = None
    text: dict[str, str] = field(default_factory=dict)
    dpi: tuple[float, float] | None = None
    durations: list[float] | None = None
    loop: int | None = None

    @property
    def n_frames(self) -> int:
        return len(self.frames)

    def metadata_bytes(self) -> int:
        """Raw size of the metadata a container would have to carry besides the pixels."""
        n = len(self.icc or b"") + len(self.exif or b"") + len(self.xmp or b"")
        return n + sum(
            len(k.encode()) + len(v.encode()) for k, v in self.text.items() if k != XMP_KEY
        )


def _png_ihdr(data: bytes) -> tuple[int, int] | None:
    """(bit depth, colour type) of a PNG, None for other files."""
    if data[:8] != PNG_MAGIC or len(data) < 26:
        return None
    return data[24], data[25]


def _native(frame: Image.Image) -> np.ndarray:
    mode = frame.mode
    if mode == "1":
        return np.asarray(frame.convert("L"))
    if mode in ("L", "LA", "RGB", "RGBA"):
        return np.asarray(frame)
    if mode in ("P", "PA"):
        return np.asarray(frame.convert("RGBA" if frame.has_transparency_data else "RGB"))
    return np.asarray(frame.convert("RGBA"))


def read_picture(source: bytes | str | Path) -> Picture:
    """Read an image file (or its bytes). Raises OSError/ValueError if unreadable."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    ihdr = _png_ihdr(data)
    with Image.open(io.BytesIO(data)) as img:
        fmt, mode, size = str(img.format), img.mode, img.size
        frames, native, pil_frames, durations = [], [], [], []
        for frame in ImageSequence.Iterator(img):
            frame.load()
            durations.append(frame.info.get("duration"))
            copy = frame.copy()
            if frame.mode == "P" and "transparency" in frame.info:
                copy.info["transparency"] = frame.info["transparency"]
            pil_frames.append(copy)
            frames.append(np.asarray(frame.convert("RGBA")))
            native.append(_native(frame))
        img.seek(0)
        info = dict(img.info)
        exif = img.getexif()
        text = dict(getattr(img, "text", {}) or {})
    if "comment" in info and not text:  # JPEG/GIF comments count as text
        comment = info["comment"]
        text = {"comment": comment.decode("latin-1") if isinstance(comment, bytes) else comment}
    bit_depth = 1 if mode == "1" else 8
    if ihdr is not None and ihdr[0] == 16:
        import imagecodecs

        bit_depth, mode = 16, PNG16_COLOURS.get(ihdr[1], mode)
        arr = np.asarray(imagecodecs.png_decode(data))
        frames = native = [arr] if len(frames) == 1 else [arr] + frames[1:]
    xmp = info.get("xmp")
    exif_bytes = info.get("exif")
    return Picture(
        data=data,
        format=fmt,
        mode=mode,
        bit_depth=bit_depth,
        size=size,
        frames=frames,
        native=native,
        pil_frames=pil_frames,
        icc=info.get("icc_profile") or None,
        exif=(exif_bytes if isinstance(exif_bytes, bytes) else exif.tobytes())
        if len(exif)
        else None,
        orientation=exif.get(ORIENTATION_TAG) if len(exif) else None,
        xmp=(xmp.encode() if isinstance(xmp, str) else xmp) or None,
        text={str(k): str(v) for k, v in text.items()},
        dpi=tuple(float(v) for v in info["dpi"]) if "dpi" in info else None,
        durations=[float(d or 0) for d in durations] if len(frames) > 1 else None,
        loop=info.get("loop") if len(frames) > 1 else None,
    )


# --- the exactness check ------------------------------------------------------------------


@dataclass
class Check:
    """What differs between an input and its decoded copy. exact: pixels, frames, size,
    mode and bit depth; metadata_ok: nothing in ``missing``."""

    problems: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return not self.problems

    @property
    def metadata_ok(self) -> bool:
        return not self.missing


def _array_diff(a: np.ndarray, b: np.ndarray) -> str | None:
    if a.dtype != b.dtype or a.shape != b.shape:
        return f"{a.dtype}{list(a.shape)} -> {b.dtype}{list(b.shape)}"
    wrong = np.count_nonzero(a != b)
    if wrong:
        diff = np.abs(a.astype(np.int64) - b.astype(np.int64))
        return f"{wrong} of {a.size} samples differ (max |diff| {int(diff.max())})"
    return None


def _check_pixels(orig: Picture, dec: Picture, check: Check) -> None:
    if orig.size != dec.size:
        check.problems.append(f"size {orig.size[0]}x{orig.size[1]} -> {dec.size[0]}x{dec.size[1]}")
    if orig.n_frames != dec.n_frames:
        check.problems.append(f"frames {orig.n_frames} -> {dec.n_frames}")
    if orig.mode != dec.mode:
        check.problems.append(f"mode {orig.mode} -> {dec.mode}")
    if orig.bit_depth != dec.bit_depth:
        check.problems.append(f"bit depth {orig.bit_depth} -> {dec.bit_depth}")
    for i, (a, b) in enumerate(zip(orig.frames, dec.frames)):
        diff = _array_diff(a, b)
        if diff:
            check.problems.append(f"frame {i}: {diff}" if orig.n_frames > 1 else diff)


def _check_metadata(orig: Picture, dec: Picture, check: Check) -> None:
    miss = check.missing
    if orig.icc is not None:
        if dec.icc is None:
            miss.append("icc")
        elif dec.icc != orig.icc:
            miss.append("icc (differs)")
    if orig.exif is not None:
        if dec.exif is None:
            miss.append("exif")
        elif dec.orientation != orig.orientation:
            miss.append(f"exif orientation ({orig.orientation} -> {dec.orientation})")
    if orig.xmp is not None and dec.xmp is None:
        miss.append("xmp")
    for key, value in orig.text.items():
        if key == XMP_KEY and dec.xmp is not None:
            continue  # XMP may move between containers; its presence is checked above
        if key not in dec.text:
            miss.append(f"text {key!r}")
        elif dec.text[key] != value:
            miss.append(f"text {key!r} (differs)")
    if orig.dpi is not None:
        if dec.dpi is None:
            miss.append("dpi")
        elif any(abs(a - b) > DPI_TOLERANCE for a, b in zip(orig.dpi, dec.dpi)):
            miss.append(f"dpi ({orig.dpi[0]:g} -> {dec.dpi[0]:g})")
    if orig.durations is not None and dec.n_frames == orig.n_frames:
        if dec.durations is None or any(
            abs(a - b) > DURATION_TOLERANCE_MS for a, b in zip(orig.durations, dec.durations)
        ):
            miss.append("frame durations")
        if dec.loop != orig.loop:
            miss.append(f"loop ({orig.loop} -> {dec.loop})")


def compare_pictures(orig: Picture, dec: Picture) -> Check:
    """Everything that differs between an input and a decoded copy (empty: identical)."""
    check = Check()
    if orig.format == "JPEG" and dec.data[:3] == JPEG_MAGIC:
        if dec.data != orig.data:
            check.problems.append("JPEG output: bytes differ from the input JPEG")
            _check_pixels(orig, dec, check)
            _check_metadata(orig, dec, check)
        return check
    _check_pixels(orig, dec, check)
    _check_metadata(orig, dec, check)
    return check


def compare_files(original: str | Path, decoded: str | Path) -> Check:
    """compare_pictures on two files; an unreadable decoded file is a problem, not a crash."""
    orig = read_picture(original)
    try:
        dec = read_picture(decoded)
    except (OSError, ValueError, SyntaxError) as e:
        return Check(problems=[f"decoded file unreadable: {e}"])
    return compare_pictures(orig, dec)


# --- classical references ------------------------------------------------------------------


def _rgb_for_webp(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 2:
        return np.ascontiguousarray(np.repeat(arr[:, :, None], 3, axis=2))
    if arr.shape[2] == 2:  # LA -> RGBA
        return np.ascontiguousarray(np.dstack([arr[:, :, :1].repeat(3, axis=2), arr[:, :, 1:]]))
    return np.ascontiguousarray(arr)


def _same(expected: np.ndarray, got: np.ndarray) -> bool:
    got = np.asarray(got)
    if got.ndim == 3 and got.shape[2] == 1 and expected.ndim == 2:
        got = got[:, :, 0]
    if expected.ndim == 3 and expected.shape[2] == 4 and got.ndim == 3 and got.shape[2] == 3:
        if not (expected[:, :, 3] == 255).all():  # libwebp drops only an all-opaque alpha
            return False
        expected = expected[:, :, :3]
    return (
        got.dtype == expected.dtype
        and got.shape == expected.shape
        and bool((got == expected).all())
    )


def _png_frame(pic: Picture, i: int) -> bytes:
    import imagecodecs

    if pic.bit_depth == 16:
        data = imagecodecs.png_encode(np.ascontiguousarray(pic.native[i]), level=PNG_LEVEL)
        if not _same(pic.native[i], imagecodecs.png_decode(data)):
            raise ValueError("decoded PNG differs")
        return data
    frame = pic.pil_frames[i]
    buf = io.BytesIO()
    options = {}
    if frame.mode == "P" and "transparency" in frame.info:
        options["transparency"] = frame.info["transparency"]
    frame.save(buf, format="PNG", compress_level=PNG_LEVEL, **options)
    data = buf.getvalue()
    with Image.open(io.BytesIO(data)) as back:
        if not _same(pic.frames[i], np.asarray(back.convert("RGBA"))):
            raise ValueError("decoded PNG differs")
    return data


def _webp_frame(pic: Picture, i: int) -> bytes:
    import imagecodecs

    if pic.bit_depth == 16:
        raise ValueError("libwebp codes 8 bits per sample only")
    arr = _rgb_for_webp(pic.native[i])
    data = imagecodecs.webp_encode(
        arr, level=WEBP_LEVEL, lossless=True, method=WEBP_METHOD, numthreads=THREADS
    )
    got = np.asarray(imagecodecs.webp_decode(data))
    if not _same(arr, got):
        if arr.shape[2] == 4 and got.shape == arr.shape:
            visible = arr[:, :, 3] > 0
            if (got[visible] == arr[visible]).all():
                raise ValueError("libwebp drops RGB under alpha 0")
        raise ValueError("decoded WebP differs")
    return data


def _jxl_frame(pic: Picture, i: int) -> bytes:
    import imagecodecs

    arr = np.ascontiguousarray(pic.native[i])
    data = imagecodecs.jpegxl_encode(
        arr, lossless=True, distance=0, effort=JXL_EFFORT, numthreads=THREADS
    )
    if not _same(arr, imagecodecs.jpegxl_decode(data, numthreads=THREADS)):
        raise ValueError("decoded JPEG-XL differs")
    return data


def _jpeg_jxl(pic: Picture) -> int:
    import imagecodecs

    data = imagecodecs.jpegxl_encode_jpeg(pic.data, numthreads=THREADS)
    if imagecodecs.jpegxl_decode_jpeg(data, numthreads=THREADS) != pic.data:
        raise ValueError("JPEG-XL did not give back the JPEG's bytes")
    return len(data)


def references(pic: Picture) -> dict[str, dict[str, Any]]:
    """codec -> {"bytes": int or None, "note": reason it is n/a or None}."""
    out: dict[str, dict[str, Any]] = {}
    meta = pic.metadata_bytes()
    for name, fn in (("png", _png_frame), ("webp", _webp_frame), ("jxl-e7", _jxl_frame)):
        try:
            total = sum(len(fn(pic, i)) for i in range(pic.n_frames)) + meta
            out[name] = {"bytes": total, "note": None}
        except Exception as e:  # a codec's own failure: that codec is n/a, the run goes on
            out[name] = {"bytes": None, "note": _one_line(str(e) or type(e).__name__)}
    if pic.format == "JPEG":
        try:
            out["jpeg-jxl"] = {"bytes": _jpeg_jxl(pic), "note": None}
        except Exception as e:
            out["jpeg-jxl"] = {"bytes": None, "note": _one_line(str(e) or type(e).__name__)}
    return out


# --- nncompress ----------------------------------------------------------------------------


def _one_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else "").strip()[:ERROR_CHARS]


def _run(cmd: list[str], timeout: float) -> tuple[subprocess.CompletedProcess | None, str]:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as e:
        return None, f"cannot run {cmd[0]!r}: {e}"
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:g} s: {shlex.join(cmd)}"
    if proc.returncode != 0:
        why = _one_line(proc.stderr) or _one_line(proc.stdout) or f"exit status {proc.returncode}"
        return proc, why
    return proc, ""


def _find_method(doc: Any) -> str | None:
    """The "method" of `nncompress info --json` output (a dict, or a list of them)."""
    if isinstance(doc, list):
        doc = doc[0] if len(doc) == 1 else None
    if isinstance(doc, dict):
        if "method" in doc:
            return str(doc["method"])
        for value in doc.values():
            if isinstance(value, dict) and "method" in value:
                return str(value["method"])
    return None


def _nnc_command(text: str) -> list[str]:
    """The --nnc command; a bare "nncompress" not on PATH is looked up beside this Python
    (a virtualenv's bin/, when the script runs with its python without activating it)."""
    cmd = shlex.split(text)
    if len(cmd) == 1 and os.sep not in cmd[0] and shutil.which(cmd[0]) is None:
        beside = Path(sys.executable).parent / cmd[0]
        if beside.is_file():
            return [str(beside)]
    return cmd


def run_nnc(
    path: Path, work: Path, nnc: list[str], device: str, method: str | None, timeout: float
) -> dict[str, Any]:
    """Encode, decode and inspect one image with the CLI. Keys: bytes, method, error,
    decoded (path or None), encode_s, decode_s."""
    coded, decoded = work / "x.nnc", work / "x.png"
    res: dict[str, Any] = {
        "bytes": None,
        "method": None,
        "error": None,
        "decoded": None,
        "encode_s": None,
        "decode_s": None,
    }
    cmd = [*nnc, "encode", str(path), "-o", str(coded), "--device", device]
    if method:
        cmd += ["--method", method]
    start = time.perf_counter()
    _, err = _run(cmd, timeout)
    res["encode_s"] = time.perf_counter() - start
    if err or not coded.is_file():
        res["error"] = f"encode: {err or 'no output file'}"
        return res
    res["bytes"] = coded.stat().st_size
    start = time.perf_counter()
    _, err = _run([*nnc, "decode", str(coded), "-o", str(decoded), "--device", device], timeout)
    if err and ".jpg" in err:  # a file that keeps a JPEG decodes to a .jpg name only
        decoded = work / "x.jpg"
        _, err = _run([*nnc, "decode", str(coded), "-o", str(decoded), "--device", device], timeout)
    res["decode_s"] = time.perf_counter() - start
    if err or not decoded.is_file():
        res["error"] = f"decode: {err or 'no output file'}"
    else:
        res["decoded"] = decoded
    proc, err = _run([*nnc, "info", str(coded), "--json"], timeout)
    if proc is not None and not err:
        try:
            res["method"] = _find_method(json.loads(proc.stdout))
        except json.JSONDecodeError:
            pass
    return res


# --- the run ---------------------------------------------------------------------------------


def list_corpus(folder: Path) -> list[tuple[Path, str]]:
    """(file, kind) of a corpus folder: corpus.json's order and kinds, else every image."""
    doc_path = folder / CORPUS_JSON
    if doc_path.is_file():
        doc = json.loads(doc_path.read_text())
        return [(folder / e["name"], e.get("kind", "?")) for e in doc["images"]]
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return [(p, "?") for p in files]


def _verdict(row: dict, with_nnc: bool) -> str:
    if not with_nnc:
        return "-"
    if row["nnc_error"]:
        return "ERROR"
    bad = []
    if not row["exact"]:
        bad.append("NOT EXACT")
    if not row["metadata_ok"]:
        bad.append("METADATA")
    if row["ratio"] is not None and row["ratio"] > SIZE_TOLERANCE:
        bad.append("SIZE")
    return "+".join(bad) or "OK"


def measure(path: Path, kind: str, args: argparse.Namespace, nnc: list[str] | None) -> dict:
    pic = read_picture(path)
    refs = references(pic)
    exact_refs = {k: v["bytes"] for k, v in refs.items() if v["bytes"] is not None}
    ref_min = min(exact_refs.values()) if exact_refs else None
    row: dict[str, Any] = {
        "name": path.name,
        "kind": kind,
        "width": pic.size[0],
        "height": pic.size[1],
        "frames": pic.n_frames,
        "mode": pic.mode,
        "bit_depth": pic.bit_depth,
        "input_bytes": len(pic.data),
        "metadata_bytes": pic.metadata_bytes(),
        "references": refs,
        "min": ref_min,
        "min_codec": min(exact_refs, key=exact_refs.get) if exact_refs else None,
        "nnc_bytes": None,
        "method": None,
        "nnc_error": None,
        "encode_s": None,
        "decode_s": None,
        "ratio": None,
        "exact": None,
        "problems": [],
        "metadata_ok": None,
        "metadata_missing": [],
    }
    if nnc is not None:
        with tempfile.TemporaryDirectory(prefix="corpus-nnc-") as tmp:
            res = run_nnc(path, Path(tmp), nnc, args.device, args.method or None, args.timeout)
            row.update(
                nnc_bytes=res["bytes"],
                method=res["method"],
                nnc_error=res["error"],
                encode_s=res["encode_s"],
                decode_s=res["decode_s"],
            )
            if res["decoded"] is not None:
                try:
                    check = compare_pictures(pic, read_picture(res["decoded"]))
                except (OSError, ValueError, SyntaxError) as e:
                    check = Check(problems=[f"decoded file unreadable: {e}"])
                row.update(
                    exact=check.exact,
                    problems=check.problems,
                    metadata_ok=check.metadata_ok,
                    metadata_missing=check.missing,
                )
        if row["nnc_bytes"] is not None and ref_min:
            row["ratio"] = row["nnc_bytes"] / ref_min
    row["verdict"] = _verdict(row, nnc is not None)
    return row


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def _table(rows: list[dict], with_nnc: bool) -> str:
    header = ["image", "kind", "size", "input", "meta", *(REF_LABELS[r] for r in REFS), "min"]
    if with_nnc:
        header += ["nnc", "method", "nnc/min", "exact", "metadata", "verdict"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        size = f"{r['width']}x{r['height']}" + (f", {r['frames']} fr" if r["frames"] > 1 else "")
        size += f" {r['mode']}" + ("16" if r["bit_depth"] == 16 else "")
        cells = [r["name"], r["kind"], size, str(r["input_bytes"]), str(r["metadata_bytes"])]
        for ref in REFS:
            entry = r["references"].get(ref)
            cells.append(
                "-"
                if entry is None
                else _cell(entry["bytes"])
                if entry["bytes"] is not None
                else "n/a"
            )
        cells.append(_cell(r["min"]))
        if with_nnc:
            if r["nnc_error"]:
                cells += [
                    _cell(r["nnc_bytes"]),
                    _cell(r["method"]),
                    "-",
                    "-",
                    "-",
                    f"ERROR: {r['nnc_error']}".replace("|", "/"),
                ]
            else:
                meta = "ok" if r["metadata_ok"] else "missing: " + ", ".join(r["metadata_missing"])
                exact = "yes" if r["exact"] else "no: " + "; ".join(r["problems"])
                ratio = "-" if r["ratio"] is None else f"{r['ratio']:.3f}"
                cells += [
                    _cell(r["nnc_bytes"]),
                    _cell(r["method"]),
                    ratio,
                    exact.replace("|", "/"),
                    meta.replace("|", "/"),
                    r["verdict"],
                ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _notes(rows: list[dict]) -> list[str]:
    """Why references are n/a, one line per codec and reason."""
    by_reason: dict[tuple[str, str], list[str]] = {}
    for r in rows:
        for ref, entry in r["references"].items():
            if entry["bytes"] is None:
                by_reason.setdefault((REF_LABELS[ref], entry["note"]), []).append(r["name"])
    return [
        f"- {label} n/a ({note}): {', '.join(names)}" for (label, note), names in by_reason.items()
    ]


def summarize(rows: list[dict], with_nnc: bool) -> tuple[list[str], int]:
    lines = [f"{len(rows)} images."]
    if not with_nnc:
        return lines + ["nncompress not run (--no-nnc)."], EXIT_OK
    ok = [r for r in rows if r["verdict"] == "OK"]
    failed = [r for r in rows if r["nnc_error"] or r["exact"] is False or r["metadata_ok"] is False]
    big = [r for r in rows if r["ratio"] is not None and r["ratio"] > SIZE_TOLERANCE]
    ratios = [r for r in rows if r["ratio"] is not None]
    lines.append(f"OK: {len(ok)} of {len(rows)}.")
    if ratios:
        worst = max(ratios, key=lambda r: r["ratio"])
        lines.append(
            f"Worst nnc/min: {worst['ratio']:.3f} ({worst['name']}, min {worst['min_codec']})."
        )
    lines.append(
        f"Not exact / metadata lost / failed: {len(failed)}"
        + (f" ({', '.join(r['name'] for r in failed)})" if failed else "")
        + "."
    )
    lines.append(
        f"Larger than {SIZE_TOLERANCE:g} x min: {len(big)}"
        + (f" ({', '.join(r['name'] for r in big)})" if big else "")
        + "."
    )
    status = EXIT_FAILURE if failed else EXIT_SIZE if big else EXIT_OK
    return lines, status


def _environment() -> dict[str, Any]:
    try:
        from benchmarks import common
    except ImportError:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        try:
            from benchmarks import common
        except ImportError:
            return {}
    try:
        return common.environment()
    except Exception:
        return {}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("corpus", type=Path, help="folder written by benchmarks/corpus.py")
    ap.add_argument(
        "--out",
        type=Path,
        default=Path("bench-out/corpus"),
        help="results folder (default: %(default)s)",
    )
    ap.add_argument(
        "--nnc",
        default="nncompress",
        help='the nncompress command, split like a shell (default: "%(default)s")',
    )
    ap.add_argument("--device", default="cpu", help="--device for nncompress (default: cpu)")
    ap.add_argument(
        "--method", default="auto", help='encode --method (default: auto; "" leaves the option out)'
    )
    ap.add_argument(
        "--timeout",
        type=float,
        default=1800.0,
        help="seconds per nncompress command (default: %(default)g)",
    )
    ap.add_argument("--no-nnc", action="store_true", help="classical references only")
    ap.add_argument("--only", help="comma-separated image names (default: all)")
    args = ap.parse_args(argv)

    if not args.corpus.is_dir():
        print(f"error: not a folder: {args.corpus}", file=sys.stderr)
        return EXIT_FAILURE
    if args.out.resolve() == args.corpus.resolve():
        print("error: --out must not be the corpus folder (both use corpus.json)", file=sys.stderr)
        return EXIT_FAILURE
    items = list_corpus(args.corpus)
    if args.only:
        wanted = {n.strip() for n in args.only.split(",") if n.strip()}
        unknown = wanted - {p.name for p, _ in items}
        if unknown:
            print(f"error: not in the corpus: {', '.join(sorted(unknown))}", file=sys.stderr)
            return EXIT_FAILURE
        items = [(p, k) for p, k in items if p.name in wanted]
    if not items:
        print(f"error: no images in {args.corpus}", file=sys.stderr)
        return EXIT_FAILURE
    nnc = None if args.no_nnc else _nnc_command(args.nnc)

    start = time.perf_counter()
    rows = []
    for path, kind in items:
        t0 = time.perf_counter()
        row = measure(path, kind, args, nnc)
        rows.append(row)
        print(
            f"{path.name}: min {row['min']} ({row['min_codec']}), nnc {row['nnc_bytes']}, "
            f"{row['verdict']} [{time.perf_counter() - t0:.1f} s]",
            file=sys.stderr,
        )
    elapsed = time.perf_counter() - start

    summary, status = summarize(rows, nnc is not None)
    notes = _notes(rows)
    md = [
        "# nncompress on the corpus",
        "",
        f"Corpus: `{args.corpus}`; nncompress: "
        + (
            f"`{shlex.join(nnc)} encode --method {args.method} --device {args.device}`"
            if nnc is not None
            else "not run"
        ),
        "",
        _table(rows, nnc is not None),
        "",
        "Bytes. PNG: Pillow level 9 (16-bit: imagecodecs.png_encode level 9); WebP-LL: "
        f"lossless level {WEBP_LEVEL} method {WEBP_METHOD}; JXL-e7: lossless effort {JXL_EFFORT};"
        " JPEG→JXL: JPEG-XL's lossless JPEG transcoding (JPEG inputs only). Each decoded and "
        "checked; multi-frame: the sum over frames coded alone; meta: raw metadata bytes, added "
        "to PNG/WebP/JXL. min: smallest exact reference. input: the corpus file itself.",
        "",
        *notes,
        *([""] if notes else []),
        *summary,
        f"Time: {elapsed:.1f} s.",
    ]
    text = "\n".join(md) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "corpus.md").write_text(text)
    doc = {
        "corpus": str(args.corpus),
        "nnc": None if nnc is None else shlex.join(nnc),
        "method": args.method,
        "device": args.device,
        "size_tolerance": SIZE_TOLERANCE,
        "images": rows,
        "summary": summary,
        "exit_status": status,
        "seconds": elapsed,
        "environment": _environment(),
    }
    (args.out / "corpus.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
