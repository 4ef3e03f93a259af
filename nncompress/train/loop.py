"""The training loop: Adam with warm-up and cosine decay, bf16 autocast on CUDA, gradient
clipping, EMA weights for evaluation and export, step and time budgets, checkpoints that
resume exactly, and DistributedDataParallel under ``torchrun``.

Family-agnostic: any LikelihoodModel with parameters trains on the mean negative
log-likelihood of random crops, in bits per subpixel.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import pickle
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ModelFileError, NncError
from ..modelfile import load_model_file, save_model
from ..models import LikelihoodModel, build_model
from ..quant.convert import INTEGER_FAMILIES, integer_path, write_integer_model
from .data import (
    LN2,
    CropSampler,
    DataError,
    ImageSet,
    ValTiles,
    evaluate_bpd,
    load_images,
    make_val_tiles,
    split_holdout,
)

CKPT_FORMAT = "nncompress-train-ckpt-1"
LOG_FORMAT = "nncompress-train-log-1"
DEFAULT_CROP = 32
# Adam moments as in the PixelCNN++ reference training (slower second moment than the
# default 0.999: steadier steps for a likelihood loss with heavy-tailed gradients).
ADAM_BETAS = (0.95, 0.9995)
# EMA warm-up: the decay grows as (1 + step) / (EMA_WARMUP + step) until it reaches the
# configured one, so that short runs do not export weights stuck near the initialisation.
EMA_WARMUP = 10
# Files that come back from the GPU machine are at most 16 MiB: lite checkpoints are cut
# into parts below that.
LITE_PART_BYTES = 15 * 2**20
MAX_MODEL_FILE_BYTES = 16 * 2**20  # "auto" storage dtype keeps model files under this if it can
FP16_MAX = 65504.0
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Relative gradient clipping: the running mean of the gradient norm follows ~1/rate steps.
NORM_AVG_RATE = 0.01
NORM_EPS = 1e-6
# Under torchrun, ranks agree on the clock (for the schedule and the time budget) every this
# many steps: rank 0's elapsed time is broadcast, so every rank sets the same learning rate.
CLOCK_SYNC_EVERY = 10
PLAIN_LOG_SECONDS = 15.0  # without a terminal, a progress line at most this often
_TENSOR_REF = "__nnc_tensor__"
_PARTS = "__nnc_parts__"
_CKPT_NAME = re.compile(r"^(step|lite)-(\d{8})\.pt$")

Log = Callable[[str], None]


class TrainError(NncError):
    """Training cannot start or cannot go on (bad settings, diverged, bad checkpoint)."""


@dataclass
class TrainConfig:
    """Everything a run depends on. Stored in checkpoints and logs (plain types only)."""

    data: list[str]  # folders, image files, .npz (FILE.npz[a:b] for a slice)
    out: str | None = None  # exported model file (.safetensors); None: no export
    family: str = "pixelcnnpp"
    model_config: dict[str, Any] | None = None  # None: the checkpoint's (when resuming)
    crop: int | None = None  # None: the model's fixed tile, else DEFAULT_CROP
    small: str = "pad"  # images smaller than the crop: "pad" (edge) or "skip"
    flip: bool = True  # random horizontal flips
    mismatch: str = "error"  # images with other channel counts: "error", "convert", "skip"
    batch: int = 64  # crops per step per process
    lr: float = 1e-3
    warmup: int = 200  # steps of linear warm-up (again after resuming without optimizer state)
    final_lr_fraction: float = 0.01  # the cosine decays to lr * this
    weight_decay: float = 0.0
    grad_clip: float | None = 4.0  # clip the gradient norm at this x its running mean; None: off
    ema: float = 0.999  # EMA (Polyak) decay of the exported weights
    steps: int | None = None  # total optimizer steps (counted across resumes)
    minutes: float | None = None  # total training time (counted across resumes)
    session_minutes: float | None = None  # stop this run after this long; schedule unchanged
    val: list[str] | None = None  # held-out data sources
    val_fraction: float | None = None  # or hold out this fraction of the training images
    val_tile: int | None = None  # None: the crop size
    val_every: int = 500  # steps
    val_batch: int | None = None  # tiles per validation batch; None: from batch and sizes
    log_every: int = 50  # steps between curve points
    ckpt_dir: str | None = None  # None: no checkpoints
    ckpt_every: int = 1000  # steps; 0: only at the end
    ckpt_keep: int | None = 2  # full checkpoints kept; None: all
    ckpt_lite: bool = False  # also write small EMA-only checkpoints in <= 15 MiB parts
    resume: str | None = None  # checkpoint file, or a folder (its latest checkpoint)
    init: str | None = None  # model file whose weights start a new run (fine-tuning)
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda"
    compile: bool = False  # torch.compile the training forward/backward
    autocast: bool = True  # bf16 autocast on CUDA (fp32 always on CPU)
    quantize: bool = False  # quantization-aware: train through the integer network (quant.qat)
    threads: int | None = None  # CPU intra-op threads during the run; None: torch's setting
    weights_dtype: str = "auto"  # storage of the export: auto, float32, float16, bfloat16
    log_path: str | None = None  # JSON log of the curve
    force: bool = False  # overwrite outputs and start over in a non-empty ckpt_dir
    progress: bool | None = None  # progress bar; None: when stderr is a terminal


@dataclass
class TrainResult:
    """What a run produced."""

    steps: int
    elapsed_s: float
    train_bpd: float | None  # mean over the last logging interval
    val_bpd: float | None  # of the exported (storage-rounded) EMA weights, fp32
    out: str | None
    digest: str | None  # hex sha256 of the exported model
    checkpoint: str | None  # the last checkpoint written
    stopped_by: str  # "steps", "minutes", "session", "interrupt"
    info: dict[str, Any] = field(default_factory=dict)
    curve: list[dict[str, Any]] = field(default_factory=list)


def lr_at(config: TrainConfig, step: int, progress: float, warmup_origin: int = 0) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up over
    ``config.warmup`` steps from ``warmup_origin``, times a cosine from 1 to
    ``final_lr_fraction`` over ``progress`` in [0, 1] of the budget."""
    warm = 1.0
    if config.warmup > 0:
        warm = min(1.0, (step - warmup_origin + 1) / config.warmup)
    p = min(max(progress, 0.0), 1.0)
    floor = config.final_lr_fraction
    return config.lr * warm * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * p)))


@torch.no_grad()
def clip_relative_(
    grads: list[torch.Tensor], norm_avg: torch.Tensor, factor: float | None
) -> torch.Tensor:
    """Scale ``grads`` in place down to ``factor`` times ``norm_avg`` (the running mean of
    their global norm, a device scalar updated in place; 0 before the first step) if their
    norm is above that. Returns the norm before clipping. ``factor`` None or 0: no clipping.

    Relative, not absolute: the norm of this loss grows a hundredfold during training
    (measured: ~3 at the start, ~100 after 600 steps of PixelCNN++ 4x96), so a fixed threshold
    is either always on or never; this one only cuts spikes. No host sync."""
    norm = torch.nn.utils.get_total_norm(grads, foreach=True).float()
    if not factor:
        return norm
    first = norm_avg <= 0
    limit = torch.where(first, norm, factor * norm_avg)
    torch._foreach_mul_(grads, (limit / (norm + NORM_EPS)).clamp(max=1.0))
    kept = torch.minimum(norm, limit)
    norm_avg.copy_(torch.where(first, norm, torch.lerp(norm_avg, kept, NORM_AVG_RATE)))
    return norm


# --------------------------------------------------------------------------------------
# checkpoints


def save_checkpoint(state: dict[str, Any], path: Path, part_bytes: int | None = None) -> None:
    """torch.save ``state`` (dicts, lists, tensors, plain values) atomically. With
    ``part_bytes``, tensors go into ``<path>.part<i>`` files of at most about that size and
    ``path`` keeps the rest (a single tensor larger than that gets a part of its own)."""
    path = Path(path)
    if part_bytes is None:
        _atomic_save(state, path)
        return
    tensors: list[torch.Tensor] = []
    skeleton = _strip_tensors(state, tensors)
    parts: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for i, t in enumerate(tensors):
        nbytes = t.numel() * t.element_size()
        if parts[-1] and size + nbytes > part_bytes:
            parts.append({})
            size = 0
        parts[-1][str(i)] = t
        size += nbytes
    names = [f"{path.name}.part{i}" for i in range(len(parts))]
    for name, part in zip(names, parts, strict=True):
        _atomic_save(part, path.with_name(name))
    skeleton[_PARTS] = names
    _atomic_save(skeleton, path)  # last: a reader never finds a main file without its parts


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint file (or the latest in a folder) -> its state. TrainError if unusable."""
    path = Path(path)
    if path.is_dir():
        path = latest_checkpoint(path)
    if not path.is_file():
        raise TrainError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and _PARTS in state:
            tensors: dict[str, torch.Tensor] = {}
            for name in state.pop(_PARTS):
                tensors.update(
                    torch.load(path.with_name(name), map_location="cpu", weights_only=True)
                )
            state = _restore_tensors(state, tensors)
    except (OSError, RuntimeError, EOFError, KeyError, ValueError, pickle.UnpicklingError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TrainError(f"{path}: not a readable checkpoint ({reason})") from None
    if not isinstance(state, dict) or state.get("format") != CKPT_FORMAT:
        raise TrainError(f"{path}: not an nncompress training checkpoint")
    state["path"] = str(path)
    return state


def latest_checkpoint(folder: Path) -> Path:
    """The full checkpoint with the highest step in ``folder``, else the latest lite one."""
    found = _checkpoints(folder)
    full = [p for kind, _, p in found if kind == "step"]
    lite = [p for kind, _, p in found if kind == "lite"]
    if not full and not lite:
        raise TrainError(f"{folder}: no checkpoints (step-*.pt or lite-*.pt) in this folder")
    return (full or lite)[-1]


def _checkpoints(folder: Path) -> list[tuple[str, int, Path]]:
    """(kind, step, path) of the checkpoints in ``folder``, by step."""
    out = []
    if folder.is_dir():
        for p in folder.iterdir():
            m = _CKPT_NAME.match(p.name)
            if m:
                out.append((m[1], int(m[2]), p))
    return sorted(out, key=lambda e: e[1])


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _strip_tensors(obj: Any, tensors: list[torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors.append(obj.detach().cpu().contiguous())
        return {_TENSOR_REF: str(len(tensors) - 1)}
    if isinstance(obj, dict):
        return {k: _strip_tensors(v, tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_strip_tensors(v, tensors) for v in obj)
    return obj


def _restore_tensors(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {_TENSOR_REF}:
            return tensors[obj[_TENSOR_REF]]
        return {k: _restore_tensors(v, tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_restore_tensors(v, tensors) for v in obj)
    return obj


# --------------------------------------------------------------------------------------
# distributed setup


@dataclass(frozen=True)
class _Dist:
    """This process's place under torchrun (world 1 without it)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @staticmethod
    def from_env() -> _Dist:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return _Dist()
        return _Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def _device_for(spec: str, d: _Dist) -> torch.device:
    from ..runtime import resolve_device

    dev = resolve_device(spec)
    if dev.type == "cuda":
        return torch.device("cuda", d.local_rank if d.world > 1 else torch.cuda.current_device())
    return dev


def _device_name(device: torch.device, d: _Dist) -> str:
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} threads)"
    )
    return f"{d.world} x {name}" if d.world > 1 else name


def _derived_seed(*parts: int) -> int:
    """A 63-bit seed from integers, so ranks and restarts draw independent streams."""
    return int(
        np.random.SeedSequence([abs(int(p)) for p in parts]).generate_state(2, np.uint64)[0] >> 1
    )


# --------------------------------------------------------------------------------------
# the run


class _BitsLoss(nn.Module):
    """x: (B, C, H, W) uint8 -> scalar mean negative log-likelihood, bits per subpixel.
    A module so that DistributedDataParallel and torch.compile can wrap it."""

    def __init__(self, model: LikelihoodModel, quantize: bool = False) -> None:
        super().__init__()
        self.model = model
        # The integer network that the export codes with, with straight-through gradients.
        self.net = quantized(model) if quantize else model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -self.net.log_prob(x).float().mean() / LN2


def quantized(model: LikelihoodModel) -> nn.Module:
    """quant.qat.QuantizedForward of a PixelCNN++ (its log_prob is the loss's)."""
    from ..quant.qat import QuantizedForward

    if model.family != "pixelcnnpp":
        raise NncError(f"--quantize trains PixelCNN++ models only, not {model.family}")
    return QuantizedForward(model)


def _stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def train(config: TrainConfig, log: Log | None = None) -> TrainResult:
    """Train per ``config``; returns what was produced. Under torchrun every rank calls
    this; only rank 0 writes files and prints."""
    d = _Dist.from_env()
    saved_threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        return _train(config, d, log)
    finally:
        torch.set_num_threads(saved_threads)


def _train(config: TrainConfig, d: _Dist, log: Log | None) -> TrainResult:
    if d.world > 1:
        import torch.distributed as dist

        device = _device_for(config.device, d)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        try:
            result = _Run(config, d, device, log).run()
            # Leave together: a rank that tears down its process group while rank 0 is
            # still writing files aborted at exit now and then under gloo ("terminate
            # called without an active exception", 3 runs in 8).
            dist.barrier()
            return result
        finally:
            dist.destroy_process_group()
    return _Run(config, d, _device_for(config.device, d), log).run()


class _Run:
    """One training run: set up in the constructor's order, then ``run``."""

    def __init__(self, cfg: TrainConfig, d: _Dist, device: torch.device, log: Log | None) -> None:
        self.cfg, self.d, self.device = cfg, d, device
        self._log = log or _stderr_log
        self.bar = None
        _check_settings(cfg)
        self._check_outputs()
        self.ckpt = load_checkpoint(cfg.resume) if cfg.resume else None
        self.init_from: dict[str, Any] | None = None  # set when starting from --init
        torch.manual_seed(cfg.seed)
        self.family, self.model = self._build_model()
        self.model_config = self.model.config_dict()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if not self.params:
            raise TrainError(f"model family {self.family!r} has no trainable parameters")
        self.crop, self.tile = self._sizes()
        self.train_set, self.val_set = self._load_data()
        for note in self.train_set.notes + (self.val_set.notes if self.val_set else []):
            self.say(f"data: {note}")
        data_seed = _derived_seed(cfg.seed, d.rank)
        self.sampler = CropSampler(
            self.train_set.images, self.crop, device, small=cfg.small, flip=cfg.flip, seed=data_seed
        )
        self.val_tiles: ValTiles | None = None
        if self.val_set is not None:
            padding = _padding_of(self.model, self.tile)
            self.val_tiles = make_val_tiles(self.val_set, self.tile, padding).to(device)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.ema_params = [dict(self.ema.named_parameters())[n] for n, _ in self._named_params()]
        self.optimizer = torch.optim.Adam(
            self.params,
            lr=cfg.lr,
            betas=ADAM_BETAS,
            weight_decay=cfg.weight_decay,
            fused=device.type == "cuda",
        )
        self.step = 0
        self.elapsed0 = 0.0  # seconds trained before this run (resumed)
        self.warmup_origin = 0
        self.curve: list[dict[str, Any]] = []
        # Sums of (train bits/subpixel, gradient norm) since the last curve point, and their
        # step count: checkpointed, so a resumed run's curve matches an uninterrupted one.
        self.acc = torch.zeros(2, dtype=torch.float64, device=device)
        self.acc_steps = 0
        self.norm_avg = torch.zeros((), device=device)  # running mean gradient norm; 0: none yet
        if self.ckpt is not None:
            self._restore(self.ckpt, data_seed)
        elif d.world > 1:
            torch.manual_seed(_derived_seed(cfg.seed, d.rank, 1))  # own dropout per rank
        self.loss_fn: nn.Module = _BitsLoss(self.model, cfg.quantize)
        # Validation scores what the export will code: the integer network of the EMA.
        self.val_net = quantized(self.ema) if cfg.quantize else self.ema
        if d.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [device.index] if device.type == "cuda" else None
            self.loss_fn = DistributedDataParallel(self.loss_fn, device_ids=ids)
        if cfg.compile:
            self.loss_fn = torch.compile(self.loss_fn)
        # The integer network runs in float64 (exact integers): no bf16 there.
        use_bf16 = device.type == "cuda" and cfg.autocast and not cfg.quantize
        self.autocast = torch.bfloat16 if use_bf16 else None
        self.val_batch = cfg.val_batch or max(1, 2 * cfg.batch * self.crop**2 // self.tile**2)
        self.last_ckpt: str | None = None
        self.ckpt_step = self.step if self.ckpt is not None else -1  # step of the last write

    # ---- setup helpers

    def say(self, message: str) -> None:
        if not self.d.main:
            return
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            self._log(message)

    def _named_params(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    def _check_outputs(self) -> None:
        cfg = self.cfg
        # A resumed run rewrites its log with the whole curve (kept in the checkpoint).
        log_is_ours = cfg.resume is not None
        for what, p in (("--out", cfg.out), ("--log", cfg.log_path)):
            if p is None:
                continue
            if Path(p).exists() and not cfg.force and not (what == "--log" and log_is_ours):
                raise TrainError(f"{p} exists (use --force to overwrite)")
            if not Path(p).resolve().parent.is_dir():
                raise TrainError(f"{what} {p}: folder {Path(p).parent} does not exist")
        if cfg.ckpt_dir and not cfg.force and not cfg.resume and _checkpoints(Path(cfg.ckpt_dir)):
            raise TrainError(
                f"{cfg.ckpt_dir} already holds checkpoints: --resume {cfg.ckpt_dir} to go on, "
                "or --force to start over"
            )

    def _build_model(self) -> tuple[str, LikelihoodModel]:
        try:
            return self._build_model_unchecked()
        except (ValueError, ModelFileError) as e:  # a config the family refuses
            raise TrainError(f"bad model configuration: {e}") from None

    def _build_model_unchecked(self) -> tuple[str, LikelihoodModel]:
        """The model to train: from the config, or the checkpoint's when resuming (then a
        config given too must describe the same model)."""
        cfg, ck = self.cfg, self.ckpt
        if ck is None and cfg.init is not None:
            return self._init_model()
        if ck is None:
            if cfg.model_config is None:
                raise TrainError("no model configuration given")
            return cfg.family, build_model(cfg.family, dict(cfg.model_config)).to(self.device)
        model = build_model(ck["family"], dict(ck["model_config"])).to(self.device)
        if cfg.model_config is not None:
            asked = build_model(cfg.family, dict(cfg.model_config)).config_dict()
            if cfg.family != ck["family"] or asked != model.config_dict():
                raise TrainError(
                    f"the checkpoint is a {ck['family']} model with {ck['model_config']}; "
                    f"cannot resume it as {cfg.family} with {asked} (leave the model "
                    "options out when resuming)"
                )
        return ck["family"], model

    def _init_model(self) -> tuple[str, LikelihoodModel]:
        """A new run that starts from a model file's weights: its config, or the one given
        (which must have the same tensors, e.g. another dropout rate)."""
        cfg = self.cfg
        try:
            loaded = load_model_file(cfg.init)
        except ModelFileError as e:
            raise TrainError(f"--init: {e}") from None
        family, state = loaded.family, loaded.model.state_dict()
        self.init_from = {
            "file": Path(cfg.init).name,
            "digest": loaded.digest.hex(),
            "steps": loaded.info.get("steps"),
            "train_minutes": loaded.info.get("train_minutes"),
            "val_bpd": loaded.info.get("val_bpd"),
        }
        if cfg.model_config is None:
            return family, loaded.model.train().to(self.device)
        model = build_model(cfg.family, dict(cfg.model_config))
        try:
            if cfg.family != family:
                raise RuntimeError(f"it is a {family} model")
            model.load_state_dict({k: v.float() for k, v in state.items()})
        except RuntimeError as e:
            raise TrainError(
                f"--init {cfg.init} does not fit the model options given ({e}); "
                "leave them out to fine-tune the file's own model"
            ) from None
        return family, model.to(self.device)

    def _sizes(self) -> tuple[int, int]:
        cfg = self.cfg
        fixed = self.model.fixed_tile  # the instance: a family may size it from its config
        if fixed is not None:
            if fixed[0] != fixed[1]:
                raise TrainError(f"{self.family} models have {fixed} tiles; crops are square")
            for what, v in (("--crop", cfg.crop), ("--val-tile", cfg.val_tile)):
                if v is not None and v != fixed[0]:
                    raise TrainError(
                        f"{self.family} models code {fixed[0]}x{fixed[1]} tiles only; "
                        f"{what} {v} does not fit"
                    )
            return fixed[0], fixed[0]
        crop = cfg.crop or DEFAULT_CROP
        return crop, cfg.val_tile or crop

    def _load_data(self) -> tuple[ImageSet, ImageSet | None]:
        cfg, ch = self.cfg, self.model.channels
        images = load_images(cfg.data, ch, cfg.mismatch)
        if cfg.val:
            return images, load_images(cfg.val, ch, cfg.mismatch)
        if cfg.val_fraction:
            return split_holdout(images, cfg.val_fraction)
        return images, None

    def _restore(self, ck: dict[str, Any], data_seed: int) -> None:
        try:
            self.ema.load_state_dict(
                {k: v.float() if v.is_floating_point() else v for k, v in ck["ema"].items()}
            )
            if ck.get("model") is not None:
                self.model.load_state_dict(ck["model"])
            else:  # lite: go on from the EMA weights
                self.model.load_state_dict(self.ema.state_dict())
            if ck.get("optimizer") is not None:
                self.optimizer.load_state_dict(ck["optimizer"])
            else:
                self.warmup_origin = int(ck["step"])
        except (RuntimeError, KeyError, ValueError) as e:
            raise TrainError(f"{ck['path']}: does not fit this model ({e})") from None
        self.init_from = ck.get("init_from")
        self.step = int(ck["step"])
        self.elapsed0 = float(ck["elapsed_s"])
        self.curve = list(ck.get("curve") or [])
        if ck.get("grad_norm_avg") is not None:
            self.norm_avg.copy_(ck["grad_norm_avg"])
        interval = ck.get("interval") or {}
        if "sums" in interval:
            self.acc.copy_(interval["sums"])
            self.acc_steps = int(interval["steps"])
        rng = ck.get("rng") or {}
        same_device = rng.get("device") == self.device.type and self.d.world == 1
        if same_device:
            torch.set_rng_state(rng["torch"])
            if self.device.type == "cuda" and rng.get("cuda") is not None:
                torch.cuda.set_rng_state(rng["cuda"], self.device)
            self.sampler.generator.set_state(rng["data"])
        else:  # a fresh but reproducible stream per rank and resume point
            torch.manual_seed(_derived_seed(self.cfg.seed, self.d.rank, self.step, 1))
            self.sampler.generator.manual_seed(_derived_seed(data_seed, self.step))
        kind = "lite checkpoint (optimizer restarts)" if ck.get("model") is None else "checkpoint"
        self.say(
            f"resumed from {kind} {ck['path']} at step {self.step}, "
            f"{self.elapsed0 / 60:.1f} min trained"
        )

    # ---- the loop

    def run(self) -> TrainResult:
        cfg, d = self.cfg, self.d
        n_params = sum(p.numel() for p in self.params)
        self.say(
            f"model: {self.family} {self.model_config}, {n_params / 1e6:.2f}M parameters, "
            f"on {_device_name(self.device, d)}"
        )
        self.say(f"train: {self.train_set.describe()}; {self.sampler.describe()}")
        if self.val_tiles is not None:
            self.say(f"val: {self.val_tiles.description} ({len(self.val_tiles.x)} tiles)")
        else:
            self.say("val: none (use --val or --val-fraction to measure held-out bits/subpixel)")
        if cfg.steps and cfg.warmup > cfg.steps // 2:
            self.say(f"note: --warmup {cfg.warmup} is more than half of --steps {cfg.steps}")
        log_file = _RunLog(cfg, self) if d.main and cfg.log_path else None

        t0 = time.perf_counter()
        session_end = cfg.session_minutes * 60 if cfg.session_minutes else math.inf
        budget = cfg.minutes * 60 if cfg.minutes else math.inf
        clock = self.elapsed0  # total trained seconds, as all ranks agree on it
        self.bar = self._make_bar() if d.main else None
        plain = self.bar is None and d.main and cfg.progress is not False
        last_plain = -math.inf
        rate_steps, interval_start, paused = 0, time.perf_counter(), 0.0
        train_bpd: float | None = None
        stopped_by = "steps"
        val_points = [e["val_bpd"] for e in self.curve if e.get("val_bpd") is not None]
        val_bpd = val_points[-1] if val_points else None  # the last one before a resume
        if self.ckpt is None and self.val_tiles is not None:
            val_bpd = self._validate()
            self._record({"step": self.step, "elapsed_s": round(clock, 3), "val_bpd": val_bpd})
        try:
            while True:
                if cfg.steps is not None and self.step >= cfg.steps:
                    stopped_by = "steps"
                    break
                if clock >= budget:
                    stopped_by = "minutes"
                    break
                if clock - self.elapsed0 >= session_end:
                    stopped_by = "session"
                    break
                progress = max(
                    self.step / cfg.steps if cfg.steps else 0.0,
                    clock / budget if cfg.minutes else 0.0,
                )
                lr = lr_at(cfg, self.step, progress, self.warmup_origin)
                loss, norm = self._train_step(lr)
                self.step += 1
                self.acc += torch.stack([loss, norm])
                self.acc_steps += 1
                rate_steps += 1
                clock = self._clock(t0, clock)
                if self.bar is not None and cfg.steps:
                    self.bar.update(1)
                at_val = self.val_tiles is not None and self.step % cfg.val_every == 0
                at_ckpt = bool(cfg.ckpt_dir) and cfg.ckpt_every and self.step % cfg.ckpt_every == 0
                if self.step % cfg.log_every == 0 or at_val:
                    now = time.perf_counter()
                    loss_mean, norm_mean = (self.acc / self.acc_steps).tolist()  # syncs
                    train_bpd = loss_mean
                    if not math.isfinite(train_bpd):
                        raise TrainError(
                            f"training diverged (loss {train_bpd} at step {self.step});"
                            " try a lower --lr"
                        )
                    span = max(now - interval_start - paused, 1e-9)
                    rate = rate_steps * cfg.batch * d.world / span
                    entry = {
                        "step": self.step,
                        "elapsed_s": round(clock, 3),
                        "train_bpd": train_bpd,
                        "lr": lr,
                        "img_per_s": round(rate, 1),
                        "grad_norm": norm_mean,
                    }
                    if at_val:
                        val_bpd = self._validate()
                        entry["val_bpd"] = val_bpd
                    self._record(entry)
                    if log_file is not None:
                        log_file.write(self.curve)
                    if self.bar is not None:
                        self._bar_status(train_bpd, val_bpd, rate, lr, clock, budget)
                    elif plain and (at_val or now - last_plain >= PLAIN_LOG_SECONDS):
                        last_plain = now
                        self.say(
                            _status_line(self.step, cfg.steps, clock, train_bpd, val_bpd, rate, lr)
                        )
                    self.acc.zero_()
                    self.acc_steps = 0
                    rate_steps, paused, interval_start = 0, 0.0, time.perf_counter()
                if at_ckpt:
                    t_ck = time.perf_counter()
                    self._checkpoint(clock)
                    paused += time.perf_counter() - t_ck
        except KeyboardInterrupt:
            if d.world > 1:
                raise
            stopped_by = "interrupt"
            self.say(f"interrupted at step {self.step}: saving and exporting")
        finally:
            if self.bar is not None:
                self.bar.close()
                self.bar = None
        if self.acc_steps:
            train_bpd = float(self.acc[0]) / self.acc_steps
        if cfg.ckpt_dir and self.ckpt_step != self.step:
            self._checkpoint(clock)
        return self._finish(clock, train_bpd, stopped_by, n_params, log_file)

    def _train_step(self, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on a fresh batch of crops; returns (loss, grad norm) on device."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x = self.sampler.sample(self.cfg.batch)  # (B, C, crop, crop) uint8
        with torch.autocast(
            self.device.type, dtype=self.autocast, enabled=self.autocast is not None
        ):
            loss = self.loss_fn(x)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = self._clip_gradients()
        self.optimizer.step()
        self._update_ema()
        return loss.detach(), norm.detach()

    def _clip_gradients(self) -> torch.Tensor:
        grads = [p.grad for p in self.params if p.grad is not None]
        return clip_relative_(grads, self.norm_avg, self.cfg.grad_clip)

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = min(self.cfg.ema, (1 + self.step) / (EMA_WARMUP + self.step))
        torch._foreach_lerp_(self.ema_params, self.params, 1.0 - decay)
        for b_ema, b in zip(self.ema.buffers(), self.model.buffers(), strict=True):
            b_ema.copy_(b)

    def _clock(self, t0: float, last: float) -> float:
        """Total trained seconds. Under torchrun, rank 0's value every CLOCK_SYNC_EVERY
        steps (the same on every rank, so the schedule and the stop agree)."""
        local = self.elapsed0 + time.perf_counter() - t0
        if self.d.world == 1:
            return local
        if self.step % CLOCK_SYNC_EVERY:
            return last
        import torch.distributed as dist

        t = torch.tensor([local], dtype=torch.float64, device=self.device)
        dist.broadcast(t, 0)
        return float(t)

    def _validate(self) -> float:
        # fp32 even when training under bf16 autocast: the coder runs fp32, and bf16 scoring
        # read ~0.02 bits/subpixel high for pixelcnnpp-photo (photos/val: 2.3625 at step 14000,
        # 2.3430 in fp32 at the end, 185 steps later with the learning rate near zero).
        return evaluate_bpd(
            self.val_net, self.val_tiles, self.val_batch, None, self.d.rank, self.d.world
        )

    def _record(self, entry: dict[str, Any]) -> None:
        keys = ("step", "elapsed_s", "train_bpd", "val_bpd", "lr", "img_per_s", "grad_norm")
        self.curve.append({k: entry.get(k) for k in keys})

    # ---- checkpoints

    def _state(self, clock: float) -> dict[str, Any]:
        rng = {
            "device": self.device.type,
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            "data": self.sampler.generator.get_state(),
        }
        return {
            "format": CKPT_FORMAT,
            "family": self.family,
            "model_config": self.model_config,
            "step": self.step,
            "elapsed_s": clock,
            "config": dataclasses.asdict(self.cfg),
            "curve": self.curve,
            "interval": {"sums": self.acc.cpu(), "steps": self.acc_steps},
            "grad_norm_avg": self.norm_avg.cpu(),
            "rng": rng,
            "init_from": self.init_from,
        }

    def _checkpoint(self, clock: float) -> None:
        self.ckpt_step = self.step
        if not self.d.main:
            return
        folder = Path(self.cfg.ckpt_dir)
        folder.mkdir(parents=True, exist_ok=True)
        state = self._state(clock)
        state["model"] = self.model.state_dict()
        state["ema"] = self.ema.state_dict()
        state["optimizer"] = self.optimizer.state_dict()
        path = folder / f"step-{self.step:08d}.pt"
        save_checkpoint(state, path)
        self.last_ckpt = str(path)
        if self.cfg.ckpt_lite:
            lite = self._state(clock)
            dtype = _storage_dtype("auto", self.ema, limit_bytes=0)
            lite["ema"] = {
                k: v.to(dtype) if v.is_floating_point() else v
                for k, v in self.ema.state_dict().items()
            }
            save_checkpoint(lite, folder / f"lite-{self.step:08d}.pt", LITE_PART_BYTES)
        self._prune(folder)

    def _prune(self, folder: Path) -> None:
        found = _checkpoints(folder)
        full = [p for kind, _, p in found if kind == "step"]
        lite = [p for kind, _, p in found if kind == "lite"]
        keep = self.cfg.ckpt_keep
        old = (full[:-keep] if keep else []) + lite[:-1]
        for p in old:
            for part in folder.glob(f"{p.name}.part*"):
                part.unlink(missing_ok=True)
            p.unlink(missing_ok=True)

    # ---- the end

    def _finish(
        self,
        clock: float,
        train_bpd: float | None,
        stopped_by: str,
        n_params: int,
        log_file: _RunLog | None,
    ) -> TrainResult:
        cfg = self.cfg
        if self.d.world > 1:
            self._check_replicas()
        dtype = _storage_dtype(cfg.weights_dtype, self.ema)
        exported = copy.deepcopy(self.ema)
        with torch.no_grad():  # the weights as stored: evaluate exactly what gets coded with
            for v in exported.state_dict().values():
                if v.is_floating_point():
                    v.copy_(v.to(dtype).to(v.dtype))
        val_bpd = None
        if self.val_tiles is not None:  # fp32, as the coder runs
            val_bpd = evaluate_bpd(
                exported, self.val_tiles, self.val_batch, None, self.d.rank, self.d.world
            )
        info = {
            "family": self.family,
            "config": self.model_config,
            "params": n_params,
            "data": self.train_set.describe(),
            "val_data": self.val_tiles.description if self.val_tiles is not None else None,
            "val_bpd": val_bpd,
            "train_bpd": train_bpd,
            "steps": self.step,
            "train_minutes": round(clock / 60, 3),
            "device": _device_name(self.device, self.d),
            "crop": self.crop,
            "tile": [self.tile, self.tile],
            "batch": cfg.batch * self.d.world,
            "lr": cfg.lr,
            "ema": cfg.ema,
            "seed": cfg.seed,
            "weights_dtype": str(dtype).removeprefix("torch."),
            "precision": "bf16 autocast" if self.autocast is not None else "fp32",
            "torch": torch.__version__,
        }
        if self.init_from is not None:
            info["init_from"] = self.init_from
        digest = None
        if self.d.main and cfg.out:
            out = Path(cfg.out)
            tmp = out.with_name(f".{out.name}.tmp")
            digest = save_model(
                exported, tmp, info=info, dtype=None if dtype == torch.float32 else dtype
            ).hex()
            os.replace(tmp, out)
            size = out.stat().st_size
            self.say(
                f"wrote {out} ({size / 2**20:.1f} MiB, {info['weights_dtype']}), "
                f"val {_fmt(val_bpd)} bits/subpixel after {self.step} steps, "
                f"{clock / 60:.1f} min"
            )
            if exported.family in INTEGER_FAMILIES:
                int_out = integer_path(out)
                write_integer_model(out, int_out)
                self.say(f"wrote {int_out} (its integer model: the one that codes files)")
        if val_bpd is not None:
            self._record({"step": self.step, "elapsed_s": round(clock, 3), "val_bpd": val_bpd})
        result = TrainResult(
            steps=self.step,
            elapsed_s=clock,
            train_bpd=train_bpd,
            val_bpd=val_bpd,
            out=cfg.out if self.d.main else None,
            digest=digest,
            checkpoint=self.last_ckpt,
            stopped_by=stopped_by,
            info=info,
            curve=self.curve,
        )
        if log_file is not None:
            log_file.write(self.curve, result)
        return result

    @torch.no_grad()
    def _check_replicas(self) -> None:
        """Under torchrun every rank must hold the same weights (same gradients, same
        learning rate); a difference would mean the export depends on the rank."""
        import torch.distributed as dist

        total = torch.stack([p.double().sum() for p in self.params]).sum()
        lo, hi = total.clone(), total.clone()
        dist.all_reduce(lo, dist.ReduceOp.MIN)
        dist.all_reduce(hi, dist.ReduceOp.MAX)
        if lo != hi:
            raise TrainError(f"ranks ended with different weights ({float(lo)} vs {float(hi)})")

    # ---- progress display

    def _make_bar(self):
        cfg = self.cfg
        show = cfg.progress if cfg.progress is not None else sys.stderr.isatty()
        if not show:
            return None
        from tqdm import tqdm

        return tqdm(
            total=cfg.steps,
            initial=self.step,
            unit="step",
            dynamic_ncols=True,
            file=sys.stderr,
            mininterval=0.5,
        )

    def _bar_status(self, train_bpd, val_bpd, rate, lr, clock, budget) -> None:
        post = {
            "bpd": f"{train_bpd:.3f}",
            "val": _fmt(val_bpd),
            "img/s": f"{rate:.0f}",
            "lr": f"{lr:.1e}",
        }
        if math.isfinite(budget):
            post["left"] = f"{max(budget - clock, 0) / 60:.1f}m"
        if not self.cfg.steps:
            self.bar.n = self.step
        self.bar.set_postfix(post, refresh=True)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _status_line(step, steps, clock, train_bpd, val_bpd, rate, lr) -> str:
    of = f"/{steps}" if steps else ""
    return (
        f"step {step}{of}  {clock / 60:.1f} min  bpd {train_bpd:.4f}  val {_fmt(val_bpd)}  "
        f"{rate:.0f} img/s  lr {lr:.2e}"
    )


def _check_settings(cfg: TrainConfig) -> None:
    if cfg.steps is None and cfg.minutes is None and cfg.session_minutes is None:
        raise TrainError("give a budget: --steps N and/or --minutes M")
    checks = [
        (cfg.batch >= 1, "--batch must be >= 1"),
        (cfg.lr > 0, "--lr must be > 0"),
        (cfg.warmup >= 0, "--warmup must be >= 0"),
        (0.0 <= cfg.ema < 1.0, "--ema must be in [0, 1)"),
        (cfg.steps is None or cfg.steps >= 0, "--steps must be >= 0"),
        (cfg.minutes is None or cfg.minutes > 0, "--minutes must be > 0"),
        (cfg.val_every >= 1 and cfg.log_every >= 1, "--val-every must be >= 1"),
        (cfg.ckpt_every >= 0, "--ckpt-every must be >= 0"),
        (not (cfg.val and cfg.val_fraction), "give --val or --val-fraction, not both"),
        (
            cfg.weights_dtype in ("auto", *STORAGE_DTYPES),
            f"unknown --weights-dtype {cfg.weights_dtype}",
        ),
        (cfg.grad_clip is None or cfg.grad_clip >= 0, "--grad-clip must be >= 0"),
        (cfg.threads is None or cfg.threads >= 0, "--threads must be >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise TrainError(message)


def _padding_of(model: LikelihoodModel, tile: int) -> str:
    """How the coder pads edge tiles for this model (its stepper's policy)."""
    padding = getattr(model, "padding", None)
    if isinstance(padding, str):
        return padding
    return type(model.stepper(1, tile, tile)).padding


def _storage_dtype(
    choice: str, model: nn.Module, limit_bytes: int = MAX_MODEL_FILE_BYTES
) -> torch.dtype:
    """The dtype to store weights in. "auto": float32 if that fits in ``limit_bytes``, else
    float16 (more mantissa than bfloat16) unless a weight is out of its range."""
    if choice != "auto":
        return STORAGE_DTYPES[choice]
    floats = [v for v in model.state_dict().values() if v.is_floating_point()]
    if sum(v.numel() * 4 for v in floats) <= limit_bytes:
        return torch.float32
    biggest = max((float(v.abs().max()) for v in floats if v.numel()), default=0.0)
    return torch.float16 if biggest < FP16_MAX else torch.bfloat16


class _RunLog:
    """The JSON log: settings, model, data, the curve, and the result at the end."""

    def __init__(self, cfg: TrainConfig, run: _Run) -> None:
        self.path = Path(cfg.log_path)
        self.head = {
            "format": LOG_FORMAT,
            "config": dataclasses.asdict(cfg),
            "family": run.family,
            "model_config": run.model_config,
            "data": run.train_set.describe(),
            "val_data": run.val_tiles.description if run.val_tiles is not None else None,
            "device": _device_name(run.device, run.d),
        }

    def write(self, curve: list[dict[str, Any]], result: TrainResult | None = None) -> None:
        doc = dict(self.head, curve=curve)
        if result is not None:
            doc["result"] = {k: v for k, v in dataclasses.asdict(result).items() if k != "curve"}
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, self.path)


__all__ = [
    "DataError",
    "TrainConfig",
    "TrainError",
    "TrainResult",
    "clip_relative_",
    "latest_checkpoint",
    "load_checkpoint",
    "lr_at",
    "save_checkpoint",
    "train",
]
