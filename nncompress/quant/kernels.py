"""Fused CUDA kernels (Triton) for the integer path's elementwise steps (quant.fixed).

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
else goes to the torch ops. ``NNCOMPRESS_TRITON=0`` turns the kernels off; ``=force``
uses them on CPU tensors too (only under ``TRITON_INTERPRET=1``: the tests).
"""

from __future__ import annotations

import functools
import os
import warnings

import torch

from . import fixed  # (which imports this module: constants are read at call time)

ENV = "NNCOMPRESS_TRITON"
_BLOCK = 1024


@functools.cache
def _triton():
    """The compiled kernels, or None where Triton is missing or turned off."""
    if os.environ.get(ENV, "1") == "0":
        return None
    try:
        from . import _triton_kernels as k
    except Exception:  # noqa: BLE001 (any import failure: the torch ops remain)
        return None
    return {"fin": k.fin, "elu": k.elu, "concat_elu": k.concat_elu, "gate": k.gate}


def _dims(t: torch.Tensor) -> tuple[int, int, int, int, int] | None:
    """(d0, d1, c, stride0, stride1) of a tensor of 1 to 3 dimensions with last stride 1."""
    if t.dim() == 0 or t.dim() > 3 or t.stride(-1) != 1 or t.dtype != torch.float64:
        return None
    shape = (1,) * (3 - t.dim()) + tuple(t.shape)
    strides = (0,) * (3 - t.dim()) + tuple(t.stride())
    return shape[0], shape[1], shape[2], strides[0], strides[1]


def _usable(*ts: torch.Tensor) -> bool:
    t = ts[0]
    if t.is_cuda:
        return _triton() is not None
    return os.environ.get(ENV) == "force" and os.environ.get("TRITON_INTERPRET") == "1"


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
    if d is None or not _usable(acc) or post.shape != (d[2],) or post.stride(0) != 1:
        return False
    if bias_post is not None and (bias_post.shape != post.shape or bias_post.stride(0) != 1):
        return False
    n = acc.numel()
    bias = post if bias_post is None else bias_post
    return _launch("fin", n, acc, post, bias, n, d[1], d[2], d[3], d[4], float(fixed.ACT_MAX),
                   HAS_BIAS=bias_post is not None)  # fmt: skip


def elu(x: torch.Tensor, out: torch.Tensor, table: torch.Tensor) -> bool:
    """out = elu by ``table`` of x (same shape; out may be x); False if not fused."""
    dx, do = _dims(x), _dims(out)
    if dx is None or do is None or dx[:3] != do[:3] or not _usable(x):
        return False
    n = x.numel()
    return _launch("elu", n, x, out, table, n, dx[1], dx[2], dx[3], dx[4], do[3], do[4],
                   float(fixed.ELU_MIN))  # fmt: skip


def concat_elu(x: torch.Tensor, out: torch.Tensor, table: torch.Tensor) -> bool:
    """out (..., 2C) = [elu(x), elu(-x)] along the last dimension; False if not fused."""
    dx, do = _dims(x), _dims(out)
    if dx is None or do is None or not _usable(x):
        return False
    if dx[:2] != do[:2] or do[2] != 2 * dx[2]:
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
    if any(d is None or d[:3] != ds[0][:3] for d in ds) or not _usable(x):
        return False
    n = x.numel()
    st = [s for d in ds for s in d[3:]]
    return _launch("gate", n, x, a, b, out, sig_scaled, n, ds[0][1], ds[0][2], *st,
                   float(fixed.SIG_MAX), float(fixed.ACT_MAX))  # fmt: skip


def enabled(device: torch.device) -> bool:
    """Whether IntegerArithmetic on ``device`` should try the kernels."""
    if device.type == "cuda":
        return _triton() is not None
    return os.environ.get(ENV) == "force" and os.environ.get("TRITON_INTERPRET") == "1"
