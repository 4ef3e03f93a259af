"""The command line: a thin click layer over nncompress.api.

Every command prints one line per error to stderr and exits non-zero; nothing the user
has is overwritten without --force; outputs are written atomically (temp file + rename).
"""

from __future__ import annotations

import functools
import io
import json
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from .errors import NncError

NNC_SUFFIX = ".nnc"
STDIO = "-"
DEBUG_ENV = "NNCOMPRESS_DEBUG"  # set to 1 to see tracebacks of internal errors
EXIT_USER_ERROR = 1
EXIT_INTERNAL_ERROR = 3
PNG_LEVEL = 9  # reference PNG for the "ratio to PNG" column, as in benchmarks


class _Fail(click.ClickException):
    exit_code = EXIT_USER_ERROR


def _out_of_memory(e: Exception) -> bool:
    """torch's allocator failing, on a GPU (OutOfMemoryError) or on the CPU."""
    return (
        isinstance(e, MemoryError)
        or type(e).__name__ == "OutOfMemoryError"
        or (isinstance(e, RuntimeError) and "can't allocate memory" in str(e))
    )


def _handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn our errors into one-line messages; hide tracebacks of internal errors too."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except NncError as e:
            raise _Fail(str(e)) from None
        except OSError as e:
            where = f": {e.filename}" if getattr(e, "filename", None) else ""
            raise _Fail(f"{e.strerror or e}{where}") from None
        except KeyboardInterrupt:
            raise click.Abort() from None
        except Exception as e:  # noqa: BLE001 — the promise is: never a traceback
            if _out_of_memory(e) and not os.environ.get(DEBUG_ENV):
                text = str(e).strip()
                first = text.splitlines()[0][:120] if text else type(e).__name__
                raise _Fail(
                    f"out of memory ({first}): the tiles of all images given together share "
                    "each batch; encode fewer or smaller images per call or use a lower "
                    "--max-batch (a file decodes with the batch size it was encoded with)"
                ) from None
            if os.environ.get(DEBUG_ENV):
                raise
            click.echo(
                f"Error: internal error: {type(e).__name__}: {e} (set {DEBUG_ENV}=1 for details)",
                err=True,
            )
            sys.exit(EXIT_INTERNAL_ERROR)

    return wrapper


def _progress_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--progress/--no-progress",
        default=None,
        help="Show progress bars (default: when stderr is a terminal).",
    )(fn)


def _progress(flag: bool | None) -> bool:
    return sys.stderr.isatty() if flag is None else flag


def _read_input(path: str, limit: int | None = None) -> bytes:
    """The bytes of a file or stdin; with ``limit``, refuse larger inputs before reading."""
    if path == STDIO:
        data = sys.stdin.buffer.read(limit + 1 if limit else -1)
    else:
        if limit and Path(path).stat().st_size > limit:
            raise _Fail(f"{path}: larger than {limit:,} bytes, not a .nnc file this build reads")
        data = Path(path).read_bytes()
    if limit and len(data) > limit:
        raise _Fail(f"{path}: larger than {limit:,} bytes, not a .nnc file this build reads")
    return data


def _write_output(path: Path | str, data: bytes, force: bool) -> None:
    """Write atomically; refuse to overwrite unless force."""
    if path == STDIO:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    path = Path(path)
    if path.exists() and not force:
        raise _Fail(f"{path} exists (use --force to overwrite)")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _expand_folders(inputs: Sequence[str], suffixes: frozenset[str], what: str) -> list[str]:
    """Inputs with every folder replaced by the files below it (recursively, sorted) whose
    names end in one of ``suffixes`` (as ``train`` finds them: hidden entries skipped); a
    folder with none of them is an error."""
    from .images import files_below

    out: list[str] = []
    for src in inputs:
        folder = Path(src)
        if src == STDIO or not folder.is_dir():
            out.append(src)
            continue
        files, _ = files_below(folder, suffixes)
        if not files:
            raise _Fail(f"{src}: a folder without {what} ({', '.join(sorted(suffixes))})")
        out.extend(str(p) for p in files)
    return out


def _outputs(inputs: Sequence[str], out: str | None, suffix: str, fallback: str) -> list[str]:
    """Output names: -o FILE for one input, -o DIR for several, else beside each input."""
    if out is not None and len(inputs) == 1 and not Path(out).is_dir():
        return [out]
    if out is not None and not Path(out).is_dir():
        raise _Fail(f"-o {out}: with several inputs, -o must be an existing folder")
    names = []
    for src in inputs:
        if src == STDIO:
            names.append(STDIO if out is None else str(Path(out) / f"{fallback}{suffix}"))
            continue
        p = Path(src)
        base = p.with_suffix(suffix) if p.suffix != suffix else p.with_name(p.name + suffix)
        names.append(str(Path(out) / base.name) if out is not None else str(base))
    if len(set(names) - {STDIO}) != len([n for n in names if n != STDIO]):
        raise _Fail("two inputs would write the same output; use -o DIR or rename inputs")
    return names


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="nncompress")
def main() -> None:
    """nncompress: learned lossless image compression.

    An autoregressive model predicts every subpixel and a range coder turns the predictions
    into bits. Decoding gives back exactly the same pixels.
    """


_model_option = click.option(
    "--model",
    "-m",
    default=None,
    metavar="NAME|PATH",
    help="Model name (see `nncompress models`) or model file; default: by image mode.",
)
_device_option = click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="Where the model runs. Files must be decoded on the kind of device that encoded them.",
)


@main.command()
@click.argument("inputs", nargs=-1, required=True, metavar="IN...")
@click.option(
    "-o",
    "--output",
    default=None,
    metavar="OUT",
    help="Output file (one input; - for stdout) or existing folder (several).",
)
@_model_option
@_device_option
@click.option(
    "--tile",
    type=click.IntRange(1, 4096),
    default=None,
    help="Tile size in pixels (default: the model's).",
)
@click.option(
    "--max-batch",
    type=click.IntRange(1, 1 << 20),
    default=None,
    metavar="N",
    help="Most tiles per batch step (default: 512 on CPU, 2048 on CUDA). Memory grows with "
    "it, and the decoder needs what the encoder needed: lower it for small GPUs.",
)
@click.option("--force", "-f", is_flag=True, help="Overwrite existing outputs.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing on success.")
@_progress_option
@_handle_errors
def encode(inputs, output, model, device, tile, max_batch, force, quiet, progress) -> None:
    """Compress images (PNG, WebP, ..., folders of them searched recursively, or - for
    stdin) to .nnc files.

    All inputs are coded together, in one schedule, and each gets its own file (default:
    IN with the suffix .nnc, beside it). Prints size, bits/subpixel, the model's ideal
    bits/subpixel, and the ratio to PNG.
    """
    from . import api
    from .images import IMAGE_SUFFIXES, open_image

    inputs = _expand_folders(inputs, IMAGE_SUFFIXES, "images")
    if len(inputs) > 1 and STDIO in inputs:
        raise _Fail("stdin (-) can only be encoded alone")
    outs = _outputs(inputs, output, NNC_SUFFIX, "stdin")
    for o in outs:  # check before hours of work, not after
        if o != STDIO and Path(o).exists() and not force:
            raise _Fail(f"{o} exists (use --force to overwrite)")
    images = []
    for src in inputs:
        try:
            images.append(open_image(_read_input(src)))
        except NncError as e:
            raise _Fail(f"{src}: {e}") from None
    lm = api.load_model(model) if model else None
    results = api.compress_detailed(
        images,
        lm,
        device,
        tile,
        max_batch,
        progress=api._tqdm_factory if _progress(progress) else None,
    )
    for src, dst, im, res in zip(inputs, outs, images, results):
        _write_output(dst, res.data, force)
        if not quiet:
            png = _png_size(im)
            click.echo(
                f"{src} -> {dst}: {len(res.data):,} bytes, "
                f"{res.bits_per_subpixel:.3f} bits/subpixel "
                f"(model {res.model_bits_per_subpixel:.3f}), {len(res.data) / png:.3f}x PNG",
                err=dst == STDIO,
            )


def _png_size(image) -> int:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=PNG_LEVEL)
    return buf.tell()


@main.command()
@click.argument("inputs", nargs=-1, required=True, metavar="IN...")
@click.option(
    "-o",
    "--output",
    default=None,
    metavar="OUT",
    help="Output PNG (one input; - for stdout) or existing folder (several).",
)
@click.option(
    "--model",
    "-m",
    default=None,
    metavar="NAME|PATH",
    help="Model to decode with (default: the one named in the file).",
)
@_device_option
@click.option("--force", "-f", is_flag=True, help="Overwrite existing outputs.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing on success.")
@_progress_option
@_handle_errors
def decode(inputs, output, model, device, force, quiet, progress) -> None:
    """Decode .nnc files (or folders of them, searched recursively) to PNG images with
    exactly the original pixels and mode.

    Default output: IN with the suffix .png. Files encoded together are decoded together.
    """
    from . import api

    inputs = _expand_folders(inputs, frozenset({NNC_SUFFIX}), "nncompress files")
    if len(inputs) > 1 and STDIO in inputs:
        raise _Fail("stdin (-) can only be decoded alone")
    outs = _outputs(inputs, output, ".png", "stdin")
    for o in outs:
        if o != STDIO and Path(o).exists() and not force:
            raise _Fail(f"{o} exists (use --force to overwrite)")
    blobs = []
    from . import container

    for src in inputs:
        blobs.append(_read_input(src, container.MAX_FILE_BYTES))
        try:
            container.unpack(blobs[-1])
        except NncError as e:
            raise _Fail(f"{src}: {e}") from None
    images = api.decompress_many(blobs, model, device, progress=_progress(progress))
    for src, dst, im in zip(inputs, outs, images):
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        _write_output(dst, buf.getvalue(), force)
        if not quiet:
            click.echo(f"{src} -> {dst}: {im.width}x{im.height} {im.mode}", err=dst == STDIO)


@main.command()
@click.argument("files", nargs=-1, required=True, metavar="FILE.nnc...")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@_handle_errors
def info(files, as_json) -> None:
    """Show the header of .nnc files in human-readable form."""
    from . import container

    rows = []
    for f in files:
        data = _read_input(f, container.MAX_FILE_BYTES)
        try:
            header, payload = container.unpack(data)
        except NncError as e:
            raise _Fail(f"{f}: {e}") from None
        d = container.describe(header, len(payload))
        d = {"file": f, "file_bytes": len(data), **d}
        rows.append(d)
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    for d in rows:
        width = max(len(k) for k in d)
        for k, v in d.items():
            click.echo(f"{k:<{width}}  {v}")
        click.echo()


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@_handle_errors
def models(as_json) -> None:
    """List the installed models with their digest and reported bits/subpixel."""
    from .zoo import MODEL_DIR_ENV, describe_models

    rows = describe_models()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"no models installed (set {MODEL_DIR_ENV} or see pretrained/)")
        return
    click.echo(f"{'name':<24} {'family':<11} {'digest':<14} {'bits/subpixel':>13}  measured on")
    for r in rows:
        if "error" in r:
            click.echo(f"{r['name']:<24} error: {r['error']}")
            continue
        bits, where = _reported_bits(r["info"])
        bits_s = f"{bits:.3f}" if bits is not None else "-"
        click.echo(
            f"{r['name']:<24} {r['family']:<11} {r['digest'][:12]:<14} {bits_s:>13}  {where}"
        )


# Keys under which model files report held-out bits/subpixel, and what they were measured on.
_BITS_KEYS = (
    "val_bits_per_subpixel",
    "val_bpd",
    "heldout_bits_per_subpixel",
    "heldout_bits_per_dim",
)
_WHERE_KEYS = ("eval_data", "val_data", "split")


def _reported_bits(info: dict[str, Any]) -> tuple[float | None, str]:
    bits = next((info[k] for k in _BITS_KEYS if isinstance(info.get(k), (int, float))), None)
    where = next((str(info[k]) for k in _WHERE_KEYS if info.get(k)), "")
    return bits, where


@main.command()
@click.argument("inputs", nargs=-1, required=True, metavar="IN...")
@_model_option
@_device_option
@click.option(
    "--tile",
    type=click.IntRange(1, 4096),
    default=None,
    help="Tile size (default: the model's; the coder's tiles, so scores predict sizes).",
)
@click.option(
    "--heatmap",
    type=click.Path(),
    default=None,
    metavar="OUT.png|DIR",
    help="Write a map of bits per pixel: to OUT.png (one input), or as DIR/<input stem>.png "
    "into an existing folder.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of lines.")
@click.option("--force", "-f", is_flag=True, help="Overwrite existing heatmaps.")
@_handle_errors
def score(inputs, model, device, tile, heatmap, as_json, force) -> None:
    """The model's bits/subpixel of each image (or of the images in folders, searched
    recursively) in one parallel pass, without coding."""
    from . import api
    from .images import IMAGE_SUFFIXES, open_image

    inputs = _expand_folders(inputs, IMAGE_SUFFIXES, "images")
    maps = _heatmap_names(inputs, heatmap, force) if heatmap else []

    def opened():
        for src in inputs:
            try:
                yield open_image(_read_input(src))
            except NncError as e:
                raise _Fail(f"{src}: {e}") from None

    rows = []
    for i, (src, res) in enumerate(zip(inputs, api.iter_scores(opened(), model, device, tile))):
        h, w = res.bits_map.shape
        rows.append(
            {
                "path": src,
                "bits_per_subpixel": res.bits_per_subpixel,
                "width": w,
                "height": h,
                "subpixels": res.subpixels,
                "model": res.model_name,
                "tile": list(res.tile),
            }
        )
        if heatmap:
            _write_output(maps[i], _heatmap_png(res.bits_map), force)
        if not as_json:
            click.echo(f"{src}\t{res.bits_per_subpixel:.4f}")
    if as_json:
        click.echo(json.dumps(rows, indent=2))


def _heatmap_names(inputs: Sequence[str], heatmap: str, force: bool) -> list[str]:
    """FOLDER/<input stem>.png when --heatmap is an existing folder, else the file itself
    (one input only). Checked before any work: no two inputs share a name, nothing is
    overwritten."""
    if Path(heatmap).is_dir():
        names = [str(Path(heatmap) / (Path(src).stem + ".png")) for src in inputs]
        if len(set(names)) != len(names):
            raise _Fail("two inputs would write the same heatmap (same file stem); rename them")
    elif len(inputs) == 1:
        names = [heatmap]
    else:
        raise _Fail(f"--heatmap {heatmap}: with several inputs, give an existing folder")
    for name in names:
        if not force and Path(name).exists():
            raise _Fail(f"{name} exists (use --force to overwrite)")
    return names


def _heatmap_png(bits) -> bytes:
    """bits: (H, W) float. A dark-to-bright ramp, 0 bits black, the 99th percentile white."""
    import numpy as np
    from PIL import Image

    top = max(float(np.percentile(bits, 99)), 1e-6)
    t = np.clip(bits / top, 0.0, 1.0)
    # black -> purple -> orange -> yellow-white: readable without matplotlib
    stops = np.array([[0, 0, 0], [90, 20, 140], [240, 110, 30], [255, 250, 200]], dtype=np.float64)
    pos = t * (len(stops) - 1)
    i = np.minimum(pos.astype(int), len(stops) - 2)
    f = (pos - i)[..., None]
    rgb = stops[i] * (1 - f) + stops[i + 1] * f
    buf = io.BytesIO()
    Image.fromarray(rgb.round().astype(np.uint8), "RGB").save(buf, format="PNG")
    return buf.getvalue()


@main.command()
@click.option("--model", "-m", required=True, metavar="NAME|PATH", help="Model to sample from.")
@click.option(
    "-n",
    "count",
    type=click.IntRange(1, 1024),
    default=16,
    show_default=True,
    help="Number of images.",
)
@click.option("-o", "--output", required=True, metavar="GRID.png", help="Output PNG grid.")
@click.option("--size", default=None, metavar="HxW", help="Image size (default: the model's tile).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@_device_option
@click.option("--force", "-f", is_flag=True, help="Overwrite an existing output.")
@_progress_option
@_handle_errors
def sample(model, count, output, size, seed, device, force, progress) -> None:
    """Draw images from a model, pixel by pixel, with the coder's own stepper."""
    import math

    from PIL import Image

    from . import api

    if Path(output).exists() and not force:
        raise _Fail(f"{output} exists (use --force to overwrite)")
    hw = None
    if size:
        try:
            h, w = (int(v) for v in size.lower().split("x"))
        except ValueError:
            raise _Fail(f"--size {size!r}: expected HxW, e.g. 32x32") from None
        if not (1 <= h <= 4096 and 1 <= w <= 4096):
            raise _Fail("--size: sides must be 1..4096")
        hw = (h, w)
    images = api.sample(model, count, hw, device, seed, progress=_progress(progress))
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    w, h = images[0].size
    grid = Image.new(images[0].mode, (cols * w, rows * h))
    for k, im in enumerate(images):
        grid.paste(im, ((k % cols) * w, (k // cols) * h))
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    _write_output(output, buf.getvalue(), force)
    click.echo(f"wrote {count} samples of {h}x{w} to {output}")


def _register_train() -> None:
    try:
        from .train.cli import train
    except ImportError:  # the training package is optional at import time
        return
    main.add_command(train)


_register_train()

if __name__ == "__main__":
    main()
