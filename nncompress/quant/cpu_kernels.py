"""The integer path's elementwise steps on the CPU in one pass each (``_cpu_kernels.c``),
compiled on first use with the machine's C compiler and loaded through ctypes.

Where no compiler is found, or ``NNCOMPRESS_CPU_KERNELS=0``, quant.fixed's torch ops run
instead; both compute the same integers, so files do not depend on which ran
(tests/test_kernels.py compares them). The library is cached under
``$XDG_CACHE_HOME/nncompress`` (default ``~/.cache/nncompress``), named by the digest of
the source and the compiler command, and built into a temporary file then renamed, so
concurrent processes are safe. Where the cache cannot be written, the torch ops run.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

ENV = "NNCOMPRESS_CPU_KERNELS"
_SOURCE = Path(__file__).with_name("_cpu_kernels.c")
# No fast-math and no contraction into fused multiply-adds: the C compiler must keep
# every operation as written (they are exact as written; see the source).
_FLAGS = ("-O3", "-shared", "-fPIC", "-fno-fast-math", "-ffp-contract=off", "-lm")

_i64, _dbl, _ptr = ctypes.c_int64, ctypes.c_double, ctypes.c_void_p
_SIGNATURES = {
    "nnc_fin": [_ptr, _ptr, _ptr] + [_i64] * 5 + [_dbl],
    "nnc_elu": [_ptr, _ptr, _ptr] + [_i64] * 7 + [_dbl],
    "nnc_concat_elu": [_ptr, _ptr, _ptr] + [_i64] * 7 + [_dbl],
    "nnc_gate": [_ptr] * 5 + [_i64] * 11 + [_dbl, _dbl],
    "nnc_mixture_table": (
        [_ptr, _i64, _ptr, _i64, _ptr, _ptr, _ptr, _i64] + [_ptr] * 5 + [_i64] * 3 + [_dbl]
    )
    + [_i64] * 4
    + [_dbl, _i64],
}


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "nncompress"


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None (turned off, no compiler, or a failed build)."""
    if os.environ.get(ENV, "1") == "0":
        return None
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    src = _SOURCE.read_bytes()
    key = hashlib.sha256(src + " ".join((cc, *_FLAGS)).encode()).hexdigest()[:16]
    path = _cache_dir() / f"cpu_kernels-{key}.so"
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
            os.close(fd)
            try:
                subprocess.run(
                    [cc, *_FLAGS[:-1], str(_SOURCE), "-o", tmp, _FLAGS[-1]],
                    check=True, capture_output=True, timeout=120,
                )  # fmt: skip
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        lib = ctypes.CDLL(str(path))
        for name, args in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = args, None
        return lib
    except (OSError, subprocess.SubprocessError, AttributeError):
        return None
