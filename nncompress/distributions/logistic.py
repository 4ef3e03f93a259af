"""Discretized mixture of logistics over 8-bit subpixels (PixelCNN++, Salimans et al. 2017).

Pixel values v in [0, 255] map to s = (v - 127.5) / 127.5 in [-1, 1]; value v owns the bin
[s - 1/255, s + 1/255], except that the edge values 0 and 255 also take the tails. For RGB the
means of G and B are shifted linearly by the values of R (and G) actually seen.

The mixture is over the joint pixel. To code channel by channel the distribution is factorised
exactly as p(r) p(g | r) p(b | r, g): the mixture weights of channel c are the posterior
weights given the channels before it, w_k ∝ π_k Π_{c'<c} p_k(x_c'). ``log_prob`` and
``channel_pmf`` both follow that factorisation, so the per-channel log-probs sum to the joint
mixture log-likelihood of the paper and exp(log_prob) is the coding PMF at the true value.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import NUM_SYMBOLS, Distribution
from .categorical import floor_and_normalize

# Pixel value v -> (v - PIXEL_HALF_RANGE) / PIXEL_HALF_RANGE in [-1, 1].
PIXEL_HALF_RANGE = 127.5
# Half the width of one value's bin on the [-1, 1] scale.
BIN_HALF_WIDTH = 1.0 / 255.0
# Log-scales are clamped from below: a logistic narrower than this is numerically useless.
LOG_SCALE_MIN = -7.0
# Below this log bin width log(1 - exp(-d)) equals log(d) to float32 precision
# (error ~ d / 2 < 2e-7), and exp(log d) would start to underflow.
_LOG_D_SMALL = -15.0
_LN2 = math.log(2.0)
# Smallest positive normal float32: the floor of inverse scales (infinite bin edges stay
# infinite) and of component probabilities in the coder's posterior (see coding_pmf).
_TINY = torch.finfo(torch.float32).tiny


def scale_pixels(x: torch.Tensor) -> torch.Tensor:
    """x: any shape, pixel values in [0, 255] (uint8, integer or float) -> float32 in [-1, 1].

    The one place where the models and the distribution turn values into network inputs, so
    that the parallel pass and the steppers do identical arithmetic. Centring first is exact
    in float32 (v - 127.5 is a half-integer), so values near the middle keep full precision,
    unlike v / 127.5 - 1."""
    return (x.to(torch.float32) - PIXEL_HALF_RANGE) / PIXEL_HALF_RANGE


def _log1mexp(log_d: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(-d)) for d = exp(log_d) > 0, stable for every d (Maechler 2012)."""
    small = log_d < _LOG_D_SMALL
    # Keep the unselected branches finite so that torch.where has finite gradients.
    d = torch.exp(torch.where(small, torch.zeros_like(log_d), log_d))
    near = torch.log(-torch.expm1(-d.clamp_max(_LN2)))
    far = torch.log1p(-torch.exp(-d.clamp_min(_LN2)))
    return torch.where(small, log_d, torch.where(d < _LN2, near, far))


class DiscretizedLogisticMixture(Distribution):
    """Mixture of ``nr_mix`` discretized logistics per pixel, ``channels`` 3 (RGB) or 1.

    Parameter layout per pixel (the reference layout): ``nr_mix`` mixture logits, then for
    each channel c a block of ``nr_mix`` means, ``nr_mix`` log-scales and, for RGB only,
    ``nr_mix`` raw coupling coefficients (tanh is applied): block 0 holds the R->G
    coefficients, block 1 R->B, block 2 G->B. So P = 10 * nr_mix for RGB, 3 * nr_mix for grey.
    """

    def __init__(self, channels: int, nr_mix: int) -> None:
        if channels not in (1, 3):
            raise ValueError(f"logistic mixture supports 1 or 3 channels, not {channels}")
        if nr_mix < 1:
            raise ValueError(f"nr_mix must be >= 1, not {nr_mix}")
        self.channels = channels
        self.nr_mix = nr_mix
        self._block = 3 if channels == 3 else 2  # per-channel parameter groups
        self.num_params = nr_mix * (1 + self._block * channels)

    # -- parameter unpacking -------------------------------------------------------------

    def _unpack(
        self, params: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """params: (N, P, *S) -> logits (N, M, *S), means (N, C, M, *S), log-scales
        (N, C, M, *S) clamped at LOG_SCALE_MIN, coefficients (N, 3, M, *S) in (-1, 1) or None."""
        if params.shape[1] != self.num_params:
            raise ValueError(f"expected {self.num_params} parameters, got {params.shape[1]}")
        params = params.float()
        n, rest, m = params.shape[0], params.shape[2:], self.nr_mix
        logits = params[:, :m]
        blocks = params[:, m:].reshape(n, self.channels, self._block, m, *rest)
        means = blocks[:, :, 0]
        log_scales = blocks[:, :, 1].clamp_min(LOG_SCALE_MIN)
        coeffs = torch.tanh(blocks[:, :, 2]) if self.channels == 3 else None
        return logits, means, log_scales, coeffs

    @staticmethod
    def _coupled_mean(
        means: torch.Tensor, coeffs: torch.Tensor | None, c: int, prev: list[torch.Tensor]
    ) -> torch.Tensor:
        """Mean of channel c (N, M, *S) given the scaled values of channels < c, each
        (N, 1, *S) (broadcast over the mixture)."""
        mean = means[:, c]
        if c == 1:
            mean = mean + coeffs[:, 0] * prev[0]
        elif c == 2:
            mean = mean + coeffs[:, 1] * prev[0] + coeffs[:, 2] * prev[1]
        return mean

    @staticmethod
    def _component_log_probs(
        x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor
    ) -> torch.Tensor:
        """log P_k(x) of each component's bin: x (N, 1, *S) integer values, mean and
        log_scale (N, M, *S). Returns (N, M, *S).

        The middle case uses the identity sigmoid(a) - sigmoid(b) = sigmoid(a) sigmoid(-b)
        (1 - exp(-(a - b))), exact and stable in both tails, instead of the paper's switch to
        a density approximation for tiny bins; so log_prob and the CDF-difference PMF agree
        everywhere."""
        centered = scale_pixels(x) - mean
        inv_scale = torch.exp(-log_scale)
        plus = inv_scale * (centered + BIN_HALF_WIDTH)
        minus = inv_scale * (centered - BIN_HALF_WIDTH)
        log_cdf_plus = F.logsigmoid(plus)  # left tail: value 0
        log_sf_minus = F.logsigmoid(-minus)  # right tail: value 255
        log_width = math.log(2.0 * BIN_HALF_WIDTH) - log_scale  # log(plus - minus)
        mid = log_cdf_plus + log_sf_minus + _log1mexp(log_width)
        return torch.where(
            x == 0, log_cdf_plus, torch.where(x == NUM_SYMBOLS - 1, log_sf_minus, mid)
        )

    def _prior_and_channel_terms(
        self, params: torch.Tensor, x: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Log mixture weights (N, M, *S); per channel c < x.shape[1] the component log-probs
        of x_c; per channel c <= x.shape[1] the coupled means and log-scales (all (N, M, *S)).

        x: (N, c, *S) integer values of the first channels (c may be < C)."""
        logits, means, log_scales, coeffs = self._unpack(params)
        xs = [x[:, c : c + 1] for c in range(x.shape[1])]
        scaled = [scale_pixels(v) for v in xs]
        terms, mus, scales = [], [], []
        for c in range(min(self.channels, len(xs) + 1)):
            mu = self._coupled_mean(means, coeffs, c, scaled)
            mus.append(mu)
            scales.append(log_scales[:, c])
            if c < len(xs):
                terms.append(self._component_log_probs(xs[c], mu, log_scales[:, c]))
        return F.log_softmax(logits, dim=1), terms, mus, scales

    # -- the Distribution interface ------------------------------------------------------

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """params: (B, P, H, W) float; x: (B, C, H, W) uint8 in [0, 255].

        Returns (B, C, H, W) nats: log p(x_c | x_<c) under the posterior-weighted mixture;
        the sum over channels is the joint mixture log-likelihood."""
        log_w, terms, _, _ = self._prior_and_channel_terms(params, x.long())
        out = []
        cum = log_w
        before = torch.zeros_like(log_w[:, 0])  # logsumexp of the normalized prior
        for term in terms:
            cum = cum + term
            upto = torch.logsumexp(cum, dim=1)
            out.append(upto - before)
            before = upto
        return torch.stack(out, dim=1)

    def channel_pmf(self, params: torch.Tensor, c: int, prev: torch.Tensor) -> torch.Tensor:
        """params: (N, P); prev: (N, c) int64 decoded values of channels < c.
        Returns (N, 256) float32, rows sum to 1, every entry > 0."""
        log_w, terms, mus, scales = self._prior_and_channel_terms(params, prev.long())
        for term in terms:
            log_w = log_w + term
        weights = torch.softmax(log_w, dim=1)  # (N, M) posterior given x_<c
        return floor_and_normalize(self._mixture_pmf(weights, mus[c], scales[c]))

    def coding_pmf(
        self, params: torch.Tensor, c: int, prev: torch.Tensor, state: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """``channel_pmf`` incrementally: channel 0 unpacks the parameters into ``state``;
        each later channel adds every component's log-probability of the value just
        decoded, read from the previous channel's component table, to the running mixture
        log-weights, and couples its mean to the scaled decoded values. Table entries are
        accurate down to float32's smallest normal number (bins are differences of small
        numbers, see _component_pmfs) and floored there: where every component puts less
        on the decoded value (a symbol that cost ~23 bits or more), the weights of the
        next channels stay those before it instead of the exact posterior's."""
        if c == 0:
            logits, means, log_scales, coeffs = self._unpack(params)
            state.update(log_w=logits, means=means, log_scales=log_scales)
            if coeffs is not None:
                state["coeffs"] = coeffs
            mean = means[:, 0]
        else:
            x = prev[:, c - 1 : c]  # (N, 1) the value of channel c-1, just decoded
            comp = state["components"]  # (N, M, 256)
            p = comp.gather(2, x.unsqueeze(1).expand(-1, comp.shape[1], 1)).squeeze(2)
            state["log_w"] = state["log_w"] + torch.log(p.clamp_min(_TINY))
            state[f"scaled{c - 1}"] = scale_pixels(x)
            coeffs, s0 = state.get("coeffs"), state["scaled0"]
            mean = state["means"][:, c]
            if c == 1:
                mean = mean + coeffs[:, 0] * s0
            else:
                mean = mean + coeffs[:, 1] * s0 + coeffs[:, 2] * state["scaled1"]
        comp = self._component_pmfs(mean, state["log_scales"][:, c], state.get("edges"))
        state["components"] = comp
        weights = torch.softmax(state["log_w"], dim=1)
        return floor_and_normalize(torch.bmm(weights.unsqueeze(1), comp).squeeze(1))

    def coding_state(self, device: torch.device) -> dict[str, torch.Tensor]:
        return {"edges": _bin_edges(device)}

    @staticmethod
    def _mixture_pmf(
        weights: torch.Tensor,
        mean: torch.Tensor,
        log_scale: torch.Tensor,
        edges: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """weights, mean, log_scale: (N, M) -> (N, 256) bin probabilities."""
        comp = DiscretizedLogisticMixture._component_pmfs(mean, log_scale, edges)
        return torch.bmm(weights.unsqueeze(1), comp).squeeze(1)

    @staticmethod
    def _component_pmfs(
        mean: torch.Tensor, log_scale: torch.Tensor, edges: torch.Tensor | None = None
    ) -> torch.Tensor:
        """mean, log_scale: (N, M) -> (N, M, 256): each component's bin probabilities, as
        differences of the CDF at the 257 bin edges (``edges``: _bin_edges, made here if
        not given; the outer ones infinite, so the edge values take the tails). A bin left
        of the mean uses the CDF, one right of it the survival function: the difference of
        two small numbers, which does not cancel."""
        if edges is None:
            edges = _bin_edges(mean.device)
        # An infinite edge times a zero inverse scale (log-scale > ~87) would be NaN.
        inv_scale = torch.exp(-log_scale).clamp_min(_TINY)
        t = (edges - mean.unsqueeze(-1)) * inv_scale.unsqueeze(-1)  # (N, M, 257)
        cdf, sf = torch.sigmoid(t), torch.sigmoid(-t)
        left = cdf[..., 1:] - cdf[..., :-1]
        right = sf[..., :-1] - sf[..., 1:]
        return torch.where(t[..., :-1] > 0, right, left)


def _bin_edges(device: torch.device) -> torch.Tensor:
    """(257,) float32: -inf, the 255 edges between neighbouring values on the [-1, 1]
    scale (value v's bin is its scaled value +- BIN_HALF_WIDTH), +inf. Made on the
    device itself (no host copy: safe inside a CUDA graph capture)."""
    values = torch.arange(-1, NUM_SYMBOLS, dtype=torch.float64, device=device)
    edges = (values - PIXEL_HALF_RANGE) / PIXEL_HALF_RANGE + BIN_HALF_WIDTH
    edges[0], edges[-1] = -math.inf, math.inf
    return edges.float()
