"""Coding on several devices of one host.

Device specs (``--device`` and the API's ``device``): ``cuda:all`` (every visible GPU),
``cuda:0,2`` (those GPUs), ``cpu:N`` / ``cpu:all`` (N processes of one coding thread each /
one per usable core). The integer path makes a file's bytes independent of the device and
of its batch-mates, so the files are the same as one device would write
(tests/test_multidevice.py and tests/test_chunk_parallel.py check it for CPU workers; the
closing notes of the issue "Several GPUs of one host" for GPUs).

- GPUs (``run``): the images are split over one worker process per device, each worker
  codes its share in one schedule, and the results come back in input order.
- CPU processes (``ChunkPool``): this process does everything but the model's schedule,
  whose *chunks* (independent coder streams, FORMAT.md) are split over the workers, those
  of one image too; each worker codes its share in one schedule and sends the streams (or
  the decoded tiles) back. ``cpu:1`` codes in this process, as ``cpu`` does.

A worker sees only its own GPU (CUDA_VISIBLE_DEVICES is set before it imports torch) and
loads the model itself from its file, whose digest must equal the parent's. Workers are
started with ``spawn`` (a forked CUDA runtime is not usable) and cost a torch import each
(~1-2 s), so a spec like this pays off for large images and folders, not for one small
image (``auto_cpu_workers`` is the CLI's rule).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DeviceMismatchError, NncError

#: Most worker processes one spec may ask for.
MAX_WORKERS = 256
#: --device auto without CUDA codes in this process unless the model's work is estimated
#: above this many seconds on one core (cli.CPU_SECONDS_PER_MEGAPIXEL); then it takes one
#: worker per usable core. Measured on the 2-core machine with pixelcnnpp-photo-small-int
#: (benchmarks/results/chunk-parallel-cpu, whole CLI calls): a 512x256 decode (estimate
#: 11.8 s) took 10.2 s in one process and 9.0 s with cpu:2; a 768x512 one (estimate 35 s)
#: 23.7 and 15.0 s. The workers' start (spawn, torch import, model load) costs ~3-5 s
#: there, so 12 s of estimate is about where two processes start to win; more cores win
#: sooner.
AUTO_CPU_POOL_SECONDS = 12.0
#: Seconds between progress updates from the workers.
_PROGRESS_POLL = 0.25


@dataclass(frozen=True)
class Worker:
    kind: str  # "cpu" or "cuda"
    gpu: int | None = None  # the GPU's index among the visible ones (cuda)

    def __str__(self) -> str:
        return self.kind if self.gpu is None else f"cuda:{self.gpu}"


def is_multi(spec: str) -> bool:
    """Whether ``spec`` names several workers (has a ':' part)."""
    return isinstance(spec, str) and ":" in spec


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def auto_cpu_workers(seconds: float, cores: int) -> int:
    """Coding processes for --device auto on a machine without CUDA, for model work
    estimated at ``seconds`` on one core: 1 (this process) up to AUTO_CPU_POOL_SECONDS,
    else one per usable core (``cores``)."""
    return max(1, min(cores, MAX_WORKERS)) if seconds > AUTO_CPU_POOL_SECONDS else 1


def is_cpu_pool(spec: str) -> bool:
    """Whether ``spec`` is ``cpu:N`` / ``cpu:all`` (chunks over CPU processes)."""
    return isinstance(spec, str) and spec.startswith("cpu:")


def workers(spec: str) -> list[Worker]:
    """The workers of a multi-device spec (see the module's doc). DeviceMismatchError on a
    spec that is malformed or asks for GPUs that are not there."""
    kind, _, rest = spec.partition(":")
    if kind == "cpu":
        if rest == "all":
            return [Worker("cpu")] * min(usable_cores(), MAX_WORKERS)
        if not rest.isdigit() or not 1 <= int(rest) <= MAX_WORKERS:
            raise DeviceMismatchError(
                f"bad device {spec!r}: cpu:N needs N from 1 to {MAX_WORKERS} (worker "
                "processes), or cpu:all"
            )
        return [Worker("cpu")] * int(rest)
    if kind != "cuda":
        raise DeviceMismatchError(
            f"unknown device {spec!r} (use auto, cpu, cuda, cuda:all, cuda:0,1, cpu:N or cpu:all)"
        )
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise DeviceMismatchError(f"--device {spec} asked for, but no CUDA device is available")
    if rest == "all":
        return [Worker("cuda", i) for i in range(count)]
    parts = rest.split(",")
    if not all(p.isdigit() for p in parts) or len(set(parts)) != len(parts):
        raise DeviceMismatchError(
            f"bad device {spec!r}: cuda:all or distinct GPU indices (cuda:0,1)"
        )
    gpus = [int(p) for p in parts]
    if max(gpus) >= count:
        raise DeviceMismatchError(
            f"--device {spec}: GPU {max(gpus)} asked for, {count} visible (0..{count - 1})"
        )
    return [Worker("cuda", g) for g in gpus]


def shares(weights: Sequence[int], n: int) -> list[list[int]]:
    """Indices 0..len(weights)-1 split into at most ``n`` non-empty shares of about equal
    total weight (largest first, each to the lightest share), each in input order."""
    loads = [0] * n
    out: list[list[int]] = [[] for _ in range(n)]
    for i in sorted(range(len(weights)), key=lambda i: (-weights[i], i)):
        k = min(range(n), key=lambda k: (loads[k], k))
        out[k].append(i)
        loads[k] += weights[i]
    return [sorted(s) for s in out if s]


def model_spec(model: Any) -> str | None:
    """What a worker loads: a name or path as given, or a loaded model's file."""
    from .modelfile import LoadedModel

    if model is None or isinstance(model, str | Path):
        return None if model is None else str(model)
    if isinstance(model, LoadedModel):
        if model.path is None:
            raise NncError(
                f"model {model.name!r} has no file: several devices need a model name or path"
            )
        return str(model.path)
    raise TypeError(f"model: a name, a path or a loaded model, not {type(model).__name__}")


def _init(worker: Worker, n_workers: int) -> None:
    """Before the worker imports torch: its GPU, and one OpenMP/MKL thread (its coding uses
    one; on a 16-core host, 14 CPU workers with a thread per core each spun their OpenMP
    pools against each other and ran slower than one process); the classical codecs get
    this worker's share of the cores."""
    if worker.kind == "cuda":
        os.environ["CUDA_VISIBLE_DEVICES"] = str(worker.gpu)
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    os.environ.setdefault(
        "NNCOMPRESS_CODEC_THREADS", str(max(1, (os.cpu_count() or 1) // n_workers))
    )


def _encode(share, model, digest, kind, **kwargs):
    from . import api

    return api.compress_detailed(share, _load(model, digest), kind, max_pixels=None, **kwargs)


def _decode(share, model, digest, kind, **kwargs):
    from . import api

    return api.decompress_detailed(share, _load(model, digest), kind, **kwargs)


def _load(model: str | None, digest: bytes | None):
    from .errors import ModelMismatchError
    from .planes import load_model

    if model is None:
        return None
    lm = load_model(model)
    if digest is not None and lm.digest != digest:
        raise ModelMismatchError(f"model file {model} changed while coding")
    return lm


def run(
    spec: str,
    items: Sequence[Any],
    weights: Sequence[int],
    job: str,
    model: Any,
    **kwargs: Any,
) -> list[Any]:
    """Code ``items`` (Contents to encode, or .nnc bytes to decode: ``job`` "encode" or
    "decode") on the workers of ``spec``; results in input order. ``kwargs``: the rest of
    the API call's arguments (names, when decoding, are split with the items)."""
    from .modelfile import LoadedModel

    pool = workers(spec)
    path = model_spec(model)
    digest = model.digest if isinstance(model, LoadedModel) else None
    split = shares(weights, len(pool))
    fn: Callable[..., list[Any]] = _encode if job == "encode" else _decode
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    executors = [
        ProcessPoolExecutor(1, mp_context=ctx, initializer=_init, initargs=(w, len(split)))
        for w in pool[: len(split)]
    ]
    try:
        futures = []
        for ex, w, idx in zip(executors, pool, split):
            args = dict(kwargs)
            if job == "decode":
                names = args.pop("names", None)
                args["names"] = None if names is None else [names[i] for i in idx]
            futures.append(ex.submit(fn, [items[i] for i in idx], path, digest, w.kind, **args))
        out: list[Any] = [None] * len(items)
        for w, idx, fut in zip(pool, split, futures):
            try:
                results = fut.result()
            except BrokenProcessPool:
                raise NncError(
                    f"the {job} worker on {w} died (out of memory?); try fewer devices' "
                    "worth of images per call or a lower --max-batch"
                ) from None
            for i, r in zip(idx, results, strict=True):
                out[i] = r
        return out
    finally:
        for ex in executors:
            ex.shutdown(wait=True, cancel_futures=True)


# --- Chunks of a schedule over CPU processes (cpu:N) -----------------------------------

#: Per-process state of a chunk worker, set by its initializer (a worker lives for one
#: API call): the queue its progress goes to, and the models it has loaded.
_WORKER_QUEUE: Any = None
_WORKER_MODELS: dict[tuple[str, bytes], Any] = {}


def _init_chunks(n_workers: int, queue: Any) -> None:
    global _WORKER_QUEUE
    _init(Worker("cpu"), n_workers)
    _WORKER_QUEUE = queue


def _cached_model(path: str, digest: bytes):
    key = (path, digest)
    if key not in _WORKER_MODELS:
        _WORKER_MODELS[key] = _load(path, digest)
    return _WORKER_MODELS[key]


def _code_chunks(
    kind: str,
    path: str,
    digest: bytes,
    specs: list[tuple[tuple[int, int, int, int], int, int, Any]],
    max_batch: int,
    replicate: bool,
    run_id: int | None,
) -> list[Any]:
    """In a worker: code the chunks ``specs`` ((height, width, tile_h, tile_w) of the
    image, first and end tile, the chunk's source tiles (encode) or stream (decode)) in
    one schedule. Encode: (stream, information in bits, tiles) per chunk; decode: tiles
    (count, C, tile_h, tile_w) uint8 per chunk."""
    import torch

    from .codec import DecodeJob, EncodeJob, TileGrid
    from .planes import run_jobs

    lm = _cached_model(path, digest)
    jobs: list[Any] = []
    for geometry, start, stop, data in specs:
        grid, span = TileGrid(*geometry), range(start, stop)
        job = EncodeJob if kind == "encode" else DecodeJob
        jobs.append(job(grid, span, data))
    queue = _WORKER_QUEUE

    def factory(total: int, label: str) -> Callable[[int], None]:
        return lambda k: queue.put((run_id, k))

    dev = torch.device("cpu")
    net = lm.model.to(dev).eval()
    run_jobs(net, jobs, dev, max_batch, factory if run_id is not None else None, kind, replicate)
    if kind == "encode":
        return [(j.finish(), j.info_bits, j.tiles) for j in jobs]
    return [j.tiles for j in jobs]


class ChunkPool:
    """Up to ``n`` CPU worker processes that code the chunks of this process's schedules
    (``cpu:N``, see the module's doc). Workers start at the first schedule with more than
    one chunk, as many as it has chunks (at most ``n``), and serve the schedules after it
    (the verify pass, other models); ``close`` (or leaving the ``with``) stops them."""

    def __init__(self, n: int) -> None:
        import multiprocessing

        self.n = n
        self._ctx = multiprocessing.get_context("spawn")
        self._executors: list[ProcessPoolExecutor] = []
        self._queue: Any = None
        self._runs = itertools.count()

    def __enter__(self) -> ChunkPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(failed=exc[0] is not None)

    def close(self, failed: bool = False) -> None:
        for ex in self._executors:
            if failed:  # the other shares' work is of no use: do not wait for it
                for proc in list(getattr(ex, "_processes", {}).values()):
                    proc.terminate()
            ex.shutdown(wait=True, cancel_futures=True)
        self._executors = []

    def _grow(self, k: int) -> None:
        if self._queue is None:
            self._queue = self._ctx.Queue()
        while len(self._executors) < k:
            self._executors.append(
                ProcessPoolExecutor(
                    1, mp_context=self._ctx, initializer=_init_chunks, initargs=(k, self._queue)
                )
            )

    def run_jobs(
        self,
        lm: Any,
        jobs: Sequence[Any],
        max_batch: int,
        progress: Any,
        label: str,
        replicate: bool = False,
    ) -> None:
        """planes.run_jobs for ``jobs`` (EncodeJobs or DecodeJobs of model ``lm``) over the
        workers: shares of whole chunks of about equal work (tiles x steps), each coded in
        one schedule by one worker, the results written into the jobs as a schedule here
        would write them. One share (a single chunk, or n = 1) is coded here."""
        import torch

        from .codec import EncodeJob
        from .planes import run_jobs, schedule_steps

        split = shares([j.count * j.grid.tile_h * j.grid.tile_w for j in jobs], self.n)
        dev = torch.device("cpu")
        if len(split) <= 1:
            run_jobs(lm.model.to(dev).eval(), list(jobs), dev, max_batch, progress, label,
                     replicate)
            return
        kind = "encode" if isinstance(jobs[0], EncodeJob) else "decode"
        path, digest = model_spec(lm), lm.digest
        self._grow(len(split))
        parts = [[jobs[i] for i in idx] for idx in split]
        total = sum(schedule_steps(p, max_batch) for p in parts)
        bar = progress(total, label) if progress is not None and total else None
        run_id = next(self._runs) if bar is not None else None
        futures = []
        for ex, part in zip(self._executors, parts):
            specs = [
                (
                    (j.grid.height, j.grid.width, j.grid.tile_h, j.grid.tile_w),
                    j.span.start,
                    j.span.stop,
                    j.source if kind == "encode" else j.payload,
                )
                for j in part
            ]
            futures.append(
                ex.submit(_code_chunks, kind, path, digest, specs, max_batch, replicate, run_id)
            )
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=_PROGRESS_POLL, return_when=FIRST_EXCEPTION)
            for fut in done:
                if fut.exception() is not None:  # at once, not after the other shares
                    _result(fut, label)
            self._drain(run_id, bar)
        self._drain(run_id, bar)
        for fut, part in zip(futures, parts):
            for job, r in zip(part, _result(fut, label), strict=True):
                if kind == "encode":
                    job.stream, job.info_bits, job.tiles = r
                else:
                    job.tiles = r

    def _drain(self, run_id: int | None, bar: Any) -> None:
        import queue as queue_mod

        if bar is None:
            return
        done = 0
        while True:
            try:
                rid, k = self._queue.get_nowait()
            except queue_mod.Empty:
                break
            if rid == run_id:
                done += k
        if done:
            bar(done)


def _result(fut: Any, label: str) -> Any:
    try:
        return fut.result()
    except BrokenProcessPool:
        raise NncError(
            f"a worker process died while coding ({label}; out of memory?); try fewer processes "
            "(cpu:N) or a lower --max-batch"
        ) from None
