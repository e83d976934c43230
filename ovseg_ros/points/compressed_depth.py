"""``compressedDepth`` depth images (``sensor_msgs/CompressedImage``) to numpy, without ROS.

The format of image_transport_plugins' ``compressed_depth_image_transport``, which drivers and
recorded bags publish as ``<depth topic>/compressedDepth``:

- ``format``: ``"<encoding>; compressedDepth <codec>"`` with encoding ``16UC1`` or ``32FC1``
  and codec ``png`` or ``rvl``; ``"<encoding>; compressedDepth"`` (older publishers) and a bare
  ``"<encoding>"`` mean png, as that package's decoder reads them.
- ``data``: a 12-byte ``ConfigHeader`` in the publisher's byte order (little-endian on every
  platform ROS 2 ships for): ``int32`` compression format (``0``, INV_DEPTH, the only value
  written), then two ``float32`` quantisation parameters ``a, b``; then the image:

  - ``png``: a 16-bit greyscale PNG;
  - ``rvl``: ``uint32`` width, ``uint32`` height, then the RVL stream (A. D. Wilson, "Fast
    Lossless Depth Image Compression", 2017): ``int32`` words read from the most significant
    nibble down; each value is a run of 4-bit nibbles, 3 payload bits each (least
    significant first) and the high bit set on all but the last; the values repeat
    ``zeros, nonzeros, delta * nonzeros`` in row-major pixel order, each delta zig-zag coded
    (``(d << 1) ^ (d >> 31)``) against the previous nonzero pixel (0 at the start).

- the 16 bits are millimetres for ``16UC1``; for ``32FC1`` they quantise inverse depth:
  ``v = uint16(a / depth + b)`` (``a = q (q + 1)``, ``b = 1 - a / depth_max`` with the
  publisher's ``depth_quantization`` q and ``depth_max``; depth at or beyond ``depth_max`` is
  0), decoded as ``depth = a / (v - b)`` in float32, ``v = 0`` giving NaN (no measurement).
  A 32FC1 depth comes back at most ``depth^2 / (a - depth)`` metres farther than it was sent
  (2.5 mm at 5 m with the defaults q = 100, depth_max = 10).

The size the image declares (PNG IHDR, RVL width and height) is read before anything is
decoded and refused above ``max_pixels`` (the node's ``max_image_pixels``), as colour frames
are. Anything malformed raises :class:`PointsError` saying what is wrong. The result is the
:class:`~ovseg_ros.points.depth.DepthImage` the raw path gives (``uint16`` millimetres or
``float32`` metres). No Python loop runs over pixels or runs: the RVL stream is parsed with
array operations (the chain of run starts by pointer doubling).
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from ovseg_ros.image_conversion import MAX_IMAGE_PIXELS, ImageConversionError, as_byte_array
from ovseg_ros.image_header import PNG_SIGNATURE, HeaderError, png_ihdr
from ovseg_ros.points.depth import DEPTH_ENCODINGS, MAX_DEPTH_SIDE, DepthImage
from ovseg_ros.points.errors import PointsError

CONFIG_HEADER = struct.Struct("<iff")  # compression format, depthParam[0], depthParam[1]
INV_DEPTH = 0  # compressionFormat: the only value compressed_depth_image_transport writes
_PNG_COLOUR_TYPES = {0: "greyscale", 2: "RGB", 3: "palette", 4: "grey + alpha", 6: "RGBA"}
_RVL_SIZE = struct.Struct("<II")  # width, height
_RVL_MAX_NIBBLES = 10  # the reference decoder shifts by 29 - 3 k: at most 10 nibbles a value


@dataclass(frozen=True)
class CompressedDepthHeader:
    """What a compressedDepth message declares, read without decoding the image.

    ``encoding``: ``16UC1`` or ``32FC1``; ``codec``: ``png`` or ``rvl``; ``width`` x
    ``height``: the image's size; ``quantisation``: ``(a, b)`` of the 32FC1 inverse-depth code
    (whatever the publisher left there for 16UC1); ``payload``: the image bytes after the
    12-byte header (a ``uint8`` view into the message).
    """

    encoding: str
    codec: str
    width: int
    height: int
    quantisation: tuple[float, float]
    payload: np.ndarray


def parse_format(format: str) -> tuple[str, str]:  # noqa: A002 - the message field's name
    """``(encoding, codec)`` of a compressedDepth ``format`` field; :class:`PointsError` for
    another format or a depth encoding other than 16UC1 / 32FC1."""
    text = str(format)
    encoding, sep, rest = text.partition(";")
    encoding = encoding.strip()
    if not sep:  # the oldest publishers wrote the encoding alone: png
        codec = "png"
    elif "compressedDepth png" in rest:
        codec = "png"
    elif "compressedDepth rvl" in rest:
        codec = "rvl"
    elif "compressedDepth" in rest and "compressedDepth " not in rest:
        codec = "png"
    else:
        raise PointsError(
            f"unknown compressedDepth format {text!r}: expected '16UC1; compressedDepth png' "
            "(or rvl, or 32FC1)"
        )
    if encoding not in DEPTH_ENCODINGS:
        raise PointsError(
            f"unsupported compressedDepth encoding {encoding!r} (format {text!r}); supported: "
            "16UC1 (millimetres), 32FC1 (metres)"
        )
    return encoding, codec


def read_header(format: str, data: Any) -> CompressedDepthHeader:  # noqa: A002
    """The declared encoding, codec, size and quantisation of a compressedDepth message,
    checked, without decoding the image (a few dozen bytes are read)."""
    encoding, codec = parse_format(format)
    try:
        buffer = as_byte_array(data)
    except ImageConversionError as exc:
        raise PointsError(f"compressedDepth {exc}") from exc
    if buffer.size <= CONFIG_HEADER.size:
        raise PointsError(
            f"compressedDepth data has {buffer.size} bytes: no image after its "
            f"{CONFIG_HEADER.size}-byte header"
        )
    kind, a, b = CONFIG_HEADER.unpack(buffer[: CONFIG_HEADER.size].tobytes())
    if kind != INV_DEPTH:
        raise PointsError(
            f"compressedDepth header names compression format {kind}; the only one is "
            f"{INV_DEPTH} (INV_DEPTH): corrupt data, or not compressedDepth"
        )
    if encoding == "32FC1" and not (np.isfinite(a) and np.isfinite(b) and a != 0.0):
        raise PointsError(
            f"compressedDepth 32FC1 quantisation parameters a={a}, b={b} are not usable "
            "(a must be finite and non-zero, b finite)"
        )
    payload = buffer[CONFIG_HEADER.size :]
    if codec == "png":
        width, height = _png_size(payload)
    else:
        width, height = _rvl_size(payload)
    if width > MAX_DEPTH_SIDE or height > MAX_DEPTH_SIDE:
        raise PointsError(f"compressedDepth image has an invalid size {width}x{height}")
    return CompressedDepthHeader(encoding, codec, width, height, (a, b), payload)


def compressed_depth_size(format: str, data: Any) -> tuple[int, int]:  # noqa: A002
    """``(width, height)`` a compressedDepth message declares, read from its header;
    :class:`PointsError` when it is malformed."""
    header = read_header(format, data)
    return header.width, header.height


def decode_compressed_depth(
    format: str,  # noqa: A002 - the message field's name
    data: Any,
    max_pixels: int | None = MAX_IMAGE_PIXELS,
) -> DepthImage:
    """Decode the fields of a compressedDepth ``sensor_msgs/CompressedImage``.

    Returns what :func:`~ovseg_ros.points.depth.decode_depth` returns for the same depth sent
    raw: ``uint16`` millimetres (16UC1, exact) or ``float32`` metres (32FC1, NaN where there
    was no measurement). An image declaring more than ``max_pixels`` is refused before
    decoding; malformed data raises :class:`PointsError` saying what is wrong.
    """
    header = read_header(format, data)
    pixels = header.width * header.height
    if max_pixels is not None and pixels > max_pixels:
        raise PointsError(
            f"compressedDepth image is {header.width}x{header.height} = {pixels} pixels, above "
            f"the limit of {max_pixels} (max_image_pixels); refused before decoding"
        )
    if header.codec == "png":
        code = _decode_png16(header.payload, header.width, header.height)
    else:
        code = _decode_rvl(header.payload[_RVL_SIZE.size :], pixels)
        code = code.reshape(header.height, header.width)
    if header.encoding == "16UC1":
        return DepthImage(values=code, units_per_metre=DEPTH_ENCODINGS["16UC1"][1])
    a, b = (np.float32(v) for v in header.quantisation)
    metres = np.full(code.shape, np.nan, dtype=np.float32)
    with np.errstate(divide="ignore", over="ignore"):  # v == b: inf, as in the reference decoder
        np.divide(a, code.astype(np.float32) - b, out=metres, where=code != 0)
    return DepthImage(values=metres, units_per_metre=1.0)


# -- PNG -------------------------------------------------------------------------------------------


def _png_size(payload: np.ndarray) -> tuple[int, int]:
    """Width and height from the IHDR chunk, checked to be a 16-bit greyscale image."""
    head = payload[:26].tobytes()
    if not head.startswith(PNG_SIGNATURE):
        if PNG_SIGNATURE.startswith(head):
            raise PointsError(f"compressedDepth PNG truncated after {len(head)} bytes")
        raise PointsError("compressedDepth png data is not a PNG (no PNG signature)")
    if len(head) < 26:
        raise PointsError(f"compressedDepth PNG truncated in its header ({payload.size} bytes)")
    try:
        width, height, bits, colour = png_ihdr(head)
    except HeaderError:
        raise PointsError("compressedDepth PNG does not start with its IHDR chunk") from None
    if width == 0 or height == 0:
        raise PointsError(f"compressedDepth PNG has an invalid size {width}x{height}")
    if bits != 16 or colour != 0:
        kind = _PNG_COLOUR_TYPES.get(colour, f"colour type {colour}")
        raise PointsError(
            f"compressedDepth PNG is {bits}-bit {kind}; depth needs a 16-bit greyscale PNG"
        )
    return width, height


def _decode_png16(payload: np.ndarray, width: int, height: int) -> np.ndarray:
    """``uint16 [height, width]`` from a 16-bit greyscale PNG: OpenCV where installed, else
    Pillow (a dependency)."""
    try:
        import cv2
    except ImportError:
        cv2 = None
    if cv2 is not None:
        image = cv2.imdecode(np.ascontiguousarray(payload), cv2.IMREAD_UNCHANGED)
    else:
        image = _decode_png16_pillow(payload)
    if image is None:
        raise PointsError(
            f"cannot decode the compressedDepth PNG ({payload.size} bytes): corrupt or truncated"
        )
    if image.dtype != np.uint16 or image.shape != (height, width):
        raise PointsError(
            f"compressedDepth PNG decoded to {image.dtype} {list(image.shape)}, not the 16-bit "
            f"{width}x{height} image its header declares"
        )
    return image


def _decode_png16_pillow(payload: np.ndarray) -> np.ndarray | None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(payload.tobytes())) as image:
            image.load()
            if image.mode not in ("I;16", "I;16B", "I;16L", "I"):
                return None
            values = np.asarray(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    if values.dtype != np.uint16:  # Pillow's "I" (int32) or a byte-swapped "I;16B"
        values = values.astype(np.uint16)
    return values


# -- RVL -------------------------------------------------------------------------------------------


def _rvl_size(payload: np.ndarray) -> tuple[int, int]:
    if payload.size < _RVL_SIZE.size:
        raise PointsError(f"compressedDepth rvl data has {payload.size} bytes: no width and height")
    width, height = _RVL_SIZE.unpack(payload[: _RVL_SIZE.size].tobytes())
    if width == 0 or height == 0:
        raise PointsError(f"compressedDepth rvl image has an invalid size {width}x{height}")
    return width, height


def _rvl_values(stream: np.ndarray) -> np.ndarray:
    """``int64``: the variable-length values of an RVL stream, in order (an unterminated
    last value is dropped: more than the stream holds is reported by the caller)."""
    if stream.size % 4:
        raise PointsError(
            f"compressedDepth rvl stream of {stream.size} bytes is not whole 32-bit words"
        )
    words = np.ascontiguousarray(stream).view("<u4")
    shifts = np.arange(28, -1, -4, dtype=np.uint32)
    nibbles = ((words[:, None] >> shifts) & 0xF).astype(np.uint8).reshape(-1)
    ends = np.flatnonzero(nibbles < 0x8)  # the last nibble of each value: no continuation
    if ends.size == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
    lengths = ends - starts + 1
    if int(lengths.max()) > _RVL_MAX_NIBBLES:
        raise PointsError(
            f"compressedDepth rvl stream has a value longer than {_RVL_MAX_NIBBLES} nibbles"
        )
    values = np.zeros(ends.size, dtype=np.int64)
    for k in range(int(lengths.max())):  # nibble k of every value (at most 10 steps)
        has = np.flatnonzero(lengths > k)
        values[has] |= (nibbles[starts[has] + k] & 0x7).astype(np.int64) << (3 * k)
    return values


def _rvl_run_starts(values: np.ndarray) -> np.ndarray:
    """Indices of the run heads (``zeros`` values) following the stream from value 0: each
    run is ``zeros, nonzeros`` then ``nonzeros`` deltas, so the next head is
    ``i + 2 + values[i + 1]``. All heads at once by doubling the jumps (log2 of the count
    array steps); the tail holds heads past the image's end that the caller cuts off."""
    count = values.size
    jump = np.full(count + 1, count, dtype=np.int64)  # ``count``: past the stream's end
    if count >= 2:
        jump[: count - 1] = np.minimum(np.arange(count - 1) + 2 + values[1:], count)
    reached = np.zeros(count + 1, dtype=bool)
    reached[0] = True
    while jump[0] < count:  # reached: the heads within 2**k steps; jump: 2**k steps
        reached[jump[reached]] = True
        jump = jump[jump]
    return np.flatnonzero(reached[:count])


def _decode_rvl(stream: np.ndarray, pixels: int) -> np.ndarray:
    """``uint16 [pixels]`` from an RVL stream (checked against overruns and truncation)."""
    values = _rvl_values(stream)
    heads = _rvl_run_starts(values)
    heads = heads[heads + 1 < values.size]  # a head needs its nonzeros count
    zeros, nonzeros = values[heads], values[heads + 1]
    covered = np.cumsum(zeros + nonzeros)
    last = int(np.searchsorted(covered, pixels))  # the run that completes the image
    if last == covered.size:
        done = int(covered[-1]) if covered.size else 0
        raise PointsError(
            f"compressedDepth rvl stream ends after {done} of {pixels} pixels (truncated)"
        )
    if covered[last] != pixels:
        raise PointsError(
            f"compressedDepth rvl runs cover {int(covered[last])} pixels, not the image's {pixels}"
        )
    heads, zeros, nonzeros = heads[: last + 1], zeros[: last + 1], nonzeros[: last + 1]
    if heads[-1] + 2 + nonzeros[-1] > values.size:
        raise PointsError("compressedDepth rvl stream ends inside its last run (truncated)")
    total = int(nonzeros.sum())
    before = np.cumsum(nonzeros) - nonzeros  # deltas of the earlier runs
    offset = np.arange(total) - np.repeat(before, nonzeros)
    positive = values[np.repeat(heads + 2, nonzeros) + offset]
    deltas = (positive >> 1) ^ -(positive & 1)
    first_pixel = np.cumsum(zeros + nonzeros) - nonzeros  # the run's first nonzero pixel
    out = np.zeros(pixels, dtype=np.uint16)
    out[np.repeat(first_pixel, nonzeros) + offset] = (np.cumsum(deltas) & 0xFFFF).astype(np.uint16)
    return out
