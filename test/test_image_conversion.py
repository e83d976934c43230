"""ovseg_ros.image_conversion: every encoding against known pixel values, and every error."""

from __future__ import annotations

import array
import io
import logging
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image as PILImage

from ovseg_ros.image_conversion import (
    SUPPORTED_ENCODINGS,
    ImageConversionError,
    array_to_image_fields,
    compressed_to_rgb,
    cv_bridge,
    image_to_rgb,
    load_cv_bridge,
    message_to_rgb,
)

# A 2x3 RGB image with distinct channels everywhere.
RGB = np.array(
    [
        [[255, 0, 0], [0, 255, 0], [0, 0, 255]],
        [[10, 20, 30], [40, 50, 60], [70, 80, 90]],
    ],
    dtype=np.uint8,
)
H, W = RGB.shape[:2]


def _fields(pixels: np.ndarray, pad: int = 0) -> tuple[int, bytes]:
    """(step, data) for ``pixels`` [H, W, C] (any dtype) with ``pad`` bytes after each row."""
    rows = pixels.reshape(pixels.shape[0], -1).view(np.uint8)
    padded = np.concatenate([rows, np.full((rows.shape[0], pad), 0xAB, np.uint8)], axis=1)
    return padded.shape[1], padded.tobytes()


def test_rgb8_is_copied_as_is() -> None:
    step, data = _fields(RGB)
    out = image_to_rgb("rgb8", H, W, step, data)
    assert out.dtype == np.uint8 and out.shape == (H, W, 3)
    np.testing.assert_array_equal(out, RGB)
    assert out.flags.writeable and out.flags.c_contiguous


@pytest.mark.parametrize("encoding", ["bgr8", "8UC3"])
def test_bgr8_channels_are_swapped(encoding: str) -> None:
    step, data = _fields(RGB[..., ::-1].copy())
    np.testing.assert_array_equal(image_to_rgb(encoding, H, W, step, data), RGB)


def test_rgba8_drops_alpha() -> None:
    rgba = np.concatenate([RGB, np.full((H, W, 1), 7, np.uint8)], axis=2)
    step, data = _fields(rgba)
    np.testing.assert_array_equal(image_to_rgb("rgba8", H, W, step, data), RGB)


@pytest.mark.parametrize("encoding", ["bgra8", "8UC4"])
def test_bgra8_drops_alpha_and_swaps(encoding: str) -> None:
    bgra = np.concatenate([RGB[..., ::-1], np.full((H, W, 1), 200, np.uint8)], axis=2)
    step, data = _fields(bgra)
    np.testing.assert_array_equal(image_to_rgb(encoding, H, W, step, data), RGB)


@pytest.mark.parametrize("encoding", ["mono8", "8UC1"])
def test_mono8_is_replicated(encoding: str) -> None:
    gray = np.array([[0, 1, 2], [128, 254, 255]], np.uint8)
    step, data = _fields(gray[..., None])
    out = image_to_rgb(encoding, H, W, step, data)
    np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, axis=2))


MONO16 = np.array([[0, 257, 128], [65535, 32896, 1000]], np.uint16)
MONO16_AS_8 = np.array([[0, 1, 0], [255, 128, 4]], np.uint8)  # round(v * 255 / 65535)


@pytest.mark.parametrize("encoding", ["mono16", "16UC1"])
def test_mono16_is_scaled_to_8_bit(encoding: str) -> None:
    step, data = _fields(MONO16.astype("<u2")[..., None])
    out = image_to_rgb(encoding, H, W, step, data, is_bigendian=0)
    np.testing.assert_array_equal(out[..., 0], MONO16_AS_8)
    np.testing.assert_array_equal(out[..., 1], out[..., 2])


def test_mono16_big_endian() -> None:
    step, data = _fields(MONO16.astype(">u2")[..., None])
    out = image_to_rgb("mono16", H, W, step, data, is_bigendian=1)
    np.testing.assert_array_equal(out[..., 0], MONO16_AS_8)
    # The same bytes read as little-endian give other values: the flag matters.
    assert not np.array_equal(image_to_rgb("mono16", H, W, step, data)[..., 0], MONO16_AS_8)


def test_mono16_big_endian_with_odd_padding() -> None:
    step, data = _fields(MONO16.astype(">u2")[..., None], pad=3)
    out = image_to_rgb("mono16", H, W, step, data, is_bigendian=1)
    np.testing.assert_array_equal(out[..., 0], MONO16_AS_8)


@pytest.mark.parametrize("encoding,order", [("rgb16", "rgb"), ("bgr16", "bgr")])
def test_16_bit_color(encoding: str, order: str) -> None:
    wide = RGB.astype(np.uint16) * 257  # exact 8 -> 16 bit expansion
    if order == "bgr":
        wide = wide[..., ::-1]
    step, data = _fields(np.ascontiguousarray(wide.astype("<u2")))
    np.testing.assert_array_equal(image_to_rgb(encoding, H, W, step, data), RGB)


@pytest.mark.parametrize("encoding", ["rgb8", "bgra8", "mono8", "mono16", "yuv422"])
@pytest.mark.parametrize("pad", [1, 5, 64])
def test_row_padding_is_skipped(encoding: str, pad: int) -> None:
    width = 4
    base = np.arange(2 * width * 4, dtype=np.uint8).reshape(2, width, 4) * 3
    channels = {"rgb8": 3, "bgra8": 4, "mono8": 1, "mono16": 2, "yuv422": 2}[encoding]
    pixels = np.ascontiguousarray(base[..., :channels])
    step0, data0 = _fields(pixels)
    step, data = _fields(pixels, pad=pad)
    assert step == step0 + pad
    np.testing.assert_array_equal(
        image_to_rgb(encoding, 2, width, step, data), image_to_rgb(encoding, 2, width, step0, data0)
    )


def test_trailing_bytes_are_ignored() -> None:
    step, data = _fields(RGB)
    np.testing.assert_array_equal(image_to_rgb("rgb8", H, W, step, data + b"\x00" * 10), RGB)


@pytest.mark.parametrize(
    "container",
    [
        bytes,
        bytearray,
        memoryview,
        lambda b: array.array("B", b),
        lambda b: np.frombuffer(b, np.uint8),
    ],
)
def test_buffer_types(container) -> None:
    step, data = _fields(RGB)
    np.testing.assert_array_equal(image_to_rgb("rgb8", H, W, step, container(data)), RGB)


def test_list_of_ints() -> None:
    step, data = _fields(RGB)
    np.testing.assert_array_equal(image_to_rgb("rgb8", H, W, step, list(data)), RGB)


def _yuv_reference(y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """BT.601 limited range, one pixel at a time (the textbook formula)."""
    out = np.zeros((*y.shape, 3), np.uint8)
    for i in range(y.shape[0]):
        for j in range(y.shape[1]):
            c, d, e = 1.164 * (y[i, j] - 16.0), u[i, j // 2] - 128.0, v[i, j // 2] - 128.0
            rgb = (c + 1.596 * e, c - 0.391 * d - 0.813 * e, c + 2.018 * d)
            out[i, j] = [min(255, max(0, round(x))) for x in rgb]
    return out


@pytest.mark.parametrize("encoding", ["yuv422", "uyvy", "yuv422_yuy2", "yuyv"])
def test_yuv422(encoding: str) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(16, 236, (2, 4)).astype(np.uint8)
    u = rng.integers(16, 241, (2, 2)).astype(np.uint8)
    v = rng.integers(16, 241, (2, 2)).astype(np.uint8)
    packed = np.zeros((2, 2, 4), np.uint8)
    if encoding in ("yuv422", "uyvy"):
        packed[..., 0], packed[..., 1], packed[..., 2], packed[..., 3] = (
            u,
            y[:, 0::2],
            v,
            y[:, 1::2],
        )
    else:
        packed[..., 0], packed[..., 1], packed[..., 2], packed[..., 3] = (
            y[:, 0::2],
            u,
            y[:, 1::2],
            v,
        )
    out = image_to_rgb(encoding, 2, 4, 8, packed.tobytes())
    diff = np.abs(out.astype(int) - _yuv_reference(y, u, v).astype(int))
    assert diff.max() <= 1


def test_yuv422_matches_opencv() -> None:
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(1)
    packed = rng.integers(0, 256, (6, 8, 2)).astype(np.uint8)
    for encoding, code in (("uyvy", cv2.COLOR_YUV2RGB_UYVY), ("yuyv", cv2.COLOR_YUV2RGB_YUY2)):
        ours = image_to_rgb(encoding, 6, 8, 16, packed.tobytes())
        theirs = cv2.cvtColor(packed, code)
        assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1


# -- Bayer -------------------------------------------------------------------------------------

_CHANNEL = {"r": 0, "g": 1, "b": 2}


def _mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """The Bayer mosaic a sensor with ``pattern`` (e.g. "rggb": row 0 R G, row 1 G B) records."""
    mosaic = np.empty(rgb.shape[:2], rgb.dtype)
    for k, letter in enumerate(pattern):
        dy, dx = divmod(k, 2)
        mosaic[dy::2, dx::2] = rgb[dy::2, dx::2, _CHANNEL[letter]]
    return mosaic


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
def test_bayer_uniform_color_is_recovered_exactly(pattern: str) -> None:
    """Hand-checkable: every R sample 200, G 100, B 50 -> every pixel (200, 100, 50). A pattern
    mapped to the wrong OpenCV code swaps red and blue or mixes green into them."""
    pytest.importorskip("cv2")
    rgb = np.empty((6, 8, 3), np.uint8)
    rgb[...] = (200, 100, 50)
    mosaic = _mosaic(rgb, pattern)
    assert mosaic[0, 0] == {"r": 200, "g": 100, "b": 50}[pattern[0]]
    out = image_to_rgb(f"bayer_{pattern}8", 6, 8, 8, mosaic.tobytes())
    assert out.shape == (6, 8, 3) and out.dtype == np.uint8
    assert np.array_equal(out, rgb)


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
def test_bayer_linear_ramps_are_interpolated_exactly_inside(pattern: str) -> None:
    """Bilinear demosaicing reproduces a linear ramp: R = 8x + 20, G = 120, B = 6y + 30."""
    pytest.importorskip("cv2")
    h, w = 12, 16
    y, x = np.mgrid[:h, :w]
    rgb = np.stack([8 * x + 20, np.full_like(x, 120), 6 * y + 30], axis=-1).astype(np.uint8)
    out = image_to_rgb(f"bayer_{pattern}8", h, w, w + 3, _fields(_mosaic(rgb, pattern), 3)[1])
    inner = (slice(2, -2), slice(2, -2))
    assert np.abs(out[inner].astype(int) - rgb[inner].astype(int)).max() <= 1


@pytest.mark.parametrize("bigendian", [False, True])
def test_bayer_16_bit_is_scaled_to_8_bit(bigendian: bool) -> None:
    pytest.importorskip("cv2")
    rgb16 = np.empty((4, 6, 3), np.uint16)
    rgb16[...] = (65535, 32896, 0)  # -> (255, 128, 0)
    mosaic = _mosaic(rgb16, "grbg").astype(">u2" if bigendian else "<u2")
    out = image_to_rgb("bayer_grbg16", 4, 6, 12, mosaic.tobytes(), is_bigendian=bigendian)
    assert np.array_equal(out, np.broadcast_to(np.array([255, 128, 0], np.uint8), (4, 6, 3)))


def test_bayer_too_small_is_refused() -> None:
    with pytest.raises(ImageConversionError, match="2x2"):
        image_to_rgb("bayer_rggb8", 1, 4, 4, bytes(4))


def test_every_supported_encoding_converts() -> None:
    for encoding in SUPPORTED_ENCODINGS:
        out = image_to_rgb(encoding, 2, 4, 64, bytes(128))
        assert out.shape == (2, 4, 3) and out.dtype == np.uint8


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["bayer_rggb12", "32FC1", "nv21", "", "RGB8"])
def test_unsupported_encoding(encoding: str) -> None:
    with pytest.raises(ImageConversionError, match="unsupported image encoding"):
        image_to_rgb(encoding, 2, 2, 8, bytes(16))


@pytest.mark.parametrize("height,width", [(0, 3), (2, 0), (0, 0), (-1, 3)])
def test_zero_size(height: int, width: int) -> None:
    with pytest.raises(ImageConversionError, match="zero size"):
        image_to_rgb("rgb8", height, width, 9, bytes(18))


def test_huge_size_is_refused_before_reading() -> None:
    with pytest.raises(ImageConversionError, match="exceeds"):
        image_to_rgb("rgb8", 100000, 100000, 300000, b"")


def test_step_too_small() -> None:
    with pytest.raises(ImageConversionError, match="step 8 is smaller"):
        image_to_rgb("rgb8", H, W, 8, bytes(64))


def test_data_too_short() -> None:
    step, data = _fields(RGB)
    with pytest.raises(ImageConversionError, match=f"data has {len(data) - 1} bytes"):
        image_to_rgb("rgb8", H, W, step, data[:-1])


def test_yuv_odd_width() -> None:
    with pytest.raises(ImageConversionError, match="even width"):
        image_to_rgb("yuv422", 2, 3, 6, bytes(12))


def test_errors_are_value_errors() -> None:
    assert issubclass(ImageConversionError, ValueError)


# -- compressed --------------------------------------------------------------------------------


def _encode(image: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(image).save(buffer, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _test_image() -> np.ndarray:
    image = np.zeros((16, 24, 3), np.uint8)
    image[:, :8] = (220, 30, 30)
    image[:, 8:16] = (30, 220, 30)
    image[:, 16:] = (30, 30, 220)
    return image


@pytest.mark.parametrize("fmt", ["png", "rgb8; png compressed rgb8", "bgr8; png compressed bgr8"])
def test_png_is_lossless(fmt: str) -> None:
    image = _test_image()
    np.testing.assert_array_equal(compressed_to_rgb(fmt, _encode(image, "PNG")), image)


@pytest.mark.parametrize("fmt", ["jpeg", "jpg", "rgb8; jpeg compressed bgr8", "JPEG", ""])
def test_jpeg_keeps_colors(fmt: str) -> None:
    image = _test_image()
    out = compressed_to_rgb(fmt, array.array("B", _encode(image, "JPEG")))
    assert out.shape == image.shape and out.dtype == np.uint8
    # Stripe centres keep their colors (RGB order, not BGR); JPEG blurs only the edges.
    for x in (3, 11, 19):
        assert np.abs(out[8, x].astype(int) - image[8, x].astype(int)).max() <= 12


def test_gray_png_becomes_rgb() -> None:
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    out = compressed_to_rgb("png", _encode(gray, "PNG"))
    np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, axis=2))


def test_compressed_depth_is_refused() -> None:
    with pytest.raises(ImageConversionError, match="compressedDepth"):
        compressed_to_rgb("16UC1; compressedDepth png", _encode(_test_image(), "PNG"))


def test_unknown_compressed_format_is_refused() -> None:
    with pytest.raises(ImageConversionError, match="unsupported compressed format"):
        compressed_to_rgb("h264", b"\x00\x00\x00\x01")


@pytest.mark.parametrize("data", [b"", b"not a jpeg at all", b"\xff\xd8\xff" + bytes(40)])
def test_corrupt_compressed_data(data: bytes) -> None:
    with pytest.raises(ImageConversionError):
        compressed_to_rgb("jpeg", data)


# -- output fields -----------------------------------------------------------------------------


def test_array_to_image_fields_mono8() -> None:
    labels = np.array([[0, 1, 2], [3, 4, 255]], np.uint8)
    fields = array_to_image_fields(labels, "mono8")
    assert fields == {
        "height": 2,
        "width": 3,
        "encoding": "mono8",
        "is_bigendian": 0,
        "step": 3,
        "data": labels.tobytes(),
    }


def test_array_to_image_fields_mono16_is_little_endian() -> None:
    labels = np.array([[0, 1], [256, 65535]], ">u2")  # big-endian input is converted
    fields = array_to_image_fields(labels, "mono16")
    assert fields["step"] == 4 and fields["is_bigendian"] == 0
    assert fields["data"] == bytes([0, 0, 1, 0, 0, 1, 255, 255])
    back = image_to_rgb("mono16", 2, 2, fields["step"], fields["data"], fields["is_bigendian"])
    np.testing.assert_array_equal(back[..., 0], [[0, 0], [1, 255]])


def test_array_to_image_fields_32fc1() -> None:
    confidence = np.array([[0.0, 0.5], [1.0, 0.25]], np.float32)
    fields = array_to_image_fields(confidence, "32FC1")
    assert fields["step"] == 8 and fields["encoding"] == "32FC1"
    np.testing.assert_array_equal(np.frombuffer(fields["data"], "<f4").reshape(2, 2), confidence)


def test_array_to_image_fields_rgb8_round_trip() -> None:
    fields = array_to_image_fields(RGB[:, ::-1], "rgb8")  # non-contiguous input
    assert fields["step"] == 9
    out = image_to_rgb("rgb8", fields["height"], fields["width"], fields["step"], fields["data"])
    np.testing.assert_array_equal(out, RGB[:, ::-1])


@pytest.mark.parametrize(
    "array_,encoding,match",
    [
        (np.zeros((2, 2), np.int32), "mono8", "dtype"),
        (np.zeros((2, 2), np.float64), "32FC1", "dtype"),
        (np.zeros((2, 2, 3), np.uint8), "mono8", "shape"),
        (np.zeros((2, 2), np.uint8), "rgb8", "shape"),
        (np.zeros((2, 2, 4), np.uint8), "rgb8", "shape"),
        (np.zeros((2, 2), np.uint8), "bgr8", "cannot write"),
    ],
)
def test_array_to_image_fields_errors(array_, encoding: str, match: str) -> None:
    with pytest.raises(ImageConversionError, match=match):
        array_to_image_fields(array_, encoding)


# -- cv_bridge fallback ----------------------------------------------------------------------------


@pytest.fixture
def broken_cv_bridge(tmp_path, monkeypatch):
    """A cv_bridge package that fails on import the way one built for NumPy 1 does on NumPy 2."""
    package = tmp_path / "cv_bridge"
    package.mkdir()
    (package / "__init__.py").write_text(
        "raise AttributeError('_ARRAY_API not found')\n", encoding="utf-8"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "cv_bridge", raising=False)
    cv_bridge.cache_clear()
    yield
    sys.modules.pop("cv_bridge", None)
    cv_bridge.cache_clear()


def test_cv_bridge_failing_with_attribute_error_falls_back_with_one_warning(
    broken_cv_bridge, caplog
) -> None:
    caplog.set_level(logging.WARNING, logger="ovseg_ros.image_conversion")
    assert load_cv_bridge() is None
    assert "_ARRAY_API not found" in caplog.text and "own converter" in caplog.text
    caplog.clear()
    msg = SimpleNamespace(encoding="nv21", height=2, width=2, step=2, data=bytes(6), is_bigendian=0)
    for _ in range(3):  # an unknown encoding: a clear error, cv_bridge tried once
        with pytest.raises(ImageConversionError, match="unsupported image encoding"):
            message_to_rgb(msg, compressed=False)
    assert len([r for r in caplog.records if "cv_bridge" in r.getMessage()]) == 1
    # Known encodings never need it.
    rgb8 = SimpleNamespace(
        encoding="rgb8", height=H, width=W, step=W * 3, data=RGB.tobytes(), is_bigendian=0
    )
    assert np.array_equal(message_to_rgb(rgb8, compressed=False), RGB)
