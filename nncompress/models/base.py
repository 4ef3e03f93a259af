"""The model interface: a parallel pass for training and scoring, and a sequential
stepper for coding and sampling.

Models are pure ``torch.nn.Module``s: no files, no coder, no device policy.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Hashable
from typing import Any, ClassVar

import torch
from torch import nn

from ..distributions.base import Distribution

#: runner(key, fn) -> fn(): how a stepper runs its position-independent work (see Stepper).
StepRunner = Callable[[Hashable, Callable[[], torch.Tensor]], torch.Tensor]


class Stepper(abc.ABC):
    """Sequential evaluation of a model over a batch of tiles.

    The stepper owns ``canvas``: (B, C, H, W) uint8 on the model's device, holding every
    value decoded so far (positions not yet visited hold 0). The codec loop calls, for each
    pixel position in ``order()``: ``params_at(y, x)`` -> (B, P) distribution parameters
    for that pixel, which may only depend on canvas values earlier in the order; then
    ``write(y, x, values)`` with the (B, C) values decoded there.

    ``runner`` runs the part of a step that does not depend on the position except through
    a small key: ``runner(key, fn)`` returns ``fn()``. The default calls it; on CUDA the
    codec installs one that captures ``fn`` once per key as a CUDA graph and replays it
    (see runtime.GraphRunner). A stepper that hands work to the runner must keep every
    tensor ``fn`` reads or writes alive and in place for its lifetime, and feed positions
    to ``fn`` through such tensors (filled before the call), never through Python values.
    """

    def __init__(self, model: LikelihoodModel, batch: int, height: int, width: int) -> None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
        self.model = model
        self.runner: StepRunner = run_now
        #: The tensor params_at returns at every step, if it is always the same one.
        self.params_buffer: torch.Tensor | None = None
        self.canvas = torch.zeros(
            batch, model.channels, height, width, dtype=torch.uint8, device=device
        )

    @property
    def distribution(self) -> Distribution:
        return self.model.distribution

    @property
    def padding(self) -> str:
        return self.model.padding

    def order(self) -> list[tuple[int, int]]:
        """Pixel positions in coding order. Default: raster order."""
        _, _, h, w = self.canvas.shape
        return [(y, x) for y in range(h) for x in range(w)]

    @abc.abstractmethod
    def params_at(self, y: int, x: int) -> torch.Tensor:
        """(B, P) float32 parameters of the pixel at (y, x) given the canvas."""

    def write(self, y: int, x: int, values: torch.Tensor) -> None:
        """values: (B, C) integer in [0, 255], the pixel values at (y, x)."""
        self.canvas[:, :, y, x] = values.to(self.canvas.dtype)


def run_now(key: Hashable, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The default step runner: just run ``fn``."""
    return fn()


class NaiveStepper(Stepper):
    """Re-runs the whole parallel pass at every step: O(pixels^2), but obviously right.
    The reference for cached steppers, and the stepper of cheap models."""

    def params_at(self, y: int, x: int) -> torch.Tensor:
        return self.model.params(self.canvas)[:, :, y, x].float()


class LikelihoodModel(nn.Module, abc.ABC):
    """An autoregressive model p(x) = prod_i p(x_i | x_<i) over (B, C, H, W) uint8 images.

    Subclasses set ``family`` and ``Config`` (a dataclass with a ``channels`` field), take
    the config as their only constructor argument, and define ``distribution``.
    """

    family: ClassVar[str]
    Config: ClassVar[type]
    #: Tile size the model is restricted to (MADE), or None for any size.
    fixed_tile: ClassVar[tuple[int, int] | None] = None
    #: How tile positions outside the image are filled when coding: "edge" replicates the
    #: nearest image pixel (needs an order in which it comes first: raster), "zero" writes 0.
    padding: ClassVar[str] = "edge"

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config

    @property
    def channels(self) -> int:
        return int(self.config.channels)

    @property
    @abc.abstractmethod
    def distribution(self) -> Distribution: ...

    @abc.abstractmethod
    def params(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) uint8 in [0, 255] -> (B, P, H, W) float distribution parameters,
        where the parameters at a pixel depend only on pixels before it in coding order."""

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) uint8 -> (B, C, H, W) log-likelihood per subpixel, nats."""
        return self.distribution.log_prob(self.params(x), x)

    def stepper(self, batch: int, height: int, width: int) -> Stepper:
        """A stepper over ``batch`` tiles of ``height`` x ``width``. Default: naive."""
        return NaiveStepper(self, batch, height, width)

    def config_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)


def bits_per_subpixel(log_prob_nats: torch.Tensor) -> float:
    """Mean negative log-likelihood in bits per subpixel of a log-prob tensor (any shape)."""
    return float(-log_prob_nats.double().mean() / torch.log(torch.tensor(2.0, dtype=torch.float64)))
