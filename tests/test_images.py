"""Image modes: what is coded, what is converted, what is refused."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import random_image
from PIL import Image

from nncompress.errors import UnsupportedImageError
from nncompress.images import open_image, to_picture


def test_rgb_and_l_planes():
    im = random_image("RGB", 5, 3)
    pic = to_picture(im)
    assert pic.planes.shape == (3, 3, 5) and pic.mode == "RGB"
    assert np.array_equal(np.asarray(pic.to_pil()), np.asarray(im))
    g = to_picture(random_image("L", 4, 2))
    assert g.planes.shape == (1, 2, 4) and g.mode == "L"


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_opaque_alpha_is_kept_and_not_coded(mode):
    im = random_image("RGB", 6, 4).convert(mode)
    pic = to_picture(im)
    assert pic.channels == (3 if mode == "RGBA" else 1) and pic.mode == mode
    assert np.array_equal(np.asarray(pic.to_pil()), np.asarray(im))


def test_transparent_alpha_is_refused():
    im = random_image("RGB", 6, 4).convert("RGBA")
    im.putpixel((0, 0), (1, 2, 3, 0))
    with pytest.raises(UnsupportedImageError, match="transparency"):
        to_picture(im)


def test_palette_goes_through_rgb():
    im = random_image("RGB", 8, 8).quantize(16)
    pic = to_picture(im)
    assert pic.mode == "RGB"
    assert np.array_equal(np.asarray(pic.to_pil()), np.asarray(im.convert("RGB")))


@pytest.mark.parametrize(
    "image,match",
    [
        (Image.new("I;16", (4, 4)), "16-bit"),
        (Image.new("CMYK", (4, 4)), "CMYK"),
        (Image.new("F", (4, 4)), "'F'"),
    ],
)
def test_unsupported_modes_are_refused_clearly(image, match):
    with pytest.raises(UnsupportedImageError, match=match):
        to_picture(image)


def test_open_image_rejects_garbage():
    with pytest.raises(UnsupportedImageError, match="not a readable image"):
        open_image(b"definitely not an image")
    buf = io.BytesIO()
    random_image("RGB", 3, 3).save(buf, format="PNG")
    assert open_image(buf.getvalue()).size == (3, 3)
