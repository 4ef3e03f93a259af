"""The distribution interface shared by the training loss and the coder.

One object turns a model's per-pixel parameters into (a) log-probabilities of whole
images for training and scoring and (b) 256-way PMFs channel by channel for coding, so
the two can never drift apart.
"""

from __future__ import annotations

import abc

import torch

NUM_SYMBOLS = 256  # 8-bit subpixels


class Distribution(abc.ABC):
    """Maps parameters ``(B, P, H, W)`` to distributions over ``(B, C, H, W)`` uint8 pixels."""

    channels: int
    num_params: int  # P: parameters per pixel

    @abc.abstractmethod
    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """params: (B, P, H, W) float; x: (B, C, H, W) uint8 in [0, 255].

        Returns (B, C, H, W) float: log p(x_c | params, x_<c) in nats.
        """

    @abc.abstractmethod
    def channel_pmf(self, params: torch.Tensor, c: int, prev: torch.Tensor) -> torch.Tensor:
        """PMF of channel ``c`` at one pixel for each of N items.

        params: (N, P) float; prev: (N, c) int64, the values of channels < c at the same
        pixel, as actually decoded. Returns (N, 256) float32, rows sum to 1, every entry > 0.
        """

    def coding_pmf(
        self, params: torch.Tensor, c: int, prev: torch.Tensor, state: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """``channel_pmf`` as the coder calls it: channels 0, 1, ... of one pixel in turn,
        with ``state`` (a dict the caller keeps for the pixel) to carry work from earlier
        channels to later ones. prev: (N, C) int64, columns < c decoded. The same function
        as ``channel_pmf`` up to float rounding (the coder only needs it to be the same
        computation in encoder and decoder). Default: ``channel_pmf``."""
        return self.channel_pmf(params, c, prev[:, :c])

    def coding_state(self, device: torch.device) -> dict[str, torch.Tensor]:
        """A fresh ``state`` for ``coding_pmf``, holding whatever constants it needs made
        before any step runs (outside a CUDA graph capture). Default: empty."""
        return {}

    def pixel_pmfs(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """All channels' PMFs at one pixel given its true values (testing, scoring).

        params: (N, P); x: (N, C) int64. Returns (N, C, 256).
        """
        return torch.stack(
            [self.channel_pmf(params, c, x[:, :c]) for c in range(self.channels)], dim=1
        )

    def sample_channel(
        self, params: torch.Tensor, c: int, prev: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """Draw channel ``c`` for N items: (N,) int64. Default: from the PMF."""
        pmf = self.channel_pmf(params, c, prev)
        return torch.multinomial(pmf, 1, generator=generator).squeeze(1)
