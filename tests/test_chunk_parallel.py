"""One image's chunks over CPU processes (cpu:N, multidevice.ChunkPool): the balanced chunk
rule, files and pixels the same as one process gives, and the rule by which --device auto
takes more processes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import random_image, tiny_pixelcnn

from nncompress import api, cli, multidevice
from nncompress.cli import main
from nncompress.errors import NncError
from nncompress.files import model_parts, parse
from nncompress.modelfile import save_model
from nncompress.planes import CHUNK_TILES, MIN_CHUNKS, chunk_tiles

# 78x53 in 8x8 tiles: 10 x 7 = 70 tiles (edge tiles padded) -> 2 chunks of 35.
WIDTH, HEIGHT, TILE = 78, 53, 8


def test_chunks_are_balanced_and_capped():
    assert chunk_tiles(384, 32, 32, 512) == 48  # a 768x512 photo: 8 x 48, not 256 + 128
    assert chunk_tiles(16, 32, 32, 512) == 16  # small images: one stream
    assert chunk_tiles(600, 32, 32, 512) == 75  # 8 x 75
    assert chunk_tiles(3000, 32, 32, 512) == 250  # 12 x 250, not 11 x 256 + 184
    assert chunk_tiles(384, 32, 32, 100) == 48  # a small batch caps the chunk
    assert chunk_tiles(384, 32, 32, 40) == 39  # 10 chunks of at most 40
    for count in range(1, 4000, 7):
        for max_batch in (512, 100, 3):
            chunk = chunk_tiles(count, 32, 32, max_batch)
            chunks = math.ceil(count / chunk)
            last = count - (chunks - 1) * chunk
            assert 1 <= chunk <= min(CHUNK_TILES, max_batch)
            assert chunk - last < chunks  # sizes differ by less than one tile per chunk
            assert chunks >= math.ceil(count / min(CHUNK_TILES, max_batch))
            if count >= MIN_CHUNKS * 32:
                assert chunks >= MIN_CHUNKS


@pytest.fixture
def pcnn(model_dir: Path) -> Path:
    from nncompress.quant.convert import to_integer

    path = model_dir / "pcnn-int.safetensors"
    save_model(to_integer(tiny_pixelcnn(3)), path, info={"tile": [TILE, TILE]})
    return path


def test_one_image_over_two_workers_is_the_file_of_one_process(pcnn: Path):
    image = random_image("RGB", WIDTH, HEIGHT, seed=3)
    (one,) = api.compress_detailed([image], model=str(pcnn), device="cpu", method="model")
    (header,) = model_parts(parse(one.data))
    assert math.ceil(70 / header.chunk_tiles) == 2  # something to split
    seen: list[tuple[int, int]] = []  # (total, steps reported)

    def progress(total: int, label: str):
        seen.append((total, 0))
        return lambda k: seen.__setitem__(-1, (seen[-1][0], seen[-1][1] + k))

    (two,) = api.compress_detailed(
        [image], model=str(pcnn), device="cpu:2", method="model", verify=True, progress=progress
    )
    assert two.data == one.data and two.method == "model"
    # Encode and the verify pass's decode, each reported in full by the workers.
    assert len(seen) == 2 and all(total == done > 0 for total, done in seen)
    back = api.decompress_detailed([one.data], device="cpu:3")  # 2 chunks: 2 workers
    assert np.array_equal(back[0].content.frames[0], np.asarray(image))


def test_a_chunk_worker_failure_is_one_error(pcnn: Path, monkeypatch: pytest.MonkeyPatch):
    """A model without a file cannot go to workers: a clear error, not a hang."""
    image = random_image("RGB", WIDTH, HEIGHT, seed=4)
    lm = api.load_model(pcnn)
    monkeypatch.setattr(lm, "path", None)
    with pytest.raises(NncError, match="has no file"):
        api.compress_detailed([image], model=lm, device="cpu:2", method="model")
    # One chunk needs no worker: coded here, whatever N.
    small = random_image("RGB", 12, 9, seed=5)
    (r,) = api.compress_detailed([small], model=lm, device="cpu:2", method="model")
    assert r.data == api.compress(small, lm, "cpu", method="model")


def test_the_auto_rule():
    limit = multidevice.AUTO_CPU_POOL_SECONDS
    assert multidevice.auto_cpu_workers(limit, 8) == 1  # small work: this process
    assert multidevice.auto_cpu_workers(limit + 1, 8) == 8  # large: every usable core
    assert multidevice.auto_cpu_workers(1e6, 1) == 1  # one core: nothing to gain
    assert multidevice.workers("cpu:all") == [multidevice.Worker("cpu")] * min(
        multidevice.usable_cores(), multidevice.MAX_WORKERS
    )
    photo = [("pixelcnnpp-photo-small-int", 90.0, 768 * 512)]  # ~35 s on one core
    thumb = [("pixelcnnpp-photo-small-int", 90.0, 128 * 128)]  # ~1.5 s
    cores = multidevice.usable_cores()
    assert cli._auto_cpu_device("auto", photo) == ("auto" if cores == 1 else f"cpu:{cores}")
    assert cli._auto_cpu_device("auto", thumb) == "auto"
    assert cli._auto_cpu_device("cpu", photo) == "cpu"  # explicit: one process
    assert cli._auto_cpu_device("cpu:2", thumb) == "cpu:2"


@pytest.mark.skipif(torch.cuda.is_available(), reason="auto means CUDA there")
def test_cli_auto_takes_the_cores_for_long_work(
    tmp_path: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    from nncompress.quant.convert import to_integer

    info = {"tile": [TILE, TILE], "cpu_seconds_per_megapixel": 1e4}  # "slow": ~40 s here
    save_model(to_integer(tiny_pixelcnn(3)), model_dir / "slow.safetensors", info=info)
    monkeypatch.setattr(multidevice, "usable_cores", lambda: 2)
    pools: list[int] = []
    real = multidevice.ChunkPool.__init__

    def spy(self, n):
        pools.append(n)
        real(self, n)

    monkeypatch.setattr(multidevice.ChunkPool, "__init__", spy)
    src = tmp_path / "a.png"
    random_image("RGB", WIDTH, HEIGHT, seed=6).save(src)
    runner = CliRunner()
    outs = {}
    for device in ("auto", "cpu"):
        out = tmp_path / f"{device}.nnc"
        args = ["encode", str(src), "-o", str(out), "-m", "slow", "--method", "model", "-q"]
        r = runner.invoke(main, [*args, "--device", device])
        assert r.exit_code == 0, r.output
        outs[device] = out.read_bytes()
    assert pools == [2]  # auto took both cores, cpu stayed in this process
    assert outs["auto"] == outs["cpu"]
    r = runner.invoke(main, ["decode", str(tmp_path / "auto.nnc"), "-o", str(tmp_path / "b.png")])
    assert r.exit_code == 0, r.output
    assert pools == [2, 2]
    from PIL import Image

    assert Image.open(tmp_path / "b.png").tobytes() == Image.open(src).tobytes()
    bad = runner.invoke(main, ["encode", str(src), "--device", "cpu:x"])
    assert bad.exit_code == 2 and "cpu:all" in bad.output
