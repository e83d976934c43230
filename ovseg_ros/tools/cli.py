"""What every command-line tool shares: usage errors and exit codes, progress (named after the
program that shows it), Markdown tables, argument types, and reading a node params file
(through :mod:`ovseg_ros.params`)."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from ovseg_ros.params import DEFAULT_NODE, Params, load_params
from ovseg_ros.segmentation.config import field_spec

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """Bad input the user can fix (a flag, a path, a params file): reported, exit status 2."""


# -- progress ----------------------------------------------------------------------------------


class Progress:
    """A tqdm bar (rate, ETA) when tqdm is installed, else a throttled line on ``stream``;
    every line starts with ``prog``, the name of the program that shows it.

    ``log`` prints a line without breaking the bar. ``enabled=False`` (``--no-progress``):
    no bar, ``log`` still prints its lines. Steps may be negative (work taken back before a
    retry). Also a context manager that closes the bar.
    """

    def __init__(
        self,
        total: int,
        *,
        prog: str,
        unit: str = "frame",
        stream: TextIO | None = None,
        every_s: float = 1.0,
        enabled: bool = True,
    ) -> None:
        self.total, self.prog, self.unit, self.every_s = total, prog, unit, every_s
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.done = 0
        self.start = time.perf_counter()
        self._last = -math.inf
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                pass
            else:
                self.bar = tqdm(
                    total=total, desc=prog, unit=unit, file=self.stream, dynamic_ncols=True
                )

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def update(self, n: int = 1, **postfix: Any) -> None:
        """``n`` more items done; ``postfix`` (e.g. ``skipped=3``) is shown next to the bar."""
        self.advance_to(self.done + n, **postfix)

    def advance_to(self, done: int, **postfix: Any) -> None:
        """``done`` items done in all."""
        step, self.done = done - self.done, done
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(step)
            if any(postfix.values()):
                self.bar.set_postfix(postfix, refresh=False)
            return
        now = time.perf_counter()
        if now - self._last >= self.every_s or self.done >= self.total:
            self._last = now
            self.stream.write(f"\r{self.line(now)}   ")
            self.stream.flush()

    def line(self, now: float | None = None) -> str:
        """``prog: done/total units, rate units/s, ETA h:mm:ss``."""
        now = time.perf_counter() if now is None else now
        rate = self.done / max(now - self.start, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else math.inf
        eta_text = str(_dt.timedelta(seconds=int(eta))) if math.isfinite(eta) else "?"
        return (
            f"{self.prog}: {self.done}/{self.total} {self.unit}s, "
            f"{rate:.2f} {self.unit}s/s, ETA {eta_text}"
        )

    def log(self, line: str) -> None:
        """``prog: line`` on its own line."""
        if self.bar is not None:
            self.bar.write(f"{self.prog}: {line}", file=self.stream)
        elif self.enabled:  # after the throttled progress line
            self.stream.write(f"\n{self.prog}: {line}\n")
            self.stream.flush()
        else:
            print(f"{self.prog}: {line}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            self.stream.write("\n")
            self.stream.flush()


# -- tables ------------------------------------------------------------------------------------


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table; cells are ``str()``-ed and ``|`` in them is escaped."""

    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value: float | None, digits: int = 2) -> str:
    """A number for a table: ``-`` for missing or non-finite values."""
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.{digits}f}"


def write_json(path: str, document: Any, log: TextIO) -> bool:
    """``document`` as indented JSON to ``path`` (``-``: stdout); False (reported on ``log``)
    when the file cannot be written."""
    text = json.dumps(document, indent=2)
    if path == "-":
        print(text, flush=True)
        return True
    try:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
    except OSError as exc:
        print(f"error: cannot write {path}: {exc}", file=log)
        return False
    return True


# -- argument types ------------------------------------------------------------------------------


def size_arg(text: str) -> tuple[int, int]:
    """argparse type: ``WIDTHxHEIGHT`` (e.g. ``640x480``) -> ``(width, height)``, both > 0."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, got {text!r}") from None
    if width <= 0 or height <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return width, height


def add_sizes_argument(parser: Any, default: str) -> None:
    """``--sizes WxH [WxH ...]`` (None when not given); ``default`` says what is used then."""
    parser.add_argument(
        "--sizes",
        nargs="+",
        type=size_arg,
        default=None,
        metavar="WxH",
        help=f"frame sizes (default: {default})",
    )


def positive_int(text: str) -> int:
    """argparse type: an integer > 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


# -- params --------------------------------------------------------------------------------------


def add_params_arguments(parser: argparse.ArgumentParser) -> None:
    """``--params FILE`` (a node params file, e.g. config/segment.yaml), ``--params-node NAME``."""
    parser.add_argument(
        "--params",
        default="",
        metavar="FILE",
        help="ROS 2 params file of the node (e.g. config/segment.yaml): plain, namespaced, "
        "wildcard (/**) or several nodes",
    )
    parser.add_argument(
        "--params-node",
        default=DEFAULT_NODE,
        metavar="NAME",
        help=f"which node's parameters to read from --params (default: {DEFAULT_NODE}; "
        "/ns/name when the file has several)",
    )


def add_weights_arguments(parser: Any) -> None:
    """``--weights-cache-dir``, ``--clip-weights``, ``--dino-weights`` (full preset)."""
    parser.add_argument(
        "--weights-cache-dir",
        default="",
        metavar="DIR",
        help="Hugging Face hub cache holding the weights (full preset; default: HF_HUB_CACHE)",
    )
    parser.add_argument("--clip-weights", default="", metavar="FILE", help="local CLIP weights")
    parser.add_argument("--dino-weights", default="", metavar="FILE", help="local DINO weights")


def add_ray_arguments(parser: Any, what: str) -> None:
    """``--ray [ADDRESS]`` and ``--actors N`` (a parser or an argument group); ``what``: the
    work the actors share, for the help."""
    parser.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help=f"share {what} among Ray actors: no value starts a local Ray, 'auto' joins the "
        "running cluster, or give the cluster address (pip install 'ovseg_ros[fleet]')",
    )
    parser.add_argument(
        "--actors", type=int, help="Ray actors (default: one per GPU; CPUs / 2 without GPUs)"
    )


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """``--method``, ``--preset``, ``--device``: help and choices from the config's field
    metadata; each defaults to the ``--params`` file's value, else the field's default."""
    for name in ("method", "preset", "device"):
        spec = field_spec(name)
        parser.add_argument(
            f"--{name}",
            choices=spec.choices,
            default=None,
            help=f"{spec.doc} Default: the params file's, else {spec.default}.",
        )


def read_params(
    path: str | None, node: str = DEFAULT_NODE, overrides: Mapping[str, Any] | None = None
) -> Params:
    """:func:`ovseg_ros.params.load_params`, with its errors as :class:`UsageError`."""
    try:
        return load_params(path or None, node=node, overrides=overrides)
    except (OSError, ValueError) as exc:
        raise UsageError(f"params: {exc}") from exc
