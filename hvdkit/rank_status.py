"""Run one rank's command and record how it ended.

``horovodrun`` reports a failed job with exit code 1 whatever the rank's own
code was, and ``mpirun`` reports whichever rank it noticed first, often a
healthy rank that Horovod's shutdown made fail. ``hvdkit run`` starts each
rank through this wrapper, which records the rank's exit code and the time, so
the launcher can pass on the first failure and name its rank.

    python -m hvdkit.rank_status STATUS_DIR -- command ...
"""
import ctypes
import json
import os
import signal
import subprocess
import sys
import time


def launcher_rank():
    return os.environ.get("HOROVOD_RANK") or os.environ.get("OMPI_COMM_WORLD_RANK") or "0"


def record(status_dir, rank, returncode):
    path = os.path.join(status_dir, f"rank{rank}.json")
    with open(path + ".tmp", "w") as f:
        json.dump({"rank": int(rank), "returncode": returncode, "time": time.time()}, f)
    os.replace(path + ".tmp", path)


def first_failure(status_dir):
    """The record of the rank that failed first, or None when none failed.

    Ranks that the launcher terminated (SIGTERM) after that failure come later
    in time, so the earliest non-zero record names the culprit.
    """
    records = []
    for name in os.listdir(status_dir):
        if name.startswith("rank") and name.endswith(".json"):
            with open(os.path.join(status_dir, name)) as f:
                records.append(json.load(f))
    failed = sorted((r for r in records if r["returncode"] != 0), key=lambda r: r["time"])
    return failed[0] if failed else None


def describe(returncode):
    if returncode < 0:
        return f"was killed by signal {-returncode} ({signal.Signals(-returncode).name})"
    return f"exited with code {returncode}"


def die_with_parent():
    """In the child: be killed if this wrapper dies (even by SIGKILL), so a
    launcher that kills the wrapper leaves no orphaned rank behind."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def main(argv):
    if len(argv) < 3 or argv[1] != "--":
        sys.exit("usage: python -m hvdkit.rank_status STATUS_DIR -- command ...")
    status_dir, command = argv[0], argv[2:]
    proc = subprocess.Popen(command, preexec_fn=die_with_parent)

    def forward(signum, _frame):
        proc.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    returncode = proc.wait()
    record(status_dir, launcher_rank(), returncode)
    return 128 - returncode if returncode < 0 else returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
