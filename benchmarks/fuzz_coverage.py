"""Coverage-guided fuzzing of the .nnc decoder with atheris (libFuzzer for Python).

benchmarks/fuzz.py mutates files blindly and by structure; this one lets libFuzzer steer the
mutations by which lines of nncompress's container, parsing and decoding code a case reaches,
so it finds inputs that pass more of the checks. Seeds are the same files fuzz.py starts from
(the tiny models' files of every mode, and the classical methods' files). Every input is
decoded in-process on the CPU with a small pixel limit; the only accepted outcomes are a
typed error (nncompress.errors.NncError) or a decode (whose content CRC the decoder has
checked). Anything else — another exception, a run past --timeout, memory past --rss-mb —
stops libFuzzer with the reproducer written to --out (``crash-*``, ``timeout-*``, ``oom-*``).

    pip install atheris        # optional: not a dependency of nncompress
    python benchmarks/fuzz_coverage.py --runs 20000

Prints a summary line (runs, coverage features, seconds) and exits non-zero on a finding.
"""

from __future__ import annotations

import argparse
import os
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: the package from this checkout
    sys.path.insert(0, str(REPO))

#: Pixel limit per decoded file: claimed images above it are refused from the header, so a
#: case costs at most a few hundred ms with the tiny models.
MAX_PIXELS = 1 << 14


def _seeds(folder: Path) -> None:
    """Write fuzz.py's models and seed files into ``folder`` (models/, corpus/). Run in a
    child process: nncompress must be first imported under instrumentation here."""
    from benchmarks import fuzz

    models = fuzz.tiny_models()
    model_dir = folder / "models"
    fuzz.write_models(model_dir, models)
    os.environ["NNCOMPRESS_MODEL_DIR"] = str(model_dir)
    codable, _ = fuzz.make_codable(models, model_dir)
    corpus = folder / "corpus"
    corpus.mkdir()
    for i, seed in enumerate(fuzz.make_seeds(codable)):
        (corpus / f"seed-{i:03d}.nnc").write_bytes(seed.data)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=20000, help="inputs to try")
    p.add_argument("--timeout", type=int, default=5, help="seconds per input")
    p.add_argument("--rss-mb", type=int, default=3072, help="memory limit of the process")
    p.add_argument("--max-len", type=int, default=8192, help="longest input libFuzzer makes")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default="fuzz-coverage-out", help="folder for reproducers")
    p.add_argument("--make-seeds", default=None, help=argparse.SUPPRESS)  # the child's job
    args = p.parse_args(argv)
    if args.make_seeds:
        _seeds(Path(args.make_seeds))
        return 0
    try:
        import atheris
    except ImportError:
        print("atheris is not installed: pip install atheris", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="nnc-atheris-"))
    subprocess.run([sys.executable, __file__, "--make-seeds", str(work)], check=True)
    corpus = work / "corpus"
    os.environ["NNCOMPRESS_MODEL_DIR"] = str(work / "models")
    with atheris.instrument_imports(include=["nncompress"]):
        from nncompress import api
        from nncompress.container import MAGIC
        from nncompress.errors import NncError

    from benchmarks.fuzz import _header_body_span

    def decode(data: bytes) -> None:
        try:
            api.decompress_content(data, device="cpu", max_pixels=MAX_PIXELS)
        except NncError:
            pass

    def one(data: bytes) -> None:
        decode(data)
        # and as a crafted file: the header CRC made to match, so that libFuzzer's
        # mutations of the header reach the checks behind it
        span = _header_body_span(data, valid_crc=False) if data[: len(MAGIC)] == MAGIC else None
        if span is not None and _header_body_span(data) is None:
            lo, hi = span
            decode(data[:hi] + struct.pack("<I", zlib.crc32(data[lo:hi])) + data[hi + 4 :])

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    libfuzzer = [
        sys.argv[0],
        str(corpus),
        f"-runs={args.runs}",
        f"-timeout={args.timeout}",
        f"-rss_limit_mb={args.rss_mb}",
        f"-max_len={args.max_len}",
        f"-seed={args.seed}",
        f"-artifact_prefix={out}/",
        "-print_final_stats=1",
    ]
    start = time.perf_counter()
    atheris.Setup(libfuzzer, one)
    atheris.Fuzz()  # exits the process itself on a finding (non-zero) or after the runs
    print(f"{args.runs} runs in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
