"""The launcher command line hvdkit builds, without running it."""
import argparse

import pytest

from hvdkit.cli import run as run_command
from hvdkit.errors import UsageError
from hvdkit.runtime import launcher


def parse(argv):
    parser = argparse.ArgumentParser()
    run_command.add_arguments(parser)
    return parser.parse_args(argv)


def build(argv, environ=None):
    return launcher.build_command(parse(argv), environ or {"PATH": "/usr/bin"})


@pytest.fixture(autouse=True)
def two_cores_with_both_launchers(monkeypatch):
    monkeypatch.setattr(launcher.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(launcher, "find_tool", lambda name: f"/usr/bin/{name}")


def test_mpirun_oversubscribes_only_beyond_local_cores():
    cmd, _ = build(["-np", "2", "--mpi", "--", "python", "s.py"])
    assert "--oversubscribe" not in cmd and cmd[-2:] == ["python", "s.py"]
    cmd, env = build(["-np", "4", "--mpi", "--", "python", "s.py"])
    assert "--oversubscribe" in cmd
    assert env["OMP_NUM_THREADS"] == "1"


def test_user_thread_count_is_kept():
    _, env = build(["-np", "4", "--", "python"], environ={"OMP_NUM_THREADS": "3"})
    assert env["OMP_NUM_THREADS"] == "3"


def test_root_flags_only_as_root(monkeypatch):
    monkeypatch.setattr(launcher, "is_root", lambda: False)
    cmd, env = build(["-np", "2", "--mpi", "--", "x"])
    assert "--allow-run-as-root" not in cmd and "OMPI_ALLOW_RUN_AS_ROOT" not in env
    monkeypatch.setattr(launcher, "is_root", lambda: True)
    cmd, env = build(["-np", "2", "--mpi", "--", "x"])
    assert "--allow-run-as-root" in cmd and env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] == "1"


def test_environment_is_forwarded_to_remote_ranks():
    cmd, _ = build(["-np", "2", "-H", "a:1,b:1", "--mpi", "--", "x"],
                   environ={"HVDKIT_X": "1", "HOROVOD_CYCLE_TIME": "1", "HOME": "/root", "PATH": "/bin"})
    assert cmd[cmd.index("-H") + 1] == "a:1,b:1"
    forwarded = {cmd[i + 1] for i, word in enumerate(cmd) if word == "-x"}
    assert {"HVDKIT_X", "HOROVOD_CYCLE_TIME", "PATH"} <= forwarded and "HOME" not in forwarded


def test_gloo_uses_horovodrun_with_hosts():
    cmd, _ = build(["-np", "2", "--gloo", "--", "python", "s.py"])
    assert cmd[:6] == ["/usr/bin/horovodrun", "--gloo", "-np", "2", "-H", "localhost:2"]


def test_ssh_port_reaches_both_launchers():
    cmd, _ = build(["-np", "4", "-H", "c1:2,c2:2", "-p", "2222", "--mpi", "--", "x"])
    assert cmd[cmd.index("plm_rsh_args") - 1:cmd.index("plm_rsh_args") + 2] == ["--mca", "plm_rsh_args", "-p 2222"]
    cmd, _ = build(["-np", "4", "-H", "c1:2,c2:2", "--ssh-port", "2222", "--gloo", "--", "x"])
    assert cmd[cmd.index("-H") + 2:cmd.index("-H") + 4] == ["-p", "2222"] and cmd[-1] == "x"
    for launch in ("--mpi", "--gloo"):  # no port given: ssh's own, no flag
        cmd, _ = build(["-np", "4", "-H", "c1:2,c2:2", launch, "--", "x"])
        assert "plm_rsh_args" not in cmd and "-p" not in cmd


def test_ranks_per_node_sets_the_emulation_variable():
    _, env = build(["-np", "4", "--ranks-per-node", "2", "--", "x"])
    assert env["HVDKIT_RANKS_PER_NODE"] == "2"


@pytest.mark.parametrize("argv, message", [
    (["-np", "0", "--", "x"], "-np must be >= 1"),
    (["-np", "2"], "no command given"),
    (["-np", "3", "-H", "a:1,b:1", "--", "x"], "-np 3 needs 3 slots"),
    (["-np", "2", "-H", "a:two", "--", "x"], "slots 'two' of host 'a'"),
    (["-np", "4", "--ranks-per-node", "3", "--", "x"], "--ranks-per-node 3"),
    (["-np", "2", "-H", "a:1,b:1", "-p", "70000", "--", "x"], "-p/--ssh-port must be a port number"),
])
def test_bad_values_name_the_option(argv, message):
    with pytest.raises(UsageError, match=message):
        build(argv)


def test_missing_launcher_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(launcher, "find_tool", lambda name: None)
    with pytest.raises(UsageError, match="mpirun not found"):
        build(["--mpi", "--", "x"])


STUBBORN_LAUNCHER = """
import signal, sys, time
from hvdkit.runtime import launcher
launcher.STOP_GRACE_SECONDS = 1.0
child = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
         "print('ready', flush=True); time.sleep(60)")
sys.exit(launcher.exit_code(launcher.run([sys.executable, "-c", child], {})))
"""


def test_a_launcher_that_ignores_the_stop_signal_is_killed_after_the_grace():
    """As mpirun does when it waits for a node it can no longer reach: SIGTERM is passed on,
    then, after STOP_GRACE_SECONDS, the launcher's group is SIGKILLed."""
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-c", STUBBORN_LAUNCHER], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 128 + signal.SIGKILL
    assert 1.0 <= time.monotonic() - started < 10
    assert "did not stop within 1 s of the signal; killing it" in stderr
