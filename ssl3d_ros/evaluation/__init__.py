"""Evaluation of encoders and of the running node; imports nothing heavy on package import.

- ``probe`` (``ssl3d-probe``): linear / kNN / multi-level probes on frozen features, with the
  random-init, raw-input and supervised baselines; ``--write-head`` ships the linear probe. Its
  labelled scans, encoder and features (shared with ``audit``): ``probe_data``.
- ``audit`` (``ssl3d-audit``): how decodable height, normals and xyz are next to semantics.
- ``viz`` (``ssl3d-viz``): PNG pictures (PCA, k-means, classes, ground truth, query similarity).
- ``selection`` (``ssl3d-select``): which scans of bags and folders to label next (k-center on pooled
  embeddings, the head's uncertainty, both, and the random and uniform-in-time baselines), with a cache
  of per-scan embeddings, ranked lists and pictures.
- ``replay`` (``ssl3d-replay``): a rosbag2 through the real node over DDS (or offline), with a report;
  the bag's frames, their scores and the recorded bag: ``replay_frames``.
- the real-data study (``scripts/real_data_study.py``, docs/results.md): ``study_data`` (labelled-scan
  specs), ``perturbations`` (half beams, range noise), ``study`` (pretraining and probe pieces),
  ``study_report`` (tables).
- ``overload`` (``benchmarks/overload.py``, ``test/test_overload.py``): the node over DDS at several times
  the rate it sustains: drops, latency, memory.
- ``device_carry`` (``scripts/prepare-device-carry``): wheels unpacked as one installed tree for the
  GPU machine.
- building blocks: ``features``, ``probes``, ``ridge``, ``geometry_targets``, ``replay_stats``, ``report``;
  class maps, metrics and splits are :mod:`ssl3d_ros.labels` (fine-tuning uses them too).
"""
