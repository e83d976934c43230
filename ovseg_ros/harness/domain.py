"""Where harness processes talk: a private ROS domain id, and the environment of child
processes (that domain, discovery kept on this machine, unbuffered logs). No ROS needed."""

from __future__ import annotations

import fcntl
import os
import random
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

MAX_DOMAIN_ID = 232  # the highest id Fast DDS / Cyclone DDS map to valid ports
PRIVATE_DOMAINS = range(1, 201)  # random picks; 0 is every machine's default
# The folder holding the ovseg_ros package: children import the same code as their parent.
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def private_domain_id(avoid: Iterable[int] = ()) -> int:
    """A random domain id in 1..200, never one of ``avoid`` nor this environment's
    ``ROS_DOMAIN_ID`` (whatever a robot beside us uses), so that harness runs of different
    people and tools on one machine never cross-talk.

    The id is reserved for this process's lifetime with a lock file: parallel test workers
    and tools that pick at the same moment never get the same one (random picks alone
    collide: 25 test modules in each of 3 workers draw 75 of 200 ids).
    """
    taken = set(avoid)
    current = os.environ.get("ROS_DOMAIN_ID", "").strip()
    if current.isdigit():
        taken.add(int(current))
    candidates = [d for d in PRIVATE_DOMAINS if d not in taken]
    random.SystemRandom().shuffle(candidates)
    for domain in candidates:
        if _reserve(domain):
            return domain
    # Every id is reserved by live processes: share one rather than fail.
    return candidates[0]


_LOCK_DIR = Path(tempfile.gettempdir()) / "ovseg_ros-domains"
_reserved: dict[int, int] = {}  # domain id -> the open, locked file descriptor


def _reserve(domain: int) -> bool:
    """Lock ``domain`` for this process (released when it exits); False when another live
    process holds it."""
    if domain in _reserved:
        return False  # already handed out in this process
    try:
        _LOCK_DIR.mkdir(mode=0o777, exist_ok=True)
        fd = os.open(_LOCK_DIR / f"{domain}.lock", os.O_RDONLY | os.O_CREAT, 0o666)
    except OSError:
        return True  # no lock directory (read-only /tmp): fall back to the random pick
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    _reserved[domain] = fd
    return True


def local_discovery_env(distro: str) -> tuple[str, str]:
    """The environment variable that keeps DDS discovery on this machine: Humble's
    ``ROS_LOCALHOST_ONLY``, deprecated since Iron for ``ROS_AUTOMATIC_DISCOVERY_RANGE``."""
    if distro.strip().lower() == "humble":
        return "ROS_LOCALHOST_ONLY", "1"
    return "ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST"


def child_env(
    domain: int,
    *,
    local: bool = True,
    package_path: bool = True,
    base: Mapping[str, str] | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of a child process on ``domain``.

    ``base`` (default ``os.environ``) with ``ROS_DOMAIN_ID``, unbuffered ROS logging (a log
    file shows a line as soon as it is written), with ``local`` DDS discovery limited to this
    machine (the other discovery variable removed, so the two never disagree; otherwise the
    environment's discovery settings stay), with
    ``package_path`` this ovseg_ros first on ``PYTHONPATH``, and ``extra`` on top.
    """
    env = dict(os.environ if base is None else base)
    env["ROS_DOMAIN_ID"] = str(domain)
    env["RCUTILS_LOGGING_BUFFERED_STREAM"] = "0"
    if local:
        for name in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_LOCALHOST_ONLY"):
            env.pop(name, None)
        name, value = local_discovery_env(env.get("ROS_DISTRO", ""))
        env[name] = value
    if package_path:
        rest = env.get("PYTHONPATH", "")
        env["PYTHONPATH"] = f"{PACKAGE_ROOT}{os.pathsep}{rest}" if rest else str(PACKAGE_ROOT)
    env.update(extra or {})
    return env
