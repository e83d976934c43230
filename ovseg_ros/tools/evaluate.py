"""``ovseg-evaluate``: run the segmentation engine over a benchmark and report its metrics.

Example::

    ovseg-evaluate --dataset voc21 --root /data/VOCdevkit/VOC2012 --method pearl --device cuda

The segmenter is built with the dataset's official evaluation preset (resize, windows,
probability threshold: ``ovseg_ros.segmentation.dataset_preset``) on top of the ``--params``
file, and the dataset's official class names as vocabulary (the lists of the method's
benchmark protocol: PEARL's for ``pearl``, LPOSS's for the others). It prints a per-class
Markdown table and a summary (mIoU, aAcc, mAcc, Boundary IoU), a comparison with the
numbers the papers report, and writes ``metrics.json`` and ``metrics.md`` to ``--output-dir``.

Also ``python -m ovseg_ros.tools.evaluate``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ovseg_ros.evaluation.datasets import (
    DATASET_KEYS,
    DatasetError,
    SegmentationDataset,
    build_dataset,
    read_classnames_file,
)
from ovseg_ros.evaluation.loop import evaluate
from ovseg_ros.evaluation.metrics import MetricResult
from ovseg_ros.segmentation.methods import method_spec
from ovseg_ros.tools.cli import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    Progress,
    UsageError,
    add_engine_arguments,
    add_params_arguments,
    add_ray_arguments,
    fmt,
    markdown_table,
    read_params,
)

PROG = "ovseg-evaluate"
PAPER_RESULTS = Path(__file__).resolve().parents[1] / "data" / "paper_results.json"
METRIC_LABELS = {"mIoU": "mIoU", "mBIoU": "Boundary IoU", "aAcc": "aAcc", "mAcc": "mAcc"}


# -- paper numbers ---------------------------------------------------------------------------


def load_paper_results(path: str | Path | None = None) -> dict[str, Any]:
    """The packaged ``data/paper_results.json`` (or ``path``)."""
    path = PAPER_RESULTS if path is None else Path(path)
    return json.loads(path.read_text(encoding="utf-8"))


def paper_reference(
    method: str, dataset: str, results: dict[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """``{metric: {"value", "source"}}`` the papers report for ``method`` on ``dataset``."""
    results = load_paper_results() if results is None else results
    out: dict[str, dict[str, Any]] = {}
    for metric, entry in results.get("methods", {}).get(method, {}).items():
        value = entry.get("datasets", {}).get(dataset)
        if value is None:
            continue
        table = results.get("tables", {}).get(entry.get("table"), {})
        source = table.get("source", entry.get("table", ""))
        if entry.get("note"):
            source = f"{source} ({entry['note']})"
        out[metric] = {"value": float(value), "source": source}
    return out


# -- reports ---------------------------------------------------------------------------------


def per_class_table(result: MetricResult, class_names: Sequence[str]) -> str:
    """Markdown table: one row per class with IoU, Acc, Boundary IoU and pixel counts."""
    boundary = result.boundary_iou is not None
    head = ["id", "class", "IoU", "Acc"] + (["Boundary IoU"] if boundary else [])
    head += ["gt px", "pred px"]
    rows = []
    for row in result.per_class(list(class_names)):
        cells = [str(row["id"]), row["name"], fmt(row["IoU"]), fmt(row["Acc"])]
        if boundary:
            cells.append(fmt(row["BIoU"]))
        rows.append(cells + [str(row["gt_pixels"]), str(row["pred_pixels"])])
    return markdown_table(head, rows)


def summary_table(summary: dict[str, float]) -> str:
    keys = [k for k in ("mIoU", "aAcc", "mAcc", "mBIoU") if k in summary]
    return markdown_table([METRIC_LABELS[k] for k in keys], [[fmt(summary[k]) for k in keys]])


def paper_table(
    summary: dict[str, float], reference: dict[str, dict[str, Any]], method: str, dataset: str
) -> str:
    """Side-by-side Markdown table of this run vs. the papers' numbers."""
    if not reference:
        return f"No paper number for method `{method}` on `{dataset}`."
    rows = []
    for metric, ref in reference.items():
        ours = summary.get(metric)
        delta = None if ours is None or not math.isfinite(ours) else ours - ref["value"]
        rows.append(
            [
                METRIC_LABELS.get(metric, metric),
                fmt(ours),
                fmt(ref["value"], 1),
                "-" if delta is None else f"{delta:+.2f}",
                ref["source"],
            ]
        )
    return markdown_table(["metric", "this run", "paper", "delta", "source"], rows)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value


def _markdown_report(report: dict[str, Any], result: MetricResult, names: list[str]) -> str:
    run = report["run"]
    parts = [
        f"# {run['method']} on {report['dataset']['title']}",
        "",
        f"- root: `{report['dataset']['root']}`",
        f"- images: {result.num_images} of {report['dataset']['size']}",
        f"- method: `{run['method']}`, preset: `{run['preset']}`, device: `{run['device']}`",
        f"- throughput: {fmt(report['timing']['frames_per_s'])} img/s "
        f"(segment only: {fmt(report['timing']['segment_frames_per_s'])} img/s)",
    ]
    parts += [f"- note: {note}" for note in report["notes"]]
    parts += ["", "## Summary", "", summary_table(report["summary"])]
    if report.get("paper") is not None:
        parts += ["", "## Paper comparison", "", report["paper_table"]]
    parts += ["", "## Per class", "", per_class_table(result, names), ""]
    return "\n".join(parts)


# -- CLI -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Evaluate open-vocabulary segmentation (PEARL, LPOSS+) on a benchmark: "
        "mIoU, aAcc, mAcc and Boundary IoU, compared with the papers' numbers.",
    )
    parser.add_argument("--dataset", required=True, choices=DATASET_KEYS)
    parser.add_argument("--root", required=True, help="dataset root, e.g. /data/VOCdevkit/VOC2012")
    add_engine_arguments(parser)
    add_params_arguments(parser)
    add_ray_arguments(parser, "the images")
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N images")
    parser.add_argument(
        "--output-dir", default=None, help="where metrics.json/.md go (default: ovseg_eval/...)"
    )
    parser.add_argument("--classes", help="class-name file (one entry per line, ';' synonyms)")
    parser.add_argument(
        "--no-dataset-preset",
        action="store_true",
        help="do not apply the dataset's official evaluation settings",
    )
    parser.add_argument("--no-boundary", action="store_true", help="skip Boundary IoU")
    parser.add_argument(
        "--no-paper-table", action="store_true", help="no comparison with the papers' numbers"
    )
    return parser


def _open_dataset(args: argparse.Namespace, method: str) -> SegmentationDataset:
    classes = None
    if args.classes:
        path = Path(args.classes).expanduser()
        if not path.is_file():
            raise UsageError(f"class-name file {path} not found")
        classes = read_classnames_file(path)
    vocabulary = method_spec(method).benchmark  # whose official class-name lists
    try:
        return build_dataset(args.dataset, args.root, classes=classes, vocabulary=vocabulary)
    except (DatasetError, ValueError) as exc:
        raise UsageError(str(exc)) from exc


def build_config(args: argparse.Namespace, params: dict[str, Any], method: str) -> Any:
    """SegmenterConfig: params file, then the dataset preset, then the CLI flags.

    ``params``: the engine settings the params file sets (not the defaults)."""
    from ovseg_ros.segmentation import SegmenterConfig, dataset_preset

    try:
        cfg = SegmenterConfig.from_dict({**params, "method": method})
        if not args.no_dataset_preset:
            preset = dataset_preset(args.dataset, method)
            overridden = {k: params[k] for k in preset if k in params and params[k] != preset[k]}
            if overridden:
                replaced = {k: preset[k] for k in overridden}
                print(
                    f"{PROG}: dataset preset {args.dataset}/{method} replaces params file "
                    f"values {overridden} by {replaced} (--no-dataset-preset keeps them)",
                    file=sys.stderr,
                )
            cfg = cfg.replace(**preset)
        flags = {"preset": args.preset, "device": args.device}
        return cfg.replace(**{k: v for k, v in flags.items() if v is not None})
    except ValueError as exc:
        raise UsageError(f"invalid segmenter settings: {exc}") from exc


def _default_output_dir(dataset: str, method: str) -> Path:
    return Path("ovseg_eval") / f"{dataset}_{method}"


def _notes(cfg: Any, result: MetricResult, size: int, interrupted: bool) -> list[str]:
    notes = []
    if cfg.preset == "tiny":
        notes.append("preset 'tiny' uses tiny random models: numbers are not comparable to papers")
    if result.num_images < size:
        notes.append(f"evaluated {result.num_images} of {size} images")
    if interrupted:
        notes.append("interrupted: metrics cover the images processed so far")
    if result.invalid_gt_pixels:
        notes.append(f"{result.invalid_gt_pixels} gt pixels had labels outside the classes")
    return notes


def build_report(
    args: argparse.Namespace,
    cfg: Any,
    dataset: SegmentationDataset,
    result: MetricResult,
    timing: dict[str, Any],
    interrupted: bool,
) -> dict[str, Any]:
    """Everything ``metrics.json`` holds (NaN is written as null)."""
    summary = result.summary()
    reference = None
    table_md = ""
    if not args.no_paper_table:
        reference = paper_reference(cfg.method, dataset.key)
        table_md = paper_table(summary, reference, cfg.method, dataset.key)
    rows = result.per_class(dataset.class_names)
    return {
        "tool": PROG,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "dataset": {
            "key": dataset.key,
            "title": dataset.spec.title,
            "root": str(dataset.root),
            "size": len(dataset),
            "num_classes": dataset.num_classes,
        },
        "run": {
            "method": cfg.method,
            "preset": cfg.preset,
            "device": cfg.device,
            "limit": args.limit,
            "params_file": args.params,
            "dataset_preset": not args.no_dataset_preset,
            "boundary": not args.no_boundary,
            "interrupted": interrupted,
        },
        "num_images": result.num_images,
        "summary": summary,
        "per_class": [
            {**row, "entry": entry} for row, entry in zip(rows, dataset.classes, strict=True)
        ],
        "paper": reference,
        "paper_table": table_md,
        "timing": timing,
        "notes": _notes(cfg, result, len(dataset), interrupted),
        "config": cfg.to_dict(),
    }


def _params_file_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The engine settings the ``--params`` file sets."""
    return read_params(args.params, args.params_node).settings if args.params else {}


def run(args: argparse.Namespace) -> int:
    """Evaluate as ``args`` ask; raises :class:`UsageError` for fixable input errors."""
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be >= 1")
    params = _params_file_settings(args)
    method = args.method or params.get("method") or "pearl"
    dataset = _open_dataset(args, method)  # fails fast on a bad root, before loading models
    unresolved = build_config(args, params, method)  # Ray actors resolve their own device
    cfg = unresolved.resolved()

    from ovseg_ros.segmentation import build_segmenter

    print(
        f"{PROG}: {dataset!r}, method {cfg.method}, preset {cfg.preset}, device {cfg.device}",
        file=sys.stderr,
    )
    count = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    if args.ray is not None:  # images sharded over Ray actors, confusion matrices summed
        from ovseg_ros.tools.fleet import FleetError, evaluate_on_ray

        with Progress(count, prog=f"{PROG} {dataset.key}", unit="image") as progress:
            try:
                result, timing, interrupted = evaluate_on_ray(
                    unresolved, dataset, address=args.ray, actors=args.actors,
                    limit=args.limit, boundary=not args.no_boundary,
                    on_progress=progress.update,
                )  # fmt: skip
            except FleetError as exc:
                raise UsageError(str(exc)) from exc
    else:
        segmenter = build_segmenter(cfg)
        try:
            segmenter.set_vocabulary(list(dataset.classes), strict=False)
        except ValueError as exc:
            raise UsageError(
                f"the segmenter refused the {dataset.key} vocabulary: {exc}; "
                "pass an edited list with --classes FILE"
            ) from exc
        with Progress(count, prog=f"{PROG} {dataset.key}", unit="image") as progress:
            result, timing, interrupted = evaluate(
                segmenter, dataset, args.limit, not args.no_boundary, progress.update
            )

    report = build_report(args, cfg, dataset, result, timing, interrupted)
    markdown = _markdown_report(report, result, dataset.class_names)
    out_dir = Path(args.output_dir or _default_output_dir(dataset.key, cfg.method))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(
        json.dumps(_json_safe(report), indent=2) + "\n", encoding="utf-8"
    )
    (out_dir / "metrics.md").write_text(markdown, encoding="utf-8")
    print(markdown)
    print(f"{PROG}: wrote {out_dir / 'metrics.json'} and {out_dir / 'metrics.md'}", file=sys.stderr)
    return EXIT_INTERRUPTED if interrupted else 0


def main(argv: Iterable[str] | None = None) -> int:
    """Entry point of ``ovseg-evaluate``; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(None if argv is None else list(argv))
    try:
        return run(args)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ImportError as exc:
        print(f"{PROG}: error: the segmentation engine is not available: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (FileNotFoundError, RuntimeError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
