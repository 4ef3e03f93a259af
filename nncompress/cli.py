"""The command line: a thin click layer over nncompress.api.

Every command prints one line per error to stderr and exits non-zero (2 for usage errors);
nothing the user has is overwritten without --force; outputs are written atomically (temp
file + rename) with the permissions a plain open() would give them; output paths are
checked before any work. Runs over many files go on past a file that fails, and say so at
the end.
"""

from __future__ import annotations

import errno
import functools
import io
import json
import math
import os
import stat
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from .errors import NncError, is_out_of_memory, out_of_memory
from .multidevice import AUTO_CPU_POOL_SECONDS

NNC_SUFFIX = ".nnc"
STDIO = "-"
DEBUG_ENV = "NNCOMPRESS_DEBUG"  # set to 1 to see tracebacks of internal errors
EXIT_USER_ERROR = 1
EXIT_INTERNAL_ERROR = 3
PNG_LEVEL = 9  # reference PNG for the "ratio to PNG" column, as in benchmarks
# decode's fallback names when IN.png exists: IN.decoded.png, then IN.decoded.2.png, ...
DECODED_TAG = ".decoded"
MAX_FALLBACK_NAMES = 1000

# Seconds per megapixel of coding (encoding or decoding: about the same) on a CPU with one
# coding thread, measured on this project's shared 2-core AMD EPYC: the float models of 0.3
# with benchmarks/decode_speed.py on a 768x512 crop (pixelcnnpp-photo-small 21.9 s,
# pixelcnnpp-photo 90.3 s); the integer models (format 4 and later: what codes files) by
# decode_speed.py on that crop (-small-int 33.7 s encode, 34.2 s decode) and on a 192x128
# crop (-int: 326 s/MP encode, 273 s/MP decode). A model file may carry its own figure in
# its info under CPU_TIMING_INFO_KEY (used first); other models are estimated from the
# elements of their state dict (integer models: weights and tables): the line through
# the two integer photo models (1.28 M and 7.34 M elements).
CPU_SECONDS_PER_MEGAPIXEL = {
    "pixelcnnpp-photo-small": 56.0,
    "pixelcnnpp-photo": 230.0,
    "pixelcnnpp-photo-small-int": 90.0,
    "pixelcnnpp-photo-int": 300.0,
}
CPU_TIMING_INFO_KEY = "cpu_seconds_per_megapixel"
CPU_SECONDS_PER_MEGAPIXEL_BASE = 45.0
CPU_SECONDS_PER_MEGAPIXEL_PER_MILLION_PARAMS = 35.0
# A CPU run estimated to take longer than this first prints one line with the estimate.
SLOW_CPU_RUN_SECONDS = 30.0


class _Fail(click.ClickException):
    exit_code = EXIT_USER_ERROR


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
            if e.errno == errno.EPIPE:  # stdout closed early (| head): click exits quietly
                raise
            where = f": {e.filename}" if getattr(e, "filename", None) else ""
            raise _Fail(f"{e.strerror or e}{where}") from None
        except KeyboardInterrupt:
            raise click.Abort() from None
        except Exception as e:  # noqa: BLE001 — the promise is: never a traceback
            if is_out_of_memory(e) and not os.environ.get(DEBUG_ENV):
                raise _Fail(str(out_of_memory(e, "coding"))) from None
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


def _umask() -> int:
    """The process's umask: from /proc where it says (without changing it), else set and
    restored at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _exists_message(path: Path | str) -> str:
    return f"{path} exists (use --force to overwrite)"


def _write_output(path: Path | str, data: bytes, force: bool) -> None:
    """Write atomically (a temp file beside it, then a rename); refuse to overwrite unless
    force, even a file that appeared after the checks. The file gets the permissions a
    plain open() would give it: 0666 & ~umask when new, the old file's when replaced."""
    if path == STDIO:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    path = Path(path)
    if os.path.lexists(path) and not force:
        raise _Fail(_exists_message(path))
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)  # mkstemp makes 0600
        if force:
            os.replace(tmp, path)
        else:
            _rename_new(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)  # gone after a rename; the spare name after a link


def _rename_new(tmp: str, path: Path) -> None:
    """Give ``tmp`` the name ``path`` only if nothing has that name: a hard link fails
    when it exists (os.replace would replace it). Where links are not supported, check
    and rename."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise _Fail(_exists_message(path)) from None
    except OSError:
        if os.path.lexists(path):
            raise _Fail(_exists_message(path)) from None
        os.replace(tmp, path)


def _folder_problem(folder: Path) -> str | None:
    """Why files cannot be written into ``folder``, or None."""
    if not folder.exists():
        return f"folder {folder} does not exist"
    if not folder.is_dir():
        return f"{folder} is not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"folder {folder} is not writable"
    return None


def _output_problem(dst: str, force: bool) -> tuple[str, str] | None:
    """Why ``dst`` cannot be written, as (kind, one-line message), kind "exists" or
    "path"; None if it can. Checked before any work."""
    if dst == STDIO:
        return None
    p = Path(dst)
    problem = _folder_problem(p.parent)
    if problem is not None:
        return "path", f"{dst}: {problem}"
    if p.is_dir():
        return "path", f"{dst} is a folder"
    if os.path.lexists(p) and not force:
        return "exists", _exists_message(dst)
    return None


def _check_output(dst: str, force: bool) -> None:
    """_output_problem as a one-line error."""
    problem = _output_problem(dst, force)
    if problem is not None:
        raise _Fail(problem[1])


def _decoded_name(dst: str, avoid: set[str]) -> str:
    """decode's name for IN when the default name ``dst`` (IN.png) exists: the first of
    IN.decoded.png, IN.decoded.2.png, IN.decoded.3.png, ... that exists neither on disk nor
    in ``avoid`` (the other outputs of the run)."""
    p = Path(dst)
    for k in range(1, MAX_FALLBACK_NAMES + 1):
        tag = DECODED_TAG if k == 1 else f"{DECODED_TAG}.{k}"
        name = str(p.with_name(f"{p.stem}{tag}{p.suffix}"))
        if name not in avoid and not os.path.lexists(name):
            return name
    raise _Fail(f"{dst} and {MAX_FALLBACK_NAMES} fallback names exist; use -o or --force")


class _Tally:
    """Per-file outcomes of a run. With one input, a failure is the command's one-line
    error; with several, it is reported and the run goes on, ending with a summary line
    (and exit status 1 if any failed)."""

    def __init__(self, inputs: int, verb: str, quiet: bool) -> None:
        self.many = inputs > 1
        self.verb = verb
        self.quiet = quiet
        self.done = self.skipped = self.failed = 0

    def ok(self) -> None:
        self.done += 1

    def skip(self, src: str, dst: str) -> None:
        self.skipped += 1
        if not self.quiet:
            click.echo(f"{src}: skipped, {dst} exists")

    def fail(self, message: str) -> None:
        if not self.many:
            raise _Fail(message)
        self.failed += 1
        click.echo(f"Error: {message}", err=True)

    def finish(self) -> None:
        if self.many and (self.failed or not self.quiet):
            click.echo(
                f"{self.verb} {self.done}, skipped {self.skipped}, failed {self.failed}",
                err=True,
            )
        if self.failed:
            raise click.exceptions.Exit(EXIT_USER_ERROR)


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
    """Output names: -o FILE for one input, -o DIR for several, else beside each input.
    A folder given with -o (or the folder of -o FILE) must exist and be writable."""
    if out is not None and out != STDIO:
        folder = Path(out) if Path(out).is_dir() or out.endswith(("/", os.sep)) else None
        if folder is None and len(inputs) > 1:
            raise _Fail(f"-o {out}: with several inputs, -o must be an existing folder")
        problem = _folder_problem(folder if folder is not None else Path(out).parent)
        if problem is not None:
            raise _Fail(f"-o {out}: {problem}")
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


def _one_line_usage(e: click.UsageError) -> click.UsageError:
    """click's usage error (usage line, hint, blank line, message) as one line: the message
    and where the help is."""
    text = " ".join(e.format_message().split())
    if e.ctx is not None:
        text += f" See '{e.ctx.command_path} --help'."
    return click.UsageError(text)  # no ctx: shown as "Error: ..." alone, exit status 2


class _Main(click.Group):
    """The command group; usage errors of every command print one line (exit status 2).
    Help (also the help printed for ``nncompress`` alone) is unchanged."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as e:
            raise _one_line_usage(e) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as e:
            raise _one_line_usage(e) from None


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
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


def _device_spec(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if value in ("auto", "cpu", "cuda"):
        return value
    if value == "cpu:1":
        return "cpu"  # one process, as cpu
    if ":" in value:
        from .multidevice import workers

        try:
            workers(value)
        except NncError as e:
            raise click.BadParameter(str(e)) from None
        return value
    raise click.BadParameter(
        f"{value!r}: use auto, cpu, cuda, cuda:all, cuda:0,1 (those GPUs), cpu:N or cpu:all"
    )


_device_option = click.option(
    "--device",
    default="auto",
    show_default=True,
    metavar="auto|cpu|cuda|cuda:all|cuda:0,1|cpu:N|cpu:all",
    callback=_device_spec,
    help="Where the model runs. auto: CUDA if there is one; else one process, or one per "
    "usable core (cpu:all) when the model's work is estimated above "
    f"{AUTO_CPU_POOL_SECONDS:.0f} s on one core. cpu (= cpu:1): one process. cuda:all / "
    "cuda:0,1 split the images over one worker process per GPU; cpu:N / cpu:all split "
    "the chunks of every image over N CPU processes (one core each, ~1-2 s to start). "
    "The files are the same whatever the device; files decode on any device, whatever "
    "device encoded them.",
)


_max_batch_option = click.option(
    "--max-batch",
    type=click.IntRange(1, 1 << 20),
    default=None,
    metavar="N",
    help="Most tiles per batch step (default: 512 on CPU, 2048 on CUDA). Memory grows with "
    "it; files do not depend on it (any batch size decodes any file).",
)
_skip_option = click.option(
    "--skip-existing",
    is_flag=True,
    help="Leave inputs whose output exists alone (reported, counted as skipped).",
)
_max_pixels_option = click.option(
    "--max-pixels",
    type=click.IntRange(1, None),
    default=None,
    metavar="N",
    help="Refuse images (and .nnc headers) of more pixels than this, before reading "
    "them (default: 89,478,485, Pillow's limit).",
)


def _usage_conflicts(force: bool, skip_existing: bool) -> None:
    if force and skip_existing:
        raise click.UsageError("--force and --skip-existing exclude each other")


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
@_max_batch_option
@click.option("--force", "-f", is_flag=True, help="Overwrite existing outputs.")
@_skip_option
@_max_pixels_option
@click.option(
    "--method",
    type=click.Choice(["auto", "model", "jxl", "webp", "png", "store", "jpeg"]),
    default="auto",
    show_default=True,
    help="How to code each image: auto (the smallest of the model and the classical "
    "codecs; a JPEG kept as that JPEG, recompressed by JPEG-XL), or force one.",
)
@click.option(
    "--strip",
    is_flag=True,
    help="Drop metadata (ICC profile, EXIF, XMP, text, dpi) instead of carrying it.",
)
@click.option(
    "--verify",
    is_flag=True,
    help="Decode every file just written and compare it with the input before success.",
)
@click.option("--quiet", "-q", is_flag=True, help="Print nothing on success.")
@_progress_option
@_handle_errors
def encode(
    inputs,
    output,
    model,
    device,
    tile,
    max_batch,
    force,
    skip_existing,
    max_pixels,
    method,
    strip,
    verify,
    quiet,
    progress,
) -> None:
    """Compress images (PNG, JPEG, WebP, GIF, TIFF, ..., folders of them searched
    recursively, or - for stdin) to .nnc files, exactly: bit depth (8 or 16), alpha, every
    frame of an animation and the metadata are kept; what cannot be kept is refused.

    Each image is coded by the smallest of the learned model and the classical lossless
    codecs (JPEG-XL, WebP, PNG; --method). Model coding of all inputs shares one
    schedule, and each input gets its own file (default: IN with the suffix .nnc, beside
    it). Prints size, bits/subpixel, the method, and the ratio to PNG and to the input.

    An existing output is not overwritten without --force. With several inputs, an input
    that cannot be coded (its output exists, it is unreadable, ...) is reported and the
    others are coded; a summary line ends the run, whose exit status is 1 if any failed.
    """
    from .content import read_content
    from .images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES

    _usage_conflicts(force, skip_existing)
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    inputs = _expand_folders(inputs, IMAGE_SUFFIXES, "images")
    if len(inputs) > 1 and STDIO in inputs:
        raise _Fail("stdin (-) can only be encoded alone")
    outs = _outputs(inputs, output, NNC_SUFFIX, "stdin")
    tally = _Tally(len(inputs), "encoded", quiet)
    todo = []  # (src, dst, content)
    for src, dst in zip(inputs, outs):  # every output checked before hours of work
        problem = _output_problem(dst, force)
        if problem is not None and problem[0] == "exists" and skip_existing:
            tally.skip(src, dst)
            continue
        if problem is not None:
            tally.fail(problem[1])
            continue
        try:
            content = read_content(_read_input(src), limit, strip, "--max-pixels")
            todo.append((src, dst, content))
        except NncError as e:
            tally.fail(f"{src}: {e}")
        except _Fail as e:
            tally.fail(e.message)
        except OSError as e:
            tally.fail(f"{src}: {e.strerror or e}")
    if todo:
        _encode_and_write(
            todo, model, device, tile, max_batch, force, quiet, progress, tally, verify, method
        )
    tally.finish()


def _encode_and_write(
    todo, model, device, tile, max_batch, force, quiet, progress, tally, verify, method
):
    """Code the contents of ``todo`` (model parts in one schedule per model, as
    api.compress_detailed does), write each file, report each. If coding them together
    fails, each is coded alone so that the failure is the one input's."""
    from . import api
    from .runtime import resolve_device

    dev = resolve_device(device.partition(":")[0])
    given = api.load_model(model) if model else None
    if dev.type == "cpu" and method in ("auto", "model"):
        work = _encode_work([c for *_, c in todo], given, method)
        device = _auto_cpu_device(device, work)
        if not quiet:
            hint = _gpu_hint()
            if method == "auto":
                hint = "if the model wins over the classical codecs; " + hint
            _warn_if_slow(work, "encoding", hint, _cpu_workers(device))
    factory = api._tqdm_factory if _progress(progress) else None

    def run(items):
        return api.compress_detailed(
            [c for *_, c in items],
            given,
            device,
            tile,
            max_batch,
            progress=factory,
            max_pixels=None,
            verify=verify,
            method=method,
        )

    try:
        batches = [(todo, run(todo))]
    except NncError:
        if len(todo) == 1:
            raise
        batches = []
        for item in todo:
            try:
                batches.append(([item], run([item])))
            except NncError as e:
                tally.fail(f"{item[0]}: {e}")
    for items, results in batches:
        for (src, dst, content), res in zip(items, results):
            if _write_reported(dst, res.data, force, tally) and not quiet:
                click.echo(f"{src} -> {dst}: {_encode_report(content, res)}", err=dst == STDIO)


def _encode_report(content, res) -> str:
    """bytes, bits/subpixel, method (and the model's ideal cost), ratios to PNG and to
    the input file."""
    from .content import to_png

    method = res.method
    if res.model_name:
        method += f" {res.model_name}, ideal {res.model_bits_per_subpixel:.3f}"
    line = f"{len(res.data):,} bytes, {res.bits_per_subpixel:.3f} bits/subpixel ({method})"
    if res.method != "jpeg":
        line += f", {len(res.data) / len(to_png(content.stripped(), PNG_LEVEL)):.3f}x PNG"
    if res.source_bytes:
        line += f", {len(res.data) / res.source_bytes:.3f}x the {res.source_format} file"
        if res.source_format == "JPEG" and res.method != "jpeg":
            line += " (a JPEG's pixels cost more than the JPEG itself)"
    return line


def _write_reported(dst: str, data: bytes, force: bool, tally: _Tally) -> bool:
    """Write one output; a failure is the tally's (the run goes on with the others)."""
    try:
        _write_output(dst, data, force)
    except _Fail as e:
        tally.fail(e.message)
        return False
    except OSError as e:
        if e.errno == errno.EPIPE:
            raise
        tally.fail(f"{dst}: {e.strerror or e}")
        return False
    tally.ok()
    return True


def _encode_work(contents, given, method: str) -> list[tuple[str, float, int]]:
    """The model's share of an encode on the CPU as _warn_if_slow takes it: the 8-bit
    frames it may code (with --method auto the model runs only where its score can win,
    so this is an upper bound of the coding time; the score pass itself is much
    cheaper)."""
    from .planes import model_for

    work = []
    rates: dict[int, tuple[str, float] | None] = {}
    for c in contents:
        if c.bit_depth != 8 or (c.jpeg is not None and method == "auto"):
            continue
        ch = c.channels - (1 if c.has_alpha else 0)
        if ch not in rates:
            try:
                lm = model_for(given, ch, "cpu")
                rates[ch] = (lm.name, _loaded_rate(lm))
            except NncError:
                rates[ch] = None
        if rates[ch] is not None:
            work.append((rates[ch][0], rates[ch][1], c.width * c.height * len(c.frames)))
    return work


def _model_params(info: dict[str, Any], count: Callable[[], int]) -> int:
    params = info.get("params")
    if isinstance(params, int) and not isinstance(params, bool) and params >= 0:
        return params
    try:
        return count()
    except Exception:  # noqa: BLE001 — an estimate: no count, no cost beyond the base
        return 0


def cpu_seconds_per_megapixel(name: str, info: dict[str, Any], params: int) -> float:
    """What coding a megapixel with this model takes on a CPU: the model file's own figure
    (info[CPU_TIMING_INFO_KEY]), else CPU_SECONDS_PER_MEGAPIXEL[name], else a guess from
    the parameter count (see the constants)."""
    own = info.get(CPU_TIMING_INFO_KEY)
    if isinstance(own, (int, float)) and not isinstance(own, bool) and math.isfinite(own):
        if own > 0:
            return float(own)
    if name in CPU_SECONDS_PER_MEGAPIXEL:
        return CPU_SECONDS_PER_MEGAPIXEL[name]
    return (
        CPU_SECONDS_PER_MEGAPIXEL_BASE + CPU_SECONDS_PER_MEGAPIXEL_PER_MILLION_PARAMS * params / 1e6
    )


def _loaded_rate(lm) -> float:
    params = _model_params(lm.info, lambda: sum(t.numel() for t in lm.model.state_dict().values()))
    return cpu_seconds_per_megapixel(lm.name, lm.info, params)


def _named_rate(name: str) -> float | None:
    """The rate of an installed model, from its file's header only (no weights read)."""
    from .zoo import describe_models

    row = next((r for r in describe_models() if r.get("name") == name), None)
    if row is None or "error" in row:
        return None
    info = row.get("info") if isinstance(row.get("info"), dict) else {}

    def count() -> int:
        from safetensors import safe_open

        with safe_open(str(row["path"]), framework="pt") as f:
            return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())

    return cpu_seconds_per_megapixel(name, info, _model_params(info, count))


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _gpu_hint() -> str:
    import torch

    if torch.cuda.is_available():
        return "a GPU is faster: --device cuda"
    return "a CUDA GPU would be much faster (none found)"


def _cpu_workers(device: str) -> int:
    """Coding processes of a CPU device spec (cpu:N: N, at most the usable cores; else 1)."""
    from .multidevice import is_cpu_pool, usable_cores, workers

    if not is_cpu_pool(device):
        return 1
    return min(len(workers(device)), usable_cores())


def _cpu_seconds(work: Sequence[tuple[str, float, int]]) -> float:
    """One core's estimated time for ``work`` ((model name, seconds per megapixel, pixels)
    per image)."""
    return sum(rate * n / 1e6 for _, rate, n in work)


def _auto_cpu_device(device: str, work: Sequence[tuple[str, float, int]]) -> str:
    """--device auto on a machine without CUDA: cpu:N (one process per usable core) when
    the model's work is estimated above multidevice.AUTO_CPU_POOL_SECONDS, else auto (one
    process). Other specs as given."""
    from .multidevice import auto_cpu_workers, usable_cores

    if device != "auto":
        return device
    n = auto_cpu_workers(_cpu_seconds(work), usable_cores())
    return f"cpu:{n}" if n > 1 else device


def _warn_if_slow(
    work: Sequence[tuple[str, float, int]], doing: str, hint: str, workers: int = 1
) -> None:
    """One line on stderr when coding ``work`` ((model name, seconds per megapixel, pixels)
    per image) on the CPU is estimated to take more than SLOW_CPU_RUN_SECONDS (split over
    ``workers`` processes, one core each)."""
    seconds = _cpu_seconds(work) / workers
    if seconds <= SLOW_CPU_RUN_SECONDS:
        return
    names = list(dict.fromkeys(name for name, _, _ in work))
    what = f"{sum(n for *_, n in work) / 1e6:.2f} MP with {', '.join(names)}"
    click.echo(
        f"nncompress: {doing} {what} on the CPU will take about {_duration(seconds)}; {hint}",
        err=True,
    )


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
@_max_batch_option
@click.option(
    "--force", "-f", is_flag=True, help="Overwrite existing outputs (IN.png itself included)."
)
@_skip_option
@_max_pixels_option
@click.option("--quiet", "-q", is_flag=True, help="Print nothing on success.")
@_progress_option
@_handle_errors
def decode(
    inputs, output, model, device, max_batch, force, skip_existing, max_pixels, quiet, progress
) -> None:
    """Decode .nnc files (or folders of them, searched recursively) to PNG images with
    exactly the original pixels and mode, on any device (whatever device encoded them).
    The files given share the model's batches.

    Default output: IN with the suffix .png, beside IN (or in the folder -o DIR). If that
    file exists, the output is IN.decoded.png instead, or IN.decoded.2.png, IN.decoded.3.png
    and so on, the first name that is free: nothing is overwritten without --force, and
    encoding photo.png then decoding photo.nnc in one folder gives photo.decoded.png.
    --force writes IN.png over the existing file; --skip-existing leaves inputs whose
    IN.png exists alone. An existing -o FILE is refused unless --force.

    With several inputs, an input that cannot be decoded is reported and the others are
    decoded; a summary line ends the run, whose exit status is 1 if any failed.
    """
    from . import container
    from .files import parse
    from .images import DEFAULT_MAX_PIXELS, check_pixel_count

    _usage_conflicts(force, skip_existing)
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    inputs = _expand_folders(inputs, frozenset({NNC_SUFFIX}), "nncompress files")
    if len(inputs) > 1 and STDIO in inputs:
        raise _Fail("stdin (-) can only be decoded alone")
    _outputs(inputs, output, ".png", "stdin")  # -o checked before any work
    named = output is not None and not Path(output).is_dir()  # -o FILE or -: no other name
    tally = _Tally(len(inputs), "decoded", quiet)
    parsed = []  # (src, blob, file) of the readable inputs
    for src in inputs:
        try:
            blob = _read_input(src, container.MAX_FILE_BYTES)
            f = parse(blob)
            h = f.header
            check_pixel_count(h.width, h.height * h.frames, limit, "--max-pixels")
        except NncError as e:
            tally.fail(f"{src}: {e}")
            continue
        except _Fail as e:
            tally.fail(e.message)
            continue
        except OSError as e:
            tally.fail(f"{src}: {e.strerror or e}")
            continue
        parsed.append((src, blob, f))
    # A file that keeps a JPEG decodes to that JPEG: IN.jpg.
    outs = [
        _outputs([src], output, ".jpg" if _is_jpeg(f) else ".png", "stdin")[0]
        for src, _, f in parsed
    ]
    if len(set(outs) - {STDIO}) != len([o for o in outs if o != STDIO]):
        raise _Fail("two inputs would write the same output; use -o DIR or rename inputs")
    defaults = set(outs) - {STDIO}
    taken: set[str] = set()
    todo = []  # (src, dst, note, blob, header)
    for (src, blob, f), dst in zip(parsed, outs):
        note = ""
        if (
            named
            and _is_jpeg(f)
            and dst != STDIO
            and Path(dst).suffix.lower() not in (".jpg", ".jpeg")
        ):
            tally.fail(f"{src}: this file keeps a JPEG; name the output .jpg, not {dst}")
            continue
        problem = _output_problem(dst, force)
        if problem is not None and problem[0] == "exists":
            if skip_existing:
                tally.skip(src, dst)
                continue
            if not named:
                try:
                    other = _decoded_name(dst, defaults | taken)
                except _Fail as e:
                    tally.fail(e.message)
                    continue
                note, dst, problem = f" ({dst} exists)", other, None
        if problem is not None:
            tally.fail(problem[1])
            continue
        taken.add(dst)
        todo.append((src, dst, note, blob, f))
    if todo:
        _decode_and_write(todo, model, device, force, limit, quiet, progress, tally, max_batch)
    tally.finish()


def _is_jpeg(f) -> bool:
    return f.header.parts[0].method == "jpeg"


def _decode_and_write(
    todo, model, device, force, limit, quiet, progress, tally, max_batch=None
) -> None:
    from . import api
    from .content import to_png

    given = api.load_model(model) if model else None
    work = _decode_work([(f, given) for *_, f in todo], device)
    if work is not None:
        device = _auto_cpu_device(device, work)
        if not quiet:
            _warn_if_slow(work, "decoding", _gpu_hint(), _cpu_workers(device))
    decoded = api.decompress_detailed(
        [blob for *_, blob, _ in todo],
        given,
        device,
        progress=_progress(progress),
        max_pixels=limit,
        max_batch=max_batch,
        names=[src for src, *_ in todo],
    )
    for (src, dst, note, _, f), d in zip(todo, decoded):
        h = f.header
        data = d.content.jpeg if d.is_jpeg else to_png(d.content)
        if _write_reported(dst, data, force, tally) and not quiet:
            what = "the JPEG file" if d.is_jpeg else f"{h.width}x{h.height} {h.mode}"
            if not d.is_jpeg and h.bit_depth != 8:
                what += f" {h.bit_depth}-bit"
            if h.frames > 1:
                what += f", {h.frames} frames"
            if d.content.metadata:
                what += f", {len(d.content.metadata)} metadata items"
            click.echo(f"{src} -> {dst}{note}: {what}", err=dst == STDIO)


def _decode_work(
    files: Sequence[tuple[Any, Any]], device: str
) -> list[tuple[str, float, int]] | None:
    """The model parts of the files (parsed file, model given or None) as _warn_if_slow
    takes them, when they decode on the CPU (any file decodes on any device); else
    None."""
    from .files import model_parts
    from .runtime import resolve_device

    try:
        here = resolve_device(device.partition(":")[0]).type
    except NncError:
        return None  # decoding reports it
    if here != "cpu":
        return None
    rates: dict[str, float | None] = {}
    work = []
    for parsed, given in files:
        try:
            parts = model_parts(parsed)
        except NncError:
            continue  # decoding reports it
        for header in parts:
            name = given.name if given is not None else header.model_name
            if name not in rates:
                rates[name] = _loaded_rate(given) if given is not None else _named_rate(name)
            if rates[name] is not None:
                work.append((name, rates[name], header.width * header.height))
    return work


@main.command()
@click.argument("files", nargs=-1, required=True, metavar="FILE.nnc...")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option(
    "--check",
    is_flag=True,
    help="Only check each file's header and part checksums (no decoding): one line per "
    "file, 'intact' or why not; exit 1 if any file is damaged.",
)
@_handle_errors
def info(files, as_json, check) -> None:
    """Show what .nnc files hold: method, mode, bit depth, size, frames, parts, model,
    metadata carried."""
    from . import container
    from .container.file import MODE_CHANNELS
    from .files import describe, parse

    if check:
        damaged = 0
        for f in files:
            try:
                parse(_read_input(f, container.MAX_FILE_BYTES))
            except NncError as e:
                damaged += 1
                click.echo(f"{f}: damaged: {e}")
            else:
                click.echo(f"{f}: intact (header and parts match their CRC-32s)")
        if damaged:
            raise _Fail(f"{damaged} of {len(files)} files damaged")
        return
    rows = []
    for f in files:
        data = _read_input(f, container.MAX_FILE_BYTES)
        try:
            d = describe(parse(data))
        except NncError as e:
            raise _Fail(f"{f}: {e}") from None
        samples = d["width"] * d["height"] * d["frames"] * MODE_CHANNELS[d["mode"]]
        d = {"file": f, "file_bytes": len(data), **d}
        d["bits_per_subpixel"] = round(8 * len(data) / samples, 4)
        rows.append(d)
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    for d in rows:
        width = max(len(k) for k in d)
        for k, v in d.items():
            if isinstance(v, list) and v and all(isinstance(x, str) for x in v):
                click.echo(f"{k:<{width}}  {v[0]}")
                for x in v[1:]:
                    click.echo(f"{'':<{width}}  {x}")
            else:
                click.echo(f"{k:<{width}}  {v if v != [] else '-'}")
        click.echo()


@main.command()
@click.argument("model", metavar="NAME|PATH")
@click.option(
    "-o",
    "--output",
    default=None,
    metavar="OUT",
    help="Integer model file to write (default: NAME-int.safetensors beside a model file, "
    "or in the current folder for an installed name).",
)
@click.option("--force", "-f", is_flag=True, help="Overwrite an existing output.")
@_handle_errors
def quantize(model, output, force) -> None:
    """Convert a trained float model (PixelCNN++, MADE, histogram) to the integer model that codes
    files: 16-bit weights, fixed-point activations, tables in the file (FORMAT.md)."""
    from . import api
    from .quant.convert import INTEGER_FAMILIES, integer_path, write_integer_model

    lm = api.load_model(model)
    if getattr(lm.model.distribution, "integer_tables", False):
        raise _Fail(f"{lm.name} is already an integer model")
    if lm.family not in INTEGER_FAMILIES:
        raise _Fail(f"model family {lm.family!r} has no integer path yet")
    if output:
        dst = Path(output)
    else:
        dst = integer_path(lm.path) if lm.path else Path(f"{lm.name}-int.safetensors")
    if dst.exists() and not force:
        raise _Fail(f"{dst} exists (use --force to overwrite)")
    if not dst.parent.is_dir():
        raise _Fail(f"no such folder: {dst.parent}")
    digest = write_integer_model(lm.path or model, dst)
    click.echo(f"{lm.name} -> {dst} (digest {digest.hex()[:12]})")


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
        _check_output(name, force)
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

    _check_output(output, force)
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
