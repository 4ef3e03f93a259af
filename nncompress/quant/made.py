"""The integer MADE (family ``made-int``): mask set 0 of a trained MADE with 16-bit masked
weights, fixed-point ReLU activations and the integer softmax of quant.distributions, so
that its tables are the same integers on every device, thread count and batch layout
(FORMAT.md, "The integer arithmetic", "MADE (`made-int`)").

The float MADE multiplies its weights by masks derived from orderings and hidden degrees;
the integer model stores mask set 0's weights already masked (zeros where masked) and its
ordering, which is all coding needs. Layers hold ``w`` (int16), ``b`` (int64, at the
accumulator's scale) and ``shift`` (int32 per output unit: the accumulator is requantized by
2^-shift). The head holds its int16 weights, a shift per logit row and the per-pixel bias at
LOGIT_FRAC bits, which enters the head's accumulator as ``pixel_bias * 2^shift``, so every
requantization acts on one complete, exact sum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..distributions.base import NUM_SYMBOLS
from ..errors import UnsupportedImageError
from ..models.base import LikelihoodModel, Stepper
from ..models.made import MADE
from . import distributions as qd
from .fixed import ACT_FRAC, ACT_MAX, EXACT_LIMIT, WEIGHT_BITS, requant_

#: The fixed-point specification a model file's integers follow (FORMAT.md).
ARITHMETIC = "int-v1"
_W_MAX = 2 ** (WEIGHT_BITS - 1) - 1
#: Pixels enter as 2 v - 255: the float model's input v / 127.5 - 1 in units of 1/255.
PIXEL_SCALE = 255
#: Fractional bits of an accumulator at most (weights of all-zero rows, tiny weights) ...
_MAX_ACC_FRAC = 40
#: ... and the largest magnitude a quantized bias may take.
_MAX_BIAS = 2**46
#: The per-pixel bias is int16 at LOGIT_FRAC bits: +-32 nats around 0.
_PB_MAX = 2**15 - 1
#: Shifts a model file may hold (the head's must be >= 0: pixel_bias * 2^shift).
SHIFT_MIN, SHIFT_MAX = -30, 62


@dataclass(frozen=True)
class IntMADEConfig:
    channels: int = 1
    height: int = 28
    width: int = 28
    hidden: tuple[int, ...] = (1000, 1000)
    features: int = 8
    arithmetic: str = ARITHMETIC

    def __post_init__(self) -> None:
        # Model files store the config as JSON, which turns tuples into lists.
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if self.height * self.width < 2 or self.channels < 1 or min(self.height, self.width) < 1:
            raise ValueError("MADE needs at least 2 pixel positions and 1 channel")
        if not self.hidden or min(self.hidden) < 1 or self.features < 1:
            raise ValueError("hidden widths and features must be positive")
        if self.arithmetic != ARITHMETIC:
            raise ValueError(
                f"arithmetic {self.arithmetic!r} is not {ARITHMETIC!r} (a newer release's model?)"
            )


def _posts(shift: torch.Tensor) -> torch.Tensor:
    """2^-shift per unit, float64 (exact: math.ldexp), on shift's device."""
    vals = [math.ldexp(1.0, -int(k)) for k in shift.tolist()]
    return torch.tensor(vals, dtype=torch.float64, device=shift.device)


class IntMaskedLinear(nn.Module):
    """acc = b + w @ input (exact in float64), requantized per output unit."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.register_buffer("w", torch.zeros(cout, cin, dtype=torch.int16))
        self.register_buffer("b", torch.zeros(cout, dtype=torch.int64))
        self.register_buffer("shift", torch.zeros(cout, dtype=torch.int32))


class IntMADE(LikelihoodModel):
    """MADE on the integer path. Input: (B, C, H, W) uint8 tiles of the fixed size;
    ``params`` gives (B, C*256, H, W) integer logits (LOGIT_FRAC bits) as float64, the same
    integers the stepper computes."""

    family = "made-int"
    Config = IntMADEConfig
    fixed_tile = (28, 28)
    # Positions are visited in the model's order, not raster order: padding is zero.
    padding = "zero"

    def __init__(self, config: IntMADEConfig) -> None:
        super().__init__(config)
        self.fixed_tile = (config.height, config.width)
        c, k = config.channels, config.features
        self.positions = positions = config.height * config.width
        widths = [c * positions, *config.hidden]
        self.hidden_layers = nn.ModuleList(
            IntMaskedLinear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.feature_layer = IntMaskedLinear(widths[-1], positions * k)
        self.register_buffer("head_w", torch.zeros(c * NUM_SYMBOLS, k, dtype=torch.int16))
        self.register_buffer("head_shift", torch.zeros(c * NUM_SYMBOLS, dtype=torch.int32))
        self.register_buffer(
            "pixel_bias", torch.zeros(positions, c * NUM_SYMBOLS, dtype=torch.int16)
        )
        # order[r]: the position y * W + x coded r-th (the float model's mask set 0).
        self.register_buffer("order", torch.arange(positions, dtype=torch.int32))
        self.register_buffer("t_exp", torch.zeros(qd.EXP_MAX + 1, dtype=torch.int32))
        self._cache: tuple[tuple, _Weights] | None = None

    @property
    def distribution(self) -> qd.IntegerCategorical:
        return qd.IntegerCategorical(self.channels, {"exp": self.t_exp})

    def _layers(self) -> list[IntMaskedLinear]:
        return [*self.hidden_layers, self.feature_layer]

    def weights(self) -> _Weights:
        """The float64 working copies of the integers (cached while the buffers are
        unchanged: keyed by their storage and version counters)."""
        bufs = list(self.buffers())
        key = tuple((t.device, t.data_ptr(), t._version) for t in bufs)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, _Weights(self))
        return self._cache[1]

    def ordering(self) -> list[tuple[int, int]]:
        w = self.config.width
        return [(int(p) // w, int(p) % w) for p in self.order.tolist()]

    def _check_input(self, x: torch.Tensor) -> None:
        want = (self.channels, self.config.height, self.config.width)
        if x.dim() != 4 or tuple(x.shape[1:]) != want:
            raise UnsupportedImageError(
                f"MADE takes (B, {want[0]}, {want[1]}, {want[2]}) tiles, got {tuple(x.shape)}"
            )

    @torch.no_grad()
    def params(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) uint8 -> (B, C*256, H, W) integer logits (float64)."""
        self._check_input(x)
        wt = self.weights()
        b = x.shape[0]
        h = pixels(x.reshape(b, -1))
        for layer in wt.hidden:
            h = layer.run(h)
        feats = wt.features.run(h, relu=False).view(b, self.positions, -1)  # (B, HW, K)
        acc = torch.matmul(feats, wt.head_t).add_(wt.pixel_bias_acc)  # (B, HW, C*256)
        logits = requant_(acc, wt.head_post)
        return logits.permute(0, 2, 1).reshape(b, -1, self.config.height, self.config.width)

    def stepper(self, batch: int, height: int, width: int) -> IntMADEStepper:
        return IntMADEStepper(self, batch, height, width)

    def integrity_problem(self) -> str | None:
        """The order a permutation, shifts in range, every accumulator provably exact in
        float64, the network autoregressive in its order, the table in its domain."""
        n = self.positions
        order = self.order.long()
        if not torch.equal(torch.sort(order).values, torch.arange(n, device=order.device)):
            return "the coding order is not a permutation of the tile's positions"
        for i, layer in enumerate(self._layers()):
            s = layer.shift
            if s.numel() and not bool(((s >= SHIFT_MIN) & (s <= SHIFT_MAX)).all()):
                return f"layer {i}: shift outside {SHIFT_MIN}..{SHIFT_MAX}"
            in_max = PIXEL_SCALE if i == 0 else ACT_MAX
            bound = _bound(layer.w, in_max, layer.b.double().abs().max().item())
            if bound >= EXACT_LIMIT:
                return f"layer {i}: its accumulator may not be exact in float64"
        s = self.head_shift
        if not bool(((s >= 0) & (s <= SHIFT_MAX)).all()):
            return f"head: shift outside 0..{SHIFT_MAX}"
        pb = self.pixel_bias.double().abs().max().item() * 2.0 ** int(s.max())
        if _bound(self.head_w, ACT_MAX, pb) >= EXACT_LIMIT:
            return "head: its accumulator may not be exact in float64"
        if not self._autoregressive():
            return "the network is not autoregressive in its coding order"
        return qd.tables_problem({"exp": self.t_exp})

    def _autoregressive(self) -> bool:
        """Every feature of the pixel of rank r depends (through non-zero weights) only on
        inputs of rank < r."""
        c, n = self.channels, self.positions
        ranks = torch.empty(n, dtype=torch.long, device=self.order.device)
        ranks[self.order.long()] = torch.arange(n, device=ranks.device)
        # dep[u]: 1 + the largest input rank unit u depends on (0: none).
        dep = (ranks + 1).repeat(c)
        for layer in self._layers():
            dep = ((layer.w != 0) * dep[None, :]).amax(1)
        own = ranks.repeat_interleave(self.config.features)  # feature rows: (HW, K) layout
        return bool((dep <= own).all())


def _bound(w: torch.Tensor, in_max: float, bias_max: float) -> float:
    """K * in_max * max|w| + max|bias|: what the accumulator's partial sums stay below."""
    # Not w.abs(): |-32768| overflows int16.
    wmax = float(max(-int(w.min()), int(w.max()))) if w.numel() else 0.0
    return w.shape[1] * in_max * wmax + bias_max


def pixels(v: torch.Tensor) -> torch.Tensor:
    """Pixel values 0..255 -> 2 v - 255 (float64): the float model's input in 1/255."""
    return v.to(torch.float64).mul_(2.0).sub_(PIXEL_SCALE)


class _Layer:
    """One masked linear layer's float64 working copy."""

    def __init__(self, layer: IntMaskedLinear) -> None:
        self.w_t = layer.w.double().t().contiguous()  # (in, out)
        self.b = layer.b.double()
        self.post = _posts(layer.shift)

    def run(self, h: torch.Tensor, relu: bool = True) -> torch.Tensor:
        y = requant_(torch.addmm(self.b, h, self.w_t), self.post)
        return y.clamp_(min=0) if relu else y


class _Weights:
    """The float64 copies the parallel pass and the stepper compute with."""

    def __init__(self, m: IntMADE) -> None:
        self.hidden = [_Layer(layer) for layer in m.hidden_layers]
        self.features = _Layer(m.feature_layer)
        self.head_t = m.head_w.double().t().contiguous()  # (K, C*256)
        self.head_post = _posts(m.head_shift)
        scale = 1.0 / self.head_post  # 2^shift, exact
        self.pixel_bias_acc = m.pixel_bias.double() * scale  # exact: integer * 2^shift


class IntMADEStepper(Stepper):
    """Codes the positions in the model's order. The first layer's accumulator is kept and
    updated when a value is written (exact integers: the same as summing afresh); its
    requantization and everything after it run on the complete sums at every step."""

    padding = "zero"

    def __init__(self, model: IntMADE, batch: int, height: int, width: int) -> None:
        if (height, width) != model.fixed_tile:
            raise UnsupportedImageError(
                f"MADE codes {model.fixed_tile[0]}x{model.fixed_tile[1]} tiles only, "
                f"got {height}x{width}"
            )
        super().__init__(model, batch, height, width)
        self.wt = wt = model.weights()
        first = wt.hidden[0]
        # The accumulator of an all-zero canvas (inputs -255): b + w @ (-255, ...).
        x0 = pixels(self.canvas.reshape(batch, -1))
        self.acc = torch.addmm(first.b, x0, first.w_t)
        n, k = model.positions, model.config.features
        self._cols = [
            torch.arange(model.channels, device=self.canvas.device) * n + p for p in range(n)
        ]
        self._k = k
        self._order = model.ordering()

    def order(self) -> list[tuple[int, int]]:
        return list(self._order)

    def write(self, y: int, x: int, values: torch.Tensor) -> None:
        old = self.canvas[:, :, y, x].to(torch.float64)
        super().write(y, x, values)
        delta = self.canvas[:, :, y, x].to(torch.float64).sub_(old).mul_(2.0)  # (B, C)
        p = y * self.model.config.width + x
        first = self.wt.hidden[0]
        self.acc.addmm_(delta, first.w_t[self._cols[p]])

    @torch.no_grad()
    def params_at(self, y: int, x: int) -> torch.Tensor:
        wt = self.wt
        p = y * self.model.config.width + x
        first = wt.hidden[0]
        h = requant_(self.acc.clone(), first.post).clamp_(min=0)
        for layer in wt.hidden[1:]:
            h = layer.run(h)
        f = wt.features
        rows = slice(p * self._k, (p + 1) * self._k)
        feats = requant_(torch.addmm(f.b[rows], h, f.w_t[:, rows]), f.post[rows])  # (B, K)
        acc = torch.addmm(wt.pixel_bias_acc[p], feats, wt.head_t)
        return requant_(acc, wt.head_post)


# ----------------------------------------------------------------------------------------
# Conversion of a trained float model


def _exps(maxabs: np.ndarray, bias_abs: np.ndarray, in_frac: int) -> np.ndarray:
    """Per output unit the largest weight exponent e with maxabs * 2^e <= _W_MAX, at most
    _MAX_ACC_FRAC - in_frac, and small enough that |bias| * 2^(e + in_frac) <= _MAX_BIAS."""
    e = np.floor(np.log2(_W_MAX) - np.log2(np.maximum(maxabs, 2.0**-100)))
    eb = np.floor(math.log2(_MAX_BIAS) - np.log2(np.maximum(bias_abs, 2.0**-100))) - in_frac
    e = np.minimum(np.minimum(e, eb), _MAX_ACC_FRAC - in_frac).astype(np.int64)
    # log2 can land one too high at an exact boundary.
    while np.any(over := maxabs * np.ldexp(1.0, e) > _W_MAX):
        e[over] -= 1
    return e


def _put(layer: IntMaskedLinear, w: np.ndarray, b: np.ndarray, in_frac: int, in_max: float) -> None:
    """Quantize float weights w (out, in), already masked, and bias b; the input has
    ``in_frac`` fractional bits (at most ``in_max`` in magnitude), the output ACT_FRAC."""
    e = _exps(np.abs(w).max(1, initial=0.0), np.abs(b), in_frac)
    wq = np.rint(w * np.ldexp(1.0, e)[:, None])
    bq = np.rint(b * np.ldexp(1.0, e + in_frac))
    bound = w.shape[1] * in_max * np.abs(wq).max(initial=0) + np.abs(bq).max(initial=0)
    if bound >= EXACT_LIMIT:
        raise ValueError(f"a layer's accumulator may reach {bound:.3g}: not exact in float64")
    shift = e + in_frac - ACT_FRAC
    if shift.min(initial=0) < SHIFT_MIN or shift.max(initial=0) > SHIFT_MAX:
        raise ValueError("a layer's weights are out of the integer model's range")
    layer.w.copy_(torch.from_numpy(wq.astype(np.int16)))
    layer.b.copy_(torch.from_numpy(bq.astype(np.int64)))
    layer.shift.copy_(torch.from_numpy(shift.astype(np.int32)))


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().cpu().numpy()


@torch.no_grad()
def from_float(model: MADE) -> IntMADE:
    """The integer model of a trained float MADE's mask set 0 (post-training quantization:
    16-bit weights with a power-of-two scale per output unit, activations at ACT_FRAC
    bits, logits at LOGIT_FRAC bits)."""
    cfg = model.config
    out = IntMADE(IntMADEConfig(cfg.channels, cfg.height, cfg.width, cfg.hidden, cfg.features))
    masks = [_np(m) for m in model.masks(0)]
    layers = [*model.hidden_layers, model.feature_layer]
    for i, (dst, src, mask) in enumerate(zip(out._layers(), layers, masks, strict=True)):
        w = _np(src.weight) * mask
        if i == 0:  # the input 2v - 255 is 255 x the float input: the weights take 1/255
            _put(dst, w / PIXEL_SCALE, _np(src.bias), 0, float(PIXEL_SCALE))
        else:
            _put(dst, w, _np(src.bias), ACT_FRAC, float(ACT_MAX))
    # Head: logits = requant(pixel_bias * 2^s + head_w @ features), s per logit row.
    hw = _np(model.head_weight)
    e = _exps(np.abs(hw).max(1, initial=0.0), np.zeros(len(hw)), ACT_FRAC)
    shift = e + ACT_FRAC - qd.LOGIT_FRAC
    if shift.min() < 0:
        raise ValueError("the head's weights are too large for 16 bits")
    hq = np.rint(hw * np.ldexp(1.0, e)[:, None])
    pb = np.rint(_np(model.pixel_bias) * 2**qd.LOGIT_FRAC).clip(-_PB_MAX, _PB_MAX)
    bound = hw.shape[1] * ACT_MAX * np.abs(hq).max(initial=0) + _PB_MAX * 2.0 ** shift.max()
    if bound >= EXACT_LIMIT:
        raise ValueError(f"the head's accumulator may reach {bound:.3g}: not exact in float64")
    out.head_w.copy_(torch.from_numpy(hq.astype(np.int16)))
    out.head_shift.copy_(torch.from_numpy(shift.astype(np.int32)))
    out.pixel_bias.copy_(torch.from_numpy(pb.astype(np.int16)))
    out.order.copy_(model.orders[0].to(torch.int32).cpu())
    out.t_exp.copy_(torch.from_numpy(qd.build_tables()["exp"]))
    return out.eval()
