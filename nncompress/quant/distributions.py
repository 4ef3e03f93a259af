"""Integer coding tables: the discretized logistic mixture and the 256-way softmax in fixed
point (FORMAT.md, "The integer arithmetic").

A table is (N, 256) int64 ``g`` with every g_j >= 0 and sum_j g_j = FREQ_TOTAL - 256; the
coder's frequency of symbol j is g_j + 1 (so every symbol has one, and they sum to
FREQ_TOTAL = 2^24). All arithmetic here is exact on every device: int64, or (the logistic
mixture's bulk) integer-valued float64 kept below 2^53, each such step's bound stated where
it is done; the transcendental functions are the model file's tables, indexed with a
clamped argument.

Parameter formats (fractional bits), as the integer models' output layers produce them:
  - mixture logits and categorical logits: LOGIT_FRAC;
  - means in pixel units (v - 127.5): MEAN_FRAC; clamped to +-MEAN_MAX after coupling;
  - log-scales in pixel units (ln(127.5) + the float model's log-scale): LOG_SCALE_FRAC,
    clamped to [LOG_SCALE_LO, LOG_SCALE_HI]; the inverse scale is INV[log-scale] with
    INV_FRAC bits;
  - raw coupling coefficients: COEF_IN_FRAC bits, tanh'd by TANH (COEF_FRAC bits).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..distributions.base import NUM_SYMBOLS, Distribution
from . import kernels
from .fixed import SIG_FRAC, SIG_MAX

FREQ_BITS = 24
FREQ_TOTAL = 2**FREQ_BITS
#: What the g_j sum to: every symbol's implicit +1 takes the rest of FREQ_TOTAL.
G_TOTAL = FREQ_TOTAL - NUM_SYMBOLS

LOGIT_FRAC = 10
MEAN_FRAC = 8
MEAN_MAX = 512 * 2**MEAN_FRAC
LOG_SCALE_FRAC = 10
#: The float model's log-scale floor (-7 on the [-1, 1] scale) in pixel units.
LOG_SCALE_LO = round((-7.0 + math.log(127.5)) * 2**LOG_SCALE_FRAC)
LOG_SCALE_HI = 8 * 2**LOG_SCALE_FRAC
INV_FRAC = 24
COEF_IN_FRAC = 12
COEF_MAX = 6 * 2**COEF_IN_FRAC
COEF_FRAC = 15
#: The logistic's argument at the bin edges: ACT_FRAC-like 12 bits (the sigmoid table's).
Z_FRAC = 12
_Z_SHIFT = MEAN_FRAC + INV_FRAC - Z_FRAC
#: Posterior log-weights: LOGIT_FRAC bits; EXP covers differences 0..EXP_MAX.
EXP_MAX = 16 * 2**LOGIT_FRAC
EXP_FRAC = 16
#: ln of a component's bin mass b / 2^SIG_FRAC, b in 0..2^SIG_FRAC (b = 0 as if 1/2).
LOG_TABLE_SIZE = 2**SIG_FRAC + 1


def _rint(v: np.ndarray) -> np.ndarray:
    return np.rint(v).astype(np.int64)


def build_tables() -> dict[str, np.ndarray]:
    """The mixture's and the softmax's tables (stored in integer model files), int32."""
    ls = np.arange(LOG_SCALE_LO, LOG_SCALE_HI + 1, dtype=np.float64) / 2**LOG_SCALE_FRAC
    coef = np.arange(-COEF_MAX, COEF_MAX + 1, dtype=np.float64) / 2**COEF_IN_FRAC
    d = np.arange(0, EXP_MAX + 1, dtype=np.float64) / 2**LOGIT_FRAC
    b = np.maximum(np.arange(LOG_TABLE_SIZE, dtype=np.float64), 0.5) / 2**SIG_FRAC
    out = {
        "inv_scale": _rint(np.exp(-ls) * 2**INV_FRAC),
        "tanh": _rint(np.tanh(coef) * 2**COEF_FRAC),
        "exp": _rint(np.exp(-d) * 2**EXP_FRAC),
        "log": _rint(np.log(b) * 2**LOGIT_FRAC),
    }
    return {k: v.astype(np.int32) for k, v in out.items()}


def _take(table: torch.Tensor, x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    return table.take(x.clamp(lo, hi) - lo)


def _round_shift(v: torch.Tensor, k: int) -> torch.Tensor:
    """floor((v + 2^(k-1)) / 2^k): round half up, int64."""
    return (v + (1 << (k - 1))) >> k


def frequencies(weights: torch.Tensor, pmfs: torch.Tensor | None = None) -> torch.Tensor:
    """weights (N, M) int64 >= 0 with a positive sum per row; pmfs (N, M, 256) int64 with
    rows summing to 2^SIG_FRAC, or None for the softmax (weights are the table itself).
    Returns g (N, 256): floor(mix_j * G_TOTAL / sum mix), the remainder added to the first
    largest mix_j."""
    if pmfs is None:
        mix = weights
        total = weights.sum(1, keepdim=True)
    else:
        mix = (weights.unsqueeze(2) * pmfs).sum(1)
        total = weights.sum(1, keepdim=True) << SIG_FRAC
    g = torch.div(mix * G_TOTAL, total, rounding_mode="floor")
    rem = G_TOTAL - g.sum(1, keepdim=True)
    # Not scatter_add_: CUDA's deterministic mode has no plain kernel for it.
    first_max = mix.argmax(1, keepdim=True)
    symbols = torch.arange(mix.shape[1], device=mix.device)
    return g + (symbols == first_max) * rem


def mixture_frequencies(
    weights: torch.Tensor,
    cdfs: torch.Tensor,
    symbols: torch.Tensor | None = None,
    *,
    cuda: bool | None = None,
) -> torch.Tensor:
    """``frequencies(weights, pmfs)`` for integer-valued float64 weights (N, M) and the
    components' CDFs (N, M, 257) float64 (the pmfs are their differences along the last
    axis): the same integers, in fewer passes and all in exact float64 (int64 out).
    ``symbols``: arange(256) on the device, if at hand. ``cuda``: use the CUDA variant's
    kernels (default: whether cdfs is on CUDA; the tests run both on CPU).

    The mixture's CDF sum_m w_m cdf_m is one batched product on CPU (w_m <= 2^EXP_FRAC, cdf
    <= 2^SIG_FRAC, M <= 64: every partial sum is an integer below 2^38, so any order of
    summation gives it exactly), mix its differences.
    With W = sum_m w_m, floor(mix G_TOTAL / (W 2^16)) = floor(q / W) for q = floor(mix
    G_TOTAL / 2^16) = 256 mix + floor(-mix / 256) (G_TOTAL = 2^24 - 2^8), an integer below
    2^46: its float64 quotient by W rounds to within W q 2^-53 < 1 / W of q / W, so never
    across an integer, and its floor is the integer quotient."""
    cuda = cdfs.is_cuda if cuda is None else cuda
    weights = weights.to(torch.float64)  # (no copy when it is)
    if cuda:  # two plain kernels rather than cuBLAS's batched product of 1-row matrices
        mix_cdf = (weights.unsqueeze(2) * cdfs).sum(1)  # (N, 257)
    else:
        mix_cdf = torch.bmm(weights.unsqueeze(1), cdfs).squeeze(1)
    mix = mix_cdf[:, 1:] - mix_cdf[:, :-1]
    q = torch.mul(mix, -(2.0**-8)).floor_().add_(mix, alpha=256)
    g = q.div_(weights.sum(1, keepdim=True)).floor_()
    rem = G_TOTAL - g.sum(1, keepdim=True)
    first_max = mix.max(1, keepdim=True).indices  # the first largest, as argmax
    if not cuda:
        return g.scatter_add_(1, first_max, rem).long()
    # Not scatter_add_: CUDA's deterministic mode has no plain kernel for it.
    if symbols is None:
        symbols = torch.arange(mix.shape[1], device=mix.device)
    return g.addcmul_(symbols == first_max, rem).long()


class _Tables:
    """The model's tables on one device (int64)."""

    def __init__(self, tables: dict[str, torch.Tensor]) -> None:
        self.t = {k: v.long() for k, v in tables.items()}
        # float64 copies for IntegerLogisticMixture's exact float64 arithmetic.
        self.f = {k: v.double() for k, v in self.t.items() if k in ("inv_scale", "exp")}
        if "sigmoid" in self.t:
            # SIG followed by the CDF's values below and above every edge (float64).
            sig = self.t["sigmoid"]
            ends = torch.tensor([0, 1 << SIG_FRAC], dtype=sig.dtype).to(sig.device)
            self.cdf_table = torch.cat([sig, ends]).double()

    def softmax_weights(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, K) int64 logits -> EXP[max - logit] (N, K), the max getting 2^EXP_FRAC."""
        d = logits.amax(1, keepdim=True) - logits
        return _take(self.t["exp"], d, 0, EXP_MAX)

    def softmax_weights_f64(self, logits: torch.Tensor) -> torch.Tensor:
        """softmax_weights as integer-valued float64 (max - logit >= 0: one clamp)."""
        d = logits.amax(1, keepdim=True) - logits
        return self.f["exp"].take(d.clamp_(max=EXP_MAX))


class IntegerCategorical(Distribution):
    """256-way softmax per channel from integer logits (LOGIT_FRAC bits), laid out
    channel-major as distributions.Categorical; channels independent."""

    integer_tables = True

    def __init__(self, channels: int, tables: dict[str, torch.Tensor]) -> None:
        self.channels = channels
        self.num_params = channels * NUM_SYMBOLS
        self._t = _Tables(tables)

    def channel_table(self, params: torch.Tensor, c: int) -> torch.Tensor:
        logits = params[:, c * NUM_SYMBOLS : (c + 1) * NUM_SYMBOLS].long()
        return frequencies(self._t.softmax_weights(logits))

    def coding_pmf(self, params, c, prev, state):  # noqa: D102 (see Distribution)
        return self.channel_table(params, c)

    def channel_pmf(self, params: torch.Tensor, c: int, prev: torch.Tensor) -> torch.Tensor:
        return table_probs(self.channel_table(params, c))

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return _table_log_prob(self, params, x)


class IntegerLogisticMixture(Distribution):
    """The discretized logistic mixture of distributions.logistic in fixed point: the same
    parameter layout and the same channel factorisation p(r) p(g | r) p(b | r, g) with
    posterior mixture weights, evaluated at the 255 inner bin edges j - 128 (pixel units)."""

    integer_tables = True

    def __init__(self, channels: int, nr_mix: int, tables: dict[str, torch.Tensor]) -> None:
        if channels not in (1, 3):
            raise ValueError(f"logistic mixture supports 1 or 3 channels, not {channels}")
        self.channels, self.nr_mix = channels, nr_mix
        self._block = 3 if channels == 3 else 2
        self.num_params = nr_mix * (1 + self._block * channels)
        self._t = _Tables(tables)
        # quant.kernels' one-kernel tables (CUDA with Triton; the same integers)
        self.fused = "sigmoid" in tables and kernels.enabled(tables["sigmoid"].device, "tables")

    def coding_state(self, device: torch.device) -> dict[str, torch.Tensor]:
        return {
            # The inner bin edges j = 1..255 as j - 128 (pixel units), float64.
            "j": torch.arange(1 - 128, NUM_SYMBOLS - 128, dtype=torch.float64, device=device),
            "symbols": torch.arange(NUM_SYMBOLS, device=device),
            # (SIG_MAX 2^_Z_SHIFT + 2^(_Z_SHIFT - 1)) / 2^_Z_SHIFT: the offsets in _cdfs' a.
            "a0": torch.tensor(SIG_MAX + 0.5, dtype=torch.float64, device=device),
        }

    def prepare_state(self, state: dict, n: int, device: torch.device) -> None:
        """Buffers for batches of n pixels in ``state`` (coding_state's), made before any
        CUDA graph capture (quant.kernels.prepare_state): the one-kernel tables need them."""
        if self.fused and self.channels == 3:
            kernels.prepare_state(state, n, self.nr_mix, device)

    def _cdfs(self, mean: torch.Tensor, log_scale: torch.Tensor, state: dict) -> torch.Tensor:
        """mean (N, M) integer-valued, log_scale (N, M) int64 -> (N, M, 257) float64
        (integer-valued): each component's CDF at the 257 bin edges, SIG at the 255 inner
        ones, 0 below the first and 2^SIG_FRAC above the last; component m's mass of bin v
        is cdf[v + 1] - cdf[v].

        The logistic's argument at inner edge j = 1..255 (edge e_j = 256 (j - 128)),
        clamped and offset into SIG, is ``clamp(round_shift((e_j - mean) inv, _Z_SHIFT) +
        SIG_MAX, 0, 2 SIG_MAX)`` = ``clamp(floor(a + (j - 128) b), 0, 2 SIG_MAX)`` with b =
        inv / 2^12 and a = SIG_MAX + 1/2 - mean inv / 2^20 (_Z_SHIFT = 20, MEAN_FRAC = 8):
        mean inv and (j - 128) inv are integers below 2^45 and 2^35, so every term, and the
        sum, is a multiple of 2^-20 below 2^27 in magnitude, exact in float64. For the
        clamped, hence non-negative, value truncation to an integer is the floor. The outer
        edges index two entries appended to SIG: 0 and 2^SIG_FRAC."""
        n, m = mean.shape
        buf = state.get("cdf_buffers")
        if buf is None or buf[0].shape != (n, m, NUM_SYMBOLS + 1):
            z = torch.empty(n, m, NUM_SYMBOLS + 1, dtype=torch.float64, device=mean.device)
            z[..., 0] = 2 * SIG_MAX + 1
            z[..., NUM_SYMBOLS] = 2 * SIG_MAX + 2
            idx = torch.empty(z.shape, dtype=torch.int32, device=mean.device)
            buf = state["cdf_buffers"] = (z, idx, torch.empty_like(z))
        z, idx, cdf = buf
        inv = _take(self._t.f["inv_scale"], log_scale, LOG_SCALE_LO, LOG_SCALE_HI)  # float64
        b = inv.mul_(2.0 ** (MEAN_FRAC - _Z_SHIFT))
        a = torch.addcmul(state["a0"], mean.to(torch.float64), b, value=-(2.0**-MEAN_FRAC))
        inner = z[..., 1:NUM_SYMBOLS]
        torch.addcmul(a.unsqueeze(2), state["j"], b.unsqueeze(2), out=inner)
        inner.clamp_(0, 2 * SIG_MAX)
        idx.copy_(z)
        return torch.index_select(self._t.cdf_table, 0, idx.view(-1), out=cdf.view(-1)).view(
            z.shape
        )

    def coding_pmf(
        self, params: torch.Tensor, c: int, prev: torch.Tensor, state: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """params (N, P) integer-valued; prev (N, C) int64 (columns < c decoded) -> g
        (N, 256) int64 for channel c. ``state`` carries the pixel's unpacked parameters,
        posterior log-weights and the last channel's component CDFs."""
        m = self.nr_mix
        if self.fused and self.channels == 3:
            g = kernels.mixture_table(params, c, prev, state, self._t, m)
            if g is not None:
                return g
        if c == 0:
            p = params.long()
            n = p.shape[0]
            blocks = p[:, m:].reshape(n, self.channels, self._block, m)
            state["lw"] = p[:, :m]
            # The means as float64 (a view of float64 params), as _cdfs takes them.
            fp = params.to(torch.float64)
            state["means"] = fp[:, m:].reshape(n, self.channels, self._block, m)[:, :, 0]
            state["log_scales"] = blocks[:, :, 1]
            if self.channels == 3:
                state["coefs"] = _take(self._t.t["tanh"], blocks[:, :, 2], -COEF_MAX, COEF_MAX)
            mean = state["means"][:, 0]
        else:
            # The components' masses of the previous channel's value x: cdf[x + 1] - cdf[x],
            # both read at x from the CDF's pairs of neighbours (a view).
            x = prev[:, c - 1 : c, None, None].expand(-1, m, 1, 2)  # (N, M, 1, 2)
            ends = state["cdf"].unfold(2, 2, 1).gather(2, x)
            b = (ends[..., 1] - ends[..., 0]).long().squeeze(2)
            state["lw"] = state["lw"] + self._t.t["log"].take(b)
            coefs = state["coefs"]
            # Coupling in pixel units: mean + coef * (x - 127.5) = mean + coef (2x - 255) / 2.
            s0 = 2 * prev[:, 0:1] - 255
            if c == 1:
                acc = coefs[:, 0] * s0
            else:
                acc = torch.addcmul(coefs[:, 1] * s0, coefs[:, 2], 2 * prev[:, 1:2] - 255)
            # float64 + int64 (both integer-valued, below 2^53): exact.
            mean = state["means"][:, c] + _round_shift(acc, COEF_FRAC + 1 - MEAN_FRAC)
        mean = mean.clamp(-MEAN_MAX, MEAN_MAX)
        cdf = self._cdfs(mean, state["log_scales"][:, c], state)
        state["cdf"] = cdf
        weights = self._t.softmax_weights_f64(state["lw"])
        return mixture_frequencies(weights, cdf, state["symbols"])

    def channel_pmf(self, params: torch.Tensor, c: int, prev: torch.Tensor) -> torch.Tensor:
        state = self.coding_state(params.device)
        full = torch.zeros(len(params), self.channels, dtype=torch.int64, device=params.device)
        full[:, :c] = prev
        for k in range(c):
            self.coding_pmf(params, k, full, state)
        return table_probs(self.coding_pmf(params, c, full, state))

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return _table_log_prob(self, params, x)


def table_probs(g: torch.Tensor) -> torch.Tensor:
    """The coder's probabilities (g + 1) / FREQ_TOTAL, float64."""
    return (g + 1).double() / FREQ_TOTAL


#: Pixels per chunk when a whole image's tables are built at once (scoring): 256 KB each.
_CHUNK = 4096


def _table_log_prob(dist: Distribution, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """params (B, P, H, W), x (B, C, H, W) -> (B, C, H, W) float64 nats: ln of the coder's
    probability of each true value, the tables built exactly as the coder builds them."""
    b, p, h, w = params.shape
    flat_p = params.permute(0, 2, 3, 1).reshape(-1, p)
    flat_x = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]).long()
    out = torch.empty(flat_x.shape, dtype=torch.float64, device=params.device)
    for s in range(0, len(flat_p), _CHUNK):
        pc, xc = flat_p[s : s + _CHUNK], flat_x[s : s + _CHUNK]
        state = dist.coding_state(params.device)
        for c in range(dist.channels):
            g = dist.coding_pmf(pc, c, xc, state)
            out[s : s + _CHUNK, c] = torch.log(table_probs(g.gather(1, xc[:, c : c + 1]))[:, 0])
    return out.view(b, h, w, -1).permute(0, 3, 1, 2)


def tables_problem(tables: dict[str, torch.Tensor]) -> str | None:
    """Value checks of a model file's tables (those present), so that forged tables cannot
    make a negative frequency, an overflow or an empty table: None if they pass."""
    t = {k: v.long() for k, v in tables.items()}
    one = 1 << SIG_FRAC
    checks = {
        "sigmoid": lambda v: bool((v >= 0).all() and (v <= one).all() and (v.diff() >= 0).all()),
        "exp": lambda v: bool((v >= 0).all() and (v <= 1 << EXP_FRAC).all() and v[0] > 0),
        "inv_scale": lambda v: bool((v > 0).all() and (v < 1 << 28).all()),
        "tanh": lambda v: bool((v.abs() <= 1 << COEF_FRAC).all()),
        "log": lambda v: bool((v <= 0).all() and (v >= -(1 << 20)).all()),
        "elu": lambda v: bool((v <= 0).all() and (v >= -(1 << 13)).all()),
    }
    for name, ok in checks.items():
        if name in t and not ok(t[name]):
            return f"table {name} holds values outside its domain"
    return None
