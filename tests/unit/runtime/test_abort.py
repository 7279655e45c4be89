"""hvdkit.runtime.abort: an uncaught exception on a rank prints a tagged traceback and ends the process at
once, even where Python's normal exit would wait forever."""
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from hvdkit.runtime import abort
import paths  # tests/support

REPO = str(paths.REPO)

# A peer blocked in a collective, as Python's exit sees it: a non-daemon thread
# that never finishes (Python joins such threads before exiting).
BLOCKED_PROGRAM = textwrap.dedent("""
    import sys, threading
    from hvdkit.runtime import abort
    if sys.argv[1] == "hook":
        abort.install(rank=3, launcher="gloo")
    threading.Thread(target=threading.Event().wait).start()
    raise {exception}
""")


def run(source, arg, env=None, timeout=60):
    return subprocess.run([sys.executable, "-c", source, arg], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env=dict(os.environ, **(env or {})))


class HorovodInternalError(RuntimeError):
    """Stands in for horovod.common.exceptions.HorovodInternalError (matched by name)."""


def raised(exc):
    try:
        raise exc
    except BaseException as err:  # noqa: BLE001
        return type(err), err, err.__traceback__


def test_every_traceback_line_carries_the_rank():
    text = abort.tagged_traceback(5, *raised(ValueError("bad value 7")))
    lines = text.splitlines()
    assert lines[0] == "[hvdkit rank 5] Traceback (most recent call last):"
    assert lines[-1] == "[hvdkit rank 5] ValueError: bad value 7"
    assert all(line.startswith("[hvdkit rank 5] ") for line in lines)


def test_a_horovod_shutdown_gets_one_line_naming_where_the_rank_waited():
    note = abort.secondary_note(0, *raised(HorovodInternalError("Horovod has been shut down. This was caused")))
    assert note.count("\n") == 1
    assert note.startswith("[hvdkit rank 0] HorovodInternalError in ")
    assert f"{__file__}:" in note and "(raised)" in note
    assert "Horovod has been shut down; another rank failed or stalled first" in note


def test_exit_codes():
    assert abort.exit_code_for(ValueError) == 1
    assert abort.exit_code_for(KeyboardInterrupt) == 130


def test_install_rejects_an_unknown_launcher():
    with pytest.raises(ValueError, match="launcher must be 'mpi' or 'gloo', got 'slurm'"):
        abort.install(0, "slurm")


def test_without_the_hook_a_blocked_peer_hangs_the_exit():
    """The hazard the hook removes (if this ever exits, the next test proves nothing)."""
    with pytest.raises(subprocess.TimeoutExpired):
        run(BLOCKED_PROGRAM.format(exception="ValueError('x')"), "plain", timeout=3)


def test_with_the_hook_the_rank_exits_at_once_and_tells_the_launcher(tmp_path):
    started = time.monotonic()
    result = run(BLOCKED_PROGRAM.format(exception="ValueError('injected')"), "hook",
                 env={"HVDKIT_STATUS_DIR": str(tmp_path)})
    assert time.monotonic() - started < 30
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("[hvdkit rank 3] Traceback (most recent call last):")
    assert "[hvdkit rank 3] ValueError: injected\n" in result.stderr
    assert "[hvdkit rank 3] uncaught ValueError: aborting the job" in result.stderr
    with open(tmp_path / "rank3.exception.json") as f:
        record = json.load(f)
    assert (record["rank"], record["type"], record["message"]) == (3, "ValueError", "injected")


def test_ctrl_c_gives_one_line_and_exit_code_130(tmp_path):
    result = run(BLOCKED_PROGRAM.format(exception="KeyboardInterrupt"), "hook",
                 env={"HVDKIT_STATUS_DIR": str(tmp_path)})
    assert result.returncode == 130
    assert result.stderr == "[hvdkit rank 3] interrupted (KeyboardInterrupt)\n"
    assert not list(tmp_path.iterdir())


# hvdkit.topology.init with a stand-in for horovod.torch, as rank 0 of 1 under horovodrun's variables: prints
# whether the hook is in place afterwards, or the error init raised.
INIT_PROGRAM = textwrap.dedent("""
    import sys
    from hvdkit import topology
    from hvdkit.runtime import abort

    class FakeHorovod:
        __name__ = "fake_horovod"
        started = False
        global_process_set = object()
        def is_initialized(self): return self.started
        def init(self, process_sets): self.started = True
        def rank(self): return 0
        def size(self): return 1

    hvd = FakeHorovod()
    try:
        topology.init(hvd)
    except ValueError as err:
        print(f"ValueError: {err}; horovod started: {hvd.started}")
        sys.exit(0)
    print("hook installed" if abort.installed() else "hook not installed")
    print("python's hook" if sys.excepthook is sys.__excepthook__ else "another hook")
""")
GLOO_RANK_0_OF_1 = {"HOROVOD_GLOO_RENDEZVOUS_ADDR": "127.0.0.1", "HOROVOD_RANK": "0", "HOROVOD_SIZE": "1",
                    "HOROVOD_LOCAL_RANK": "0", "HOROVOD_LOCAL_SIZE": "1", "HOROVOD_CROSS_SIZE": "1"}


def init_with(value):
    env = {k: v for k, v in os.environ.items() if k != "HVDKIT_ABORT_ON_EXCEPTION"}
    env.update(GLOO_RANK_0_OF_1, PYTHONPATH=REPO)
    if value is not None:
        env["HVDKIT_ABORT_ON_EXCEPTION"] = value
    result = subprocess.run([sys.executable, "-c", INIT_PROGRAM], capture_output=True, text=True, timeout=60,
                            cwd=REPO, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


@pytest.mark.parametrize("value, expected", [(None, ["hook installed", "another hook"]),
                                             ("1", ["hook installed", "another hook"]),
                                             ("0", ["hook not installed", "python's hook"])])
def test_init_installs_the_hook_unless_turned_off(value, expected):
    assert init_with(value) == expected


@pytest.mark.parametrize("value", ["yes", "", "2", "off"])
def test_init_refuses_a_bad_value_before_horovod_starts(value):
    assert init_with(value) == [
        f"ValueError: HVDKIT_ABORT_ON_EXCEPTION={value!r}: expected 1 (the default: an uncaught exception on a "
        "rank aborts the job) or 0 (leave it to Python and Horovod); horovod started: False"]


@pytest.mark.parametrize("environ, expected", [({}, True), ({"HVDKIT_ABORT_ON_EXCEPTION": "1"}, True),
                                               ({"HVDKIT_ABORT_ON_EXCEPTION": " 0 "}, False)])
def test_wanted_reads_the_variable(environ, expected):
    assert abort.wanted(environ) is expected


def test_wanted_names_a_bad_value():
    with pytest.raises(ValueError, match=r"^HVDKIT_ABORT_ON_EXCEPTION='true': expected 1 \(the default"):
        abort.wanted({"HVDKIT_ABORT_ON_EXCEPTION": "true"})
