"""Torch's deterministic-algorithms flag, set without touching torch.compile's settings.

``torch.use_deterministic_algorithms`` also sets ``torch._inductor.config.deterministic``,
and importing that config pulls in torch._inductor and torch._dynamo: ~1 s per process
here, ~5 s on a machine whose torch has no cached bytecode (measured on the lent H200),
spent by every ``nncompress encode`` and ``decode`` though the coder compiles nothing.
The flag the eager kernels read is the same either way.
"""

from __future__ import annotations

import torch

_SET = getattr(torch._C, "_set_deterministic_algorithms", None)


def set_deterministic(mode: bool, warn_only: bool = False) -> None:
    """torch.use_deterministic_algorithms(mode, warn_only=warn_only) for eager kernels."""
    if _SET is None:  # a torch without the private setter: the public function
        torch.use_deterministic_algorithms(mode, warn_only=warn_only)
    else:
        _SET(mode, warn_only=warn_only)
