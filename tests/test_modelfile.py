"""Model files from an untrusted source: every problem is a one-line ModelFileError, found in
bounded time and memory, with nothing executed. A recomputed digest proves nothing, so most
forgeries here carry a valid one (``forge``)."""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import fitted_histogram, random_image, tiny_pixelcnn
from safetensors.torch import save_file
from torch import nn

from nncompress import api, modelfile
from nncompress.distributions import Categorical
from nncompress.errors import ModelFileError
from nncompress.modelfile import (
    MODEL_FILE_FORMAT,
    export_tensors,
    load_model_file,
    read_metadata,
    save_model,
    weights_digest,
)
from nncompress.models import FAMILIES, LikelihoodModel, build_model
from nncompress.models.base import config_problem

#: Every refusal here must come well within this (the huge configs included).
FAST_S = 5.0

MADE_CONFIG = {
    "channels": 1,
    "height": 4,
    "width": 4,
    "hidden": [8],
    "features": 2,
    "num_masks": 2,
    "first_order": "random",
    "seed": 0,
    "dropout": 0.0,
}


def forge(
    path: Path,
    family: str,
    config: Any,
    tensors: dict[str, torch.Tensor],
    info: Any = None,
    *,
    raw_config: str | None = None,
    extra_meta: dict[str, str] | None = None,
) -> Path:
    """Write a model file with a *valid* digest over whatever it holds."""
    meta = {
        "nncompress.format": MODEL_FILE_FORMAT,
        "nncompress.family": family,
        "nncompress.config": raw_config
        if raw_config is not None
        else json.dumps(config, sort_keys=True, separators=(",", ":")),
        "nncompress.digest": weights_digest(family, config, tensors).hex(),
        "nncompress.info": info if isinstance(info, str) else json.dumps(info or {}),
    }
    meta.update(extra_meta or {})
    save_file(tensors, str(path), metadata=meta)
    return path


@pytest.fixture(scope="module")
def pcnn() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    m = tiny_pixelcnn()
    return m.config_dict(), export_tensors(m)


@pytest.fixture(scope="module")
def made() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    m = build_model("made", dict(MADE_CONFIG))
    return m.config_dict(), export_tensors(m)


def refused(path: Path, needle: str = "") -> str:
    """Load ``path``: it must fail quickly with a one-line ModelFileError naming the file."""
    t0 = time.perf_counter()
    with pytest.raises(ModelFileError) as e:
        load_model_file(path)
    assert time.perf_counter() - t0 < FAST_S
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and len(msg) < 600, msg
    assert needle in msg, msg
    return msg


def test_forged_but_valid_files_load(tmp_path: Path, pcnn, made) -> None:
    cfg, tensors = pcnn
    lm = load_model_file(forge(tmp_path / "p.safetensors", "pixelcnnpp", cfg, tensors))
    assert lm.model.config_dict() == cfg
    cfg, tensors = made
    lm = load_model_file(forge(tmp_path / "m.safetensors", "made", cfg, tensors))
    assert lm.model.fixed_tile == (4, 4)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"channels": "3"}, "'channels': must be an integer, not a string"),
        ({"nr_filters": 3.5}, "'nr_filters': must be an integer, not a number"),
        ({"nr_resnet": True}, "'nr_resnet': must be an integer, not a boolean"),
        ({"nr_logistic_mix": None}, "must be an integer, not null"),
        ({"nr_filters": [8]}, "must be an integer, not a list"),
        ({"dropout": "0"}, "'dropout': must be a number"),
        ({"dropout": float("nan")}, "must be finite"),
        ({"dropout": float("inf")}, "must be finite"),
        ({"nr_filters": 2**70}, "integer out of range"),
        ({"nr_filters": -1}, "invalid PixelCNN++ sizes"),
        ({"channels": 2}, "1 or 3 channels"),
        ({"dropout": 1.5}, "dropout must be in [0, 1)"),
        ({"nr_filters": 10**9}, "config does not fit the file's tensors"),
        ({"nr_resnet": 10**6}, "config does not fit the file's tensors"),
        ({"nr_logistic_mix": 10**9}, "config does not fit the file's tensors"),
        ({"nr_filters": 4096}, "config does not fit the file's tensors"),
        ({"nr_filters": 9}, "tensors do not fit the config"),  # builds, shapes differ
        ({"unknown": 1}, "unknown config key(s) 'unknown'"),
    ],
)
def test_bad_pixelcnn_configs(tmp_path: Path, pcnn, change: dict, needle: str) -> None:
    cfg, tensors = pcnn
    refused(forge(tmp_path / "p.safetensors", "pixelcnnpp", {**cfg, **change}, tensors), needle)


def test_missing_config_key(tmp_path: Path, pcnn) -> None:
    cfg, tensors = pcnn
    cfg = {k: v for k, v in cfg.items() if k != "nr_resnet"}
    refused(forge(tmp_path / "p.safetensors", "pixelcnnpp", cfg, tensors), "missing config key")


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"num_masks": 10**9}, "config does not fit the file's tensors"),
        ({"num_masks": 100_000}, "config does not fit the file's tensors"),
        ({"hidden": [10**9]}, "config does not fit the file's tensors"),
        ({"hidden": [1] * 4000}, "config does not fit the file's tensors"),
        ({"hidden": [1] * 5000}, "list of 5000 items"),
        ({"height": 10**6}, "config does not fit the file's tensors"),
        ({"width": 10**5, "height": 10**5}, "config does not fit the file's tensors"),
        ({"hidden": [8.0]}, "'hidden': item 0 must be an integer, not a number"),
        ({"hidden": 8}, "'hidden': must be a list"),
        ({"first_order": 1}, "'first_order': must be a string"),
        ({"first_order": "x"}, "first_order must be one of"),
        ({"height": 0}, "at least 2 pixel positions"),
    ],
)
def test_bad_made_configs(tmp_path: Path, made, change: dict, needle: str) -> None:
    cfg, tensors = made
    refused(forge(tmp_path / "m.safetensors", "made", {**cfg, **change}, tensors), needle)


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ("[3]", "config must be a JSON object, not a list"),
        ("3", "config must be a JSON object, not an integer"),
        ("{", "config is not valid JSON"),
        ("[" * 100_000 + "]" * 100_000, "exceeds"),  # too long, and too deep for json
        ("[" * 5000 + "]" * 5000, "config is not valid JSON"),  # RecursionError
        ('{"channels": 1' + "0" * 5000 + "}", "config is not valid JSON"),  # > 4300 digits
    ],
)
def test_malformed_config_json(tmp_path: Path, raw: str, needle: str) -> None:
    m = fitted_histogram(3)
    path = forge(tmp_path / "h.safetensors", "histogram", {}, export_tensors(m), raw_config=raw)
    refused(path, needle)


@pytest.mark.parametrize(
    ("tile", "needle"),
    [
        ([0, 0], "out of range 1..4096"),
        ([5000, 5000], "out of range 1..4096"),
        ([10**9, 1], "out of range 1..4096"),
        ([-1, 8], "out of range"),
        ("ab", "must be [height, width]"),
        (None, "must be [height, width]"),
        (32, "must be [height, width]"),
        ([32], "must be [height, width]"),
        ([8, 8, 8], "must be [height, width]"),
        ([True, 8], "must be [height, width]"),
        ([8.0, 8], "must be [height, width]"),
    ],
)
def test_bad_info_tile(tmp_path: Path, tile: object, needle: str) -> None:
    m = fitted_histogram(3)
    path = forge(tmp_path / "h.safetensors", "histogram", m.config_dict(), export_tensors(m))
    # info is outside the digest: write it directly
    forge(path, "histogram", m.config_dict(), export_tensors(m), info={"tile": tile})
    refused(path, needle)
    with pytest.raises(ModelFileError, match="tile"):
        read_metadata(path)


@pytest.mark.parametrize(
    ("info", "needle"),
    [
        ("[]", "info must be a JSON object"),
        ('"x"', "info must be a JSON object"),
        ("{", "info is not valid JSON"),
        ("[" * 5000 + "]" * 5000, "info is not valid JSON"),
        (json.dumps({"notes": "x" * 2**20}), "exceeds"),
    ],
)
def test_bad_info(tmp_path: Path, info: str, needle: str) -> None:
    m = fitted_histogram(3)
    refused(
        forge(tmp_path / "h.safetensors", "histogram", m.config_dict(), export_tensors(m), info),
        needle,
    )


def test_free_form_info_is_kept_and_the_tile_is_used(tmp_path: Path) -> None:
    m = fitted_histogram(3)
    info = {"tile": [8, 4], "notes": {"any": [1, None, "x"]}, "val_bpd": "n/a"}
    lm = load_model_file(
        forge(tmp_path / "h.safetensors", "histogram", m.config_dict(), export_tensors(m), info)
    )
    assert lm.info == info
    assert api.model_tile(lm) == (8, 4)
    assert read_metadata(tmp_path / "h.safetensors")["nncompress.family"] == "histogram"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights(tmp_path: Path, pcnn, value: float) -> None:
    cfg, tensors = pcnn
    bad = dict(tensors)
    name = sorted(bad)[len(bad) // 2]
    bad[name] = bad[name].clone()
    bad[name].view(-1)[0] = value
    refused(forge(tmp_path / "p.safetensors", "pixelcnnpp", cfg, bad), "NaN or infinite")


def test_float64_weights_that_overflow_float32(tmp_path: Path) -> None:
    m = fitted_histogram(3)
    t = {"logits": m.logits.double()}
    t["logits"][0, 0] = 1e300
    refused(forge(tmp_path / "h.safetensors", "histogram", m.config_dict(), t), "NaN or infinite")
    t["logits"][0, 0] = -3.0  # float64 and float16 weights in range are fine
    assert load_model_file(forge(tmp_path / "h.safetensors", "histogram", m.config_dict(), t))
    t = {"logits": m.logits.half()}
    assert load_model_file(forge(tmp_path / "h.safetensors", "histogram", m.config_dict(), t))


@pytest.mark.parametrize(
    ("tensors", "needle"),
    [
        ({"logits": torch.zeros(3, 255)}, "has shape (3, 255), the model (3, 256)"),
        ({"logits": torch.zeros(768)}, "has shape (768,)"),
        (
            {"logits": torch.zeros(3, 256, dtype=torch.int32)},
            "is torch.int32, the model's is torch.float32",
        ),
        ({"logits": torch.zeros(3, 256, dtype=torch.bool)}, "is torch.bool"),
        ({"logits": torch.zeros(3, 256), "x": torch.zeros(1)}, "unexpected 'x'"),
        ({"logits": torch.zeros(3, 256), "s": torch.tensor(1.0)}, "unexpected 's'"),  # 0-dim
        ({"other": torch.zeros(3, 256)}, "missing 'logits'"),
        ({}, "missing 'logits'"),
    ],
)
def test_tensors_that_do_not_fit(tmp_path: Path, tensors: dict, needle: str) -> None:
    path = forge(tmp_path / "h.safetensors", "histogram", {"channels": 3}, tensors)
    refused(path, needle)


def test_integer_buffers(tmp_path: Path, made) -> None:
    """MADE keeps int32 buffers: a wider int dtype with values in range converts; values out
    of range, or a float tensor in their place, are refused."""
    cfg, tensors = made
    wide = {k: (v.long() if k == "orders" else v) for k, v in tensors.items()}
    lm = load_model_file(forge(tmp_path / "m.safetensors", "made", cfg, wide))
    assert lm.model.orders.dtype == torch.int32
    assert torch.equal(lm.model.orders, tensors["orders"])
    wide["orders"] = wide["orders"].clone()
    wide["orders"][0, 0] = 2**40
    refused(
        forge(tmp_path / "m.safetensors", "made", cfg, wide), "holds values outside torch.int32"
    )
    as_float = {k: (v.float() if k == "orders" else v) for k, v in tensors.items()}
    refused(
        forge(tmp_path / "m.safetensors", "made", cfg, as_float),
        "is torch.float32, the model's is torch.int32",
    )


def test_an_integer_buffer_that_indexes_out_of_range(tmp_path: Path, made) -> None:
    """Dtype and shape fit, the digest is valid, but MADE's ordering names a position that
    does not exist: the evaluation at load finds it (it was an IndexError while coding)."""
    cfg, tensors = made
    bad = dict(tensors, orders=tensors["orders"].clone())
    bad["orders"][0, 3] = 16  # positions are 0..15
    refused(forge(tmp_path / "m.safetensors", "made", cfg, bad), "the model does not evaluate")


@dataclass(frozen=True)
class IntConfig:
    channels: int = 1
    levels: tuple[int, ...] = (4, 4)
    shift: int = -3
    name: str | None = None


class IntTable(LikelihoodModel):
    """A stand-in for an integer family: int16/int32 buffers, no float parameters."""

    family = "inttable"
    Config = IntConfig

    def __init__(self, config: IntConfig) -> None:
        super().__init__(config)
        self.register_buffer("table", torch.zeros(config.channels, 256, dtype=torch.int16))
        self.register_buffer("scale", torch.ones(len(config.levels), dtype=torch.int32))
        self._dist = Categorical(config.channels)

    @property
    def distribution(self) -> Categorical:
        return self._dist

    def params(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        return self.table.float().reshape(1, -1, 1, 1).expand(b, -1, h, w)


def test_integer_family_is_handled_generically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(FAMILIES, IntTable.family, f"{__name__}:IntTable")
    model = IntTable(IntConfig())
    path = tmp_path / "i.safetensors"
    save_model(model, path)
    lm = load_model_file(path)
    assert lm.model.table.dtype == torch.int16 and lm.model.scale.dtype == torch.int32
    cfg, tensors = model.config_dict(), export_tensors(model)
    assert cfg["levels"] == (4, 4)
    cfg = json.loads(json.dumps(cfg))
    for change, needle in [
        ({"levels": [4, "4"]}, "item 1 must be an integer"),
        ({"name": 3}, "must be a string, not an integer or must be null"),
        ({"shift": False}, "must be an integer, not a boolean"),
    ]:
        refused(forge(path, "inttable", {**cfg, **change}, tensors), needle)
    assert load_model_file(forge(path, "inttable", {**cfg, "name": "x"}, tensors))
    big = dict(tensors, table=torch.full((1, 256), 40000, dtype=torch.int32))
    refused(forge(path, "inttable", cfg, big), "holds values outside torch.int16")


def test_unknown_family_and_incomplete_headers(tmp_path: Path) -> None:
    m = fitted_histogram(3)
    t = export_tensors(m)
    refused(
        forge(tmp_path / "a.safetensors", "nosuch", {"channels": 3}, t),
        "unknown model family 'nosuch'",
    )
    path = forge(
        tmp_path / "b.safetensors",
        "histogram",
        {"channels": 3},
        t,
        extra_meta={"nncompress.digest": "zz" * 32},
    )
    refused(path, "digest is not 64 hex digits")
    path = forge(
        tmp_path / "c.safetensors",
        "histogram",
        {"channels": 3},
        t,
        extra_meta={"nncompress.digest": "ab cd"},
    )
    refused(path, "digest is not 64 hex digits")
    save_file(t, str(tmp_path / "d.safetensors"), metadata={"nncompress.format": MODEL_FILE_FORMAT})
    refused(tmp_path / "d.safetensors", "incomplete model header")
    wrong = forge(tmp_path / "e.safetensors", "histogram", {"channels": 3}, t)
    meta = read_metadata(wrong)
    meta["nncompress.digest"] = "00" * 32
    save_file(t, str(wrong), metadata=meta)
    refused(wrong, "weights do not match their digest")


def test_huge_header_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "h.safetensors"
    path.write_bytes(struct.pack("<Q", 2**40) + b"{}")
    refused(path, "header of 1099511627776 bytes exceeds")
    with pytest.raises(ModelFileError, match="exceeds"):
        read_metadata(path)
    # a real header near the cap: big metadata is refused by its own caps or the header cap
    m = fitted_histogram(3)
    big = {"notes": "x" * (modelfile.MAX_HEADER_BYTES + 10)}
    refused(forge(path, "histogram", m.config_dict(), export_tensors(m), big), "exceeds")


def test_file_size_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = fitted_histogram(3)
    path = tmp_path / "h.safetensors"
    save_model(m, path)
    monkeypatch.setattr(modelfile, "MAX_MODEL_FILE_BYTES", path.stat().st_size - 1)
    refused(path, "exceeds")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00" * 7,
        b"\x00" * 8,
        struct.pack("<Q", 10) + b"not json!!",
        struct.pack("<Q", 2) + b"{}",
        struct.pack("<Q", 100) + b"{}",
        struct.pack("<Q", 30) + b'{"__metadata__": {"a": 1}}    ',
        struct.pack("<Q", 38) + b'{"w": {"dtype": "F32", "shape": [1]}}',
    ],
)
def test_garbage_files(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "g.safetensors"
    path.write_bytes(data)
    refused(path)


def test_a_directory_and_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="model file not found"):
        load_model_file(tmp_path)
    with pytest.raises(ModelFileError, match="not a readable model file"):
        read_metadata(tmp_path / "missing.safetensors")


def test_describe_models_reports_bad_files_as_rows(model_dir: Path) -> None:
    from nncompress.zoo import describe_models

    m = fitted_histogram(3)
    forge(
        model_dir / "bad-tile.safetensors",
        "histogram",
        m.config_dict(),
        export_tensors(m),
        {"tile": "ab"},
    )
    forge(
        model_dir / "bad-info.safetensors",
        "histogram",
        m.config_dict(),
        export_tensors(m),
        "[" * 5000,
    )
    rows = {r["name"]: r for r in describe_models()}
    assert "tile" in rows["bad-tile"]["error"]
    assert "info is not valid JSON" in rows["bad-info"]["error"]
    assert rows["hist-rgb"]["info"] == {"tile": [16, 16]}


def test_forged_model_is_refused_by_the_api(tmp_path: Path, pcnn) -> None:
    """Through the public API, a forged model file is the same one-line error."""
    cfg, tensors = pcnn
    path = forge(tmp_path / "p.safetensors", "pixelcnnpp", {**cfg, "nr_filters": 10**9}, tensors)
    with pytest.raises(ModelFileError, match="does not fit"):
        api.compress(random_image("RGB", 4, 4), model=str(path), device="cpu")


def test_config_problem_directly() -> None:
    from nncompress.models.pixelcnnpp import PixelCNNppConfig

    good = {"channels": 3, "nr_resnet": 1, "nr_filters": 8, "nr_logistic_mix": 2, "dropout": 0}
    assert config_problem(PixelCNNppConfig, good) is None  # an int is a fine float
    assert "not a config dataclass" in str(config_problem(dict, good))
    assert "JSON object" in str(config_problem(PixelCNNppConfig, [1]))


def test_building_is_bounded_for_any_family(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A family whose constructor allocates in proportion to a config value, and one that
    loops over it: both stop within the budget the file's tensors set."""

    monkeypatch.setitem(FAMILIES, Greedy.family, f"{__name__}:Greedy")
    small = Greedy(GreedyConfig(size=4, loops=1))
    path = tmp_path / "g.safetensors"
    save_model(small, path)
    assert load_model_file(path)
    cfg, tensors = small.config_dict(), export_tensors(small)
    for change in ({"size": 10**7}, {"loops": 10**8}, {"size": 3000, "loops": 3000}):
        refused(
            forge(path, "greedy", {**cfg, **change}, tensors), "does not fit the file's tensors"
        )


@dataclass(frozen=True)
class GreedyConfig:
    channels: int = 1
    size: int = 4
    loops: int = 1


class Greedy(LikelihoodModel):
    family = "greedy"
    Config = GreedyConfig

    def __init__(self, config: GreedyConfig) -> None:
        super().__init__(config)
        self.w = nn.Parameter(torch.zeros(config.size, config.size))
        parts = [torch.arange(config.size) for _ in range(config.loops)]
        self.register_buffer("idx", torch.stack(parts)[:1].clone(), persistent=False)
        self._dist = Categorical(config.channels)

    @property
    def distribution(self) -> Categorical:
        return self._dist

    def params(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        return torch.zeros(b, 256, h, w)
