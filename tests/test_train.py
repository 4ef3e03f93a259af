"""The training subsystem: data, crops, validation tiles, the loop (loss, resume, export),
the CLI command, the plot. Everything on CPU with tiny models, in seconds."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image
from torch import nn

from nncompress.distributions import NUM_SYMBOLS, Categorical
from nncompress.modelfile import load_model_file
from nncompress.models import FAMILIES
from nncompress.models.base import LikelihoodModel
from nncompress.models.histogram import HistogramConfig, HistogramModel
from nncompress.quant.convert import integer_path
from nncompress.train.cli import train as train_cmd
from nncompress.train.data import (
    CropSampler,
    DataError,
    ImageSet,
    evaluate_bpd,
    load_images,
    make_val_tiles,
    split_holdout,
)
from nncompress.train.loop import (
    TrainConfig,
    TrainError,
    clip_relative_,
    load_checkpoint,
    lr_at,
    save_checkpoint,
    train,
)
from nncompress.train.plot import plot_curve

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------
# a tiny trainable model (any LikelihoodModel must train)


@dataclass(frozen=True)
class TinyConfig:
    channels: int = 3
    hidden: int = 8
    dropout: float = 0.0


class TinyCausal(LikelihoodModel):
    """One causal 3x3 conv (type-A mask: rows above, pixels to the left), tanh, dropout,
    and a 1x1 conv to 256 logits per channel (channels independent given the context)."""

    family = "tinycausal"
    Config = TinyConfig

    def __init__(self, config: TinyConfig) -> None:
        super().__init__(config)
        c, h = config.channels, config.hidden
        self.conv = nn.Conv2d(c, h, 3, padding=1)
        mask = torch.ones(1, 1, 3, 3)
        mask[..., 1, 1:] = 0  # the centre pixel and those right of it
        mask[..., 2, :] = 0  # the row below
        self.register_buffer("mask", mask)
        self.drop = nn.Dropout(config.dropout)
        self.out = nn.Conv2d(h, c * NUM_SYMBOLS, 1)
        self._dist = Categorical(c)

    @property
    def distribution(self) -> Categorical:
        return self._dist

    def params(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float() / 127.5 - 1.0
        h = F.conv2d(h, self.conv.weight * self.mask, self.conv.bias, padding=1)
        return self.out(self.drop(torch.tanh(h)))


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: tiny tensors gain nothing from more, and on a busy machine a
    second thread that is not scheduled stalls every op (100x slower steps seen)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture
def tiny_family(monkeypatch: pytest.MonkeyPatch) -> str:
    """Register TinyCausal as a family (build_model and load_model_file find it)."""
    monkeypatch.setitem(FAMILIES, TinyCausal.family, f"{__name__}:TinyCausal")
    return TinyCausal.family


def smooth_image(h: int, w: int, seed: int, channels: int = 3) -> np.ndarray:
    """(h, w, channels) uint8: gradients plus a little noise (predictable from neighbours)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = (x * 3 + y * 2 + seed * 37) % 200 + 20
    img = base[..., None] + np.arange(channels) * 10 + rng.integers(0, 6, (h, w, channels))
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture
def photo_dir(tmp_path: Path) -> Path:
    d = tmp_path / "photos"
    d.mkdir()
    for i in range(5):
        Image.fromarray(smooth_image(20 + 2 * i, 24, i)).save(d / f"im{i}.png")
    return d


def tiny_config(tmp_path: Path, data: Path, **over) -> TrainConfig:
    cfg = dict(
        data=[str(data)],
        out=str(tmp_path / "m.safetensors"),
        family=TinyCausal.family,
        model_config={"channels": 3, "hidden": 8, "dropout": 0.0},
        crop=8,
        batch=16,
        lr=1e-2,
        warmup=5,
        steps=40,
        val_fraction=0.2,
        val_every=20,
        log_every=10,
        log_path=str(tmp_path / "log.json"),
        progress=False,
    )
    cfg.update(over)
    return TrainConfig(**cfg)


def quiet(_: str) -> None:
    pass


# ---------------------------------------------------------------------------------------
# data


def test_load_folder_modes_notes_and_errors(tmp_path: Path) -> None:
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    rgb = smooth_image(9, 11, 0)
    grey = smooth_image(7, 5, 1, channels=1)[..., 0]
    Image.fromarray(rgb).save(d / "a.png")
    Image.fromarray(rgb).save(d / "sub" / "b.webp", lossless=True)
    Image.fromarray(grey, "L").save(d / "g.bmp")
    (d / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"g\.bmp: has 1 channel\(s\), the model codes 3"):
        load_images([d], 3)
    s = load_images([d], 3, mismatch="convert")
    assert [Path(n).name for n in s.names] == ["a.png", "g.bmp", "b.webp"]
    assert np.array_equal(s.images[0], rgb.transpose(2, 0, 1))
    assert np.array_equal(s.images[2], rgb.transpose(2, 0, 1))  # lossless WebP
    assert np.array_equal(s.images[1], np.stack([grey] * 3))  # grey -> RGB replicates
    assert any("converted 1 image(s) to colour: g.bmp" in n for n in s.notes)
    assert any("ignored 1 file(s)" in n for n in s.notes)
    s = load_images([d], 3, mismatch="skip")
    assert len(s) == 2 and any("skipped 1" in n for n in s.notes)
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DataError, match=r"broken\.png: unreadable"):
        load_images([d], 3, mismatch="skip")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no image files found"):
        load_images([empty], 3)
    with pytest.raises(DataError, match="no such file or folder"):
        load_images([tmp_path / "missing"], 3)


def test_sixteen_bit_images_are_refused_or_skipped(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    Image.fromarray(np.full((4, 4), 1000, np.uint16)).save(d / "deep.png")
    Image.fromarray(smooth_image(4, 4, 0, 1)[..., 0], "L").save(d / "ok.png")
    with pytest.raises(DataError, match="16-bit"):
        load_images([d], 1)
    assert len(load_images([d], 1, mismatch="skip")) == 1


def test_npz_arrays_slices_and_errors(tmp_path: Path) -> None:
    arr = np.arange(4 * 3 * 5, dtype=np.uint8).reshape(4, 3, 5)
    np.savez(tmp_path / "g.npz", images=arr)
    s = load_images([tmp_path / "g.npz"], 1)
    assert len(s) == 4 and np.array_equal(s.images[2], arr[2][None])
    s = load_images([f"{tmp_path / 'g.npz'}[1:3]"], 1)
    assert len(s) == 2 and np.array_equal(s.images[0], arr[1][None])
    with pytest.raises(DataError, match="has 1 channel"):
        load_images([tmp_path / "g.npz"], 3)
    np.savez(tmp_path / "f.npz", images=arr.astype(np.float32))
    with pytest.raises(DataError, match="dtype float32, expected uint8"):
        load_images([tmp_path / "f.npz"], 1)
    np.savez(tmp_path / "k.npz", pixels=arr)
    with pytest.raises(DataError, match="no array named 'images'"):
        load_images([tmp_path / "k.npz"], 1)


def test_holdout_split_is_fixed_and_disjoint() -> None:
    images = ImageSet(
        [np.full((1, 2, 2), i, np.uint8) for i in range(8)], [str(i) for i in range(8)]
    )
    train_a, val_a = split_holdout(images, 0.25)
    train_b, val_b = split_holdout(images, 0.25)
    assert val_a.names == val_b.names and len(val_a) == 2 and len(train_a) == 6
    assert sorted(train_a.names + val_a.names, key=int) == images.names
    with pytest.raises(DataError, match="at least 2 images"):
        split_holdout(images.subset([0]), 0.5)


def _windows(planes: np.ndarray, t: int) -> set[bytes]:
    """Every t x t window of the edge-padded planes (padding only right/bottom, as far as a
    crop can reach), flipped and not, as bytes."""
    c, h, w = planes.shape
    padded = np.pad(planes, ((0, 0), (0, max(0, t - h)), (0, max(0, t - w))), mode="edge")
    out = set()
    for y in range(max(1, h - t + 1)):
        for x in range(max(1, w - t + 1)):
            win = padded[:, y : y + t, x : x + t]
            out.add(win.tobytes())
            out.add(np.ascontiguousarray(win[:, :, ::-1]).tobytes())
    return out


def test_crops_are_exact_windows_flips_and_edge_padding() -> None:
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (3, 9, 11), dtype=np.uint8)
    small = rng.integers(0, 256, (3, 3, 5), dtype=np.uint8)  # smaller than the crop: padded
    sampler = CropSampler([big, small], 4, "cpu", seed=1)
    crops = sampler.sample(400).numpy()
    assert crops.shape == (400, 3, 4, 4) and crops.dtype == np.uint8
    allowed_big, allowed_small = _windows(big, 4), _windows(small, 4)
    seen = {"big": set(), "small": set()}
    for crop in crops:
        key = crop.tobytes()
        kind = "big" if key in allowed_big else "small" if key in allowed_small else None
        assert kind is not None, "a crop that is no window of any image"
        seen[kind].add(key)
    # Area-weighted: the 99-pixel image is drawn far more often, and both flips occur.
    assert len(seen["big"]) > 40 and len(seen["small"]) >= 2
    unflipped = {big[:, y : y + 4, x : x + 4].tobytes() for y in range(6) for x in range(8)}
    assert seen["big"] & unflipped and seen["big"] - unflipped
    skipper = CropSampler([big, small], 4, "cpu", small="skip")
    assert len(skipper) == 1 and "1 smaller than the crop left out" in skipper.describe()
    with pytest.raises(DataError, match="smaller than the 16x16 crop"):
        CropSampler([big, small], 16, "cpu", small="skip")


def test_crops_depend_on_the_seed_only() -> None:
    im = np.random.default_rng(0).integers(0, 256, (1, 20, 20), dtype=np.uint8)
    a = CropSampler([im], 5, seed=3).sample(8)
    b = CropSampler([im], 5, seed=3).sample(8)
    c = CropSampler([im], 5, seed=4).sample(8)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_val_tiles_count_only_real_pixels() -> None:
    rng = np.random.default_rng(0)
    planes = rng.integers(0, 256, (3, 5, 7), dtype=np.uint8)
    tiles = make_val_tiles(ImageSet([planes], ["x"]), 4)
    assert tiles.x.shape == (4, 3, 4, 4) and tiles.subpixels == 3 * 5 * 7
    assert torch.equal(tiles.x[3, :, 0, 2], torch.from_numpy(planes[:, 4, 6]))  # edge copy
    assert tiles.valid[3, 0].sum() == 1 * 3  # bottom-right tile: 1 row x 3 columns real
    uniform = HistogramModel(HistogramConfig(3))
    assert evaluate_bpd(uniform, tiles, batch=3) == pytest.approx(8.0, abs=1e-6)
    # A fitted histogram: the exact mean over the image's own 105 subpixels, padding excluded
    # (padding repeats edge pixels, so counting it would change the number).
    fitted = HistogramModel(HistogramConfig(3))
    fitted.fit([rng.integers(0, 64, (3, 8, 8), dtype=np.uint8)])
    logp = fitted.logits.double().numpy()  # (3, 256) nats
    want = -np.mean([logp[c, planes[c]].mean() for c in range(3)]) / math.log(2)
    assert evaluate_bpd(fitted, tiles, batch=2) == pytest.approx(want, rel=1e-6)


# ---------------------------------------------------------------------------------------
# the loop


def test_lr_schedule_warmup_and_cosine() -> None:
    cfg = TrainConfig(data=[], lr=1e-3, warmup=10, final_lr_fraction=0.01)
    assert lr_at(cfg, 0, 0.0) == pytest.approx(1e-4)
    assert lr_at(cfg, 9, 0.0) == pytest.approx(1e-3)
    assert lr_at(cfg, 50, 0.5) == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5))
    assert lr_at(cfg, 99, 1.0) == pytest.approx(1e-5)
    assert lr_at(cfg, 100, 0.5, warmup_origin=100) == pytest.approx(lr_at(cfg, 0, 0.5))


def test_relative_clipping_cuts_spikes_only() -> None:
    g = [torch.tensor([3.0, 0.0]), torch.tensor([4.0])]  # norm 5
    avg = torch.zeros(())
    assert float(clip_relative_(g, avg, 4.0)) == 5.0 and float(avg) == 5.0  # first: no cut
    g = [torch.tensor([30.0, 0.0]), torch.tensor([40.0])]  # norm 50 > 4 x 5: cut to 20
    assert float(clip_relative_(g, avg, 4.0)) == pytest.approx(50.0)
    assert torch.allclose(torch.cat(g), torch.tensor([12.0, 0.0, 16.0]))
    assert float(avg) == pytest.approx(5.0 + 0.01 * (20.0 - 5.0))
    g = [torch.tensor([6.0, 8.0])]  # norm 10 < 4 x avg: untouched
    clip_relative_(g, avg, 4.0)
    assert torch.equal(g[0], torch.tensor([6.0, 8.0]))
    g = [torch.tensor([600.0, 800.0])]
    assert float(clip_relative_(g, torch.zeros(()), None)) == pytest.approx(1000.0)
    assert torch.equal(g[0], torch.tensor([600.0, 800.0]))  # off: norm only


def test_training_lowers_the_loss(tmp_path: Path, photo_dir: Path, tiny_family: str) -> None:
    res = train(tiny_config(tmp_path, photo_dir, steps=60), log=quiet)
    first_val = res.curve[0]["val_bpd"]  # step 0: the initial weights
    assert res.curve[0]["step"] == 0
    train_points = [e["train_bpd"] for e in res.curve if e["train_bpd"] is not None]
    assert res.val_bpd < first_val - 0.5
    assert train_points[-1] < train_points[0] - 0.5
    assert res.steps == 60 and res.stopped_by == "steps"
    log = json.loads((tmp_path / "log.json").read_text())
    assert log["curve"] == json.loads(json.dumps(res.curve))
    assert log["result"]["val_bpd"] == res.val_bpd


def test_resume_reproduces_the_uninterrupted_run(
    tmp_path: Path, photo_dir: Path, tiny_family: str
) -> None:
    model = {"channels": 3, "hidden": 8, "dropout": 0.2}  # dropout: the RNG must be restored
    a = tiny_config(
        tmp_path,
        photo_dir,
        model_config=model,
        steps=12,
        out=None,
        log_path=None,
        ckpt_dir=str(tmp_path / "a"),
        ckpt_every=4,
        ckpt_keep=None,
    )
    res_a = train(a, log=quiet)
    mid = load_checkpoint(tmp_path / "a" / "step-00000004.pt")
    assert mid["step"] == 4 and mid["elapsed_s"] > 0
    b = tiny_config(
        tmp_path,
        photo_dir,
        model_config=None,
        steps=12,
        out=None,
        log_path=None,
        ckpt_dir=str(tmp_path / "b"),
        resume=str(tmp_path / "a" / "step-00000004.pt"),
    )
    res_b = train(b, log=quiet)
    assert res_b.steps == 12 and res_b.elapsed_s >= mid["elapsed_s"]
    end_a = load_checkpoint(tmp_path / "a")  # a folder: its latest checkpoint
    end_b = load_checkpoint(tmp_path / "b" / "step-00000012.pt")
    assert end_a["step"] == 12
    for part in ("model", "ema"):
        for k, v in end_a[part].items():
            assert torch.equal(v, end_b[part][k]), (part, k)
    for i, s in end_a["optimizer"]["state"].items():
        assert torch.equal(s["exp_avg_sq"], end_b["optimizer"]["state"][i]["exp_avg_sq"])
    assert [e["train_bpd"] for e in res_a.curve] == [e["train_bpd"] for e in res_b.curve]
    # The checkpoint's model is used; another one is refused.
    c = tiny_config(
        tmp_path,
        photo_dir,
        model_config={"channels": 3, "hidden": 4},
        steps=13,
        out=None,
        log_path=None,
        resume=str(tmp_path / "a"),
    )
    with pytest.raises(TrainError, match="cannot resume it"):
        train(c, log=quiet)


def test_lite_checkpoints_are_small_parts_and_resume(
    tmp_path: Path, photo_dir: Path, tiny_family: str
) -> None:
    cfg = tiny_config(
        tmp_path,
        photo_dir,
        model_config={"channels": 3, "hidden": 8},
        steps=6,
        out=None,
        log_path=None,
        ckpt_dir=str(tmp_path / "c"),
        ckpt_lite=True,
    )
    train(cfg, log=quiet)
    lite = load_checkpoint(tmp_path / "c" / "lite-00000006.pt")
    assert lite.get("model") is None and lite.get("optimizer") is None
    assert all(v.dtype == torch.float16 for v in lite["ema"].values() if v.is_floating_point())
    more = tiny_config(
        tmp_path,
        photo_dir,
        model_config=None,
        steps=9,
        out=None,
        log_path=None,
        resume=str(tmp_path / "c" / "lite-00000006.pt"),
        ckpt_dir=None,
    )
    messages: list[str] = []
    res = train(more, log=messages.append)
    assert res.steps == 9 and any("lite checkpoint (optimizer restarts)" in m for m in messages)


def test_checkpoint_parts_round_trip(tmp_path: Path) -> None:
    state = {
        "format": "nncompress-train-ckpt-1",
        "a": {"w": torch.arange(3000, dtype=torch.float32), "n": 3},
        "b": [torch.ones(2000), ("x", 1.5)],
    }
    save_checkpoint(state, tmp_path / "s.pt", part_bytes=10_000)
    parts = sorted(tmp_path.glob("s.pt.part*"))
    assert len(parts) == 2  # 12,000 and 8,000 bytes of tensors
    back = load_checkpoint(tmp_path / "s.pt")
    assert torch.equal(back["a"]["w"], state["a"]["w"]) and back["a"]["n"] == 3
    assert torch.equal(back["b"][0], state["b"][0]) and back["b"][1] == ("x", 1.5)
    (tmp_path / "junk.pt").write_bytes(b"nope")
    with pytest.raises(TrainError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")


def test_export_loads_with_config_info_and_measured_val(
    tmp_path: Path, photo_dir: Path, tiny_family: str
) -> None:
    res = train(tiny_config(tmp_path, photo_dir, steps=10, val_tile=6), log=quiet)
    lm = load_model_file(tmp_path / "m.safetensors")
    assert lm.family == "tinycausal" and lm.model.config_dict() == {
        "channels": 3,
        "hidden": 8,
        "dropout": 0.0,
    }
    info = lm.info
    assert info["family"] == "tinycausal" and info["config"] == lm.model.config_dict()
    assert info["tile"] == [6, 6] and info["crop"] == 8 and info["steps"] == 10
    assert info["val_bpd"] == res.val_bpd and info["device"].startswith("cpu")
    assert "4 images" in info["data"] and info["train_minutes"] >= 0
    # The recorded number is that of the weights in the file, on the held-out tiles.
    _, held = split_holdout(load_images([photo_dir], 3), 0.2)
    tiles = make_val_tiles(held, 6)
    assert evaluate_bpd(lm.model, tiles, batch=7) == pytest.approx(info["val_bpd"], abs=1e-6)


def test_export_in_float16_is_what_val_measured(
    tmp_path: Path, photo_dir: Path, tiny_family: str
) -> None:
    res = train(tiny_config(tmp_path, photo_dir, steps=5, weights_dtype="float16"), log=quiet)
    lm = load_model_file(tmp_path / "m.safetensors")
    assert lm.info["weights_dtype"] == "float16"
    w = lm.model.out.weight
    assert torch.equal(w, w.half().float())  # stored in 16 bits
    _, held = split_holdout(load_images([photo_dir], 3), 0.2)
    tiles = make_val_tiles(held, 8)
    assert evaluate_bpd(lm.model, tiles, batch=16) == pytest.approx(res.val_bpd, abs=1e-6)


def test_init_starts_from_a_model_file_and_records_it(
    tmp_path: Path, photo_dir: Path, tiny_family: str
) -> None:
    first = train(tiny_config(tmp_path, photo_dir, steps=30), log=quiet)
    base = load_model_file(tmp_path / "m.safetensors")
    # Zero steps from --init exports the same weights: the run really starts from them.
    out0 = tmp_path / "same.safetensors"
    train(
        tiny_config(
            tmp_path,
            photo_dir,
            steps=0,
            out=str(out0),
            init=str(base.path),
            model_config=None,
            log_path=None,
        ),
        log=quiet,
    )
    same = load_model_file(out0)
    for k, v in base.model.state_dict().items():
        assert torch.equal(v, same.model.state_dict()[k]), k
    assert same.info["init_from"]["digest"] == base.digest.hex()
    assert same.info["init_from"]["steps"] == first.steps == 30
    # More steps move on from there (another dropout fits the same tensors).
    cfg = dict(init=str(base.path), log_path=None, steps=10, lr=1e-3, warmup=0)
    more = train(
        tiny_config(
            tmp_path,
            photo_dir,
            out=str(tmp_path / "more.safetensors"),
            model_config={"channels": 3, "hidden": 8, "dropout": 0.1},
            **cfg,
        ),
        log=quiet,
    )
    assert more.steps == 10 and more.val_bpd < first.val_bpd + 0.05
    assert load_model_file(tmp_path / "more.safetensors").model.config_dict()["dropout"] == 0.1
    with pytest.raises(TrainError, match="does not fit the model options"):
        train(
            tiny_config(
                tmp_path,
                photo_dir,
                out=str(tmp_path / "bad.safetensors"),
                model_config={"channels": 3, "hidden": 4, "dropout": 0.0},
                **cfg,
            ),
            log=quiet,
        )
    (tmp_path / "broken.safetensors").write_bytes(b"not a model")
    with pytest.raises(TrainError, match="--init"):
        train(
            tiny_config(
                tmp_path,
                photo_dir,
                out=str(tmp_path / "b.safetensors"),
                model_config=None,
                **{**cfg, "init": str(tmp_path / "broken.safetensors")},
            ),
            log=quiet,
        )


def test_time_budget_stops_and_outputs_are_not_overwritten(
    tmp_path: Path, photo_dir: Path, tiny_family: str
) -> None:
    cfg = tiny_config(tmp_path, photo_dir, steps=None, minutes=0.002, val_fraction=None)
    res = train(cfg, log=quiet)
    assert res.stopped_by == "minutes" and res.elapsed_s >= 0.12 and res.steps >= 1
    with pytest.raises(TrainError, match="m.safetensors exists"):
        train(cfg, log=quiet)
    with pytest.raises(TrainError, match="give a budget"):
        train(tiny_config(tmp_path, photo_dir, steps=None, force=True), log=quiet)


def test_plot_writes_a_png(tmp_path: Path, photo_dir: Path, tiny_family: str) -> None:
    train(tiny_config(tmp_path, photo_dir, steps=20), log=quiet)
    plot_curve(tmp_path / "log.json", tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:8] == PNG_MAGIC
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(Exception, match="not a training log"):
        plot_curve(tmp_path / "bad.json", tmp_path / "d.png")


# ---------------------------------------------------------------------------------------
# the CLI command


def invoke(*args: str):
    return CliRunner().invoke(train_cmd, list(args), catch_exceptions=False)


def one_line_error(result, needle: str) -> None:
    assert result.exit_code != 0
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], result.output
    assert "Traceback" not in result.output


def test_cli_help_describes_every_option() -> None:
    r = invoke("--help")
    assert r.exit_code == 0 and "DATA..." in r.output
    for p in train_cmd.params:
        if p.param_type_name == "option":
            assert p.help, f"{p.name} has no help text"
    for opt in ("--out", "--size", "--val-tile", "--resume", "--minutes", "--ckpt-lite"):
        assert opt in r.output


def test_cli_trains_refuses_to_overwrite_and_reports_bad_input(
    tmp_path: Path, photo_dir: Path, tiny_family: str
) -> None:
    out = tmp_path / "m.safetensors"
    opts = "--model tinycausal --crop 8 --batch 8 --steps 6 --val-fraction 0.2 --device cpu"
    args = [str(photo_dir), "--out", str(out), *opts.split(), "--model-config", '{"hidden": 4}']
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    assert "wrote" in r.output and out.is_file()
    assert (tmp_path / "m.log.json").is_file()
    assert (tmp_path / "m.ckpt" / "step-00000006.pt").is_file()
    assert load_model_file(out).model.config_dict()["hidden"] == 4
    one_line_error(invoke(*args), "m.safetensors exists (use --force to overwrite)")
    assert invoke(*args, "--force").exit_code == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    small = "--model tinycausal --steps 1".split()
    r = invoke(str(empty), "--out", str(tmp_path / "e.safetensors"), *small)
    one_line_error(r, "no image files found")
    grey = tmp_path / "grey"
    grey.mkdir()
    Image.fromarray(smooth_image(8, 8, 0, 1)[..., 0], "L").save(grey / "g.png")
    r = invoke(str(grey), "--out", str(tmp_path / "g.safetensors"), *small)
    one_line_error(r, "has 1 channel(s), the model codes 3")
    r = invoke(str(photo_dir), "--out", str(tmp_path / "x.safetensors"), *small, "--size", "tiny")
    assert r.exit_code == 2 and "describe pixelcnnpp models" in r.output
    r = invoke(str(photo_dir), "--out", str(tmp_path / "x.safetensors"))
    assert r.exit_code == 2 and "give a budget" in r.output


def test_cli_bad_pixelcnnpp_config_is_one_line(tmp_path: Path, photo_dir: Path) -> None:
    out = str(tmp_path / "x.safetensors")
    r = invoke(str(photo_dir), "--out", out, "--model-config", '{"channels": 2}', "--steps", "1")
    one_line_error(r, "bad model configuration")


# ---------------------------------------------------------------------------------------
# end to end: a trained PixelCNN++ codes an image exactly


def test_trained_pixelcnnpp_round_trips_through_the_api(tmp_path: Path, photo_dir: Path) -> None:
    from nncompress import api

    cfg = TrainConfig(
        data=[str(photo_dir)],
        out=str(tmp_path / "p.safetensors"),
        family="pixelcnnpp",
        model_config={
            "channels": 3,
            "nr_resnet": 1,
            "nr_filters": 8,
            "nr_logistic_mix": 2,
            "dropout": 0.0,
        },
        crop=8,
        batch=8,
        steps=3,
        val_fraction=0.2,
        progress=False,
    )
    res = train(cfg, log=quiet)
    lm = load_model_file(res.out)
    assert lm.info["tile"] == [8, 8]
    lm = load_model_file(integer_path(res.out))  # the model that codes
    assert lm.info["tile"] == [8, 8] and api.model_tile(lm) == (8, 8)
    image = Image.fromarray(smooth_image(11, 9, 7))
    data = api.compress(image, model=lm, device="cpu", method="model")
    back = api.decompress(data, model=lm, device="cpu")
    assert np.array_equal(np.asarray(back), np.asarray(image))


def test_torchrun_trains_with_two_processes_on_cpu(tmp_path: Path, photo_dir: Path) -> None:
    """DistributedDataParallel under torchrun (gloo on CPU): both ranks train one model
    (the run checks at the end that the replicas agree), rank 0 writes it, and it codes."""
    import os
    import subprocess
    import sys

    from nncompress import api

    out = tmp_path / "ddp.safetensors"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
        "--standalone", "-m", "nncompress.train.cli", str(photo_dir), "-o", str(out),
        "--nr-resnet", "1", "--nr-filters", "8", "--nr-mix", "2", "--dropout", "0",
        "--crop", "8", "--batch", "4", "--steps", "24", "--lr", "1e-2", "--warmup", "2",
        "--val-fraction", "0.2", "--val-every", "12", "--threads", "1", "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    lm = load_model_file(integer_path(out))  # the model that codes
    assert lm.info["batch"] == 8 and lm.info["device"].startswith("2 x cpu")
    log = json.loads(out.with_suffix(".log.json").read_text())
    vals = [e["val_bpd"] for e in log["curve"] if e["val_bpd"] is not None]
    assert len(vals) >= 2 and vals[-1] < vals[0] - 0.5
    image = Image.fromarray(smooth_image(11, 9, 7))
    data = api.compress(image, model=lm, device="cpu", method="model")
    back = api.decompress(data, model=lm, device="cpu")
    assert np.array_equal(np.asarray(back), np.asarray(image))


def test_torchrun_checkpoints_resume_on_another_process_count(
    tmp_path: Path, photo_dir: Path
) -> None:
    """Two gloo ranks train and checkpoint; one process resumes from that checkpoint (and
    two ranks from the one process's): the step count goes on, the curve is kept, and the
    model that comes out codes."""
    import os
    import subprocess
    import sys

    from nncompress import api

    out, ckpt = tmp_path / "ddp.safetensors", tmp_path / "ckpt"
    common = [
        "-m", "nncompress.train.cli", str(photo_dir), "-o", str(out), "--ckpt-dir", str(ckpt),
        "--crop", "8", "--batch", "4", "--lr", "1e-2", "--warmup", "2", "--val-fraction",
        "0.2", "--val-every", "6", "--threads", "1", "--no-progress",
    ]  # fmt: skip
    model = ["--nr-resnet", "1", "--nr-filters", "8", "--nr-mix", "2", "--dropout", "0"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = [
        [*torchrun, *common, *model, "--steps", "12"],
        [sys.executable, *common, "--steps", "18", "--resume", str(ckpt), "--force"],
        [*torchrun, *common, "--steps", "24", "--resume", str(ckpt), "--force"],
    ]
    steps = []
    for cmd in runs:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
        assert r.returncode == 0, r.stderr[-2000:]
        log = json.loads(out.with_suffix(".log.json").read_text())
        steps.append(max(e["step"] for e in log["curve"]))
        if cmd is not runs[0]:
            assert "resumed from checkpoint" in r.stdout + r.stderr
    assert steps == [12, 18, 24], steps
    lm = load_model_file(integer_path(out))
    assert lm.info["batch"] == 8 and lm.info["device"].startswith("2 x cpu")
    image = Image.fromarray(smooth_image(11, 9, 7))
    data = api.compress(image, model=lm, device="cpu", method="model")
    assert np.array_equal(
        np.asarray(api.decompress(data, model=lm, device="cpu")), np.asarray(image)
    )
