"""Model files: safetensors weights with the config, a name and a digest in the header.

Loading never executes code. The digest (sha256 over the family, the canonical config
JSON and every tensor's name, dtype, shape and bytes) identifies the weights; .nnc files
record it so that a file is only ever decoded by the model that encoded it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import ModelFileError
from .models import LikelihoodModel, build_model

MODEL_FILE_FORMAT = "nncompress-model-1"
_KEY_FORMAT = "nncompress.format"
_KEY_FAMILY = "nncompress.family"
_KEY_CONFIG = "nncompress.config"
_KEY_DIGEST = "nncompress.digest"
_KEY_INFO = "nncompress.info"


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
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
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


def read_metadata(path: str | Path) -> dict[str, str]:
    """The nncompress header of a model file without loading the weights."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelFileError(f"{path}: not a readable model file ({e})") from None
    if meta.get(_KEY_FORMAT) != MODEL_FILE_FORMAT:
        raise ModelFileError(f"{path}: not an nncompress model file")
    return meta


def load_model_file(path: str | Path, name: str | None = None) -> LoadedModel:
    """Load and verify a model file. ModelFileError on any problem."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    meta = read_metadata(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelFileError(f"{path}: corrupted model file ({e})") from None
    try:
        family = meta[_KEY_FAMILY]
        config = json.loads(meta[_KEY_CONFIG])
        recorded = bytes.fromhex(meta[_KEY_DIGEST])
        info = json.loads(meta.get(_KEY_INFO, "{}"))
    except (KeyError, ValueError) as e:
        raise ModelFileError(f"{path}: incomplete model header ({e})") from None
    digest = weights_digest(family, config, tensors)
    if digest != recorded:
        raise ModelFileError(f"{path}: weights do not match their digest (file corrupted?)")
    model = build_model(family, config)
    want = model.state_dict()
    if set(want) != set(tensors):
        raise ModelFileError(f"{path}: tensors do not match a {family} model with this config")
    try:
        model.load_state_dict({k: v.to(want[k].dtype) for k, v in tensors.items()})
    except RuntimeError as e:
        raise ModelFileError(f"{path}: tensors do not fit the config: {e}") from None
    model.eval()
    return LoadedModel(name=name or path.stem, digest=digest, model=model, info=info, path=path)
