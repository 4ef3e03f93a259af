"""Where models come from: names in the pretrained folders, or paths to model files."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ModelFileError
from .modelfile import LoadedModel, load_model_file, read_metadata

MODEL_DIR_ENV = "NNCOMPRESS_MODEL_DIR"  # extra folders (os.pathsep-separated), searched first
MODEL_SUFFIX = ".safetensors"
# Default model per number of coded channels: the first one installed is used. On CPU the
# small photo model comes first: the GPU-sized one decodes many times slower there.
# Only integer models write files (the same tables on every machine). Greyscale planes are
# coded by the RGB photo model (planes.py: the red channel, with green = blue = red), not by
# made-mnist-int, a digit model (28x28 tiles only), which codes them only when asked for.
DEFAULTS: dict[int, tuple[str, ...]] = {
    3: ("pixelcnnpp-photo-int", "pixelcnnpp-photo-small-int", "histogram-photo-int"),
    1: ("pixelcnnpp-photo-int", "pixelcnnpp-photo-small-int", "histogram-mnist-int"),
}
CPU_FIRST = ("pixelcnnpp-photo-small-int",)


def model_dirs() -> list[Path]:
    dirs = [Path(p) for p in os.environ.get(MODEL_DIR_ENV, "").split(os.pathsep) if p]
    dirs.append(Path(__file__).resolve().parent.parent / "pretrained")
    return dirs


def available_models() -> dict[str, Path]:
    """name -> model file, the first folder in ``model_dirs()`` winning."""
    found: dict[str, Path] = {}
    for d in model_dirs():
        if d.is_dir():
            for f in sorted(d.glob(f"*{MODEL_SUFFIX}")):
                found.setdefault(f.name[: -len(MODEL_SUFFIX)], f)
    return found


def default_model_name(channels: int, device_type: str = "cuda") -> str:
    """The default model for images of ``channels`` coded on ``device_type``."""
    have = available_models()
    names = DEFAULTS.get(channels, ())
    if device_type == "cpu":
        names = tuple(n for n in CPU_FIRST if n in names) + names
    for name in names:
        if name in have:
            return name
    raise ModelFileError(f"no default model installed for {channels}-channel images; use --model")


def load_model(name_or_path: str | Path) -> LoadedModel:
    """A model by name (see ``nncompress models``) or by path to a model file."""
    text = str(name_or_path)
    path = Path(text)
    if text.endswith(MODEL_SUFFIX) or os.sep in text or path.is_file():
        return load_model_file(path, name=path.name.removesuffix(MODEL_SUFFIX))
    have = available_models()
    if text not in have:
        known = ", ".join(sorted(have)) or "none installed"
        raise ModelFileError(f"unknown model {text!r} (available: {known})")
    return load_model_file(have[text], name=text)


def describe_models() -> list[dict[str, object]]:
    """One row per available model: name, family, digest, info (from the header only)."""
    import json

    rows = []
    for name, path in available_models().items():
        try:
            meta = read_metadata(path)
            rows.append(
                {
                    "name": name,
                    "family": meta.get("nncompress.family", "?"),
                    "digest": meta.get("nncompress.digest", "?"),
                    "info": json.loads(meta.get("nncompress.info", "{}")),
                    "path": str(path),
                    "size": path.stat().st_size,
                }
            )
        except (ModelFileError, ValueError) as e:
            rows.append({"name": name, "error": str(e), "path": str(path)})
    return rows
