"""nncompress: learned lossless image compression with autoregressive models."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import NncError

__version__ = "0.4.0"

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

if TYPE_CHECKING:
    from .api import compress, compress_many, decompress, decompress_many, load_model, sample, score


def __getattr__(name: str) -> Any:
    """The API's entry points are imported on first use (PEP 562), so that `import
    nncompress` and the CLI's --help and usage errors do not pay for importing torch."""
    if name in __all__[2:]:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'nncompress' has no attribute {name!r}")
