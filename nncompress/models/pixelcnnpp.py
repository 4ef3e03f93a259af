"""PixelCNN++ (Salimans et al. 2017) and its cached raster-order stepper (Fast PixelCNN++,
Ramachandran et al. 2017).

The network has two streams: u ("down", sees the rows above) and ul ("down-right", sees the
rows above and the pixels to the left in the current row). Both run an up pass over three
resolutions (full, 1/2, 1/4; stride-2 shifted convolutions) and a down pass back (stride-2
transposed convolutions), with skip connections from every up-pass node to the down pass.
The arithmetic lives in four small layer classes (ShiftedConv2d, ShiftedDeconv2d, Nin,
GatedResnet), each with a parallel ``forward`` (NCHW) and the per-row / per-pixel ``step_*``
and ``pixel_*`` functions the stepper uses, and in the matrix products with which the
stepper splits the ul stream's convolutions into their row-above and current-row parts
(``_ul_bases``, ``_ul_level0``, ``_ul_downsample``): a portable integer-exact path would
replace those.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..determinism import set_deterministic
from ..distributions.logistic import DiscretizedLogisticMixture, scale_pixels
from ..errors import UnsupportedImageError
from .base import LikelihoodModel, Stepper

# Resolution levels: full, 1/2, 1/4 (the paper's three).
NUM_LEVELS = 3
# Std of the weight-norm direction parameters at init (irrelevant to the function, which
# only sees v / |v|; the reference's value).
INIT_STD = 0.05
# Initial gain of a gated block's second conv: blocks start close to the identity.
GATE_INIT_SCALE = 0.1
# Every convolution of the stepper's rings has kernel height 2 (row above + current row).
_RING_ROWS = 2
# Integer path: ring cells of at least this many values go through ShiftedConv2d._ring_row
# (below, e.g. the image's 2 x (C + 1), the window copies are cheaper than its kw times
# wider product).
_RING_MIN_CELL = 32


def concat_elu(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """ELU of [x, -x] along ``dim`` (doubles the channels). Note concat_elu(0) == 0, so zero
    padding before or after it is the same."""
    return F.elu(torch.cat([x, -x], dim))


class FloatArithmetic:
    """The stepper's elementwise operations on the float path (v0.3's arithmetic); the
    integer path's counterpart is quant.fixed.IntegerArithmetic, with the same methods."""

    dtype = torch.float32
    integer = False
    one = 1.0  # the constant input channel
    pixels = staticmethod(scale_pixels)

    @staticmethod
    def fin(acc: torch.Tensor, post: torch.Tensor | None) -> torch.Tensor:
        """A complete accumulation: nothing to do in float."""
        return acc

    @staticmethod
    def elu(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        if out is None:
            return F.elu(x)
        return torch.ops.aten.elu.out(x, out=out)

    @staticmethod
    def concat_elu(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        return concat_elu(x, dim)

    @staticmethod
    def gate(
        x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        return torch.addcmul(x, a, torch.sigmoid(b), out=out)


FLOAT = FloatArithmetic()


def _cat_post(*posts: torch.Tensor | None) -> torch.Tensor | None:
    """Requantization multipliers of concatenated outputs (None on the float path)."""
    return None if posts[0] is None else torch.cat(posts)


def _down_shift(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W): move every row one down, zeros in row 0."""
    return F.pad(x, (0, 0, 1, 0))[:, :, : x.shape[2]]


def _right_shift(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W): move every column one right, zeros in column 0."""
    return F.pad(x, (1, 0))[:, :, :, : x.shape[3]]


def _window_matrix(weight: torch.Tensor) -> torch.Tensor:
    """Conv weight (Cout, Cin, kh, kw) -> (kw*kh*Cin, Cout) for windows laid out (N, kw, kh,
    Cin) and flattened, kernel rows top-down (see _gather)."""
    cout = weight.shape[0]
    return weight.permute(3, 2, 1, 0).reshape(-1, cout).contiguous()


@dataclass(frozen=True)
class ConvStep:
    """Effective weights of a shifted conv for the stepper, computed once: ``mat``
    (kw*kh*Cin, Cout) for windows, ``bias`` (Cout,), the kernel width and stride."""

    mat: torch.Tensor
    bias: torch.Tensor
    kw: int
    stride: int
    #: Integer path: 2^-k per output channel, the requantization after the accumulation.
    post: torch.Tensor | None = None

    @staticmethod
    def of(
        weight: torch.Tensor,
        bias: torch.Tensor,
        stride: int = 1,
        post: torch.Tensor | None = None,
    ) -> ConvStep:
        """weight: (Cout, Cin, kh, kw), bias: (Cout,), both effective (detached)."""
        return ConvStep(_window_matrix(weight), bias, weight.shape[3], stride, post)

    @property
    def exact(self) -> bool:
        """The integer path: integer-valued float64 whose sums are exact in any order
        (quant.fixed), so products may be split and summed in any way."""
        return self.post is not None

    @property
    def bias_post(self) -> torch.Tensor:
        """The integer path's bias times 2^-k (exact): requant(acc + bias) is
        clamp(round(acc 2^-k + bias 2^-k)) with one exact addcmul (see
        IntegerArithmetic.fin_bias), so products can leave the bias out."""
        cache = self.__dict__
        if "_bias_post" not in cache:
            cache["_bias_post"] = self.bias * self.post
        return cache["_bias_post"]

    def ring_taps(self, cin: int) -> torch.Tensor:
        """The integer path's weights for whole ring cells of ``cin`` channels per slot
        (see ShiftedConv2d.step_row), computed once: (2, kh*Cin, kw*Cout), entry [f, s*Cin
        + ci, e*Cout + o] the weight of channel ci of slot s at kernel column e, where slot
        s holds kernel row s (f = 0: the top row in slot 0) or kh - 1 - s (f = 1)."""
        cache = self.__dict__.setdefault("_ring_taps", {})  # frozen: not via setattr
        if cin not in cache:
            cout = self.mat.shape[1]
            kh = self.mat.shape[0] // (self.kw * cin)
            w = self.mat.view(self.kw, kh, cin, cout).permute(1, 2, 0, 3)  # (kh, Cin, kw, Cout)
            flat = [v.reshape(kh * cin, self.kw * cout) for v in (w, w.flip(0))]
            cache[cin] = torch.stack(flat).contiguous()
        return cache[cin]

    def paired(self) -> ConvStep:
        """The same conv with its outputs followed by their negations: [y, -y] (2 Cout)."""
        mat = torch.cat([self.mat, -self.mat], 1).contiguous()
        bias = torch.cat([self.bias, -self.bias])
        return ConvStep(mat, bias, self.kw, self.stride, _cat_post(self.post, self.post))

    def split_rows(self, cell: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Split a 2x2 kernel (columns q-1, q of the row above and of the current row) for
        the stepper's pixel path, whose cells hold ``cell`` values (the input's Cin, then
        zeros). Returns ``above`` (2 cell, Cout), for the row above's cells [q-1, q], and
        ``cur`` (2, 2 cell, Cout), for the current row's cells as the stage holds them:
        [q, q-1] at parity 0, [q-1, q] at parity 1 (see PixelCNNppStepper)."""
        cout = self.mat.shape[1]
        blocks = self.mat.view(2, 2, -1, cout)  # (column, row, Cin, Cout)
        blocks = F.pad(blocks, (0, 0, 0, cell - blocks.shape[2]))
        above = blocks[:, 0].reshape(2 * cell, cout).contiguous()
        prev, cur = blocks[0, 1], blocks[1, 1]
        return above, torch.stack([torch.cat([cur, prev]), torch.cat([prev, cur])]).contiguous()


class ShiftedConv2d(nn.Module):
    """Weight-normalised conv whose output at (i, j) sees input rows i-kh+1 .. i and columns
    j-(kw-1)/2 .. j+(kw-1)/2 ("down", kw odd) or j-kw+1 .. j (``right``: "down-right").
    With stride 2 the output (i, j) sees rows 2i-kh+1 .. 2i and the columns around 2j."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: tuple[int, int],
        *,
        right: bool = False,
        stride: int = 1,
        init_scale: float = 1.0,
    ) -> None:
        super().__init__()
        kh, kw = kernel
        if not right and kw % 2 == 0:
            raise ValueError("a centred (down) shifted conv needs an odd kernel width")
        self.kernel = (kh, kw)
        self.right = right
        self.stride = stride
        self.v = nn.Parameter(torch.randn(cout, cin, kh, kw) * INIT_STD)
        self.g = nn.Parameter(torch.full((cout,), float(init_scale)))
        self.b = nn.Parameter(torch.zeros(cout))

    @property
    def padding(self) -> tuple[int, int, int]:
        """(top, left, right) zero padding that makes the conv causal."""
        kh, kw = self.kernel
        if self.right:
            return kh - 1, kw - 1, 0
        return kh - 1, (kw - 1) // 2, (kw - 1) // 2

    def weight(self) -> torch.Tensor:
        """(Cout, Cin, kh, kw) = g * v / |v| per output channel."""
        norm = self.v.pow(2).sum(dim=(1, 2, 3), keepdim=True).rsqrt()
        return self.g.view(-1, 1, 1, 1) * self.v * norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, Cin, H, W) -> (B, Cout, H', W'), H' = ceil(H / stride)."""
        top, left, right = self.padding
        x = F.pad(x, (left, right, top, 0))
        return F.conv2d(x, self.weight(), self.b, stride=self.stride)

    def step_weights(self) -> ConvStep:
        return ConvStep.of(self.weight().detach().float(), self.b.detach().float(), self.stride)

    @staticmethod
    def step_row(sw: ConvStep, rows: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
        """All outputs along a row: rows (B, Wp, S, Cin) (a ring), already padded; ``order``
        (kh,) picks its slots top-down (None: the slots as they are) -> (B * Wo, Cout),
        Wo = (Wp - kw) // stride + 1. One matrix product over every output's window (not a
        library convolution: same arithmetic as the pixel steps, no algorithm search)."""
        if sw.exact and rows.shape[2] * rows.shape[3] >= _RING_MIN_CELL:
            return ShiftedConv2d._ring_row(sw, rows, order)
        rows = rows.index_select(2, order) if order is not None else rows.contiguous()
        b, wp, kh, cin = rows.shape
        kw, k = sw.kw, kh * cin
        wo = (wp - kw) // sw.stride + 1
        # Output j's window is the kw columns from j * stride on, contiguous in memory.
        windows = rows.as_strided((b, wo, kw * k), (wp * k, sw.stride * k, 1))
        return torch.addmm(sw.bias, windows.reshape(b * wo, kw * k), sw.mat)

    @staticmethod
    def _ring_row(
        sw: ConvStep,
        rows: torch.Tensor,
        order: torch.Tensor | None,
        out: torch.Tensor | None = None,
        bias: bool = True,
    ) -> torch.Tensor:
        """step_row on the integer path, where sums are exact in any order: no window
        copies and no reordered ring. One product gives, for every ring column, its
        contribution to each kernel column e (the slots' order is in the weights, see
        ConvStep.ring_taps), and output j sums column j*stride + e's part e, for all e.
        ``out``: (B, Wo, Cout), possibly a strided view, to write into; ``bias``: False
        leaves the bias out (for IntegerArithmetic.fin_bias)."""
        b, wp, slots, cin = rows.shape
        taps = sw.ring_taps(cin)
        w = taps[0] if order is None else taps.index_select(0, order[:1])[0]
        kw, cout = sw.kw, sw.bias.shape[0]
        y = torch.mm(rows.reshape(b * wp, slots * cin), w).view(b, wp, kw, cout)
        wo = (wp - kw) // sw.stride + 1
        span = sw.stride * (wo - 1) + 1
        first, second = y[:, 0 : span : sw.stride, 0], y[:, 1 : 1 + span : sw.stride, 1]
        if bias:
            out = torch.add(first, sw.bias, out=out)
            out += second
        else:
            out = torch.add(first, second, out=out)
        for e in range(2, kw):
            out += y[:, e : e + span : sw.stride, e]
        return out.view(b * wo, cout)


@dataclass(frozen=True)
class DeconvStep:
    """Effective weights of a ShiftedDeconv2d: ``bias`` (Cout,); ``taps``: (kh * kw, Cin,
    Cout), tap a * kw + b for output row parity a and column offset b; ``row_taps``: (kh,
    Cin, kw * Cout), row parity a's taps side by side."""

    bias: torch.Tensor
    taps: torch.Tensor
    row_taps: torch.Tensor
    post: torch.Tensor | None = None  # see ConvStep

    @staticmethod
    def of(w: torch.Tensor, bias: torch.Tensor, post: torch.Tensor | None = None) -> DeconvStep:
        """w: (Cin, Cout, kh, kw), bias: (Cout,), both effective (detached)."""
        cin, cout, kh, kw = w.shape
        taps = w.permute(2, 3, 0, 1).reshape(kh * kw, cin, cout).contiguous()
        row_taps = w.permute(2, 0, 3, 1).reshape(kh, cin, kw * cout).contiguous()
        return DeconvStep(bias, taps, row_taps, post)

    def paired(self) -> DeconvStep:
        """Pixel taps with their outputs followed by their negations: [y, -y] (2 Cout)."""
        taps = torch.cat([self.taps, -self.taps], 2).contiguous()
        bias = torch.cat([self.bias, -self.bias])
        return DeconvStep(bias, taps, self.row_taps, _cat_post(self.post, self.post))


class ShiftedDeconv2d(nn.Module):
    """Weight-normalised stride-2 transposed conv, the inverse of the stride-2 shifted conv:
    output (p, q) reads input row p // 2 only, and input column q // 2 (``right``, 2x2 kernel)
    or columns q // 2 and, for odd q, q // 2 + 1 (centred, 2x3 kernel)."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int], *, right: bool) -> None:
        super().__init__()
        kh, kw = kernel
        self.kernel = (kh, kw)
        self.right = right
        self.v = nn.Parameter(torch.randn(cin, cout, kh, kw) * INIT_STD)
        self.g = nn.Parameter(torch.ones(cout))
        self.b = nn.Parameter(torch.zeros(cout))

    @property
    def col_offset(self) -> int:
        """Columns cropped on the left of the natural transposed-conv output."""
        return 0 if self.right else (self.kernel[1] - 1) // 2

    def weight(self) -> torch.Tensor:
        """(Cin, Cout, kh, kw) = g * v / |v| per output channel."""
        norm = self.v.pow(2).sum(dim=(0, 2, 3), keepdim=True).rsqrt()
        return self.g.view(1, -1, 1, 1) * self.v * norm

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """x: (B, Cin, h, w) -> (B, Cout, H, W) with H <= 2h, W <= 2w (``size``): the natural
        2h x 2w output cropped at the bottom and right, so odd sizes stay causal."""
        y = F.conv_transpose2d(x, self.weight(), self.b, stride=2)
        off = self.col_offset
        return y[:, :, : size[0], off : off + size[1]]

    def step_weights(self) -> DeconvStep:
        return DeconvStep.of(self.weight().detach().float(), self.b.detach().float())

    def step_row(
        self, sw: DeconvStep, x: torch.Tensor, parity: torch.Tensor, width: int
    ) -> torch.Tensor:
        """One output row 2r + parity from input row r: x (B, w, Cin), parity (1,) int64 ->
        (B * width, Cout). Input column i adds its tap b to output column 2i + b - offset."""
        b, w, cin = x.shape
        kw = self.kernel[1]
        taps = sw.row_taps.index_select(0, parity)[0]  # (Cin, kw * Cout)
        y = torch.mm(x.reshape(b * w, cin), taps).view(b, w, kw, -1)
        out = sw.bias.expand(b, 2 * w + kw - 2, y.shape[-1]).clone()  # the natural row
        for t in range(kw):
            out[:, t : t + 2 * w - 1 : 2] += y[:, :, t]
        off = self.col_offset
        return out[:, off : off + width].reshape(b * width, -1)

    @staticmethod
    def step_pixel(sw: DeconvStep, x: torch.Tensor, tap: torch.Tensor) -> torch.Tensor:
        """Down-right deconv at output (p, q) from input (p // 2, q // 2): x (B, Cin) ->
        (B, Cout); tap (1,) int64 = 2 (p % 2) + q % 2."""
        return torch.addmm(sw.bias, x, sw.taps.index_select(0, tap)[0])


@dataclass(frozen=True)
class LinearStep:
    """Effective weights of a Nin: ``mat`` (Cin, Cout), ``bias`` (Cout,)."""

    mat: torch.Tensor
    bias: torch.Tensor
    post: torch.Tensor | None = None  # see ConvStep


class Nin(nn.Module):
    """Weight-normalised 1x1 convolution ("network in network")."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.v = nn.Parameter(torch.randn(cout, cin) * INIT_STD)
        self.g = nn.Parameter(torch.ones(cout))
        self.b = nn.Parameter(torch.zeros(cout))

    def weight(self) -> torch.Tensor:
        """(Cout, Cin) = g * v / |v| per output channel."""
        return self.g.unsqueeze(1) * self.v * self.v.pow(2).sum(1, keepdim=True).rsqrt()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, Cin, H, W) -> (B, Cout, H, W)."""
        return F.conv2d(x, self.weight()[:, :, None, None], self.b)

    def step_weights(self) -> LinearStep:
        return LinearStep(self.weight().detach().float().t().contiguous(), self.b.detach().float())

    @staticmethod
    def step(sw: LinearStep, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """x: (N, Cin) -> (N, Cout), into ``out`` if given."""
        return torch.addmm(sw.bias, x, sw.mat, out=out)


@dataclass(frozen=True)
class GatedStep:
    """Effective weights of a GatedResnet for the stepper. The first conv (``hidden``, its
    bias including the nin's) and the nin, split per aux input (``aux``: (2F, 2F) each), are
    stacked with their negation, so they yield [c1, -c1] and one ELU gives concat_elu(c1).
    ``gate`` gives [a, b]; ``gate_pair`` gives [a, -a, b, b], for inputs kept as pairs
    [x, -x]: the block then yields [y, -y], and one ELU gives concat_elu(y)."""

    hidden: ConvStep
    aux: tuple[torch.Tensor, ...]
    gate: ConvStep
    gate_pair: ConvStep
    #: The integer path's first conv and nin blocks without the negated copies (F outputs):
    #: there [c1, -c1] costs a negation, not twice the product (negation is exact).
    first: ConvStep | None = None
    aux_first: tuple[torch.Tensor, ...] = ()

    @staticmethod
    def of(
        w: torch.Tensor,
        bias: torch.Tensor,
        nin: LinearStep | None,
        n_aux: int,
        gate: ConvStep,
        post: torch.Tensor | None = None,
    ) -> GatedStep:
        """w, bias: the first conv's effective weights (F, 2F, kh, kw), (F,); ``nin`` the
        aux inputs' nin (or None); ``gate`` the second conv's; ``post`` the requantization
        of the first conv's sum (shared with the nin's) on the integer path."""
        aux = []
        if nin is not None:
            bias = bias + nin.bias
            # Rows of the nin matrix, one block of 2F per aux input.
            for m in nin.mat.chunk(n_aux, dim=0):
                aux.append(torch.cat([m, -m], 1).contiguous())
        hidden = ConvStep.of(torch.cat([w, -w]), torch.cat([bias, -bias]), 1, _cat_post(post, post))
        ma, mb = gate.mat.chunk(2, dim=1)
        ba, bb = gate.bias.chunk(2)
        pa, pb = gate.post.chunk(2) if gate.post is not None else (None, None)
        pair = ConvStep(
            torch.cat([ma, -ma, mb, mb], 1).contiguous(),
            torch.cat([ba, -ba, bb, bb]),
            gate.kw,
            gate.stride,
            _cat_post(pa, pa, pb, pb),
        )
        if post is None:
            return GatedStep(hidden, tuple(aux), gate, pair)
        first = ConvStep.of(w, bias, 1, post)
        aux_first = () if nin is None else tuple(m.contiguous() for m in nin.mat.chunk(n_aux))
        return GatedStep(hidden, tuple(aux), gate, pair, first, aux_first)


@dataclass(frozen=True)
class GatedPixelStep:
    """A GatedStep split for the stepper's pixel path (see PixelCNNppStepper): per conv, the
    bias and the row-above part (``*_above``, applied once per row) and the current-row
    part by column parity (``*_cur``, see ConvStep.split_rows); the nin block of the u
    stream's aux input (``u_aux``, also once per row) and of the aux input computed at the
    same position (``skip``, down-pass blocks only)."""

    hidden_bias: torch.Tensor
    hidden_above: torch.Tensor
    hidden_cur: torch.Tensor
    gate_bias: torch.Tensor
    gate_above: torch.Tensor
    gate_cur: torch.Tensor
    u_aux: torch.Tensor
    skip: torch.Tensor | None
    hidden_post: torch.Tensor | None
    gate_post: torch.Tensor | None
    exact: ExactPixelStep | None = None

    @staticmethod
    def of(sw: GatedStep) -> GatedPixelStep:
        """For a ul block: aux inputs (u) or (u, skip), all cells of 2F values."""
        f2 = sw.hidden.bias.shape[0]
        hidden_above, hidden_cur = sw.hidden.split_rows(f2)
        gate_above, gate_cur = sw.gate_pair.split_rows(f2)
        skip = sw.aux[1] if len(sw.aux) > 1 else None
        return GatedPixelStep(
            sw.hidden.bias,
            hidden_above,
            hidden_cur,
            sw.gate_pair.bias,
            gate_above,
            gate_cur,
            sw.aux[0],
            skip,
            sw.hidden.post,
            sw.gate_pair.post,
            ExactPixelStep.of(sw) if sw.first is not None else None,
        )


@dataclass(frozen=True)
class ExactPixelStep:
    """The integer path's weights of a ul block without negated copies: the bases then
    hold c1's row-above part once (F values, where the float path keeps [c1, -c1]) and
    [a, b] once (2F, for [a, -a, b, b]); the pixel path forms the pairs by negation,
    which is exact, at a fraction of a product's cost. ``above_*``: 1 x 2 convs over a
    node's record (the row above's cells q-1, q); ``cur_*`` (2, 2 cell, Cout) by parity
    as ConvStep.split_rows; ``u_aux``, ``skip``: the nin blocks (2F, F)."""

    above_first: ConvStep
    above_gate: ConvStep
    cur_first: torch.Tensor
    cur_gate: torch.Tensor
    u_aux: torch.Tensor
    skip: torch.Tensor | None

    @staticmethod
    def of(sw: GatedStep) -> ExactPixelStep:
        first, gate = sw.first, sw.gate
        cell = first.mat.shape[0] // 4  # 2x2 kernels over cells of 2F values
        a_first, c_first = first.split_rows(cell)
        a_gate, c_gate = gate.split_rows(cell)
        skip = _column_major(sw.aux_first[1]) if len(sw.aux_first) > 1 else None
        return ExactPixelStep(
            ConvStep(a_first, first.bias, 2, 1, first.post),
            ConvStep(a_gate, gate.bias, 2, 1, gate.post),
            _column_major(c_first),
            _column_major(c_gate),
            sw.aux_first[0],
            skip,
        )


def _column_major(w: torch.Tensor) -> torch.Tensor:
    """On CPU, w (..., K, N) with each matrix stored column by column: MKL's products of
    few rows (the pixel steps' B x K) by such weights were measured ~15% faster. On CUDA
    left as they are (not measured there)."""
    if w.is_cuda:
        return w
    return w.transpose(-1, -2).contiguous().transpose(-1, -2)


class GatedResnet(nn.Module):
    """x + a * sigmoid(b), [a, b] = conv_b(concat_elu(conv_a(concat_elu(x)) +
    nin(concat_elu(aux)))), with dropout before conv_b. ``n_aux`` auxiliary inputs of
    ``filters`` channels each (skip connections, the u stream for ul)."""

    def __init__(
        self, filters: int, kernel: tuple[int, int], *, right: bool, n_aux: int, dropout: float
    ) -> None:
        super().__init__()
        self.n_aux = n_aux
        self.conv_a = ShiftedConv2d(2 * filters, filters, kernel, right=right)
        # One nin over all aux inputs, as the reference's nin over their concatenation.
        self.nin = Nin(2 * filters * n_aux, filters) if n_aux else None
        self.dropout = nn.Dropout(dropout)
        self.conv_b = ShiftedConv2d(
            2 * filters, 2 * filters, kernel, right=right, init_scale=GATE_INIT_SCALE
        )

    def forward(self, x: torch.Tensor, aux: tuple[torch.Tensor, ...] = ()) -> torch.Tensor:
        """x: (B, F, H, W); aux: ``n_aux`` tensors (B, F, H, W) -> (B, F, H, W)."""
        if len(aux) != self.n_aux:
            raise ValueError(f"expected {self.n_aux} aux inputs, got {len(aux)}")
        h = self.conv_a(concat_elu(x))
        if self.nin is not None:
            h = h + self.nin(torch.cat([concat_elu(a) for a in aux], dim=1))
        h = self.dropout(concat_elu(h))
        a, b = self.conv_b(h).chunk(2, dim=1)
        return x + a * torch.sigmoid(b)

    def step_weights(self) -> GatedStep:
        w = self.conv_a.weight().detach().float()
        bias = self.conv_a.b.detach().float()
        nin = self.nin.step_weights() if self.nin is not None else None
        return GatedStep.of(w, bias, nin, self.n_aux, self.conv_b.step_weights())

    @staticmethod
    def _hidden(ar, h: torch.Tensor, sw: GatedStep, aux: list[torch.Tensor]) -> torch.Tensor:
        for a, m in zip(aux, sw.aux, strict=True):
            h.addmm_(a, m)
        return ar.elu(ar.fin(h, sw.hidden.post), out=h)

    @staticmethod
    def _gate(ar, x: torch.Tensor, sw: GatedStep, g: torch.Tensor) -> torch.Tensor:
        a, b = ar.fin(g, sw.gate.post).chunk(2, dim=1)
        return ar.gate(x, a, b)

    @staticmethod
    def pixel_hidden(
        ar,
        sw: GatedPixelStep,
        base: torch.Tensor,
        pair: torch.Tensor,
        parity: int,
        skip: torch.Tensor | None,
        out: torch.Tensor,
    ) -> None:
        """concat_elu(c1) at one position per item, into ``out`` (N, 2F): ``base`` (N, 2F)
        the row-above part with bias and u aux, overwritten (it is gathered afresh at every
        step; summing into it saves a copy per product); ``pair`` (N, 2 K) the current
        row's two input cells as the stage holds them at ``parity``; ``skip`` (N, 2F) the
        aux input computed at this position (or None). On the integer path ``base`` holds
        c1's part (N, F) (see ExactPixelStep)."""
        if sw.exact is not None:
            h = base.addmm_(pair, sw.exact.cur_first[parity])
            if skip is not None:
                h.addmm_(skip, sw.exact.skip)
            ar.concat_elu_into(ar.fin(h, sw.exact.above_first.post), out)
            return
        base.addmm_(pair, sw.hidden_cur[parity])
        if skip is not None:
            base.addmm_(skip, sw.skip)
        ar.elu(ar.fin(base, sw.hidden_post), out=out)

    @staticmethod
    def pixel_out(
        ar,
        sw: GatedPixelStep,
        x2: torch.Tensor,
        base: torch.Tensor,
        pair: torch.Tensor,
        parity: int,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x2 (N, 2F) the raw input as [x, -x]; base (N, 4F) the gate's row-above part,
        overwritten; pair (N, 4F) the current row's two concat_elu(c1) cells -> the output
        as [y, -y] (negation is exact, so the halves stay each other's), into ``out`` if
        given. On the integer path ``base`` holds [a, b]'s part (N, 2F)."""
        if sw.exact is not None:
            f = x2.shape[1] // 2
            g = base.addmm_(pair, sw.exact.cur_gate[parity])
            g = ar.fin(g, sw.exact.above_gate.post)  # [a, b]
            if out is None:
                out = torch.empty_like(x2)
            ar.gate(x2[:, :f], g[:, :f], g[:, f:], out=out[:, :f])
            torch.neg(out[:, :f], out=out[:, f:])
            return out
        g = ar.fin(base.addmm_(pair, sw.gate_cur[parity]), sw.gate_post)  # [a, -a, b, b]
        f2 = x2.shape[1]
        return ar.gate(x2, g[:, :f2], g[:, f2:], out=out)

    @staticmethod
    def step_hidden_row(
        ar,
        sw: GatedStep,
        rows: torch.Tensor,
        aux: list[torch.Tensor],
        order: torch.Tensor,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """A whole row: rows (B, W+2, 2, 2F) ring of concat_elu'd inputs, its slots top-down
        in ``order``; aux (B*W, 2F) each. Returns concat_elu(c1): (B*W, 2F); on the integer
        path, into ``out`` (B, W, 2F) if given (then returned as it is)."""
        if sw.first is not None:  # the integer path: c1 once, then [c1, -c1]
            h = ShiftedConv2d._ring_row(sw.first, rows, order, bias=False)
            for a, m in zip(aux, sw.aux_first, strict=True):
                h.addmm_(a, m)
            h = ar.fin_bias(h, sw.first.post, sw.first.bias_post)
            if out is not None:
                return ar.concat_elu_into(h.view(*out.shape[:-1], -1), out, dim=-1)
            return ar.concat_elu(h)
        h = ShiftedConv2d.step_row(sw.hidden, rows, order)
        return GatedResnet._hidden(ar, h, sw, aux)

    @staticmethod
    def step_out_row(
        ar, sw: GatedStep, x: torch.Tensor, rows: torch.Tensor, order: torch.Tensor
    ) -> torch.Tensor:
        """x: (B*W, F) raw input row; rows: (B, W+2, 2, 2F) ring of concat_elu(c1)."""
        if sw.first is not None:  # the integer path
            g = ShiftedConv2d._ring_row(sw.gate, rows, order, bias=False)
            a, b = ar.fin_bias(g, sw.gate.post, sw.gate.bias_post).chunk(2, dim=1)
            return ar.gate(x, a, b)
        return GatedResnet._gate(ar, x, sw, ShiftedConv2d.step_row(sw.gate, rows, order))


@dataclass(frozen=True)
class PixelCNNppConfig:
    channels: int = 3
    nr_resnet: int = 5
    nr_filters: int = 160
    nr_logistic_mix: int = 10
    dropout: float = 0.5

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"PixelCNN++ supports 1 or 3 channels, not {self.channels}")
        if self.nr_resnet < 0 or self.nr_filters < 1 or self.nr_logistic_mix < 1:
            raise ValueError(f"invalid PixelCNN++ sizes: {self}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), not {self.dropout}")


def level_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """(H, W) of each resolution level: every stride-2 level is ceil(previous / 2)."""
    sizes = [(height, width)]
    for _ in range(NUM_LEVELS - 1):
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    return sizes


def down_blocks(level: int, nr_resnet: int) -> int:
    """Gated blocks of the down pass at ``level``: R at the coarsest, R + 1 elsewhere (as
    the reference)."""
    return nr_resnet if level == NUM_LEVELS - 1 else nr_resnet + 1


def build_layers(
    net: nn.Module,
    channels: int,
    filters: int,
    nr_resnet: int,
    num_params: int,
    conv,
    deconv,
    nin,
    gated,
) -> None:
    """Give ``net`` PixelCNN++'s layers, made by the factories (the float model's layer
    classes, or the integer model's): conv(cin, cout, kernel, right=, stride=),
    deconv(cin, cout, kernel, right=), nin(cin, cout), gated(filters, kernel, right,
    n_aux). One definition of the architecture for both, so they cannot drift apart."""
    f, r = filters, nr_resnet
    cin = channels + 1  # + a constant channel of ones, to tell the image from zero padding
    net.u_init = conv(cin, f, (2, 3))
    net.ul_init_top = conv(cin, f, (1, 3))
    net.ul_init_left = conv(cin, f, (2, 1), right=True)

    def blocks(n: int, right: bool, n_aux: int) -> nn.ModuleList:
        kernel = (2, 2) if right else (2, 3)
        return nn.ModuleList(gated(f, kernel, right, n_aux) for _ in range(n))

    # [level] -> blocks; the u stream has no aux on the way up, ul gets u.
    net.up_u = nn.ModuleList(blocks(r, False, 0) for _ in range(NUM_LEVELS))
    net.up_ul = nn.ModuleList(blocks(r, True, 1) for _ in range(NUM_LEVELS))
    # [level l] -> stride-2 conv from level l to l + 1.
    net.down_u = nn.ModuleList(conv(f, f, (2, 3), stride=2) for _ in range(NUM_LEVELS - 1))
    net.down_ul = nn.ModuleList(
        conv(f, f, (2, 2), right=True, stride=2) for _ in range(NUM_LEVELS - 1)
    )
    # [level] -> down-pass blocks: u gets its skip, ul gets [u, its skip].
    down = [down_blocks(lv, r) for lv in range(NUM_LEVELS)]
    net.dn_u = nn.ModuleList(blocks(n, False, 1) for n in down)
    net.dn_ul = nn.ModuleList(blocks(n, True, 2) for n in down)
    # [level l] -> stride-2 transposed conv from level l + 1 to l.
    net.deconv_u = nn.ModuleList(deconv(f, f, (2, 3), right=False) for _ in range(NUM_LEVELS - 1))
    net.deconv_ul = nn.ModuleList(deconv(f, f, (2, 2), right=True) for _ in range(NUM_LEVELS - 1))
    net.out = nin(f, num_params)


class PixelCNNpp(LikelihoodModel):
    """PixelCNN++ over (B, C, H, W) uint8 images of any size, with a discretized logistic
    mixture per pixel. Up pass: ``nr_resnet`` gated blocks per level; down pass:
    ``nr_resnet`` at the coarsest level and ``nr_resnet + 1`` at the others (as the
    reference), each consuming one skip connection."""

    family = "pixelcnnpp"
    Config = PixelCNNppConfig

    def __init__(self, config: PixelCNNppConfig) -> None:
        super().__init__(config)
        c, f, r = config.channels, config.nr_filters, config.nr_resnet
        self._dist = DiscretizedLogisticMixture(c, config.nr_logistic_mix)
        build_layers(
            self,
            c,
            f,
            r,
            self._dist.num_params,
            ShiftedConv2d,
            ShiftedDeconv2d,
            Nin,
            lambda f_, kernel, right, n_aux: GatedResnet(
                f_, kernel, right=right, n_aux=n_aux, dropout=config.dropout
            ),
        )

    def down_blocks(self, level: int) -> int:
        """Gated blocks of the down pass at ``level``."""
        return down_blocks(level, self.config.nr_resnet)

    @property
    def distribution(self) -> DiscretizedLogisticMixture:
        return self._dist

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise UnsupportedImageError(
                f"expected (B, {self.channels}, H, W) pixels, got shape {tuple(x.shape)}"
            )
        if x.shape[2] < 1 or x.shape[3] < 1:
            raise UnsupportedImageError(f"empty image: {tuple(x.shape)}")

    def params(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) uint8 in [0, 255] (or float on the same 0..255 scale, e.g. for
        gradient checks) -> (B, P, H, W) mixture parameters; P = distribution.num_params."""
        self._check_input(x)
        xs = scale_pixels(x)
        b, _, h, w = xs.shape
        xpad = torch.cat([xs, xs.new_ones(b, 1, h, w)], dim=1)
        u = _down_shift(self.u_init(xpad))
        ul = _down_shift(self.ul_init_top(xpad)) + _right_shift(self.ul_init_left(xpad))
        us, uls = [u], [ul]
        sizes = []
        for lv in range(NUM_LEVELS):
            if lv > 0:
                u, ul = self.down_u[lv - 1](u), self.down_ul[lv - 1](ul)
                us.append(u)
                uls.append(ul)
            sizes.append(u.shape[2:])
            for bu, bul in zip(self.up_u[lv], self.up_ul[lv], strict=True):
                u = bu(u)
                ul = bul(ul, (u,))
                us.append(u)
                uls.append(ul)
        # Down pass: the last up node starts it; every block pops one skip per stream.
        us.pop()
        uls.pop()
        for lv in reversed(range(NUM_LEVELS)):
            if lv < NUM_LEVELS - 1:
                u = self.deconv_u[lv](u, sizes[lv])
                ul = self.deconv_ul[lv](ul, sizes[lv])
            for bu, bul in zip(self.dn_u[lv], self.dn_ul[lv], strict=True):
                u = bu(u, (us.pop(),))
                ul = bul(ul, (u, uls.pop()))
        return self.out(F.elu(ul))

    def stepper(self, batch: int, height: int, width: int) -> PixelCNNppStepper:
        return PixelCNNppStepper(self, batch, height, width)

    def arithmetic(self, device: torch.device) -> FloatArithmetic:
        """The stepper's elementwise operations (the integer model has its own)."""
        return FLOAT


# ----------------------------------------------------------------------------------------
# The cached stepper


def _new_ring(batch: int, width: int, channels: int, like: torch.Tensor) -> torch.Tensor:
    """A two-row ring buffer (B, width, 2, channels), zero: row r of a level lives in slot
    r % 2; zeros stand for the padding above row 0 and left/right of the row. Columns are
    outside the slots so that the cells of a kernel window are a few rows of the (B,
    width * 2, channels) view (see _gather)."""
    return like.new_zeros(batch, width, _RING_ROWS, channels)


def _index_write(dst: torch.Tensor, dim: int, index: torch.Tensor, src: torch.Tensor) -> None:
    """dst.index_copy_(dim, index, src) for an index without repeats. Such a copy has no
    conflicting writes, so it is deterministic; but with deterministic algorithms on, CUDA
    runs index_copy_ as a sort-based index_put_, measured ~25 us per call instead of ~2.5 us
    on an H200 (tens of such writes per pixel step). So the flag is lifted for the call."""
    if dst.is_cuda and torch.are_deterministic_algorithms_enabled():
        warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
        set_deterministic(False)
        try:
            dst.index_copy_(dim, index, src)
        finally:
            set_deterministic(True, warn_only=warn_only)
    else:
        dst.index_copy_(dim, index, src)


def _put_slot(ring: torch.Tensor, slot: torch.Tensor, value: torch.Tensor) -> None:
    """Write a row value (B, W, C) into the unpadded columns 1..W of slot ``slot`` (1,)."""
    w = value.shape[1]
    _index_write(ring[:, 1 : w + 1], 2, slot, value.unsqueeze(2))


def _slot(ring: torch.Tensor, slot: torch.Tensor, width: int) -> torch.Tensor:
    """The unpadded row (columns 1..width) of slot ``slot`` (1,): (B, width, C), a copy."""
    return ring[:, 1 : width + 1].index_select(2, slot)[:, :, 0]


class _LevelCache:
    """The caches of one resolution level (level l: H_l x W_l, F filters, R blocks, n_l
    down-pass blocks).

    The u stream, whole rows (rings hold concat_elu'd values unless named raw):
    u_up[k], k = 0..R      (B, W+2, 2, 2F)  up-pass u nodes (k = 0: level input)
    u_up_c1[k], k < R      (B, W+2, 2, 2F)  hidden layer of up u block k
    u_dn[d], d = 0..n_l    (B, W+2, 2, 2F)  down-pass u nodes (d = 0: level input)
    u_dn_c1[d], d < n_l    (B, W+2, 2, 2F)
    u_last_raw  (B, W+2, 2, F)  last up node, raw: stride-2 conv input
    u_out_raw   (B, W, F)  last down u node of the latest row: transposed-conv input

    The ul stream, one position per step (see _UlPlan for the nodes):
    stage       (B, nodes, 2, 2F)  every node at the current and the previous column
    record      (B, nodes, W+1, 2F)  every node's latest value per column (column j at
                j + 1; column 0 is the zero padding): the row above, at a row start
    bases       (B, W, P)  per column, every ul conv's bias plus row-above part (and u aux),
                computed at the row start; P = _UlPlan.width
    base        (B, P)  the current column's bases, gathered at every step (its products sum
                into it)
    ul_out_raw  (B, W, F)  last down ul node, latest value of each column: transposed-conv
                input
    """

    def __init__(
        self,
        batch: int,
        width: int,
        filters: int,
        r: int,
        n_dn: int,
        plan: _UlPlan,
        like: torch.Tensor,
    ) -> None:
        f2 = 2 * filters
        wu = width + 2  # u: padded left and right
        self.width = width
        self.u_up = [_new_ring(batch, wu, f2, like) for _ in range(r + 1)]
        self.u_up_c1 = [_new_ring(batch, wu, f2, like) for _ in range(r)]
        self.u_dn = [_new_ring(batch, wu, f2, like) for _ in range(n_dn + 1)]
        self.u_dn_c1 = [_new_ring(batch, wu, f2, like) for _ in range(n_dn)]
        self.u_last_raw = _new_ring(batch, wu, filters, like)
        self.u_out_raw = like.new_zeros(batch, width, filters)
        self.stage = like.new_zeros(batch, plan.nodes, 2, f2)
        # Stored node by node, so that one node's record is one matrix (B*(W+1), 2F).
        self.record = like.new_zeros(plan.nodes, batch, width + 1, f2).transpose(0, 1)
        self.bases = like.new_zeros(batch, width, plan.width)
        self.base = like.new_zeros(batch, plan.width)
        self.ul_out_raw = like.new_zeros(batch, width, filters)


@dataclass(frozen=True)
class _UlBlock:
    """One ul gated block of a level: its nodes (indices into the level's stage and
    record), where its bases sit in the level's ``base``, and its weights."""

    inp: int  # input node (concat_elu'd)
    c1: int  # hidden node
    out: int | None  # output node (concat_elu'd), None when nothing reads it
    raw: int | None  # the raw output pair, when the next level's stride-2 conv reads it
    skip: int | None  # the skip node (down pass)
    hidden: slice  # (2F) in base
    gate: slice  # (4F) in base
    w: GatedPixelStep


@dataclass(frozen=True)
class _UlPlan:
    """The ul stream's nodes at one level, in stage order: the level input, then per up
    block its hidden and output nodes, the raw last up node (below the coarsest level),
    the down pass's input (below the coarsest level; there it is the last up node), then
    per down block its hidden node and its output (all but the last block)."""

    nodes: int
    width: int  # values per column in the bases
    inp: slice  # (2F) the level input's base in ``base``
    up: tuple[_UlBlock, ...]
    down: tuple[_UlBlock, ...]
    raw: int | None
    dn_in: int

    @staticmethod
    def of(up: list[GatedStep], down: list[GatedStep], top: bool, filters: int) -> _UlPlan:
        f2 = 2 * filters
        count = [1, f2]  # nodes so far, base width so far (the input's base first)

        def node() -> int:
            count[0] += 1
            return count[0] - 1

        def block(sw: GatedStep, inp: int, skip: int | None, has_out: bool) -> _UlBlock:
            # The integer path's bases are unpaired (see ExactPixelStep): half the width.
            h = filters if sw.first is not None else f2
            at = count[1]
            count[1] += 3 * h
            c1 = node()
            out = node() if has_out else None
            hidden, gate = slice(at, at + h), slice(at + h, at + 3 * h)
            return _UlBlock(inp, c1, out, None, skip, hidden, gate, GatedPixelStep.of(sw))

        ups, outs = [], [0]  # outs[k]: the node of up-pass output k (0: the level input)
        for sw in up:
            ups.append(block(sw, outs[-1], None, True))
            outs.append(ups[-1].out)
        raw = None if top else node()
        if raw is not None and ups:  # else _ul_up copies the level input there
            ups[-1] = dataclasses.replace(ups[-1], raw=raw)
        dn_in = outs[-1] if top else node()
        downs, inp = [], dn_in
        n = len(down)
        for d, sw in enumerate(down):
            downs.append(block(sw, inp, outs[n - 1 - d], d + 1 < n))
            inp = downs[-1].out
        return _UlPlan(count[0], count[1], slice(0, f2), tuple(ups), tuple(downs), raw, dn_in)


@dataclass(frozen=True)
class _LevelIndex:
    """Views of the step index for one level l at step (y, x); p = y >> l, q = x >> l,
    s = p % 2 (the ring slot of row p)."""

    col: torch.Tensor  # (1,) q: the bases of column q, ul_out_raw's column
    rec: torch.Tensor  # (1,) q + 1: column q in the record
    tap: torch.Tensor  # (1,) the down-right transposed-conv tap: 2 (p % 2) + q % 2
    up: torch.Tensor  # (1,) column q // 2 of level l+1 (its ul_out_raw)
    order: torch.Tensor  # (2,) row start: the slots of rows p-1, p
    slot: torch.Tensor  # (1,) row start: s

    SIZE = 7

    @staticmethod
    def values(p: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, ...]:
        """The entries for positions p, q (int64 arrays of one shape), in field order."""
        s = p & 1
        return (q, q + 1, 2 * s + (q & 1), q >> 1, 1 - s, s, s)

    @staticmethod
    def of(index: torch.Tensor) -> _LevelIndex:
        return _LevelIndex(index[0:1], index[1:2], index[2:3], index[3:4], index[4:6], index[6:7])


@dataclass(frozen=True)
class _ImageIndex:
    """Views of the step index for the image at step (y, x)."""

    left: torch.Tensor  # (1,) min(x, 1): whether there is a pixel left of x
    pos: torch.Tensor  # (1,) flat canvas position of the pixel before (y, x) in raster order
    row: torch.Tensor  # (1,) row start: y - 1, the image row that enters the ring
    order: torch.Tensor  # (2,) row start: the slots of rows y-2, y-1
    slot: torch.Tensor  # (1,) row start: the slot of row y-1

    SIZE = 6

    @staticmethod
    def values(y: np.ndarray, x: np.ndarray, width: int) -> tuple[np.ndarray, ...]:
        """The entries for positions y, x (int64 arrays of one shape), in field order."""
        sp = (y - 1) & 1
        return (
            np.minimum(x, 1),
            np.maximum(y * width + x - 1, 0),
            np.maximum(y - 1, 0),
            *(1 - sp, sp),
            sp,
        )

    @staticmethod
    def of(index: torch.Tensor) -> _ImageIndex:
        return _ImageIndex(index[0:1], index[1:2], index[2:3], index[3:5], index[5:6])


def _index_table(height: int, width: int) -> np.ndarray:
    """(height * width, L) int64: the step index of every raster position."""
    y, x = (a.ravel().astype(np.int64) for a in np.mgrid[:height, :width])
    cols = [v for lv in range(NUM_LEVELS) for v in _LevelIndex.values(y >> lv, x >> lv)]
    cols += _ImageIndex.values(y, x, width)
    return np.ascontiguousarray(np.stack(cols, axis=1))


def _levels_at(y: int, x: int) -> int:
    """How many levels compute their ul node at step (y, x): level l does where y and x
    are multiples of 2^l."""
    n = 1
    while n < NUM_LEVELS and not (y % (1 << n) or x % (1 << n)):
        n += 1
    return n


def _pairs(cells: torch.Tensor, count: int, stride: int) -> torch.Tensor:
    """cells (B, Wp, K), consecutive columns contiguous -> (B * count, 2K): for output j,
    the cells of columns j * stride and j * stride + 1, side by side (a copy)."""
    b, _, k = cells.shape
    assert cells.stride(2) == 1 and cells.stride(1) == k
    windows = cells.as_strided((b, count, 2 * k), (cells.stride(0), stride * k, 1))
    return windows.reshape(b * count, 2 * k)


class PixelCNNppStepper(Stepper):
    """Raster-order stepper with per-layer caches (Fast PixelCNN++): a step costs about one
    pixel's worth of network, plus one row's worth of the u stream at the start of a row.

    Schedule and causality. Write (p, q) for positions at level l (p = y >> l, q = x >> l).
    From the kernels (every conv has height 2: the row above and the current row):
      - u(p, .) at any level depends only on image rows < 2^l p, and on the u nodes of rows
        p-1, p of the same level; so at level l the whole row p of every u node (up and down
        pass) is computable at step (2^l p, 0), when image row 2^l p - 1 is complete. It is
        computed there, once per row: the stride-2 conv of level l reads rows 2p-1, 2p of
        level l-1, computed at steps (2^l p - 2^(l-1), 0) and (2^l p, 0); the transposed
        conv into row p reads row p // 2 of level l+1, computed at step (2^(l+1) (p//2), 0),
        not later than (2^l p, 0).
      - ul(p, q) at level l depends on image pixels before (2^l p, 2^l q) in raster order, on
        ul nodes at (p-1, q-1..q) and (p, q-1..q), on u at (p, q), and through the stride-2
        conv on level l-1 at rows 2p-1..2p, columns 2q-1..2q, the latest of which, (2p, 2q),
        is computed at the same step. So ul(p, q) is computed at step (2^l p, 2^l q): at
        every step for level 0, when y and x are even for level 1, when both are multiples
        of 4 for level 2. The transposed conv into (p, q) reads level l+1 at (p//2, q//2),
        computed at step (2^(l+1) (p//2), 2^(l+1) (q//2)), not later than (2^l p, 2^l q).
      - The parameters at (y, x) are read from the level-0 ul stream at (y, x).
    Within a step: the up pass bottom-up (levels 0, 1, 2), then the down pass top-down.

    Caches. Every u conv sees only the current and the previous row of its level, so each u
    node has a two-row ring (row r in slot r % 2); the transposed convs read a one-row
    buffer. The ul stream splits every conv into its row-above part and its current-row
    part. The row-above part (with the bias and the u aux input, both known for the whole
    row) is computed for the whole row at the row start, from the ``record`` of the row
    above, into ``bases``; a step gathers its column's bases in one op. The current-row
    part reads the node's values at columns q-1 and q, which a step finds in ``stage`` at
    fixed places: column q in half q % 2, column q-1 in the other (zero at a row start),
    so the kernels address them without an index, and one op per level copies the stage
    into the record. The transposed convs read the latest value per column. Dropout is
    off: the stepper computes the eval-mode function. Effective (weight-normalised)
    weights are computed once here: rebuild the stepper after changing the weights.

    Positions reach the kernels only through ``index`` (which cells, slots and taps to read
    and write), filled before every step, and through the parity of q at the coarsest
    level that computes. So the work of a step depends on the position only through a
    small key: for a pixel, how many levels compute and that parity (6 keys); for a row
    start (y >= 2), how many levels start a row (3 keys). The runner replays those (as CUDA
    graphs on CUDA).
    """

    def __init__(self, model: PixelCNNpp, batch: int, height: int, width: int) -> None:
        super().__init__(model, batch, height, width)
        if batch < 1 or height < 1 or width < 1:
            raise UnsupportedImageError(f"empty stepper: batch {batch}, {height}x{width}")
        cfg = model.config
        self.batch, self.height, self.width = batch, height, width
        f = self.filters = cfg.nr_filters
        self.sizes = level_sizes(height, width)
        self.ar = ar = model.arithmetic(self.canvas.device)
        like = torch.zeros((), dtype=ar.dtype, device=self.canvas.device)
        c = model.channels
        with torch.no_grad():
            self.w_u_init = model.u_init.step_weights()
            self.w_ul_top = model.ul_init_top.step_weights().paired()
            self.w_up_u = [[m.step_weights() for m in lv] for lv in model.up_u]
            self.w_down_u = [m.step_weights() for m in model.down_u]
            self.w_dn_u = [[m.step_weights() for m in lv] for lv in model.dn_u]
            self.w_deconv_u = [m.step_weights() for m in model.deconv_u]
            self.w_deconv_ul = [m.step_weights().paired() for m in model.deconv_ul]
            self.w_out = model.out.step_weights()
            # The ul stream keeps values as pairs [x, -x] (see GatedStep): its input convs
            # and transposed convs give pairs.
            self.plans = [
                _UlPlan.of(
                    [m.step_weights() for m in model.up_ul[lv]],
                    [m.step_weights() for m in model.dn_ul[lv]],
                    lv == NUM_LEVELS - 1,
                    f,
                )
                for lv in range(NUM_LEVELS)
            ]
            # The stride-2 convs into levels 1, 2 read the raw pairs of the level below
            # (only the x half: zero rows for -x); at those steps the level below is at
            # an even column: its current cell comes first in the stage (parity 0).
            self.w_down_ul = []
            for m in model.down_ul:
                sw = m.step_weights().paired()
                above, cur = sw.split_rows(2 * f)
                self.w_down_ul.append((sw.bias, above, cur[0], sw.post))
            # The 2x1 conv of the image at level 0: the pixel left of x in the row above
            # (per row) and in the current row (per pixel; zero weights at x = 0).
            left = model.ul_init_left.step_weights().paired()
            pair = left.mat.shape[1]
            above, cur = left.mat.view(2, c + 1, pair)  # rows y-1, y at column x-1
            self.w_left_above = above.contiguous()
            self.w_left_cur = torch.stack([torch.zeros_like(cur), cur]).contiguous()
            # The 2x1 conv's bias from column 1 on (column 0 has no left pixel).
            self.left_bias = left.bias.expand(width, -1).clone()
            self.left_bias[0] = 0.0
        self.levels = [
            _LevelCache(batch, w, f, cfg.nr_resnet, model.down_blocks(lv), self.plans[lv], like)
            for lv, (_, w) in enumerate(self.sizes)
        ]
        # The coarsest level's u down pass starts from its last up node: share the ring.
        top = self.levels[-1]
        top.u_dn[0] = top.u_up[-1]
        # Image ring (B, W+2, 2, C+1): scaled pixels plus the constant ones channel, padded
        # row. Slot 0 (row 0) has its constant channel from the start; slot 1 is the zero
        # padding above row 0 until row 1 arrives (see _image_rows).
        self.x_ring = _new_ring(batch, width + 2, c + 1, like)
        self.x_ring[:, 1 : width + 1, 0, c] = ar.one
        # The pixel left of the current one, scaled, with the constant channel.
        self.pix_in = like.new_full((batch, c + 1), ar.one)
        self.out = like.new_zeros(batch, model.distribution.num_params)
        self.params_buffer = self.out
        # The index: one row of ``index_table`` per raster position, copied into ``index``
        # (which the step's kernels read) before every step.
        cuda = like.device.type == "cuda"
        self.index_table = torch.from_numpy(_index_table(height, width)).to(like.device)
        self.index = self.index_table[0].clone()
        n = _LevelIndex.SIZE
        self.lv_ix = [_LevelIndex.of(self.index[lv * n : (lv + 1) * n]) for lv in range(NUM_LEVELS)]
        self.img_ix = _ImageIndex.of(self.index[NUM_LEVELS * n :])
        # The slots of rows 2p-1, 2p of the level below, for the stride-2 row convs.
        self.bottom_up = torch.tensor([1, 0], device=like.device)
        # The values written last (see write), from the host through a pinned buffer.
        self.values_host = torch.zeros(batch, c, dtype=torch.uint8, pin_memory=cuda)
        self.values = torch.zeros(batch, c, dtype=torch.uint8, device=like.device)
        self._values_copied = torch.cuda.Event() if cuda else None
        self._stream = torch.cuda.current_stream(like.device) if cuda else None
        self._next = 0  # raster index of the next position params_at accepts

    # -- the step ----------------------------------------------------------------------

    @torch.no_grad()
    def params_at(self, y: int, x: int) -> torch.Tensor:
        """(B, P) float32 parameters at (y, x). Positions must come in raster order. The
        returned tensor is the stepper's own buffer (``params_buffer``), overwritten by the
        next step."""
        if y * self.width + x != self._next or not (0 <= x < self.width and y < self.height):
            raise RuntimeError(
                f"PixelCNN++ stepper: params_at({y}, {x}) out of raster order "
                f"(expected index {self._next})"
            )
        self.index.copy_(self.index_table[self._next])
        self._next += 1
        if x == 0:
            self._row_start(y)
        n = _levels_at(y, x)
        parity = (x >> (n - 1)) & 1  # of q at level n-1 (the finer levels: 0)
        return self.runner(("pixel", n, parity), lambda: self._pixel_step(n, parity))

    @torch.no_grad()
    def write(self, y: int, x: int, values: torch.Tensor) -> None:
        """values: (B, C) integer in [0, 255], for the position of the latest params_at.
        They reach the canvas in the next step's kernels (which read them first), so the
        canvas holds every value written before the latest params_at; from the host they
        go through a pinned buffer, without a device sync."""
        if values.device == self.values.device:
            self.values.copy_(values)
            return
        if self._values_copied is not None:
            self._values_copied.synchronize()  # the buffer's last copy has been read
        self.values_host.copy_(values)
        self.values.copy_(self.values_host, non_blocking=True)
        if self._values_copied is not None:
            self._values_copied.record(self._stream)

    def _store_last(self) -> None:
        """The values written last into the canvas, at the position before this step (at
        the first step: zeros over the canvas's zeros)."""
        b, c = self.values.shape
        _index_write(self.canvas.view(b, c, -1), 2, self.img_ix.pos, self.values.view(b, c, 1))

    def _pixel_step(self, n: int, parity: int) -> torch.Tensor:
        """The ul stream at one position where ``n`` levels compute, the coarsest of them
        at a column of ``parity``. Writes and returns ``out``. The ul values here are pairs
        [x, -x], (B, 2F)."""
        self._store_last()
        par = [parity if lv == n - 1 else 0 for lv in range(n)]
        for lv in range(n):
            cache = self.levels[lv]
            torch.index_select(
                cache.bases, 1, self.lv_ix[lv].col, out=cache.base.view(self.batch, 1, -1)
            )
        ul = self._ul_up(0, self._ul_level0(), par[0])
        for lv in range(1, n):
            ul_lv = self._ul_up(lv, self._ul_downsample(lv), par[lv])
            if lv == NUM_LEVELS - 1:
                self._ul_down(lv, ul_lv, par[lv])
        # Down pass at the finer levels, coarse to fine, where this step computes them.
        for lv in reversed(range(min(n, NUM_LEVELS - 1))):
            ix = self.lv_ix[lv]
            above = self.levels[lv + 1].ul_out_raw.index_select(1, ix.up)
            sw = self.w_deconv_ul[lv]
            above = above.view(self.batch, self.filters)
            ul = self.model.deconv_ul[lv].step_pixel(sw, above, ix.tap)
            ul = self._ul_down(lv, self.ar.fin(ul, sw.post), par[lv])
        for lv in range(n):
            cache = self.levels[lv]
            current = cache.stage[:, :, par[lv]].unsqueeze(2)  # (B, nodes, 1, 2F)
            _index_write(cache.record, 2, self.lv_ix[lv].rec, current)
        f = self.filters
        Nin.step(self.w_out, self.ar.elu(ul[:, :f]), out=self.out)
        return self.ar.fin(self.out, self.w_out.post)

    # -- u stream: whole rows, and the ul stream's bases --------------------------------

    def _row_start(self, y: int) -> None:
        """Compute row y >> l of every u node, and the ul bases, at every level l where it
        starts now. Rows 0 and 1 hold special cases (zero input; the ring's padding row
        becoming an image row) and run as they are; later rows go through the runner."""
        n = _levels_at(y, 0)
        if y < 2:
            self._row_work(n, y)
        else:
            self.runner(("row", n), lambda: self._row_work(n, None))

    def _row_work(self, n: int, first_rows: int | None) -> torch.Tensor:
        """The row start where levels 0..n-1 start a row; ``first_rows``: y if y < 2."""
        self._store_last()
        last = [self._u_up(0, self._image_rows(first_rows))]
        for lv in range(1, n):
            below = self.levels[lv - 1].u_last_raw  # rows 2p-1, 2p: bottom-up in the ring
            sw = self.w_down_u[lv - 1]
            u = self.ar.fin(ShiftedConv2d.step_row(sw, below, self.bottom_up), sw.post)
            last.append(self._u_up(lv, u))
        for lv in reversed(range(n)):
            if lv == NUM_LEVELS - 1:
                u = last[lv]
            else:
                slot, width = self.lv_ix[lv].slot, self.sizes[lv][1]
                src, sw = self.levels[lv + 1].u_out_raw, self.w_deconv_u[lv]
                u = self.model.deconv_u[lv].step_row(sw, src, slot, width)
                u = self.ar.fin(u, sw.post)
                self._put_row(self.levels[lv].u_dn[0], slot, u)
            self._u_down(lv, u)
        for lv in range(n):
            self._ul_bases(lv)
        return self.levels[0].bases

    def _u_up(self, lv: int, u: torch.Tensor) -> torch.Tensor:
        """Up-pass u rows at level lv from the level's input row u (B*W, F) raw; returns
        the last node's raw row (B*W, F)."""
        cache, ix = self.levels[lv], self.lv_ix[lv]
        self._put_row(cache.u_up[0], ix.slot, u)
        for k, sw in enumerate(self.w_up_u[lv]):
            u = self._gated_row(sw, u, cache.u_up[k], cache.u_up_c1[k], lv, [])
            self._put_row(cache.u_up[k + 1], ix.slot, u)
        if lv < NUM_LEVELS - 1:
            _put_slot(cache.u_last_raw, ix.slot, u.view(self.batch, -1, self.filters))
        return u

    def _u_down(self, lv: int, u: torch.Tensor) -> None:
        """Down-pass u rows at level lv from the level's input row u (B*W, F) raw."""
        cache, ix = self.levels[lv], self.lv_ix[lv]
        n = len(self.w_dn_u[lv])
        for d, sw in enumerate(self.w_dn_u[lv]):
            skip = _slot(cache.u_up[n - 1 - d], ix.slot, cache.width)
            u = self._gated_row(
                sw, u, cache.u_dn[d], cache.u_dn_c1[d], lv, [skip.reshape(-1, 2 * self.filters)]
            )
            self._put_row(cache.u_dn[d + 1], ix.slot, u)
        if lv > 0:
            cache.u_out_raw.copy_(u.view(self.batch, cache.width, self.filters))

    def _image_rows(self, first_rows: int | None) -> torch.Tensor:
        """Level-0 inputs at the start of row y: the image row y - 1 enters the image ring;
        returns u[0] row y (B*W, F) and sets the level-0 ul input's bases of row y (the
        1x3 conv of the row above, the row-above part of the 2x1 conv and its bias).
        ``first_rows``: y when y < 2 (special cases), else None."""
        c, ix, b, w = self.model.channels, self.img_ix, self.batch, self.width
        cache = self.levels[0]
        inp = cache.bases[:, :, self.plans[0].inp]  # (B, W, 2F)
        if first_rows == 0:  # both are down-shifted: zeros (not biases) in row 0
            u = cache.u_out_raw.new_zeros(b * w, self.filters)  # not a pair
            inp.copy_(self.left_bias.expand_as(inp))
        else:
            row = self.canvas.index_select(2, ix.row)[:, :, 0, :]  # (B, C, W)
            _put_slot(self.x_ring[..., :c], ix.slot, self.ar.pixels(row).permute(0, 2, 1))
            u = ShiftedConv2d.step_row(self.w_u_init, self.x_ring, ix.order)
            u = self.ar.fin(u, self.w_u_init.post)
            one_row = self.x_ring.index_select(2, ix.slot)
            top = ShiftedConv2d.step_row(self.w_ul_top, one_row, None)
            torch.add(top.view(b, w, -1), self.left_bias, out=inp)
            # The 2x1 conv's row-above part: row y-1 at padded column x (pixel x-1).
            left = one_row[:, :w, 0].reshape(b * w, c + 1)
            inp.view(b * w, -1).addmm_(left, self.w_left_above)
        if first_rows == 1:
            # Slot 1 stood for the zero padding above row 0 until now; from here on it
            # holds image rows, whose constant channel is one.
            self.x_ring[:, 1 : self.width + 1, 1, c] = self.ar.one
        return u

    def _ul_bases(self, lv: int) -> None:
        """Row p of level lv's ul bases, from the record of row p-1 (and, for the stride-2
        conv into the level, of row 2p-1 of the level below) and the u rows of row p; and
        the stage's previous column set to the zero padding left of column 0."""
        cache, plan, ix = self.levels[lv], self.plans[lv], self.lv_ix[lv]
        b, w = self.batch, cache.width
        if self.ar.integer:
            self._ul_bases_exact(lv)
            return

        def base(at: slice) -> torch.Tensor:  # (B*W, n) view into the bases
            return cache.bases[:, :, at].view(b * w, -1)

        def above(rec: torch.Tensor, node: int, stride: int = 1) -> torch.Tensor:
            return _pairs(rec[:, node], w, stride)

        if lv > 0:
            bias, w_above, _, _ = self.w_down_ul[lv - 1]
            below = self.levels[lv - 1].record
            torch.addmm(bias, above(below, self.plans[lv - 1].raw, 2), w_above, out=base(plan.inp))
        u_nodes = [(blk, cache.u_up[k + 1]) for k, blk in enumerate(plan.up)]
        u_nodes += [(blk, cache.u_dn[d + 1]) for d, blk in enumerate(plan.down)]
        for blk, u_ring in u_nodes:
            sw = blk.w
            hidden = base(blk.hidden)
            torch.addmm(sw.hidden_bias, above(cache.record, blk.inp), sw.hidden_above, out=hidden)
            u = _slot(u_ring, ix.slot, w).reshape(b * w, -1)
            hidden.addmm_(u, sw.u_aux)
            gate = base(blk.gate)
            torch.addmm(sw.gate_bias, above(cache.record, blk.c1), sw.gate_above, out=gate)
        cache.stage[:, :, 1].zero_()

    def _ul_bases_exact(self, lv: int) -> None:
        """_ul_bases on the integer path: the blocks' bases unpaired (see ExactPixelStep),
        each row-above part one product over a node's whole record (ShiftedConv2d's ring
        product, the record's columns as one-slot cells)."""
        cache, plan, ix = self.levels[lv], self.plans[lv], self.lv_ix[lv]
        b, w = self.batch, cache.width
        bases = cache.bases
        if lv > 0:
            bias, w_above, _, _ = self.w_down_ul[lv - 1]
            below = self.levels[lv - 1].record
            out = bases[:, :, plan.inp].view(b * w, -1)
            torch.addmm(bias, _pairs(below[:, self.plans[lv - 1].raw], w, 2), w_above, out=out)
        u_nodes = [(blk, cache.u_up[k + 1]) for k, blk in enumerate(plan.up)]
        u_nodes += [(blk, cache.u_dn[d + 1]) for d, blk in enumerate(plan.down)]
        for blk, u_ring in u_nodes:
            ex = blk.w.exact
            rec = cache.record[:, blk.inp].unsqueeze(2)  # (B, W+1, 1, 2F)
            h = ShiftedConv2d._ring_row(ex.above_first, rec, None, out=bases[:, :, blk.hidden])
            h.addmm_(_slot(u_ring, ix.slot, w).reshape(b * w, -1), ex.u_aux)
            rec = cache.record[:, blk.c1].unsqueeze(2)
            ShiftedConv2d._ring_row(ex.above_gate, rec, None, out=bases[:, :, blk.gate])
        cache.stage[:, :, 1].zero_()

    def _put_row(self, ring: torch.Tensor, slot: torch.Tensor, u: torch.Tensor) -> None:
        """concat_elu of a raw row u (B*W, F) into slot ``slot`` of a ring."""
        x = u.view(self.batch, -1, self.filters)
        view = self._slot_view(ring, slot, x.shape[1])
        if view is not None:
            self.ar.concat_elu_into(x, view, dim=-1)
            return
        _put_slot(ring, slot, self.ar.concat_elu(x, dim=-1))

    def _slot_view(self, ring: torch.Tensor, slot: torch.Tensor, width: int):
        """On the integer path on CPU, where steps are plain calls (no graph replays that
        must find positions in tensors), slot ``slot``'s unpadded columns (B, width, C) as
        a view to write into, saving a copy; None elsewhere."""
        if not self.ar.integer or ring.is_cuda:
            return None
        return ring[:, 1 : width + 1, int(slot)]

    def _gated_row(
        self,
        sw: GatedStep,
        u: torch.Tensor,
        ring_in: torch.Tensor,
        ring_c1: torch.Tensor,
        lv: int,
        aux: list[torch.Tensor],
    ) -> torch.Tensor:
        """One gated block over the current row of level lv: u (B*W, F) raw input, its
        concat_elu in ring_in; the hidden layer goes to ring_c1. Returns the raw output row
        (B*W, F)."""
        ix = self.lv_ix[lv]
        width = self.levels[lv].width
        view = self._slot_view(ring_c1, ix.slot, width)
        c1 = GatedResnet.step_hidden_row(self.ar, sw, ring_in, aux, ix.order, out=view)
        if view is None:
            _put_slot(ring_c1, ix.slot, c1.view(self.batch, width, -1))
        return GatedResnet.step_out_row(self.ar, sw, u, ring_c1, ix.order)

    # -- ul stream: one position per level ---------------------------------------------

    def _ul_level0(self) -> torch.Tensor:
        """The level-0 ul input at the current position: (B, 2F) raw pair."""
        c = self.model.channels
        self.pix_in[:, :c] = self.ar.pixels(self.values)  # the pixel left of x
        w = self.w_left_cur.index_select(0, self.img_ix.left)[0]  # zero at x = 0
        acc = self.levels[0].base[:, self.plans[0].inp].addmm_(self.pix_in, w)
        return self.ar.fin(acc, self.w_ul_top.post)  # the top and left convs share it

    def _ul_downsample(self, lv: int) -> torch.Tensor:
        """The stride-2 conv into level lv at the current position: (B, 2F) raw pair."""
        below = self.levels[lv - 1].stage[:, self.plans[lv - 1].raw]
        base = self.levels[lv].base[:, self.plans[lv].inp]
        _, _, cur, post = self.w_down_ul[lv - 1]
        return self.ar.fin(base.addmm_(below.reshape(self.batch, -1), cur), post)

    def _ul_up(self, lv: int, ul: torch.Tensor, parity: int) -> torch.Tensor:
        """Up-pass ul blocks at level lv, current position, from the level's input ul
        (B, 2F) raw pair; returns the last up node, raw."""
        stage = self.levels[lv].stage
        self.ar.elu(ul, out=stage[:, 0, parity])
        plan = self.plans[lv]
        for blk in plan.up:
            ul = self._gated_pixel(lv, blk, ul, parity)
        if plan.raw is not None and not plan.up:
            stage[:, plan.raw, parity].copy_(ul)
        return ul

    def _ul_down(self, lv: int, ul: torch.Tensor, parity: int) -> torch.Tensor:
        """Down-pass ul blocks at level lv, current position, from the level's input ul
        (B, 2F) raw pair; returns the last node (B, 2F) and keeps it for the finer level."""
        cache, plan, f = self.levels[lv], self.plans[lv], self.filters
        if lv < NUM_LEVELS - 1:
            self.ar.elu(ul, out=cache.stage[:, plan.dn_in, parity])
        for blk in plan.down:
            ul = self._gated_pixel(lv, blk, ul, parity)
        if lv > 0:
            col = self.lv_ix[lv].col
            _index_write(cache.ul_out_raw, 1, col, ul[:, :f].view(self.batch, 1, f))
        return ul

    def _gated_pixel(self, lv: int, blk: _UlBlock, ul: torch.Tensor, parity: int) -> torch.Tensor:
        """One gated block at the current position: ul (B, 2F) raw input pair, its
        concat_elu already in the stage. Returns the raw output pair; its concat_elu (and
        the raw pair, where the next level reads it) go to the stage."""
        cache, b = self.levels[lv], self.batch
        stage, base = cache.stage, cache.base
        skip = stage[:, blk.skip, parity] if blk.skip is not None else None
        c1 = stage[:, blk.c1, parity]
        pair_in = stage[:, blk.inp].reshape(b, -1)
        ar = self.ar
        GatedResnet.pixel_hidden(ar, blk.w, base[:, blk.hidden], pair_in, parity, skip, c1)
        raw = stage[:, blk.raw, parity] if blk.raw is not None else None
        pair_c1 = stage[:, blk.c1].reshape(b, -1)
        ul = GatedResnet.pixel_out(ar, blk.w, ul, base[:, blk.gate], pair_c1, parity, out=raw)
        if blk.out is not None:
            ar.elu(ul, out=stage[:, blk.out, parity])
        return ul
