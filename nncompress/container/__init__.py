"""The .nnc file format (see FORMAT.md): header, validation, packing and unpacking."""

from .format import (
    FORMAT_VERSION,
    MAGIC,
    MAX_BATCH_PIXELS,
    MAX_FILE_BYTES,
    MAX_HEADER_BODY_BYTES,
    MAX_MODEL_NAME_BYTES,
    MAX_PIXELS,
    MAX_TILE,
    MAX_TORCH_VERSION_BYTES,
    MIN_HEADER_BODY_BYTES,
    Header,
    describe,
    header_bytes,
    pack,
    read_header,
    unpack,
)

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "MAX_BATCH_PIXELS",
    "MAX_FILE_BYTES",
    "MAX_HEADER_BODY_BYTES",
    "MAX_MODEL_NAME_BYTES",
    "MAX_PIXELS",
    "MAX_TILE",
    "MAX_TORCH_VERSION_BYTES",
    "MIN_HEADER_BODY_BYTES",
    "Header",
    "describe",
    "header_bytes",
    "pack",
    "read_header",
    "unpack",
]
