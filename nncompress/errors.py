"""Typed errors. Every failure a user can cause maps to one of these; the CLI prints
``str(error)`` on one line and exits non-zero."""

from __future__ import annotations


class NncError(Exception):
    """Base class of every error nncompress raises on purpose."""


class FormatError(NncError):
    """The .nnc file is malformed: bad magic, truncated, inconsistent fields."""


class UnsupportedVersionError(FormatError):
    """The .nnc file has a format version this build cannot read."""


class IntegrityError(NncError):
    """Decoded pixels do not match the CRC stored by the encoder."""


class ModelMismatchError(NncError):
    """The model given for decoding is not the one the file was encoded with."""


class DeviceMismatchError(NncError):
    """The file must be decoded on the kind of device it was encoded on."""


class ModelFileError(NncError):
    """A model file is missing, corrupted, foreign, or has an unknown family."""


class UnsupportedImageError(NncError):
    """The image's mode, depth or size is not supported."""


class OutOfMemoryError(NncError, MemoryError):
    """The work needed more memory than the device or host could give (a MemoryError too,
    so code that catches MemoryError keeps working). Raised for valid inputs only: every
    file field is checked against its caps before anything is allocated (FORMAT.md)."""


#: The advice given with an OutOfMemoryError (the same from the API and the CLI).
MEMORY_ADVICE = (
    "the tiles of all images given together share each batch; a lower max_batch "
    "(--max-batch; any batch size codes any file) or fewer images per call need less"
)


def is_out_of_memory(e: BaseException) -> bool:
    """torch's or numpy's allocator failing, on a GPU (torch.OutOfMemoryError) or on the
    CPU (MemoryError, or the RuntimeError torch's CPU allocator raises)."""
    return (
        isinstance(e, MemoryError)
        or type(e).__name__ == "OutOfMemoryError"
        or (isinstance(e, RuntimeError) and "can't allocate memory" in str(e))
    )


def out_of_memory(e: BaseException, doing: str) -> OutOfMemoryError:
    """The typed error for allocator failure ``e`` while ``doing`` ("decoding", ...)."""
    text = str(e).strip()
    first = text.splitlines()[0][:120] if text else type(e).__name__
    return OutOfMemoryError(f"out of memory while {doing} ({first}): {MEMORY_ADVICE}")
