"""Devices and deterministic settings, as explicit arguments and context managers."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Hashable, Iterator

import torch

from .determinism import set_deterministic
from .errors import DeviceMismatchError
from .models.base import StepRunner, run_now

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
    fill = torch.utils.deterministic
    saved_fill = fill.fill_uninitialized_memory
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.get_num_threads(),
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
    )
    try:
        set_deterministic(True)
        # The coder reads no memory it has not written; filling every new tensor with NaN
        # (what deterministic mode does by default) only adds a kernel per allocation.
        fill.fill_uninitialized_memory = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        if device.type == "cpu":
            torch.set_num_threads(cpu_threads)
        with torch.inference_mode():
            yield
    finally:
        set_deterministic(saved[0])
        fill.fill_uninitialized_memory = saved_fill
        torch.set_num_threads(saved[1])
        torch.backends.cuda.matmul.allow_tf32 = saved[2]
        torch.backends.cudnn.allow_tf32 = saved[3]
        torch.backends.cudnn.benchmark = saved[4]
        torch.backends.cudnn.deterministic = saved[5]


class GraphRunner:
    """A stepper's ``runner`` on CUDA: the first call with a key captures ``fn`` as a CUDA
    graph (the runner's very first call runs it once before, so that lazy initialisation
    happens outside a capture) and replays it;
    later calls with the key only replay. A decode step is hundreds of small kernels, so
    launching them one by one from Python costs far more than running them.

    ``fn`` must be idempotent (it overwrites whatever it writes, from what earlier steps
    wrote), read and write only tensors that stay alive and in place, and take positions
    from such tensors: a replay repeats exactly the captured kernels on the same addresses.
    The encoder and the decoder make the same calls in the same order, so they capture and
    replay the same graphs. All graphs share one memory pool; they run one after another.
    """

    def __init__(self) -> None:
        self.pool = torch.cuda.graph_pool_handle()
        self.stream = torch.cuda.Stream()
        self.graphs: dict[Hashable, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.warmed = False

    def __call__(self, key: Hashable, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        hit = self.graphs.get(key)
        if hit is None:
            graph = torch.cuda.CUDAGraph()
            self.stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.stream):
                if not self.warmed:  # cuBLAS handles and workspaces: set up outside a capture
                    fn()
                    self.warmed = True
                graph.capture_begin(pool=self.pool)
                try:
                    out = fn()
                finally:
                    graph.capture_end()
            torch.cuda.current_stream().wait_stream(self.stream)
            hit = self.graphs[key] = (graph, out)
        hit[0].replay()
        return hit[1]


# Set to 0 to launch the step kernels one by one on CUDA (for debugging and timing). Graph
# replays run the captured kernels unchanged, but a file should be decoded the way it was
# encoded: its CRC check stops a decode that diverges.
CUDA_GRAPHS_ENV = "NNCOMPRESS_CUDA_GRAPHS"


def step_runner(device: torch.device) -> StepRunner:
    """The runner for steppers on ``device``: CUDA graphs on CUDA (unless
    NNCOMPRESS_CUDA_GRAPHS=0), plain calls elsewhere."""
    if device.type == "cuda" and os.environ.get(CUDA_GRAPHS_ENV, "1") != "0":
        return GraphRunner()
    return run_now
