"""Frame size limits before decoding (ovseg_ros.image_header, max_pixels) and error kinds.

A few KB of PNG can declare 16000x16000 pixels (768 MB decoded): the header must be read and
the frame refused before any decoder allocates it. Memory is measured in a fresh process.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image as PILImage

from ovseg_ros.image_conversion import (
    ERROR_KINDS,
    MAX_IMAGE_PIXELS,
    ImageConversionError,
    ImageTooLargeError,
    array_to_image_fields,
    compressed_to_rgb,
    image_to_rgb,
    message_to_rgb,
)
from ovseg_ros.image_header import HeaderError, compressed_image_size

REPO = Path(__file__).resolve().parents[1]


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def bilevel_png(width: int, height: int) -> bytes:
    """A valid all-black 1-bit grayscale PNG: a few KB on disk, ``3 * width * height`` bytes
    once decoded to RGB."""
    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then packed pixels
    packer = zlib.compressobj(9)
    rows_per_piece = 1000
    idat = b"".join(
        packer.compress(row * min(rows_per_piece, height - start))
        for start in range(0, height, rows_per_piece)
    )
    idat += packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", idat)
        + _chunk(b"IEND", b"")
    )


def encoded(fmt: str, mode: str = "RGB", **options) -> bytes:
    """A small 24x16 image in ``fmt`` (Pillow's encoder)."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (16, 24, len(mode)), dtype=np.uint8)
    buffer = io.BytesIO()
    PILImage.fromarray(pixels, mode).save(buffer, format=fmt, **options)
    return buffer.getvalue()


# -- headers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt,mode,options,chunk",
    [
        ("PNG", "RGB", {}, None),
        ("JPEG", "RGB", {}, None),
        ("JPEG", "RGB", {"progressive": True}, None),
        ("WEBP", "RGB", {}, b"VP8 "),
        ("WEBP", "RGB", {"lossless": True}, b"VP8L"),
        ("WEBP", "RGBA", {}, b"VP8X"),  # non-opaque alpha: the extended format
        ("BMP", "RGB", {}, None),
        ("TIFF", "RGB", {}, None),  # through Pillow's header reader
        ("GIF", "RGB", {}, None),
        ("PPM", "RGB", {}, None),
        ("JPEG2000", "RGB", {}, None),
    ],
)
def test_header_size_of_real_files(fmt: str, mode: str, options: dict, chunk: bytes | None):
    data = encoded(fmt, mode, **options)
    if chunk is not None:
        assert data[12:16] == chunk  # the WebP variant this case is about
    assert compressed_image_size(data) == (24, 16)


def test_jpeg_thumbnail_in_exif_is_not_the_frame():
    thumbnail = encoded("JPEG")  # 24x16, inside an APP1 segment before the real frame
    exif = b"Exif\x00\x00" + thumbnail
    app1 = b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif
    big = io.BytesIO()
    PILImage.new("RGB", (40, 30), (10, 200, 10)).save(big, format="JPEG")
    data = big.getvalue()
    data = data[:2] + app1 + data[2:]
    assert compressed_image_size(data) == (40, 30)
    assert compressed_to_rgb("jpeg", data).shape == (30, 40, 3)


@pytest.mark.parametrize(
    "data",
    [
        b"\x89PNG\r\n\x1a\n" + bytes(8),  # no IHDR
        b"\xff\xd8\xff\xe0\x00\x10JFIF",  # truncated before the frame header
        b"\xff\xd8\xff\xda\x00\x08" + bytes(8),  # a scan before any frame header
        b"\xff\xd8\x00" + bytes(40),  # not a marker
        b"RIFF\x00\x00\x00\x00WEBPVP8 " + bytes(16),  # no VP8 start code
    ],
)
def test_malformed_headers(data: bytes):
    with pytest.raises(HeaderError):
        compressed_image_size(data)
    with pytest.raises(ImageConversionError) as info:
        compressed_to_rgb("", data)
    assert info.value.kind == "decode"


@pytest.mark.parametrize("data", [b"definitely not an image", encoded("TGA"), encoded("PCX")])
def test_unknown_format_is_not_decoded(data: bytes):
    assert compressed_image_size(data) is None
    with pytest.raises(ImageConversionError, match="cannot read the size") as info:
        compressed_to_rgb("png", data)
    assert info.value.kind == "decode"


# -- limits: compressed --------------------------------------------------------------------------


def _patch_jpeg(data: bytes, width: int, height: int) -> bytes:
    sof = data.index(b"\xff\xc0\x00\x11")  # baseline, 3 components
    return data[: sof + 5] + struct.pack(">HH", height, width) + data[sof + 9 :]


def _patch_webp(data: bytes, width: int, height: int) -> bytes:
    chunk, head = data[12:16], bytearray(data)
    if chunk == b"VP8 ":
        head[26:30] = struct.pack("<HH", width, height)
    elif chunk == b"VP8L":
        bits = int.from_bytes(data[21:25], "little") & ~((1 << 28) - 1)
        head[21:25] = (bits | (width - 1) | ((height - 1) << 14)).to_bytes(4, "little")
    else:
        head[24:30] = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return bytes(head)


@pytest.mark.parametrize(
    "data",
    [
        _patch_jpeg(encoded("JPEG"), 16000, 16000),
        _patch_webp(encoded("WEBP"), 16000, 16000),
        _patch_webp(encoded("WEBP", lossless=True), 16000, 16000),
        _patch_webp(encoded("WEBP", "RGBA"), 16000, 16000),
    ],
    ids=["jpeg", "webp-lossy", "webp-lossless", "webp-extended"],
)
def test_huge_declared_size_is_refused_from_the_header(data: bytes):
    assert compressed_image_size(data) == (16000, 16000)
    with pytest.raises(ImageTooLargeError, match="16000x16000 = 256000000 pixels") as info:
        compressed_to_rgb("", data)
    assert info.value.kind == "limit" and info.value.max_pixels == MAX_IMAGE_PIXELS


def test_the_limit_is_a_parameter():
    data = encoded("PNG")  # 24x16 = 384 pixels
    with pytest.raises(ImageTooLargeError, match="above the limit of 383"):
        compressed_to_rgb("png", data, max_pixels=383)
    assert compressed_to_rgb("png", data, max_pixels=384).shape == (16, 24, 3)
    assert compressed_to_rgb("png", data, max_pixels=None).shape == (16, 24, 3)
    tiff = encoded("TIFF")
    with pytest.raises(ImageTooLargeError):
        compressed_to_rgb("tiff", tiff, max_pixels=100)


def test_8k_is_the_default_limit():
    assert MAX_IMAGE_PIXELS == 7680 * 4320
    assert compressed_image_size(bilevel_png(7680, 4320)) == (7680, 4320)
    with pytest.raises(ImageTooLargeError, match="7681x4320"):
        compressed_to_rgb("png", bilevel_png(7681, 4320))


_MEASURE = textwrap.dedent(
    """
    import json, sys
    import cv2  # imported before the baseline: only the decoding itself is measured
    from ovseg_ros.image_conversion import ImageConversionError, compressed_to_rgb

    def kib(field):
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))

    data = open(sys.argv[1], "rb").read()
    limit = None if sys.argv[2] == "none" else int(sys.argv[2])
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # the high-water mark restarts from the current resident set
    baseline = kib("VmRSS")
    try:
        shape, kind = list(compressed_to_rgb("png", data, max_pixels=limit).shape), None
    except ImageConversionError as exc:
        shape, kind = None, exc.kind
    growth_mib = (kib("VmHWM") - baseline) / 1024
    print(json.dumps({"shape": shape, "kind": kind, "growth_mib": growth_mib}))
    """
)


def _decode_in_fresh_process(path: Path, limit: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path), limit],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_png_bomb_is_refused_with_flat_memory(tmp_path):
    """16000x16000 in a few KB: refused from the header; the process does not grow. The same
    measurement sees a legitimately decoded 4000x4000 frame (46 MiB), so it would see 732 MiB."""
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bilevel_png(16000, 16000))
    assert bomb.stat().st_size < 100_000
    refused = _decode_in_fresh_process(bomb, str(MAX_IMAGE_PIXELS))
    assert refused["kind"] == "limit" and refused["shape"] is None
    assert refused["growth_mib"] < 64, refused

    control = tmp_path / "control.png"
    control.write_bytes(bilevel_png(4000, 4000))
    decoded = _decode_in_fresh_process(control, "none")
    assert decoded["shape"] == [4000, 4000, 3]
    assert decoded["growth_mib"] > 40, decoded


# -- limits: raw ---------------------------------------------------------------------------------


def test_raw_frame_over_the_limit_is_refused_before_its_data_is_read():
    # 8000x5000 rgb8 with no data at all: a size check after reading would say "data has 0".
    with pytest.raises(ImageTooLargeError, match="8000x5000 = 40000000 pixels") as info:
        image_to_rgb("rgb8", 5000, 8000, 24000, b"")
    assert info.value.kind == "limit"
    msg = SimpleNamespace(
        encoding="bgr8", height=5000, width=8000, step=24000, data=b"", is_bigendian=0
    )
    with pytest.raises(ImageTooLargeError):
        message_to_rgb(msg, compressed=False)


def test_raw_limit_is_a_parameter():
    pixels = np.arange(48 * 64 * 3, dtype=np.uint32).astype(np.uint8).reshape(48, 64, 3)
    fields = array_to_image_fields(pixels, "rgb8")
    args = ("rgb8", 48, 64, fields["step"], fields["data"])
    with pytest.raises(ImageTooLargeError):
        image_to_rgb(*args, max_pixels=64 * 48 - 1)
    np.testing.assert_array_equal(image_to_rgb(*args, max_pixels=64 * 48), pixels)
    msg = SimpleNamespace(is_bigendian=0, **{k: fields[k] for k in ("height", "width", "step")})
    msg.encoding, msg.data = "rgb8", fields["data"]
    with pytest.raises(ImageTooLargeError):
        message_to_rgb(msg, compressed=False, max_pixels=100)
    np.testing.assert_array_equal(message_to_rgb(msg, compressed=False, max_pixels=None), pixels)


# -- kinds ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call,kind",
    [
        (lambda: image_to_rgb("nv21", 2, 2, 8, bytes(16)), "encoding"),
        (lambda: compressed_to_rgb("16UC1; compressedDepth png", b"x"), "encoding"),
        (lambda: compressed_to_rgb("h264", b"x"), "encoding"),
        (lambda: image_to_rgb("rgb8", 0, 2, 6, b""), "size"),
        (lambda: image_to_rgb("rgb8", 2, 20000, 60000, b""), "size"),
        (lambda: image_to_rgb("yuv422", 2, 3, 6, bytes(12)), "size"),
        (lambda: image_to_rgb("rgb8", 5000, 8000, 24000, b""), "limit"),
        (lambda: image_to_rgb("rgb8", 2, 3, 8, bytes(64)), "step"),
        (lambda: image_to_rgb("rgb8", 2, 3, 9, bytes(17)), "data"),
        (lambda: compressed_to_rgb("jpeg", b""), "data"),
        (lambda: compressed_to_rgb("png", encoded("PNG")[:-40]), "decode"),
        (lambda: array_to_image_fields(np.zeros((2, 2)), "mono8"), "output"),
    ],
)
def test_every_error_has_a_kind(call, kind: str):
    assert kind in ERROR_KINDS
    with pytest.raises(ImageConversionError) as info:
        call()
    assert info.value.kind == kind, info.value
