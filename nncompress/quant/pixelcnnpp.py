"""The integer PixelCNN++ (family ``pixelcnnpp-int``): the float network's structure with
integer weights, fixed-point activations and the model file's tables (quant.fixed,
quant.distributions). It runs through the same cached stepper as the float model
(models.pixelcnnpp.PixelCNNppStepper, with quant.fixed.IntegerArithmetic), and its parallel
pass computes exactly the same integers, so scores, encoder and decoder agree bit for bit on
every device.

Every layer holds ``w`` (int16 weights), ``b`` (int64 bias at the accumulator's scale) and
``shift`` (per output channel k: the accumulator is requantized by 2^-k). ``from_float``
converts a trained float model (post-training quantization, FORMAT.md "The integer
arithmetic" gives the formats).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models.base import LikelihoodModel
from ..models.pixelcnnpp import (
    NUM_LEVELS,
    ConvStep,
    DeconvStep,
    GatedResnet,
    GatedStep,
    LinearStep,
    Nin,
    PixelCNNpp,
    PixelCNNppStepper,
    ShiftedConv2d,
    ShiftedDeconv2d,
    _down_shift,
    _right_shift,
    build_layers,
)
from . import distributions as qd
from .fixed import (
    ACT_FRAC,
    ACT_MAX,
    ELU_MIN,
    EXACT_LIMIT,
    SIG_MAX,
    WEIGHT_BITS,
    IntegerArithmetic,
    elu_table,
    sigmoid_table,
)

#: The fixed-point specification a model file's integers follow (FORMAT.md).
ARITHMETIC = "int-v1"
_W_MAX = 2 ** (WEIGHT_BITS - 1) - 1
#: Most fractional bits a weight gets (all-zero channels, tiny weights).
_MAX_WEIGHT_EXP = 40
#: The mixture's weight sums stay in int64 (quant.distributions.frequencies).
MAX_MIX = 64
_TABLES = ("elu", "sigmoid", "inv_scale", "tanh", "exp", "log")


@dataclass(frozen=True)
class IntPixelCNNppConfig:
    channels: int = 3
    nr_resnet: int = 5
    nr_filters: int = 160
    nr_logistic_mix: int = 10
    arithmetic: str = ARITHMETIC

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"PixelCNN++ supports 1 or 3 channels, not {self.channels}")
        if self.nr_resnet < 0 or self.nr_filters < 1 or not 1 <= self.nr_logistic_mix <= MAX_MIX:
            raise ValueError(f"invalid PixelCNN++ sizes: {self}")
        if self.arithmetic != ARITHMETIC:
            raise ValueError(
                f"arithmetic {self.arithmetic!r} is not {ARITHMETIC!r} (a newer release's model?)"
            )


def table_sizes() -> dict[str, int]:
    """Entries of each table a model file carries (their domains: quant.fixed and
    quant.distributions)."""
    return {
        "elu": 1 - ELU_MIN,
        "sigmoid": 2 * SIG_MAX + 1,
        "inv_scale": qd.LOG_SCALE_HI - qd.LOG_SCALE_LO + 1,
        "tanh": 2 * qd.COEF_MAX + 1,
        "exp": qd.EXP_MAX + 1,
        "log": qd.LOG_TABLE_SIZE,
    }


def _posts(shift: torch.Tensor) -> torch.Tensor:
    """2^-shift per channel, float64 (exact: math.ldexp), on shift's device."""
    vals = [math.ldexp(1.0, -int(k)) for k in shift.tolist()]
    return torch.tensor(vals, dtype=torch.float64, device=shift.device)


class _IntLayer:
    """The integer buffers every layer has (see the module docstring)."""

    def _init_int(self, w_shape: tuple[int, ...], cout: int) -> None:
        self.register_buffer("w", torch.zeros(w_shape, dtype=torch.int16))
        self.register_buffer("b", torch.zeros(cout, dtype=torch.int64))
        self.register_buffer("shift", torch.zeros(cout, dtype=torch.int32))

    #: Quantization-aware training (quant.qat): integer-valued float64 weight and bias that
    #: carry gradients, used instead of the buffers while set.
    fake: tuple[torch.Tensor, torch.Tensor] | None = None

    def post(self) -> torch.Tensor:
        return _posts(self.shift)

    def weight(self) -> torch.Tensor:
        return self.w.double() if self.fake is None else self.fake[0]

    def bias(self) -> torch.Tensor:
        return self.b.double() if self.fake is None else self.fake[1]


class IntConv(_IntLayer, ShiftedConv2d):
    def __init__(
        self, cin: int, cout: int, kernel: tuple[int, int], *, right: bool = False, stride: int = 1
    ) -> None:
        nn.Module.__init__(self)
        self.kernel, self.right, self.stride = kernel, right, stride
        self._init_int((cout, cin, *kernel), cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The accumulator (not requantized)."""
        top, left, right = self.padding
        return F.conv2d(F.pad(x, (left, right, top, 0)), self.weight(), self.bias(), self.stride)

    def step_weights(self) -> ConvStep:
        return ConvStep.of(self.weight(), self.bias(), self.stride, self.post())


class IntDeconv(_IntLayer, ShiftedDeconv2d):
    def __init__(self, cin: int, cout: int, kernel: tuple[int, int], *, right: bool) -> None:
        nn.Module.__init__(self)
        self.kernel, self.right = kernel, right
        self._init_int((cin, cout, *kernel), cout)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        y = F.conv_transpose2d(x, self.weight(), self.bias(), stride=2)
        off = self.col_offset
        return y[:, :, : size[0], off : off + size[1]]

    def step_weights(self) -> DeconvStep:
        return DeconvStep.of(self.weight(), self.bias(), self.post())


class IntNin(_IntLayer, Nin):
    def __init__(self, cin: int, cout: int) -> None:
        nn.Module.__init__(self)
        self._init_int((cout, cin), cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight()[:, :, None, None], self.bias())

    def step_weights(self) -> LinearStep:
        return LinearStep(self.weight().t().contiguous(), self.bias(), self.post())


class IntGated(GatedResnet):
    """x + a * sigmoid(b) in fixed point; conv_a and the nin share conv_a's shift."""

    def __init__(self, filters: int, kernel: tuple[int, int], *, right: bool, n_aux: int) -> None:
        nn.Module.__init__(self)
        self.n_aux = n_aux
        self.conv_a = IntConv(2 * filters, filters, kernel, right=right)
        self.nin = IntNin(2 * filters * n_aux, filters) if n_aux else None
        self.conv_b = IntConv(2 * filters, 2 * filters, kernel, right=right)

    def run(self, ar: IntegerArithmetic, x: torch.Tensor, aux: tuple[torch.Tensor, ...]):
        """x: (B, F, H, W) activations; aux: ``n_aux`` such tensors -> (B, F, H, W)."""
        h = self.conv_a(ar.concat_elu(x))
        if self.nin is not None:
            h = h + self.nin(torch.cat([ar.concat_elu(a) for a in aux], dim=1))
        h = ar.concat_elu(ar.fin(h, _nchw(self.conv_a.post())))
        a, b = ar.fin(self.conv_b(h), _nchw(self.conv_b.post())).chunk(2, dim=1)
        return ar.gate(x, a, b)

    def step_weights(self) -> GatedStep:
        nin = self.nin.step_weights() if self.nin is not None else None
        a = self.conv_a
        return GatedStep.of(
            a.weight(), a.bias(), nin, self.n_aux, self.conv_b.step_weights(), a.post()
        )


def _nchw(post: torch.Tensor) -> torch.Tensor:
    return post.view(1, -1, 1, 1)


class IntPixelCNNpp(LikelihoodModel):
    """PixelCNN++ on the integer path. Input: (B, C, H, W) uint8; ``params`` gives (B, P,
    H, W) integer-valued float64 in the formats of quant.distributions."""

    family = "pixelcnnpp-int"
    Config = IntPixelCNNppConfig

    def __init__(self, config: IntPixelCNNppConfig) -> None:
        super().__init__(config)
        c, f, r = config.channels, config.nr_filters, config.nr_resnet
        self._mix_params = qd.IntegerLogisticMixture(c, config.nr_logistic_mix, {}).num_params
        build_layers(
            self,
            c,
            f,
            r,
            self._mix_params,
            IntConv,
            IntDeconv,
            IntNin,
            lambda f_, kernel, right, n_aux: IntGated(f_, kernel, right=right, n_aux=n_aux),
        )
        for name, size in table_sizes().items():
            self.register_buffer(f"t_{name}", torch.zeros(size, dtype=torch.int32))
        self._cache: dict[tuple, object] = {}

    down_blocks = PixelCNNpp.down_blocks

    def _tables(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, f"t_{name}") for name in _TABLES}

    def _cached(self, kind: str, make):
        key = (kind, self.t_sigmoid.device, self.t_sigmoid.data_ptr())
        if key not in self._cache:
            self._cache = {k: v for k, v in self._cache.items() if k[1:] == key[1:]}
            self._cache[key] = make()
        return self._cache[key]

    @property
    def distribution(self) -> qd.IntegerLogisticMixture:
        cfg = self.config
        return self._cached(
            "dist",
            lambda: qd.IntegerLogisticMixture(cfg.channels, cfg.nr_logistic_mix, self._tables()),
        )

    def arithmetic(self, device: torch.device | None = None) -> IntegerArithmetic:
        return self._cached(
            "ar", lambda: IntegerArithmetic(self.t_elu.double(), self.t_sigmoid.double())
        )

    def params(self, x: torch.Tensor, ar: IntegerArithmetic | None = None) -> torch.Tensor:
        """x: (B, C, H, W) uint8 -> (B, P, H, W) integer-valued float64 (the same integers
        the stepper computes). ``ar``: other elementwise operations with the same results
        (quant.qat's, which carry gradients)."""
        PixelCNNpp._check_input(self, x)
        ar = self.arithmetic() if ar is None else ar
        xs = ar.pixels(x)
        b, _, h, w = xs.shape
        xpad = torch.cat([xs, xs.new_full((b, 1, h, w), ar.one)], dim=1)
        u = _down_shift(ar.fin(self.u_init(xpad), _nchw(self.u_init.post())))
        ul = _down_shift(self.ul_init_top(xpad)) + _right_shift(self.ul_init_left(xpad))
        ul = ar.fin(ul, _nchw(self.ul_init_top.post()))
        us, uls, sizes = [u], [ul], []
        for lv in range(NUM_LEVELS):
            if lv > 0:
                du, dul = self.down_u[lv - 1], self.down_ul[lv - 1]
                u = ar.fin(du(u), _nchw(du.post()))
                ul = ar.fin(dul(ul), _nchw(dul.post()))
                us.append(u)
                uls.append(ul)
            sizes.append(u.shape[2:])
            for bu, bul in zip(self.up_u[lv], self.up_ul[lv], strict=True):
                u = bu.run(ar, u, ())
                ul = bul.run(ar, ul, (u,))
                us.append(u)
                uls.append(ul)
        us.pop()
        uls.pop()
        for lv in reversed(range(NUM_LEVELS)):
            if lv < NUM_LEVELS - 1:
                cu, cul = self.deconv_u[lv], self.deconv_ul[lv]
                u = ar.fin(cu(u, sizes[lv]), _nchw(cu.post()))
                ul = ar.fin(cul(ul, sizes[lv]), _nchw(cul.post()))
            for bu, bul in zip(self.dn_u[lv], self.dn_ul[lv], strict=True):
                u = bu.run(ar, u, (us.pop(),))
                ul = bul.run(ar, ul, (u, uls.pop()))
        return ar.fin(self.out(ar.elu(ul)), _nchw(self.out.post()))

    def stepper(self, batch: int, height: int, width: int) -> PixelCNNppStepper:
        return PixelCNNppStepper(self, batch, height, width)

    def integrity_problem(self) -> str | None:
        """Shifts in range and consistent where accumulations are shared, every layer's
        accumulator provably exact in float64, tables in their domains."""
        pairs = [(self.ul_init_left, self.ul_init_top)]
        pairs += [(b.nin, b.conv_a) for b in self.modules() if isinstance(b, IntGated) and b.nin]
        for a, b in pairs:
            if not torch.equal(a.shift, b.shift):
                return "layers summed before one requantization have different shifts"
        first = (self.u_init, self.ul_init_top, self.ul_init_left)
        for name, layer in self.named_modules():
            if not isinstance(layer, _IntLayer):
                continue
            if layer.shift.numel() and not bool(((layer.shift >= -30) & (layer.shift <= 62)).all()):
                return f"layer {name}: shift outside -30..62"
            w = layer.w.long()
            k = w[0].numel() if not isinstance(layer, IntDeconv) else w[:, 0].numel()
            in_max = 255 if layer in first else ACT_MAX
            # In float64: abs of int64's most negative value overflows.
            b_max = float(layer.b.double().abs().max())
            bound = k * in_max * int(w.abs().max()) + b_max
            if 4 * bound >= EXACT_LIMIT:  # 4: a second, summed layer (see _put)
                return f"layer {name}: its accumulator may not be exact in float64"
        return qd.tables_problem(self._tables())


# ----------------------------------------------------------------------------------------
# Conversion of a trained float model


def _weight_exps(maxabs: np.ndarray) -> np.ndarray:
    """Per channel the largest e with maxabs * 2^e <= _W_MAX (capped)."""
    with np.errstate(divide="ignore"):
        e = np.floor(np.log2(_W_MAX / np.maximum(maxabs, 1e-300)))
    e = np.minimum(e, _MAX_WEIGHT_EXP).astype(np.int64)
    # log2 can land one too high at an exact boundary.
    while np.any(over := np.abs(maxabs) * np.ldexp(1.0, e) > _W_MAX):
        e[over] -= 1
    return e


def _channel_max(w: np.ndarray, out_dim: int) -> np.ndarray:
    return np.abs(np.moveaxis(w, out_dim, 0)).reshape(w.shape[out_dim], -1).max(1)


@dataclass
class LayerPlan:
    """How one integer layer comes from float weights: ``w`` and ``b`` (float64, the float
    layer's effective weights, already scaled to the integer formats; differentiable when
    the float model is), weight exponents ``e`` (per output channel), the input's
    fractional bits and largest magnitude, the output's fractional bits, and the output
    channels' dimension of ``w``."""

    dst: _IntLayer
    w: torch.Tensor
    b: torch.Tensor
    e: np.ndarray
    in_frac: int
    in_max: float
    out_frac: np.ndarray | int
    out_dim: int

    def scales(self) -> tuple[torch.Tensor, torch.Tensor]:
        """2^e shaped for w, and 2^(e + in_frac) for b (float64, exact)."""
        shape = [1] * self.w.ndim
        shape[self.out_dim] = -1
        ws = torch.from_numpy(np.ldexp(1.0, self.e)).to(self.w.device).view(shape)
        bs = torch.from_numpy(np.ldexp(1.0, self.e + self.in_frac)).to(self.w.device)
        return ws, bs

    def shift(self) -> torch.Tensor:
        return torch.from_numpy((self.e + self.in_frac - self.out_frac).astype(np.int32))

    def put(self) -> None:
        """Quantize into ``dst`` (round half to even), checking the exactness bound."""
        ws, bs = self.scales()
        wq = torch.round(self.w.detach() * ws).cpu()
        bq = torch.round(self.b.detach() * bs).cpu()
        k = self.w.numel() // self.w.shape[self.out_dim]
        bound = k * self.in_max * float(wq.abs().max()) + float(bq.abs().max())
        if bound >= EXACT_LIMIT / 4:  # /4: the joint sums add a second product term
            raise ValueError(f"a layer's accumulator may reach {bound:.3g}: not exact in float64")
        self.dst.w.copy_(wq.to(torch.int16))
        self.dst.b.copy_(bq.to(torch.int64))
        self.dst.shift.copy_(self.shift())


def _exps(w: torch.Tensor, out_dim: int) -> np.ndarray:
    return _weight_exps(_channel_max(w.detach().cpu().numpy(), out_dim))


def layer_plans(model: PixelCNNpp, out: IntPixelCNNpp) -> list[LayerPlan]:
    """One LayerPlan per layer of ``out`` from the float ``model`` (see from_float)."""
    act = float(ACT_MAX)
    plans: list[LayerPlan] = []

    def add(dst, src, in_frac=ACT_FRAC, scale=1.0, in_max=act, e=None, w=None):
        w = src.weight().double() * scale if w is None else w
        od = 1 if isinstance(src, ShiftedDeconv2d) else 0
        e = _exps(w, od) if e is None else e
        plans.append(LayerPlan(dst, w, src.b.double(), e, in_frac, in_max, ACT_FRAC, od))

    # Pixels enter as 2v - 255 and the constant channel as 255: both 1/255 of the float
    # input, so the first convs' weights take the 1/255 and have 0 input fractional bits.
    px = 1.0 / 255.0
    add(out.u_init, model.u_init, 0, px, 255.0)
    wt, wl = model.ul_init_top.weight().double() * px, model.ul_init_left.weight().double() * px
    e = np.minimum(_exps(wt, 0), _exps(wl, 0))  # summed before one requantization
    add(out.ul_init_top, model.ul_init_top, 0, px, 255.0, e, wt)
    add(out.ul_init_left, model.ul_init_left, 0, px, 255.0, e, wl)
    for dst_levels, src_levels in [
        (out.up_u, model.up_u),
        (out.up_ul, model.up_ul),
        (out.dn_u, model.dn_u),
        (out.dn_ul, model.dn_ul),
    ]:
        for dst_blocks, src_blocks in zip(dst_levels, src_levels, strict=True):
            for d, s in zip(dst_blocks, src_blocks, strict=True):
                wa = s.conv_a.weight().double()
                e = _exps(wa, 0)
                if s.nin is not None:
                    wn = s.nin.weight().double()
                    e = np.minimum(e, _exps(wn, 0))
                    add(d.nin, s.nin, e=e, w=wn)
                add(d.conv_a, s.conv_a, e=e, w=wa)
                add(d.conv_b, s.conv_b)
    for dst, src in zip(
        [*out.down_u, *out.down_ul, *out.deconv_u, *out.deconv_ul],
        [*model.down_u, *model.down_ul, *model.deconv_u, *model.deconv_ul],
        strict=True,
    ):
        add(dst, src)
    plans.append(_output_plan(out, model))
    return plans


def _output_plan(out: IntPixelCNNpp, model: PixelCNNpp) -> LayerPlan:
    """The output nin, rows mapped to the integer mixture's parameter formats: logits,
    means in pixel units (x 127.5), log-scales in pixel units (+ ln 127.5), raw coupling
    coefficients; each with its own fractional bits."""
    cfg = model.config
    m, c = cfg.nr_logistic_mix, cfg.channels
    block = 3 if c == 3 else 2
    w, b = model.out.weight().double(), model.out.b.double()
    n = len(b)
    frac = np.full(n, qd.LOGIT_FRAC, dtype=np.int64)
    row_scale, bias_shift = np.ones(n), np.zeros(n)
    for ch in range(c):
        at = m + ch * block * m
        mean, ls = slice(at, at + m), slice(at + m, at + 2 * m)
        row_scale[mean] = 127.5
        frac[mean] = qd.MEAN_FRAC
        bias_shift[ls] = math.log(127.5)
        frac[ls] = qd.LOG_SCALE_FRAC
        if block == 3:
            frac[at + 2 * m : at + 3 * m] = qd.COEF_IN_FRAC
    rs = torch.from_numpy(row_scale).to(w.device)
    w = w * rs.unsqueeze(1)
    b = b * rs + torch.from_numpy(bias_shift).to(w.device)
    return LayerPlan(out.out, w, b, _exps(w, 0), ACT_FRAC, float(ACT_MAX), frac, 0)


def integer_skeleton(model: PixelCNNpp) -> IntPixelCNNpp:
    """An integer model of ``model``'s sizes, with the tables and zero weights."""
    cfg = model.config
    if cfg.nr_logistic_mix > MAX_MIX:
        raise ValueError(f"nr_logistic_mix {cfg.nr_logistic_mix} > {MAX_MIX}")
    out = IntPixelCNNpp(
        IntPixelCNNppConfig(cfg.channels, cfg.nr_resnet, cfg.nr_filters, cfg.nr_logistic_mix)
    )
    tables = {"elu": elu_table(), "sigmoid": sigmoid_table(), **qd.build_tables()}
    for name in _TABLES:
        setattr(out, f"t_{name}", torch.from_numpy(tables[name].astype(np.int32)))
    return out


@torch.no_grad()
def from_float(model: PixelCNNpp) -> IntPixelCNNpp:
    """The integer model of a trained float PixelCNN++ (post-training quantization: 16-bit
    weights with a power-of-two scale per output channel, activations at ACT_FRAC bits)."""
    out = integer_skeleton(model)
    for plan in layer_plans(model, out):
        plan.put()
    return out.eval()
