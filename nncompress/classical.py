"""Classical lossless codecs, the alternatives to the learned model in the .nnc container.

An image (or a plane group of it, e.g. its alpha plane) is an (H, W, C) array, C in 1..4
(L, LA, RGB, RGBA), uint8 or uint16. :func:`best` codes it with every applicable method of
:data:`METHODS`, decodes each result, drops any that does not come back exact and returns
the smallest. The codecs are those of maintained libraries (imagecodecs' bindings of libjxl,
libwebp and libpng), never re-implemented here:

``jxl``
    JPEG-XL lossless (distance 0, modular mode), 8 and 16 bit, C in 1..4. 8-bit output is
    a bare codestream (``FF 0A``); 16-bit output is in the ISO BMFF container (libjxl adds a
    ``jxll`` level box), both decode alike. Encoded bytes are the same with 1 or 2 threads.
``webp``
    WebP lossless, method 6, level 100; 8 bit only, at most 16383 pixels a side. L is coded
    as RGB with R = G = B and LA as RGBA (the decoder checks R = G = B). libwebp drops the
    alpha channel when it is all 255; the decoder asks for RGBA, so that comes back as 255.
    RGB under fully transparent alpha is preserved (imagecodecs' lossless encoder keeps it,
    measured); :func:`encode` nevertheless decodes an alpha-carrying result and refuses
    (ValueError) one that does not come back exact.
    In a version-6 .nnc file a WebP part is the bare VP8L bitstream: :func:`webp_bare`
    drops the 20 bytes of RIFF header and chunk header (and the pad byte) after checking
    that :func:`webp_riff` rebuilds libwebp's file byte for byte from what is left; pass
    ``bare_webp=True`` to :func:`best` and :func:`decode` for that form.
``png``
    PNG through libpng (imagecodecs), zlib level 9, adaptive filters, both the default and
    the ``FILTERED`` zlib strategy tried, the smaller kept. 8 and 16 bit. (Pillow with
    ``optimize`` was 0.3 % smaller on 8-bit photos but cannot write 16-bit RGB(A); one path
    for all.)
``store``
    The raw little-endian sample bytes, no header: the container knows shape and dtype.

Effort (``effort`` argument: ``"fast"``, ``"default"``, ``"max"``)
------------------------------------------------------------------
libjxl's effort is 1..10 (11 needs expert options). For lossless: e1 is a fixed fast path,
e2/e3 fixed predictors, e4..e7 learn an MA tree (e7 is libjxl's default), e8/e9 search
more predictors and tree parameters, e10 builds one global tree over the whole image and
is single-threaded; e9 and e10 are slow. Measured on this machine (2 cores,
``numthreads=2``) on smooth multi-octave noise with fine noise (a natural-ish RGB image,
about 4 bits per sample), imagecodecs 2026.3.6, libjxl 0.11.2, libwebp 1.6.0:

=====================  =====================  =====================
encoder                512x512 (0.26 MP)      1024x768 (0.79 MP)
=====================  =====================  =====================
jxl e3                 418250 B   0.03 s      1245266 B   0.06 s
jxl e5                 407666 B   0.24 s      1189322 B   0.60 s
jxl e7                 404446 B   0.35 s      1186652 B   1.06 s
jxl e9                 389316 B   0.90 s      1146025 B   2.78 s
jxl e10                384429 B   2.73 s      1130710 B   8.67 s
webp m6 level 100      402280 B   2.32 s      1193108 B   2.53 s
webp m4 level 100      402890 B   0.16 s      1198490 B   0.22 s
png level 9 (libpng)   424093 B   0.05 s      (both strategies: ~0.1 s / 0.26 MP)
=====================  =====================  =====================

JXL decodes in 0.03 s (512x512) and 0.08 s (1024x768) at every effort. e9 costs about
3.5 s per RGB megapixel and gains 3.5 % over e7; e10 gains a further 1.3 % for 3x the
time. The rule, on the sample count S = H * W * C:

* ``"default"``: e9 if S <= :data:`JXL_SLOW_MAX_SAMPLES` (3 M samples = 1 RGB MP,
  about 3.5 s here), else e7 (about 1.4 s per RGB MP). WebP method 6 level 100.
* ``"fast"``: e3 (about 0.08 s per RGB MP); WebP method 4 level 100.
* ``"max"``: e10 if S <= :data:`JXL_SLOW_MAX_SAMPLES` (about 11 s per RGB MP), else e9.
  WebP method 6 level 100.

PNG is the same at every effort. Encoders get ``numthreads=os.cpu_count()`` (or
``$NNCOMPRESS_CODEC_THREADS``) where the binding takes it (jxl, webp; libpng is
single-threaded).

Decoding: bounds and errors
---------------------------
:func:`decode` allocates the expected (H, W, C) array first and has the library decode
into it (imagecodecs' ``out=``): the binding compares the shape and dtype the codestream
declares (JXL basic info, WebP features, PNG IHDR) with that array *before* it decodes any
pixel and refuses a mismatch, so a file claiming a huge image fails at once (measured:
a 3000x3000 file against a 1x1 expectation fails in under 1 ms). The libraries' working
memory is therefore that of an image of the expected size. Every failure of a library
(malformed, truncated, wrong size, channel count or depth, R != G != B for grey WebP) is a
:class:`~nncompress.errors.FormatError`. There is no checksum in these formats (PNG's chunk
CRCs aside), so corrupted data can decode to other pixels of the right shape: integrity is
the container's pixel CRC's job. Measured on a 10x13 RGBA image, 60 truncations and 150
random byte changes each: jxl 11, webp 73 and store 150 of 210 decoded to other pixels,
png none (libpng prints "PNG warning: IDAT: incorrect data check" on the C stderr when
only the zlib checksum is hit, and the pixels are then exact). A WebP file without alpha is
accepted for an RGBA expectation (alpha 255): that is how libwebp stores opaque RGBA.

Cost of :func:`best` at "default": every method encodes and decodes, so for an RGB
megapixel about 3.5 s (jxl e9) + 2.5 s (webp m6) + 0.3 s (png) on this 2-core machine.

JPEG files
----------
:func:`jpeg_transcode` is JPEG-XL's lossless JPEG recompression: the identical JPEG file
is rebuilt from the JXL file (checked before returning). libjxl handles Huffman-coded
8-bit JPEGs, baseline and progressive, greyscale and YCbCr of any chroma subsampling,
restart markers, EXIF, valid ICC profiles and bytes after EOI (measured, 0.80x..0.90x
of the JPEG's size on 96x128 test images). It refuses CMYK, 12-bit, lossless (SOF3) and
JPEGs with an invalid ICC profile (measured) and, by libjxl's documentation, arithmetic
coding; then the result is None. A tiny JPEG can come out larger (1x1: 632 -> 691 bytes):
the caller compares sizes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import imagecodecs
import numpy as np

from .errors import FormatError

METHODS: tuple[str, ...] = ("jxl", "webp", "png", "store")
"""Classical methods, in preference order for ties."""

EFFORTS: tuple[str, ...] = ("fast", "standard", "default", "max")

JXL_SLOW_MAX_SAMPLES = 3_000_000
"""Largest H * W * C coded with the slow JXL effort (e9 by default, e10 at "max")."""

JXL_EFFORT = {"fast": (3, 3), "standard": (7, 7), "default": (9, 7), "max": (10, 9)}
"""libjxl effort per ``effort``: (up to JXL_SLOW_MAX_SAMPLES, above)."""

WEBP_LEVEL = 100
WEBP_METHOD = {"fast": 4, "standard": 6, "default": 6, "max": 6}
WEBP_MAX_SIDE = 16383  # libwebp's WEBP_MAX_DIMENSION
PNG_LEVEL = 9
PNG_MAX_SIDE = 1_000_000  # libpng's default user limit on width and height
_PNG_STRATEGIES = (imagecodecs.PNG.STRATEGY.DEFAULT, imagecodecs.PNG.STRATEGY.FILTERED)

_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))
_JPEG_SOI = b"\xff\xd8"
#: A simple-format lossless WebP file: "RIFF", u32 size of the rest, "WEBP", then one
#: chunk "VP8L", u32 length n, n bytes of bitstream, a zero pad byte if n is odd.
_RIFF, _WEBP, _VP8L = b"RIFF", b"WEBP", b"VP8L"
_WEBP_HEADER = 20  # RIFF header (12) + chunk header (8)


#: Environment variable capping the classical codecs' threads (default: all cores). libjxl
#: aborts the process when it cannot start a thread, so a process under a tight
#: address-space or thread limit (a sandbox, the fuzz workers) sets it to 1.
THREADS_ENV = "NNCOMPRESS_CODEC_THREADS"


def _threads() -> int:
    value = os.environ.get(THREADS_ENV, "")
    if value.isdigit() and int(value) >= 1:
        return int(value)
    return os.cpu_count() or 1


def _known(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown classical method {method!r}; known: {', '.join(METHODS)}")


def _layout_ok(shape: tuple[int, ...], dtype) -> bool:
    """(H, W, C) with H, W >= 1, C in 1..4, dtype uint8 or uint16 (either byte order)."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        return False
    if dt.newbyteorder("=") not in _DTYPES:
        return False
    if len(shape) != 3:
        return False
    h, w, c = (int(v) for v in shape)
    return h >= 1 and w >= 1 and 1 <= c <= 4


def can_code(method: str, shape: tuple[int, ...], dtype) -> bool:
    """Whether ``method`` codes an (H, W, C) array of this shape and dtype exactly.

    jxl, png, store: uint8 and uint16, C in 1..4 (png: sides up to 1e6). webp: uint8 only,
    sides up to 16383 (L is coded as RGB, LA as RGBA). ValueError for an unknown method.
    """
    _known(method)
    if not _layout_ok(tuple(shape), dtype):
        return False
    h, w, _ = (int(v) for v in shape)
    if method == "webp":
        return np.dtype(dtype).itemsize == 1 and h <= WEBP_MAX_SIDE and w <= WEBP_MAX_SIDE
    if method == "png":
        return h <= PNG_MAX_SIDE and w <= PNG_MAX_SIDE
    return True


def _canonical(arr: np.ndarray, dtype=None) -> np.ndarray:
    """A copy with C-order strides, also on length-1 axes: imagecodecs checks the strides
    (np.ascontiguousarray keeps odd strides of length-1 axes and then it refuses)."""
    out = np.empty(arr.shape, arr.dtype if dtype is None else dtype)
    out[...] = arr
    return out


def _as_pixels(pixels: np.ndarray) -> np.ndarray:
    """Canonical native-endian (H, W, C) uint8/uint16, or ValueError."""
    arr = np.asarray(pixels)
    if not _layout_ok(arr.shape, arr.dtype):
        raise ValueError(
            f"expected an (H, W, C) uint8/uint16 array with C in 1..4, got {arr.shape} {arr.dtype}"
        )
    return _canonical(arr, arr.dtype.newbyteorder("="))


def _planes(arr: np.ndarray) -> np.ndarray:
    """The layout imagecodecs expects: (H, W) for one channel, else (H, W, C)."""
    return _canonical(arr[:, :, 0]) if arr.shape[2] == 1 else arr


def _jxl_effort(shape: tuple[int, ...], effort: str) -> int:
    small, large = JXL_EFFORT[effort]
    return small if shape[0] * shape[1] * shape[2] <= JXL_SLOW_MAX_SAMPLES else large


def _webp_layout(arr: np.ndarray) -> np.ndarray:
    """L -> RGB (R = G = B), LA -> RGBA; RGB and RGBA unchanged."""
    c = arr.shape[2]
    if c == 1:
        return _canonical(np.repeat(arr, 3, axis=2))
    if c == 2:
        return _canonical(arr[:, :, [0, 0, 0, 1]])
    return arr


def _encode_jxl(arr: np.ndarray, effort: str) -> bytes:
    """At the default effort, images up to JXL_SLOW_MAX_SAMPLES are coded at effort 9 and
    at effort 7 and the smaller kept: effort 9 is not always smaller (on a 384x256 photo
    crop it was 0.7% larger than effort 7), and effort 7 costs about a third of it."""
    efforts = [_jxl_effort(arr.shape, effort)]
    if effort == "default" and efforts[0] == JXL_EFFORT["default"][0]:
        efforts.append(JXL_EFFORT["default"][1])
    planes = _planes(arr)
    out = [
        bytes(
            imagecodecs.jpegxl_encode(
                planes, lossless=True, distance=0, effort=e, numthreads=_threads()
            )
        )
        for e in efforts
    ]
    return min(out, key=len)


def _encode_webp(arr: np.ndarray, effort: str) -> bytes:
    data = bytes(
        imagecodecs.webp_encode(
            _webp_layout(arr),
            level=WEBP_LEVEL,
            lossless=True,
            method=WEBP_METHOD[effort],
            numthreads=_threads(),
        )
    )
    if arr.shape[2] in (2, 4):
        # Colour under alpha 0 is only kept when the encoder runs in libwebp's 'exact'
        # mode, which the binding does not expose: check it is (it is, measured).
        try:
            back = _decode_webp(data, arr.shape, arr.dtype)
        except Exception as error:
            raise ValueError(f"webp does not decode its own output: {error}") from error
        if not np.array_equal(back, arr):
            raise ValueError("webp does not preserve these pixels (colour under alpha 0)")
    return data


def webp_riff(bitstream: bytes) -> bytes:
    """The WebP file that holds a VP8L ``bitstream``, laid out as libwebp writes a lossless
    image: RIFF header, one VP8L chunk, a zero pad byte when the bitstream's length is odd
    (RIFF chunks are padded to even lengths)."""
    n = len(bitstream)
    pad = b"\x00" if n % 2 else b""
    riff_size = len(_WEBP) + 8 + n + len(pad)
    return b"".join(
        (_RIFF, riff_size.to_bytes(4, "little"), _WEBP, _VP8L, n.to_bytes(4, "little"),
         bytes(bitstream), pad)
    )  # fmt: skip


def webp_bare(data: bytes) -> bytes:
    """The VP8L bitstream of a lossless WebP file, without the 20 bytes of RIFF and chunk
    header (and the pad byte) that :func:`webp_riff` rebuilds. ValueError unless that
    rebuilds ``data`` byte for byte (any other layout: VP8X, more chunks, a non-zero pad)."""
    data = bytes(data)
    n = int.from_bytes(data[16:20], "little") if len(data) >= _WEBP_HEADER else -1
    bitstream = data[_WEBP_HEADER : _WEBP_HEADER + n] if n >= 0 else b""
    if n < 0 or webp_riff(bitstream) != data:
        raise ValueError("not a simple-format lossless WebP file (one VP8L chunk)")
    return bitstream


def _encode_png(arr: np.ndarray, effort: str) -> bytes:
    del effort  # the same at every effort
    src = _planes(arr)
    outputs = [
        bytes(imagecodecs.png_encode(src, level=PNG_LEVEL, strategy=strategy))
        for strategy in _PNG_STRATEGIES
    ]
    return min(outputs, key=len)


def _encode_store(arr: np.ndarray, effort: str) -> bytes:
    del effort
    return arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


_ENCODERS: dict[str, Callable[[np.ndarray, str], bytes]] = {
    "jxl": _encode_jxl,
    "webp": _encode_webp,
    "png": _encode_png,
    "store": _encode_store,
}


def encode(method: str, pixels: np.ndarray, effort: str = "default") -> bytes:
    """Lossless encoding of ``pixels`` (H, W, C), uint8/uint16, C in 1..4 (L, LA, RGB, RGBA).

    ValueError if the method (or effort) is unknown or cannot code this array (see
    :func:`can_code`; also a library refusal, and webp not giving back colour under alpha 0).
    """
    _known(method)
    if effort not in EFFORTS:
        raise ValueError(f"unknown effort {effort!r}; known: {', '.join(EFFORTS)}")
    arr = _as_pixels(pixels)
    if not can_code(method, arr.shape, arr.dtype):
        raise ValueError(f"{method} cannot code a {arr.shape} {arr.dtype} array")
    try:
        return _ENCODERS[method](arr, effort)
    except ValueError:
        raise
    except Exception as error:  # a library's own error type (RuntimeError subclasses)
        raise ValueError(
            f"{method} could not code a {arr.shape} {arr.dtype} array: {error}"
        ) from error


def _decode_jxl(data: bytes, shape: tuple[int, int, int], dtype: np.dtype) -> np.ndarray:
    out = np.empty(shape[:2] if shape[2] == 1 else shape, dtype)
    back = imagecodecs.jpegxl_decode(data, out=out, numthreads=_threads())
    return np.asarray(back).reshape(shape)


def _decode_webp(data: bytes, shape: tuple[int, int, int], dtype: np.dtype) -> np.ndarray:
    h, w, c = shape
    if dtype.itemsize != 1:
        raise FormatError("webp data cannot hold 16-bit samples")
    alpha = c in (2, 4)
    out = np.empty((h, w, 4 if alpha else 3), np.uint8)
    # hasalpha=True: an all-opaque RGBA image is stored without alpha and comes back as 255.
    # None (the file decides) for L/RGB: a file with alpha then fails the out shape check.
    back = np.asarray(imagecodecs.webp_decode(data, hasalpha=True if alpha else None, out=out))
    if c in (3, 4):
        return back
    rgb = back[:, :, :3]
    if not (
        np.array_equal(rgb[:, :, 0], rgb[:, :, 1]) and np.array_equal(rgb[:, :, 0], rgb[:, :, 2])
    ):
        raise FormatError("webp data for a grey image is not grey (R, G, B differ)")
    return _canonical(back[:, :, [0] if c == 1 else [0, 3]])


def _decode_png(data: bytes, shape: tuple[int, int, int], dtype: np.dtype) -> np.ndarray:
    out = np.empty(shape[:2] if shape[2] == 1 else shape, dtype)
    back = imagecodecs.png_decode(data, out=out)
    return np.asarray(back).reshape(shape)


def _decode_store(data: bytes, shape: tuple[int, int, int], dtype: np.dtype) -> np.ndarray:
    expected = shape[0] * shape[1] * shape[2] * dtype.itemsize
    if len(data) != expected:
        raise FormatError(f"stored pixels: {len(data)} bytes, expected {expected}")
    raw = np.frombuffer(data, dtype=dtype.newbyteorder("<")).reshape(shape)
    return raw.astype(dtype)


_DECODERS: dict[str, Callable[[bytes, tuple[int, int, int], np.dtype], np.ndarray]] = {
    "jxl": _decode_jxl,
    "webp": _decode_webp,
    "png": _decode_png,
    "store": _decode_store,
}


def decode(
    method: str, data: bytes, shape: tuple[int, int, int], dtype, bare_webp: bool = False
) -> np.ndarray:
    """The exact (H, W, C) array (native byte order) that :func:`encode` coded into ``data``
    (``bare_webp``: WebP data is the bitstream of :func:`webp_bare`).

    FormatError, never another exception, if the data is malformed or does not decode to
    exactly this shape, dtype and channel count, or if method, shape or dtype (which come
    from the container) are invalid. The expected array is allocated first and the library
    decodes into it after checking the codestream's declared size (see the module notes).
    """
    if method not in METHODS:
        raise FormatError(f"unknown classical method {method!r}")
    try:
        layout = tuple(int(v) for v in shape)
        ok = _layout_ok(layout, dtype)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise FormatError(f"invalid pixel layout {shape!r} {dtype!r}")
    shape = layout
    dt = np.dtype(dtype).newbyteorder("=")
    if bare_webp and method == "webp":
        data = webp_riff(data)
    try:
        arr = _DECODERS[method](bytes(data), shape, dt)
    except FormatError:
        raise
    except Exception as error:  # library errors, shape mismatches, MemoryError
        raise FormatError(f"{method} data does not decode to {shape} {dt}: {error}") from error
    if arr.shape != shape or arr.dtype != dt:
        raise FormatError(
            f"{method} data decodes to {arr.shape} {arr.dtype}, expected {shape} {dt}"
        )
    return arr


def _candidates(
    pixels: np.ndarray, methods: Sequence[str], effort: str, bare_webp: bool = False
) -> list[tuple[str, bytes]]:
    """(method, data) for each method of ``methods`` (in METHODS order) whose output comes
    back exact (``bare_webp``: WebP as its bare bitstream)."""
    arr = _as_pixels(pixels)
    for method in methods:
        _known(method)
    if effort not in EFFORTS:
        raise ValueError(f"unknown effort {effort!r}; known: {', '.join(EFFORTS)}")
    found = []
    for method in METHODS:
        if method not in methods or not can_code(method, arr.shape, arr.dtype):
            continue
        try:
            data = encode(method, arr, effort)
            back = decode(method, data, arr.shape, arr.dtype)
        except (ValueError, FormatError):
            continue
        if not np.array_equal(back, arr):
            continue
        if bare_webp and method == "webp":
            try:
                data = webp_bare(data)
            except ValueError:
                continue
        found.append((method, data))
    return found


def best(
    pixels: np.ndarray,
    methods: Sequence[str] = METHODS,
    effort: str = "default",
    bare_webp: bool = False,
) -> tuple[str, bytes]:
    """(method, data): the smallest verified encoding of ``pixels`` among ``methods``
    (``bare_webp``: WebP data as its bare bitstream, and compared at that size).

    Every applicable method encodes, its output is decoded and compared with ``pixels``;
    one that does not come back exact is dropped. Ties go to the earlier method of
    :data:`METHODS`. When no method of ``methods`` qualifies, 'store' (always exact) is
    used, so this never fails on a valid array (ValueError on an invalid one).
    """
    found = _candidates(pixels, methods, effort, bare_webp)
    if not found:
        return "store", encode("store", pixels)
    return min(found, key=lambda item: len(item[1]))  # min keeps the first of equal sizes


def sizes(
    pixels: np.ndarray, methods: Sequence[str] = METHODS, effort: str = "default"
) -> dict[str, int]:
    """Verified encoded size in bytes per method (methods that cannot code it are absent)."""
    return {method: len(data) for method, data in _candidates(pixels, methods, effort)}


def jpeg_transcode(jpeg: bytes) -> bytes | None:
    """JPEG-XL's lossless recompression of a JPEG file: JXL bytes from which
    :func:`jpeg_restore` rebuilds the identical file.

    None if libjxl refuses this JPEG (CMYK, 12-bit, lossless, arithmetic coding, invalid
    ICC profile, not a JPEG) or if the rebuilt file differs. The result may be larger than
    the JPEG for tiny images; the caller compares sizes.
    """
    jpeg = bytes(jpeg)
    if not jpeg.startswith(_JPEG_SOI):
        return None
    try:
        data = bytes(imagecodecs.jpegxl_encode_jpeg(jpeg, numthreads=_threads()))
        back = bytes(imagecodecs.jpegxl_decode_jpeg(data, numthreads=_threads()))
    except Exception:  # the library's refusal, whatever its type
        return None
    return data if back == jpeg else None


def jpeg_restore(data: bytes) -> bytes:
    """The original JPEG file from :func:`jpeg_transcode`'s output; FormatError if malformed.

    libjxl's working memory follows the image size the codestream declares; the caller
    should compare the result with the length it stored.
    """
    try:
        jpeg = bytes(imagecodecs.jpegxl_decode_jpeg(bytes(data), numthreads=_threads()))
    except Exception as error:
        raise FormatError(f"JPEG-XL data does not rebuild a JPEG file: {error}") from error
    if not jpeg.startswith(_JPEG_SOI):
        raise FormatError("JPEG-XL data rebuilds something that is not a JPEG file")
    return jpeg
