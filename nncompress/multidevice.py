"""Coding on several devices of one host: the images are split over one worker process per
device, each worker codes its share in one schedule, and the results come back in input
order.

Device specs (``--device`` and the API's ``device``): ``cuda:all`` (every visible GPU),
``cuda:0,2`` (those GPUs), ``cpu:N`` (N processes of one coding thread each: all cores of
a CPU for a folder of images). The integer path makes a file's bytes independent of the
device and of its batch-mates, so the files are the same as one device would write
(tests/test_multidevice.py checks it for CPU workers; the closing notes of the issue
"Several GPUs of one host" for GPUs).

A worker sees only its own GPU (CUDA_VISIBLE_DEVICES is set before it imports torch) and
loads the model itself from its file, whose digest must equal the parent's. Workers are
started with ``spawn`` (a forked CUDA runtime is not usable) and cost a torch import each
(~1-2 s), so a spec like this pays off for folders, not for one small image.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DeviceMismatchError, NncError

#: Most worker processes one spec may ask for.
MAX_WORKERS = 256


@dataclass(frozen=True)
class Worker:
    kind: str  # "cpu" or "cuda"
    gpu: int | None = None  # the GPU's index among the visible ones (cuda)

    def __str__(self) -> str:
        return self.kind if self.gpu is None else f"cuda:{self.gpu}"


def is_multi(spec: str) -> bool:
    """Whether ``spec`` names several workers (has a ':' part)."""
    return isinstance(spec, str) and ":" in spec


def workers(spec: str) -> list[Worker]:
    """The workers of a multi-device spec (see the module's doc). DeviceMismatchError on a
    spec that is malformed or asks for GPUs that are not there."""
    kind, _, rest = spec.partition(":")
    if kind == "cpu":
        if not rest.isdigit() or not 1 <= int(rest) <= MAX_WORKERS:
            raise DeviceMismatchError(
                f"bad device {spec!r}: cpu:N needs N from 1 to {MAX_WORKERS} (worker processes)"
            )
        return [Worker("cpu")] * int(rest)
    if kind != "cuda":
        raise DeviceMismatchError(
            f"unknown device {spec!r} (use auto, cpu, cuda, cuda:all, cuda:0,1 or cpu:N)"
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
