"""The user-facing documents: the README's path to a running robot, its links, the RViz config.

Cheap checks in this process (no ROS, no DDS): the README's user path (everything before
"## Benchmarks") stays short and in order, every relative link and ``#anchor`` of README.md and
docs/*.md resolves, config/ovseg.rviz is an RViz 2 config showing the node's own topics and is
installed, the launch file declares ``rviz``, and no file names the unused std_srvs package.
"""

from __future__ import annotations

import ast
import re
import runpy
import shutil
import subprocess
from pathlib import Path

import pytest
import setuptools
import yaml

from ovseg_ros import outputs
from ovseg_ros.points.cloud import POINT_FIELDS

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
LAUNCH = REPO / "launch" / "segment.launch.py"
RVIZ = REPO / "config" / "ovseg.rviz"
USER_PATH_LINES = 250  # everything before "## Benchmarks"
# The README's sections a newcomer reads in this order (others may sit between them).
SECTIONS = (
    "On a robot",
    "See the output",
    "Change the classes",
    "Lifecycle",
    "Troubleshooting",
    "Topics",
    "Parameters",
    "Labelled 3D point clouds",
    "3D objects",
    "Several cameras, one model",
    "Bounds: what a caller on the domain can and cannot do",
    "Large images and DDS",  # named by the node's input-loss warning (ros/diagnostics.py)
    "Replaying bags",
    "Benchmarks and evaluation",
    "Python API",
    "Working on ovseg_ros",
)
# The MarkerArray of object markers, published by the objects feature under the node's name.
OBJECT_MARKERS = "objects/markers"


# -- Markdown helpers ----------------------------------------------------------------------------

_FENCE = re.compile(r"^\s*(```|~~~)")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_CODE_SPAN = re.compile(r"`[^`]*`")


def _prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown file: lower case, punctuation dropped (not ``-``
    or ``_``), spaces to ``-``; a repeated anchor gets ``-1``, ``-2``, ..."""
    seen: dict[str, int] = {}
    anchors = set()
    for line in _prose_lines(path.read_text()):
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not heading:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _links(path: Path) -> list[str]:
    """Link targets in the prose of ``path`` (not in code blocks or code spans; a link's text
    may wrap onto the next line)."""
    prose = "\n".join(_prose_lines(path.read_text()))
    return _LINK.findall(_CODE_SPAN.sub("", prose))


def _user_path() -> list[str]:
    lines = README.read_text().splitlines()
    end = next(i for i, line in enumerate(lines) if line.startswith("## Benchmarks"))
    return lines[:end]


# -- README ---------------------------------------------------------------------------------------


def test_readme_user_path_is_short() -> None:
    lines = _user_path()
    assert len(lines) <= USER_PATH_LINES, (
        f"the README before '## Benchmarks' has {len(lines)} lines (at most {USER_PATH_LINES}): "
        "move details to docs/ and link them"
    )


def test_readme_sections_come_in_the_users_order() -> None:
    headings = [line[3:].strip() for line in README.read_text().splitlines() if line[:3] == "## "]
    missing = [s for s in SECTIONS if s not in headings]
    assert not missing, f"README sections missing: {missing}"
    positions = [headings.index(s) for s in SECTIONS]
    assert positions == sorted(positions), f"README sections out of order: {headings}"


def test_readme_starts_with_the_two_newcomer_commands() -> None:
    """The commands CI runs (.ci/run) are the README's first code block, exactly."""
    text = README.read_text()
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.splitlines()]
    assert commands == [
        "bash scripts/setup.sh && .venv/bin/ovseg-demo",
        ".venv/bin/python -m pytest -q",
    ]


def test_readme_robot_path_fetches_weights_before_the_first_launch() -> None:
    path = "\n".join(_user_path())
    robot = path.split("## On a robot", 1)[1]
    assert "https://github.com/<your-org>/ovseg_ros.git" in robot
    assert robot.index("download_weights") < robot.index("ros2 launch ovseg_ros")


@pytest.mark.parametrize("document", [README, *DOCS], ids=lambda p: p.name)
def test_relative_links_and_anchors_resolve(document: Path) -> None:
    broken = []
    for target in _links(document):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        linked = (document.parent / file_part).resolve() if file_part else document
        if not linked.exists():
            broken.append(f"{target} (no file {linked})")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(f"{target} (no heading for #{anchor} in {linked.name})")
    assert not broken, f"{document.name}: broken links: {broken}"


def test_every_doc_is_linked_from_the_readme() -> None:
    linked = {(REPO / t.partition("#")[0]).resolve() for t in _links(README)}
    unlinked = [p.name for p in DOCS if p.resolve() not in linked]
    assert not unlinked, f"docs/ pages the README does not link: {unlinked}"


# -- RViz -----------------------------------------------------------------------------------------


def _launch_tree() -> ast.Module:
    return ast.parse(LAUNCH.read_text())


def _declared_arguments() -> dict[str, str]:
    """Launch argument name -> default value, from the DeclareLaunchArgument calls."""
    declared = {}
    for node in ast.walk(_launch_tree()):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "DeclareLaunchArgument":
            name = ast.literal_eval(node.args[0])
            default = next((k.value for k in node.keywords if k.arg == "default_value"), None)
            declared[name] = ast.literal_eval(default) if isinstance(default, ast.Constant) else ""
    return declared


def _rviz_displays() -> dict[str, dict]:
    config = yaml.safe_load(RVIZ.read_text())
    return {d["Class"]: d for d in config["Visualization Manager"]["Displays"]}


def test_rviz_config_has_the_structure_rviz2_writes() -> None:
    config = yaml.safe_load(RVIZ.read_text())
    assert {"Panels", "Visualization Manager", "Window Geometry"} <= set(config)
    assert any(p["Class"] == "rviz_common/Displays" for p in config["Panels"])
    manager = config["Visualization Manager"]
    assert manager["Global Options"]["Fixed Frame"]
    assert manager["Views"]["Current"]["Class"].startswith("rviz_default_plugins/")
    for display in manager["Displays"]:
        assert display["Class"].startswith("rviz_default_plugins/"), display
        assert display["Name"] and display["Enabled"] is True
    geometry = config["Window Geometry"]
    assert geometry["Width"] > 0 and geometry["Height"] > 0
    assert isinstance(geometry["Hide Left Dock"], bool)  # rviz2 reads both docks' flags
    assert isinstance(geometry["Hide Right Dock"], bool)


def test_rviz_config_shows_the_nodes_topics() -> None:
    node = _declared_arguments()["node_name"]
    displays = _rviz_displays()
    topics = {
        "rviz_default_plugins/Image": f"/{node}/{outputs.OVERLAY}",
        "rviz_default_plugins/PointCloud2": f"/{node}/{outputs.POINTS}",
        "rviz_default_plugins/MarkerArray": f"/{node}/{OBJECT_MARKERS}",
    }
    for plugin, topic in topics.items():
        assert displays[plugin]["Topic"]["Value"] == topic, plugin
        # The node's outputs are reliable; a reliable subscription matches them.
        assert displays[plugin]["Topic"]["Reliability Policy"] == "Reliable"
    cloud = displays["rviz_default_plugins/PointCloud2"]
    assert cloud["Color Transformer"] == "RGB8"  # reads the field named rgb
    assert "rgb" in [field[0] for field in POINT_FIELDS]
    assert cloud["Channel Name"] in [field[0] for field in POINT_FIELDS]


def test_launch_remaps_exactly_the_topics_rviz_shows() -> None:
    """rviz:=true with another namespace or node_name remaps RVIZ_TOPICS: all that rviz shows."""
    assigned = {
        target.id: node.value
        for node in _launch_tree().body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    remapped = set(ast.literal_eval(assigned["RVIZ_TOPICS"]))
    node = _declared_arguments()["node_name"]
    shown = {d["Topic"]["Value"] for d in _rviz_displays().values() if "Topic" in d}
    assert shown == {f"/{node}/{topic}" for topic in remapped}


def test_launch_declares_rviz_off_by_default() -> None:
    assert _declared_arguments()["rviz"] == "false"


def test_rviz_config_is_installed(monkeypatch) -> None:
    """setup.py installs config/ovseg.rviz next to config/segment.yaml."""
    captured: dict = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kwargs: captured.update(kwargs))
    monkeypatch.chdir(REPO)
    runpy.run_path(str(REPO / "setup.py"))
    data_files = dict(captured["data_files"])
    installed = data_files["share/ovseg_ros/config"]
    assert "config/ovseg.rviz" in installed and "config/segment.yaml" in installed


# -- dependencies ---------------------------------------------------------------------------------


def test_std_srvs_is_declared_and_imported_nowhere() -> None:
    """The node offers no std_srvs service: no dependency, extra or import may name it."""
    git = shutil.which("git")
    if git is None or not (REPO / ".git").exists():
        pytest.skip("needs a git checkout to list the repository's files")
    listed = subprocess.run(
        [git, "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    pattern = re.compile(r"std[_-]srvs", re.IGNORECASE)
    naming = []
    for name in listed:
        path = REPO / name
        if path == Path(__file__).resolve() or not path.is_file():
            continue
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue  # binary files
        if pattern.search(text):
            naming.append(name)
    assert not naming, f"std_srvs is still named in {naming}"
