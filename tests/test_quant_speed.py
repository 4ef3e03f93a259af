"""The integer path's fast kernels change no integer: coded payloads pinned from the code
before any of them existed (sha256 of the coded streams of small images with tiny integer
models, and of a crop with the shipped small photo model), and each exact kernel checked
against the plain arithmetic it replaces, at the extremes of its domain."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, model_part, random_image
from test_quant import integer_tiny_model

from nncompress import api
from nncompress.modelfile import save_model
from nncompress.quant import distributions as qd
from nncompress.quant.fixed import elu_table, sigmoid_table
from nncompress.quant.pixelcnnpp import IntPixelCNNpp, IntPixelCNNppConfig
from nncompress.quant.pixelcnnpp import table_sizes as _sizes


def int_model(
    channels: int, nr_resnet: int, filters: int, mix: int, *, seed: int, w_max: int, shift: int
) -> IntPixelCNNpp:
    """An integer PixelCNN++ of integers from numpy's PCG64 stream (weights in [-w_max,
    w_max], every hidden layer shifted by ``shift``): large weights with a small shift
    drive the activations to +-ACT_MAX, the ends of every exact kernel's domain."""
    m = IntPixelCNNpp(IntPixelCNNppConfig(channels, nr_resnet, filters, mix))
    rng = np.random.default_rng(seed)
    for name, mod in m.named_modules():
        if not hasattr(mod, "shift"):
            continue
        w = rng.integers(-w_max, w_max + 1, mod.w.shape).astype(np.int16)
        mod.w.copy_(torch.from_numpy(w))
        mod.b.copy_(torch.from_numpy(rng.integers(-(2**20), 2**20, mod.b.shape)))
        first = name in ("u_init", "ul_init_top", "ul_init_left")
        mod.shift.fill_(2 if first else shift)
    frac = np.full(m.out.shift.shape, qd.LOGIT_FRAC)
    block = 3 if channels == 3 else 2
    for c in range(channels):
        at = mix + c * block * mix
        frac[at : at + mix] = qd.MEAN_FRAC
        if block == 3:
            frac[at + 2 * mix : at + 3 * mix] = qd.COEF_IN_FRAC
    m.out.shift.copy_(torch.from_numpy(shift + 12 - frac))
    tables = {"elu": elu_table(), "sigmoid": sigmoid_table(), **qd.build_tables()}
    for name in _sizes():
        setattr(m, f"t_{name}", torch.from_numpy(tables[name]))
    return m.eval()


# name -> (model maker, image mode, width, height, tile, sha256 of the coded payload), the
# digests computed with the code before the integer path's fast kernels.
CASES = {
    "tiny-rgb": (
        lambda: integer_tiny_model(3),
        "RGB",
        20,
        13,
        8,
        "cf30fdf604b2778f0a8c042cb5349b5cc5f5e5ec7f24062f0923602c93b189b0",
    ),
    "saturating-grey": (
        lambda: int_model(1, 2, 16, 3, seed=11, w_max=2**15 - 1, shift=16),
        "L",
        19,
        17,
        16,
        "2c1f71d28170a126c65c0a846fda698ec3bdede2c0a5bb6d38c1ae0932e3e16c",
    ),
    "odd-rgb": (
        lambda: int_model(3, 1, 5, 1, seed=12, w_max=3000, shift=13),
        "RGB",
        11,
        9,
        8,
        "4eed1412c81348c8fcb7af2d77ea468bc3179fea1989764592288e5c347c3c90",
    ),
    "no-resnet-rgb": (
        lambda: int_model(3, 0, 24, 4, seed=13, w_max=6000, shift=14),
        "RGB",
        9,
        10,
        8,
        "04b719858d554afc89cc3e7a510b29f386d55066715dda00b0f96873ded0fd6a",
    ),
}


def _payload_digest(data: bytes) -> str:
    """The model part's coder streams: byte-identical to the payload of format 4."""
    return hashlib.sha256(model_part(data)[1]).hexdigest()


@pytest.mark.parametrize("case", sorted(CASES))
def test_coded_payloads_are_pinned(tmp_path: Path, case: str):
    make, mode, w, h, tile, digest = CASES[case]
    path = tmp_path / "m.safetensors"
    save_model(make(), path)
    im = random_image(mode, w, h, seed=4)
    data = api.compress(im, path, "cpu", tile=tile, method="model")
    assert _payload_digest(data) == digest
    assert api.decompress(data, path, "cpu").tobytes() == im.tobytes()


SMALL = REPO / "pretrained" / "pixelcnnpp-photo-small-int.safetensors"
SMALL_DIGEST = "86ef157b52b79c3e8f1e1037c177a2522cb5fceb73386ebd294347d9ed5bb4f8"


@pytest.mark.pretrained
@pytest.mark.skipif(not SMALL.is_file(), reason="pretrained small model not present")
def test_shipped_small_model_payload_is_pinned():
    im = random_image("RGB", 40, 36, seed=9)
    data = api.compress(im, SMALL, "cpu", tile=32, method="model")
    assert _payload_digest(data) == SMALL_DIGEST


# ----------------------------------------------------------------------------------------
# The coding tables: the code before the fast path, as the reference


def _ref_take(table, x, lo, hi):
    return table.take(x.clamp(lo, hi) - lo)


def _ref_tables(t: dict[str, torch.Tensor], channels: int, m: int, params, prev):
    """g (N, 256) per channel, as quant.distributions computed them before the fast path
    (int64 throughout; t: the tables as int64)."""
    sig_max, sig_frac, z_shift = qd.SIG_MAX, qd.SIG_FRAC, qd._Z_SHIFT

    def components(mean, log_scale):
        edges = (torch.arange(1, 256) - 128) << qd.MEAN_FRAC
        inv = _ref_take(t["inv_scale"], log_scale, qd.LOG_SCALE_LO, qd.LOG_SCALE_HI)
        z = ((edges - mean.unsqueeze(2)) * inv.unsqueeze(2) + (1 << (z_shift - 1))) >> z_shift
        cdf = _ref_take(t["sigmoid"], z, -sig_max, sig_max)
        lo = torch.zeros_like(cdf[..., :1])
        full = torch.cat([lo, cdf, lo + (1 << sig_frac)], 2)
        return full[..., 1:] - full[..., :-1]

    def frequencies(weights, pmfs):
        mix = (weights.unsqueeze(2) * pmfs).sum(1)
        total = weights.sum(1, keepdim=True) << sig_frac
        g = torch.div(mix * qd.G_TOTAL, total, rounding_mode="floor")
        rem = qd.G_TOTAL - g.sum(1, keepdim=True)
        first_max = mix.argmax(1, keepdim=True)
        return g + (torch.arange(256) == first_max) * rem

    def weights(lw):
        return _ref_take(t["exp"], lw.amax(1, keepdim=True) - lw, 0, qd.EXP_MAX)

    p = params.long()
    n, block = p.shape[0], (3 if channels == 3 else 2)
    blocks = p[:, m:].reshape(n, channels, block, m)
    lw, means, log_scales = p[:, :m], blocks[:, :, 0], blocks[:, :, 1]
    if channels == 3:
        coefs = _ref_take(t["tanh"], blocks[:, :, 2], -qd.COEF_MAX, qd.COEF_MAX)
    out, comp = [], None
    for c in range(channels):
        if c == 0:
            mean = means[:, 0]
        else:
            x = prev[:, c - 1 : c]
            b = comp.gather(2, x.unsqueeze(1).expand(-1, m, 1)).squeeze(2)
            lw = lw + t["log"].take(b)
            s0 = 2 * prev[:, 0:1] - 255
            acc = (
                coefs[:, 0] * s0
                if c == 1
                else coefs[:, 1] * s0 + coefs[:, 2] * (2 * prev[:, 1:2] - 255)
            )
            shift = qd.COEF_FRAC + 1 - qd.MEAN_FRAC
            mean = means[:, c] + ((acc + (1 << (shift - 1))) >> shift)
        comp = components(mean.clamp(-qd.MEAN_MAX, qd.MEAN_MAX), log_scales[:, c])
        out.append(frequencies(weights(lw), comp))
    return out


def _forged_tables(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Tables that pass the load-time checks (quant.distributions.tables_problem) but are
    nothing like the built ones: a sigmoid that is monotone but starts above 0 and ends
    below 2^16 with long flat runs, inverse scales up to 2^28 - 1, and so on."""
    sizes = _sizes()
    steps = rng.integers(0, 3, sizes["sigmoid"]) * (rng.random(sizes["sigmoid"]) < 0.3)
    sig = np.minimum(np.cumsum(steps) + 17, 2**16 - 5)
    return {
        "sigmoid": sig,
        "inv_scale": rng.integers(1, 2**28, sizes["inv_scale"]),
        "exp": np.concatenate([[2**16], rng.integers(0, 2**16 + 1, sizes["exp"] - 1)]),
        "log": rng.integers(-(2**20), 1, sizes["log"]),
        "tanh": rng.integers(-(2**15), 2**15 + 1, sizes["tanh"]),
        "elu": rng.integers(-(2**13), 1, sizes["elu"]),
    }


def _extreme_params(rng: np.random.Generator, n: int, channels: int, m: int) -> torch.Tensor:
    """Parameters over and beyond every clamp: logits +-2^24, means +-2^20, log-scales
    around both ends of the table and beyond, coefficients beyond +-COEF_MAX."""
    block = 3 if channels == 3 else 2
    p = np.empty((n, m * (1 + block * channels)), dtype=np.float64)
    p[:, :m] = rng.integers(-(2**24), 2**24, (n, m))
    p[: n // 4, :m] = rng.integers(-2000, 2000, (n // 4, m))  # close logits: mixed weights
    for c in range(channels):
        at = m + c * block * m
        p[:, at : at + m] = rng.integers(-(2**20), 2**20, (n, m))
        p[: n // 2, at : at + m] = rng.integers(-(2**15), 2**15, (n // 2, m))
        lo, hi = qd.LOG_SCALE_LO, qd.LOG_SCALE_HI
        p[:, at + m : at + 2 * m] = rng.integers(lo - 3000, hi + 3000, (n, m))
        if block == 3:
            p[:, at + 2 * m : at + 3 * m] = rng.integers(-2 * qd.COEF_MAX, 2 * qd.COEF_MAX, (n, m))
    return torch.from_numpy(p)


@pytest.mark.parametrize("forged", [False, True])
@pytest.mark.parametrize("channels,m", [(3, 1), (3, 5), (1, 10), (3, 64)])
def test_coding_tables_equal_the_plain_int64_arithmetic(forged, channels, m):
    rng = np.random.default_rng(100 + m + channels + 7 * forged)
    if forged:
        tables = _forged_tables(rng)
        assert qd.tables_problem({k: torch.from_numpy(v) for k, v in tables.items()}) is None
    else:
        tables = {"elu": elu_table(), "sigmoid": sigmoid_table(), **qd.build_tables()}
    t = {k: torch.from_numpy(np.asarray(v)).long() for k, v in tables.items()}
    dist = qd.IntegerLogisticMixture(channels, m, {k: v.int() for k, v in t.items()})
    n = 300
    params = _extreme_params(rng, n, channels, m)
    prev = torch.from_numpy(rng.integers(0, 256, (n, channels)))
    prev[:20] = 0
    prev[20:40] = 255
    want = _ref_tables(t, channels, m, params, prev)
    state = dist.coding_state(torch.device("cpu"))
    for c in range(channels):
        got = dist.coding_pmf(params, c, prev, state)
        assert got.dtype == torch.int64
        assert torch.equal(got, want[c]), c
        assert (got >= 0).all() and (got.sum(1) == qd.G_TOTAL).all()
    # A second pixel through the same state (its buffers reused) and a smaller batch.
    for rows in (slice(None), slice(0, 7)):
        params2 = _extreme_params(rng, n, channels, m)[rows]
        want2 = _ref_tables(t, channels, m, params2, prev[rows])
        for c in range(channels):
            assert torch.equal(dist.coding_pmf(params2, c, prev[rows], state), want2[c])


def test_mixture_frequencies_ties_and_extremes():
    """Ties for the largest mass (the remainder goes to the first), all the mass in one
    bin, the largest weights of the largest mixtures."""
    from nncompress.quant.distributions import frequencies, mixture_frequencies

    rng = np.random.default_rng(5)
    n, m = 64, 64
    steps = rng.integers(0, 2, (n, m, 256)) * rng.integers(0, 600, (n, m, 256))
    steps[:8] = 0
    steps[:8, :, 100] = 2**16  # one bin
    steps[8:16, :, :] = 256  # 256 equal bins: every mix_j ties
    cdf = np.concatenate([np.zeros((n, m, 1)), np.cumsum(steps, 2)], 2)
    cdf = np.minimum(cdf, 2**16)
    cdf[..., -1] = 2**16
    w = rng.integers(0, 2**16 + 1, (n, m))
    w[:, 0] = 2**16
    w[16:24] = 2**16
    cdf_t, w_t = torch.from_numpy(cdf), torch.from_numpy(w)
    pmfs = (cdf_t[..., 1:] - cdf_t[..., :-1]).long()
    want = frequencies(w_t, pmfs)
    for cuda in (False, True):  # the CUDA variant's kernels, run on CPU
        assert torch.equal(mixture_frequencies(w_t, cdf_t, cuda=cuda), want)
        assert torch.equal(mixture_frequencies(w_t.double(), cdf_t, cuda=cuda), want)


def _boundary_params(rng: np.random.Generator, channels: int, m: int, inv: np.ndarray):
    """Parameters whose channel-0 means put the logistic's argument at some inner edge j
    exactly on a rounding boundary, or one below it: (256 j - 32768 - mean) inv + 2^19 is
    0 or -1 modulo 2^20 (random values almost never are)."""
    block = 3 if channels == 3 else 2
    rows = []
    lo = qd.LOG_SCALE_LO
    while len(rows) < 64:
        ls = int(rng.integers(lo, qd.LOG_SCALE_HI + 1))
        j = int(rng.integers(1, 256))
        mean = np.arange(-qd.MEAN_MAX, qd.MEAN_MAX + 1, dtype=np.int64)
        r = ((256 * j - 32768 - mean) * int(inv[ls - lo]) + 2**19) % 2**20
        hits = mean[(r == 0) | (r == 2**20 - 1)]
        if not len(hits):
            continue
        p = np.zeros(m * (1 + block * channels))
        p[:m] = rng.integers(-3000, 3000, m)
        p[m : 2 * m] = rng.choice(hits, m)
        p[2 * m : 3 * m] = ls
        rows.append(p)
    return torch.from_numpy(np.stack(rows))


@pytest.mark.parametrize("channels", [3, 1])
def test_coding_tables_at_rounding_boundaries(channels):
    rng = np.random.default_rng(77)
    tables = {"elu": elu_table(), "sigmoid": sigmoid_table(), **qd.build_tables()}
    t = {k: torch.from_numpy(np.asarray(v)).long() for k, v in tables.items()}
    m = 4
    dist = qd.IntegerLogisticMixture(channels, m, {k: v.int() for k, v in t.items()})
    params = _boundary_params(rng, channels, m, tables["inv_scale"])
    prev = torch.from_numpy(rng.integers(0, 256, (len(params), channels)))
    want = _ref_tables(t, channels, m, params, prev)
    state = dist.coding_state(torch.device("cpu"))
    for c in range(channels):
        assert torch.equal(dist.coding_pmf(params, c, prev, state), want[c]), c


# ----------------------------------------------------------------------------------------
# The elementwise functions and the ring products against the plain arithmetic


def _ref_lookup(table, x, lo, hi):
    return table.take(x.clamp(lo, hi).sub(lo).long())


def _extreme_activations(rng: np.random.Generator, shape) -> torch.Tensor:
    """Integer-valued float64 over the whole activation range, with its ends and the ends
    of the elu and sigmoid tables' domains."""
    from nncompress.quant.fixed import ACT_MAX, ELU_MIN, SIG_MAX

    x = rng.integers(-ACT_MAX, ACT_MAX + 1, shape).astype(np.float64)
    x.flat[: x.size // 2] = rng.integers(-(2**17), 2**17, x.size // 2)
    special = [0, 1, -1, ACT_MAX, -ACT_MAX, ELU_MIN, ELU_MIN - 1, ELU_MIN + 1]
    special += [SIG_MAX, SIG_MAX + 1, -SIG_MAX, -SIG_MAX - 1, SIG_MAX - 1]
    x.flat[: len(special)] = special
    return torch.from_numpy(x)


@pytest.mark.parametrize("forged", [False, True])
def test_elementwise_functions_equal_the_plain_arithmetic(forged):
    from nncompress.quant.fixed import ACT_MAX, ELU_MIN, SIG_MAX, IntegerArithmetic, requant_

    rng = np.random.default_rng(31 + forged)
    tables = _forged_tables(rng) if forged else {"elu": elu_table(), "sigmoid": sigmoid_table()}
    elu_t = torch.from_numpy(np.asarray(tables["elu"])).double()
    sig_t = torch.from_numpy(np.asarray(tables["sigmoid"])).double()
    ar = IntegerArithmetic(elu_t, sig_t)

    def ref_elu(x):
        return _ref_lookup(elu_t, x, ELU_MIN, 0) + x.clamp(min=0)

    x = _extreme_activations(rng, (40, 24))
    a, b = _extreme_activations(rng, (40, 24)), _extreme_activations(rng, (40, 24))
    assert torch.equal(ar.elu(x), ref_elu(x))
    out = torch.empty(40, 48, dtype=torch.float64)
    assert torch.equal(ar.elu(x, out=out[:, 5:29]), ref_elu(x))  # a strided out
    y = x.clone()
    assert torch.equal(ar.elu(y, out=y), ref_elu(x)) and torch.equal(y, ref_elu(x))  # in place
    for dim in (0, 1, -1):
        want = ref_elu(torch.cat([x, -x], dim))
        assert torch.equal(ar.concat_elu(x, dim), want)
    assert torch.equal(ar.concat_elu_into(x, out), ref_elu(torch.cat([x, -x], 1)))
    ref_gate = (x + (a * _ref_lookup(sig_t, b, -SIG_MAX, SIG_MAX) * 2.0**-16).round()).clamp(
        -ACT_MAX, ACT_MAX
    )
    assert torch.equal(ar.gate(x, a, b), ref_gate)
    assert torch.equal(ar.gate(x, a, b, out=out[:, 3:27]), ref_gate)
    # fin_bias: requant(acc + bias) with the bias folded into the scaling.
    acc = torch.from_numpy(rng.integers(-(2**50), 2**50, (40, 24)).astype(np.float64))
    acc[0, :4] = torch.tensor([2.0**51 - 1, -(2.0**51) + 1, 0.0, 3.0 * 2**13])
    bias = torch.from_numpy(rng.integers(-(2**50), 2**50, 24).astype(np.float64))
    shifts = rng.integers(-30, 63, 24)
    shifts[:3] = [0, 62, -30]
    post = torch.tensor([2.0 ** -int(k) for k in shifts], dtype=torch.float64)
    want = requant_(acc + bias, post)
    assert torch.equal(ar.fin_bias(acc.clone(), post, bias * post), want)


def _window_row(sw, rows, order):
    """ShiftedConv2d.step_row's window products (the float path's, exact for these
    integer-valued float64 inputs)."""
    import dataclasses

    from nncompress.models.pixelcnnpp import ShiftedConv2d

    return ShiftedConv2d.step_row(dataclasses.replace(sw, post=None), rows, order)


@pytest.mark.parametrize(
    "kh,kw,stride,cin,cout,width",
    [(2, 3, 1, 64, 32, 9), (2, 3, 2, 16, 24, 10), (2, 2, 1, 48, 40, 7), (1, 3, 1, 40, 16, 6)],
)
def test_ring_products_equal_the_window_products(kh, kw, stride, cin, cout, width):
    from nncompress.models.pixelcnnpp import ConvStep, ShiftedConv2d

    rng = np.random.default_rng(kh * 100 + kw * 10 + stride + cin)
    weight = torch.from_numpy(rng.integers(-(2**15), 2**15, (cout, cin, kh, kw))).double()
    bias = torch.from_numpy(rng.integers(-(2**40), 2**40, cout).astype(np.float64))
    post = torch.full((cout,), 2.0**-14, dtype=torch.float64)
    sw = ConvStep.of(weight, bias, stride, post)
    assert sw.exact
    b = 3
    rows = _extreme_activations(rng, (b, width + 2, kh, cin))
    orders = [None] if kh == 1 else [torch.tensor([0, 1]), torch.tensor([1, 0])]
    for order in orders:
        want = _window_row(sw, rows, order)
        got = ShiftedConv2d._ring_row(sw, rows, order)
        assert torch.equal(got, want)
        no_bias = ShiftedConv2d._ring_row(sw, rows, order, bias=False)
        assert torch.equal(no_bias + bias, want)
        wo = want.shape[0] // b
        big = torch.zeros(b, wo, cout + 7, dtype=torch.float64)
        ShiftedConv2d._ring_row(sw, rows, order, out=big[:, :, 3 : 3 + cout])
        assert torch.equal(big[:, :, 3 : 3 + cout].reshape(b * wo, cout), want)
        assert (big[:, :, :3] == 0).all() and (big[:, :, 3 + cout :] == 0).all()


def test_concat_elu_into_large_and_small_inputs():
    """Both of concat_elu_into's ways (by size) into strided views of a ring."""
    from nncompress.quant.fixed import _LARGE, IntegerArithmetic

    rng = np.random.default_rng(8)
    ar = IntegerArithmetic(
        torch.from_numpy(elu_table()).double(), torch.from_numpy(sigmoid_table()).double()
    )
    for rows in (4, _LARGE // 16 + 1):
        x = _extreme_activations(rng, (rows, 16))
        ring = torch.zeros(rows, 3, 40, dtype=torch.float64)
        view = ring[:, 1, 4:36]
        want = ar.elu(torch.cat([x, -x], 1))
        assert torch.equal(ar.concat_elu_into(x, view), want)
        assert torch.equal(view, want) and (ring[:, 0] == 0).all() and (ring[:, 1, :4] == 0).all()
