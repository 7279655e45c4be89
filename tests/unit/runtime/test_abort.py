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
