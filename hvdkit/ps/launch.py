"""Start parameter servers as processes beside a job, and hand the job their addresses.

``start_servers`` picks free loopback ports (or takes a host), generates the
job's secret, starts one ``python -m hvdkit.ps.server`` per server and
returns a ``ServerGroup`` whose ``env`` the workers need. Servers end with
the group (``stop``), or on their own when the process named ``exit_with``
ends, so no server outlives its job. ``listen_host`` picks the address for a
job whose ranks run on other hosts too.
"""
import os
import socket
import subprocess
import sys
import time

from hvdkit.ps import modes, transport

__all__ = ["HOST_ENV", "ServerGroup", "listen_host", "start_servers"]

HOST_ENV = "HVDKIT_PS_HOST"  # the address servers listen on, where the route to the hosts is not the one to use
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def listen_host(hosts, environ=os.environ):
    """The one address servers on this host listen on for ranks on ``hosts`` (host names, as ``-H`` gives
    them): ``HVDKIT_PS_HOST`` when set; loopback when every host is this one; else this host's address on
    its route to the first other host (on the emulated cluster of ``hvdkit cluster up``, the bridge's
    address, which every node reaches). ValueError when a host name does not resolve."""
    if environ.get(HOST_ENV):
        return environ[HOST_ENV]
    here = {socket.gethostname(), socket.getfqdn(), *LOOPBACK_NAMES}
    others = [h for h in hosts if h not in here]
    if not others:
        return "127.0.0.1"
    try:
        address = socket.gethostbyname(others[0])
    except OSError as err:
        raise ValueError(f"host {others[0]!r} does not resolve ({err}); set {HOST_ENV} to the address this "
                         f"host's parameter servers should listen on") from None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((address, 9))  # no packet is sent: the kernel only picks the route and its source address
        return probe.getsockname()[0]


class ServerGroup:
    def __init__(self, addresses, processes, env):
        self.addresses, self.processes, self.env = addresses, processes, env

    def kill(self, index):
        """Kill server ``index`` at once (SIGKILL: no goodbye, as a crash)."""
        self.processes[index].kill()
        self.processes[index].wait(timeout=10)

    def stop(self, timeout=10):
        for p in self.processes:
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + timeout
        for p in self.processes:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def start_servers(count, mode, workers, *, host="127.0.0.1", replicate=True, checkpoint=None, checkpoint_every=0,
                  member_timeout=10.0, replica_timeout=5.0, compression="none", secret=None, exit_with=None,
                  stderr=None, addresses=None, sign=True):
    """Start ``count`` servers for a job of ``workers`` workers in ``mode``; a ServerGroup. ``sign=False``
    leaves messages unsigned (only to measure what signing costs: anyone who reaches a port gets in)."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"servers must be an integer >= 1, got {count!r}")
    mode = modes.parse(mode)
    if mode.name == "backup" and mode.backups >= workers:
        raise ValueError(f"update mode {mode}: B must be less than the number of workers ({workers})")
    addresses = addresses or transport.free_addresses(count, host)
    secret = (secret or transport.new_secret()) if sign else ""
    env = {"HVDKIT_PS_SERVERS": ",".join(addresses), "HVDKIT_PS_MODE": str(mode), transport.SECRET_ENV: secret,
           "HVDKIT_PS_REPLICATE": "1" if replicate else "0", "HVDKIT_PS_COMPRESSION": compression}
    proc_env = dict(os.environ, **env)
    processes = []
    for index in range(count):
        cmd = [sys.executable, "-m", "hvdkit.ps.server", "--index", str(index), "--addresses", ",".join(addresses),
               "--mode", str(mode), "--member-timeout", str(member_timeout), "--replica-timeout", str(replica_timeout),
               "--workers", str(workers), "--compression", compression]
        if not replicate:
            cmd.append("--no-replicate")
        if checkpoint:
            cmd += ["--checkpoint", os.fspath(checkpoint), "--checkpoint-every", str(checkpoint_every)]
        if exit_with:
            cmd += ["--exit-with", str(exit_with)]
        processes.append(subprocess.Popen(cmd, env=proc_env, stderr=stderr, stdin=subprocess.DEVNULL))
    return ServerGroup(addresses, processes, env)
