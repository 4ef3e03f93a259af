"""MADE: autoregressive dependency (by gradients), stepper order and agreement, training,
model files, and the shipped pretrained model against its card."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from nncompress.errors import UnsupportedImageError
from nncompress.modelfile import load_model_file, save_model
from nncompress.models import build_model
from nncompress.models.made import MADE, MARGINAL_PSEUDO_COUNT, MADEConfig, scale_input
from nncompress.train.made import (
    TRAIN_COUNT,
    TrainConfig,
    heldout_nll,
    load_mnist,
    mask_for_step,
    random_shift,
    train_made,
)

REPO = Path(__file__).resolve().parent.parent
PRETRAINED = REPO / "pretrained" / "made-mnist.safetensors"
MNIST = REPO.parent / "shared" / "data" / "mnist" / "mnist_5k.npz"

TINY = {"height": 4, "width": 5, "hidden": (32, 24), "features": 3, "num_masks": 3}


def tiny_made(seed: int = 0, **overrides) -> MADE:
    torch.manual_seed(seed)
    model = MADE(MADEConfig(**{**TINY, "seed": seed, **overrides})).eval()
    with torch.no_grad():  # a non-trivial bias, so that the logits differ per pixel
        model.pixel_bias.normal_()
    return model


def random_tiles(model: MADE, batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    c, h, w = model.channels, model.config.height, model.config.width
    return torch.randint(0, 256, (batch, c, h, w), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("overrides", [{}, {"first_order": "raster"}, {"channels": 2}])
def test_logits_depend_only_on_earlier_pixels(overrides: dict) -> None:
    model = tiny_made(**overrides)
    c, positions = model.channels, model.positions
    inputs = scale_input(random_tiles(model, 2)).requires_grad_(True)
    weights = torch.randn(c * 256, generator=torch.Generator().manual_seed(1))
    for m in range(model.num_masks):
        ranks = model.ranks(m)
        logits = model.logits_from_inputs(inputs, m)  # (B, H*W, C*256)
        seen_any = False
        for p in range(positions):
            (grad,) = torch.autograd.grad((logits[:, p] * weights).sum(), inputs, retain_graph=True)
            depends = grad.abs().sum(0).view(c, positions).amax(0) != 0  # (H*W,)
            later = ranks >= ranks[p]  # the pixel itself and those after it
            assert not depends[later].any(), f"mask {m}: pixel {p} sees a later pixel"
            seen_any |= bool(depends.any())
        assert seen_any, f"mask {m}: no pixel depends on any other (test would be vacuous)"


def test_stepper_order_is_mask_set_zero_ordering() -> None:
    model = tiny_made()
    stepper = model.stepper(2, 4, 5)
    order = stepper.order()
    assert stepper.padding == "zero"
    assert order == model.ordering(0)
    assert sorted(order) == [(y, x) for y in range(4) for x in range(5)]
    assert order != [(y, x) for y in range(4) for x in range(5)]  # random order, not raster
    ranks = model.ranks(0)
    assert [int(ranks[y * 5 + x]) for y, x in order] == list(range(20))


def test_stepper_matches_parallel_pass() -> None:
    model = tiny_made(channels=2)
    x = random_tiles(model, 3)
    want = model.params(x)  # (B, C*256, H, W)
    stepper = model.stepper(3, 4, 5)
    for y, xx in stepper.order():
        got = stepper.params_at(y, xx)  # (B, C*256): only pixels before (y, xx) are written
        torch.testing.assert_close(got, want[:, :, y, xx], rtol=1e-5, atol=1e-5)
        stepper.write(y, xx, x[:, :, y, xx])
    assert torch.equal(stepper.canvas, x)


def test_log_prob_and_image_nll_agree() -> None:
    model = tiny_made(channels=2)
    x = random_tiles(model, 3)
    for m in range(model.num_masks):
        lp = model.log_prob(x, m)
        assert lp.shape == (3, 2, 4, 5)
        torch.testing.assert_close(-lp.sum((1, 2, 3)), model.image_nll(x, m))
    ens = model.ensemble_log_prob(x)
    per_set = torch.stack([-model.image_nll(x, m) for m in range(model.num_masks)])
    assert (ens >= per_set.min(0).values).all() and (ens <= per_set.max(0).values).all()


def test_fit_marginals_sets_per_pixel_frequencies() -> None:
    model = tiny_made(num_masks=1)
    with torch.no_grad():
        model.head_weight.zero_()  # logits are then the per-pixel bias alone
    x = torch.zeros(4, 1, 4, 5, dtype=torch.uint8)
    x[:3, 0, 1, 2] = 7  # pixel (1, 2): value 7 three times, value 0 once
    model.fit_marginals(x)
    lp = model.log_prob(x)
    denom = 4 + 256 * MARGINAL_PSEUDO_COUNT
    assert lp[0, 0, 1, 2].item() == pytest.approx(np.log((3 + MARGINAL_PSEUDO_COUNT) / denom))
    assert lp[3, 0, 1, 2].item() == pytest.approx(np.log((1 + MARGINAL_PSEUDO_COUNT) / denom))
    assert lp[0, 0, 0, 0].item() == pytest.approx(np.log((4 + MARGINAL_PSEUDO_COUNT) / denom))


def test_bad_inputs_raise_typed_errors() -> None:
    model = tiny_made()
    with pytest.raises(UnsupportedImageError, match=r"\(B, 1, 4, 5\)"):
        model.params(torch.zeros(1, 1, 5, 4, dtype=torch.uint8))
    with pytest.raises(UnsupportedImageError, match="4x5 tiles only"):
        model.stepper(1, 8, 8)
    with pytest.raises(ValueError, match="mask_set"):
        model.params(random_tiles(model, 1), mask_set=3)
    with pytest.raises(ValueError, match="first_order"):
        MADEConfig(first_order="spiral")


def test_mask_schedule_and_shift() -> None:
    assert [mask_for_step(s, 3, None) for s in range(6)] == [0, 1, 2, 0, 1, 2]
    sets = [mask_for_step(s, 4, 0.5) for s in range(12)]
    assert sets.count(0) == 6 and sorted(set(sets)) == [0, 1, 2, 3]
    x = torch.arange(1, 17, dtype=torch.uint8).view(1, 1, 4, 4).repeat(8, 1, 1, 1)
    shifted = random_shift(x, 1, torch.Generator().manual_seed(0))
    for img in shifted[:, 0]:
        # A shift keeps a 3x3 block of the original and fills the rest with zeros.
        assert int((img == 0).sum()) in (0, 4, 7)
        nz = img[img != 0]
        assert set(nz.tolist()) <= set(range(1, 17))


def test_training_lowers_the_loss() -> None:
    if not MNIST.is_file():
        pytest.skip(f"{MNIST} not present")
    train_x, _ = load_mnist(MNIST)
    digits = train_x[:16]
    torch.manual_seed(0)
    model = MADE(MADEConfig(hidden=(64, 64), features=2, num_masks=2))
    model.fit_marginals(digits)  # as in real training: start from the per-pixel marginals
    before = heldout_nll(model, digits)
    cfg = TrainConfig(steps=20, batch_size=16, lr=1e-2, warmup_steps=1, time_budget_s=60.0)
    report = train_made(model, digits, None, cfg, log=lambda _: None)
    after = heldout_nll(model, digits)
    assert report.steps == 20
    # Context must help beyond the marginals the model started from.
    assert after < 0.85 * before, (before, after)


@pytest.mark.parametrize("dtype", [None, torch.float16])
def test_save_and_reload_gives_identical_params(tmp_path: Path, dtype: torch.dtype | None) -> None:
    model = tiny_made(seed=3)
    if dtype is not None:  # what the file holds is the rounded model
        with torch.no_grad():
            for t in model.state_dict().values():
                if t.is_floating_point():
                    t.copy_(t.to(dtype).float())
    path = tmp_path / "made.safetensors"
    digest = save_model(model, path, info={"tile": [4, 5]}, dtype=dtype)
    loaded = load_model_file(path)
    assert loaded.digest == digest and loaded.family == "made"
    assert isinstance(loaded.model, MADE)
    assert torch.equal(loaded.model.orders, model.orders)
    x = random_tiles(model, 2)
    for m in range(model.num_masks):
        assert torch.equal(loaded.model.params(x, m), model.params(x, m))


def test_masks_come_from_the_file_not_the_seed(tmp_path: Path) -> None:
    model = tiny_made(seed=0)
    other = tiny_made(seed=1)
    assert not torch.equal(model.orders, other.orders)
    with torch.no_grad():
        model.orders.copy_(other.orders)  # the file, not the config's seed, must decide
    path = tmp_path / "made.safetensors"
    save_model(model, path)
    loaded = load_model_file(path).model
    assert torch.equal(loaded.orders, other.orders)
    assert loaded.stepper(1, 4, 5).order() == other.ordering(0)


def test_build_model_accepts_json_config() -> None:
    cfg = {**TINY, "hidden": [32, 24]}  # JSON turns the tuple into a list
    model = build_model("made", cfg)
    assert model.config.hidden == (32, 24)
    assert model.fixed_tile == (4, 5)
    assert MADE.fixed_tile == (28, 28)


@pytest.mark.pretrained
def test_pretrained_made_matches_its_card() -> None:
    if not PRETRAINED.is_file():
        pytest.skip(f"{PRETRAINED} not present")
    loaded = load_model_file(PRETRAINED)
    assert loaded.family == "made" and loaded.info["tile"] == [28, 28]
    _, held_out = load_mnist(MNIST)
    assert len(held_out) == 500 and TRAIN_COUNT == 4500
    with torch.inference_mode():
        nll = heldout_nll(loaded.model, held_out)
    recorded = loaded.info["heldout_nats_per_digit"]
    card = PRETRAINED.with_suffix(".md").read_text()
    row = re.search(r"\| MADE, mask set 0[^|]*\| ([\d.]+) \| ([\d.]+) \|", card)
    assert row is not None, "card lacks the mask set 0 row"
    assert float(row.group(1)) == pytest.approx(recorded, rel=1e-3)
    assert nll == pytest.approx(recorded, rel=0.01)
    assert nll / 784 / np.log(2) == pytest.approx(float(row.group(2)), rel=0.01)
