"""``download_weights``: fetch the CLIP / DINO weights ovseg_ros needs into the Hugging Face
cache once, so a robot can run offline afterwards.

    ros2 run ovseg_ros download_weights                       # every method's weights
    ros2 run ovseg_ros download_weights --params config/segment.yaml   # what the node needs

Files already in the cache are checked (a truncated or unsafe file is reported) and not
downloaded again. Without network (or with ``HF_HUB_OFFLINE=1``) it says so at once in one
line instead of retrying. Exit status: 0 all present, 1 some missing or unusable, 2 usage.
"""

from __future__ import annotations

import argparse
import sys

from ovseg_ros.segmentation.methods import METHODS
from ovseg_ros.segmentation.weights import (
    OfflineError,
    WeightsNotFoundError,
    WeightSource,
    check_online,
    resolve,
    sources_for,
    verify_file,
)
from ovseg_ros.tools.cli import (
    EXIT_FAILED,
    EXIT_USAGE,
    UsageError,
    add_params_arguments,
    read_params,
)

PROG = "download_weights"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Download the CLIP / DINO weights ovseg_ros needs into the Hugging Face "
        "cache, so a robot can run offline afterwards.",
    )
    add_params_arguments(parser)
    parser.add_argument(
        "--method",
        nargs="+",
        choices=METHODS,
        default=None,
        help="methods (default: the params file's method, else all)",
    )
    parser.add_argument("--clip-model", default=None, help="default ViT-B-16")
    parser.add_argument("--clip-pretrained", default=None, help="override the method default")
    parser.add_argument("--dino-model", default=None, help="default vit_base_patch16_224.dino")
    parser.add_argument("--cache-dir", default=None, help="hub cache (default: HF_HUB_CACHE)")
    return parser


def needed_sources(args: argparse.Namespace) -> tuple[list[WeightSource], str]:
    """The distinct weights files the chosen methods need, and the cache directory."""
    overrides = {
        "clip_model": args.clip_model,
        "clip_pretrained": args.clip_pretrained,
        "dino_model": args.dino_model,
        "weights_cache_dir": args.cache_dir,
        "device": "cpu",
    }
    base = read_params(args.params, args.params_node, overrides).config
    methods = args.method or ([base.method] if args.params else list(METHODS))
    sources: dict[tuple[str, str], WeightSource] = {}
    try:
        for method in methods:
            for source, _, _ in sources_for(base.replace(method=method)):
                sources.setdefault((source.repo_id, source.filenames[0]), source)
    except ValueError as exc:  # e.g. a pretrained tag open_clip does not know
        raise UsageError(str(exc)) from exc
    return list(sources.values()), base.weights_cache_dir


def fetch(sources: list[WeightSource], cache_dir: str) -> int:
    """Check the cached files, download the missing ones; returns how many failed."""
    missing, failed = [], 0
    for source in sources:
        try:
            path = resolve(source, "", cache_dir, False, "")
        except WeightsNotFoundError:
            missing.append(source)
            continue
        failed += not _verified(source, path)
    if missing:
        try:
            check_online(f"download {len(missing)} weights file(s)")
        except OfflineError as exc:
            names = ", ".join(f"{s.description} ({s.repo_id})" for s in missing)
            print(f"{PROG}: error: {exc}; missing: {names}", file=sys.stderr)
            return failed + len(missing)
    for source in missing:
        try:
            path = resolve(source, "", cache_dir, True, "")
        except WeightsNotFoundError as exc:
            failed += 1
            print(f"FAILED {source.description}: {exc}", file=sys.stderr)
        else:
            failed += not _verified(source, path)
    return failed


def _verified(source: WeightSource, path: str) -> bool:
    try:
        verify_file(path)
    except WeightsNotFoundError as exc:
        print(f"FAILED {source.description}: {exc}", file=sys.stderr)
        return False
    print(f"ok     {source.description}: {path}")
    return True


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``download_weights``; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        sources, cache_dir = needed_sources(args)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_FAILED if fetch(sources, cache_dir) else 0


if __name__ == "__main__":
    sys.exit(main())
