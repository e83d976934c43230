"""Width and height of a compressed image read from its header, without decoding any pixels.

A few hundred bytes of PNG can declare 16000x16000 pixels: the size has to be known before a
decoder allocates the frame. JPEG, PNG, WebP and BMP headers are parsed here (a handful of
bytes each); TIFF, GIF, PPM and JPEG 2000 go through Pillow's ``Image.open``, which also reads
only the header. Anything else is not recognised (and so not decoded by the callers). No
decoder runs and nothing proportional to the declared size is allocated.
"""

from __future__ import annotations

import io
from typing import Any

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic); not DHT (C4),
# JPG (C8) or DAC (CC), which share the range.
_JPEG_SOF = frozenset(
    {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
)
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RSTn: no length field
_JPEG_MAX_SEGMENTS = 1000  # real files have a dozen before the frame header
# Other formats OpenCV also decodes, whose headers Pillow reads.
_PILLOW_FORMATS = ("TIFF", "GIF", "PPM", "JPEG2000")


class HeaderError(ValueError):
    """The header is recognised but malformed or truncated."""


class HeaderTooLargeError(HeaderError):
    """The header declares a size far beyond any camera's (Pillow's decompression-bomb limit)."""


def compressed_image_size(data: Any) -> tuple[int, int] | None:
    """``(width, height)`` declared by the header of ``data`` (bytes-like), or ``None`` when
    the format is not recognised. Raises :class:`HeaderError` for a malformed header (its
    subclass :class:`HeaderTooLargeError` where the size itself is absurd)."""
    view = memoryview(data).cast("B")
    head = bytes(view[:32])
    if head.startswith(PNG_SIGNATURE):
        return _png_size(head)
    if head.startswith(b"\xff\xd8"):
        return _jpeg_size(view)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return _webp_size(head)
    if head.startswith(b"BM"):
        return _bmp_size(head)
    return _pillow_size(view)


def png_ihdr(head: bytes) -> tuple[int, int, int, int]:
    """``(width, height, bit depth, colour type)`` from the first 26 bytes of a PNG (its
    signature, then the IHDR chunk: length, type, width, height big-endian, bit depth, colour
    type); :class:`HeaderError` when they are not there."""
    if len(head) < 26 or head[12:16] != b"IHDR":
        raise HeaderError("PNG without an IHDR chunk")
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    return width, height, head[24], head[25]


def _png_size(head: bytes) -> tuple[int, int]:
    return png_ihdr(head)[:2]


def _jpeg_size(view: memoryview) -> tuple[int, int]:
    """The first frame header (SOFn) among the segments before the scan. Thumbnails in APPn
    segments are skipped with their segment, as decoders do."""
    pos, size = 2, len(view)
    for _ in range(_JPEG_MAX_SEGMENTS):
        if pos + 4 > size:
            break
        if view[pos] != 0xFF:
            raise HeaderError(f"JPEG marker expected at byte {pos}")
        marker = view[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        if marker in _JPEG_SOF:
            if pos + 9 > size:
                break
            # Length (2), precision (1), height (2), width (2).
            height = int.from_bytes(view[pos + 5 : pos + 7], "big")
            return int.from_bytes(view[pos + 7 : pos + 9], "big"), height
        if marker in (0xDA, 0xD9):  # start of scan / end of image before any frame header
            raise HeaderError("JPEG without a frame header before its scan")
        pos += 2 + int.from_bytes(view[pos + 2 : pos + 4], "big")
    else:
        raise HeaderError(f"JPEG with more than {_JPEG_MAX_SEGMENTS} segments before its frame")
    raise HeaderError("JPEG truncated before its frame header")


def _webp_size(head: bytes) -> tuple[int, int]:
    chunk, body = head[12:16], head[20:]
    if chunk == b"VP8 " and len(body) >= 10 and body[3:6] == b"\x9d\x01\x2a":
        # Lossy: frame tag (3), start code (3), then 14-bit width and height.
        width = int.from_bytes(body[6:8], "little") & 0x3FFF
        return width, int.from_bytes(body[8:10], "little") & 0x3FFF
    if chunk == b"VP8L" and len(body) >= 5 and body[0] == 0x2F:
        # Lossless: signature, then width - 1 and height - 1 in 14 bits each.
        bits = int.from_bytes(body[1:5], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(body) >= 10:
        # Extended: flags (1), reserved (3), canvas width - 1 and height - 1 in 24 bits each.
        width = int.from_bytes(body[4:7], "little") + 1
        return width, int.from_bytes(body[7:10], "little") + 1
    raise HeaderError(f"WebP with an unknown or truncated {chunk!r} chunk")


def _bmp_size(head: bytes) -> tuple[int, int]:
    if len(head) < 26:
        raise HeaderError("BMP truncated before its size")
    if int.from_bytes(head[14:18], "little") == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        return int.from_bytes(head[18:20], "little"), int.from_bytes(head[20:22], "little")
    width = int.from_bytes(head[18:22], "little", signed=True)
    height = int.from_bytes(head[22:26], "little", signed=True)  # negative: top-down rows
    return abs(width), abs(height)


def _pillow_size(view: memoryview) -> tuple[int, int] | None:
    """:data:`_PILLOW_FORMATS` through ``Image.open``, which parses only the header."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        return None
    try:
        with Image.open(io.BytesIO(view), formats=_PILLOW_FORMATS) as image:
            return image.size
    except UnidentifiedImageError:
        return None
    except Image.DecompressionBombError as exc:  # the size is far beyond any camera's
        raise HeaderTooLargeError(str(exc)) from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise HeaderError(f"unreadable image header: {exc}") from None
