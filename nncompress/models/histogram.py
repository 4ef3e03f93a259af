"""The baseline: fixed per-channel value frequencies learned from data (order-0 model)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from ..distributions import NUM_SYMBOLS, Categorical
from .base import LikelihoodModel, Stepper

# Laplace smoothing: every value is seen once more than counted, so none gets p = 0.
PSEUDO_COUNT = 1.0


@dataclass(frozen=True)
class HistogramConfig:
    channels: int = 3


class HistogramModel(LikelihoodModel):
    family = "histogram"
    Config = HistogramConfig

    def __init__(self, config: HistogramConfig) -> None:
        super().__init__(config)
        self._dist = Categorical(config.channels)
        # (C, 256) log-probabilities; uniform until fitted.
        self.register_buffer(
            "logits", torch.full((config.channels, NUM_SYMBOLS), -np.log(NUM_SYMBOLS))
        )

    @property
    def distribution(self) -> Categorical:
        return self._dist

    def params(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        flat = self.logits.reshape(1, -1, 1, 1).float()
        return flat.expand(b, -1, h, w)

    def stepper(self, batch: int, height: int, width: int) -> Stepper:
        return _HistogramStepper(self, batch, height, width)

    @torch.no_grad()
    def fit(self, images: Iterable[np.ndarray]) -> None:
        """images: arrays (C, H, W) uint8. Sets the logits to smoothed value frequencies."""
        counts = np.full((self.channels, NUM_SYMBOLS), PSEUDO_COUNT)
        for planes in images:
            for c in range(self.channels):
                counts[c] += np.bincount(planes[c].ravel(), minlength=NUM_SYMBOLS)
        probs = counts / counts.sum(axis=1, keepdims=True)
        self.logits.copy_(torch.from_numpy(np.log(probs)).float())


class _HistogramStepper(Stepper):
    """The parameters never depend on context: one (B, P) row block, reused."""

    def params_at(self, y: int, x: int) -> torch.Tensor:
        b = self.canvas.shape[0]
        return self.model.logits.reshape(1, -1).float().expand(b, -1)
