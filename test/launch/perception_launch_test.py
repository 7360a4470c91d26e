"""launch_testing proof of life: the package's launch file, found through the ament index, starts the
node; a real scan (a simulated one without ../shared/data) gets every output with its header; the
node exits cleanly when the launch shuts down.

Run by test/test_launch_testing.py through the `launch_test` command line (launch_testing 3.7.1's
pytest plugin does not load under pytest 9), with AMENT_PREFIX_PATH naming a prefix that holds
ssl3d_ros and test/ on PYTHONPATH.
"""
import os
import unittest
from pathlib import Path

import launch
import launch_testing.actions
import launch_testing.asserts
from ament_index_python.packages import get_package_share_directory
from launch.actions import IncludeLaunchDescription
from launch.events.process import ProcessExited
from launch.launch_description_sources import PythonLaunchDescriptionSource

from launch_stack import INPUT_TOPIC, assert_every_output_answers, open_harness, scan_to_publish, wait_until_matched

SHARED_DATA = Path(os.environ["SSL3D_SHARED_DATA"]) if os.environ.get("SSL3D_SHARED_DATA") else None


def generate_test_description():
    launch_file = os.path.join(get_package_share_directory("ssl3d_ros"), "launch", "perception.launch.py")
    return launch.LaunchDescription([
        IncludeLaunchDescription(PythonLaunchDescriptionSource(launch_file),
                                 launch_arguments={"input_topic": INPUT_TOPIC, "device": "cpu"}.items()),
        # Ready at once: the test itself waits until the node has matched every topic.
        launch_testing.actions.ReadyToTest(),
    ])


class TestPerceptionNodeAnswers(unittest.TestCase):
    def test_every_output_carries_the_input_header(self, proc_info):
        harness = open_harness()
        try:
            # proc_info holds each process's last event: ProcessExited once it has ended.
            wait_until_matched(harness, lambda: not any(isinstance(proc_info[p], ProcessExited)
                                                        for p in proc_info.processes()),
                               lambda: "(the node's output is in the launch_test log above)")
            assert_every_output_answers(harness, scan_to_publish(SHARED_DATA))
        finally:
            harness.close()


@launch_testing.post_shutdown_test()
class TestPerceptionNodeShutdown(unittest.TestCase):
    def test_the_node_exits_cleanly(self, proc_info):
        launch_testing.asserts.assertExitCodes(proc_info)
