"""The integer MADE (made-int): stepper and parallel pass give the same integers, valid
tables, the autoregressive property in the coding order, conversion close to the float
model, API round trips, checks of forged files, and a golden hash of the tables."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import model_part, random_image
from test_made import tiny_made

from nncompress import api
from nncompress.errors import ModelFileError, UnsupportedImageError
from nncompress.modelfile import LoadedModel, export_tensors, load_model_file, save_model
from nncompress.quant import distributions as qd
from nncompress.quant.convert import to_integer
from nncompress.quant.made import IntMADE, IntMADEConfig, from_float

H, W = 4, 5
HIDDEN = (16, 12)
FEATURES = 3


def integer_tiny_made(channels: int = 1) -> IntMADE:
    """A tiny integer MADE made from integers only (numpy's PCG64 stream): a random order,
    hidden degrees and masks built as the float MADE builds them, masked int16 weights; so
    its tables depend on nothing but the integer arithmetic under test."""
    rng = np.random.default_rng(4321)
    n = H * W
    m = IntMADE(IntMADEConfig(channels, H, W, HIDDEN, FEATURES))
    order = rng.permutation(n)
    ranks = np.empty(n, dtype=np.int64)
    ranks[order] = np.arange(n)
    prev, low, masks = np.tile(ranks, channels), 0, []
    for width in HIDDEN:
        deg = rng.integers(low, n - 1, width)
        masks.append(deg[:, None] >= prev[None, :])
        prev, low = deg, int(deg.min())
    masks.append(np.repeat(ranks, FEATURES)[:, None] > prev[None, :])
    with torch.no_grad():
        for layer, mask, shift in zip(m._layers(), masks, (8, 12, 12), strict=True):
            w = rng.integers(-2500, 2501, mask.shape) * mask
            layer.w.copy_(torch.from_numpy(w.astype(np.int16)))
            layer.b.copy_(torch.from_numpy(rng.integers(-(2**14), 2**14, mask.shape[0])))
            layer.shift.fill_(shift)
        m.head_w.copy_(torch.from_numpy(rng.integers(-2500, 2501, m.head_w.shape).astype(np.int16)))
        m.head_shift.fill_(13)
        pb = rng.integers(-4096, 4097, m.pixel_bias.shape)
        m.pixel_bias.copy_(torch.from_numpy(pb.astype(np.int16)))
        m.order.copy_(torch.from_numpy(order.astype(np.int32)))
        m.t_exp.copy_(torch.from_numpy(qd.build_tables()["exp"]))
    assert m.integrity_problem() is None
    return m.eval()


def as_loaded(model, name: str = "test") -> LoadedModel:
    model = to_integer(model)
    digest = weights_digest_of(model)
    return LoadedModel(name=name, digest=digest, model=model, info={})


def weights_digest_of(model) -> bytes:
    from nncompress.modelfile import weights_digest

    return weights_digest(model.family, model.config_dict(), export_tensors(model))


def _tiles(channels: int, batch: int = 3, seed: int = 7) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, (batch, channels, H, W), dtype=np.uint8))


def _all_tables(model, x: torch.Tensor) -> torch.Tensor:
    """g (pixels, C, 256) of every pixel and channel (raster order of the tiles)."""
    p = model.params(x)
    flat = p.permute(0, 2, 3, 1).reshape(-1, p.shape[1])
    xs = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]).long()
    dist = model.distribution
    state = dist.coding_state(x.device)
    return torch.stack([dist.coding_pmf(flat, c, xs, state) for c in range(x.shape[1])], 1)


# sha256 of the tables (int64 little-endian) of integer_tiny_made on _tiles: any change in
# the integer arithmetic (or in how the exp table is built) changes it.
GOLDEN = {
    1: "1a8ce814ffad1ce0bb526d2c84f0b20441d90b848918f8275266e0d0b1c9e8b4",
    3: "c277cb8ccde68fd84f2f420215e538135bac21003eac74a1af3036c58393512e",
}


@pytest.mark.parametrize("channels", [1, 3])
def test_golden_hash_of_the_coding_tables(channels):
    g = _all_tables(integer_tiny_made(channels), _tiles(channels))
    assert (g >= 0).all() and (g.sum(-1) == qd.G_TOTAL).all()
    assert len(set(g.sum(1).flatten().tolist())) > 1  # not one table everywhere
    digest = hashlib.sha256(g.numpy().astype("<i8").tobytes()).hexdigest()
    assert digest == GOLDEN[channels]


def _made_models():
    return [
        ("integers", lambda c: integer_tiny_made(c)),
        ("converted", lambda c: from_float(tiny_made(channels=c))),
        ("converted-raster", lambda c: from_float(tiny_made(channels=c, first_order="raster"))),
    ]


@pytest.mark.parametrize("name,make", _made_models(), ids=[n for n, _ in _made_models()])
@pytest.mark.parametrize("channels", [1, 2])
def test_stepper_equals_parallel_pass_exactly(name, make, channels):
    model = make(channels)
    x = _tiles(channels)
    want = model.params(x)
    st = model.stepper(3, H, W)
    assert st.padding == "zero" and st.order() == model.ordering()
    assert sorted(st.order()) == [(y, c) for y in range(H) for c in range(W)]
    for y, c in st.order():
        got = st.params_at(y, c)
        assert got.dtype == torch.float64
        assert torch.equal(got, want[:, :, y, c]), (y, c)
        st.write(y, c, x[:, :, y, c])
    assert torch.equal(st.canvas, x)


def test_converted_order_is_the_float_model_s_mask_set_zero():
    fm = tiny_made(channels=1)
    im = from_float(fm)
    assert im.ordering() == fm.ordering(0) == fm.stepper(1, H, W).order()
    assert im.stepper(1, H, W).order() == fm.stepper(1, H, W).order()


@pytest.mark.parametrize("channels", [1, 3])
def test_tables_are_valid(channels):
    model = from_float(tiny_made(channels=channels))
    g = _all_tables(model, _tiles(channels, batch=4))
    assert g.dtype == torch.int64
    assert (g >= 0).all() and (g.sum(-1) == qd.G_TOTAL).all()


def test_batch_mates_do_not_change_a_tile_s_parameters():
    model = integer_tiny_made(1)
    x = _tiles(1, batch=4)
    assert torch.equal(model.params(x)[2:3], model.params(x[2:3]))


@pytest.mark.parametrize("name,make", _made_models()[:2], ids=["integers", "converted"])
def test_parameters_do_not_depend_on_later_pixels(name, make):
    """Change every pixel at or after rank r (in the coding order): the parameters of the
    pixel of rank r stay the same integers (rounding makes gradients useless here); they
    do change for some r when earlier pixels change (the test is not vacuous)."""
    model = make(2)
    order = model.ordering()
    x = _tiles(2, batch=2)
    base = model.params(x)
    rng = np.random.default_rng(3)
    sensitive = 0
    for r, (y, c) in enumerate(order):
        later = x.clone()
        for yy, cc in order[r:]:
            later[:, :, yy, cc] = torch.from_numpy(rng.integers(0, 256, (2, 2), dtype=np.uint8))
        assert torch.equal(model.params(later)[:, :, y, c], base[:, :, y, c]), r
        earlier = x.clone()
        for yy, cc in order[:r]:
            earlier[:, :, yy, cc] = 255 - earlier[:, :, yy, cc]
        sensitive += not torch.equal(model.params(earlier)[:, :, y, c], base[:, :, y, c])
    assert sensitive > len(order) // 2


@pytest.mark.parametrize("channels", [1, 3])
def test_conversion_keeps_the_likelihood(channels):
    fm = tiny_made(seed=2, channels=channels)
    im = from_float(fm)
    mode = "L" if channels == 1 else "RGB"
    arr = np.asarray(random_image(mode, 4 * W, 3 * H, seed=1)).reshape(3 * H, 4 * W, channels)
    x = torch.from_numpy(
        arr.reshape(3, H, 4, W, channels).transpose(0, 2, 4, 1, 3).reshape(-1, channels, H, W)
    )
    with torch.no_grad():
        nf, ni = -fm.log_prob(x).sum().item(), -im.log_prob(x).sum().item()
    assert abs(ni / nf - 1) < 0.01


@pytest.mark.parametrize("mode,size", [("L", (11, 9)), ("L", (5, 4)), ("RGB", (7, 6))])
def test_round_trip_through_the_api(mode, size):
    """Whole and partial tiles (zero padding, not coded), one file then several together."""
    channels = 1 if mode == "L" else 3
    lm = as_loaded(tiny_made(seed=1, channels=channels))
    assert lm.family == "made-int"
    im = random_image(mode, *size, seed=size[0])
    res = api.compress_detailed([im], lm, "cpu", method="model")[0]
    assert res.method == "model" and res.model_name == lm.name
    part = model_part(res.data)[0]
    assert (part.tile_h, part.tile_w) == (H, W)
    out = api.decompress(res.data, lm, "cpu")
    assert out.mode == mode and np.array_equal(np.asarray(out), np.asarray(im))
    other = random_image(mode, *size, seed=99)
    blobs = api.compress_many([im, other], lm, "cpu", method="model")
    assert blobs[0] == res.data
    for max_batch in (1, 64):
        back = api.decompress_many(blobs, lm, "cpu", max_batch=max_batch)
        assert [b.tobytes() for b in back] == [im.tobytes(), other.tobytes()]
    # The payload's cost is what scoring predicts (the same integer tables).
    assert res.model_bits_per_subpixel == pytest.approx(api.score([im], lm, "cpu")[0], rel=1e-6)


def test_model_file_round_trip_and_bad_tiles(tmp_path: Path):
    m = integer_tiny_made(1)
    digest = save_model(m, tmp_path / "m.safetensors")
    lm = load_model_file(tmp_path / "m.safetensors")
    assert lm.digest == digest and lm.family == "made-int" and lm.model.fixed_tile == (H, W)
    x = _tiles(1)
    assert torch.equal(lm.model.params(x), m.params(x))
    with pytest.raises(UnsupportedImageError, match=r"\(B, 1, 4, 5\)"):
        m.params(torch.zeros(1, 1, 5, 4, dtype=torch.uint8))
    with pytest.raises(UnsupportedImageError, match="4x5 tiles only"):
        m.stepper(1, 8, 8)


def _swap_order(m):
    m.order[0] = m.order[1]


def _noncausal(m):
    """A non-zero weight from the input of the last-coded pixel to a first-layer unit."""
    last = int(m.order[-1])
    m.hidden_layers[0].w[:, last] = 7


@pytest.mark.parametrize(
    "forge,message",
    [
        (_swap_order, "not a permutation"),
        (lambda m: m.t_exp.__setitem__(0, 0), "table exp"),
        (lambda m: m.hidden_layers[1].shift.__setitem__(0, 99), "shift outside"),
        (lambda m: m.head_shift.__setitem__(3, -1), "head: shift outside"),
        (lambda m: m.feature_layer.b.__setitem__(0, 2**53), "not be exact"),
        (lambda m: m.head_shift.__setitem__(0, 50), "head: its accumulator"),
        (_noncausal, "not autoregressive"),
    ],
)
def test_forged_integer_mades_are_refused_at_load(tmp_path: Path, forge, message):
    m = integer_tiny_made(1)
    with torch.no_grad():
        forge(m)
    save_model(m, tmp_path / "f.safetensors")
    with pytest.raises(ModelFileError, match=message):
        load_model_file(tmp_path / "f.safetensors")
