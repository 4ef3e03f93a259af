"""Devices and deterministic settings, as explicit arguments and context managers."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from .errors import DeviceMismatchError

DEVICE_KINDS = ("cpu", "cuda")
# cuBLAS needs a fixed workspace to be deterministic; must be set before its first use.
_CUBLAS_ENV = "CUBLAS_WORKSPACE_CONFIG"
_CUBLAS_DETERMINISTIC = ":4096:8"


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' -> cuda if available else cpu. DeviceMismatchError if cuda is asked but absent."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in DEVICE_KINDS:
        raise DeviceMismatchError(f"unknown device {device!r} (use auto, cpu or cuda)")
    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceMismatchError("--device cuda asked for, but no CUDA device is available")
    return torch.device(device)


# Intra-op threads for coding on CPU. The coder's ops are small and sequential: on a busy
# machine two threads were measured up to ~100x slower than one (spinning workers), while
# on an idle one they gain at most ~2x. Recorded in each file and replayed by the decoder.
CODING_CPU_THREADS = 1


def default_cpu_threads() -> int:
    return CODING_CPU_THREADS


@contextlib.contextmanager
def coding_context(device: torch.device, cpu_threads: int) -> Iterator[None]:
    """Deterministic, full-precision float32 arithmetic for the duration of coding.

    Restores the previous global torch settings on exit. ``cpu_threads`` is the intra-op
    thread count used on CPU (recorded in .nnc headers: reductions may split by thread).
    """
    if device.type == "cuda":
        os.environ.setdefault(_CUBLAS_ENV, _CUBLAS_DETERMINISTIC)
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.get_num_threads(),
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
    )
    try:
        torch.use_deterministic_algorithms(True)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        if device.type == "cpu":
            torch.set_num_threads(cpu_threads)
        with torch.inference_mode():
            yield
    finally:
        torch.use_deterministic_algorithms(saved[0])
        torch.set_num_threads(saved[1])
        torch.backends.cuda.matmul.allow_tf32 = saved[2]
        torch.backends.cudnn.allow_tf32 = saved[3]
        torch.backends.cudnn.benchmark = saved[4]
        torch.backends.cudnn.deterministic = saved[5]
