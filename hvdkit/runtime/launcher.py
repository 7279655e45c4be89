"""Launch a command on N ranks under mpirun or horovodrun.

Behind ``hvdkit run -np 4 -- python train.py``: picks the launcher, adds the
flags a user would otherwise look up (allow-run-as-root only as root,
oversubscription when N exceeds the local cores, the environment passed to
every rank), runs the job, ends what it leaves behind and returns its exit
code, naming the first rank that failed.
"""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from hvdkit.runtime import env_check
from hvdkit.runtime import horovod_env
from hvdkit.runtime import job_processes
from hvdkit.runtime import parent_watch
from hvdkit.runtime import rank_status
from hvdkit.runtime.cluster import tuning as cluster_tuning
from hvdkit.errors import UsageError

# Variables forwarded to every rank (mpirun only forwards what -x names to
# remote hosts); any variable starting with one of these prefixes goes too.
FORWARDED_PREFIXES = ("HVDKIT_", "HOROVOD_", "PYTHON", "OMP_", "NCCL_", "TF_", "CUDA_", "KMP_")
FORWARDED_NAMES = ("PATH", "LD_LIBRARY_PATH", "VIRTUAL_ENV", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

# After the launcher returns, how long the job's processes get to exit before
# hvdkit SIGKILLs them (mpirun and horovodrun have already sent SIGTERM).
LEFTOVER_GRACE_SECONDS = 3.0
# After Ctrl-C or SIGTERM is passed on, how long mpirun or horovodrun get to end the job
# before their whole group is SIGKILLed.
STOP_GRACE_SECONDS = 15.0


def inside_launcher(environ=os.environ):
    """True in a rank started by mpirun or horovodrun."""
    return any(name in environ for name in ("OMPI_COMM_WORLD_SIZE", "HOROVOD_RANK", "PMI_SIZE"))


def launcher_world_size(environ=os.environ):
    for name in ("OMPI_COMM_WORLD_SIZE", "HOROVOD_SIZE", "PMI_SIZE"):
        if name in environ:
            return int(environ[name])
    return 1


def is_root():
    return hasattr(os, "geteuid") and os.geteuid() == 0


def root_environment():
    """Open MPI refuses to run as root unless both variables say it is intended."""
    if not is_root():
        return {}
    return {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


def parse_hosts(hosts, np):
    """``"a:2,b:2"`` -> [("a", 2), ("b", 2)], checking the slots can hold np ranks."""
    if hosts is None:
        return [("localhost", np)]
    parsed = []
    for item in hosts.split(","):
        name, _, slots = item.strip().partition(":")
        if not name:
            raise UsageError(f"-H/--hosts: empty host name in {hosts!r}; expected host:slots,...")
        try:
            count = int(slots) if slots else 1
        except ValueError:
            raise UsageError(f"-H/--hosts: slots {slots!r} of host {name!r} is not an integer") from None
        if count < 1:
            raise UsageError(f"-H/--hosts: host {name!r} has {count} slots; slots must be >= 1")
        parsed.append((name, count))
    total = sum(count for _, count in parsed)
    if total < np:
        raise UsageError(f"-np {np} needs {np} slots but -H {hosts!r} offers {total}")
    return parsed


def is_local(hosts):
    return all(name in ("localhost", "127.0.0.1") for name, _ in hosts)


def find_tool(name):
    """A launcher executable: the one installed beside this Python (the venv's
    ``horovodrun``) first, then PATH. None when neither has it."""
    beside = os.path.join(os.path.dirname(sys.executable), name)
    if os.access(beside, os.X_OK):
        return beside
    return shutil.which(name)


def default_launcher():
    return "mpi" if find_tool("mpirun") else "gloo"


def forwarded_names(environ):
    return sorted(name for name in environ
                  if name in FORWARDED_NAMES or name.startswith(FORWARDED_PREFIXES))


def rank_environment(np, local_cores, environ):
    """Variables added for every rank: as root, Open MPI's consent; when ranks
    outnumber cores, one intra-op thread each, so oversubscribed ranks do not
    fight over the cores (unless the user chose a number); and the settings
    that must be in place before a rank starts (``horovod_env.LAUNCH_DEFAULTS``)."""
    env = dict(root_environment())
    if np > local_cores and "OMP_NUM_THREADS" not in environ:
        env["OMP_NUM_THREADS"] = "1"
    for name, value in horovod_env.LAUNCH_DEFAULTS.items():
        if name not in environ:
            env[name] = value
    return env


def mpirun_command(np, hosts, command, environ, local_cores, ssh_port=None):
    cmd = ["mpirun", "-np", str(np), "--bind-to", "none", "--map-by", "slot"]
    if is_root():
        cmd.append("--allow-run-as-root")
    if is_local(hosts):
        if np > local_cores:
            cmd.append("--oversubscribe")
    else:
        cmd += ["-H", ",".join(f"{name}:{slots}" for name, slots in hosts)]
        if ssh_port is not None:  # Open MPI starts its remote daemons with ssh, adding these arguments
            cmd += ["--mca", "plm_rsh_args", f"-p {ssh_port}"]
    for name in forwarded_names(environ):
        cmd += ["-x", name]
    return cmd + list(command)


def horovodrun_command(horovodrun, np, hosts, command, ssh_port=None):
    host_list = ",".join(f"{name}:{slots}" for name, slots in hosts)
    port = [] if ssh_port is None else ["-p", str(ssh_port)]
    return [horovodrun, "--gloo", "-np", str(np), "-H", host_list] + port + list(command)


def with_status_wrapper(command, status_dir):
    """Each rank runs through ``hvdkit.runtime.rank_status``, which records its own
    exit code, so the launcher can name the first rank that failed."""
    return [sys.executable, "-m", "hvdkit.runtime.rank_status", status_dir, "--"] + list(command)


def build_command(args, environ, status_dir=None):
    """The launcher command line and the environment to run it with."""
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UsageError("no command given; usage: hvdkit run -np N -- python script.py ...")
    if args.np < 1:
        raise UsageError(f"-np must be >= 1, got {args.np}")
    hosts = parse_hosts(args.hosts, args.np)
    ssh_port = getattr(args, "ssh_port", None)
    if ssh_port is not None and not 1 <= ssh_port <= 65535:
        raise UsageError(f"-p/--ssh-port must be a port number (1-65535), got {ssh_port}")
    env = dict(environ)
    if status_dir is not None:
        command = with_status_wrapper(command, status_dir)
        env[rank_status.STATUS_DIR_VARIABLE] = status_dir  # also marks every process of the job
    if args.ranks_per_node is not None:
        if args.ranks_per_node < 1 or args.np % args.ranks_per_node:
            raise UsageError(f"--ranks-per-node {args.ranks_per_node} must be >= 1 and divide -np {args.np}")
        env["HVDKIT_RANKS_PER_NODE"] = str(args.ranks_per_node)
    local_cores = os.cpu_count() or 1
    env.update(rank_environment(args.np, local_cores, environ))
    env.update(cluster_tuning.launch_environment([name for name, _ in hosts], environ))
    launcher = args.launcher or default_launcher()
    if launcher == "mpi":
        if not find_tool("mpirun"):
            raise UsageError("--mpi: mpirun not found; install Open MPI (apt-get install openmpi-bin) or use --gloo")
        return mpirun_command(args.np, hosts, command, env, local_cores, ssh_port), env
    horovodrun = find_tool("horovodrun")
    if not horovodrun:
        raise UsageError("--gloo: horovodrun not found; run 'make setup' to install Horovod")
    return horovodrun_command(horovodrun, args.np, hosts, command, ssh_port), env


def run(cmd, env, stopped=None):
    """Run the launcher in its own process group and pass on its exit code (``stopped``, a list,
    receives the numbers of the stop signals passed on).

    The group lets Ctrl-C or a kill of ``hvdkit run`` take every rank with it
    instead of leaving orphans. Should this process die without a word (``kill
    -9``), the launcher gets SIGTERM from the kernel and ends its job, and
    every rank's wrapper sees this process gone (``hvdkit.runtime.parent_watch``,
    told its identity by ``HVDKIT_LAUNCHER_PID``).
    """
    me = os.getpid()
    env = dict(env, **{parent_watch.LAUNCHER_VARIABLE: parent_watch.identity(me)})
    proc = subprocess.Popen(cmd, env=env, start_new_session=True,
                            preexec_fn=lambda: parent_watch.die_with_parent(me, signal.SIGTERM))

    asked = []  # when a stop signal was forwarded

    def forward(signum, _frame):
        asked.append(time.monotonic())
        if stopped is not None:
            stopped.append(signum)
        try:
            os.killpg(proc.pid, signum)
        except ProcessLookupError:
            pass

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            try:
                return proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                if asked and time.monotonic() - asked[0] > STOP_GRACE_SECONDS:
                    # mpirun can wait forever for the daemon of a node it no longer reaches
                    print(f"hvdkit run: the launcher did not stop within {STOP_GRACE_SECONDS:g} s of the "
                          "signal; killing it", file=sys.stderr)
                    os.killpg(proc.pid, signal.SIGKILL)
                    asked.clear()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def exit_code(returncode):
    """A launcher killed by a signal reports 128 + signal, as a shell does."""
    return 128 - returncode if returncode < 0 else returncode


def end_leftovers(status_dir):
    """SIGKILL what is left of the job once its launcher has returned (found by the job's
    unique ``HVDKIT_STATUS_DIR`` in each process's environment, and by the pids the status
    wrappers recorded), wait until it is gone, and say what had to be killed."""
    left = job_processes.end(rank_status.STATUS_DIR_VARIABLE, status_dir,
                             known=rank_status.recorded_processes(status_dir), grace=LEFTOVER_GRACE_SECONDS)
    for pid, command in sorted(left.items()):
        print(f"hvdkit run: killed pid {pid}, still running after the launcher exited: {command[:200]}",
              file=sys.stderr)


def launch(args):
    """Run ``args.command`` on ``args.np`` ranks (the parsed ``hvdkit run`` flags); the job's exit code."""
    with tempfile.TemporaryDirectory(prefix="hvdkit-run-") as status_dir:
        cmd, env = build_command(args, os.environ, status_dir)
        env_check.validate(env, args.np)  # what every rank will read: a bad value stops here, exit 2
        if args.dry_run:
            print(" ".join(cmd))
            return 0
        stopped = []
        try:
            code = exit_code(run(cmd, env, stopped))
        finally:
            end_leftovers(status_dir)
        if not code:
            return 0
        if stopped:  # the ranks were ended on purpose: none of them is to blame
            print(f"hvdkit run: stopped by {signal.Signals(stopped[0]).name}; the job was ended", file=sys.stderr)
            return code
        blamed = rank_status.culprit(status_dir)
        failure = rank_status.first_failure(status_dir)
    if blamed is not None:
        print(f"hvdkit run: {blamed[1]}", file=sys.stderr)
    return exit_code(failure["returncode"]) if failure is not None else code

