"""How fast a broken job ends: SIGKILL of a rank, a stopped rank, a rank skipping a collective.

    python benchmarks/faults.py [--repeat 10] [--stall-repeat 5] [--json out.json]

Each trial launches a small job with ``hvdkit run`` (every rank sums a tensor
with the others in a loop, on torch CPU tensors), waits until every rank is
reducing, injects the fault and times it with the clock of this process:

* ``sigkill``: SIGKILL to one rank (the last but one; its pid is the one
  ``hvdkit.runtime.rank_status`` recorded) -> ``hvdkit run`` exits. For np = 2 and
  4, mpirun and horovodrun --gloo; the median and range over ``--repeat``.
* ``sigstop``: SIGSTOP to rank 1 -> the status wrapper reports it (the line
  "was stopped by SIGSTOP" appears) -> ``hvdkit run`` exits, which happens
  once the rank has been stopped for HOROVOD_STALL_SHUTDOWN_TIME_SECONDS.
* ``skip``: rank 1 stops calling collectives (it sleeps) while rank 0 waits
  in an allreduce -> Horovod's first "Missing ranks" warning -> exit (under
  Gloo this needs the stall-check fix that scripts/build_horovod.sh applies).

Stall trials use short limits (check 2 s, shutdown 4 s; ``--stall-check``,
``--stall-shutdown``) so that they finish; with hvdkit's defaults (60 s,
600 s) the same mechanism reports after 60-120 s and ends the job after
600-660 s. Detection is polled every 20 ms, so times are +-0.02 s.
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POLL = 0.02
START_TIMEOUT = 300
END_TIMEOUT = 120

PROGRAM = textwrap.dedent("""
    import os, time
    import torch
    import hvdkit.torch as hvd

    hvd.init()
    rank, size = hvd.rank(), hvd.size()
    expected = torch.full((4,), size * (size + 1) / 2.0)

    def reduce(name):
        total = hvd.allreduce(torch.full((4,), rank + 1.0), op=hvd.Sum, name=name)
        assert torch.equal(total, expected), (name, total, expected)

    for i in range(3):
        reduce(f"warm{i}")
    open(os.path.join(os.environ["READY_DIR"], f"rank{rank}"), "w").close()
    if os.environ["FAULT"] == "skip":
        if rank == 1:
            time.sleep(3600)
        reduce("skipped.by.rank1")
    i = 0
    while True:
        reduce(f"loop{i % 4}")
        i += 1
        time.sleep(0.01)
""")


class Trial:
    """One ``hvdkit run`` job in a private TMPDIR (where the status wrapper's records are)."""

    def __init__(self, np, launcher, fault, env):
        self.dir = tempfile.mkdtemp(prefix="hvdkit-faults-bench-")
        self.tmp = os.path.join(self.dir, "tmp")
        self.ready = os.path.join(self.dir, "ready")
        os.makedirs(self.tmp)
        os.makedirs(self.ready)
        script = os.path.join(self.dir, "job.py")
        with open(script, "w") as f:
            f.write(PROGRAM)
        self.err_path = os.path.join(self.dir, "stderr")
        full_env = dict(os.environ, TMPDIR=self.tmp, READY_DIR=self.ready, FAULT=fault, **env)
        with open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hvdkit", "run", "-np", str(np), f"--{launcher}", "--", sys.executable,
                 script], cwd=REPO, env=full_env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        self.np = np

    def wait_ready(self):
        deadline = time.monotonic() + START_TIMEOUT
        while len(os.listdir(self.ready)) < self.np:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the job did not start:\n{self.stderr()[-3000:]}")
            time.sleep(POLL)
        return time.monotonic()

    def rank_pid(self, rank):
        (status,) = [d for d in os.listdir(self.tmp) if d.startswith("hvdkit-run-")]
        with open(os.path.join(self.tmp, status, f"rank{rank}.pids.json")) as f:
            return json.load(f)["pid"]

    def stderr(self):
        with open(self.err_path, errors="replace") as f:
            return f.read()

    def wait_for_text(self, text, since):
        """Seconds from ``since`` until ``text`` appears in the job's stderr (None if the job ends first)."""
        while text not in self.stderr():
            if self.proc.poll() is not None:
                return None if text not in self.stderr() else time.monotonic() - since
            if time.monotonic() - since > END_TIMEOUT:
                return None
            time.sleep(POLL)
        return time.monotonic() - since

    def wait_exit(self, since):
        try:
            self.proc.wait(timeout=END_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise RuntimeError(f"the job did not end within {END_TIMEOUT} s:\n{self.stderr()[-3000:]}") from None
        return time.monotonic() - since

    def close(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def sigkill_trial(np, launcher):
    trial = Trial(np, launcher, "loop", {})
    try:
        trial.wait_ready()
        victim = np - 2
        pid = trial.rank_pid(victim)
        started = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        seconds = trial.wait_exit(started)
        if f"rank {victim} killed by SIGKILL" not in trial.stderr():
            raise RuntimeError(f"the launcher did not name rank {victim}:\n{trial.stderr()[-3000:]}")
        return {"exit_s": seconds, "returncode": trial.proc.returncode}
    finally:
        trial.close()


def stall_trial(kind, launcher, env):
    trial = Trial(2, launcher, "skip" if kind == "skip" else "loop", env)
    try:
        ready = trial.wait_ready()
        if kind == "sigstop":
            started = time.monotonic()
            os.kill(trial.rank_pid(1), signal.SIGSTOP)
            report = trial.wait_for_text("was stopped by SIGSTOP", started)
        else:
            started = ready  # rank 0 enters the skipped allreduce right after its ready file
            report = trial.wait_for_text("Missing ranks:", started)
        seconds = trial.wait_exit(started)
        named = "hvdkit run: rank 1 stalled" in trial.stderr()
        return {"report_s": report, "exit_s": seconds, "named": named, "returncode": trial.proc.returncode}
    finally:
        trial.close()


def summary(values):
    values = [v for v in values if v is not None]
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def fmt(stats):
    if stats["median"] is None:
        return "-"
    return f"{stats['median']:.2f} ({stats['min']:.2f}-{stats['max']:.2f})"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=10, help="SIGKILL trials per launcher and np (default 10)")
    p.add_argument("--stall-repeat", type=int, default=5, help="trials per stall kind (default 5)")
    p.add_argument("--nps", default="2,4", help="world sizes for the SIGKILL trials (default 2,4)")
    p.add_argument("--launchers", default="mpi,gloo", help="launchers (default mpi,gloo)")
    p.add_argument("--stall-check", type=int, default=2, help="HOROVOD_STALL_CHECK_TIME_SECONDS (default 2)")
    p.add_argument("--stall-shutdown", type=int, default=4, help="HOROVOD_STALL_SHUTDOWN_TIME_SECONDS (default 4)")
    p.add_argument("--json", default=os.path.join(REPO, "benchmarks", "results", "faults.json"),
                   help="where to write the results (default benchmarks/results/faults.json)")
    args = p.parse_args(argv)
    for name in ("repeat", "stall_repeat", "stall_check", "stall_shutdown"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    try:
        args.nps = [int(n) for n in args.nps.split(",")]
    except ValueError:
        p.error(f"--nps: expected comma-separated integers >= 2, got {args.nps!r}")
    if any(n < 2 for n in args.nps):
        p.error(f"--nps: every world size must be >= 2 (a rank other than 0 is killed), got {args.nps}")
    args.launchers = args.launchers.split(",")
    if not set(args.launchers) <= {"mpi", "gloo"}:
        p.error(f"--launchers: expected a comma-separated subset of mpi,gloo, got {','.join(args.launchers)!r}")
    return args


def main(argv=None):
    args = parse_args(argv)
    results = {"sigkill": [], "stall": [], "settings": {"stall_check_s": args.stall_check,
                                                         "stall_shutdown_s": args.stall_shutdown}}
    print(f"{'fault':<10} {'launcher':<8} {'np':>3}  {'report s, median (range)':<26} "
          f"{'exit s, median (range)':<24} n")
    for launcher in args.launchers:
        for np in args.nps:
            trials = [sigkill_trial(np, launcher) for _ in range(args.repeat)]
            stats = summary([t["exit_s"] for t in trials])
            results["sigkill"].append({"launcher": launcher, "np": np, "trials": trials, "exit_s": stats})
            print(f"{'sigkill':<10} {launcher:<8} {np:>3}  {'(at once)':<26} {fmt(stats):<24} {stats['n']}",
                  flush=True)
    env = {"HOROVOD_STALL_CHECK_TIME_SECONDS": str(args.stall_check),
           "HOROVOD_STALL_SHUTDOWN_TIME_SECONDS": str(args.stall_shutdown)}
    kinds = [(kind, launcher) for kind in ("sigstop", "skip") for launcher in args.launchers]
    for kind, launcher in kinds:
        trials = [stall_trial(kind, launcher, env) for _ in range(args.stall_repeat)]
        report, done = summary([t["report_s"] for t in trials]), summary([t["exit_s"] for t in trials])
        results["stall"].append({"fault": kind, "launcher": launcher, "np": 2, "trials": trials,
                                 "report_s": report, "exit_s": done,
                                 "named": all(t["named"] for t in trials)})
        print(f"{kind:<10} {launcher:<8} {2:>3}  {fmt(report):<26} {fmt(done):<24} {done['n']}", flush=True)
    results["meta"] = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
                       "cpus": os.cpu_count(), "load_average": os.getloadavg(), "python": platform.python_version()}
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1)
    print(f"results in {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
