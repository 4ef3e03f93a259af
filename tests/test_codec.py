"""The shared step loop, tiling and the API round trips (histogram models: fast)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import VAL_DIR, fitted_histogram, random_image, tiny_pixelcnn
from PIL import Image

from nncompress import api, container
from nncompress.codec import Schedule, TileGrid
from nncompress.modelfile import LoadedModel


def as_loaded(model, name="test") -> LoadedModel:
    from nncompress.modelfile import export_tensors, weights_digest

    digest = weights_digest(model.family, model.config_dict(), export_tensors(model))
    return LoadedModel(name=name, digest=digest, model=model, info={"tile": [8, 8]})


@pytest.mark.parametrize(
    "h,w,t", [(1, 1, 4), (1, 9, 4), (9, 1, 4), (7, 5, 3), (8, 8, 4), (5, 13, 16)]
)
def test_tile_grid_split_join_round_trip(h, w, t):
    rng = np.random.default_rng(h * 100 + w)
    planes = rng.integers(0, 256, size=(3, h, w), dtype=np.uint8)
    grid = TileGrid(h, w, t, t)
    tiles = grid.split(planes)
    assert tiles.shape == (grid.count, 3, t, t)
    assert np.array_equal(grid.join(tiles), planes)
    ext = grid.extents()
    assert ext[:, 0].reshape(grid.rows, grid.cols)[:, 0].sum() == h
    assert ext[:, 1].reshape(grid.rows, grid.cols)[0].sum() == w


def test_edge_padding_replicates_last_row_and_column():
    planes = np.arange(6, dtype=np.uint8).reshape(1, 2, 3)
    tile = TileGrid(2, 3, 4, 4).split(planes, "edge")[0, 0]
    assert tile.tolist() == [[0, 1, 2, 2], [3, 4, 5, 5], [3, 4, 5, 5], [3, 4, 5, 5]]
    zero = TileGrid(2, 3, 4, 4).split(planes, "zero")[0, 0]
    assert zero[2:].sum() == 0 and zero[:, 3].sum() == 0


def test_schedule_plan_pads_last_batch():
    sched, firsts = Schedule.plan([3, 5, 1], max_batch=4)
    assert firsts == [0, 3, 8]
    assert (sched.batch_slots, sched.total_slots) == (4, 12)


@pytest.mark.parametrize("mode", ["L", "RGB"])
@pytest.mark.parametrize("size", [(1, 1), (1, 17), (17, 1), (13, 9), (16, 16), (33, 20)])
def test_round_trip_odd_sizes(mode, size):
    lm = as_loaded(fitted_histogram(1 if mode == "L" else 3))
    im = random_image(mode, *size, seed=size[0])
    data = api.compress(im, lm, "cpu")
    out = api.decompress(data, lm, "cpu")
    assert out.mode == mode and out.size == im.size
    assert np.array_equal(np.asarray(out), np.asarray(im))


def test_several_images_one_schedule_decoded_together_and_alone():
    lm = as_loaded(fitted_histogram(3))
    ims = [random_image("RGB", w, h, seed=w) for w, h in [(20, 11), (3, 30), (8, 8)]]
    results = api.compress_detailed(ims, lm, "cpu", max_batch=4)
    headers = [r.header for r in results]
    assert len({h.group for h in headers}) == 1
    assert [h.first_slot for h in headers] == [0, 6, 10]
    together = api.decompress_many([r.data for r in results], lm, "cpu")
    for a, b in zip(together, ims):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    # A file decoded on its own: other slots of its batches hold filler.
    alone = api.decompress(results[1].data, lm, "cpu")
    assert np.array_equal(np.asarray(alone), np.asarray(ims[1]))


def test_encoding_is_deterministic():
    lm = as_loaded(fitted_histogram(3))
    im = random_image("RGB", 19, 7)
    assert api.compress(im, lm, "cpu") == api.compress(im, lm, "cpu")


@pytest.mark.skipif(not VAL_DIR.is_dir(), reason="shared photos not present")
def test_payload_within_one_percent_of_model_nll_on_a_photo():
    photo = Image.open(sorted(VAL_DIR.glob("*.webp"))[0]).convert("RGB").crop((0, 0, 96, 64))
    lm = as_loaded(fitted_histogram(3))
    lm.model.fit([np.asarray(photo).transpose(2, 0, 1)])
    lm = as_loaded(lm.model)
    res = api.compress_detailed([photo], lm, "cpu")[0]
    nll = api.score([photo], lm, "cpu")[0]
    assert res.subpixels >= 10_000
    assert abs(res.model_bits_per_subpixel / nll - 1) < 1e-3  # coding PMFs = model
    payload = container.unpack(res.data)[1]
    assert 8 * len(payload) / res.subpixels / nll - 1 < 0.01  # range coder overhead < 1 %
    assert np.array_equal(np.asarray(api.decompress(res.data, lm, "cpu")), np.asarray(photo))


@pytest.mark.parametrize("mode,coded", [("RGBA", "RGBA"), ("LA", "LA"), ("P", "RGB"), ("1", "L")])
def test_round_trip_of_converted_and_alpha_modes(mode, coded):
    base = random_image("RGB", 23, 11, seed=5)
    im = base.quantize(32) if mode == "P" else base.convert(mode)
    lm = as_loaded(fitted_histogram(1 if coded in ("L", "LA") else 3))
    out = api.decompress(api.compress(im, lm, "cpu"), lm, "cpu")
    assert out.mode == coded
    want = im.convert(coded) if mode in ("P", "1") else im
    assert np.array_equal(np.asarray(out), np.asarray(want))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_round_trip_through_graphs_and_eager() -> None:
    """The whole coder on CUDA (pixel steps, row starts and channel PMFs replayed as
    graphs): lossless, and the same bytes as launching the kernels one by one."""
    from nncompress.modelfile import export_tensors, weights_digest

    m = tiny_pixelcnn(3, seed=3)
    lm = LoadedModel("tiny", weights_digest(m.family, m.config_dict(), export_tensors(m)), m, {})
    images = [random_image("RGB", 37, 21, seed=1), random_image("RGB", 9, 30, seed=2)]
    blobs = api.compress_many(images, lm, "cuda", tile=8)
    for im, out in zip(images, api.decompress_many(blobs, lm, "cuda")):
        assert np.array_equal(np.asarray(out), np.asarray(im))
    assert api.decompress(blobs[1], lm, "cuda").tobytes() == images[1].tobytes()
    mp = pytest.MonkeyPatch()
    mp.setenv("NNCOMPRESS_CUDA_GRAPHS", "0")
    try:
        assert api.compress_many(images, lm, "cuda", tile=8) == blobs
    finally:
        mp.undo()


def test_coding_context_sets_and_restores_the_deterministic_flag() -> None:
    from nncompress.runtime import coding_context

    before = torch.are_deterministic_algorithms_enabled()
    with coding_context(torch.device("cpu"), 1):
        assert torch.are_deterministic_algorithms_enabled()
    assert torch.are_deterministic_algorithms_enabled() == before


def test_coding_does_not_import_the_compiler() -> None:
    """torch.use_deterministic_algorithms imports torch._inductor (and torch._dynamo):
    seconds per CLI call that the coder, which compiles nothing, must not spend."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np; from nncompress import api; from PIL import Image; "
        "from test_codec import as_loaded; from conftest import tiny_pixelcnn; "
        "im = Image.fromarray(np.zeros((5, 6, 3), np.uint8)); m = as_loaded(tiny_pixelcnn()); "
        "out = api.decompress(api.compress(im, model=m, device='cpu'), model=m, device='cpu'); "
        "assert out.tobytes() == im.tobytes(); "
        "print(sorted(k for k in sys.modules if k.startswith(('torch._inductor', 'torch._dyn'))))"
    )
    tests = str(Path(__file__).resolve().parent)
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tests, check=True
    )
    assert res.stdout.strip() == "[]", res.stdout


def _forged(data: bytes, **change) -> bytes:
    """The file with header fields changed and the header CRC recomputed (a crafted file)."""
    import dataclasses

    header, payload = container.unpack(data)
    return container.pack(dataclasses.replace(header, **change), payload)


def test_forged_mode_with_another_channel_count_is_a_format_error():
    from nncompress.errors import FormatError

    lm = as_loaded(fitted_histogram(3))
    data = api.compress(random_image("RGB", 9, 7), lm, "cpu")
    with pytest.raises(FormatError, match="mode L .1 coded channels., but its model"):
        api.decompress(_forged(data, mode="L"), lm, "cpu")


def test_forged_huge_schedule_runs_only_the_batches_of_the_file():
    # total_slots near 2^32: decoding used to walk every empty batch (~33 minutes).
    lm = as_loaded(fitted_histogram(3))
    im = random_image("RGB", 20, 11)
    data = api.compress(im, lm, "cpu")
    h = container.unpack(data)[0]
    forged = _forged(data, total_slots=(2**32 - 1) // h.batch_slots * h.batch_slots)
    out = api.decompress(forged, lm, "cpu")
    assert np.array_equal(np.asarray(out), np.asarray(im))
