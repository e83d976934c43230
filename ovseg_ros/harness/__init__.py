"""The DDS process harness: a node, a camera, an echo and this process's client on a private
ROS domain, torn down cleanly. Used by the tests, ``ovseg-demo``, ``ovseg-bench node`` and
``scripts/dds_delivery.py``; nothing here replaces a ROS part.

- :mod:`.domain`: a private domain id and the environment of child processes (discovery kept
  on this machine); ROS-free.
- :mod:`.process`: child processes (the node, or any command) with a log file, peak memory,
  ``alive()`` and a teardown that leaves no process behind; waiting helpers; ROS-free.
- :mod:`.frames`: the test frame (two coloured halves) as pixels and as an rgb8 message.
- :mod:`.peers`: the camera, echo and recorder processes and the functions that run them;
  ROS-free. :mod:`.peer_roles`: what runs inside them (``python -m
  ovseg_ros.harness.peer_roles ROLE``).
- :mod:`.client`: this process's side: camera publisher, labels / vocabulary / diagnostics
  recorder, lifecycle and parameter service client.

It starts the node as ``python -m ovseg_ros.ros.main`` and never imports it.
"""
