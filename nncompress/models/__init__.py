"""Model families by name. Imported lazily so that a family's module loads only when used."""

from __future__ import annotations

import importlib

from ..errors import ModelFileError
from .base import LikelihoodModel, NaiveStepper, Stepper, bits_per_subpixel

# family name -> "module:Class" (relative to this package)
FAMILIES: dict[str, str] = {
    "histogram": ".histogram:HistogramModel",
    "histogram-int": "..quant.histogram:IntHistogram",
    "made": ".made:MADE",
    "made-int": "..quant.made:IntMADE",
    "pixelcnnpp": ".pixelcnnpp:PixelCNNpp",
    "pixelcnnpp-int": "..quant.pixelcnnpp:IntPixelCNNpp",
}


def model_class(family: str) -> type[LikelihoodModel]:
    """The model class of a family name; ModelFileError if unknown."""
    try:
        module_name, cls_name = FAMILIES[family].split(":")
    except KeyError:
        known = ", ".join(sorted(FAMILIES))
        raise ModelFileError(f"unknown model family {family!r} (known: {known})") from None
    return getattr(importlib.import_module(module_name, __name__), cls_name)


def build_model(family: str, config: dict) -> LikelihoodModel:
    """Instantiate a family from a config dict (as stored in model files)."""
    cls = model_class(family)
    try:
        cfg = cls.Config(**config)
    except (TypeError, ValueError) as e:
        raise ModelFileError(f"bad config for model family {family!r}: {e}") from None
    return cls(cfg)


__all__ = [
    "FAMILIES",
    "LikelihoodModel",
    "NaiveStepper",
    "Stepper",
    "bits_per_subpixel",
    "build_model",
    "model_class",
]
