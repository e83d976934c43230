"""The ROS 2 node, split by job: node, camera, parameters, worker, diagnostics, main."""
