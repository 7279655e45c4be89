"""One ``sshd`` per node: how launchers reach the emulated hosts, as on a real cluster.

Each node's sshd runs inside the node's network namespace and, under
``unshare --uts``, with the node's own hostname, so every process an ``ssh``
starts there (Open MPI's daemon, horovodrun's task service, the ranks) reports
``nodeN``. Keys are generated per cluster and never leave its directory: the
host key, and a client key that only this cluster's sshd accept (their
``AuthorizedKeysFile`` is the cluster's, not root's).
"""
import os
import shutil
import subprocess

from hvdkit.errors import UsageError

SSHD = "/usr/sbin/sshd"
PRIVSEP_DIR = "/run/sshd"  # sshd refuses to start without its privilege-separation directory
ALIVE_INTERVAL_S, ALIVE_COUNT = 5, 3  # an ssh session silent for 15 s is lost, on both ends


def check_tools():
    missing = [tool for tool in ("ssh", "ssh-keygen") if shutil.which(tool) is None]
    if not os.access(SSHD, os.X_OK):
        missing.append(SSHD)
    if missing:
        raise UsageError(f"hvdkit cluster needs {', '.join(missing)} "
                         "(Debian: apt-get install openssh-server openssh-client)")


def make_keys(ssh_dir):
    os.makedirs(ssh_dir, mode=0o700, exist_ok=True)
    for name in ("id_ed25519", "ssh_host_ed25519_key"):
        path = os.path.join(ssh_dir, name)
        if not os.path.exists(path):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hvdkit-cluster", "-f", path],
                           check=True, capture_output=True)
    shutil.copyfile(os.path.join(ssh_dir, "id_ed25519.pub"), os.path.join(ssh_dir, "authorized_keys"))


def server_config(ssh_dir, pid_file):
    return "\n".join([
        "Port 22",
        f"HostKey {ssh_dir}/ssh_host_ed25519_key",
        f"AuthorizedKeysFile {ssh_dir}/authorized_keys",
        f"PidFile {pid_file}",
        "PermitRootLogin prohibit-password",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",
        "MaxStartups 100",   # mpirun and horovodrun open many sessions at once on wide jobs
        "MaxSessions 100",
        # A node whose link is lost drops its sessions, so what they started (Open MPI's daemon,
        # horovodrun's tasks) ends, rather than waiting for a launcher it can no longer reach.
        f"ClientAliveInterval {ALIVE_INTERVAL_S}",
        f"ClientAliveCountMax {ALIVE_COUNT}",
        "",
    ])


def client_config(layout, ssh_dir):
    """Host entries for node1..N: the cluster's key, no host-key prompts (the
    keys are new at every ``up``), and no password fallback that would hang."""
    lines = []
    for node in layout.hostnames:
        lines += [f"Host {node}", f"  HostName {layout.address(node)}"]
    lines += [
        f"Host {' '.join(layout.hostnames)}",
        "  User root",
        "  Port 22",
        f"  IdentityFile {ssh_dir}/id_ed25519",
        "  IdentitiesOnly yes",
        "  BatchMode yes",
        "  StrictHostKeyChecking no",
        "  UserKnownHostsFile /dev/null",
        "  LogLevel ERROR",
        "  ConnectTimeout 5",
        # mpirun and horovodrun reach each node's daemons through ssh: a session that stops
        # answering ends ssh (exit 255), and its launcher then ends the job, naming the node.
        # Without this a cut link left the job waiting on TCP for good.
        f"  ServerAliveInterval {ALIVE_INTERVAL_S}",
        f"  ServerAliveCountMax {ALIVE_COUNT}",
        "",
    ]
    return "\n".join(lines)


def start(namespace, hostname, config_path, log_path):
    """Start the node's sshd in the foreground of its own session; its pid.

    ``ip netns exec``, ``unshare`` and the shell all exec, so the pid returned
    is sshd's own, which ``down`` kills.
    """
    os.makedirs(PRIVSEP_DIR, mode=0o755, exist_ok=True)
    script = f"hostname {hostname} && exec {SSHD} -D -f {config_path} -E {log_path}"
    proc = subprocess.Popen(["ip", "netns", "exec", namespace, "unshare", "--uts", "sh", "-c", script],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    return proc.pid
