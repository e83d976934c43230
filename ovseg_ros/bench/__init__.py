"""``ovseg-bench``: every benchmark of the package, one command with subcommands.

- :mod:`.cli`: the one argparse tree (``engine`` also when no subcommand is named,
  ``components``, ``cameras``, ``points``, ``node``), tables and JSON; a leaf.
- :mod:`.measure`: the one timing loop, CUDA synchronisation, medians / percentiles, peak
  memory.
- :mod:`.scene`: the one synthetic frame and vocabulary every benchmark uses.
- :mod:`.engine`: per-stage latency, fps and peak memory of ``Segmenter.segment``.
- :mod:`.estimate`: how long a CPU run of the real architectures takes, said first.
- :mod:`.components`: the pure attention / propagation functions on frame-sized tensors.
- :mod:`.cameras`: N cameras batched (``segment_batch``) vs one by one.
- :mod:`.points`: the point-cloud stage alone (depth -> PointCloud2 bytes).
- :mod:`.node`: the node end to end over DDS against the transport floor and against the
  engine alone (:mod:`.engine_alone`, the process that times it), through
  :mod:`ovseg_ros.harness`.

No timing is asserted anywhere; the numbers are for reading.
"""
