"""Offline benchmark evaluation: data set readers, segmentation metrics and the evaluation
loop (:mod:`ovseg_ros.evaluation.loop`).

None of them imports the segmentation engine: the loop is handed a segmenter.
``ovseg_ros.tools.evaluate`` (the ``ovseg-evaluate`` CLI) builds one and runs the loop, here
or on Ray.
"""

from ovseg_ros.evaluation.datasets import (
    DATASET_KEYS,
    IGNORE_INDEX,
    SPECS,
    DatasetError,
    DatasetSpec,
    Sample,
    SegmentationDataset,
    build_dataset,
    display_names,
    load_classnames,
    read_classnames_file,
    reduce_zero_label,
)
from ovseg_ros.evaluation.metrics import (
    MetricResult,
    SegmentationMetric,
    boundary_dilation,
    boundary_iou_stats,
    confusion_matrix,
    erode,
    iou_from_confusion,
    mask_boundary,
)

__all__ = [
    "DATASET_KEYS",
    "IGNORE_INDEX",
    "SPECS",
    "DatasetError",
    "DatasetSpec",
    "MetricResult",
    "Sample",
    "SegmentationDataset",
    "SegmentationMetric",
    "boundary_dilation",
    "boundary_iou_stats",
    "build_dataset",
    "confusion_matrix",
    "display_names",
    "erode",
    "iou_from_confusion",
    "load_classnames",
    "mask_boundary",
    "read_classnames_file",
    "reduce_zero_label",
]
