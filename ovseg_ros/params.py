"""The one params loader: a ROS 2 params file (or a mapping) -> ``SegmenterConfig`` + the rest.

Used by the offline tools (replay, evaluate, bench, download_weights, demo); no ROS needed.
Accepted shapes, each resolved for one node (default ``ovseg``) exactly as ROS 2 does:

    method: pearl                      # a plain mapping of parameters

    /**:                               # wildcard: every node
      ros__parameters: {method: pearl}

    robot:                             # namespaced: the node /robot/ovseg
      ovseg:
        ros__parameters: {method: lposs_plus}

    /**: {ros__parameters: {...}}      # several sections: every section whose name matches
    /robot/ovseg: {ros__parameters: {...}}   # the node applies, in file order (later wins)

A bare node name (``ovseg``) stands for the node of that name in whichever namespace the file
gives it (an error if the file names it in several namespaces: then pass the fully qualified
name, ``/robot1/ovseg``). Nested groups become dotted names (``qos_overrides./image...``), as
ROS names them. Parameters that are not :class:`SegmenterConfig` fields (classes, topics,
QoS, ...) are returned in :attr:`Params.node`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ovseg_ros.segmentation.config import SegmenterConfig

DEFAULT_NODE = "ovseg"
_SECTION_KEY = "ros__parameters"


@dataclass(frozen=True)
class Params:
    """What a params file says for one node.

    ``config``: the engine settings (file, then overrides, over the defaults); ``settings``:
    only the engine settings the file and overrides set, as given; ``node``: every other
    parameter (classes, topics, QoS, ...); ``source``: the file ("" for a mapping).
    """

    config: SegmenterConfig
    node: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def classes(self) -> list[str] | None:
        """The ``classes`` parameter, if the file sets one."""
        value = self.node.get("classes")
        return None if value is None else list(value)


def load_params(
    source: str | Path | Mapping[str, Any] | None,
    *,
    node: str = DEFAULT_NODE,
    overrides: Mapping[str, Any] | None = None,
) -> Params:
    """Read ``source`` (a params file, an already-loaded mapping, or ``None``: defaults).

    ``overrides``: engine settings applied on top (e.g. command-line flags); ``None`` values
    are skipped. Raises ``FileNotFoundError`` for a missing file and ``ValueError`` (naming
    the file) for a malformed one or invalid settings.
    """
    where = "" if source is None or isinstance(source, Mapping) else str(source)
    if source is None:
        params: dict[str, Any] = {}
    elif isinstance(source, Mapping):
        params = node_parameters(source, node)
    else:
        params = node_parameters(read_yaml(source), node, where=where)
    engine_fields = set(SegmenterConfig.field_names())
    engine = {k: v for k, v in params.items() if k in engine_fields}
    engine.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        config = SegmenterConfig.from_dict(engine)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}" if where else str(exc)) from exc
    rest = {k: v for k, v in params.items() if k not in engine_fields}
    return Params(config, rest, where, engine)


def read_yaml(path: str | Path) -> Mapping[str, Any]:
    """The YAML mapping in ``path`` (``{}`` for an empty file)."""
    import yaml

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"params file {path} not found")
    try:
        with path.open(encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return data


def node_parameters(
    data: Mapping[str, Any], node: str = DEFAULT_NODE, *, where: str = ""
) -> dict[str, Any]:
    """The flattened parameters ``data`` gives node ``node`` (see the module docstring)."""
    prefix = f"{where}: " if where else ""
    sections = list(_sections(data, "", prefix))
    if not sections:  # a plain mapping of parameters
        return _flatten(data)
    fqn = _fully_qualified(node, [path for path, _ in sections], prefix)
    merged: dict[str, Any] = {}
    matched = False
    for pattern, params in sections:
        if _matches(pattern, fqn):
            merged.update(_flatten(params))
            matched = True
    if not matched:
        names = ", ".join(path for path, _ in sections)
        raise ValueError(f"{prefix}no parameters for node {fqn}; the file has: {names}")
    return merged


def _sections(data: Mapping[str, Any], path: str, prefix: str):
    """``(node name pattern, parameters)`` of every ``ros__parameters`` block, in file order."""
    for key, value in data.items():
        if key == _SECTION_KEY:
            if value is not None and not isinstance(value, Mapping):
                raise ValueError(f"{prefix}{path or '/'}: ros__parameters must be a mapping")
            yield (path or "/**"), (value or {})
        elif isinstance(value, Mapping):
            name = str(key)
            yield from _sections(value, name if name.startswith("/") else f"{path}/{name}", prefix)


def _fully_qualified(node: str, patterns: list[str], prefix: str) -> str:
    """``/ns/node`` for ``node``: as given when absolute, else from the file's literal names."""
    if node.startswith("/"):
        return node
    found = sorted(
        {p for p in patterns if "*" not in p and p.rstrip("/").rsplit("/", 1)[-1] == node}
    )
    if len(found) > 1:
        raise ValueError(
            f"{prefix}the file configures several nodes named {node!r} ({', '.join(found)}): "
            "give the fully qualified node name"
        )
    return found[0] if found else f"/{node}"


def _matches(pattern: str, fqn: str) -> bool:
    """ROS 2 node-name matching: ``*`` is one name token, ``**`` zero or more."""
    regex = ""
    for token in pattern.strip("/").split("/"):
        if token == "**":
            regex += "(?:/[^/]+)*"
        elif token == "*":
            regex += "/[^/]+"
        elif token:
            regex += "/" + re.escape(token)
    return re.fullmatch(regex or "/", fqn) is not None


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested groups -> dotted names, as ROS 2 names nested parameters."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
