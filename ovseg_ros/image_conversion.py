"""sensor_msgs/Image and CompressedImage payloads <-> numpy, without cv_bridge or ROS.

The pip-installed ROS 2 has no ``cv_bridge``, so the node converts the common camera encodings
itself (Bayer mosaics with OpenCV). Everything here works on the message *fields* (encoding,
height, width, step, data), so it is testable without ROS and shared by the node and the
offline tools. :func:`message_to_rgb` adds ``cv_bridge``, where it imports cleanly, for the
encodings we do not know.

Every malformed input raises :class:`ImageConversionError` (a ``ValueError``) with a message
that says what is wrong and a short ``kind`` (:data:`ERROR_KINDS`), so a caller can count and
throttle warnings per kind of problem; a camera driver bug must never crash the node. Frames
above ``max_pixels`` (default :data:`MAX_IMAGE_PIXELS`, 8K) are refused before any pixel is
touched: raw frames by their declared size, compressed ones by their header
(:mod:`ovseg_ros.image_header`), before the decoder allocates anything.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import numpy as np

from ovseg_ros.image_header import HeaderError, HeaderTooLargeError, compressed_image_size
from ovseg_ros.segmentation.config import MAX_IMAGE_SIDE  # the engine's limit, re-exported

_LOG = logging.getLogger("ovseg_ros.image_conversion")

MAX_IMAGE_PIXELS = 7680 * 4320  # 8K UHD: the default limit on the pixels of an input frame

# encoding -> (channels, bytes per channel, channel order of the result before RGB conversion)
_RAW_LAYOUTS: dict[str, tuple[int, int, str]] = {
    "rgb8": (3, 1, "rgb"),
    "bgr8": (3, 1, "bgr"),
    "8UC3": (3, 1, "bgr"),  # OpenCV's default channel order
    "rgba8": (4, 1, "rgb"),
    "bgra8": (4, 1, "bgr"),
    "8UC4": (4, 1, "bgr"),
    "mono8": (1, 1, "mono"),
    "8UC1": (1, 1, "mono"),
    "rgb16": (3, 2, "rgb"),
    "bgr16": (3, 2, "bgr"),
    "rgba16": (4, 2, "rgb"),
    "bgra16": (4, 2, "bgr"),
    "mono16": (1, 2, "mono"),
    "16UC1": (1, 2, "mono"),  # depth in millimetres; shown like mono16
}
# Packed 4:2:2 YUV: 2 bytes per pixel, pixels come in pairs.
_YUV_LAYOUTS: dict[str, str] = {
    "yuv422": "uyvy",  # sensor_msgs' name for UYVY
    "uyvy": "uyvy",
    "yuv422_yuy2": "yuyv",
    "yuyv": "yuyv",
}
# Bayer mosaic -> (OpenCV conversion name, bytes per sample). OpenCV names a pattern by the
# second row's 2nd and 3rd pixels, so ROS's RGGB (first row R G) is OpenCV's "BG".
_BAYER_LAYOUTS: dict[str, tuple[str, int]] = {
    f"bayer_{pattern}{bits}": (f"COLOR_Bayer{opencv}2RGB", bits // 8)
    for pattern, opencv in (("rggb", "BG"), ("bggr", "RG"), ("gbrg", "GR"), ("grbg", "GB"))
    for bits in (8, 16)
}
SUPPORTED_ENCODINGS: tuple[str, ...] = (*_RAW_LAYOUTS, *_YUV_LAYOUTS, *_BAYER_LAYOUTS)
_COMPRESSED_KINDS = ("jpeg", "jpg", "png", "webp", "bmp", "tiff", "tif")

# array_to_image_fields: encoding -> (dtype, channels)
_OUTPUT_LAYOUTS: dict[str, tuple[np.dtype, int]] = {
    "mono8": (np.dtype(np.uint8), 1),
    "mono16": (np.dtype("<u2"), 1),
    "32FC1": (np.dtype("<f4"), 1),
    "rgb8": (np.dtype(np.uint8), 3),
}


# ImageConversionError.kind: what is wrong, in one word.
ERROR_KINDS: tuple[str, ...] = (
    "encoding",  # unsupported encoding or compressed format (or one needing a missing library)
    "size",  # zero or impossible width / height (odd YUV width, Bayer below 2x2)
    "limit",  # more pixels than allowed (max_pixels)
    "step",  # row stride smaller than a row
    "data",  # too few bytes for the declared size, or not a byte buffer
    "decode",  # corrupt or truncated compressed data
    "output",  # an array that cannot be written in the requested output encoding
)


class ImageConversionError(ValueError):
    """The message cannot be turned into an image (unsupported encoding, bad sizes, corrupt).

    ``kind`` is one of :data:`ERROR_KINDS`.
    """

    def __init__(self, message: str, kind: str = "data") -> None:
        super().__init__(message)
        self.kind = kind


class ImageTooLargeError(ImageConversionError):
    """More pixels than ``max_pixels``, found before decoding (``kind`` ``"limit"``)."""

    def __init__(self, width: int, height: int, max_pixels: int, what: str = "image") -> None:
        super().__init__(
            f"{what} is {width}x{height} = {width * height} pixels, above the limit of "
            f"{max_pixels} (max_image_pixels; 8K is {MAX_IMAGE_PIXELS}); refused before decoding",
            kind="limit",
        )
        self.width, self.height, self.max_pixels = width, height, max_pixels


def image_to_rgb(
    encoding: str,
    height: int,
    width: int,
    step: int,
    data: Any,
    is_bigendian: int | bool = 0,
    *,
    max_pixels: int | None = MAX_IMAGE_PIXELS,
) -> np.ndarray:
    """Convert the fields of a ``sensor_msgs/Image`` to a new ``uint8 [H, W, 3]`` RGB array.

    16-bit encodings are scaled linearly to 8 bit (0 -> 0, 65535 -> 255). Row padding
    (``step > width * bytes_per_pixel``) is skipped; trailing bytes after the last row are
    ignored. ``data`` may be ``bytes``, ``array.array('B')`` (what rclpy delivers), a
    ``memoryview`` or a numpy array. More than ``max_pixels`` pixels (``None``: no limit but
    :data:`MAX_IMAGE_SIDE`) raise :class:`ImageTooLargeError` before ``data`` is read.
    """
    if encoding in _YUV_LAYOUTS:
        bytes_per_pixel = 2
    elif encoding in _BAYER_LAYOUTS:
        bytes_per_pixel = _BAYER_LAYOUTS[encoding][1]
    elif encoding in _RAW_LAYOUTS:
        channels, depth, _ = _RAW_LAYOUTS[encoding]
        bytes_per_pixel = channels * depth
    else:
        raise ImageConversionError(
            f"unsupported image encoding {encoding!r}; supported: {', '.join(SUPPORTED_ENCODINGS)}",
            kind="encoding",
        )
    height, width, step = int(height), int(width), int(step)
    _check_size(height, width, max_pixels)
    row_bytes = width * bytes_per_pixel
    if step < row_bytes:
        raise ImageConversionError(
            f"step {step} is smaller than width * bytes per pixel = {width} * {bytes_per_pixel}"
            f" = {row_bytes} for {encoding}",
            kind="step",
        )
    buffer = as_byte_array(data)
    if buffer.size < step * height:
        raise ImageConversionError(
            f"data has {buffer.size} bytes, expected step * height = {step} * {height}"
            f" = {step * height} for a {width}x{height} {encoding} image",
            kind="data",
        )
    rows = buffer[: step * height].reshape(height, step)[:, :row_bytes]

    if encoding in _YUV_LAYOUTS:
        return _yuv422_to_rgb(np.ascontiguousarray(rows), height, width, _YUV_LAYOUTS[encoding])
    if encoding in _BAYER_LAYOUTS:
        return _bayer_to_rgb(np.ascontiguousarray(rows), height, width, encoding, is_bigendian)

    if depth == 2:
        dtype = np.dtype(">u2" if is_bigendian else "<u2")
        wide = np.ascontiguousarray(rows).view(dtype).reshape(height, width, channels)
        # round(v * 255 / 65535) exactly, in integers.
        pixels = ((wide.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    else:
        pixels = rows.reshape(height, width, channels)

    order = _RAW_LAYOUTS[encoding][2]
    if order == "mono":
        return np.repeat(pixels, 3, axis=2)
    pixels = pixels[..., :3]
    if order == "bgr":
        pixels = pixels[..., ::-1]
    return np.array(pixels, dtype=np.uint8, order="C", copy=True)


def message_to_rgb(
    msg: Any, compressed: bool, *, max_pixels: int | None = MAX_IMAGE_PIXELS
) -> np.ndarray:
    """``uint8 [H, W, 3]`` RGB from an Image or CompressedImage message (rclpy or rosbags).

    Our converter first (so the node and ``ovseg-replay`` decode identically); ``cv_bridge``,
    where it imports cleanly, for encodings we do not know. Frames above ``max_pixels`` are
    refused before decoding (:class:`ImageTooLargeError`).
    """
    if compressed:
        return compressed_to_rgb(msg.format, msg.data, max_pixels=max_pixels)
    try:
        return image_to_rgb(
            msg.encoding,
            msg.height,
            msg.width,
            msg.step,
            msg.data,
            msg.is_bigendian,
            max_pixels=max_pixels,
        )
    except ImageConversionError:
        if msg.encoding in SUPPORTED_ENCODINGS:
            raise  # a malformed frame
        bridge = cv_bridge()
        if bridge is None:
            raise
    _check_size(int(msg.height), int(msg.width), max_pixels)
    try:
        rgb = np.asarray(bridge.imgmsg_to_cv2(msg, desired_encoding="rgb8"))
    except Exception as exc:  # noqa: BLE001 - cv_bridge raises several types
        raise ImageConversionError(
            f"cv_bridge cannot convert {msg.encoding!r}: {exc}", kind="encoding"
        ) from exc
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.size == 0:
        raise ImageConversionError(
            f"cv_bridge gave {rgb.dtype} {rgb.shape} for {msg.encoding!r}", kind="encoding"
        )
    return rgb


def load_cv_bridge() -> Any | None:
    """A ``CvBridge``, or None (with one warning) when cv_bridge is missing or broken.

    Any exception counts as broken, not only ImportError: a cv_bridge built against NumPy 1
    raises ``AttributeError: _ARRAY_API not found`` under NumPy 2.
    """
    try:
        from cv_bridge import CvBridge

        return CvBridge()
    except ImportError:
        return None  # pip-only ROS: nothing to warn about
    except Exception as exc:  # noqa: BLE001 - see the docstring
        _LOG.warning(
            "cv_bridge is installed but fails to load (%s: %s); using ovseg_ros's own converter "
            "(%s)",
            type(exc).__name__,
            exc,
            ", ".join(SUPPORTED_ENCODINGS),
        )
        return None


@functools.cache
def cv_bridge() -> Any | None:
    """:func:`load_cv_bridge`, once per process (loaded on the first unknown encoding)."""
    return load_cv_bridge()


def compressed_to_rgb(
    format: str,  # noqa: A002 - the message field's name
    data: Any,
    *,
    max_pixels: int | None = MAX_IMAGE_PIXELS,
) -> np.ndarray:
    """Decode a ``sensor_msgs/CompressedImage`` (JPEG, PNG, ...) to ``uint8 [H, W, 3]`` RGB.

    ``format`` is the message's field as image_transport writes it: ``"jpeg"``, ``"png"``, or
    ``"rgb8; jpeg compressed bgr8"``. The decoder reads the actual file type from the bytes;
    the format is only checked to refuse what is not a color image (``compressedDepth``,
    video codecs). The size is read from the header first: more than ``max_pixels`` raises
    :class:`ImageTooLargeError` and an unreadable header an ``ImageConversionError``, both
    without decoding.
    """
    kind = (format or "").strip().lower()
    if "compresseddepth" in kind:
        raise ImageConversionError(
            f"compressed format {format!r} is a compressedDepth (depth) image, which cannot be"
            " segmented; subscribe to a color image topic instead",
            kind="encoding",
        )
    if kind and not any(name in kind for name in _COMPRESSED_KINDS):
        raise ImageConversionError(
            f"unsupported compressed format {format!r}; supported: jpeg, png (and webp, bmp, tiff)",
            kind="encoding",
        )
    buffer = as_byte_array(data)
    if buffer.size == 0:
        raise ImageConversionError("compressed image has no data", kind="data")
    _check_header(buffer, format, max_pixels)
    rgb = _decode(buffer)
    if rgb is None:
        raise ImageConversionError(
            f"cannot decode {buffer.size} bytes of compressed image data (format {format!r}):"
            " corrupt or truncated",
            kind="decode",
        )
    _check_size(rgb.shape[0], rgb.shape[1], max_pixels)  # in case a decoder disagrees
    return rgb


def array_to_image_fields(array: np.ndarray, encoding: str) -> dict[str, Any]:
    """The ``sensor_msgs/Image`` fields for ``array`` in ``encoding``.

    Supported: ``mono8`` (uint8 HxW), ``mono16`` (uint16 HxW), ``32FC1`` (float32 HxW) and
    ``rgb8`` (uint8 HxWx3). Data is written little-endian with no row padding. Returns a dict
    with ``height, width, encoding, is_bigendian, step, data`` (``data`` is ``bytes``).
    """
    fields, contiguous = image_fields_and_array(array, encoding)
    fields["data"] = contiguous.tobytes()
    return fields


def image_fields_and_array(array: np.ndarray, encoding: str) -> tuple[dict[str, Any], np.ndarray]:
    """:func:`array_to_image_fields` without ``data``, and the array whose bytes are the data
    (C-contiguous, little-endian; ``array`` itself when it already is): for callers that copy
    the bytes into a buffer of their own instead of making a ``bytes`` object."""
    if encoding not in _OUTPUT_LAYOUTS:
        raise ImageConversionError(
            f"cannot write encoding {encoding!r}; supported: {', '.join(_OUTPUT_LAYOUTS)}",
            kind="output",
        )
    dtype, channels = _OUTPUT_LAYOUTS[encoding]
    array = np.asarray(array)
    expected_ndim = 2 if channels == 1 else 3
    if array.ndim != expected_ndim or (channels > 1 and array.shape[2] != channels):
        shape = "[H, W]" if channels == 1 else f"[H, W, {channels}]"
        raise ImageConversionError(
            f"{encoding} needs an array of shape {shape}, got {array.shape}", kind="output"
        )
    if array.dtype.kind != dtype.kind or array.dtype.itemsize != dtype.itemsize:
        raise ImageConversionError(
            f"{encoding} needs dtype {dtype.name}, got {array.dtype}", kind="output"
        )
    height, width = array.shape[:2]
    contiguous = np.ascontiguousarray(array, dtype=dtype)  # also fixes the byte order
    fields = {
        "height": int(height),
        "width": int(width),
        "encoding": encoding,
        "is_bigendian": 0,
        "step": int(width * channels * dtype.itemsize),
    }
    return fields, contiguous


# -- helpers -------------------------------------------------------------------------------------


def _check_size(height: int, width: int, max_pixels: int | None, what: str = "image") -> None:
    if height <= 0 or width <= 0:
        raise ImageConversionError(f"{what} has zero size: {width}x{height}", kind="size")
    if height > MAX_IMAGE_SIDE or width > MAX_IMAGE_SIDE:
        raise ImageConversionError(
            f"{what} size {width}x{height} exceeds {MAX_IMAGE_SIDE} px per side (corrupt header?)",
            kind="size",
        )
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(width, height, max_pixels, what)


def _check_header(buffer: np.ndarray, format: str, max_pixels: int | None) -> None:  # noqa: A002
    """Refuse by the size the header declares, before the decoder allocates the frame."""
    try:
        size = compressed_image_size(buffer)
    except HeaderTooLargeError as exc:
        raise ImageConversionError(f"compressed image is too large: {exc}", kind="limit") from None
    except HeaderError as exc:
        raise ImageConversionError(
            f"corrupt compressed image header (format {format!r}): {exc}", kind="decode"
        ) from None
    if size is None:
        raise ImageConversionError(
            f"cannot read the size of {buffer.size} bytes of compressed image data (format "
            f"{format!r}) from a header: not JPEG, PNG, WebP, BMP, TIFF, GIF, PPM or JPEG 2000",
            kind="decode",
        )
    _check_size(size[1], size[0], max_pixels, what="compressed image")


def as_byte_array(data: Any) -> np.ndarray:
    """A flat ``uint8`` view of ``data`` (no copy where the buffer protocol allows it)."""
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    try:
        return np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    except TypeError:
        pass  # a list of ints, as some Python code fills messages
    try:
        return np.asarray(data, dtype=np.uint8).reshape(-1)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ImageConversionError(f"image data is not a byte buffer: {exc}", kind="data") from exc


def _yuv422_to_rgb(rows: np.ndarray, height: int, width: int, layout: str) -> np.ndarray:
    """Packed 4:2:2 (UYVY or YUYV) to RGB with BT.601 limited-range coefficients."""
    if width % 2:
        raise ImageConversionError(f"4:2:2 YUV images need an even width, got {width}", kind="size")
    pairs = rows.reshape(height, width // 2, 4).astype(np.float32)
    if layout == "uyvy":
        u, y0, v, y1 = pairs[..., 0], pairs[..., 1], pairs[..., 2], pairs[..., 3]
    else:
        y0, u, y1, v = pairs[..., 0], pairs[..., 1], pairs[..., 2], pairs[..., 3]
    luma = np.stack([y0, y1], axis=-1).reshape(height, width)
    u = np.repeat(u, 2, axis=1) - 128.0
    v = np.repeat(v, 2, axis=1) - 128.0
    # Coefficients and the clamp of Y below 16 as in OpenCV's COLOR_YUV2RGB_UYVY / _YUY2.
    c = 1.164 * np.maximum(luma - 16.0, 0.0)
    rgb = np.stack([c + 1.596 * v, c - 0.391 * u - 0.813 * v, c + 2.018 * u], axis=-1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _bayer_to_rgb(
    rows: np.ndarray, height: int, width: int, encoding: str, is_bigendian: int | bool
) -> np.ndarray:
    """Demosaic with OpenCV (edge-aware bilinear); 16-bit samples are scaled to 8 bit after."""
    try:
        import cv2
    except ImportError:
        raise ImageConversionError(
            f"{encoding} needs OpenCV (pip install opencv-python-headless)", kind="encoding"
        ) from None
    code, depth = _BAYER_LAYOUTS[encoding]
    if height < 2 or width < 2:
        raise ImageConversionError(
            f"a Bayer image needs at least 2x2 pixels, got {width}x{height}", kind="size"
        )
    if depth == 2:
        mosaic = rows.view(">u2" if is_bigendian else "<u2").reshape(height, width)
        mosaic = mosaic.astype(np.uint16)  # native byte order for OpenCV
    else:
        mosaic = rows.reshape(height, width)
    rgb = cv2.cvtColor(mosaic, getattr(cv2, code))
    if depth == 2:
        rgb = ((rgb.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    return np.ascontiguousarray(rgb)


def _decode(buffer: np.ndarray) -> np.ndarray | None:
    """Decode with OpenCV when installed (fast), else Pillow; ``None`` if undecodable."""
    try:
        import cv2
    except ImportError:
        cv2 = None
    if cv2 is not None:
        bgr = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
        if bgr is None or bgr.ndim != 3 or bgr.size == 0:
            return None
        return np.ascontiguousarray(bgr[..., ::-1])
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(buffer.tobytes())) as image:
            return np.array(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None
