"""quant.kernels (the fused kernels of the integer path) against the torch ops they replace:
the same integers, bit for bit, on values made to hit every rounding tie, clamp and table
end, on strided views like the stepper's. Each test runs twice: with the CPU's C kernels
(quant.cpu_kernels; skipped without a C compiler) and with the CUDA kernels run in Triton's
interpreter on CPU (skipped where Triton is not installed: the CPU build of torch does not
bring it; the lent GPU's device run checks the compiled kernels the same way:
benchmarks/kernels_check.py)."""

from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np
import pytest
import torch

# Before Triton's import: its own library functions (tl.sum, ...) are made for the
# interpreter only when it is on at that time. (The C kernels do not look at it.) Where
# torch has imported Triton already (CUDA builds do, at import), the interpreter cannot be
# had in this process: those runs check the compiled kernels with kernels_check instead.
_TRITON_PREIMPORTED = "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1"
os.environ["TRITON_INTERPRET"] = "1"
# A kernel that fails falls back to the torch ops with a warning: here that is a failure.
pytestmark = pytest.mark.filterwarnings("error")

from nncompress.quant import cpu_kernels, fixed, kernels  # noqa: E402


@pytest.fixture(autouse=True, params=["c", "triton"])
def backend(request, monkeypatch):
    """Which kernels the CPU tensors of a test go to."""
    _clear_caches()
    if request.param == "triton":
        if importlib.util.find_spec("triton") is None:
            pytest.skip("Triton is not installed")
        if _TRITON_PREIMPORTED:
            pytest.skip("Triton was imported (by torch) before its interpreter was switched on")
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        monkeypatch.setenv(kernels.ENV, "force")
    else:
        monkeypatch.delenv(kernels.ENV, raising=False)
        monkeypatch.delenv(cpu_kernels.ENV, raising=False)
        if cpu_kernels.library() is None:
            pytest.skip("no C compiler: the CPU kernels are not built")
    yield request.param
    _clear_caches()


def _clear_caches() -> None:
    kernels._triton.cache_clear()
    kernels._cpu_lib.cache_clear()
    cpu_kernels.library.cache_clear()


def _arith(fused: bool) -> fixed.IntegerArithmetic:
    ar = fixed.IntegerArithmetic(
        torch.from_numpy(fixed.elu_table()).double(),
        torch.from_numpy(fixed.sigmoid_table()).double(),
    )
    assert ar.fused  # (C kernels, or force + interpreter)
    ar.fused = fused
    return ar


def _values(shape, rng) -> torch.Tensor:
    """Integer-valued float64 over the activations' whole range, clamps and table ends."""
    v = rng.integers(-(2**24), 2**24, size=shape).astype(np.float64)
    small = rng.integers(-70000, 70000, size=shape).astype(np.float64)
    pick = rng.random(shape)
    v = np.where(pick < 0.7, small, v)
    return torch.from_numpy(v)


def test_fin_rounds_half_to_even_and_clamps_like_torch():
    rng = np.random.default_rng(0)
    acc = _values((37, 24), rng) * 8 + torch.from_numpy(rng.integers(-8, 8, (37, 24))).double()
    acc[0, :8] = torch.tensor([4.0, 12.0, -4.0, -12.0, 20.0, 2.0**30, -(2.0**30), 0.0])
    post = torch.tensor([2.0**-3] * 12 + [2.0**-1] * 6 + [1.0] * 6, dtype=torch.float64)
    bias = torch.from_numpy(rng.integers(-9000, 9000, 24)).double() * post
    for b in (None, bias):
        want = _arith(False).fin(acc.clone(), post) if b is None else None
        if b is not None:
            want = _arith(False).fin_bias(acc.clone(), post, b)
        got = acc.clone()
        got = _arith(True).fin(got, post) if b is None else _arith(True).fin_bias(got, post, b)
        assert torch.equal(got, want)


def test_elu_concat_elu_and_gate_equal_the_torch_ops_on_strided_views():
    rng = np.random.default_rng(1)
    ref, fus = _arith(False), _arith(True)
    x = _values((5, 7, 16), rng)
    x[0, 0, :4] = torch.tensor([fixed.ELU_MIN - 1.0, fixed.ELU_MIN, 0.0, 1.0])
    # elu: fresh, into a strided view, in place
    assert torch.equal(fus.elu(x), ref.elu(x))
    big = torch.zeros(5, 9, 40, dtype=torch.float64)
    a, b = big.clone(), big.clone()
    ref.elu(x, out=a[:, 1:8, 3:19])
    fus.elu(x, out=b[:, 1:8, 3:19])
    assert torch.equal(a, b)
    y1, y2 = x.clone(), x.clone()
    assert torch.equal(fus.elu(y2, out=y2), ref.elu(y1, out=y1))
    # concat_elu into a non-collapsible view (the stepper's ring rows)
    a, b = big.clone(), big.clone()
    ref.concat_elu_into(x, a[:, 1:8, 4:36], dim=-1)
    fus.concat_elu_into(x, b[:, 1:8, 4:36], dim=-1)
    assert torch.equal(a, b)
    x2 = x[:, 2]
    assert torch.equal(fus.concat_elu(x2, dim=1), ref.concat_elu(x2, dim=1))
    # gate, with a and b as column slices of one tensor (as the stepper's [a, b])
    g = _values((6, 32), rng)
    g[0, 16:20] = torch.tensor([-fixed.SIG_MAX - 5.0, -fixed.SIG_MAX, fixed.SIG_MAX, 1e7])
    xg = _values((6, 16), rng)
    assert torch.equal(fus.gate(xg, g[:, :16], g[:, 16:]), ref.gate(xg, g[:, :16], g[:, 16:]))
    oa, ob = torch.zeros(6, 40, dtype=torch.float64), torch.zeros(6, 40, dtype=torch.float64)
    ref.gate(xg, g[:, :16], g[:, 16:], out=oa[:, 2:18])
    fus.gate(xg, g[:, :16], g[:, 16:], out=ob[:, 2:18])
    assert torch.equal(oa, ob)


def test_layouts_the_kernels_do_not_take_fall_back_to_the_torch_ops():
    t = torch.zeros(1, dtype=torch.float64)
    x = torch.arange(24, dtype=torch.float64).view(2, 3, 4)
    assert not kernels.elu(x.transpose(1, 2), torch.empty(2, 4, 3, dtype=torch.float64), t)
    x = (x - 12).mul_(9000).view(1, 2, 3, 4)  # four dimensions
    assert not kernels.elu(x, torch.empty_like(x), t)
    assert not kernels.fin(torch.zeros(1, 2, 3, 4, dtype=torch.float64), torch.ones(2))
    ref, fus = _arith(False), _arith(True)
    assert torch.equal(fus.elu(x), ref.elu(x))


def test_a_model_s_coding_tables_are_the_same_with_and_without_the_kernels():
    from conftest import tiny_pixelcnn

    from nncompress.codec import ChannelPmfs
    from nncompress.quant.pixelcnnpp import from_float
    from nncompress.runtime import run_now

    rng = np.random.default_rng(2)
    b, h, w = 3, 6, 6
    tiles = rng.integers(0, 256, (b, 3, h, w))
    model = from_float(tiny_pixelcnn(3, seed=4)).eval()
    tables = []
    for fused in (False, True):
        model.arithmetic().fused = fused
        model.distribution.fused = fused
        st = model.stepper(b, h, w)
        assert st.ar.fused is fused and st.distribution.fused is fused
        st.runner = run_now
        pm = ChannelPmfs(st.distribution, st.runner, b, 3, torch.device("cpu"), st.params_buffer)
        got = []
        with torch.inference_mode():
            for y, x in st.order():
                pm.set_params(st.params_at(y, x))
                got.append(np.stack([pm(c, tiles[:, :, y, x]) for c in range(3)]))
                st.write(y, x, torch.from_numpy(tiles[:, :, y, x]))
        tables.append(np.stack(got))
    assert np.array_equal(tables[0], tables[1])


def test_mixture_tables_equal_the_torch_path_on_extreme_parameters():
    from nncompress.quant import distributions as qd

    rng = np.random.default_rng(5)
    m, n = 5, 40
    t = {k: torch.from_numpy(v) for k, v in qd.build_tables().items()}
    t["sigmoid"] = torch.from_numpy(fixed.sigmoid_table())
    dist = qd.IntegerLogisticMixture(3, m, t)
    assert dist.fused
    p = np.zeros((n, dist.num_params))
    p[:, :m] = rng.integers(-30000, 30000, (n, m))  # logits, some far apart
    blocks = p[:, m:].reshape(n, 3, 3, m)
    blocks[:, :, 0] = rng.integers(-qd.MEAN_MAX - 5000, qd.MEAN_MAX + 5000, (n, 3, m))
    blocks[:, :, 1] = rng.integers(qd.LOG_SCALE_LO - 3000, qd.LOG_SCALE_HI + 3000, (n, 3, m))
    blocks[:, :, 2] = rng.integers(-qd.COEF_MAX - 9000, qd.COEF_MAX + 9000, (n, 3, m))
    p[:, m:] = blocks.reshape(n, -1)
    params = torch.from_numpy(p)
    prev = torch.from_numpy(rng.integers(0, 256, (n, 3)))
    prev[:4] = torch.tensor([[0, 0, 0], [255, 255, 255], [0, 255, 0], [255, 0, 255]])
    out = {}
    for fused in (False, True):
        dist.fused = fused
        state = dist.coding_state(params.device)
        dist.prepare_state(state, n, params.device)
        assert ("k_n" in state) is fused  # (the kernel's buffers: it runs)
        out[fused] = [dist.coding_pmf(params, c, prev, state).clone() for c in range(3)]
    # without its buffers (a caller that did not prepare them) the torch path runs
    assert (
        kernels.mixture_table(params, 0, prev, dist.coding_state(params.device), dist._t, m) is None
    )
    for c in range(3):
        assert torch.equal(out[True][c], out[False][c]), c
        assert bool((out[True][c] >= 0).all()) and bool((out[True][c].sum(1) == qd.G_TOTAL).all())


def test_the_c_kernels_are_off_when_asked(monkeypatch, backend):
    if backend != "c":
        pytest.skip("(the C kernels' switch)")
    monkeypatch.setenv(cpu_kernels.ENV, "0")
    _clear_caches()
    assert cpu_kernels.library() is None
    assert not kernels.enabled(torch.device("cpu"))
    x = torch.arange(-6.0, 6.0, dtype=torch.float64).view(3, 4)
    assert not kernels.elu(x, torch.empty_like(x), torch.zeros(1, dtype=torch.float64))
