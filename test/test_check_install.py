"""scripts/check-install, which `make test` runs every time, on a deliberately broken environment.

A throwaway venv would take minutes; instead the check runs under ``python -S`` with the venv's
site-packages on PYTHONPATH: the dependencies import, but the ``.pth`` file of the editable install
is not processed, so ``ssl3d_ros`` is not installed - what the venv looks like after
``pip uninstall ssl3d_ros``. The repository is on PYTHONPATH too, where the old check found
``ssl3d_ros`` and passed; the check must drop it and name everything missing.
"""
from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHECK = REPO / "scripts" / "check-install"


def run_check(pythonpath: list[Path | str], setup: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(map(str, pythonpath)))
    return subprocess.run([sys.executable, "-S", str(CHECK), "--setup", str(setup)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=280)


def test_check_install_names_an_uninstalled_package_and_a_missing_console_script(tmp_path):
    setup = tmp_path / "setup.py"
    setup.write_text((REPO / "setup.py").read_text().replace(
        '"ssl3d-demo = ssl3d_ros.demo:main",', '"ssl3d-demo = ssl3d_ros.demo:main",\n"ssl3d-not-installed = x:main",'))
    result = run_check([sysconfig.get_paths()["purelib"], REPO], setup)
    assert result.returncode == 1, result.stdout + result.stderr
    problems = [line.strip() for line in result.stderr.splitlines()[1:]]
    assert "ssl3d_ros: ModuleNotFoundError: No module named 'ssl3d_ros'" in problems, result.stderr
    assert any(p.startswith("ssl3d_ros.training: ModuleNotFoundError") for p in problems), result.stderr
    assert not any(p.startswith("numpy:") for p in problems), result.stderr  # the dependencies are there
    assert any(p.startswith("ssl3d-not-installed: not installed in") for p in problems), result.stderr
    # every declared script that is installed was run, and each failed on the missing package
    for script in ("ssl3d-pretrain", "ssl3d-probe", "ssl3d-demo", "ssl3d-perception"):
        assert f"{script} --help: exit 1: ModuleNotFoundError: No module named 'ssl3d_ros'" in problems, result.stderr
    assert "Traceback" not in result.stderr


def test_check_install_refuses_an_unreadable_setup_py(tmp_path):
    result = run_check([], tmp_path / "absent.py")
    assert result.returncode == 2 and "absent.py" in result.stderr
