"""compressedDepth (image_transport_plugins' compressed_depth_image_transport) without ROS.

The messages are built here from the format's definition, independently of the decoder: a
12-byte ``ConfigHeader`` (``int32`` format 0, two ``float32`` quantisation parameters,
little-endian) then a 16-bit PNG (``cv2.imencode``) or an RVL stream (the encoder below,
written from the RVL definition). 32FC1 depth is quantised as the publisher does,
``v = uint16(a / z + b)`` in float32 with ``a = q (q + 1)``, ``b = 1 - a / depth_max``.
16UC1 must come back exactly; 32FC1 as ``a / (v - b)``, within the quantisation error.
"""

from __future__ import annotations

import struct
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from test_points import H, W, _depth_message, _scene
from test_points_stage import header, info_msg, result

from ovseg_ros.points import PointsError, decode_compressed_depth, decode_depth
from ovseg_ros.points.compressed_depth import compressed_depth_size, read_header
from ovseg_ros.points_stage import PointsStage

cv2 = pytest.importorskip("cv2")

Q, DEPTH_MAX = 100.0, 10.0  # the publisher's defaults (depth_quantization, depth_max)


# -- an encoder from the format's definition ------------------------------------------------------


def quantisation(q: float = Q, depth_max: float = DEPTH_MAX) -> tuple[np.float32, np.float32]:
    a = np.float32(q) * (np.float32(q) + np.float32(1.0))
    return a, np.float32(1.0) - a / np.float32(depth_max)


def inverse_depth(z: np.ndarray, q: float = Q, depth_max: float = DEPTH_MAX) -> np.ndarray:
    """``uint16``: the publisher's code of float32 metres (0 / NaN / inf / beyond: 0)."""
    a, b = quantisation(q, depth_max)
    z = np.asarray(z, dtype=np.float32)
    keep = np.isfinite(z) & (z > 0) & (z < np.float32(depth_max))
    code = np.zeros(z.shape, dtype=np.uint16)
    with np.errstate(divide="ignore", invalid="ignore"):
        code[keep] = (a / z[keep] + b).astype(np.uint16)  # float -> unsigned: truncation
    return code


def rvl_encode(values: np.ndarray) -> bytes:
    """The RVL stream of ``uint16`` values in row-major order (a loop: test images only)."""
    flat = [int(v) for v in np.asarray(values).reshape(-1)]
    nibbles: list[int] = []

    def vle(value: int) -> None:
        while True:
            nibble, value = value & 0x7, value >> 3
            nibbles.append(nibble | (0x8 if value else 0))
            if not value:
                return

    i, previous = 0, 0
    while i < len(flat):
        start = i
        while i < len(flat) and flat[i] == 0:
            i += 1
        vle(i - start)
        end = i
        while end < len(flat) and flat[end] != 0:
            end += 1
        vle(end - i)
        for current in flat[i:end]:
            delta = current - previous
            vle((delta << 1) ^ (delta >> 31))
            previous = current
        i = end
    nibbles += [0] * (-len(nibbles) % 8)
    words = [
        sum(n << (28 - 4 * k) for k, n in enumerate(nibbles[j : j + 8]))
        for j in range(0, len(nibbles), 8)
    ]
    return struct.pack(f"<{len(words)}I", *words)


def compressed_depth(
    depth: np.ndarray,
    codec: str = "png",
    fmt: str | None = None,
    q: float = Q,
    depth_max: float = DEPTH_MAX,
) -> tuple[str, bytes]:
    """``(format, data)`` of a compressedDepth message: ``depth`` is ``uint16`` millimetres
    (16UC1) or ``float32`` metres (32FC1)."""
    if depth.dtype == np.uint16:
        encoding, code, a, b = "16UC1", depth, 0.0, 0.0  # the publisher leaves a, b unset
    else:
        encoding, code = "32FC1", inverse_depth(depth, q, depth_max)
        a, b = quantisation(q, depth_max)
    if codec == "png":
        ok, png = cv2.imencode(".png", code)
        assert ok
        image = png.tobytes()
    else:
        image = struct.pack("<II", code.shape[1], code.shape[0]) + rvl_encode(code)
    fmt = f"{encoding}; compressedDepth {codec}" if fmt is None else fmt
    return fmt, struct.pack("<iff", 0, a, b) + image


def expected_metres(depth: np.ndarray, q: float = Q, depth_max: float = DEPTH_MAX) -> np.ndarray:
    """What a 32FC1 compressedDepth decodes to, by the formula: ``a / (v - b)``, 0 -> NaN."""
    a, b = quantisation(q, depth_max)
    code = inverse_depth(depth, q, depth_max)
    out = np.full(code.shape, np.nan, np.float32)
    valid = code != 0
    out[valid] = a / (code[valid].astype(np.float32) - b)
    return out


def scene_mm(invalid_fraction: float = 0.08, seed: int = 3) -> np.ndarray:
    """``uint16 [H, W]`` millimetres of test_points' scene, some pixels 0 (no measurement)."""
    z = np.round(_scene([0.0] * 5)["z"] * 1000).astype(np.uint16)
    z[np.random.default_rng(seed).random(z.shape) < invalid_fraction] = 0
    return z


def scene_metres(seed: int = 3) -> np.ndarray:
    """``float32 [H, W]`` metres with 0, NaN and inf pixels and one beyond depth_max."""
    z = _scene([0.0] * 5)["z"].astype(np.float32)
    bad = np.flatnonzero(np.random.default_rng(seed).random(z.shape) < 0.08)
    z.reshape(-1)[bad[0::3]], z.reshape(-1)[bad[1::3]] = 0.0, np.nan
    z.reshape(-1)[bad[2::3]] = np.inf
    z[0, 0] = 12.0  # beyond depth_max: sent as "no measurement"
    return z


# -- decoding -------------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["png", "rvl"])
def test_16uc1_is_exact_and_the_raw_representation(codec):
    mm = scene_mm()
    fmt, data = compressed_depth(mm, codec)
    assert compressed_depth_size(fmt, data) == (W, H)
    depth = decode_compressed_depth(fmt, data)
    assert depth.values.dtype == np.uint16 and depth.units_per_metre == 1000.0
    assert np.array_equal(depth.values, mm)
    step, raw = _depth_message(mm / 1000.0, "16UC1", mm == 0)
    sent_raw = decode_depth("16UC1", H, W, step, raw)
    assert np.array_equal(depth.values, sent_raw.values)
    assert np.array_equal(depth.metres(), sent_raw.metres())


@pytest.mark.parametrize("codec", ["png", "rvl"])
def test_32fc1_within_the_quantisation_error(codec):
    z = scene_metres()
    fmt, data = compressed_depth(z, codec)
    depth = decode_compressed_depth(fmt, data)
    assert depth.values.dtype == np.float32 and depth.units_per_metre == 1.0
    got = depth.metres()
    np.testing.assert_array_equal(got, expected_metres(z))  # the formula, bit for bit
    valid = np.isfinite(z) & (z > 0) & (z < DEPTH_MAX)
    assert np.isnan(got[~valid]).all() and np.isfinite(got[valid]).all()
    # v = floor(a / z + b) puts the decoded depth in [z, z / (1 - z / a)); float32 slack.
    a, _ = quantisation()
    zv, gv = z[valid].astype(np.float64), got[valid].astype(np.float64)
    assert (gv >= zv * (1 - 1e-6)).all()
    assert (gv <= zv / (1 - zv / float(a)) * (1 + 1e-6)).all()
    assert np.abs(gv - zv).max() < 0.003  # < 2.5 mm at 5 m with the defaults; the scene is nearer


def test_rvl_of_a_hand_encoded_stream():
    """[0, 0, 5, 3]: zeros 2, nonzeros 2, deltas +5 (zig-zag 10: nibbles A 1) and -2 (3)
    -> nibbles 2 2 A 1 3, one word 0x22A13000 (little-endian bytes)."""
    data = struct.pack("<iff", 0, 0.0, 0.0) + struct.pack("<II", 4, 1) + bytes.fromhex("0030a122")
    depth = decode_compressed_depth("16UC1; compressedDepth rvl", data)
    assert depth.values.tolist() == [[0, 0, 5, 3]]
    assert rvl_encode(np.array([0, 0, 5, 3], np.uint16)) == bytes.fromhex("0030a122")


def test_rvl_runs_wraps_and_long_values():
    """Noise with holes: many runs, deltas across the whole 16-bit range (wrapping), values of
    several nibbles, a zero run at the end and one at the start."""
    rng = np.random.default_rng(5)
    values = rng.integers(1, 65536, (37, 53)).astype(np.uint16)
    values[rng.random(values.shape) < 0.3] = 0
    values[:2] = 0
    values[-1, -7:] = 0
    values[5, :10] = [65535, 1, 65535, 2, 30000, 30001, 1, 1, 1, 65534]
    fmt, data = compressed_depth(values, "rvl")
    assert np.array_equal(decode_compressed_depth(fmt, data).values, values)
    empty = np.zeros((4, 6), np.uint16)  # all "no measurement": a few bytes
    fmt, data = compressed_depth(empty, "rvl")
    assert np.array_equal(decode_compressed_depth(fmt, data).values, empty)


@pytest.mark.parametrize(
    "fmt",
    ["16UC1; compressedDepth", "16UC1", "16UC1; compressedDepth png", " 16UC1 ;compressedDepth"],
)
def test_older_format_strings_mean_png(fmt):
    mm = scene_mm()
    _, data = compressed_depth(mm, "png")
    assert np.array_equal(decode_compressed_depth(fmt, data).values, mm)


def test_pillow_decodes_where_opencv_is_missing(monkeypatch):
    mm = scene_mm()
    fmt, data = compressed_depth(mm, "png")
    z = scene_metres()
    fmt32, data32 = compressed_depth(z, "png")
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 -> ImportError
    assert np.array_equal(decode_compressed_depth(fmt, data).values, mm)
    np.testing.assert_array_equal(decode_compressed_depth(fmt32, data32).values, expected_metres(z))
    with pytest.raises(PointsError, match="cannot decode"):
        decode_compressed_depth(fmt, data[: len(data) // 2])


# -- limits and malformed data --------------------------------------------------------------------


def _png_header(width: int, height: int, bits: int = 16, colour: int = 0) -> bytes:
    """A PNG signature and IHDR chunk (CRC included) declaring a size, and nothing else."""
    import zlib

    body = b"IHDR" + struct.pack(">IIBBBBB", width, height, bits, colour, 0, 0, 0)
    chunk = struct.pack(">I", 13) + body + struct.pack(">I", zlib.crc32(body))
    return b"\x89PNG\r\n\x1a\n" + chunk


def test_a_declared_size_over_max_pixels_is_refused_before_decoding(monkeypatch):
    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded")

    monkeypatch.setattr(cv2, "imdecode", no_decoding)
    config = struct.pack("<iff", 0, 0.0, 0.0)
    fmt = "16UC1; compressedDepth png"
    bomb = config + _png_header(16000, 16000)  # 256 M pixels declared by 45 bytes
    with pytest.raises(PointsError, match="16000x16000 = 256000000 pixels.*refused before"):
        decode_compressed_depth(fmt, bomb)
    with pytest.raises(PointsError, match="above the limit of 100 "):
        decode_compressed_depth(fmt, config + _png_header(20, 10), max_pixels=100)
    rvl = config + struct.pack("<II", 20, 10) + bytes(4)
    with pytest.raises(PointsError, match="20x10 = 200 pixels, above the limit of 199"):
        decode_compressed_depth("16UC1; compressedDepth rvl", rvl, max_pixels=199)
    with pytest.raises(PointsError, match="invalid size 20000x1"):
        decode_compressed_depth(fmt, config + _png_header(20000, 1))


def _cases() -> list[tuple[str, bytes, str]]:
    mm = scene_mm()
    fmt, png = compressed_depth(mm, "png")
    fmt_rvl, rvl = compressed_depth(mm, "rvl")
    config = png[:12]
    eight_bit = cv2.imencode(".png", (mm // 256).astype(np.uint8))[1].tobytes()
    colour = cv2.imencode(".png", np.dstack([mm, mm, mm]))[1].tobytes()
    rvl_head = config + struct.pack("<II", 4, 1)
    cut = 20 + 4 * ((len(rvl) - 20) // 8)  # half the stream, whole words
    return [
        (fmt, png[:12], "no image after its 12-byte header"),
        (fmt, png[:7], "no image after its 12-byte header"),
        (fmt, struct.pack("<i", 1) + png[4:], "compression format 1"),
        ("32FC1; compressedDepth png", struct.pack("<iff", 0, np.nan, 1.0) + png[12:], "a=nan"),
        ("16UC1; compressedDepth jpeg", png, "unknown compressedDepth format"),
        ("rgb8; jpeg compressed bgr8", png, "unknown compressedDepth format"),
        ("mono16; compressedDepth png", png, "unsupported compressedDepth encoding 'mono16'"),
        ("", png, "unsupported compressedDepth encoding ''"),
        (fmt, config + b"\xff\xd8\xff\xe0 a JPEG", "not a PNG"),
        (fmt, config + png[12:17], "PNG truncated after 5 bytes"),
        (fmt, config + png[12:32], "truncated in its header"),
        (fmt, png[: len(png) // 2], "cannot decode the compressedDepth PNG"),
        (fmt, png[:-30], "cannot decode the compressedDepth PNG"),
        (fmt, config + eight_bit, "8-bit greyscale; depth needs a 16-bit greyscale PNG"),
        (fmt, config + colour, "16-bit RGB"),
        (fmt_rvl, rvl[:16], "no width and height"),
        (fmt_rvl, config + struct.pack("<II", 0, 5), "invalid size 0x5"),
        (fmt_rvl, rvl[:cut], "stream ends after .* of 12288 pixels"),
        (fmt_rvl, rvl[:-1], "not whole 32-bit words"),
        (fmt_rvl, rvl_head + bytes.fromhex("0030a123"), "runs cover 5 pixels, not the image's 4"),
        (fmt_rvl, rvl_head + bytes.fromhex("00000020"), "ends after 2 of 4 pixels"),
        # zeros 0, nonzeros 20 (nibbles C 2), then only 5 deltas before the stream ends
        (fmt_rvl, config + struct.pack("<II", 20, 1) + bytes.fromhex("2222220c"), "last run"),
        (fmt_rvl, rvl_head + b"\xff" * 8 + bytes(4), "longer than 10 nibbles"),
        (fmt_rvl, rvl_head + b"\xff" * 8, "ends after 0 of 4 pixels"),
    ]


def test_malformed_data_is_refused_with_the_reason():
    for fmt, data, message in _cases():
        with pytest.raises(PointsError, match=message):
            decode_compressed_depth(fmt, data)


# -- the points stage -----------------------------------------------------------------------------


def _message(sec: int, fmt: str, data: bytes):
    return SimpleNamespace(header=header(sec), format=fmt, data=data)


def _cloud(stage: PointsStage, sec: int):
    rgb = np.zeros((H, W, 3), np.uint8)
    return stage.outputs(header(sec, 0, "color"), rgb, result()).cloud


def test_stage_pairs_decodes_refuses_and_counts():
    """Paired and decoded like raw depth (the same cloud); malformed: skipped as bad depth;
    over max_pixels by its header: refused at arrival, never kept."""
    mm = scene_mm()
    fmt, data = compressed_depth(mm, "png")
    step, raw = _depth_message(mm / 1000.0, "16UC1", mm == 0)
    raw_msg = SimpleNamespace(
        header=header(1), encoding="16UC1", height=H, width=W, step=step, data=raw, is_bigendian=0
    )
    stage = PointsStage(0.02, max_pixels=H * W)
    stage.push_camera_info(info_msg())
    stage.push_depth(raw_msg)
    from_raw = _cloud(stage, 1)
    stage.push_compressed_depth(_message(2, fmt, np.frombuffer(data, np.uint8)))
    from_compressed = _cloud(stage, 2)
    assert from_raw is not None and from_compressed is not None
    assert from_compressed.frame_id == "depth"
    assert np.array_equal(from_compressed.cloud.data, from_raw.cloud.data)
    assert from_compressed.cloud.width == int((mm >= 100).sum())

    stage.push_compressed_depth(_message(3, fmt, data[: len(data) // 2]))  # kept, bad if paired
    assert _cloud(stage, 3) is None
    stage.push_compressed_depth(_message(4, fmt, data[:5]))
    assert _cloud(stage, 4) is None
    small = PointsStage(0.02, max_pixels=H * W - 1)
    small.push_camera_info(info_msg())
    small.push_compressed_depth(_message(5, fmt, data))
    assert _cloud(small, 5) is None
    counters, refused = stage.counters(), small.counters()
    assert counters["clouds_published"] == 2 and counters["clouds_skipped_bad_depth"] == 2
    assert counters["depth_received"] == 4 and counters["depth_refused_too_large"] == 0
    assert refused["depth_refused_too_large"] == 1 and refused["depth_received"] == 0
    assert refused["clouds_skipped_unpaired"] == 1


def test_header_is_read_without_the_image():
    z = scene_metres()
    fmt, data = compressed_depth(z, "rvl", q=80.0, depth_max=6.0)
    head = read_header(fmt, data)
    a, b = quantisation(80.0, 6.0)
    assert (head.encoding, head.codec, head.width, head.height) == ("32FC1", "rvl", W, H)
    assert head.quantisation == (float(a), float(b))
    np.testing.assert_array_equal(
        decode_compressed_depth(fmt, data).values, expected_metres(z, 80.0, 6.0)
    )


def test_depth_transport_parameter_is_read_only_with_its_choices():
    pytest.importorskip("rclpy")
    from ovseg_ros.ros.parameters import NODE_SPECS, descriptor

    spec = next(s for s in NODE_SPECS if s.name == "depth_transport")
    default, desc = descriptor(spec)
    assert default == "raw" and desc.read_only
    assert "one of raw, compressedDepth" in desc.additional_constraints
    with pytest.raises(ValueError, match=r"must be one of \['raw', 'compressedDepth'\]"):
        spec.check("compressed")
