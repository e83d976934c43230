"""``python -m ovseg_ros.bench``: the same as ``ovseg-bench``."""

from ovseg_ros.bench.cli import main

raise SystemExit(main())
