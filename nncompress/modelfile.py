"""Model files: safetensors weights with the config, a name and a digest in the header.

Loading never executes code. The digest (sha256 over the family, the canonical config
JSON and every tensor's name, dtype, shape and bytes) identifies the weights; .nnc files
record it so that a file is only ever decoded by the model that encoded it.

A model file is input like any other: loading a crafted one must fail with a one-line
``ModelFileError``, in bounded time and memory, whatever it holds. A valid digest proves
nothing (anyone can recompute it), so every field is checked for itself: the header's size,
the config's keys and types (models.base.config_problem), the memory the config makes the
family's constructor allocate (at most a few times the weights the file holds, enforced
while it runs: ``_BuildBudget``), the tensors' names, shapes and dtypes against the model
built, finite floating-point weights, and the fields of the free-form ``info`` that code
reads (``tile``), and finally one evaluation on a blank tile (values no other check sees).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch.overrides import TorchFunctionMode

from .container import MAX_TILE
from .errors import ModelFileError
from .models import LikelihoodModel, model_class
from .models.base import config_problem

MODEL_FILE_FORMAT = "nncompress-model-1"
_KEY_FORMAT = "nncompress.format"
_KEY_FAMILY = "nncompress.family"
_KEY_CONFIG = "nncompress.config"
_KEY_DIGEST = "nncompress.digest"
_KEY_INFO = "nncompress.info"

# --- Caps (a model file is refused before anything near them is read or allocated) ---------

#: Largest model file (the shipped ones are at most ~16 MiB).
MAX_MODEL_FILE_BYTES = 2**31
#: Largest safetensors header (the JSON before the tensor bytes: tensor table + metadata).
MAX_HEADER_BYTES = 2**23
#: Largest config JSON and info JSON in the metadata.
MAX_CONFIG_BYTES = 2**16
MAX_INFO_BYTES = 2**20
#: Building a model may allocate at most BUILD_ELEMENTS_FACTOR x the elements of the file's
#: tensors + BUILD_ELEMENTS_SLACK (initial weights, buffers not stored, temporaries), in at
#: most BUILD_CALLS_PER_TENSOR x (tensors + 1) + BUILD_CALLS_SLACK torch calls.
BUILD_ELEMENTS_FACTOR = 4
BUILD_ELEMENTS_SLACK = 2**20
BUILD_CALLS_PER_TENSOR = 64
BUILD_CALLS_SLACK = 4096
_MESSAGE_CHARS = 300
_DIGEST_HEX = re.compile(r"[0-9a-f]{64}")
_SAFETENSORS_LEN = struct.Struct("<Q")


@dataclass
class LoadedModel:
    """A model ready for coding: the module, its name (as recorded in .nnc headers) and
    the sha256 digest of its weights."""

    name: str
    digest: bytes  # 32 bytes
    model: LikelihoodModel
    info: dict[str, Any] = field(default_factory=dict)  # metrics, provenance (free-form)
    path: Path | None = None

    @property
    def family(self) -> str:
        return self.model.family


def _canonical_config(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, separators=(",", ":"))


def weights_digest(family: str, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> bytes:
    h = hashlib.sha256()
    h.update(family.encode())
    h.update(b"\0")
    h.update(_canonical_config(config).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        # reshape: a 0-dim tensor cannot be viewed as bytes; the bytes are the same.
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.digest()


def export_tensors(
    model: LikelihoodModel, dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """The state dict as contiguous CPU tensors; floating ones cast to ``dtype`` if given."""
    out = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        out[k] = v.contiguous()
    return out


def save_model(
    model: LikelihoodModel,
    path: str | Path,
    *,
    info: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> bytes:
    """Write ``model`` to ``path`` (safetensors). Returns the digest."""
    tensors = export_tensors(model, dtype)
    config = model.config_dict()
    digest = weights_digest(model.family, config, tensors)
    meta = {
        _KEY_FORMAT: MODEL_FILE_FORMAT,
        _KEY_FAMILY: model.family,
        _KEY_CONFIG: _canonical_config(config),
        _KEY_DIGEST: digest.hex(),
        _KEY_INFO: json.dumps(info or {}, sort_keys=True),
    }
    save_file(tensors, str(path), metadata=meta)
    return digest


def _one_line(text: object) -> str:
    """``text`` on one line of at most _MESSAGE_CHARS characters (messages quote the file)."""
    s = " ".join(str(text).split())
    return s if len(s) <= _MESSAGE_CHARS else s[: _MESSAGE_CHARS - 3] + "..."


def _fail(path: str | Path, what: object) -> ModelFileError:
    return ModelFileError(f"{path}: {_one_line(what)}")


def info_problem(info: object) -> str | None:
    """The first thing wrong with a model file's ``info`` (decoded JSON) as a one-line
    message, or None. Free-form except for the fields code reads: ``tile``, the default
    coding tile [height, width] (api.model_tile), ints in 1..MAX_TILE."""
    if not isinstance(info, dict):
        return f"info must be a JSON object, not {type(info).__name__}"
    if "tile" in info:
        tile = info["tile"]
        if not isinstance(tile, list) or len(tile) != 2 or any(type(v) is not int for v in tile):
            shown = _one_line(json.dumps(tile))[:40]
            return f"info 'tile' must be [height, width] (two integers), not {shown}"
        if not all(1 <= v <= MAX_TILE for v in tile):
            return f"info 'tile' {tile[0]}x{tile[1]} out of range 1..{MAX_TILE}"
    return None


def _json(path: str | Path, text: str, what: str, cap: int) -> Any:
    if len(text) > cap:
        raise _fail(path, f"{what} of {len(text)} characters exceeds {cap}")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:  # RecursionError: nested too deeply
        raise _fail(path, f"{what} is not valid JSON ({e})") from None


@dataclass(frozen=True)
class _Header:
    """The nncompress metadata of a model file, parsed and checked."""

    meta: dict[str, str]
    family: str
    config: dict[str, Any]
    digest: bytes
    info: dict[str, Any]


def _read_header(path: str | Path) -> _Header:
    from safetensors import safe_open

    try:
        with open(path, "rb") as f:
            head = f.read(_SAFETENSORS_LEN.size)
            f.seek(0, 2)
            size = f.tell()
    except OSError as e:
        raise _fail(path, f"not a readable model file ({e.strerror or e})") from None
    if size > MAX_MODEL_FILE_BYTES:
        raise _fail(path, f"model file of {size} bytes exceeds {MAX_MODEL_FILE_BYTES}")
    if len(head) == _SAFETENSORS_LEN.size:
        (header_len,) = _SAFETENSORS_LEN.unpack(head)
        if header_len > MAX_HEADER_BYTES:
            raise _fail(
                path,
                f"not a readable model file (header of {header_len} bytes exceeds "
                f"{MAX_HEADER_BYTES})",
            )
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # noqa: BLE001 - the parser's error types are not documented
        raise _fail(path, f"not a readable model file ({e})") from None
    if meta.get(_KEY_FORMAT) != MODEL_FILE_FORMAT:
        raise ModelFileError(f"{path}: not an nncompress model file")
    missing = [k for k in (_KEY_FAMILY, _KEY_CONFIG, _KEY_DIGEST) if k not in meta]
    if missing:
        raise _fail(path, f"incomplete model header (no {', '.join(missing)})")
    family = meta[_KEY_FAMILY]
    try:
        cls = model_class(family)
    except ModelFileError as e:
        raise _fail(path, e) from None
    config = _json(path, meta[_KEY_CONFIG], "config", MAX_CONFIG_BYTES)
    problem = config_problem(cls.Config, config)
    if problem is not None:
        raise _fail(path, f"bad config for model family {family!r}: {problem}")
    if not _DIGEST_HEX.fullmatch(meta[_KEY_DIGEST]):
        raise _fail(path, "incomplete model header (the digest is not 64 hex digits)")
    info = _json(path, meta.get(_KEY_INFO, "{}"), "info", MAX_INFO_BYTES)
    problem = info_problem(info)
    if problem is not None:
        raise _fail(path, problem)
    return _Header(meta, family, config, bytes.fromhex(meta[_KEY_DIGEST]), info)


def read_metadata(path: str | Path) -> dict[str, str]:
    """The nncompress header of a model file without loading the weights, checked as
    ``load_model_file`` checks it (family, config, digest, info): ModelFileError if bad."""
    return _read_header(path).meta


class _OverBudget(Exception):
    """Raised inside a model's constructor when it allocates more than the file allows."""


def _ints_product(sizes: object) -> int | None:
    try:
        dims = [int(s) for s in sizes]  # type: ignore[attr-defined]
    except (TypeError, ValueError, RuntimeError):
        return None
    return math.prod(dims) if all(d >= 0 for d in dims) else None


_BY_SIZE = frozenset(
    {
        torch.empty,
        torch.zeros,
        torch.ones,
        torch.rand,
        torch.randn,
        torch.full,
        torch.empty_strided,
        torch.randint,
        torch.normal,
    }
)
_BY_SIZE_METHODS = frozenset(
    {
        torch.Tensor.new_empty,
        torch.Tensor.new_zeros,
        torch.Tensor.new_ones,
        torch.Tensor.new_full,
        torch.Tensor.new_empty_strided,
    }
)


def _requested_elements(func: Any, args: tuple, kwargs: dict) -> int | None:
    """Elements a tensor factory call is about to allocate, if it is one this knows
    (else None: what the call returned is counted after it)."""
    try:
        if func in _BY_SIZE or func in _BY_SIZE_METHODS:
            rest = args[1:] if func in _BY_SIZE_METHODS else args
            if "size" in kwargs:
                return _ints_product(kwargs["size"])
            for a in rest:
                if isinstance(a, (tuple, list, torch.Size)):
                    return _ints_product(a)
            if func is torch.normal or func is torch.randint or func is torch.full:
                return None
            leading = []
            for a in rest:
                if not isinstance(a, int) or isinstance(a, bool):
                    break
                leading.append(a)
            return _ints_product(leading)
        if func is torch.randperm:
            return _ints_product([args[0] if args else kwargs["n"]])
        if func is torch.eye:
            n = args[0] if args else kwargs["n"]
            m = args[1] if len(args) > 1 else kwargs.get("m", n)
            return _ints_product([n, m])
        if func in (torch.linspace, torch.logspace):
            steps = args[2] if len(args) > 2 else kwargs["steps"]
            return _ints_product([steps])
        if func is torch.arange:
            nums = [float(a) for a in args if isinstance(a, (int, float, torch.Tensor))]
            start, end, step = 0.0, 0.0, 1.0
            if len(nums) == 1:
                end = nums[0]
            elif len(nums) >= 2:
                start, end = nums[0], nums[1]
                step = nums[2] if len(nums) > 2 else 1.0
            start = float(kwargs.get("start", start))
            end = float(kwargs.get("end", end))
            step = float(kwargs.get("step", step))
            if step == 0 or not all(map(math.isfinite, (start, end, step))):
                return None
            return max(0, math.ceil((end - start) / step))
        if func is torch.Tensor.repeat:
            reps = args[1:]
            if len(reps) == 1 and isinstance(reps[0], (tuple, list, torch.Size)):
                reps = reps[0]
            n = _ints_product(reps)
            return None if n is None else n * args[0].numel()
    except (KeyError, IndexError, TypeError, ValueError, OverflowError, RuntimeError):
        return None
    return None


def _storages(values: Any, found: set[int], depth: int = 0) -> set[int]:
    for v in values:
        if isinstance(v, torch.Tensor):
            found.add(v.untyped_storage().data_ptr())
        elif depth < 2 and isinstance(v, (list, tuple)):
            _storages(v, found, depth + 1)
    return found


class _BuildBudget(TorchFunctionMode):
    """While a model is built from a file's config: refuses, before it happens, a tensor
    factory call beyond the remaining element budget, and counts every tensor any other
    torch call returns that does not share its inputs' storage; more than ``max_calls``
    torch calls also stop it (a loop over a huge config value)."""

    def __init__(self, max_elements: int, max_calls: int) -> None:
        super().__init__()
        self.max_elements = max_elements
        self.max_calls = max_calls
        self.elements = 0
        self.calls = 0

    def _charge(self, n: int) -> None:
        self.elements += n
        if self.elements > self.max_elements:
            raise _OverBudget(
                f"building the model allocates more than {self.max_elements} elements, "
                "out of proportion to the weights the file holds"
            )

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        self.calls += 1
        if self.calls > self.max_calls:
            raise _OverBudget(f"building the model takes more than {self.max_calls} tensor calls")
        want = _requested_elements(func, args, kwargs)
        if want is not None:
            self._charge(want)
        out = func(*args, **kwargs)
        if want is None:
            outs = out if isinstance(out, (list, tuple)) else (out,)
            inputs = _storages((*args, *kwargs.values()), set())
            for t in outs:
                if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                    self._charge(t.numel())
        return out


def _build(path: Path, header: _Header, tensors: dict[str, torch.Tensor]) -> LikelihoodModel:
    """The family's model for the header's (already type-checked) config, built under a
    budget set by the file's tensors."""
    cls = model_class(header.family)
    elements = sum(t.numel() for t in tensors.values())
    budget = _BuildBudget(
        BUILD_ELEMENTS_FACTOR * elements + BUILD_ELEMENTS_SLACK,
        BUILD_CALLS_PER_TENSOR * (len(tensors) + 1) + BUILD_CALLS_SLACK,
    )
    try:
        cfg = cls.Config(**header.config)
    except Exception as e:  # noqa: BLE001 - the config's own checks (ValueError, ...)
        raise _fail(path, f"bad config for model family {header.family!r}: {e}") from None
    try:
        with budget:
            return cls(cfg)
    except _OverBudget as e:
        raise _fail(path, f"config does not fit the file's tensors: {e}") from None
    except Exception as e:  # noqa: BLE001 - a config its family cannot build
        kind = type(e).__name__
        raise _fail(path, f"bad config for model family {header.family!r} ({kind}: {e})") from None


def _fitted_tensor(name: str, have: torch.Tensor, want: torch.Tensor) -> torch.Tensor | str:
    """``have`` (from the file) converted to ``want``'s dtype, or why it cannot be."""
    if tuple(have.shape) != tuple(want.shape):
        return f"tensor {name!r} has shape {tuple(have.shape)}, the model {tuple(want.shape)}"
    mismatch = f"tensor {name!r} is {have.dtype}, the model's is {want.dtype}"
    if want.is_floating_point() or want.is_complex():
        same_kind = have.is_complex() if want.is_complex() else have.is_floating_point()
        if not same_kind:
            return mismatch
        out = have.to(want.dtype)
        if out.numel() and not bool(torch.isfinite(out).all()):
            return f"tensor {name!r} holds NaN or infinite values (diverged training?)"
        return out
    if have.dtype == want.dtype:
        return have
    integer = (want.dtype != torch.bool) and (have.dtype != torch.bool)
    if not integer or have.is_floating_point() or have.is_complex():
        return mismatch
    info = torch.iinfo(want.dtype)
    if have.numel() and (int(have.min()) < info.min or int(have.max()) > info.max):
        return f"tensor {name!r} holds values outside {want.dtype}"
    return have.to(want.dtype)


def _evaluation_problem(model: LikelihoodModel) -> str | None:
    """Evaluate the loaded model once on a blank tile (its fixed one, else 2x2): values no
    dtype or shape check sees (an integer buffer indexing out of range, weights that
    overflow) must fail here, not in the middle of coding. None if the log-likelihood is
    finite."""
    problem = model.integrity_problem()
    if problem is not None:
        return problem
    h, w = model.fixed_tile or (2, 2)
    x = torch.zeros(1, model.channels, h, w, dtype=torch.uint8)
    try:
        with torch.no_grad():
            lp = model.log_prob(x)
    except Exception as e:  # noqa: BLE001 - whatever the weights make the family's code do
        return f"the model does not evaluate ({type(e).__name__}: {e})"
    if not bool(torch.isfinite(lp).all()):
        return "the model's log-likelihood of a blank tile is not finite (diverged weights?)"
    return None


def load_model_file(path: str | Path, name: str | None = None) -> LoadedModel:
    """Load and verify a model file. ModelFileError on any problem."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    header = _read_header(path)
    try:
        tensors = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - SafetensorError, OSError, unknown dtypes, ...
        raise _fail(path, f"corrupted model file ({e})") from None
    try:
        digest = weights_digest(header.family, header.config, tensors)
    except Exception as e:  # noqa: BLE001 - a tensor that cannot be hashed as stored
        raise _fail(path, f"corrupted model file ({e})") from None
    if digest != header.digest:
        raise ModelFileError(f"{path}: weights do not match their digest (file corrupted?)")
    model = _build(path, header, tensors)
    want = model.state_dict()
    missing = sorted(set(want) - set(tensors))
    extra = sorted(set(tensors) - set(want))
    if missing or extra:
        detail = (
            f"missing {', '.join(map(repr, missing[:3]))}"
            if missing
            else f"unexpected {', '.join(map(repr, extra[:3]))}"
        )
        raise _fail(
            path, f"tensors do not match a {header.family} model with this config ({detail})"
        )
    state = {}
    for k in want:
        fitted = _fitted_tensor(k, tensors[k], want[k])
        if isinstance(fitted, str):
            raise _fail(path, f"tensors do not fit the config: {fitted}")
        state[k] = fitted
    try:
        model.load_state_dict(state)
    except Exception as e:  # noqa: BLE001
        raise _fail(path, f"tensors do not fit the config: {e}") from None
    model.eval()
    problem = _evaluation_problem(model)
    if problem is not None:
        raise _fail(path, problem)
    return LoadedModel(
        name=name or path.stem, digest=digest, model=model, info=header.info, path=path
    )
