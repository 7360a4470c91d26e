"""The launch_testing test (test/launch/perception_launch_test.py) through upstream's `launch_test`
command line, a subprocess: launch_testing 3.7.1's pytest plugin does not load under pytest 9, so the
stack is never put on this pytest's path. The package comes from the `ssl3d-ament-prefix` prefix."""
from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from launch_stack import REPO, pip_route_prefix, require_launch_stack, stack_pythonpath

pytestmark = [pytest.mark.ros, pytest.mark.slow]
LAUNCH_TEST = REPO / "test" / "launch" / "perception_launch_test.py"


def test_launch_testing_proof_of_life(tmp_path, request):
    require_launch_stack()
    from builders import ros_env

    try:
        shared = str(request.getfixturevalue("shared_data"))
    except pytest.skip.Exception:  # the launch test publishes a simulated scan instead
        shared = ""
    prefix = pip_route_prefix(tmp_path)
    junit = tmp_path / "launch_test.xml"
    env = {**ros_env(), "AMENT_PREFIX_PATH": str(prefix), "SSL3D_SHARED_DATA": shared,
           "PYTHONPATH": stack_pythonpath(REPO / "test", REPO)}
    done = subprocess.run([sys.executable, "-m", "launch_testing.launch_test", str(LAUNCH_TEST),
                           "--junit-xml", str(junit)], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=540)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-8000:]
    cases = {case.get("name"): case for case in ET.parse(junit).getroot().iter("testcase")}
    assert {"test_every_output_carries_the_input_header", "test_the_node_exits_cleanly"} <= set(cases), output[-4000:]
    assert not any(len(case) for case in cases.values()), output[-8000:]  # no failure/error/skipped child
    assert "loaded " in output and "on cpu" in output  # the node really started, with the packaged checkpoint
