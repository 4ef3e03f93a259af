"""Quantization-aware training: the fake-quantized forward IS the exported integer network."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_pixelcnn

from nncompress.quant.pixelcnnpp import from_float
from nncompress.quant.qat import QuantizedForward


@pytest.mark.parametrize("channels", [3, 1])
def test_quantized_forward_equals_the_integer_path_exactly(channels):
    torch.manual_seed(channels)
    model = tiny_pixelcnn(channels, seed=7)
    with torch.no_grad():  # weights away from the init, gates open
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    x = torch.randint(0, 256, (3, channels, 9, 7), dtype=torch.uint8)
    got = QuantizedForward(model)(x)
    with torch.no_grad():
        want = from_float(model).params(x)
    assert got.dtype == torch.float64 and torch.equal(got.detach(), want)


def test_gradients_reach_every_weight_through_the_roundings():
    model = tiny_pixelcnn(3, seed=1)
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    loss = -QuantizedForward(model).log_prob(x).mean()
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert sum(int(g.abs().sum() > 0) for g in grads.values()) >= 0.9 * len(grads)


def test_the_loss_tracks_the_integer_tables_cost():
    """The float mixture of the integer parameters (the training loss) is within 1% of what
    the integer tables code."""
    model = tiny_pixelcnn(3, seed=2)
    x = torch.randint(100, 140, (2, 3, 8, 8), dtype=torch.uint8)
    with torch.no_grad():
        loss = -QuantizedForward(model).log_prob(x).sum().item()
        coded = -from_float(model).log_prob(x).sum().item()
    assert abs(loss / coded - 1) < 0.01


def test_train_quantize_runs_and_exports(tmp_path: Path):
    from PIL import Image

    from nncompress import api
    from nncompress.modelfile import load_model_file
    from nncompress.quant.convert import integer_path
    from nncompress.train.loop import TrainConfig, train

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        im = Image.effect_mandelbrot((24, 24), (-2 + i * 0.1, -1.5, 1, 1.5), 60).convert("RGB")
        im.save(photos / f"{i}.png")
    cfg = TrainConfig(
        data=[str(photos)],
        out=str(tmp_path / "q.safetensors"),
        family="pixelcnnpp",
        model_config={
            "channels": 3,
            "nr_resnet": 1,
            "nr_filters": 8,
            "nr_logistic_mix": 2,
            "dropout": 0.0,
        },
        crop=8,
        batch=4,
        steps=2,
        val_fraction=0.34,
        quantize=True,
        progress=False,
    )
    res = train(cfg, log=lambda *a, **k: None)
    lm = load_model_file(integer_path(res.out))
    im = Image.open(photos / "0.png")
    data = api.compress(im, lm, "cpu", method="model")
    assert api.decompress(data, lm, "cpu").tobytes() == im.tobytes()
    assert res.val_bpd is not None and res.val_bpd > 0
