"""ssl3d_ros: self-supervised sparse 3D encoders for ROS 2.

Everything in this package except :mod:`ssl3d_ros.node` imports without rclpy.
"""

__version__ = "0.1.0"
