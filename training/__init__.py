"""Offline self-supervised pretraining (installed as ``ssl3d_ros.training``)."""
