"""The only module that imports constriction: a FIFO range coder, many symbols per call.

Tables are (N, 256) rows of integer weights ``g`` (quant.distributions: g_j >= 0, summing
to FREQ_TOTAL - 256), handed over as float64 (exact: they are below 2^24). The model is
constriction's ``Categorical`` with ``perfect=False`` (passed explicitly: its default
differs between versions), its lazy leaky quantizer at 24 bits of precision: symbol j's
left cumulative is floor(S_j * scale) + j with S_j = g_0 + ... + g_{j-1} (exact float64
sums of integers) and scale = (2^24 - 256) / sum(g) = 1 exactly, so the coder's frequency
of symbol j is exactly g_j + 1 out of FREQ_TOTAL = 2^24 (FORMAT.md, "Entropy coding") on
every machine.
"""

from __future__ import annotations

import constriction
import numpy as np

from ..errors import FormatError

_MODEL = constriction.stream.model.Categorical(perfect=False)
#: The coder's probability precision: frequencies of a table sum to this.
FREQ_TOTAL = 2**24
_WORD = np.dtype("<u4")  # payload words, little-endian on disk


def _check_probs(probs: np.ndarray) -> np.ndarray:
    """probs: (N, 256) float; returned as contiguous float64 (exact widening of float32)."""
    return np.ascontiguousarray(probs, dtype=np.float64)


class Encoder:
    """Accumulates symbols; ``finish()`` returns the payload bytes."""

    def __init__(self) -> None:
        self._coder = constriction.stream.queue.RangeEncoder()
        self.num_symbols = 0

    def encode(self, symbols: np.ndarray, probs: np.ndarray) -> None:
        """symbols: (N,) ints in [0, 256); probs: (N, 256) rows summing to ~1."""
        if len(symbols) == 0:
            return
        self._coder.encode(
            np.ascontiguousarray(symbols, dtype=np.int32), _MODEL, _check_probs(probs)
        )
        self.num_symbols += len(symbols)

    def num_bits(self) -> int:
        return int(self._coder.num_bits())

    def finish(self) -> bytes:
        return self._coder.get_compressed().astype(_WORD).tobytes()


class Decoder:
    """Decodes symbols from payload bytes written by ``Encoder.finish()``."""

    def __init__(self, payload: bytes) -> None:
        if len(payload) % _WORD.itemsize:
            raise FormatError("payload length is not a whole number of 32-bit words")
        words = np.frombuffer(payload, dtype=_WORD).astype(np.uint32)
        self._coder = constriction.stream.queue.RangeDecoder(words)

    def decode(self, probs: np.ndarray) -> np.ndarray:
        """probs: (N, 256). Returns (N,) int64 symbols."""
        if len(probs) == 0:
            return np.zeros(0, dtype=np.int64)
        try:
            out = self._coder.decode(_MODEL, _check_probs(probs))
        except Exception as e:  # constriction raises plain errors on corrupt input
            raise FormatError(f"payload is corrupted ({e})") from None
        return np.asarray(out, dtype=np.int64)

    def maybe_exhausted(self) -> bool:
        return bool(self._coder.maybe_exhausted())
