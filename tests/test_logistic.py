"""The discretized logistic mixture: coding PMFs, the channel-by-channel factorisation,
edge bins and exact values of small fixtures."""

from __future__ import annotations

import math

import pytest
import torch

from nncompress.distributions import NUM_SYMBOLS, PROB_FLOOR
from nncompress.distributions.logistic import (
    LOG_SCALE_MIN,
    DiscretizedLogisticMixture,
    scale_pixels,
)


def pack(
    logits: torch.Tensor,
    means: torch.Tensor,
    log_scales: torch.Tensor,
    coeffs: torch.Tensor | None = None,
) -> torch.Tensor:
    """The documented layout: logits (N, M); per channel c: means, log-scales and (RGB)
    raw coefficients, each (N, C, M). Returns (N, P)."""
    blocks = [means, log_scales] + ([coeffs] if coeffs is not None else [])
    per_channel = torch.stack(blocks, dim=2)  # (N, C, groups, M)
    return torch.cat([logits, per_channel.flatten(1)], dim=1)


def random_params(dist: DiscretizedLogisticMixture, n: int, seed: int) -> torch.Tensor:
    """(n, P): means partly outside [-1, 1], log-scales from below the floor to wide."""
    g = torch.Generator().manual_seed(seed)
    c, m = dist.channels, dist.nr_mix
    logits = torch.randn(n, m, generator=g) * 2
    means = torch.rand(n, c, m, generator=g) * 3 - 1.5
    log_scales = torch.rand(n, c, m, generator=g) * 10 - 9  # [-9, 1]
    coeffs = torch.randn(n, c, m, generator=g) if c == 3 else None
    return pack(logits, means, log_scales, coeffs)


def random_values(n: int, c: int, seed: int) -> torch.Tensor:
    """(n, c) int64 in [0, 255], with the edge values present."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, NUM_SYMBOLS, (n, c), generator=g)
    x[:4] = torch.tensor([0, 255, 1, 254])[:, None]
    return x


def test_parameter_count_and_bad_arguments() -> None:
    assert DiscretizedLogisticMixture(3, 10).num_params == 100
    assert DiscretizedLogisticMixture(1, 5).num_params == 15
    with pytest.raises(ValueError, match="1 or 3 channels"):
        DiscretizedLogisticMixture(2, 3)
    with pytest.raises(ValueError, match="nr_mix"):
        DiscretizedLogisticMixture(3, 0)


@pytest.mark.parametrize("channels", [1, 3])
def test_pmfs_are_proper_and_positive(channels: int) -> None:
    dist = DiscretizedLogisticMixture(channels, 3)
    params = random_params(dist, 64, seed=1)
    x = random_values(64, channels, seed=2)
    for c in range(channels):
        pmf = dist.channel_pmf(params, c, x[:, :c])
        assert pmf.shape == (64, NUM_SYMBOLS) and pmf.dtype == torch.float32
        torch.testing.assert_close(pmf.sum(1), torch.ones(64), atol=1e-5, rtol=0)
        assert (pmf >= PROB_FLOOR / 2).all()


@pytest.mark.parametrize("channels", [1, 3])
def test_exp_log_prob_is_the_coding_pmf_at_the_true_value(channels: int) -> None:
    dist = DiscretizedLogisticMixture(channels, 4)
    n = 96
    params = random_params(dist, n, seed=3)
    x = random_values(n, channels, seed=4)
    # log_prob takes images: lay the n items out as a (2, P, 6, 8) batch.
    as_image = params.view(2, 6, 8, -1).permute(0, 3, 1, 2)
    x_image = x.view(2, 6, 8, channels).permute(0, 3, 1, 2).to(torch.uint8)
    logp = dist.log_prob(as_image, x_image).permute(0, 2, 3, 1).reshape(n, channels)
    for c in range(channels):
        pmf = dist.channel_pmf(params, c, x[:, :c])
        at_true = pmf[torch.arange(n), x[:, c]]
        # The coder's PMF is the exact one mixed with the floor and renormalised.
        expected = (logp[:, c].exp() + PROB_FLOOR) / (1 + NUM_SYMBOLS * PROB_FLOOR)
        torch.testing.assert_close(at_true, expected, rtol=1e-4, atol=2e-7)


def _reference_joint_log_likelihood(
    logits: torch.Tensor,
    means: torch.Tensor,
    log_scales: torch.Tensor,
    coeffs: torch.Tensor | None,
    x: torch.Tensor,
) -> torch.Tensor:
    """The paper's joint mixture likelihood, computed directly in float64 with plain CDF
    differences (taken on the side of the mean where they do not cancel)."""
    logits, means, log_scales = logits.double(), means.double(), log_scales.double()
    xs = x.double() / 127.5 - 1  # (N, C)
    n, c, m = means.shape
    mu = means.clone()
    if coeffs is not None:
        t = torch.tanh(coeffs.double())
        mu[:, 1] += t[:, 0] * xs[:, 0:1]
        mu[:, 2] += t[:, 1] * xs[:, 0:1] + t[:, 2] * xs[:, 1:2]
    s = log_scales.clamp_min(LOG_SCALE_MIN).exp()
    centered = xs.unsqueeze(-1) - mu  # (N, C, M)
    plus, minus = (centered + 1 / 255) / s, (centered - 1 / 255) / s
    mid = torch.where(
        centered > 0,
        torch.sigmoid(-minus) - torch.sigmoid(-plus),
        torch.sigmoid(plus) - torch.sigmoid(minus),
    )
    xv = x.unsqueeze(-1).expand(n, c, m)
    p = torch.where(
        xv == 0, torch.sigmoid(plus), torch.where(xv == 255, torch.sigmoid(-minus), mid)
    )
    per_component = torch.log_softmax(logits, 1) + p.log().sum(1)  # (N, M)
    return torch.logsumexp(per_component, 1)


@pytest.mark.parametrize("channels", [3, 1])
def test_coding_pmfs_channel_by_channel_equal_the_reference(channels: int) -> None:
    """The coder's incremental PMFs (one state carried from channel to channel) are the
    reference ``channel_pmf`` up to float rounding, for the values actually seen, wherever
    no component gave an earlier decoded value less than float32's smallest normal number
    (the coder floors such probabilities there); everywhere they are proper PMFs."""
    dist = DiscretizedLogisticMixture(channels, 4)
    g = torch.Generator().manual_seed(12)
    # Half the rows as random_params draws them (scales down to the floor, means far out),
    # half with the moderate parameters a trained model gives.
    wild = random_params(dist, 128, seed=11)
    tame = pack(
        torch.randn(128, 4, generator=g),
        torch.rand(128, channels, 4, generator=g) * 2 - 1,
        torch.rand(128, channels, 4, generator=g) * 3 - 4,
        torch.randn(128, channels, 4, generator=g) if channels == 3 else None,
    )
    params = torch.cat([wild, tame])
    x = torch.randint(0, 256, (256, channels), generator=g)
    logits, means, log_scales, coeffs = dist._unpack(params)
    state: dict = dist.coding_state(params.device)
    plausible = torch.ones(256, dtype=torch.bool)  # no floored component so far
    for c in range(channels):
        coded = dist.coding_pmf(params, c, x, state)
        reference = dist.channel_pmf(params, c, x[:, :c])
        assert coded.shape == (256, NUM_SYMBOLS) and torch.isfinite(coded).all()
        torch.testing.assert_close(coded.sum(1), torch.ones(256))
        same = torch.isclose(coded, reference, rtol=1e-4, atol=2e-7).all(1)
        assert same[plausible].all() and plausible.sum() > 96
        mean = dist._coupled_mean(
            means, coeffs, c, [scale_pixels(x[:, k : k + 1]) for k in range(c)]
        )
        logp = dist._component_log_probs(x[:, c : c + 1], mean, log_scales[:, c])
        plausible &= (logp > math.log(torch.finfo(torch.float32).tiny) + 1).all(1)


@pytest.mark.parametrize("channels", [1, 3])
def test_channel_log_probs_sum_to_the_joint_mixture_likelihood(channels: int) -> None:
    m, n = 3, 80
    dist = DiscretizedLogisticMixture(channels, m)
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(n, m, generator=g)
    means = torch.rand(n, channels, m, generator=g) * 2.4 - 1.2
    log_scales = torch.rand(n, channels, m, generator=g) * 4 - 4.5
    coeffs = torch.randn(n, channels, m, generator=g) if channels == 3 else None
    x = random_values(n, channels, seed=6)
    params = pack(logits, means, log_scales, coeffs)
    logp = dist.log_prob(params.view(n, -1, 1, 1), x.view(n, channels, 1, 1).to(torch.uint8))
    joint = _reference_joint_log_likelihood(logits, means, log_scales, coeffs, x)
    torch.testing.assert_close(logp.sum(1).view(n).double(), joint, rtol=1e-5, atol=1e-4)


def test_exact_value_of_a_middle_bin() -> None:
    """One grey logistic, mean 0 (between 127 and 128), scale 1/255: value 128's bin is
    [0, 2/255], so p = sigmoid(2) - sigmoid(0)."""
    dist = DiscretizedLogisticMixture(1, 1)
    params = pack(torch.zeros(1, 1), torch.zeros(1, 1, 1), torch.full((1, 1, 1), -math.log(255)))
    x = torch.tensor([[[[128]]]], dtype=torch.uint8)
    logp = dist.log_prob(params.view(1, -1, 1, 1), x)
    expected = 1 / (1 + math.exp(-2)) - 0.5
    assert logp.item() == pytest.approx(math.log(expected), rel=1e-6)
    pmf = dist.channel_pmf(params, 0, torch.zeros(1, 0, dtype=torch.int64))
    # Symmetric around the mean: 127 and 128 are equally likely.
    assert pmf[0, 127].item() == pytest.approx(pmf[0, 128].item(), rel=1e-5)
    assert pmf[0, 128].item() == pytest.approx(expected, rel=1e-4)


def test_edge_bins_take_the_tails() -> None:
    dist = DiscretizedLogisticMixture(1, 1)
    scale = 0.05
    none = torch.zeros(1, 0, dtype=torch.int64)
    for mean, value in [(0.9, 255), (-0.9, 0)]:
        params = pack(
            torch.zeros(1, 1), torch.full((1, 1, 1), mean), torch.full((1, 1, 1), math.log(scale))
        )
        x = torch.full((1, 1, 1, 1), value, dtype=torch.uint8)
        logp = dist.log_prob(params.view(1, -1, 1, 1), x).item()
        edge = (1 - 1 / 255) if value == 255 else (-1 + 1 / 255)  # inner edge of the bin
        cdf = 1 / (1 + math.exp(-(edge - mean) / scale))
        expected = 1 - cdf if value == 255 else cdf  # everything beyond the inner edge
        assert logp == pytest.approx(math.log(expected), rel=1e-5)
        pmf = dist.channel_pmf(params, 0, none)
        assert pmf[0, value].item() == pytest.approx(expected, rel=1e-4)
    # A mean far beyond the range puts (almost) all mass in the edge bin.
    params = pack(torch.zeros(1, 1), torch.full((1, 1, 1), 3.0), torch.full((1, 1, 1), -3.0))
    assert dist.channel_pmf(params, 0, none)[0, 255].item() > 0.999


def test_rgb_means_follow_the_decoded_values() -> None:
    """G's mean is shifted by tanh(a) * R and B's by tanh(b) * R + tanh(c) * G, using the
    values actually decoded."""
    dist = DiscretizedLogisticMixture(3, 1)
    half = math.atanh(0.5)
    coeffs = torch.tensor([[[half], [0.0], [-half]]])  # R->G 0.5, R->B 0, G->B -0.5
    params = pack(
        torch.zeros(1, 1), torch.zeros(1, 3, 1), torch.full((1, 3, 1), math.log(0.01)), coeffs
    )
    # R = 255 -> +1: G's mean 0.5 -> value 191.25; R = 0 -> -1: mean -0.5 -> 63.75.
    assert dist.channel_pmf(params, 1, torch.tensor([[255]])).argmax().item() == 191
    assert dist.channel_pmf(params, 1, torch.tensor([[0]])).argmax().item() == 64
    # B ignores R here and follows G: G = 255 -> mean -0.5.
    assert dist.channel_pmf(params, 2, torch.tensor([[0, 255]])).argmax().item() == 64
    assert dist.channel_pmf(params, 2, torch.tensor([[255, 0]])).argmax().item() == 191


def test_later_channels_use_the_posterior_mixture_weights() -> None:
    """Two equally likely components, dark (-0.5) and bright (+0.5) in every channel. Once R
    is seen to be bright, G must come from the bright component only: a per-channel mixture
    with the prior weights would put half of G's mass near the dark value."""
    dist = DiscretizedLogisticMixture(3, 2)
    means = torch.tensor([[[-0.5, 0.5]] * 3])
    params = pack(
        torch.zeros(1, 2), means, torch.full((1, 3, 2), math.log(0.01)), torch.zeros(1, 3, 2)
    )
    pmf_g = dist.channel_pmf(params, 1, torch.tensor([[191]]))[0]
    assert pmf_g[181:202].sum().item() > 0.99
    assert pmf_g[54:75].sum().item() < 30 * PROB_FLOOR  # the floor only
    # Without any decoded channel, R is the even mixture.
    pmf_r = dist.channel_pmf(params, 0, torch.zeros(1, 0, dtype=torch.int64))[0]
    assert pmf_r[54:75].sum().item() == pytest.approx(0.5, abs=0.01)


def test_extreme_parameters_stay_finite_with_finite_gradients() -> None:
    dist = DiscretizedLogisticMixture(3, 2)
    n = 6
    logits = torch.tensor([[50.0, -50.0]]).repeat(n, 1)
    means = torch.tensor([-40.0, 0.0, 40.0, 1.0, -1.0, 0.3]).view(n, 1, 1).repeat(1, 3, 2)
    log_scales = torch.tensor([-30.0, 120.0, 5.0, -7.0, 80.0, 0.0]).view(n, 1, 1).repeat(1, 3, 2)
    params = pack(logits, means, log_scales, torch.full((n, 3, 2), 30.0)).requires_grad_()
    x = random_values(n, 3, seed=7).view(n, 3, 1, 1).to(torch.uint8)
    logp = dist.log_prob(params.view(n, -1, 1, 1), x)
    assert torch.isfinite(logp).all()
    logp.sum().backward()
    assert torch.isfinite(params.grad).all()
    for c in range(3):
        pmf = dist.channel_pmf(params.detach(), c, x.view(n, 3)[:, :c].long())
        assert torch.isfinite(pmf).all() and (pmf > 0).all()


def test_sampling_draws_from_the_pmf() -> None:
    dist = DiscretizedLogisticMixture(1, 1)
    params = pack(torch.zeros(1, 1), torch.full((1, 1, 1), 0.5), torch.full((1, 1, 1), -6.0))
    g = torch.Generator().manual_seed(0)
    draws = dist.sample_channel(params.repeat(200, 1), 0, torch.zeros(200, 0).long(), g)
    assert draws.shape == (200,)
    assert ((draws - 191).abs() <= 2).all()  # a sharp logistic at 0.5 -> value 191.25


def test_scale_pixels_maps_the_range_to_minus_one_one() -> None:
    v = scale_pixels(torch.tensor([0, 255], dtype=torch.uint8))
    assert v.dtype == torch.float32 and v.tolist() == [-1.0, 1.0]
