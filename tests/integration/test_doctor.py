"""``hvdkit doctor`` reports the real build, fails loudly when a required
piece is missing, and prints no TensorFlow start-up logs unless asked to."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.fixture(scope="module")
def default_doctor():
    """One ``hvdkit doctor --json`` run as a user gets it (TF_CPP_MIN_LOG_LEVEL unset), shared by the tests."""
    return doctor(None)


def test_reports_a_complete_build(default_doctor):
    result = default_doctor
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    rows = report["report"]
    assert report["problems"] == []
    assert rows["horovod"] == "0.28.1"
    assert rows["torch"].startswith("2.13")
    assert rows["tensorflow"].startswith("2.21")
    assert set(rows["horovod frameworks"].split(", ")) >= {"torch", "tensorflow"}
    assert set(rows["horovod controllers"].split(", ")) == {"mpi", "gloo"}
    assert rows["horovod build"].startswith("horovod0.28.1-torch2.13"), rows["horovod build"]  # hvdkit's build
    assert rows["hvdkit._C backends"].startswith("cpu")
    assert rows["hvdkit._tf_ops backends"].startswith("cpu")
    assert "Open MPI" in rows["mpirun"]


def test_missing_mpirun_is_named_and_fails(hvdkit_cli, tmp_path):
    # An empty PATH hides mpirun; the interpreter is started by absolute path.
    result = hvdkit_cli(["doctor"], env={"PATH": str(tmp_path)})
    assert result.returncode == 1
    assert "MISSING mpirun: not found" in result.stderr


# The lines TensorFlow 2.21 prints when imported (hvdkit.runtime.tf_log), each found by a piece of its text.
TF_STARTUP = ("All log messages before absl::InitializeLog()", "oneDNN custom operations are on",
              "To enable the following instructions")


def doctor(level):
    """``python -m hvdkit doctor --json`` with TF_CPP_MIN_LOG_LEVEL at ``level`` (None: unset, hvdkit's
    default)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    if level is not None:
        env["TF_CPP_MIN_LOG_LEVEL"] = level
    return subprocess.run([sys.executable, "-m", "hvdkit", "doctor", "--json"], capture_output=True, text=True,
                          timeout=300, env=env, cwd=REPO)


def test_tensorflows_startup_logs_are_silenced_unless_the_user_asks_for_them(default_doctor):
    shown = doctor("0")  # the user's value wins: TensorFlow prints them, and hvdkit leaves them
    assert shown.returncode == 0, shown.stderr
    printed = [text for text in TF_STARTUP if text in shown.stderr]
    if not printed:
        pytest.skip("with TF_CPP_MIN_LOG_LEVEL=0 TensorFlow printed none of its start-up lines on this machine, "
                    "so there is nothing to silence")
    quiet = default_doctor
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == "", quiet.stderr
    assert json.loads(quiet.stdout) == json.loads(shown.stdout)  # the same report, only the logs are gone
    assert json.loads(quiet.stdout)["problems"] == []
