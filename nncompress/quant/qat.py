"""Quantization-aware training: the float PixelCNN++'s weights run through exactly the
integer network that from_float exports (quant.pixelcnnpp), with straight-through
gradients for every rounding and table, so training sees the numbers the coder will use.

``QuantizedForward(model)(x)`` gives the integer model's parameters (integer-valued float64,
the same integers as ``from_float(model).params(x)``) with gradients into ``model``'s
weights; ``log_prob`` turns them back into the float mixture's units for the loss. Weight
exponents (the power-of-two scales) are recomputed from the current weights at every
forward, as the export computes them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..distributions.logistic import DiscretizedLogisticMixture
from ..models.pixelcnnpp import PixelCNNpp
from . import distributions as qd
from .fixed import ACT_FRAC, ACT_MAX, ELU_MIN, SIG_FRAC, SIG_MAX, IntegerArithmetic, table_lookup
from .pixelcnnpp import integer_skeleton, layer_plans

_ACT = 2.0**-ACT_FRAC


class _Round(torch.autograd.Function):
    """Round half to even; the gradient passes straight through."""

    @staticmethod
    def forward(ctx, x):  # noqa: ANN001, D102
        return torch.round(x)

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001, D102
        return g


class _Table(torch.autograd.Function):
    """A table lookup forward; the float function's derivative backward."""

    @staticmethod
    def forward(ctx, x, table, lo, hi, deriv):  # noqa: ANN001, D102
        ctx.save_for_backward(x)
        ctx.deriv = deriv
        return table_lookup(table, x, lo, hi)

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001, D102
        (x,) = ctx.saved_tensors
        return g * ctx.deriv(x), None, None, None, None


def _elu_table_deriv(x: torch.Tensor) -> torch.Tensor:
    # d/dx of 2^12 elu(x 2^-12) below 0 (the table's part; above 0 the identity's)
    return torch.where(x > 0, torch.zeros_like(x), torch.exp((x * _ACT).clamp(max=0)))


def _sig_deriv(x: torch.Tensor) -> torch.Tensor:
    # d/dx of 2^16 sigmoid(x 2^-12)
    s = torch.sigmoid(x * _ACT)
    return s * (1 - s) * 2.0 ** (SIG_FRAC - ACT_FRAC)


class QATArithmetic(IntegerArithmetic):
    """IntegerArithmetic's results, out of place and differentiable."""

    @staticmethod
    def fin(acc: torch.Tensor, post: torch.Tensor | None) -> torch.Tensor:
        return _Round.apply(acc * post).clamp(-ACT_MAX, ACT_MAX)

    def elu(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return _Table.apply(x, self.elu_t, ELU_MIN, 0, _elu_table_deriv) + x.clamp(min=0)

    def gate(self, x, a, b, out=None):  # noqa: ANN001, D102 (see IntegerArithmetic)
        s = _Table.apply(b, self.sig_t, -SIG_MAX, SIG_MAX, _sig_deriv)
        return (x + _Round.apply(s * a * 2.0**-SIG_FRAC)).clamp(-ACT_MAX, ACT_MAX)


class QuantizedForward(nn.Module):
    """The integer network of a float PixelCNN++, differentiable (see module docstring)."""

    def __init__(self, model: PixelCNNpp) -> None:
        super().__init__()
        self.model = model
        self.skeleton = integer_skeleton(model).to(next(model.parameters()).device)
        self._dist = DiscretizedLogisticMixture(model.channels, model.config.nr_logistic_mix)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) uint8 -> (B, P, H, W) integer-valued float64 parameters."""
        sk = self.skeleton.to(x.device)
        for plan in layer_plans(self.model, sk):
            ws, bs = plan.scales()
            plan.dst.fake = (_Round.apply(plan.w * ws), _Round.apply(plan.b * bs))
            plan.dst.shift.copy_(plan.shift())
        try:
            ar = QATArithmetic(sk.t_elu.double(), sk.t_sigmoid.double())
            return sk.params(x, ar)
        finally:
            for m in sk.modules():
                if getattr(m, "fake", None) is not None:
                    m.fake = None

    def float_params(self, x: torch.Tensor) -> torch.Tensor:
        """The integer parameters in the float mixture's units (for its loss)."""
        return to_float_units(self(x), self.model.channels, self.model.config.nr_logistic_mix)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) nats under the float mixture of the integer parameters."""
        return self._dist.log_prob(self.float_params(x), x)


def to_float_units(p: torch.Tensor, channels: int, nr_mix: int) -> torch.Tensor:
    """Integer mixture parameters (quant.distributions formats) -> the float mixture's:
    logits / 2^10, means / 2^8 / 127.5, log-scales / 2^10 - ln 127.5, raw coefficients /
    2^12 (float32)."""
    block = 3 if channels == 3 else 2
    n = nr_mix * (1 + block * channels)
    scale = torch.full((n,), 2.0**-qd.LOGIT_FRAC, dtype=torch.float64, device=p.device)
    shift = torch.zeros(n, dtype=torch.float64, device=p.device)
    for ch in range(channels):
        at = nr_mix + ch * block * nr_mix
        scale[at : at + nr_mix] = 2.0**-qd.MEAN_FRAC / 127.5
        ls = slice(at + nr_mix, at + 2 * nr_mix)
        scale[ls] = 2.0**-qd.LOG_SCALE_FRAC
        shift[ls] = -math.log(127.5)
        if block == 3:
            scale[at + 2 * nr_mix : at + 3 * nr_mix] = 2.0**-qd.COEF_IN_FRAC
    return (p * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)).float()


__all__ = ["QATArithmetic", "QuantizedForward", "to_float_units"]
