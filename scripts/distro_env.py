"""Helpers of ``scripts/test_distro.sh`` (standard library only; run by two interpreters).

``python distro_env.py wheels DISTRO``: with ``.venv``'s Python, the PyPI names of DISTRO's
ROS 2 wheels: the ``ros-pip`` extra of ovseg_ros (Jazzy's) with DISTRO's prefix.

``python distro_env.py constraints``: with ``.venv``'s Python, ``name==version`` of every
installed distribution that is not part of ROS 2, so that what the other environment installs
beside the wheels (numpy, PyYAML, ...) is the same version as ``.venv``'s, which it shadows.

``python distro_env.py probe BASE_PREFIX``: in the other environment, loads rclpy, the message
packages the node uses and the middleware (a node with a publisher, on a private domain),
prints one line with what loaded from where (rclpy, rmw, the DDS library, torch), and exits 1
if a shared library of ``BASE_PREFIX``'s ROS 2 wheels is mapped into the process.
"""

from __future__ import annotations

import importlib.metadata as metadata
import importlib.util
import re
import sys
from pathlib import Path

JAZZY = "ros-jazzy-"
# A version pip takes in a constraint (PEP 440's common forms; a distribution's own odd version
# string would make pip refuse the whole constraints file).
PLAIN_VERSION = re.compile(r"\d+(\.\d+)*((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?(\+[a-z0-9.]+)?", re.I)


def _name(dist: metadata.Distribution) -> str:
    return re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower()


def _first_of_each() -> dict[str, metadata.Distribution]:
    """Installed distributions by normalised name, the first on ``sys.path`` (the one used)."""
    found: dict[str, metadata.Distribution] = {}
    for dist in metadata.distributions():
        found.setdefault(_name(dist), dist)
    return found


def wheels(distro: str) -> list[str]:
    requirements = metadata.requires("ovseg_ros") or []
    extra = [r.split(";")[0].strip() for r in requirements if 'extra == "ros-pip"' in r]
    if not extra:
        sys.exit("distro_env.py: ovseg_ros's ros-pip extra not found (run scripts/setup.sh)")
    return [r.replace(JAZZY, f"ros-{distro}-") for r in extra]


def _is_ros(name: str, ros_modules: set[str]) -> bool:
    return name.startswith("ros-") or name.replace("-", "_") in ros_modules


def constraints() -> list[str]:
    found = _first_of_each()
    # The ROS wheels also install their packages' own egg-info (rclpy, rosidl_adapter, ...).
    ros_modules = {n[4:].replace("-", "_") for n in found if n.startswith("ros-")}
    return [
        f"{name}=={dist.version}"
        for name, dist in sorted(found.items())
        if not _is_ros(name, ros_modules)
        and name != "ovseg-ros"
        and PLAIN_VERSION.fullmatch(dist.version)
    ]


def _base_ros_files(base: Path) -> set[str]:
    """Every file the ROS 2 wheels installed in the environment at ``base``."""
    sites = sorted((base / "lib").glob("python3*/site-packages"))
    files: set[str] = set()
    for dist in metadata.distributions(path=[str(s) for s in sites]):
        if _name(dist).startswith("ros-"):
            for file in dist.files or ():
                files.add(str(Path(dist.locate_file(file)).resolve()))
    return files


def _mapped() -> list[str]:
    with open("/proc/self/maps", encoding="ascii", errors="replace") as maps:
        paths = {line.split(maxsplit=5)[-1].strip() for line in maps if "/" in line}
    return sorted(p for p in paths if ".so" in Path(p).name)


def _where(path: str) -> str:
    return str(Path(path).parent).replace(str(Path.cwd()) + "/", "")


def probe(base: Path) -> int:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray  # noqa: F401 - loads its libraries
    from lifecycle_msgs.srv import ChangeState  # noqa: F401
    from rcl_interfaces.srv import SetParameters  # noqa: F401
    from rclpy.context import Context
    from rclpy.utilities import get_rmw_implementation_identifier
    from sensor_msgs.msg import Image
    from std_msgs.msg import String  # noqa: F401

    from ovseg_ros.harness.domain import private_domain_id

    context = Context()
    rclpy.init(context=context, domain_id=private_domain_id())
    try:
        node = rclpy.create_node("distro_probe", context=context)
        node.create_publisher(Image, "distro_probe", 1)
        rmw = get_rmw_implementation_identifier()
        mapped = _mapped()
        node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)
    foreign = sorted(set(mapped) & _base_ros_files(base))
    dds = [p for p in mapped if re.match(r"lib(fastdds|fastrtps)\.so", Path(p).name)]
    rmw_lib = [p for p in mapped if Path(p).name == f"lib{rmw}.so"]
    torch_spec = importlib.util.find_spec("torch")
    parts = [
        f"rclpy {metadata.version('ros-rclpy')} from {_where(rclpy.__file__)}",
        f"{rmw} {metadata.version('ros-' + rmw.replace('_', '-'))}"
        + (f" ({_where(rmw_lib[0])})" if rmw_lib else ""),
        "DDS " + (", ".join(f"{Path(p).name} ({_where(p)})" for p in dds) or "library not found"),
        f"torch from {_where(torch_spec.origin) if torch_spec else 'nowhere'}",
        f"Python {sys.version.split()[0]}",
    ]
    print("; ".join(parts))
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        print(f"error: {len(foreign)} shared libraries of {base}'s ROS 2 loaded: {shown}")
        return 1
    if not dds or not rmw_lib:
        print("error: the middleware's libraries were not found among those loaded")
        return 1
    return 0


def main(argv: list[str]) -> int:
    command, *args = argv or [""]
    if command == "wheels" and len(args) == 1:
        print(" ".join(wheels(args[0])))
    elif command == "constraints" and not args:
        print("\n".join(constraints()))
    elif command == "probe" and len(args) == 1:
        return probe(Path(args[0]).resolve())
    else:
        sys.exit("usage: distro_env.py wheels DISTRO | constraints | probe BASE_PREFIX")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
