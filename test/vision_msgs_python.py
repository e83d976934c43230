"""vision_msgs' Python message classes, generated from their definitions with the rosidl
packages on PyPI (rosidl_adapter, rosidl_generator_py), for machines without vision_msgs.

Python only: the classes construct, compare and print like a ROS install's, but have no type
support (no publisher can use them), so only a separate process may import them: in the test
process the node would take them for an installed vision_msgs.
"""

from __future__ import annotations

import json
import pathlib

import rosidl_generator_py
from rosidl_adapter.msg import convert_msg_to_idl
from rosidl_generator_py.generate_py_impl import generate_py

from ovseg_ros.outputs import DETECTION3D_DEFINITIONS, LABEL_INFO_DEFINITIONS

# <venv>/lib/pythonX.Y/site-packages/rosidl_generator_py -> <venv>/share/.../resource
TEMPLATES = (
    pathlib.Path(rosidl_generator_py.__file__).parents[4]
    / "share"
    / "rosidl_generator_py"
    / "resource"
)


def generate(root: pathlib.Path) -> pathlib.Path:
    """Generate the package under ``root``; returns the folder to put on ``sys.path``."""
    package = root / "src" / "vision_msgs"
    (package / "msg").mkdir(parents=True)
    idl = root / "idl" / "msg"
    idl.mkdir(parents=True)
    tuples = []
    for name, definition in {**DETECTION3D_DEFINITIONS, **LABEL_INFO_DEFINITIONS}.items():
        stem = name.rsplit("/", 1)[1]
        (package / "msg" / f"{stem}.msg").write_text(definition)
        convert_msg_to_idl(package, "vision_msgs", pathlib.Path("msg") / f"{stem}.msg", idl)
        tuples.append(f"{root / 'idl'}:msg/{stem}.idl")
    output = root / "python" / "vision_msgs"
    (output / "msg").mkdir(parents=True)
    (output / "__init__.py").write_text("")
    arguments = {
        "package_name": "vision_msgs",
        "output_dir": str(output),
        "template_dir": str(TEMPLATES),
        "idl_tuples": tuples,
        "target_dependencies": [],
    }
    (root / "arguments.json").write_text(json.dumps(arguments))
    generate_py(str(root / "arguments.json"), [])
    return root / "python"
