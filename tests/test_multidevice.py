"""Coding on several devices (nncompress.multidevice): specs, shares, and that two CPU
worker processes write the same files as one device (the integer path: a file's bytes do
not depend on the device or on its batch-mates) and decode them to the same content."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import random_image, tiny_pixelcnn

from nncompress import api, multidevice
from nncompress.cli import main
from nncompress.errors import DeviceMismatchError
from nncompress.modelfile import save_model


def test_specs_name_their_workers():
    assert multidevice.workers("cpu:3") == [multidevice.Worker("cpu")] * 3
    assert not multidevice.is_multi("cpu") and multidevice.is_multi("cuda:all")
    for bad in ("cpu:0", "cpu:x", "cpu:", "gpu:1", f"cpu:{multidevice.MAX_WORKERS + 1}"):
        with pytest.raises(DeviceMismatchError):
            multidevice.workers(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")
def test_gpu_specs_without_a_gpu_are_refused():
    for spec in ("cuda:all", "cuda:0", "cuda:0,1"):
        with pytest.raises(DeviceMismatchError, match="no CUDA device"):
            multidevice.workers(spec)


def test_shares_balance_the_work_and_keep_order():
    got = multidevice.shares([5, 1, 1, 1, 1, 1], 2)
    assert got == [[0], [1, 2, 3, 4, 5]]
    got = multidevice.shares([3, 3, 2, 2, 1, 1], 3)
    assert sorted(i for s in got for i in s) == list(range(6))
    assert [sum([3, 3, 2, 2, 1, 1][i] for i in s) for s in got] == [4, 4, 4]
    assert all(s == sorted(s) for s in got)
    assert multidevice.shares([7, 1], 4) == [[0], [1]]  # no empty shares


@pytest.fixture
def pcnn_dir(model_dir: Path) -> Path:
    from nncompress.quant.convert import to_integer

    save_model(
        to_integer(tiny_pixelcnn(3)), model_dir / "pcnn-int.safetensors", info={"tile": [8, 8]}
    )
    return model_dir


def _images():
    sizes = [(20, 13), (9, 9), (16, 24), (5, 3), (12, 12)]
    return [random_image("RGB", w, h, seed=i) for i, (w, h) in enumerate(sizes)]


def test_two_cpu_workers_write_the_files_one_device_writes(pcnn_dir: Path):
    images = _images()
    one = api.compress_detailed(images, model="pcnn-int", device="cpu", method="model")
    two = api.compress_detailed(images, model="pcnn-int", device="cpu:2", method="model")
    assert [r.data for r in two] == [r.data for r in one]
    assert [r.method for r in two] == ["model"] * len(images)
    back = api.decompress_detailed([r.data for r in one], device="cpu:2")
    alone = api.decompress_detailed([r.data for r in one], device="cpu")
    assert all(api.same_content(a.content, b.content) for a, b in zip(back, alone, strict=True))


def test_the_cli_spreads_a_folder_over_cpu_workers(tmp_path: Path, pcnn_dir: Path):
    """(The CLI hands the API a loaded model: the workers load it from its file.)"""
    folder = tmp_path / "in"
    folder.mkdir()
    for i, im in enumerate(_images()):
        im.save(folder / f"{i}.png")
    runner = CliRunner()
    outs = {}
    for spec in ("cpu", "cpu:2"):
        out = tmp_path / spec.replace(":", "-")
        out.mkdir()
        r = runner.invoke(
            main,
            [
                "encode",
                *map(str, sorted(folder.glob("*.png"))),
                "-o",
                str(out),
                "-m",
                "pcnn-int",
                "--method",
                "model",
                "--device",
                spec,
            ],
        )
        assert r.exit_code == 0, r.output
        outs[spec] = {p.name: p.read_bytes() for p in out.glob("*.nnc")}
    assert len(outs["cpu"]) == 5 and outs["cpu"] == outs["cpu:2"]
    dec = tmp_path / "dec"
    dec.mkdir()
    files = sorted(str(p) for p in (tmp_path / "cpu-2").glob("*.nnc"))
    r = runner.invoke(main, ["decode", *files, "-o", str(dec), "--device", "cpu:2"])
    assert r.exit_code == 0, r.output
    for i, im in enumerate(_images()):
        assert (
            api.decompress((tmp_path / "cpu" / f"{i}.nnc").read_bytes()).tobytes() == im.tobytes()
        )
        from PIL import Image

        assert Image.open(dec / f"{i}.png").tobytes() == im.tobytes()
    bad = runner.invoke(main, ["encode", str(folder / "0.png"), "--device", "cpu:0"])
    assert bad.exit_code == 2 and len(bad.output.strip().splitlines()) == 1, bad.output
