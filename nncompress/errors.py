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
