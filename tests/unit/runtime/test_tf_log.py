"""hvdkit.runtime.tf_log: TensorFlow's start-up lines are dropped from a stream (and nothing else), and
hvdkit's default log level never overrides the user's."""
import os
import subprocess
import sys
import textwrap

import pytest

from hvdkit.runtime import tf_log
import paths  # tests/support

REPO = str(paths.REPO)

# What TensorFlow 2.21 printed on import here (TF_CPP_MIN_LOG_LEVEL=0), around the program's own lines.
ONEDNN = (b"I0000 00:00:1796520727.443162   12762 port.cc:153] oneDNN custom operations are on. You may see slightly "
          b"different numerical results due to floating-point round-off errors from different computation orders. "
          b"To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.\n")
NOTICE = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
PROGRAM_LINES = [b"epoch 1\n", b"Iteration 3 of 10\n", b"I am the program\n", b"W1206 01:34:05.123456 1 x.cc:1] kept\n",
                 b"I1206 01:34:05.123456   7 other.cc:9] another INFO line is kept\n",
                 b"WARNING: something else\n", b"\n"]
STREAM = NOTICE + ONEDNN + b"".join(PROGRAM_LINES[:3]) + NOTICE + ONEDNN + b"".join(PROGRAM_LINES[3:])
EXPECTED = b"".join(PROGRAM_LINES)


def filtered(chunks):
    keep = tf_log.StartupLogFilter()
    return b"".join(keep.feed(chunk) for chunk in chunks) + keep.flush()


def test_the_startup_lines_go_and_everything_else_stays():
    assert filtered([STREAM]) == EXPECTED


@pytest.mark.parametrize("size", [1, 2, 7, 64, 100])
def test_any_split_of_the_stream_gives_the_same_output(size):
    assert filtered([STREAM[i:i + size] for i in range(0, len(STREAM), size)]) == EXPECTED


def test_a_partial_line_passes_at_once_unless_it_could_be_a_startup_line():
    keep = tf_log.StartupLogFilter()
    assert keep.feed(b"progress 10%\r") == b"progress 10%\r"  # no newline yet: written as it comes
    assert keep.feed(b"progress 20%\r") == b"progress 20%\r"
    assert keep.feed(b"\nI0000 00:00:17") == b"\n"  # absl's prefix: held until the line is complete
    assert keep.feed(b"96 1 port.cc:2] done\n") == b"I0000 00:00:1796 1 port.cc:2] done\n"  # not the oneDNN line
    assert keep.feed(b"WARNING: All log") == b""
    assert keep.flush() == b"WARNING: All log"  # the stream ended inside the line: nothing is lost


@pytest.mark.parametrize("level, hides", [(None, False), ("0", False), ("1", True), (" 2", True), ("3", True),
                                          ("x", False)])  # TensorFlow reads "x" as 0
def test_the_level_is_read_as_tensorflow_reads_it(level, hides):
    assert tf_log.hides_info({} if level is None else {"TF_CPP_MIN_LOG_LEVEL": level}) is hides


def test_the_default_never_overrides_the_user():
    assert tf_log.apply_default({"TF_CPP_MIN_LOG_LEVEL": "0"}) == "0"
    environ = {}
    assert tf_log.apply_default(environ) == "2" and environ == {"TF_CPP_MIN_LOG_LEVEL": "2"}


# Writes the recorded start-up lines the way TensorFlow does (to file descriptor 2, from this process and
# from a child), inside filtered_stderr, then a line after the block.
FD_PROGRAM = textwrap.dedent("""
    import os, subprocess, sys
    from hvdkit.runtime import tf_log
    STREAM = {stream!r}
    with tf_log.filtered_stderr():
        os.write(2, STREAM)
        subprocess.run([sys.executable, "-c", "import os; os.write(2, %r)" % (STREAM,)], check=True, timeout=60)
        print("python's own stderr", file=sys.stderr)
    print("after the block", file=sys.stderr)
""")


@pytest.mark.parametrize("level, expected", [("2", EXPECTED * 2), ("0", STREAM * 2)])
def test_filtered_stderr_covers_this_process_and_its_children(level, expected):
    result = subprocess.run([sys.executable, "-c", FD_PROGRAM.format(stream=STREAM)], capture_output=True,
                            timeout=60, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL=level))
    assert result.returncode == 0, result.stderr
    assert result.stderr == expected + b"python's own stderr\nafter the block\n"


@pytest.mark.parametrize("level, expected", [("2", EXPECTED), ("1", EXPECTED), ("0", STREAM)])
def test_the_rank_wrapper_drops_them_unless_the_level_shows_info(tmp_path, level, expected):
    rank = f"import os; os.write(2, {STREAM!r})"
    result = subprocess.run([sys.executable, "-m", "hvdkit.runtime.rank_status", str(tmp_path), "--",
                             sys.executable, "-c", rank], capture_output=True, timeout=60, cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=REPO, HOROVOD_RANK="0", TF_CPP_MIN_LOG_LEVEL=level))
    assert (result.returncode, result.stderr) == (0, expected)
