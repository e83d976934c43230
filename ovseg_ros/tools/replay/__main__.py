"""``python -m ovseg_ros.tools.replay``: the ``ovseg-replay`` command line."""

import sys

from ovseg_ros.tools.replay.cli import main

sys.exit(main())
