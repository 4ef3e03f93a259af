"""Fused kernels for the integer path's elementwise steps (quant.fixed): Triton on CUDA,
C on the CPU (quant.cpu_kernels, the same operations in one pass each).

On CUDA a coding step is bound by its kernel count, not by arithmetic: each of
IntegerArithmetic's steps is three to eight torch kernels (a requantization is a multiply,
a rounding and a clamp; an elu by table is a clamp, an offset, a conversion, a gather, a
max and an add). Here each is one kernel, computing *the same integers* with the same exact
float64 operations: products by powers of two, round-half-to-even (written out below, from
floor and comparisons, so it does not depend on a libdevice), clamps against integers, and
loads from the model's tables. No result depends on the fusion, so files are unchanged and
cross between these kernels, the torch ops on CUDA and the CPU bit for bit (the device run
in benchmarks/ checks it on the lent GPU; tests/test_kernels.py runs the kernels in
Triton's interpreter on CPU against the torch ops).

The kernels take operands of up to three dimensions whose last stride is 1 (the stepper's
(N, C) pixel tensors and (N, W, C) row tensors, views into its buffers included); anything
else goes to the torch ops. ``NNCOMPRESS_TRITON=0`` turns the CUDA kernels off; ``=force``
runs them on CPU tensors too (only under ``TRITON_INTERPRET=1``: the tests);
``NNCOMPRESS_CPU_KERNELS=0`` turns the C kernels off.
"""

from __future__ import annotations

import functools
import os
import warnings

import torch

from . import fixed  # (which imports this module: constants are read at call time)

ENV = "NNCOMPRESS_TRITON"
_BLOCK = 1024
#: Most mixture components the one-kernel tables take (quant.pixelcnnpp.MAX_MIX).
_MMAX = 64


@functools.cache
def _triton():
    """The compiled kernels, or None where Triton is missing or turned off."""
    if os.environ.get(ENV, "1") == "0":
        return None
    try:
        from . import _triton_kernels as k
        from . import _triton_tables as kt
    except Exception:  # noqa: BLE001 (any import failure: the torch ops remain)
        return None
    return {
        "fin": k.fin,
        "elu": k.elu,
        "concat_elu": k.concat_elu,
        "gate": k.gate,
        "mixture_table": kt.mixture_table,
    }


def _dims(t: torch.Tensor) -> tuple[int, int, int, int, int] | None:
    """(d0, d1, c, stride0, stride1) of a tensor of 1 to 3 dimensions with last stride 1."""
    if t.dim() == 0 or t.dim() > 3 or t.stride(-1) != 1 or t.dtype != torch.float64:
        return None
    shape = (1,) * (3 - t.dim()) + tuple(t.shape)
    strides = (0,) * (3 - t.dim()) + tuple(t.stride())
    return shape[0], shape[1], shape[2], strides[0], strides[1]


def _interpreted() -> bool:
    return os.environ.get(ENV) == "force" and os.environ.get("TRITON_INTERPRET") == "1"


def _usable(*ts: torch.Tensor) -> bool:
    """Whether Triton runs the kernels for these tensors (CUDA; CPU only in the tests)."""
    t = ts[0]
    if t.is_cuda:
        return _triton() is not None
    return _interpreted()


@functools.cache
def _cpu_lib():
    """The C kernels (quant.cpu_kernels) for CPU tensors, or None: off, no compiler, or
    Triton's interpreter runs them (the tests). Cached: it is asked once per kernel call."""
    if _interpreted():
        return None
    from .cpu_kernels import library

    return library()


def _c(t: torch.Tensor):
    """The C kernels for a CPU tensor, or None."""
    return None if t.is_cuda else _cpu_lib()


def _grid(n: int) -> tuple[int]:
    return ((n + _BLOCK - 1) // _BLOCK,)


def _launch(name: str, n: int, *args, **meta) -> bool:
    """Run kernel ``name`` over n elements; False (and the kernels off for this process,
    with one warning) if Triton fails, e.g. to compile on an unknown GPU or version: the
    torch ops compute the same integers."""
    if n:
        try:
            _triton()[name][_grid(n)](*args, BLOCK=_BLOCK, **meta)
        except Exception as e:  # noqa: BLE001
            os.environ[ENV] = "0"
            _triton.cache_clear()
            warnings.warn(f"nncompress: fused kernels off ({type(e).__name__}: {e})", stacklevel=3)
            return False
    return True


def fin(acc: torch.Tensor, post: torch.Tensor, bias_post: torch.Tensor | None = None) -> bool:
    """requant in place (quant.fixed.requant_, or fin_bias with ``bias_post``); False if
    the operands do not fit a kernel (nothing is done then)."""
    d = _dims(acc)
    if d is None or post.shape != (d[2],) or post.stride(0) != 1:
        return False
    if bias_post is not None and (bias_post.shape != post.shape or bias_post.stride(0) != 1):
        return False
    lib = _c(acc)
    if lib is not None:
        bias = None if bias_post is None else bias_post.data_ptr()
        lib.nnc_fin(acc.data_ptr(), post.data_ptr(), bias, *d, float(fixed.ACT_MAX))
        return True
    if not _usable(acc):
        return False
    n = acc.numel()
    bias = post if bias_post is None else bias_post
    return _launch("fin", n, acc, post, bias, n, d[1], d[2], d[3], d[4], float(fixed.ACT_MAX),
                   HAS_BIAS=bias_post is not None)  # fmt: skip


def elu(x: torch.Tensor, out: torch.Tensor, table: torch.Tensor) -> bool:
    """out = elu by ``table`` of x (same shape; out may be x); False if not fused."""
    dx, do = _dims(x), _dims(out)
    if dx is None or do is None or dx[:3] != do[:3]:
        return False
    lib = _c(x)
    if lib is not None:
        lib.nnc_elu(x.data_ptr(), out.data_ptr(), table.data_ptr(), *dx, *do[3:],
                    float(fixed.ELU_MIN))  # fmt: skip
        return True
    if not _usable(x):
        return False
    n = x.numel()
    return _launch("elu", n, x, out, table, n, dx[1], dx[2], dx[3], dx[4], do[3], do[4],
                   float(fixed.ELU_MIN))  # fmt: skip


def concat_elu(x: torch.Tensor, out: torch.Tensor, table: torch.Tensor) -> bool:
    """out (..., 2C) = [elu(x), elu(-x)] along the last dimension; False if not fused."""
    dx, do = _dims(x), _dims(out)
    if dx is None or do is None or dx[:2] != do[:2] or do[2] != 2 * dx[2]:
        return False
    lib = _c(x)
    if lib is not None:
        lib.nnc_concat_elu(x.data_ptr(), out.data_ptr(), table.data_ptr(), *dx, *do[3:],
                           float(fixed.ELU_MIN))  # fmt: skip
        return True
    if not _usable(x):
        return False
    n = x.numel()
    return _launch("concat_elu", n, x, out, table, n, dx[1], dx[2], dx[3], dx[4], do[3], do[4],
                   float(fixed.ELU_MIN))  # fmt: skip


def gate(
    x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, sig_scaled: torch.Tensor
) -> bool:
    """out = clamp(x + round(a * SIG[b] / 2^16)) (quant.fixed.IntegerArithmetic.gate, with
    SIG / 2^16 as ``sig_scaled``); False if not fused."""
    ds = [_dims(t) for t in (x, a, b, out)]
    if any(d is None or d[:3] != ds[0][:3] for d in ds):
        return False
    st = [s for d in ds for s in d[3:]]
    lib = _c(x)
    if lib is not None:
        ptrs = [t.data_ptr() for t in (x, a, b, out, sig_scaled)]
        lib.nnc_gate(*ptrs, *ds[0][:3], *st, float(fixed.SIG_MAX), float(fixed.ACT_MAX))
        return True
    if not _usable(x):
        return False
    n = x.numel()
    return _launch("gate", n, x, a, b, out, sig_scaled, n, ds[0][1], ds[0][2], *st,
                   float(fixed.SIG_MAX), float(fixed.ACT_MAX))  # fmt: skip


def enabled(device: torch.device, part: str = "elementwise") -> bool:
    """Whether the ``part`` ("elementwise": IntegerArithmetic; "tables": the mixture's
    tables) on ``device`` should try the kernels (``NNCOMPRESS_TRITON=elementwise`` or
    ``=tables`` keeps only that part, for measuring)."""
    only = os.environ.get(ENV, "")
    if only in ("elementwise", "tables") and only != part:
        return False
    if device.type == "cuda":
        return _triton() is not None
    return _interpreted() or _cpu_lib() is not None


def prepare_state(state: dict, n: int, nr_mix: int, device: torch.device) -> None:
    """The buffers mixture_table keeps in a coder's per-pixel ``state`` for batches of n
    rows, allocated here, before any CUDA graph capture: inside one, their memory would
    belong to that graph's pool and could be reused by the graphs captured after it while
    they still hold the next channel's inputs."""
    state["k_n"] = n
    # two generations each (the kernel reads channel c - 1's and writes channel c's)
    state["k_lw"] = torch.empty(2, n, nr_mix, dtype=torch.int64, device=device)
    state["k_ab"] = torch.empty(2, n, nr_mix, 2, dtype=torch.float64, device=device)
    # one table per channel: a caller may hold channel c's table while c + 1 is made
    state["k_g"] = torch.empty(3, n, 256, dtype=torch.int64, device=device)


def mixture_table(
    params: torch.Tensor, c: int, prev: torch.Tensor, state: dict, tables, nr_mix: int
) -> torch.Tensor | None:
    """Channel c's frequency table (N, 256) int64 of the 3-channel integer logistic mixture
    in one kernel (quant.distributions.IntegerLogisticMixture.coding_pmf computes the same
    integers); ``tables``: the mixture's quant.distributions._Tables. None where the kernel
    does not apply (the caller then computes it); channel c > 0 needs channel c - 1 to have
    run here with the same ``state``, which prepare_state set up."""
    from . import distributions as qd

    n = params.shape[0]
    lib = _c(params)
    if (
        (lib is None and not _usable(params))
        or params.dim() != 2
        or params.stride(1) != 1
        or params.dtype != torch.float64
        or prev.dtype != torch.int64
        or prev.stride(1) != 1
        or n == 0
        or nr_mix > _MMAX
    ):
        return None
    if state.get("k_n") != n:  # (prepare_state not called for this batch)
        return None
    t = tables
    g = state["k_g"][c]
    args = (params, params.stride(0), prev, prev.stride(0), state["k_lw"], state["k_ab"], g,
            g.stride(0), t.f["inv_scale"], t.t["tanh"], t.f["exp"], t.t["log"], t.cdf_table, c,
            nr_mix, n, float(qd.MEAN_MAX), qd.LOG_SCALE_LO, qd.LOG_SCALE_HI, qd.COEF_MAX,
            qd.EXP_MAX, float(fixed.SIG_MAX), qd.G_TOTAL)  # fmt: skip
    if lib is not None:
        ptr = [a.data_ptr() if isinstance(a, torch.Tensor) else a for a in args]
        lib.nnc_mixture_table(*ptr)
        return g
    try:
        _triton()["mixture_table"][(n,)](*args, BLOCK=256, MMAX=_MMAX)
    except Exception as e:  # noqa: BLE001 (as _launch)
        if os.environ.get("NNCOMPRESS_DEBUG"):
            raise
        os.environ[ENV] = "0"
        _triton.cache_clear()
        warnings.warn(f"nncompress: fused kernels off ({type(e).__name__}: {e})", stacklevel=2)
        return None
    return g
