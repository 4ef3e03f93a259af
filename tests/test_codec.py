"""The shared step loop, tiling and the API round trips (histogram models: fast)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import VAL_DIR, fitted_histogram, forged, model_part, random_image, tiny_pixelcnn
from PIL import Image

from nncompress import api, files
from nncompress.codec import TileGrid, chunk_ranges, plan_batches
from nncompress.errors import UnsupportedImageError
from nncompress.modelfile import LoadedModel
from nncompress.quant.convert import to_integer


def as_loaded(model, name="test") -> LoadedModel:
    """A loaded model as the coder needs it: float models converted to integer ones."""
    from nncompress.modelfile import export_tensors, weights_digest

    model = to_integer(model)
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


def test_batches_are_packs_of_whole_chunks():
    class Job:
        def __init__(self, count):
            self.count = count

    jobs = [Job(c) for c in (3, 5, 1, 2, 2)]
    sizes = [[j.count for j in b] for b in plan_batches(jobs, 4)]
    assert sizes == [[3], [5], [1, 2], [2]]  # a chunk larger than the batch runs alone
    assert [list(r) for r in chunk_ranges(5, 2)] == [[0, 1], [2, 3], [4]]


@pytest.mark.parametrize("mode", ["L", "RGB"])
@pytest.mark.parametrize("size", [(1, 1), (1, 17), (17, 1), (13, 9), (16, 16), (33, 20)])
def test_round_trip_odd_sizes(mode, size):
    lm = as_loaded(fitted_histogram(1 if mode == "L" else 3))
    im = random_image(mode, *size, seed=size[0])
    data = api.compress(im, lm, "cpu", method="model")
    assert files.parse(data).header.parts[0].method == "model"
    out = api.decompress(data, lm, "cpu")
    assert out.mode == mode and out.size == im.size
    assert np.array_equal(np.asarray(out), np.asarray(im))


def test_several_images_one_schedule_decoded_together_and_alone():
    lm = as_loaded(fitted_histogram(3))
    ims = [random_image("RGB", w, h, seed=w) for w, h in [(20, 11), (3, 30), (8, 8)]]
    results = api.compress_detailed(ims, lm, "cpu", max_batch=4, method="model")
    assert [model_part(r.data)[0].chunk_tiles for r in results] == [3, 4, 1]  # 6, 4, 1 tiles
    # The same bytes as each image encoded alone (with the same chunk size).
    for r, im in zip(results, ims):
        alone = api.compress_detailed([im], lm, "cpu", max_batch=4, method="model")
        assert alone[0].data == r.data
    blobs = [r.data for r in results]
    for max_batch in (1, 3, 64):  # any batching: tables depend on a tile's pixels only
        together = api.decompress_many(blobs, lm, "cpu", max_batch=max_batch)
        for a, b in zip(together, ims):
            assert np.array_equal(np.asarray(a), np.asarray(b))
    alone = api.decompress(results[1].data, lm, "cpu")
    assert np.array_equal(np.asarray(alone), np.asarray(ims[1]))


@pytest.mark.parametrize("threads", [1, 2])
def test_pixelcnn_file_decodes_with_any_batch_and_thread_count(threads):
    """Integer PixelCNN++: one file decodes alone, batched with another file, with batches
    of 1, 3 and all, with 1 and 2 torch threads; identical pixels each time."""
    from nncompress import runtime

    lm = as_loaded(tiny_pixelcnn(3, seed=4))
    ims = [random_image("RGB", 13, 10, seed=1), random_image("RGB", 5, 17, seed=2)]
    blobs = api.compress_many(ims, lm, "cpu", tile=4, method="model")
    assert blobs[0] == api.compress(ims[0], lm, "cpu", tile=4, method="model")
    mp = pytest.MonkeyPatch()
    mp.setattr(runtime, "CODING_CPU_THREADS", threads)
    try:
        for max_batch in (1, 3, 64):
            outs = api.decompress_many(blobs, lm, "cpu", max_batch=max_batch)
            assert [o.tobytes() for o in outs] == [i.tobytes() for i in ims]
        assert api.decompress(blobs[1], lm, "cpu").tobytes() == ims[1].tobytes()
    finally:
        mp.undo()


def test_encoding_is_deterministic():
    lm = as_loaded(fitted_histogram(3))
    im = random_image("RGB", 19, 7)
    assert api.compress(im, lm, "cpu") == api.compress(im, lm, "cpu")
    once = api.compress(im, lm, "cpu", method="model")
    assert once == api.compress(im, lm, "cpu", method="model")


@pytest.mark.skipif(not VAL_DIR.is_dir(), reason="shared photos not present")
def test_payload_within_one_percent_of_model_nll_on_a_photo():
    photo = Image.open(sorted(VAL_DIR.glob("*.webp"))[0]).convert("RGB").crop((0, 0, 96, 64))
    model = fitted_histogram(3)
    model.fit([np.asarray(photo).transpose(2, 0, 1)])
    lm = as_loaded(model)
    res = api.compress_detailed([photo], lm, "cpu", method="model")[0]
    nll = api.score([photo], lm, "cpu")[0]
    assert res.subpixels >= 10_000 and res.model_samples == res.subpixels
    assert abs(res.model_bits_per_subpixel / nll - 1) < 1e-3  # coding PMFs = model
    payload = model_part(res.data)[1]
    assert 8 * len(payload) / res.subpixels / nll - 1 < 0.01  # range coder overhead < 1 %
    assert np.array_equal(np.asarray(api.decompress(res.data, lm, "cpu")), np.asarray(photo))


@pytest.mark.parametrize("mode", ["RGBA", "LA", "1"])
def test_round_trip_of_alpha_and_bilevel_modes_through_the_model(mode):
    base = random_image("RGB", 23, 11, seed=5)
    im = base.convert(mode)
    lm = as_loaded(fitted_histogram(3 if mode == "RGBA" else 1))
    data = api.compress(im, lm, "cpu", method="model")
    assert files.parse(data).header.parts[0].method == "model"
    out = api.decompress(data, lm, "cpu")
    assert out.mode == mode
    assert np.array_equal(np.asarray(out), np.asarray(im))


def test_palette_images_keep_indices_and_palette_and_refuse_the_model():
    im = random_image("RGB", 23, 11, seed=5).quantize(32)
    out = api.decompress(api.compress(im, device="cpu"), device="cpu")
    assert out.mode == "P"
    assert np.array_equal(np.asarray(out), np.asarray(im))
    assert out.getpalette()[: 3 * 32] == im.getpalette()[: 3 * 32]
    lm = as_loaded(fitted_histogram(3))
    with pytest.raises(UnsupportedImageError, match="palette indices"):
        api.compress(im, lm, "cpu", method="model")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_round_trip_through_graphs_and_eager() -> None:
    """The whole coder on CUDA (pixel steps, row starts and channel PMFs replayed as
    graphs): lossless, and the same bytes as launching the kernels one by one."""
    from nncompress.modelfile import export_tensors, weights_digest

    m = to_integer(tiny_pixelcnn(3, seed=3))
    lm = LoadedModel("tiny", weights_digest(m.family, m.config_dict(), export_tensors(m)), m, {})
    images = [random_image("RGB", 37, 21, seed=1), random_image("RGB", 9, 30, seed=2)]
    blobs = api.compress_many(images, lm, "cuda", tile=8, method="model")
    for im, out in zip(images, api.decompress_many(blobs, lm, "cuda")):
        assert np.array_equal(np.asarray(out), np.asarray(im))
    assert api.decompress(blobs[1], lm, "cuda").tobytes() == images[1].tobytes()
    mp = pytest.MonkeyPatch()
    mp.setenv("NNCOMPRESS_CUDA_GRAPHS", "0")
    try:
        assert api.compress_many(images, lm, "cuda", tile=8, method="model") == blobs
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
        "data = api.compress(im, model=m, device='cpu', method='model'); "
        "out = api.decompress(data, model=m, device='cpu'); "
        "assert out.tobytes() == im.tobytes(); "
        "print(sorted(k for k in sys.modules if k.startswith(('torch._inductor', 'torch._dyn'))))"
    )
    tests = str(Path(__file__).resolve().parent)
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tests, check=True
    )
    assert res.stdout.strip() == "[]", res.stdout


def test_forged_mode_with_another_channel_count_is_a_format_error():
    from nncompress.errors import FormatError, IntegrityError

    grey = as_loaded(fitted_histogram(1))
    data = api.compress(random_image("L", 9, 7), grey, "cpu", method="model")
    with pytest.raises(FormatError, match="mode RGB .3 coded channels., but its model"):
        api.decompress(forged(data, mode="RGB"), grey, "cpu")
    # An RGB file claimed to be grey: an RGB model codes grey planes too (G = B = R), so
    # the model part decodes, to pixels whose check fails (the mode is in the check).
    rgb = as_loaded(fitted_histogram(3))
    data = api.compress(random_image("RGB", 9, 7), rgb, "cpu", method="model")
    with pytest.raises((IntegrityError, FormatError)):
        api.decompress(forged(data, mode="L"), rgb, "cpu")


@pytest.mark.parametrize("method", ["model", "png", "store"])
def test_forged_swapped_shape_is_caught_by_the_pixel_check(method):
    """Width and height swapped (header CRC recomputed) used to decode silently to a wrong
    shape: the pixel check covers the shape now."""
    from nncompress.errors import FormatError, IntegrityError

    lm = as_loaded(fitted_histogram(3))
    data = api.compress(random_image("RGB", 16, 8), lm, "cpu", method=method)
    h = files.parse(data).header
    with pytest.raises((IntegrityError, FormatError)):
        api.decompress(forged(data, width=h.height, height=h.width), lm, "cpu")


def test_float_models_do_not_write_files():
    from nncompress.errors import ModelMismatchError
    from nncompress.modelfile import export_tensors, weights_digest

    m = fitted_histogram(3)
    lm = LoadedModel("f", weights_digest(m.family, m.config_dict(), export_tensors(m)), m, {})
    with pytest.raises(ModelMismatchError, match="float arithmetic"):
        api.compress(random_image("RGB", 4, 4), lm, "cpu")
