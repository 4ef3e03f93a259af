"""The integer coding path: exact arithmetic, valid tables, the same results whatever runs
them (stepper or parallel pass, batch, threads, CPU kernels), pinned by a golden hash."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import random_image, tiny_pixelcnn

from nncompress.coding import FREQ_TOTAL, Decoder, Encoder
from nncompress.quant import distributions as qd
from nncompress.quant.fixed import ACT_MAX, requant_
from nncompress.quant.pixelcnnpp import IntPixelCNNpp, IntPixelCNNppConfig, from_float
from nncompress.quant.pixelcnnpp import table_sizes as _sizes


def integer_tiny_model(channels: int = 3) -> IntPixelCNNpp:
    """A tiny integer PixelCNN++ made from integers only (numpy's PCG64 stream), so that its
    tables depend on nothing but the integer arithmetic under test."""
    from nncompress.quant.fixed import elu_table, sigmoid_table

    m = IntPixelCNNpp(IntPixelCNNppConfig(channels, 1, 8, 2))
    rng = np.random.default_rng(1234)
    for name, mod in m.named_modules():
        if not hasattr(mod, "shift"):
            continue
        mod.w.copy_(torch.from_numpy(rng.integers(-2500, 2501, mod.w.shape).astype(np.int16)))
        mod.b.copy_(torch.from_numpy(rng.integers(-(2**14), 2**14, mod.b.shape)))
        first = name in ("u_init", "ul_init_top", "ul_init_left")
        mod.shift.fill_(2 if first else 14)
    # The output layer's rows have their own fractional bits (quant.distributions).
    frac = np.full(m.out.shift.shape, qd.LOGIT_FRAC)
    k, block = 2, (3 if channels == 3 else 2)
    for c in range(channels):
        at = k + c * block * k
        frac[at : at + k] = qd.MEAN_FRAC
        if block == 3:
            frac[at + 2 * k : at + 3 * k] = qd.COEF_IN_FRAC
    m.out.shift.copy_(torch.from_numpy(14 + 12 - frac))
    tables = {"elu": elu_table(), "sigmoid": sigmoid_table(), **qd.build_tables()}
    for name, size in _sizes().items():
        assert len(tables[name]) == size
        setattr(m, f"t_{name}", torch.from_numpy(tables[name]))
    return m.eval()


def _image(channels: int, h: int = 6, w: int = 5) -> torch.Tensor:
    rng = np.random.default_rng(7)
    return torch.from_numpy(rng.integers(0, 256, (2, channels, h, w), dtype=np.uint8))


def _all_tables(model, x: torch.Tensor) -> torch.Tensor:
    """g (pixels, C, 256) of every pixel and channel, given the true values."""
    with torch.no_grad():
        p = model.params(x)
    flat = p.permute(0, 2, 3, 1).reshape(-1, p.shape[1])
    xs = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]).long()
    dist, state = model.distribution, model.distribution.coding_state(x.device)
    return torch.stack([dist.coding_pmf(flat, c, xs, state) for c in range(x.shape[1])], 1)


# The sha256 of the tables (int64 little-endian) of integer_tiny_model on _image: any change
# in the integer arithmetic (or in how the model file's tables are built) changes it.
GOLDEN = {
    3: "443478ec204b5553695d145d31dbae6f1ac90cc6929b5eff3fc8eede225222cb",
    1: "6ef996c82886d199784fe7172e990e7f6adb258c36360240042cd4ffa9f1d65f",
}
GOLDEN_TABLES = "80dec45e2930135230109fa14bd6006d334a2b294c683ee9aa83cf842ab066bd"


def test_table_builders_are_pinned():
    from nncompress.quant.fixed import elu_table, sigmoid_table

    h = hashlib.sha256()
    for t in (elu_table(), sigmoid_table(), *qd.build_tables().values()):
        h.update(t.astype("<i4").tobytes())
    assert h.hexdigest() == GOLDEN_TABLES


@pytest.mark.parametrize("channels", [3, 1])
def test_golden_hash_of_the_coding_tables(channels):
    g = _all_tables(integer_tiny_model(channels), _image(channels))
    assert (g >= 0).all() and (g.sum(-1) == qd.G_TOTAL).all()
    digest = hashlib.sha256(g.numpy().astype("<i8").tobytes()).hexdigest()
    assert digest == GOLDEN[channels]


@pytest.mark.parametrize("make", [integer_tiny_model, lambda c: from_float(tiny_pixelcnn(c))])
@pytest.mark.parametrize("channels", [3, 1])
def test_stepper_equals_parallel_pass_exactly(make, channels):
    model = make(channels)
    x = _image(channels, 9, 7)
    with torch.no_grad():
        want = model.params(x)
    st = model.stepper(2, 9, 7)
    for y in range(9):
        for c in range(7):
            got = st.params_at(y, c)
            assert torch.equal(got, want[:, :, y, c]), (y, c)
            st.write(y, c, x[:, :, y, c])


def test_batch_mates_do_not_change_a_tile_s_parameters():
    model = integer_tiny_model(3)
    x = _image(3)
    with torch.no_grad():
        both = model.params(x)
        alone = model.params(x[1:])
    assert torch.equal(both[1:], alone)


def test_requantization_rounds_half_to_even_and_keeps_negation_exact():
    v = torch.tensor([6.0, 10.0, 14.0, -6.0, -10.0, 7.0, 2.0**40], dtype=torch.float64)
    got = requant_(v.clone(), torch.tensor(0.25, dtype=torch.float64))
    assert got.tolist() == [2.0, 2.0, 4.0, -2.0, -2.0, 2.0, ACT_MAX]
    w = torch.arange(-5000, 5000, dtype=torch.float64) * 3
    post = torch.tensor(2.0**-4, dtype=torch.float64)
    assert torch.equal(requant_(-w, post), -requant_(w.clone(), post))


def test_coder_frequencies_are_exactly_g_plus_one():
    """constriction's leaky quantizer reproduces g + 1 of 2^24 exactly: the payload's cost
    matches -log2 of those frequencies, and the tables decode what was encoded."""
    assert qd.FREQ_TOTAL == FREQ_TOTAL
    g = _all_tables(integer_tiny_model(3), _image(3))[:, 0]
    rng = np.random.default_rng(0)
    symbols = rng.integers(0, 256, len(g))
    enc = Encoder()
    table = g.numpy().astype(np.float64)
    enc.encode(symbols, table)
    ideal = -np.log2((table[np.arange(len(g)), symbols] + 1) / FREQ_TOTAL).sum()
    assert abs(enc.num_bits() - ideal) < 64
    assert np.array_equal(Decoder(enc.finish()).decode(table), symbols)


def test_conversion_keeps_the_likelihood():
    fm = tiny_pixelcnn(3, seed=2)
    im = from_float(fm)
    x = torch.from_numpy(np.asarray(random_image("RGB", 12, 10)).transpose(2, 0, 1)[None].copy())
    with torch.no_grad():
        nf, ni = -fm.log_prob(x).sum().item(), -im.log_prob(x).sum().item()
    assert abs(ni / nf - 1) < 0.01


_PORTABLE = """
import sys, numpy as np
from nncompress import api
from PIL import Image
path, mode = sys.argv[1], sys.argv[2]
im = Image.fromarray(np.load(path + ".npy"))
if mode == "encode":
    open(path, "wb").write(api.compress(im, path + ".safetensors", "cpu", tile=8, method="model"))
else:
    out = api.decompress(open(path, "rb").read(), path + ".safetensors", "cpu")
    assert out.tobytes() == im.tobytes()
    print("ok")
"""


def test_files_cross_cpu_kernel_sets(tmp_path: Path):
    """torch picks CPU kernels by ISA; ATEN_CPU_CAPABILITY=default forces the scalar ones.
    A file encoded with this machine's kernels decodes under default, avx2 and its own
    (float files of 0.3 failed here), and one encoded under default decodes here."""
    from nncompress.modelfile import save_model

    path = str(tmp_path / "x.nnc")
    save_model(from_float(tiny_pixelcnn(3, seed=5)), path + ".safetensors")
    np.save(path + ".npy", np.asarray(random_image("RGB", 16, 16, seed=3)))

    def run(step: str, cap: str | None) -> str:
        env = dict(os.environ)
        env.pop("ATEN_CPU_CAPABILITY", None)
        if cap:
            env["ATEN_CPU_CAPABILITY"] = cap
        res = subprocess.run(
            [sys.executable, "-c", _PORTABLE, path, step], env=env, capture_output=True, text=True
        )
        assert res.returncode == 0, res.stderr[-2000:]
        return res.stdout.strip()

    run("encode", None)
    for cap in ("default", "avx2", None):
        assert run("decode", cap) == "ok"
    run("encode", "default")
    assert run("decode", None) == "ok"


@pytest.mark.parametrize(
    "forge,message",
    [
        (lambda m: m.t_sigmoid.__setitem__(5, -1), "table sigmoid"),
        (lambda m: m.t_exp.__setitem__(0, 0), "table exp"),
        (lambda m: m.out.shift.__setitem__(0, 99), "shift outside"),
        (lambda m: m.ul_init_left.shift.__setitem__(0, 3), "different shifts"),
        (lambda m: (m.out.w.fill_(2**15 - 1), m.out.b.fill_(2**52)), "not be exact"),
    ],
)
def test_forged_integer_models_are_refused_at_load(tmp_path: Path, forge, message):
    """Integers that would make a negative frequency, an overflow or a float64 sum that is
    no longer exact: a typed error when the file loads (digest recomputed, as a forger
    would), not a wrong table later."""
    from nncompress.errors import ModelFileError
    from nncompress.modelfile import load_model_file, save_model

    m = integer_tiny_model(3)
    with torch.no_grad():
        forge(m)
    save_model(m, tmp_path / "f.safetensors")
    with pytest.raises(ModelFileError, match=message):
        load_model_file(tmp_path / "f.safetensors")
