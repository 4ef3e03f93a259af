"""nncompress: learned lossless image compression with autoregressive models."""

from __future__ import annotations

__version__ = "0.4.0"

from .api import compress, compress_many, decompress, decompress_many, load_model, sample, score
from .errors import NncError

__all__ = [
    "NncError",
    "__version__",
    "compress",
    "compress_many",
    "decompress",
    "decompress_many",
    "load_model",
    "sample",
    "score",
]
