"""Categorical (softmax) distribution over 256 values per subpixel."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import NUM_SYMBOLS, Distribution

# Mixed into every coding PMF so that no symbol has zero probability.
PROB_FLOOR = 1e-7


class Categorical(Distribution):
    """Parameters are logits laid out channel-major: P = C * 256, channel c owns
    ``params[:, c*256:(c+1)*256]``. Channels are independent given the parameters."""

    def __init__(self, channels: int) -> None:
        self.channels = channels
        self.num_params = channels * NUM_SYMBOLS

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = params.shape
        logits = params.float().view(b, self.channels, NUM_SYMBOLS, h, w)
        logp = F.log_softmax(logits, dim=2)
        return logp.gather(2, x.long().unsqueeze(2)).squeeze(2)

    def channel_pmf(self, params: torch.Tensor, c: int, prev: torch.Tensor) -> torch.Tensor:
        logits = params[:, c * NUM_SYMBOLS : (c + 1) * NUM_SYMBOLS].float()
        pmf = torch.softmax(logits, dim=1)
        return floor_and_normalize(pmf)


def floor_and_normalize(pmf: torch.Tensor) -> torch.Tensor:
    """pmf: (N, 256) >= 0. Returns float32 rows that sum to 1 with every entry >= ~PROB_FLOOR."""
    pmf = pmf.float().clamp_min(0.0) + PROB_FLOOR
    return pmf / pmf.sum(dim=1, keepdim=True)
