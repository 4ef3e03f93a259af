"""PixelCNN++: the autoregressive property by gradients, the cached stepper against the
naive re-run, shapes, greyscale, dropout, model files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nncompress.errors import UnsupportedImageError
from nncompress.modelfile import load_model_file, save_model
from nncompress.models import NaiveStepper, build_model
from nncompress.models.pixelcnnpp import PixelCNNpp, PixelCNNppConfig, level_sizes


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models are dominated by per-op overhead, which extra intra-op threads only
    increase (badly so on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_model(
    channels: int = 3, nr_resnet: int = 1, filters: int = 8, nr_mix: int = 2, seed: int = 0
) -> PixelCNNpp:
    """A tiny model with random, non-trivial weights (gains and biases randomised too, so
    that every path carries signal), in eval mode."""
    torch.manual_seed(seed)
    model = build_model(
        "pixelcnnpp",
        {
            "channels": channels,
            "nr_resnet": nr_resnet,
            "nr_filters": filters,
            "nr_logistic_mix": nr_mix,
            "dropout": 0.0,
        },
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".g"):
                p.uniform_(0.5, 1.5)
            elif name.endswith(".b"):
                p.normal_(0.0, 0.3)
    return model.eval()


def random_images(b: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, c, h, w), generator=g, dtype=torch.uint8)


def test_config_registry_and_shapes() -> None:
    model = make_model(nr_mix=3)
    assert isinstance(model, PixelCNNpp) and model.family == "pixelcnnpp"
    assert model.Config is PixelCNNppConfig
    assert model.config_dict() == {
        "channels": 3,
        "nr_resnet": 1,
        "nr_filters": 8,
        "nr_logistic_mix": 3,
        "dropout": 0.0,
    }
    x = random_images(2, 3, 5, 7)
    assert model.params(x).shape == (2, 30, 5, 7)
    logp = model.log_prob(x)
    assert logp.shape == (2, 3, 5, 7) and torch.isfinite(logp).all()
    assert level_sizes(5, 7) == [(5, 7), (3, 4), (2, 2)]
    with pytest.raises(ValueError, match="1 or 3 channels"):
        PixelCNNppConfig(channels=2)


def test_rejects_images_of_the_wrong_shape() -> None:
    model = make_model()
    with pytest.raises(UnsupportedImageError, match=r"expected \(B, 3, H, W\)"):
        model.params(random_images(1, 1, 4, 4))
    with pytest.raises(UnsupportedImageError, match="empty"):
        model.params(torch.zeros(1, 3, 0, 4, dtype=torch.uint8))


def _positions(h: int, w: int) -> list[tuple[int, int]]:
    """Row starts and ends, corners, the middle."""
    cand = [(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1), (h // 2, 0), (h // 2, w - 1)]
    cand.append((h // 2, w // 2))
    return sorted(set(cand))


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("size", [(5, 7), (8, 8), (1, 6), (6, 1), (9, 4)])
def test_parallel_pass_is_autoregressive(channels: int, size: tuple[int, int]) -> None:
    """The parameters at pixel i have zero gradient w.r.t. every subpixel of pixels >= i in
    raster order, and a non-zero one w.r.t. the left, upper and upper-right neighbours (the
    last shows there is no blind spot)."""
    h, w = size
    model = make_model(channels=channels)
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(1, channels, h, w, generator=g) * 255).requires_grad_()
    raster = torch.arange(h * w).view(h, w)
    for i, j in _positions(h, w):
        params = model.params(x)[0, :, i, j]
        weights = torch.randn(params.shape, generator=g)
        (grad,) = torch.autograd.grad((params * weights).sum(), x)
        moved = grad[0].abs().sum(0)  # (h, w)
        future = raster >= i * w + j
        assert (moved[future] == 0).all(), f"params at {(i, j)} see the future"
        neighbours = [(i, j - 1), (i - 1, j), (i - 1, j + 1), (i - 1, j - 1)]
        for a, b in neighbours:
            if 0 <= a < h and 0 <= b < w:
                assert moved[a, b] > 0, f"params at {(i, j)} ignore pixel {(a, b)}"


def _compare_with_naive(model: PixelCNNpp, h: int, w: int, batch: int = 3) -> float:
    """Drive the cached and the naive stepper through the same values; returns the largest
    difference of params_at relative to the parameters' scale."""
    images = random_images(batch, model.channels, h, w, seed=h * 100 + w)
    cached = model.stepper(batch, h, w)
    naive = NaiveStepper(model, batch, h, w)
    worst = 0.0
    for y, x in cached.order():
        with torch.no_grad():
            a, b = cached.params_at(y, x), naive.params_at(y, x)
        assert a.shape == b.shape == (batch, model.distribution.num_params)
        assert a.dtype == torch.float32
        worst = max(worst, float((a - b).abs().max() / b.abs().max().clamp_min(1.0)))
        cached.write(y, x, images[:, :, y, x])
        naive.write(y, x, images[:, :, y, x])
    return worst


@pytest.mark.parametrize("size", [(8, 8), (7, 5), (1, 6), (5, 1), (16, 16), (12, 20), (1, 1)])
def test_cached_stepper_matches_naive(size: tuple[int, int]) -> None:
    model = make_model(filters=12, nr_mix=3, seed=2)
    assert _compare_with_naive(model, *size) < 1e-4


def test_cached_stepper_matches_naive_deeper_and_grey() -> None:
    model = make_model(channels=1, nr_resnet=2, filters=10, nr_mix=2, seed=3)
    assert _compare_with_naive(model, 9, 13, batch=2) < 1e-4


def test_cached_stepper_matches_naive_without_gated_blocks() -> None:
    """nr_resnet 0: the up pass is only the level input, which the next level's stride-2
    conv then reads raw (and the down pass has one block below the coarsest level)."""
    model = make_model(nr_resnet=0, filters=8, nr_mix=2, seed=4)
    assert _compare_with_naive(model, 11, 9) < 1e-4


def test_cached_stepper_depends_on_the_canvas() -> None:
    """The comparison above is not vacuous: different earlier values change the
    parameters of later pixels."""
    model = make_model(seed=4)
    outs = []
    for seed in (0, 1):
        images = random_images(1, 3, 4, 4, seed=seed)
        st = model.stepper(1, 4, 4)
        for y, x in st.order():
            p = st.params_at(y, x)
            st.write(y, x, images[:, :, y, x])
        outs.append(p)
    assert (outs[0] - outs[1]).abs().max() > 1e-3


def test_stepper_requires_raster_order() -> None:
    st = make_model().stepper(2, 3, 3)
    with pytest.raises(RuntimeError, match="raster order"):
        st.params_at(0, 1)
    st.params_at(0, 0)
    with pytest.raises(RuntimeError, match="raster order"):
        st.params_at(1, 0)


def test_greyscale_model() -> None:
    model = make_model(channels=1, nr_mix=4)
    x = random_images(2, 1, 6, 5)
    assert model.params(x).shape == (2, 12, 6, 5)
    logp = model.log_prob(x)
    assert logp.shape == (2, 1, 6, 5) and torch.isfinite(logp).all()
    pmf = model.distribution.channel_pmf(model.stepper(2, 6, 5).params_at(0, 0), 0, x[:, :0, 0, 0])
    assert pmf.shape == (2, 256)


def test_dropout_only_in_training() -> None:
    torch.manual_seed(0)
    model = build_model("pixelcnnpp", {"nr_resnet": 1, "nr_filters": 8, "nr_logistic_mix": 2})
    x = random_images(1, 3, 6, 6)
    model.train()
    assert not torch.equal(model.params(x), model.params(x))
    model.eval()
    assert torch.equal(model.params(x), model.params(x))


def test_every_parameter_is_used() -> None:
    model = make_model()
    model.log_prob(random_images(2, 3, 8, 8)).sum().backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert unused == []


def test_model_file_round_trip(tmp_path: Path) -> None:
    model = make_model(nr_mix=3)
    path = tmp_path / "p.safetensors"
    save_model(model, path, info={"tile": [8, 8]})
    loaded = load_model_file(path).model
    x = random_images(2, 3, 8, 8)
    assert torch.equal(loaded.params(x), model.params(x))


def test_corrupted_truncated_and_foreign_model_files_are_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from nncompress.errors import ModelFileError

    good = tmp_path / "p.safetensors"
    save_model(make_model(nr_mix=3), good, info={"tile": [8, 8]})
    raw = good.read_bytes()
    flipped = bytearray(raw)
    flipped[-5] ^= 0x10  # a bit of the last weight tensor
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(foreign), metadata={"format": "pt"})
    cases = {
        "flipped.safetensors": (bytes(flipped), "weights do not match their digest"),
        "short.safetensors": (raw[: len(raw) // 2], "not a readable model file"),
        "png.safetensors": (b"\x89PNG\r\n\x1a\n" + bytes(100), "not a readable model file"),
    }
    for name, (data, _) in cases.items():
        (tmp_path / name).write_bytes(data)
    for name, (_, needle) in cases.items():
        with pytest.raises(ModelFileError) as e:
            load_model_file(tmp_path / name)
        assert needle in str(e.value) and name in str(e.value)
    with pytest.raises(ModelFileError, match="not an nncompress model file"):
        load_model_file(foreign)
    with pytest.raises(ModelFileError, match="model file not found"):
        load_model_file(tmp_path / "missing.safetensors")


# Pixel steps: how many levels compute, and the column parity at the coarsest of them.
PIXEL_KEYS = {("pixel", n, parity) for n in (1, 2, 3) for parity in (0, 1)}
ROW_KEYS = {("row", n) for n in (1, 2, 3)}


def test_steps_go_through_the_runner_with_few_keys() -> None:
    """Pixel steps and row starts depend on the position only through their key (how many
    levels compute) and the stepper's index buffer: what lets CUDA graphs replay them. A
    recording runner sees 3 pixel keys and 3 row-start keys (rows 0 and 1 run as they
    are), and the results are those of the plain runner."""
    model = make_model(filters=12, nr_mix=3, seed=2)
    images = random_images(2, 3, 19, 21, seed=5)
    plain, recorded = model.stepper(2, 19, 21), model.stepper(2, 19, 21)
    keys: list = []
    recorded.runner = lambda key, fn: (keys.append(key), fn())[1]
    for y, x in plain.order():
        with torch.no_grad():
            assert torch.equal(plain.params_at(y, x), recorded.params_at(y, x))
        plain.write(y, x, images[:, :, y, x])
        recorded.write(y, x, images[:, :, y, x])
    assert len(keys) == 19 * 21 + (19 - 2)
    assert set(keys) == PIXEL_KEYS | ROW_KEYS


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_steps_match_plain_steps() -> None:
    from nncompress.runtime import GraphRunner, coding_context

    dev = torch.device("cuda")
    model = make_model(filters=12, nr_mix=3, seed=2).to(dev)
    images = random_images(5, 3, 17, 18, seed=6)
    with coding_context(dev, 1):
        plain, graphed = model.stepper(5, 17, 18), model.stepper(5, 17, 18)
        graphed.runner = runner = GraphRunner()
        for y, x in plain.order():
            a, b = plain.params_at(y, x).clone(), graphed.params_at(y, x)
            assert float((a - b).abs().max()) < 1e-5
            plain.write(y, x, images[:, :, y, x].to(dev))
            graphed.write(y, x, images[:, :, y, x])  # from the host, as the coder writes
        assert set(runner.graphs) == PIXEL_KEYS | ROW_KEYS
