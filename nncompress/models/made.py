"""MADE (Germain et al. 2015) for 8-bit tiles: a masked MLP, 256-way softmax per subpixel.

Order-agnostic and connectivity-agnostic: the model holds ``num_masks`` mask sets, each an
ordering of the pixel positions plus a degree for every hidden unit; training draws a
different set per minibatch, coding uses set 0. The sets are stored as integer buffers
(orderings and hidden degrees) from which every mask follows exactly, so the weights file
fully determines them and the weights digest covers them; storing the masks themselves
would cost ~8 M entries per set at the default size.

A 256-way output for every pixel straight from a wide hidden layer would need
``hidden * pixels * 256`` weights. Instead the last masked layer emits ``features`` values
per pixel, and one linear map shared by all pixels turns them into 256 logits per channel,
plus a per-pixel bias (the marginal at that location). The map is shared and acts on one
pixel's features only, so the output stays autoregressive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..distributions import NUM_SYMBOLS, Categorical
from ..errors import UnsupportedImageError
from .base import LikelihoodModel, NaiveStepper

# uint8 values are fed to the MLP as (x / INPUT_HALF_RANGE - 1), i.e. in [-1, 1].
INPUT_HALF_RANGE = 127.5
# The head starts near zero so that a fresh model predicts the per-pixel bias alone.
HEAD_INIT_SCALE = 0.1
# Laplace smoothing of the per-pixel value counts that initialise the bias.
MARGINAL_PSEUDO_COUNT = 0.1
ORDER_RASTER = "raster"
ORDER_RANDOM = "random"
_ORDERS = (ORDER_RASTER, ORDER_RANDOM)


@dataclass(frozen=True)
class MADEConfig:
    channels: int = 1
    height: int = 28
    width: int = 28
    #: Widths of the masked hidden layers (ReLU).
    hidden: tuple[int, ...] = (1000, 1000)
    #: Values per pixel emitted by the last masked layer, mapped to 256 logits per channel.
    features: int = 8
    #: Number of mask sets (orderings + hidden connectivities); set 0 is used for coding.
    num_masks: int = 4
    #: Ordering of mask set 0: "raster" or "random" (sets >= 1 are always random).
    first_order: str = ORDER_RANDOM
    #: Seed of the orderings and hidden degrees drawn at construction.
    seed: int = 0
    #: Dropout on hidden activations while training.
    dropout: float = 0.0

    def __post_init__(self) -> None:
        # Model files store the config as JSON, which turns tuples into lists.
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if self.first_order not in _ORDERS:
            raise ValueError(f"first_order must be one of {_ORDERS}, got {self.first_order!r}")
        if self.height * self.width < 2 or self.channels < 1:
            raise ValueError("MADE needs at least 2 pixel positions and 1 channel")
        if not self.hidden or min(self.hidden) < 1 or self.features < 1 or self.num_masks < 1:
            raise ValueError("hidden widths, features and num_masks must be positive")


class MADE(LikelihoodModel):
    family = "made"
    Config = MADEConfig
    fixed_tile = (28, 28)
    # Positions are visited out of raster order, so tile padding cannot replicate edges.
    padding = "zero"

    def __init__(self, config: MADEConfig) -> None:
        super().__init__(config)
        # The tile size is a property of the config; the class value is the default's.
        self.fixed_tile = (config.height, config.width)
        self._dist = Categorical(config.channels)
        positions = config.height * config.width
        self.positions = positions
        c = config.channels

        widths = [c * positions, *config.hidden]
        self.hidden_layers = nn.ModuleList(
            nn.Linear(w_in, w_out) for w_in, w_out in zip(widths[:-1], widths[1:], strict=True)
        )
        self.feature_layer = nn.Linear(widths[-1], positions * config.features)
        # Shared per-pixel map: features -> C*256 logits, plus a per-pixel bias.
        self.head_weight = nn.Parameter(
            torch.empty(c * NUM_SYMBOLS, config.features).uniform_(-1.0, 1.0)
            * (HEAD_INIT_SCALE / math.sqrt(config.features))
        )
        self.pixel_bias = nn.Parameter(torch.zeros(positions, c * NUM_SYMBOLS))
        self.dropout = nn.Dropout(config.dropout)

        orders, degrees = _draw_mask_sets(config)
        # orders[m, r]: the position (y * W + x) coded r-th under mask set m.
        self.register_buffer("orders", orders)
        for i, d in enumerate(degrees):
            # (num_masks, hidden[i]) degrees of hidden layer i, in [0, positions - 2].
            self.register_buffer(f"hidden_degrees_{i}", d)

    @property
    def distribution(self) -> Categorical:
        return self._dist

    @property
    def num_masks(self) -> int:
        return int(self.config.num_masks)

    @torch.no_grad()
    def fit_marginals(self, x: torch.Tensor) -> None:
        """x: (N, C, H, W) uint8. Sets the per-pixel bias to the smoothed log-frequencies of
        each value at each pixel: the model then starts as the per-pixel marginal model
        instead of spending its first epochs learning it."""
        self._check_input(x)
        n, c = x.shape[0], self.channels
        flat = x.reshape(n, c, self.positions).permute(2, 1, 0).long()  # (H*W, C, N)
        counts = torch.zeros(self.positions, c, NUM_SYMBOLS, dtype=torch.float64)
        counts.scatter_add_(2, flat.cpu(), torch.ones(flat.shape, dtype=torch.float64))
        counts += MARGINAL_PSEUDO_COUNT
        logp = (counts / counts.sum(2, keepdim=True)).log()
        self.pixel_bias.copy_(logp.reshape(self.positions, c * NUM_SYMBOLS))

    # ----------------------------------------------------------------------------- masks
    def ordering(self, mask_set: int = 0) -> list[tuple[int, int]]:
        """Pixel positions (y, x) in the order of ``mask_set``."""
        w = self.config.width
        return [(int(p) // w, int(p) % w) for p in self.orders[mask_set]]

    def ranks(self, mask_set: int = 0) -> torch.Tensor:
        """(positions,) int64: the coding rank of every position y * W + x."""
        order = self.orders[mask_set].long()
        ranks = torch.empty_like(order)
        ranks[order] = torch.arange(order.numel(), device=order.device)
        return ranks

    def masks(self, mask_set: int = 0) -> list[torch.Tensor]:
        """Float 0/1 masks (out, in) of every masked layer: hidden layers, then features."""
        self._check_mask_set(mask_set)
        pixel_deg = self.ranks(mask_set)
        prev = pixel_deg.repeat(self.channels)  # input layout: channel-major (C, H*W)
        masks = []
        for i in range(len(self.hidden_layers)):
            deg = getattr(self, f"hidden_degrees_{i}")[mask_set].long()
            masks.append((deg[:, None] >= prev[None, :]).float())
            prev = deg
        out_deg = pixel_deg.repeat_interleave(self.config.features)  # layout (H*W, K)
        # Strict: the features of the pixel of rank r only see hidden units of degree < r.
        masks.append((out_deg[:, None] > prev[None, :]).float())
        return masks

    def _check_mask_set(self, mask_set: int) -> None:
        if not 0 <= mask_set < self.num_masks:
            raise ValueError(f"mask_set must be in [0, {self.num_masks}), got {mask_set}")

    # --------------------------------------------------------------------------- forward
    def _check_input(self, x: torch.Tensor) -> None:
        want = (self.channels, self.config.height, self.config.width)
        if x.dim() != 4 or tuple(x.shape[1:]) != want:
            raise UnsupportedImageError(
                f"MADE takes (B, {want[0]}, {want[1]}, {want[2]}) tiles, got {tuple(x.shape)}"
            )

    def _logits(self, x: torch.Tensor, mask_set: int) -> torch.Tensor:
        """x: (B, C, H, W) uint8 -> (B, H*W, C*256) logits, pixel-major (cheapest layout)."""
        self._check_input(x)
        return self.logits_from_inputs(scale_input(x), mask_set)

    def logits_from_inputs(self, inputs: torch.Tensor, mask_set: int = 0) -> torch.Tensor:
        """inputs: (B, C*H*W) float, the network input ``scale_input(x)`` (differentiable,
        which tests of the autoregressive property need) -> (B, H*W, C*256) logits."""
        masks = self.masks(mask_set)
        h = inputs
        for layer, mask in zip(self.hidden_layers, masks, strict=False):
            h = self.dropout(F.relu(F.linear(h, mask * layer.weight, layer.bias)))
        w = self.feature_layer
        feats = F.linear(h, masks[-1] * w.weight, w.bias)  # (B, H*W*K)
        b = inputs.shape[0]
        feats = feats.view(b, self.positions, self.config.features)
        # One batched product with the per-pixel bias fused in: the logits are the largest
        # tensor of the model (B * H*W * 256), so each pass over them counts.
        return torch.baddbmm(
            self.pixel_bias.unsqueeze(0).expand(b, -1, -1),
            feats,
            self.head_weight.t().unsqueeze(0).expand(b, -1, -1),
        )

    def params(self, x: torch.Tensor, mask_set: int = 0) -> torch.Tensor:
        """x: (B, C, H, W) uint8 in [0, 255] -> (B, C*256, H, W) logits under ``mask_set``."""
        logits = self._logits(x, mask_set)
        b = x.shape[0]
        return logits.permute(0, 2, 1).reshape(b, -1, self.config.height, self.config.width)

    def image_nll(self, x: torch.Tensor, mask_set: int = 0) -> torch.Tensor:
        """x: (B, C, H, W) uint8 -> (B,) negative log-likelihood of each image, nats.

        Same value as ``-log_prob(x).sum((1, 2, 3))`` without the layout change: the
        training loss."""
        b = x.shape[0]
        logits = self._logits(x, mask_set).reshape(-1, NUM_SYMBOLS)  # (B*H*W*C, 256)
        target = x.reshape(b, self.channels, -1).transpose(1, 2).reshape(-1).long()
        return F.cross_entropy(logits, target, reduction="none").view(b, -1).sum(1)

    def log_prob(self, x: torch.Tensor, mask_set: int = 0) -> torch.Tensor:
        """x: (B, C, H, W) uint8 -> (B, C, H, W) nats under ``mask_set``."""
        return self.distribution.log_prob(self.params(x, mask_set), x)

    def ensemble_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) uint8 -> (B,) log of the mean over mask sets of p(x), nats.

        The mixture of all orderings; better than any one set but not codable directly."""
        per_set = torch.stack([-self.image_nll(x, m) for m in range(self.num_masks)])
        return torch.logsumexp(per_set, dim=0) - math.log(self.num_masks)

    def stepper(self, batch: int, height: int, width: int) -> MADEStepper:
        return MADEStepper(self, batch, height, width)


class MADEStepper(NaiveStepper):
    """Codes pixels in mask set 0's order. A step is one MLP pass for the batch, evaluating
    only the requested pixel's outputs; masked weights are fixed when the stepper is made,
    so the model must not be trained while a stepper is in use."""

    # Positions are visited out of raster order, so padding cannot replicate edges.
    padding = "zero"

    def __init__(self, model: MADE, batch: int, height: int, width: int) -> None:
        if (height, width) != model.fixed_tile:
            raise UnsupportedImageError(
                f"MADE codes {model.fixed_tile[0]}x{model.fixed_tile[1]} tiles only, "
                f"got {height}x{width}"
            )
        super().__init__(model, batch, height, width)
        with torch.no_grad():
            masks = model.masks(0)
            self._hidden = [
                (m * layer.weight, layer.bias)
                for layer, m in zip(model.hidden_layers, masks, strict=False)
            ]
            k = model.config.features
            self._features = (masks[-1] * model.feature_layer.weight).view(model.positions, k, -1)
            self._feature_bias = model.feature_layer.bias.view(model.positions, k)
        self._order = model.ordering(0)

    def order(self) -> list[tuple[int, int]]:
        return list(self._order)

    @torch.no_grad()
    def params_at(self, y: int, x: int) -> torch.Tensor:
        model = self.model
        p = y * model.config.width + x
        h = scale_input(self.canvas)
        for weight, bias in self._hidden:
            h = F.relu(F.linear(h, weight, bias))
        feats = F.linear(h, self._features[p], self._feature_bias[p])  # (B, K)
        return torch.addmm(model.pixel_bias[p], feats, model.head_weight.t()).float()


def scale_input(x: torch.Tensor) -> torch.Tensor:
    """x: (B, C, H, W) uint8 in [0, 255] -> (B, C*H*W) float32 in [-1, 1], channel-major."""
    return x.reshape(x.shape[0], -1).float() / INPUT_HALF_RANGE - 1.0


def _draw_mask_sets(config: MADEConfig) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Orderings (num_masks, H*W) and per-layer hidden degrees (num_masks, hidden[i]), int32,
    drawn deterministically from ``config.seed``."""
    positions = config.height * config.width
    gen = torch.Generator().manual_seed(config.seed)
    orders = []
    degrees: list[list[torch.Tensor]] = [[] for _ in config.hidden]
    for m in range(config.num_masks):
        if m == 0 and config.first_order == ORDER_RASTER:
            orders.append(torch.arange(positions))
        else:
            orders.append(torch.randperm(positions, generator=gen))
        low = 0
        for i, width in enumerate(config.hidden):
            # A unit of degree d sees inputs of rank <= d; degree positions - 1 would feed no
            # output, so degrees lie in [low, positions - 2] (low: no unit left unconnected).
            d = torch.randint(low, positions - 1, (width,), generator=gen)
            degrees[i].append(d)
            low = int(d.min())
    return (
        torch.stack(orders).to(torch.int32),
        [torch.stack(d).to(torch.int32) for d in degrees],
    )
