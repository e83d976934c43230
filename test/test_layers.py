"""The package's shape: imports go one way (DESIGN.md §2), counting imports inside functions.

Read from the source with ``ast`` (nothing is imported), so a cycle hidden in a function-local
import is found as surely as a module-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ovseg_ros"

# Layer of each top-level part; a module may import only its own layer and the ones below.
LAYERS = {
    "segmentation": 0,  # the engine
    "stamps": 0,
    "log_throttle": 0,
    "image_header": 0,
    "image_conversion": 1,
    "evaluation": 1,
    "params": 1,
    "points": 2,
    "outputs": 3,
    "camera_info_input": 4,
    "points_stage": 4,
    "temporal": 4,  # temporal fusion between scoring and labels
    "pipeline": 5,  # the shared frame pipeline: the top of the ROS-free layer
    "harness": 6,
    "ros": 6,
    "tools": 7,  # command lines
    "bench": 8,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, name: str) -> set[str]:
    """Every ``ovseg_ros`` module ``path`` imports, wherever the import statement is."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m == "ovseg_ros" or m.startswith("ovseg_ros.")}


def graph() -> dict[str, set[str]]:
    known = modules()
    edges: dict[str, set[str]] = {}
    for name, path in known.items():
        targets = set()
        for target in imports(path, name):
            while target not in known:  # "pkg.module.Name" -> "pkg.module"
                target = target.rpartition(".")[0]
            if target != name:
                targets.add(target)
        edges[name] = targets
    return edges


def part(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def test_no_import_cycle() -> None:
    known = modules()
    # A package's __init__ re-exporting its own modules is not a cycle of logic.
    edges = {
        m: {t for t in targets if not (known[m].name == "__init__.py" and t.startswith(m + "."))}
        for m, targets in graph().items()
    }
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                cycles.append(stack[stack.index(target) :] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_imports_go_down_the_layers() -> None:
    upward = []
    for module, targets in graph().items():
        source = part(module)
        if source not in LAYERS:
            continue
        for target in targets:
            dest = part(target)
            if dest in LAYERS and dest != source and LAYERS[dest] > LAYERS[source]:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports against the layering: " + ", ".join(sorted(upward))


def test_every_top_level_part_has_a_layer() -> None:
    parts = {part(m) for m in modules()} - {""}
    assert parts <= set(LAYERS), f"give these a layer in LAYERS: {sorted(parts - set(LAYERS))}"


def test_the_engine_and_the_shared_layer_stay_ros_free() -> None:
    """No rclpy, ROS messages or argparse below ``ros/``, and no benchmark code in the engine."""
    ros_free = [p for m, p in modules().items() if LAYERS.get(part(m), 9) <= LAYERS["pipeline"]]
    offenders = []
    for path in ros_free:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            for name in names:
                root = name.split(".")[0]
                if root in {"rclpy", "argparse", "sensor_msgs", "std_msgs", "rosbags"} or (
                    root.endswith("_msgs")
                ):
                    offenders.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert not offenders, offenders
    bench_in_engine = [
        str(p.relative_to(PACKAGE))
        for folder in ("segmentation", "points")
        for p in (PACKAGE / folder).rglob("*.py")
        if "bench" in p.stem
    ]
    assert not bench_in_engine, bench_in_engine


def test_command_lines_are_leaves() -> None:
    """A module with a ``main`` (a console script or ``python -m`` entry) is imported by no
    other module but a package's ``__main__``: library logic lives below the command lines,
    never in them."""
    commands = {
        name
        for name, path in modules().items()
        if any(
            isinstance(node, ast.FunctionDef) and node.name == "main"
            for node in ast.parse(path.read_text()).body
        )
    }
    importers = sorted(
        f"{module} -> {target}"
        for module, targets in graph().items()
        if not module.endswith(".__main__")
        for target in targets & commands
    )
    assert not importers, "command-line modules imported by others: " + ", ".join(importers)
