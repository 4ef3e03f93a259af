"""Conversion of trained float models to integer models (the format-4 coding path)."""

from __future__ import annotations

from ..models.base import LikelihoodModel

#: Float families with an integer path (post-training conversion).
INTEGER_FAMILIES = ("pixelcnnpp", "histogram", "made")


def to_integer(model: LikelihoodModel) -> LikelihoodModel:
    """The integer model of a float model (post-training quantization); integer models are
    returned as they are. ValueError for a family without an integer path."""
    if getattr(model.distribution, "integer_tables", False):
        return model
    if model.family == "pixelcnnpp":
        from .pixelcnnpp import from_float

        return from_float(model)
    if model.family == "histogram":
        from .histogram import from_float as hist_from_float

        return hist_from_float(model)
    if model.family == "made":
        from .made import from_float as made_from_float

        return made_from_float(model)
    raise ValueError(f"no integer path for model family {model.family!r} yet")


def integer_path(float_path):
    """Where the integer model of a float model file goes: NAME-int.safetensors beside it."""
    from pathlib import Path

    p = Path(float_path)
    return p.with_name(f"{p.name.removesuffix('.safetensors')}-int.safetensors")


def write_integer_model(src, dst) -> bytes:
    """convert_file, written atomically (a temporary file renamed)."""
    import os
    from pathlib import Path

    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.tmp")
    digest = convert_file(str(src), str(tmp))
    os.replace(tmp, dst)
    return digest


def convert_file(src: str, dst: str) -> bytes:
    """Convert the model file (or installed model name) ``src`` to an integer model file
    ``dst``; its info keeps the float model's and records where it came from. Returns the
    new digest."""
    from ..modelfile import save_model
    from ..zoo import load_model

    lm = load_model(src)
    model = to_integer(lm.model)
    info = dict(lm.info)
    info["converted_from"] = {"name": lm.name, "digest": lm.digest.hex()}
    return save_model(model, dst, info=info)
