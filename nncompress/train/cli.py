"""``nncompress train``: a thin click layer over :func:`nncompress.train.loop.train`.

Also runs standalone: ``python -m nncompress.train.cli DATA... --out M.safetensors``, and
under ``torchrun --nproc_per_node=N -m nncompress.train.cli ...`` on N GPUs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ..errors import NncError

# PixelCNN++ sizes: (nr_resnet, nr_filters, nr_logistic_mix, dropout). Dropout only where
# the model is big enough to overfit the ~40 MP of training photos.
PIXELCNNPP_SIZES: dict[str, tuple[int, int, int, float]] = {
    "tiny": (1, 16, 5, 0.0),
    "small": (2, 32, 5, 0.0),
    "base": (4, 96, 10, 0.1),
    "large": (5, 160, 10, 0.1),
}
DEFAULT_FAMILY = "pixelcnnpp"
DEFAULT_SIZE = "small"
DEFAULT_CHANNELS = 3
CKPT_SUFFIX = ".ckpt"  # default checkpoint folder: beside --out
LOG_SUFFIX = ".log.json"  # default JSON log: beside --out


def _model_config(
    family: str | None,
    size: str | None,
    nr_resnet: int | None,
    nr_filters: int | None,
    nr_mix: int | None,
    dropout: float | None,
    channels: int | None,
    config_json: str | None,
    resuming: bool,
) -> tuple[str, dict[str, Any] | None]:
    """(family, config dict) from the options; config None when resuming with no model
    option given (the checkpoint's model is used)."""
    arch = (size, nr_resnet, nr_filters, nr_mix, dropout)
    if resuming and family is None and channels is None and config_json is None:
        if all(v is None for v in arch):
            return DEFAULT_FAMILY, None
    family = family or DEFAULT_FAMILY
    config: dict[str, Any] = {"channels": channels or DEFAULT_CHANNELS}
    if family == "pixelcnnpp":
        r, f, m, p = PIXELCNNPP_SIZES[size or DEFAULT_SIZE]
        config.update(
            nr_resnet=r if nr_resnet is None else nr_resnet,
            nr_filters=f if nr_filters is None else nr_filters,
            nr_logistic_mix=m if nr_mix is None else nr_mix,
            dropout=p if dropout is None else dropout,
        )
    elif any(v is not None for v in arch):
        raise click.UsageError(
            f"--size/--nr-*/--dropout describe pixelcnnpp models; for {family} use --model-config"
        )
    if config_json:
        try:
            extra = json.loads(config_json)
        except ValueError as e:
            raise click.BadParameter(f"not JSON ({e})", param_hint="--model-config") from None
        if not isinstance(extra, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--model-config")
        config.update(extra)
    return family, config


@click.command("train", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("data", nargs=-1, required=True, metavar="DATA...")
@click.option(
    "--out",
    "-o",
    required=True,
    metavar="PATH.safetensors",
    help="Model file to write (the EMA weights, with config and training info).",
)
@click.option(
    "--model",
    "family",
    default=None,
    metavar="FAMILY",
    help=f"Model family: pixelcnnpp, made, ... [default: {DEFAULT_FAMILY}]",
)
@click.option(
    "--size",
    type=click.Choice(list(PIXELCNNPP_SIZES)),
    default=None,
    help="PixelCNN++ size preset (nr_resnet, nr_filters, nr_mix, dropout): "
    + "; ".join(f"{k} {v}" for k, v in PIXELCNNPP_SIZES.items())
    + f" [default: {DEFAULT_SIZE}]",
)
@click.option(
    "--nr-resnet",
    type=click.IntRange(1),
    default=None,
    help="PixelCNN++ residual blocks per stage (overrides --size).",
)
@click.option(
    "--nr-filters",
    type=click.IntRange(1),
    default=None,
    help="PixelCNN++ filters per layer (overrides --size).",
)
@click.option(
    "--nr-mix",
    type=click.IntRange(1),
    default=None,
    help="PixelCNN++ logistic mixture components (overrides --size).",
)
@click.option(
    "--dropout",
    type=click.FloatRange(0, 1, max_open=True),
    default=None,
    help="PixelCNN++ dropout rate (overrides --size).",
)
@click.option(
    "--model-config",
    "config_json",
    default=None,
    metavar="JSON",
    help="Config fields as a JSON object, applied last, e.g. '{\"hidden\": [500]}'.",
)
@click.option(
    "--channels",
    type=click.Choice(["1", "3"]),
    default=None,
    help=f"1 for greyscale, 3 for RGB images [default: {DEFAULT_CHANNELS}]",
)
@click.option(
    "--crop",
    type=click.IntRange(1, 4096),
    default=None,
    help="Training crop size in pixels [default: 32, or the model's fixed tile].",
)
@click.option(
    "--small",
    type=click.Choice(["pad", "skip"]),
    default="pad",
    show_default=True,
    help="Images smaller than the crop: edge-pad them (as the coder pads edge "
    "tiles) or leave them out.",
)
@click.option(
    "--flip/--no-flip",
    default=True,
    show_default=True,
    help="Random horizontal flips of the crops.",
)
@click.option(
    "--mismatch",
    type=click.Choice(["error", "convert", "skip"]),
    default="error",
    show_default=True,
    help="Images with another channel count than the model's (or that the coder "
    "cannot code): stop with an error, convert grey<->colour, or leave them out.",
)
@click.option(
    "--batch",
    type=click.IntRange(1),
    default=64,
    show_default=True,
    help="Crops per step (per GPU under torchrun).",
)
@click.option(
    "--lr",
    type=click.FloatRange(0, min_open=True),
    default=1e-3,
    show_default=True,
    help="Peak learning rate (Adam), reached after --warmup and decayed by a cosine.",
)
@click.option(
    "--warmup",
    type=click.IntRange(0),
    default=200,
    show_default=True,
    help="Steps of linear learning-rate warm-up.",
)
@click.option(
    "--grad-clip",
    type=click.FloatRange(0),
    default=4.0,
    show_default=True,
    help="Clip the global gradient norm at this multiple of its running mean, so that only "
    "spikes are cut (0: no clipping).",
)
@click.option(
    "--ema",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.999,
    show_default=True,
    help="Decay of the EMA weights used for validation and export.",
)
@click.option(
    "--minutes",
    type=click.FloatRange(0, min_open=True),
    default=None,
    help="Training time budget in minutes, counted across resumes; the cosine schedule spans it.",
)
@click.option(
    "--steps",
    type=click.IntRange(0),
    default=None,
    help="Step budget, counted across resumes (with --minutes: whichever ends first).",
)
@click.option(
    "--session-minutes",
    type=click.FloatRange(0, min_open=True),
    default=None,
    help="Stop this run after so many minutes (checkpoint and export) without "
    "changing the schedule: for budgets spread over several --resume runs.",
)
@click.option(
    "--val",
    multiple=True,
    metavar="DIR",
    help="Held-out images (folder, file or .npz; repeatable).",
)
@click.option(
    "--val-fraction",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=None,
    help="Hold out this fraction of the DATA images instead (fixed split).",
)
@click.option(
    "--val-tile",
    type=click.IntRange(1, 4096),
    default=None,
    help="Validation tile size: held-out images are cut into independent tiles as "
    "the coder cuts them; recorded in the model file [default: --crop].",
)
@click.option(
    "--val-every",
    type=click.IntRange(1),
    default=500,
    show_default=True,
    help="Validate (EMA weights, fp32 as the coder runs) every N steps.",
)
@click.option(
    "--log-every",
    type=click.IntRange(1),
    default=50,
    show_default=True,
    help="Add a point to the curve every N steps.",
)
@click.option(
    "--ckpt-dir",
    default=None,
    metavar="DIR",
    help=f"Checkpoint folder [default: OUT with suffix {CKPT_SUFFIX}].",
)
@click.option(
    "--ckpt-every",
    type=click.IntRange(0),
    default=1000,
    show_default=True,
    help="Checkpoint every N steps (0: only at the end).",
)
@click.option(
    "--ckpt-keep",
    type=click.IntRange(0),
    default=2,
    show_default=True,
    help="Full checkpoints to keep (0: all).",
)
@click.option(
    "--ckpt-lite",
    is_flag=True,
    help="Also write small checkpoints (EMA weights in 16 bits, no optimizer state, "
    "files <= 15 MiB) to carry between machines; resuming from one restarts Adam.",
)
@click.option("--no-ckpt", is_flag=True, help="Write no checkpoints.")
@click.option(
    "--resume",
    default=None,
    metavar="CKPT",
    help="Go on from a checkpoint file or folder (its latest): weights, optimizer, step "
    "count, schedule, time budget, RNG. Model options may be left out (the checkpoint's "
    "model is used); give DATA, --val and the budget again.",
)
@click.option(
    "--init",
    "init",
    default=None,
    metavar="MODEL",
    help="Start from the weights of a model file or pretrained name (fine-tuning, or more "
    "training for a model file): a fresh optimizer and schedule. Model options may be left "
    "out (the file's model is used) or must fit its weights (e.g. another --dropout).",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Random seed (initialisation, crops, dropout).",
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="Where to train (bf16 autocast on CUDA, fp32 on CPU).",
)
@click.option(
    "--compile",
    "compile_",
    is_flag=True,
    help="torch.compile the training step: measured 2.6x the images/s of PixelCNN++ 4x96 on "
    "an H200, after ~100 s of compiling (counted in the time budget).",
)
@click.option(
    "--quantize",
    is_flag=True,
    help="Quantization-aware training (PixelCNN++): the loss and validation run through the "
    "integer network the export codes with (float64, straight-through gradients; slower). "
    "Use it to fine-tune (--init) a trained model.",
)
@click.option(
    "--autocast/--no-autocast",
    default=True,
    show_default=True,
    help="bf16 autocast on CUDA; --no-autocast trains in fp32 (TF32 convolutions), measured "
    "faster for uncompiled PixelCNN++ 4x96 on an H200 (109 vs 133 ms/step).",
)
@click.option(
    "--threads",
    type=click.IntRange(0),
    default=0,
    help="CPU threads for training (0: torch's default). On a busy machine 1 can be much "
    "faster than several.",
)
@click.option(
    "--weights-dtype",
    type=click.Choice(["auto", "float32", "float16", "bfloat16"]),
    default="auto",
    show_default=True,
    help="Storage of the exported weights; auto: float32 if the file stays <= 16 MiB, "
    "else float16. Validation is measured on the stored weights.",
)
@click.option(
    "--log",
    "log_path",
    default=None,
    metavar="PATH.json",
    help=f"JSON log of the curve [default: OUT with suffix {LOG_SUFFIX}].",
)
@click.option(
    "--plot",
    "plot_path",
    default=None,
    metavar="PATH.png",
    help="Also plot the curve to this PNG at the end (needs matplotlib).",
)
@click.option(
    "--force",
    "-f",
    is_flag=True,
    help="Overwrite --out and the log; start over in a folder that has checkpoints.",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress bar (default: when stderr is a terminal; else a line now and then).",
)
def train(
    data,
    out,
    family,
    size,
    nr_resnet,
    nr_filters,
    nr_mix,
    dropout,
    config_json,
    channels,
    crop,
    small,
    flip,
    mismatch,
    batch,
    lr,
    warmup,
    grad_clip,
    ema,
    minutes,
    steps,
    session_minutes,
    val,
    val_fraction,
    val_tile,
    val_every,
    log_every,
    ckpt_dir,
    ckpt_every,
    ckpt_keep,
    ckpt_lite,
    no_ckpt,
    resume,
    init,
    seed,
    device,
    compile_,
    quantize,
    autocast,
    threads,
    weights_dtype,
    log_path,
    plot_path,
    force,
    progress,
) -> None:
    """Train a model on images and export it as a model file for encode/decode.

    DATA: folders of images (PNG, WebP, JPEG, BMP, TIFF; searched recursively), image files,
    or .npz files with an "images" array (N,H,W) or (N,H,W,C) uint8 (FILE.npz[a:b] for a
    slice). Trains on random crops with Adam (warm-up, cosine decay), exports the EMA
    weights. Multi-GPU: torchrun --nproc_per_node=N -m nncompress.train.cli ...
    """
    from .loop import TrainConfig
    from .loop import train as run_training

    if steps is None and minutes is None and session_minutes is None:
        raise click.UsageError("give a budget: --steps N and/or --minutes M")
    if val and val_fraction:
        raise click.UsageError("give --val or --val-fraction, not both")
    fam, model_config = _model_config(
        family,
        size,
        nr_resnet,
        nr_filters,
        nr_mix,
        dropout,
        int(channels) if channels else None,
        config_json,
        resume is not None or init is not None,
    )
    if resume and init:
        raise click.UsageError("give --resume or --init, not both")
    if init is not None and not Path(init).is_file():
        from ..zoo import available_models

        if init not in available_models():
            raise click.BadParameter(
                "neither a model file nor an installed model name", param_hint="--init"
            )
        init = str(available_models()[init])
    out_path = Path(out)
    log_file = log_path or str(_beside(out_path, LOG_SUFFIX))
    if plot_path and Path(plot_path).exists() and not force:
        raise click.ClickException(f"{plot_path} exists (use --force to overwrite)")
    config = TrainConfig(
        data=list(data),
        out=out,
        family=fam,
        model_config=model_config,
        crop=crop,
        small=small,
        flip=flip,
        mismatch=mismatch,
        batch=batch,
        lr=lr,
        warmup=warmup,
        grad_clip=grad_clip or None,
        ema=ema,
        steps=steps,
        minutes=minutes,
        session_minutes=session_minutes,
        val=list(val) or None,
        val_fraction=val_fraction,
        val_tile=val_tile,
        val_every=val_every,
        log_every=log_every,
        ckpt_dir=None if no_ckpt else (ckpt_dir or str(_beside(out_path, CKPT_SUFFIX))),
        ckpt_every=ckpt_every,
        ckpt_keep=ckpt_keep or None,
        ckpt_lite=ckpt_lite,
        resume=resume,
        init=init,
        seed=seed,
        device=device,
        compile=compile_,
        quantize=quantize,
        autocast=autocast,
        threads=threads or None,
        weights_dtype=weights_dtype,
        log_path=log_file,
        force=force,
        progress=progress,
    )
    try:
        result = run_training(config, log=lambda message: click.echo(message, err=True))
        if plot_path and result.out is not None:
            from .plot import plot_curve

            plot_curve(log_file, plot_path)
            click.echo(f"wrote {plot_path}", err=True)
    except NncError as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        raise click.ClickException(f"{e.strerror or e}{where}") from None
    except KeyboardInterrupt:
        raise click.Abort() from None


def _beside(out: Path, suffix: str) -> Path:
    """OUT.safetensors -> OUT<suffix> in the same folder."""
    return out.with_name(out.name.removesuffix(".safetensors") + suffix)


if __name__ == "__main__":
    train(prog_name="nncompress train")
