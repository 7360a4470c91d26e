"""Start the ssl3d_ros perception node.

    ros2 launch ssl3d_ros perception.launch.py input_topic:=/points
    ros2 launch ssl3d_ros perception.launch.py checkpoint:=/path/model.safetensors device:=cpu

Arguments: input_topic (remapped onto ~/input/points), params_file (default: the package's
config/perception.yaml; a path that is not a file stops the launch), checkpoint ('' = the params
file's / the packaged default), device ('' = the params file's), use_sim_time (true/false, 1/0,
yes/no, on/off; anything else stops the launch), managed (false: a lifecycle node that waits for
configure/activate, as nav2's lifecycle manager expects). Outputs stay under the node's private names
(/ssl3d_perception/output/...), which rviz/ssl3d_ros.rviz displays.

A bad argument, or the node exiting with an error (e.g. refusing its configuration or missing rclpy or
torch, exit 2), ends the launch with one "Caught exception in launch ...: <why>" line and a non-zero exit
status; upstream launch would otherwise only log a warning for a missing params file and return 0.

Stopping: SIGINT (Ctrl-C) stops the node and the launch (exit 0), with upstream's grace periods kept
(sigterm_timeout 5 s, then sigkill_timeout 5 s; the node stops within a few seconds). SIGTERM, SIGHUP or
SIGKILL kill the launch process at once (upstream has no handler for them and leaves its processes
running); the node, started with --exit-with-parent, gets SIGTERM from the kernel when the launch exits
and stops cleanly.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, RegisterEventHandler, SetEnvironmentVariable
from launch.event_handlers import OnProcessExit
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

BOOLEANS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


class LaunchArgumentError(ValueError):
    """A launch argument that would otherwise be silently misread."""


def parse_bool(name, value):
    try:
        return BOOLEANS[value.strip().lower()]
    except KeyError:
        raise LaunchArgumentError(f"launch argument {name}:={value!r} is not a boolean; "
                                  "use true/false (or 1/0, yes/no, on/off)") from None


def _fail_on_error_exit(event, context):
    # Upstream `ros2 launch` returns 0 whatever its processes return; an exception raised while the
    # launch runs makes it log one line and return 1. A node stopped by the launch's own shutdown
    # (SIGINT, or SIGTERM after the grace period) is not an error.
    if event.returncode != 0 and not context.is_shutdown:
        raise RuntimeError(f"{event.process_name} exited with code {event.returncode}"
                           + (" (it refused to start; its log line above says why)" if event.returncode == 2 else ""))


def _node(context, *args, **kwargs):
    params_file = LaunchConfiguration("params_file").perform(context)
    if not os.path.isfile(params_file):
        raise LaunchArgumentError(f"launch argument params_file:={params_file!r} is not a file")
    # Only non-empty overrides are passed, so an empty argument keeps the params file's value.
    overrides = {"use_sim_time": parse_bool("use_sim_time", LaunchConfiguration("use_sim_time").perform(context))}
    for name in ("checkpoint", "device"):
        value = LaunchConfiguration(name).perform(context)
        if value:
            overrides[name] = value
    node = Node(
        package="ssl3d_ros",
        executable="perception_node",
        name="ssl3d_perception",
        output="screen",
        emulate_tty=True,
        parameters=[params_file, overrides],
        remappings=[("~/input/points", LaunchConfiguration("input_topic"))],
        # --exit-with-parent: Linux stops the node (SIGTERM) when this launch's process exits, however it ended;
        # SIGTERM (docker stop, systemd) or SIGHUP kill upstream `ros2 launch` without it stopping its processes.
        # A lifecycle node waits for configure/activate (nav2's lifecycle manager, `ros2 lifecycle set`).
        arguments=["--exit-with-parent"]
        + (["--managed"] if parse_bool("managed", LaunchConfiguration("managed").perform(context)) else []),
    )
    return [node, RegisterEventHandler(OnProcessExit(target_action=node, on_exit=_fail_on_error_exit))]


def generate_launch_description():
    share = get_package_share_directory("ssl3d_ros")
    return LaunchDescription([
        DeclareLaunchArgument("input_topic", default_value="/points",
                              description="sensor_msgs/PointCloud2 topic to segment"),
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "perception.yaml"),
                              description="node parameter file"),
        DeclareLaunchArgument("checkpoint", default_value="",
                              description="checkpoint .safetensors ('' = params file / packaged default)"),
        DeclareLaunchArgument("device", default_value="",
                              description="auto | cuda | cpu ('' = params file)"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="use /clock (bag replay): true/false, 1/0, yes/no, on/off"),
        DeclareLaunchArgument("managed", default_value="false",
                              description="start a lifecycle (managed) node: configure loads and warms up the "
                                          "model, activate subscribes (true/false)"),
        # Large clouds need a larger Fast DDS shared-memory segment (see the profile's comment);
        # a profile already named in the environment wins.
        SetEnvironmentVariable(
            "FASTDDS_DEFAULT_PROFILES_FILE",
            os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE", os.path.join(share, "config", "fastdds_large_data.xml")),
        ),
        OpaqueFunction(function=_node),
    ])
