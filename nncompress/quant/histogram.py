"""The integer order-0 model (family ``histogram-int``): fixed integer logits per channel,
coded through the integer softmax of quant.distributions."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..distributions.base import NUM_SYMBOLS
from ..models.base import LikelihoodModel, Stepper
from ..models.histogram import HistogramModel
from . import distributions as qd

ARITHMETIC = "int-v1"


@dataclass(frozen=True)
class IntHistogramConfig:
    channels: int = 3
    arithmetic: str = ARITHMETIC

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"histogram supports 1 or 3 channels, not {self.channels}")
        if self.arithmetic != ARITHMETIC:
            raise ValueError(f"arithmetic {self.arithmetic!r} is not {ARITHMETIC!r}")


class IntHistogram(LikelihoodModel):
    """(C, 256) integer logits with LOGIT_FRAC fractional bits, the same at every pixel."""

    family = "histogram-int"
    Config = IntHistogramConfig

    def __init__(self, config: IntHistogramConfig) -> None:
        super().__init__(config)
        self.register_buffer("logits", torch.zeros(config.channels, NUM_SYMBOLS, dtype=torch.int32))
        self.register_buffer("t_exp", torch.zeros(qd.EXP_MAX + 1, dtype=torch.int32))

    @property
    def distribution(self) -> qd.IntegerCategorical:
        return qd.IntegerCategorical(self.channels, {"exp": self.t_exp})

    def params(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        return self.logits.reshape(1, -1, 1, 1).double().expand(b, -1, h, w)

    def stepper(self, batch: int, height: int, width: int) -> Stepper:
        return _Stepper(self, batch, height, width)

    def integrity_problem(self) -> str | None:
        return qd.tables_problem({"exp": self.t_exp})


class _Stepper(Stepper):
    def params_at(self, y: int, x: int) -> torch.Tensor:
        return self.model.logits.reshape(1, -1).double().expand(self.canvas.shape[0], -1)


def from_float(model: HistogramModel) -> IntHistogram:
    """Logits rounded to LOGIT_FRAC bits (the float model's are log-probabilities)."""
    out = IntHistogram(IntHistogramConfig(model.channels))
    logits = model.logits.detach().double().cpu().numpy() * 2**qd.LOGIT_FRAC
    lo = np.rint(logits).clip(-(2**30), 2**30)
    out.logits.copy_(torch.from_numpy(lo.astype(np.int32)))
    out.t_exp.copy_(torch.from_numpy(qd.build_tables()["exp"]))
    return out.eval()
