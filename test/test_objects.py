"""3D objects (ovseg_ros.points.objects, the points stage's ObjectsJob, the marker and detection
records) against analytic geometry and a pixel-by-pixel reference of the definition.

The analytic scene: a known K (with and without lens distortion), two chairs side by side in
the image at 1 m and 2 m, a table at 3 m cut in two by a person at 1.5 m in front of it, and a
cup too small to count; the background is unlabeled. Every pixel's 3D point is its analytic
viewing ray (test_points' Newton solve, checked with cv2.projectPoints) times its depth.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse
from scipy.sparse.csgraph import connected_components
from test_points import D_PLUMB, H, K, W, _depth_message, _rays
from test_points_stage import Clock, depth_msg, header, info_msg

from ovseg_ros.outputs import (
    MARKER_CUBE,
    MARKER_DELETEALL,
    MARKER_TEXT_VIEW_FACING,
    MIN_MARKER_SIZE,
    ObjectsOutput,
)
from ovseg_ros.pipeline import complete_objects
from ovseg_ros.points import CameraModel, PointsError, decode_depth
from ovseg_ros.points.objects import ObjectsOptions, find_objects
from ovseg_ros.points_stage import ObjectsSettings, PointsSettings, PointsStage
from ovseg_ros.segmentation.vocabulary import build_vocabulary

UNLABELED = 255
CHAIR, TABLE, PERSON, CUP = 1, 2, 3, 4
VOCABULARY = build_vocabulary(["floor", "chair", "table", "person", "cup"], version=1)
# (label, rows, cols, depth in metres), painted in this order
REGIONS = (
    (CHAIR, slice(30, 60), slice(10, 40), 1.0),
    (CHAIR, slice(30, 60), slice(40, 70), 2.0),  # touches the first chair in the image
    (TABLE, slice(70, 86), slice(0, 128), 3.0),
    (PERSON, slice(65, 91), slice(60, 80), 1.5),  # in front of the table: cuts it in two
    (CUP, slice(5, 10), slice(100, 105), 2.5),  # 25 pixels, under objects_min_points
)
# The objects in the documented order (class id, then first pixel in raster order):
# (class, pixel mask rows, cols) of each.
EXPECTED = (
    (CHAIR, slice(30, 60), slice(10, 40)),
    (CHAIR, slice(30, 60), slice(40, 70)),
    (TABLE, slice(70, 86), slice(0, 60)),
    (TABLE, slice(70, 86), slice(80, 128)),
    (PERSON, slice(65, 91), slice(60, 80)),
)


def scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels (uint8, unlabeled background), depth in metres (background 5 m), confidence."""
    labels = np.full((H, W), UNLABELED, np.uint8)
    z = np.full((H, W), 5.0)
    for label, rows, cols, depth in REGIONS:
        labels[rows, cols], z[rows, cols] = label, depth
    confidence = np.linspace(0.2, 0.9, H * W, dtype=np.float32).reshape(H, W)
    return labels, z, confidence


def depth_image(z: np.ndarray, encoding: str, invalid: np.ndarray | None = None):
    invalid = np.zeros((H, W), bool) if invalid is None else invalid
    step, data = _depth_message(z, encoding, invalid)
    return decode_depth(encoding, H, W, step, data, False)


def model(d) -> CameraModel:
    return CameraModel.from_fields(K, d, "plumb_bob", W, H)


def reference_points(d, z: np.ndarray, rows: slice, cols: slice) -> np.ndarray:
    """Analytic ``[N, 3]`` points of a region: viewing ray times depth."""
    rays = _rays(d)[rows, cols].reshape(-1, 2)
    depth = z[rows, cols].reshape(-1)
    return np.column_stack([rays[:, 0] * depth, rays[:, 1] * depth, depth])


@pytest.mark.parametrize("distortion", ["none", "plumb_bob"])
@pytest.mark.parametrize("encoding", ["16UC1", "32FC1"])
def test_objects_of_an_analytic_scene(distortion, encoding):
    d = D_PLUMB if distortion == "plumb_bob" else []
    labels, z, confidence = scene()
    objects = find_objects(
        depth_image(z, encoding), model(d), labels, confidence, len(VOCABULARY), ObjectsOptions()
    )
    # Adjacent chairs at other depths: two; the occluded table: two; the cup: too small.
    assert objects.class_ids.tolist() == [c for c, _, _ in EXPECTED]
    for i, (_, rows, cols) in enumerate(EXPECTED):
        points = reference_points(d, z, rows, cols)
        assert objects.pixels[i] == points.shape[0]
        assert objects.boxes_2d[i].tolist() == [
            cols.start,
            rows.start,
            cols.stop - 1,
            rows.stop - 1,
        ]
        assert objects.scores[i] == pytest.approx(confidence[rows, cols].mean(), rel=1e-6)
        # Centroid = per-axis median; box = 5th..95th percentile per axis (numpy's definition).
        np.testing.assert_allclose(objects.centroids[i], np.median(points, axis=0), atol=1e-4)
        np.testing.assert_allclose(objects.box_min[i], np.percentile(points, 5, axis=0), atol=1e-4)
        np.testing.assert_allclose(objects.box_max[i], np.percentile(points, 95, axis=0), atol=1e-4)
    if not d:  # closed form of a fronto-parallel rectangle: within 1 cm
        fx, cx, fy, cy = K[0], K[2], K[4], K[5]
        for i, (_, rows, cols) in enumerate(EXPECTED):
            depth = z[rows, cols][0, 0]
            u, v = (cols.start + cols.stop - 1) / 2, (rows.start + rows.stop - 1) / 2
            expected = [(u - cx) / fx * depth, (v - cy) / fy * depth, depth]
            np.testing.assert_allclose(objects.centroids[i], expected, atol=0.01)
            # n equally weighted pixel columns (rows): the 5th percentile lies floor(0.05 n)
            # pixels in from the edge, to a pixel
            for axis, (n, f) in enumerate(
                ((cols.stop - cols.start, fx), (rows.stop - rows.start, fy))
            ):
                inner = (n - 1 - 2 * np.floor(0.05 * n)) / f * depth
                assert abs(objects.box_sizes[i][axis] - inner) <= depth / f + 1e-9
        assert objects.box_sizes[:, 2].max() == pytest.approx(0.0, abs=1e-6)  # flat faces


def test_depth_gap_min_points_and_class_filter():
    labels, z, confidence = scene()
    depth, camera = depth_image(z, "32FC1"), model([])

    def classes_of(**options):
        found = find_objects(depth, camera, labels, confidence, 5, ObjectsOptions(**options))
        return found.class_ids.tolist(), found.pixels.tolist()

    # A gap above the chairs' 1 m step joins them; the table halves stay apart (not touching).
    assert classes_of(depth_gap=1.5)[0] == [CHAIR, TABLE, TABLE, PERSON]
    assert classes_of(depth_gap=1.5)[1][0] == 2 * 30 * 30
    assert classes_of(min_points=25)[0] == [CHAIR, CHAIR, TABLE, TABLE, PERSON, CUP]
    assert classes_of(min_points=26)[0] == [CHAIR, CHAIR, TABLE, TABLE, PERSON]
    assert classes_of(classes=frozenset({TABLE}))[0] == [TABLE, TABLE]
    assert classes_of(classes=frozenset())[0] == []  # names all missing: none, never all
    # Depth range: the chair at 1 m is out, the one at 2 m in.
    assert classes_of(depth_min=1.2, depth_max=2.2)[0] == [CHAIR, PERSON]
    # Invalid depth (0 / NaN / inf) belongs to nothing: a column of it cuts the first chair and
    # the table's left part again.
    invalid = np.zeros((H, W), bool)
    invalid[:, 20] = True
    found = find_objects(
        depth_image(z, "32FC1", invalid), camera, labels, confidence, 5, ObjectsOptions()
    )
    assert found.class_ids.tolist() == [CHAIR] * 3 + [TABLE] * 3 + [PERSON]


def test_eight_neighbours_connect_diagonally():
    labels = np.full((H, W), UNLABELED, np.uint8)
    labels[10:20, 10:20] = CHAIR
    labels[20:30, 20:30] = CHAIR  # touches the first square at one corner only
    labels[10:20, 40:50] = CHAIR
    labels[20:30, 51:61] = CHAIR  # one column apart: not a neighbour
    z = np.full((H, W), 2.0)
    found = find_objects(
        depth_image(z, "16UC1"), model([]), labels, np.ones((H, W), np.float32), 5,
        ObjectsOptions(min_points=10),
    )  # fmt: skip
    assert found.pixels.tolist() == [200, 100, 100]


def reference_objects(labels, z, confidence, options, num_classes):
    """The definition pixel by pixel: an explicit 8-neighbour graph, numpy statistics."""
    h, w = labels.shape
    valid = (z >= options.depth_min) & (z <= options.depth_max) & (labels < num_classes)
    index = np.arange(h * w).reshape(h, w)
    sources, targets = [], []
    for a, b in (
        ((slice(None), slice(None, -1)), (slice(None), slice(1, None))),
        ((slice(None, -1), slice(None)), (slice(1, None), slice(None))),
        ((slice(None, -1), slice(None, -1)), (slice(1, None), slice(1, None))),
        ((slice(None, -1), slice(1, None)), (slice(1, None), slice(None, -1))),
    ):
        edge = valid[a] & valid[b] & (labels[a] == labels[b])
        edge &= np.abs(z[a].astype(np.float32) - z[b].astype(np.float32)) <= np.float32(
            options.depth_gap
        )
        sources.append(index[a][edge])
        targets.append(index[b][edge])
    graph = scipy.sparse.coo_matrix(
        (np.ones(sum(map(len, sources))), (np.concatenate(sources), np.concatenate(targets))),
        shape=(h * w, h * w),
    )
    _, component = connected_components(graph, directed=False)
    component = component.reshape(h, w)
    rows = []
    for c in np.unique(component[valid]):
        mask = (component == c) & valid
        if mask.sum() >= options.min_points:
            v, u = np.nonzero(mask)
            rows.append((labels[mask][0], v[0] * w + u[0], mask.sum(), confidence[mask].mean()))
    return sorted(rows, key=lambda r: (r[0], r[1]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_components_equal_the_pixel_graph_definition(seed):
    """Random blobs of 4 classes over depth steps and noise, some pixels invalid."""
    rng = np.random.default_rng(seed)
    h, w = 60, 80
    coarse = rng.integers(0, 6, (6, 8))  # 4 classes + unlabeled (values 4, 5 -> 255)
    labels = np.kron(coarse, np.ones((10, 10), np.int64))
    labels = np.where(rng.random((h, w)) < 0.05, rng.integers(0, 6, (h, w)), labels)
    labels = np.where(labels >= 4, UNLABELED, labels).astype(np.uint8)
    z = np.kron(rng.uniform(1.0, 2.0, (3, 4)), np.ones((20, 20))) + rng.normal(0, 0.05, (h, w))
    z[rng.random((h, w)) < 0.03] = 0.0
    confidence = rng.random((h, w)).astype(np.float32)
    options = ObjectsOptions(min_points=5, depth_gap=0.12)
    camera = CameraModel.from_fields([90.0, 0, 39.5, 0, 90.0, 29.5, 0, 0, 1], [], "", w, h)
    depth = decode_depth("32FC1", h, w, 4 * w, z.astype("<f4").tobytes(), False)
    found = find_objects(depth, camera, labels, confidence, 4, options)
    expected = reference_objects(labels, z, confidence, options, 4)
    assert len(found) == len(expected) > 10
    assert found.class_ids.tolist() == [int(r[0]) for r in expected]
    assert found.pixels.tolist() == [int(r[2]) for r in expected]
    np.testing.assert_allclose(found.scores, [r[3] for r in expected], rtol=1e-5)


def test_large_objects_statistics_from_a_sample_stay_within_a_centimetre():
    """Beyond STATISTICS_POINTS points per frame the quantiles come from an even sample."""
    h, w = 240, 320
    fx = 250.0
    camera = CameraModel.from_fields([fx, 0, 159.5, 0, fx, 119.5, 0, 0, 1], [], "", w, h)
    v, u = np.mgrid[0:h, 0:w]
    z = 2.0 + 0.004 * u + 0.002 * v  # a tilted plane, two classes on it
    labels = (u >= 200).astype(np.uint8)
    depth = decode_depth("32FC1", h, w, 4 * w, z.astype("<f4").tobytes(), False)
    found = find_objects(
        depth, camera, labels, np.ones((h, w), np.float32), 2, ObjectsOptions(depth_gap=0.05)
    )
    assert found.pixels.tolist() == [200 * 240, 120 * 240]
    for i, mask in enumerate((labels == 0, labels == 1)):
        zz = z[mask].astype(np.float32).astype(np.float64)
        points = np.column_stack([(u[mask] - 159.5) / fx * zz, (v[mask] - 119.5) / fx * zz, zz])
        np.testing.assert_allclose(found.centroids[i], np.median(points, 0), atol=0.01)
        np.testing.assert_allclose(found.box_min[i], np.percentile(points, 5, 0), atol=0.01)
        np.testing.assert_allclose(found.box_max[i], np.percentile(points, 95, 0), atol=0.01)


def test_labels_of_another_size_give_boxes_in_label_pixels():
    labels, z, confidence = scene()
    half = labels[::2, ::2]  # a label image at half the depth image's size
    found = find_objects(
        depth_image(z, "16UC1"), model([]), half, confidence[::2, ::2], 5, ObjectsOptions()
    )
    assert found.class_ids.tolist() == [c for c, _, _ in EXPECTED]
    for box, (_, rows, cols) in zip(found.boxes_2d.tolist(), EXPECTED, strict=True):
        # the region in the half-size image: rows / cols 2i of the full one
        first = [-(-cols.start // 2), -(-rows.start // 2)]
        assert box == [*first, (cols.stop - 1) // 2, (rows.stop - 1) // 2]


def test_bad_options_and_inputs_are_refused():
    for options, message in (
        ({"min_points": 0}, "objects_min_points"),
        ({"min_points": 2.5}, "objects_min_points"),
        ({"depth_gap": 0.0}, "objects_depth_gap"),
        ({"depth_gap": float("nan")}, "objects_depth_gap"),
        ({"depth_min": 2.0, "depth_max": 1.0}, "depth_min"),
    ):
        with pytest.raises(PointsError, match=message):
            ObjectsOptions(**options)
    labels, z, confidence = scene()
    with pytest.raises(PointsError, match="labels has shape"):
        find_objects(depth_image(z, "16UC1"), model([]), labels[0], confidence, 5, ObjectsOptions())
    with pytest.raises(PointsError, match="camera_info describes"):
        camera = CameraModel.from_fields(K, [], "", W * 2, H * 2)
        find_objects(depth_image(z, "16UC1"), camera, labels, confidence, 5, ObjectsOptions())


def test_markers_and_detections_of_the_objects():
    labels, z, confidence = scene()
    found = find_objects(
        depth_image(z, "16UC1"), model([]), labels, confidence, 5, ObjectsOptions()
    )
    output = ObjectsOutput.of(found, VOCABULARY, "camera_depth_optical_frame")
    markers = output.markers()
    assert (markers[0].action, len(markers)) == (MARKER_DELETEALL, 1 + 2 * len(found))
    cubes, texts = markers[1::2], markers[2::2]
    assert [m.type for m in cubes] == [MARKER_CUBE] * 5
    assert [m.type for m in texts] == [MARKER_TEXT_VIEW_FACING] * 5
    assert [(m.ns, m.id) for m in cubes] == [
        ("chair", 0), ("chair", 1), ("table", 2), ("table", 3), ("person", 4)
    ]  # fmt: skip
    assert [(m.ns, m.id) for m in texts] == [(f"{m.ns}/text", m.id) for m in cubes]
    for i, (cube, text) in enumerate(zip(cubes, texts, strict=True)):
        np.testing.assert_allclose(cube.position, found.box_centers[i])
        np.testing.assert_allclose(cube.scale, np.maximum(found.box_sizes[i], MIN_MARKER_SIZE))
        color = VOCABULARY.entries[found.class_ids[i]].color
        assert cube.color == pytest.approx((*[c / 255 for c in color], 0.5))
        assert text.text == f"{cube.ns} {found.scores[i]:.2f}"
        assert text.position[1] < cube.position[1] - cube.scale[1] / 2  # above: -y is up
        record = json.loads(cube.text)  # the 2D box and pixel count, for planners
        assert record["box_2d"] == found.boxes_2d[i].tolist()
        assert record["pixels"] == found.pixels[i]
    detections = output.detections()
    assert [d.id for d in detections] == ["chair/0", "chair/1", "table/2", "table/3", "person/4"]
    assert detections[4].class_id == "person"
    np.testing.assert_allclose(detections[0].centroid, found.centroids[0])
    np.testing.assert_allclose(detections[0].size, found.box_sizes[0])
    assert ObjectsOutput.empty("x").markers()[0].action == MARKER_DELETEALL


def stage_with(objects: ObjectsSettings, **kwargs) -> PointsStage:
    return PointsStage(0.02, PointsSettings(objects=objects), clock=Clock(), **kwargs)


def test_stage_objects_bad_inputs_give_empty_objects_and_counters():
    """No depth yet, no camera_info, depth of another size: labels are unaffected (the job is
    empty), counters say why; an all-invalid depth gives no objects."""
    settings = ObjectsSettings(enabled=True, min_points=10)
    stage = stage_with(settings)
    labels, _, confidence = scene()
    result = SimpleNamespace(label_ids=labels, confidence=confidence, vocabulary=VOCABULARY)
    rgb = np.zeros((H, W, 3), np.uint8)

    def objects_at(sec):
        frame = SimpleNamespace(pending_objects=None, objects=None)
        out = stage.outputs(header(sec, frame_id="color"), rgb, result, cloud=False, objects=True)
        assert out.cloud is None
        frame.pending_objects = out.objects
        complete_objects(frame)
        return frame.objects, out.warnings

    objects, warnings = objects_at(1)
    assert len(objects.objects) == 0 and objects.frame_id == "color"
    assert "no depth image received yet" in warnings[0]
    stage.push_depth(depth_msg(2))
    objects, _ = objects_at(2)
    assert len(objects.objects) == 0
    stage.push_camera_info(info_msg(width=W * 2, height=H * 2))
    stage.push_depth(depth_msg(3))
    assert len(objects_at(3)[0].objects) == 0
    counters = stage.counters()
    assert counters["objects_skipped_unpaired"] == 1
    assert counters["objects_skipped_no_camera_info"] == 1
    assert counters["objects_skipped_size_mismatch"] == 1
    assert counters["clouds_skipped_unpaired"] == 0  # nobody asked for a cloud
    stage.push_camera_info(info_msg())
    stage.push_depth(depth_msg(4))
    objects, _ = objects_at(4)
    assert objects.frame_id == "depth" and len(objects.objects) > 0
    # All depth invalid: no objects, and no error.
    invalid = depth_msg(5)
    invalid.data = bytes(len(invalid.data))
    stage.push_depth(invalid)
    assert len(objects_at(5)[0].objects) == 0
    counters = stage.counters()
    assert counters["objects_frames"] == 2 and counters["objects_found"] == len(objects.objects)
    assert counters["objects_time_us"] > 0


def test_objects_settings_from_parameter_values():
    values = {
        "objects": True,
        "objects_classes": ["chair", " "],
        "objects_min_points": 20.0,
        "objects_depth_gap": 0.3,
    }
    settings = PointsSettings.from_values(values).objects
    assert settings == ObjectsSettings(True, ("chair",), 20, 0.3)
    for bad in ({"objects_min_points": 0}, {"objects_depth_gap": -1.0}, {"objects_classes": "a"}):
        with pytest.raises(PointsError):
            PointsSettings.from_values(bad)
