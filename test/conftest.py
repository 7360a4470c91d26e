"""Shared fixtures: the real data beside the repository and helpers for skipping cleanly; the node over
DDS (its checkpoint, parameters, process, this process's harness, the offline pipeline to compare
with). Imports stay light here (torch and rclpy load inside fixtures), shared builders are builders.py."""
from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import pytest

from ssl3d_ros.evaluation.node_harness import Harness

# Under pytest-xdist (`make test` runs two workers) each worker gets a DDS domain of its own, so the two
# workers' nodes and harnesses never meet; ids 101-132 stay clear of the 1-100 that a single process
# picks from its pid (node_harness.ros_environment), and under Fast DDS's limit of 232.
_XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
if _XDIST_WORKER.startswith("gw"):
    os.environ["ROS_DOMAIN_ID"] = str(101 + int(_XDIST_WORKER[2:]) % 32)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SSL3D_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _same_random_state_in_any_order():
    """Each test starts from the same global RNG state whatever ran before it: the suite runs in a
    random order, so a test drawing from torch's or numpy's global generator otherwise sees a
    different draw on every run (a 4 % tail failed CI once). Seeds only modules already imported,
    to keep this file's imports light."""
    random.seed(0)
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed(0)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(0)
    yield


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real scans of ../shared/data; tests using it skip with a reason when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (set SSL3D_SHARED_DATA to point at it)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


# ------------------------------------------------------------------- the node over DDS (module scope)


class NodeTestHarness(Harness):
    """The tests' participant: every output, messages kept, on the tests' input topic."""

    def __init__(self) -> None:
        from builders import INPUT_TOPIC, ros_env

        ros_env()
        super().__init__(INPUT_TOPIC, name="ssl3d_test_harness")

    def messages_for(self, header, timeout: float = 60.0, topics=None) -> dict:
        """The message per topic (default: every stamped output) stamped like ``header``, waiting for all."""
        from builders import STAMPED

        return {t: a.msg for t, a in self.outputs_for(header, topics or STAMPED, timeout).items()}


# test_node.py and test_reliability_inputs.py each get their own node process; a module may override
# ``checkpoint`` or ``params_file`` (node_process uses the module's own).


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A random-init nano checkpoint with a linear head and a PCA basis."""
    from builders import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("node_ckpt") / "nano.safetensors", with_head=True, with_pca=True)


@pytest.fixture(scope="module")
def params_file(tmp_path_factory) -> Path:
    """The node's test parameters (builders.NODE_TEST_PARAMS) as a parameter file."""
    from builders import NODE_TEST_PARAMS

    from ssl3d_ros.evaluation.node_harness import write_params

    return write_params(tmp_path_factory.mktemp("node_params") / "perception.yaml", NODE_TEST_PARAMS)


@pytest.fixture(scope="module")
def harness():
    """This process's participant: publishers onto the node's input, subscriptions to every output."""
    pytest.importorskip("rclpy", reason="rclpy is not installed (pip install '.[ros]')")
    h = NodeTestHarness()
    yield h
    h.close()


@pytest.fixture(scope="module")
def node_process(harness, checkpoint, params_file, tmp_path_factory):
    """The node as another process, started after the harness so its first diagnostics are seen;
    yields (its Popen, its log path)."""
    from builders import INPUT_TOPIC

    from ssl3d_ros.evaluation.node_harness import NodeProcess

    node = NodeProcess(tmp_path_factory.mktemp("node_log"), None, INPUT_TOPIC, params_files=[params_file],
                       extra_args=["-p", f"checkpoint:={checkpoint}"], private_domain=True)
    try:
        harness.wait_for_node(node, 120.0)
        yield node.proc, node.log_path
    finally:
        node.stop()


@pytest.fixture(scope="module")
def offline(checkpoint, params_file):
    """The same checkpoint and parameters, run in this process: what the node must publish."""
    from ssl3d_ros.perception import PerceptionPipeline, load_node_config

    cfg = load_node_config(params_file)
    return PerceptionPipeline.from_checkpoint(checkpoint, device="cpu", overrides=cfg)


# ------------------------------------------------------------------- the quick tests (colcon test)


# pure-library tests that need no DDS, no real data and no training: about a minute on 2 cores
QUICK_TESTS = frozenset({
    "test_architecture.py", "test_atomic.py", "test_checkpoint.py", "test_class_maps.py", "test_codec.py",
    "test_config.py", "test_ema.py", "test_heads.py", "test_hierarchy.py", "test_masking.py",
    "test_preprocessing.py", "test_schedules.py", "test_training_config.py", "test_views.py",
})


def quick_run(config) -> bool:
    """pytest was given no path, so it runs setup.cfg's testpaths, as `colcon test` runs it (its pytest
    step passes options only): then only QUICK_TESTS run. `make test`, and any run naming a path, get
    every test they name."""
    return config.args_source is pytest.Config.ArgsSource.TESTPATHS


def pytest_ignore_collect(collection_path, config):
    if quick_run(config) and collection_path.suffix == ".py" and collection_path.name.startswith("test_"):
        return collection_path.name not in QUICK_TESTS or None
    return None


def pytest_report_header(config):
    if quick_run(config):
        return ["no path given: the quick tests only (QUICK_TESTS in test/conftest.py, what `colcon test` runs); "
                "`make test` or `pytest test` runs every test"]
    return None


# ------------------------------------------------------------------------------------ test order


def pytest_terminal_summary(terminalreporter, config):
    """Name the test order's seed beside the results: pytest-random-order puts it only in the session
    header, which ``-q`` (``make test``) hides, and a failure that depends on the order needs it."""
    if not config.pluginmanager.hasplugin("random_order"):
        return
    options = {name: str(config.getoption(f"random_order_{name}")) for name in ("bucket", "seed")}
    # the plugin marks options left at their defaults "default:..."; it shuffles once one is given
    if config.getoption("random_order_enabled") or not all(v.startswith("default:") for v in options.values()):
        bucket, seed = (v.removeprefix("default:") for v in (options["bucket"], options["seed"]))
        terminalreporter.write_line(f"test order: --random-order-bucket={bucket} --random-order-seed={seed} "
                                    f"(make test PYTEST_SEED={seed} PYTEST_WORKERS=0 repeats it)")
