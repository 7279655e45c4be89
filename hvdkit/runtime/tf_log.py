"""Keep TensorFlow's C++ start-up logs out of hvdkit's output and its ranks' output.

Importing TensorFlow 2.21 prints six lines per process before anything of
the program's own (measured on the 2-core machine, x86 with AVX-512)::

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 00:00:... port.cc:153] oneDNN custom operations are on. You may see ...
    I0000 00:00:... cpu_feature_guard.cc:227] This TensorFlow binary is optimized ...
    To enable the following instructions: AVX2 AVX512F ... rebuild TensorFlow ...

and the first two once more when the profiler plug-in, which holds its own
copy of absl, loads. ``TF_CPP_MIN_LOG_LEVEL=1`` or more silences the
cpu_feature_guard lines. The oneDNN line is logged through absl, whose minimum
level starts at INFO and which reads no environment variable
(``TF_CPP_MIN_LOG_LEVEL`` at 1-3, ``GLOG_minloglevel=2``,
``ABSL_MIN_LOG_LEVEL=2``: no effect), from a static initialiser of
``libtensorflow_framework.so.2``, before any code of ours could set it. Only ``TF_ENABLE_ONEDNN_OPTS=0`` removes it, by turning oneDNN
off, which changes the kernels TensorFlow runs and their results (a float32
3x3 conv2d here gave other bits; a matmul the same), so hvdkit leaves it on.
Instead, where hvdkit carries a process's stderr (the rank wrapper
:mod:`hvdkit.runtime.rank_status`, and ``hvdkit doctor``), it drops
exactly those lines when ``TF_CPP_MIN_LOG_LEVEL`` says INFO is not wanted: the
level then applies to what TensorFlow prints before it reads the level.

``apply_default`` sets ``TF_CPP_MIN_LOG_LEVEL=2`` (no INFO, no WARNING) unless
the user set it; the command line calls it before anything imports
TensorFlow, and ``hvdkit run`` forwards ``TF_*`` to every rank.
"""
import contextlib
import os
import re
import sys
import threading

__all__ = ["LEVEL_VARIABLE", "DEFAULT_LEVEL", "apply_default", "hides_info", "StartupLogFilter", "filtered_stderr"]

LEVEL_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"
DEFAULT_LEVEL = "2"
STDERR_JOIN_SECONDS = 5.0  # how long filtered_stderr waits for the last lines once its block ends

# absl's notice, printed once per copy of absl with the first message it logs before InitializeLog().
ABSL_NOTICE = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
# The INFO lines of TensorFlow's start-up that TF_CPP_MIN_LOG_LEVEL does not reach (absl's prefix:
# severity, date, time, thread, file:line).
STARTUP_INFO = re.compile(rb"^I\d{4} \d\d:\d\d:[\d.]+ +\d+ port\.cc:\d+\] oneDNN custom operations are on\. ")
ABSL_INFO_PREFIX = b"I0000 00:00:"  # digits stand for any digit


def apply_default(environ=None):
    """Set ``TF_CPP_MIN_LOG_LEVEL`` to hvdkit's default unless already set; the value in effect."""
    environ = os.environ if environ is None else environ
    return environ.setdefault(LEVEL_VARIABLE, DEFAULT_LEVEL)


def hides_info(environ=None):
    """True when ``TF_CPP_MIN_LOG_LEVEL`` asks TensorFlow to hide INFO (read as TensorFlow reads it:
    a leading integer, anything else 0)."""
    environ = os.environ if environ is None else environ
    match = re.match(r"\s*[-+]?\d+", environ.get(LEVEL_VARIABLE, ""))
    return match is not None and int(match.group()) >= 1


def _dropped(line):
    text = line.rstrip(b"\r\n")
    return text == ABSL_NOTICE or STARTUP_INFO.match(text) is not None


def _may_be_dropped(start):
    """Whether the start of a line could still grow into a dropped line (so it is held back)."""
    head = re.sub(rb"\d", b"0", start[:len(ABSL_INFO_PREFIX)])
    return ABSL_NOTICE.startswith(start) or ABSL_INFO_PREFIX.startswith(head)


class StartupLogFilter:
    """Drops TensorFlow's start-up lines from a byte stream, passing everything else on as it comes.

    A partial line is held back only while it could still become a dropped
    line (they start with absl's prefix or notice); any other partial line,
    such as a progress bar redrawn with ``\\r``, passes at once.
    """

    def __init__(self):
        self._held = b""  # the start of a line that may still be dropped
        self._passing = False  # the current line is known to pass: write it as it comes

    def feed(self, chunk):
        """The bytes of ``chunk`` (with any held before) to write now."""
        data, self._held = self._held + chunk, b""
        out = []
        while data:
            end = data.find(b"\n") + 1
            if self._passing:
                out.append(data[:end or len(data)])
                self._passing = not end
            elif not end:
                if _may_be_dropped(data):
                    self._held = data
                else:
                    out.append(data)
                    self._passing = True
            elif not _dropped(data[:end]):
                out.append(data[:end])
            data = data[end:] if end else b""
        return b"".join(out)

    def flush(self):
        """What is still held (the stream ended inside a line)."""
        held, self._held = self._held, b""
        return held


def write_all(fd, data):
    """Write all of ``data``; False when ``fd`` can no longer be written to."""
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view):]
    except OSError:
        return False
    return True


def _pump(source_fd, target_fd):
    """Copy ``source_fd`` to ``target_fd`` through a StartupLogFilter until end of file; close both."""
    keep = StartupLogFilter()
    writable = True
    while True:
        chunk = os.read(source_fd, 65536)
        out = keep.feed(chunk) if chunk else keep.flush()
        writable = writable and write_all(target_fd, out)  # once stderr is gone, drain so no writer blocks
        if not chunk:
            break
    os.close(source_fd)
    os.close(target_fd)


@contextlib.contextmanager
def filtered_stderr(environ=None):
    """Within the block, file descriptor 2 (this process's and any child's it starts) goes through a
    StartupLogFilter, when ``TF_CPP_MIN_LOG_LEVEL`` hides INFO; otherwise nothing changes.

    For a command that imports TensorFlow itself (``hvdkit doctor``); the
    ranks' stderr is filtered by their wrapper instead.
    """
    if not hides_info(environ):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    read_fd, write_fd = os.pipe()
    pump = threading.Thread(target=_pump, args=(read_fd, os.dup(saved)), daemon=True)
    pump.start()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last writer here: the pump sees end of file once children exit
        os.close(saved)
        pump.join(STDERR_JOIN_SECONDS)
