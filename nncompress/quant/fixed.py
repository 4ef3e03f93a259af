"""Fixed-point arithmetic of the integer coding path (FORMAT.md, "The integer arithmetic").

Every number that shapes a coding table is an integer. Network values are held as
integer-valued float64 tensors: a float64 sum of integers is exact in any order, on any
BLAS, thread count or device, while every partial sum stays below 2^53 (the exporter checks
the bound per layer), so matrix products and convolutions need no integer kernels.
Elementwise steps use only exact float64 operations (products of integers below 2^53,
multiplication by powers of two, round-half-to-even, comparisons) and lookups in tables
that the model file carries. The mixture's arithmetic is exact too (quant.distributions).
Sums may be grouped in any way (the stepper's integer path splits and regroups products
for speed), so every grouping gives the same integers.

Formats (a value v with F fractional bits stands for v / 2^F):
  - activations: ACT_FRAC = 12 fractional bits, clamped to [-ACT_MAX, ACT_MAX];
  - requantization of an accumulator ``acc`` whose layer has shift k (per output channel):
    ``clamp(round_half_even(acc / 2^k), -ACT_MAX, ACT_MAX)``;
  - elu: a table over [ELU_MIN, 0] (below: its first entry), identity above 0;
  - sigmoid: a table over [-SIG_MAX, SIG_MAX] at ACT_FRAC bits (clamped index), values with
    SIG_FRAC fractional bits; the gate is ``clamp(x + round_half_even(a * SIG[b] / 2^16))``.
"""

from __future__ import annotations

import numpy as np
import torch

from . import kernels

ACT_FRAC = 12
ACT_MAX = 2**23 - 1
ELU_MIN = -16 * 2**ACT_FRAC
SIG_MAX = 12 * 2**ACT_FRAC
SIG_FRAC = 16
#: Weights are integers of at most this many bits (sign included).
WEIGHT_BITS = 16
#: The largest magnitude of an exact float64 integer sum.
EXACT_LIMIT = 2**53


#: Elements from which IntegerArithmetic.concat_elu_into saves bytes rather than ops.
_LARGE = 1 << 16


def elu_table() -> np.ndarray:
    """(1 - ELU_MIN,) int32: entry i is elu((i + ELU_MIN) / 2^12) * 2^12, rounded."""
    v = np.arange(ELU_MIN, 1, dtype=np.float64) / 2**ACT_FRAC
    return np.rint(np.expm1(v) * 2**ACT_FRAC).astype(np.int32)


def sigmoid_table() -> np.ndarray:
    """(2 SIG_MAX + 1,) int32: entry i is sigmoid((i - SIG_MAX) / 2^12) * 2^16, rounded."""
    v = np.arange(-SIG_MAX, SIG_MAX + 1, dtype=np.float64) / 2**ACT_FRAC
    return np.rint(2**SIG_FRAC / (1.0 + np.exp(-v))).astype(np.int32)


def requant_(acc: torch.Tensor, post: torch.Tensor) -> torch.Tensor:
    """In place: acc (..., C) or broadcastable against ``post`` = 2^-k per channel ->
    the requantized activation (see the module docstring)."""
    return acc.mul_(post).round_().clamp_(-ACT_MAX, ACT_MAX)


def table_lookup(table: torch.Tensor, x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """table[clamp(x, lo, hi) - lo] for integer-valued x (any float or int dtype); table
    1-D. (index_select with int32 indices: a gather several times faster than take.)"""
    if x.is_floating_point():
        idx = x.clamp(lo, hi).sub_(lo).to(torch.int32)
    else:
        idx = x.clamp(lo, hi) - lo
    return table.index_select(0, idx.view(-1)).view(x.shape)


class IntegerArithmetic:
    """The stepper's elementwise operations on the integer path (see PixelCNNppStepper),
    over integer-valued float64 tensors. ``elu`` and ``sigmoid``: the model's tables as
    float64 tensors on the coding device."""

    dtype = torch.float64
    integer = True
    #: The constant input channel: pixels enter as 2 v - 255, so 1.0 is 255.
    one = 255.0

    #: Whether the steps go to quant.kernels' fused kernels first (CUDA, Triton present);
    #: they compute the same integers, in one kernel a step.
    fused = False

    def __init__(self, elu: torch.Tensor, sigmoid: torch.Tensor) -> None:
        self.elu_t = elu
        self.sig_t = sigmoid
        # SIG / 2^16, exactly (a power-of-two scaling of integers below 2^17): the gate's
        # a * SIG[b] / 2^16 is then one exact product, a * SIG[b] being below 2^39.
        self._sig_scaled = sigmoid * 2.0**-SIG_FRAC
        if type(self).fin is IntegerArithmetic.fin:  # (not quant.qat's differentiable ops)
            self.fused = kernels.enabled(elu.device)

    @staticmethod
    def pixels(v: torch.Tensor) -> torch.Tensor:
        """Pixel values in [0, 255] -> 2 v - 255 (the network input, in units of 1/255)."""
        return v.to(torch.float64).mul_(2.0).sub_(255.0)

    def fin(self, acc: torch.Tensor, post: torch.Tensor | None) -> torch.Tensor:
        """Requantize a complete accumulation in place (post: 2^-k per output channel)."""
        if self.fused and kernels.fin(acc, post):
            return acc
        return requant_(acc, post)

    def fin_bias(
        self, acc: torch.Tensor, post: torch.Tensor, bias_post: torch.Tensor
    ) -> torch.Tensor:
        """fin(acc + bias) in place, given bias_post = bias * post: (acc + bias) 2^-k =
        acc 2^-k + bias 2^-k exactly (both terms and their sum are integers scaled by the
        same power of two, below 2^53), so one addcmul replaces the bias's pass."""
        if self.fused and kernels.fin(acc, post, bias_post):
            return acc
        return torch.addcmul(bias_post, acc, post, out=acc).round_().clamp_(-ACT_MAX, ACT_MAX)

    def elu(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """ELU[clamp(x, ELU_MIN, 0) - ELU_MIN] + max(x, 0), into ``out`` if given (which
        may be x itself)."""
        if self.fused:
            dst = torch.empty_like(x) if out is None else out
            if kernels.elu(x, dst, self.elu_t):
                return dst
        y = table_lookup(self.elu_t, x, ELU_MIN, 0)
        return torch.add(y, x.clamp(min=0), out=out)

    def concat_elu(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """elu([x, -x]) along ``dim``."""
        if x.requires_grad:  # (quant.qat's differentiable subclass)
            return self.elu(torch.cat([x, -x], dim))
        shape = list(x.shape)
        shape[dim] *= 2
        return self.concat_elu_into(x, x.new_empty(shape), dim)

    def concat_elu_into(self, x: torch.Tensor, out: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """concat_elu(x) along ``dim`` into ``out`` (twice x's size along dim, possibly a
        strided view). Small x (a pixel step's) and CUDA: both halves written, then one elu
        in place over them (fewest kernels); large x on CPU (a row's): elu(x) and elu(-x)
        straight into the halves, reading x rather than ``out`` (fewest bytes; both
        measured on CPU, ~3x faster than elu of a torch.cat)."""
        c = x.shape[dim]
        if self.fused and dim in (-1, x.dim() - 1) and kernels.concat_elu(x, out, self.elu_t):
            return out
        if x.numel() >= _LARGE and not x.is_cuda:
            self.elu(x, out=out.narrow(dim, 0, c))
            self.elu(torch.neg(x), out=out.narrow(dim, c, c))
            return out
        torch.neg(x, out=out.narrow(dim, c, c))
        out.narrow(dim, 0, c).copy_(x)
        return self.elu(out, out=out)

    def gate(
        self, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """clamp(x + round(a * SIG[b] / 2^16)), into ``out`` if given."""
        if self.fused:
            dst = torch.empty_like(x) if out is None else out
            if kernels.gate(x, a, b, dst, self._sig_scaled):
                return dst
        s = table_lookup(self._sig_scaled, b, -SIG_MAX, SIG_MAX)
        y = s.mul_(a).round_().add_(x)
        if out is None:
            return y.clamp_(-ACT_MAX, ACT_MAX)
        return torch.clamp(y, -ACT_MAX, ACT_MAX, out=out)
