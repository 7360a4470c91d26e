"""Start the ssl3d_ros perception node.

    ros2 launch ssl3d_ros perception.launch.py input_topic:=/points
    ros2 launch ssl3d_ros perception.launch.py checkpoint:=/path/model.safetensors device:=cpu

Arguments: input_topic (remapped onto ~/input/points), params_file (default: the package's
config/perception.yaml), checkpoint ('' = the params file's / the packaged default), device
('' = the params file's), use_sim_time. Outputs stay under the node's private names
(/ssl3d_perception/output/...), which rviz/ssl3d_ros.rviz displays.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def _node(context, *args, **kwargs):
    # Only non-empty overrides are passed, so an empty argument keeps the params file's value.
    overrides = {"use_sim_time": LaunchConfiguration("use_sim_time").perform(context).lower() in ("true", "1")}
    for name in ("checkpoint", "device"):
        value = LaunchConfiguration(name).perform(context)
        if value:
            overrides[name] = value
    return [
        Node(
            package="ssl3d_ros",
            executable="perception_node",
            name="ssl3d_perception",
            output="screen",
            emulate_tty=True,
            parameters=[LaunchConfiguration("params_file"), overrides],
            remappings=[("~/input/points", LaunchConfiguration("input_topic"))],
        )
    ]


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
                              description="use /clock (bag replay)"),
        # Large clouds need a larger Fast DDS shared-memory segment (see the profile's comment);
        # a profile already named in the environment wins.
        SetEnvironmentVariable(
            "FASTDDS_DEFAULT_PROFILES_FILE",
            os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE", os.path.join(share, "config", "fastdds_large_data.xml")),
        ),
        OpaqueFunction(function=_node),
    ])
