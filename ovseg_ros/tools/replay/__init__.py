"""``ovseg-replay``: the offline replay of rosbag2 bags through the segmentation engine.

Modules, from the bottom up: ``bag_io`` (rosbag2 reading, writing, removing), ``plan``
(options, checks, counters), ``points`` (depth clouds), ``core`` (the pass: read, segment,
write), ``ranges`` (a bag in time windows, for Ray), ``settings`` (flags and params file),
``jobs`` (staging names, finalising, the report), ``many`` (several bags, here or on Ray
through :mod:`ovseg_ros.tools.fleet`) and ``cli`` (the command line).
"""
