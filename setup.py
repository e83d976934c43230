"""ament_python packaging for ovseg_ros (also installable with plain pip)."""

from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "ovseg_ros"
PIP_ONLY_REQUIREMENTS = [
    line.split("#")[0].strip()
    for line in (Path(__file__).resolve().parent / "requirements.txt").read_text().splitlines()
    if line.split("#")[0].strip()
]

setup(
    name=PACKAGE,
    version="0.1.0",
    # The data folders hold class-name lists and paper numbers (no Python): listed explicitly.
    packages=find_packages(exclude=["test", "test.*"])
    + [f"{PACKAGE}.data", f"{PACKAGE}.data.classnames"],
    package_data={f"{PACKAGE}.data": ["*.json"], f"{PACKAGE}.data.classnames": ["*.txt"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (
            f"share/{PACKAGE}/config",
            glob("config/*.yaml") + glob("config/*.xml") + glob("config/*.rviz"),
        ),
    ],
    python_requires=">=3.10",
    # numpy, pyyaml, pillow and scipy have rosdep keys (package.xml); the pip-only rest is
    # listed once, in requirements.txt, which a ROS install feeds to pip on its own (README,
    # robot section).
    install_requires=["setuptools", "numpy", "pyyaml", "pillow", "scipy", *PIP_ONLY_REQUIREMENTS],
    extras_require={
        "test": [
            "pytest",
            "pytest-timeout",
            "pytest-xdist",  # the suite runs on two workers (pyproject.toml)
            "kornia",
            "ruff",
            "tqdm",
            "scipy",
            "opencv-python-headless",
            "colcon-common-extensions",  # test_colcon_build builds the package as a robot does
        ],
        # Fleet mode on Ray. Ray core starts a local cluster and joins a running one; the
        # dashboard ("ray[default]", 100 MB more) belongs on the cluster's head node.
        "fleet": ["ray"],
        # ROS 2 Jazzy core from PyPI, for machines without a ROS install (CI, laptops).
        "ros-pip": [
            "ros-jazzy-rclpy[fastrtps]",
            "ros-jazzy-sensor-msgs",
            "ros-jazzy-std-msgs",
            "ros-jazzy-rcl-interfaces",
            "ros-jazzy-diagnostic-msgs",
            "ros-jazzy-lifecycle-msgs",
            "ros-jazzy-visualization-msgs",  # ~/objects/markers (vision_msgs has no wheel)
            # python3-opencv (package.xml) where no rosdep installs it: temporal fusion's
            # optical flow needs it (temporal_alpha > 0 is refused without)
            "opencv-python-headless",
        ],
    },
    zip_safe=True,
    maintainer="ovseg_ros developers",
    maintainer_email="ovseg-ros@example.com",
    description="Real-time open-vocabulary semantic segmentation (PEARL, LPOSS+) for ROS 2.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "segment_node = ovseg_ros.ros.main:main",
            "download_weights = ovseg_ros.tools.download_weights:main",
            "ovseg-replay = ovseg_ros.tools.replay.cli:main",
            "ovseg-evaluate = ovseg_ros.tools.evaluate:main",
            "ovseg-bench = ovseg_ros.bench.cli:main",
            "ovseg-demo = ovseg_ros.tools.demo:main",
        ],
    },
)
